//! Engine.IO long-polling: `GET` waits for the session's queued packets, `POST` delivers
//! the client's. A driver task per session sends pings, watches pongs, acts on the hub's
//! closes and, at shutdown, tells the client `disconnect`; it steps aside when a
//! WebSocket upgrade takes the session over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use herald_core::CloseReason;
use herald_core::metrics as m;
use http::header::CONTENT_TYPE;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Outgoing, new_id};
use super::packet::{EnginePacket, SEPARATOR, parse_engine};
use super::{EngineError, open_packet};
use crate::limits::ConnectionPermit;
use crate::state::AppState;
use crate::transport::mailbox::Receiver;

/// How long a long-polling client gets, at shutdown, to fetch its `disconnect` packets.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The open long-polling sessions of this node, by sid.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<Box<str>, Arc<Session>>>,
}

pub struct Session {
    sid: Box<str>,
    pub conn: Arc<Conn>,
    /// The connection's outgoing queue: locked by the one `GET` allowed at a time, and
    /// for good by the WebSocket that upgrades the session.
    pub queue: tokio::sync::Mutex<Receiver<Outgoing>>,
    pong: Notify,
    /// Cancelled when the session ends.
    pub closed: CancellationToken,
    /// Cancelled when a WebSocket has taken the session over.
    pub upgraded: CancellationToken,
    upgrading: AtomicBool,
}

impl Session {
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// A failed upgrade leaves the session on long-polling.
    pub fn abandon_upgrade(&self) {
        self.upgrading.store(false, Ordering::Release);
    }
}

fn text(body: String) -> Response {
    ([(CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

impl Sessions {
    fn get(&self, sid: &str) -> Result<Arc<Session>, EngineError> {
        self.map.lock().get(sid).cloned().ok_or(EngineError::UnknownSid)
    }

    pub fn remove(&self, sid: &str) {
        self.map.lock().remove(sid);
    }

    /// The handshake: a new session, answered with the OPEN packet.
    pub fn open(self: &Arc<Self>, app: &AppState, token: Option<String>, permit: ConnectionPermit) -> Response {
        let (conn, queue) = Conn::new(app.clone(), token, permit);
        let sid = new_id();
        let session = Arc::new(Session {
            sid: sid.clone(),
            conn,
            queue: tokio::sync::Mutex::new(queue),
            pong: Notify::new(),
            closed: CancellationToken::new(),
            upgraded: CancellationToken::new(),
            upgrading: AtomicBool::new(false),
        });
        self.map.lock().insert(sid.clone(), session.clone());
        app.tasks.spawn(drive(app.clone(), session, self.clone()));
        text(open_packet(app, &sid, &["websocket"]))
    }

    /// `GET`: the queued packets, waiting for the first one; `1` (close) once the session ended.
    pub async fn poll(&self, sid: &str) -> Response {
        let session = match self.get(sid) {
            Ok(session) => session,
            Err(error) => return error.into_response(),
        };
        if session.upgraded.is_cancelled() {
            return EngineError::BadRequest.into_response();
        }
        let Ok(mut queue) = session.queue.try_lock() else {
            tracing::debug!(sid, "concurrent long-poll: closing the session");
            session.closed.cancel();
            return EngineError::BadRequest.into_response();
        };
        let first = tokio::select! {
            biased;
            item = queue.recv() => item.ok(),
            _ = session.closed.cancelled() => None,
        };
        let Some(first) = first else { return text("1".into()) };
        let mut body = String::from(first.into_text().as_str());
        let limit = session.conn.max_payload();
        while body.len() < limit {
            match queue.try_recv() {
                Some(next) => {
                    body.push(SEPARATOR);
                    body.push_str(next.into_text().as_str());
                }
                None => break,
            }
        }
        text(body)
    }

    /// `POST`: the client's packets, separated by `\x1e`.
    pub fn post(&self, sid: &str, body: &[u8]) -> Response {
        let session = match self.get(sid) {
            Ok(session) => session,
            Err(error) => return error.into_response(),
        };
        if session.upgraded.is_cancelled() {
            return EngineError::BadRequest.into_response();
        }
        let Ok(body) = std::str::from_utf8(body) else {
            session.closed.cancel();
            return EngineError::BadRequest.into_response();
        };
        for part in body.split(SEPARATOR) {
            match parse_engine(part) {
                Ok(EnginePacket::Message(message)) => session.conn.on_message(message),
                Ok(EnginePacket::Pong(_)) => session.pong.notify_one(),
                Ok(EnginePacket::Ping(data)) => session.conn.send_packet(format!("3{data}")),
                Ok(EnginePacket::Close) => session.closed.cancel(),
                Ok(EnginePacket::Noop | EnginePacket::Upgrade) => {}
                Err(error) => {
                    tracing::debug!(%error, sid, "malformed long-polling payload: closing the session");
                    session.closed.cancel();
                    return EngineError::BadRequest.into_response();
                }
            }
        }
        ([(CONTENT_TYPE, "text/html")], "ok").into_response()
    }

    /// A WebSocket asks to take the session over.
    pub fn begin_upgrade(&self, sid: &str) -> Result<Arc<Session>, EngineError> {
        let session = self.get(sid)?;
        if session.upgraded.is_cancelled() || session.upgrading.swap(true, Ordering::AcqRel) {
            return Err(EngineError::BadRequest);
        }
        Ok(session)
    }
}

/// Pings, pong deadline, the hub's closes and shutdown for one long-polling session.
async fn drive(app: AppState, session: Arc<Session>, sessions: Arc<Sessions>) {
    let conn = &session.conn;
    let interval = app.settings.socketio_ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut pong_deadline: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        tokio::select! {
            biased;
            _ = session.upgraded.cancelled() => return,
            _ = session.closed.cancelled() => break,
            _ = conn.link.attention.notified() => {
                if let Some(reason) = conn.take_closes() {
                    tracing::debug!(sid = %session.sid, %reason, "long-polling session closed");
                    break;
                }
            }
            _ = app.shutdown.cancelled(), if drain_deadline.is_none() => {
                conn.disconnect_all();
                drain_deadline = Some(Instant::now() + SHUTDOWN_GRACE.min(app.settings.shutdown_timeout));
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or(far)), if drain_deadline.is_some() => break,
            _ = tokio::time::sleep_until(pong_deadline.unwrap_or(far)), if pong_deadline.is_some() => {
                metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::HeartbeatTimeout.as_str()).increment(1);
                break;
            }
            _ = session.pong.notified() => pong_deadline = None,
            _ = ping.tick() => {
                if pong_deadline.is_none() {
                    conn.send_packet("2".into());
                    pong_deadline = Some(Instant::now() + app.settings.socketio_ping_timeout);
                }
            }
        }
    }
    sessions.remove(&session.sid);
    session.closed.cancel();
}
