//! Plain WebSocket at `/ws` (canonical names) and `/api/community/ws` (seed 001's names).
//!
//! Frames are JSON text: `{"type": EVENT, "payload": {...}}`. The token comes from
//! `Authorization: Bearer` or `?token=` and is checked before the upgrade (401 otherwise).
//!
//! Close codes:
//! | code | when |
//! |---|---|
//! | 1001 | the server is shutting down |
//! | 1009 | a frame larger than the configured maximum |
//! | 4001 | the token expired while connected |
//! | 4002 | idle timeout (no client activity for `MAX_IDLE_TIME`) |
//! | 4003 | slow consumer: the outgoing queue was full |
//! A client that does not answer a ping within `HEARTBEAT_INTERVAL` is terminated
//! without a close frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::metrics::{self as m, count_error};
use herald_core::{CloseReason, Delivery, ErrorCode, SessionGuard, Topic};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::mailbox::Receiver;
use super::{CloseSignal, QueueOutlet};
use crate::limits::ConnectionPermit;
use crate::state::AppState;
use crate::wire::{self, Dialect};

/// Initial read buffer per connection. Clients send little (commands, pings), and the
/// buffer grows when a larger frame arrives, so idle connections stay small.
pub const READ_BUFFER: usize = 512;
/// Frames drained from the queue into one write when the client is behind.
pub const MAX_BATCH: usize = 64;
/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::ServerShutdown => 1001,
        CloseReason::TokenExpired => 4001,
        CloseReason::IdleTimeout => 4002,
        CloseReason::SlowConsumer => 4003,
        CloseReason::AuthTimeout => 4004,
        CloseReason::HeartbeatTimeout => 4005,
    }
}

/// `GET /ws`.
pub async fn canonical(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, peer, headers, query, upgrade, Dialect::Canonical)
}

/// `GET /api/community/ws`.
pub async fn community(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, peer, headers, query, upgrade, Dialect::Community)
}

fn accept(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
    dialect: Dialect,
) -> Response {
    let (principal, permit) = match state.admit_request(&headers, query.as_deref(), peer) {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    // Registered now, so the connection task does not carry the principal, and events
    // published while the upgrade completes wait in the queue.
    let (outlet, queue, signal) = QueueOutlet::channel(state.settings.session_queue);
    let session = state.hub.register(principal, "ws", outlet);
    let link = Link { session, queue, signal, dialect, _permit: permit };
    let task_state = state.clone();
    configure(upgrade, state.settings.max_payload).on_upgrade(move |socket| {
        let tasks = task_state.tasks.clone();
        let serving = run(socket, task_state, link);
        tasks.track_future(serving)
    })
}

/// A plain WebSocket session's state, handed from the upgrade request to its task.
struct Link {
    session: SessionGuard,
    queue: Receiver<Arc<Delivery>>,
    signal: Arc<CloseSignal>,
    dialect: Dialect,
    _permit: ConnectionPermit,
}

/// Buffer sizes and frame limits shared by every WebSocket Herald accepts.
pub fn configure(upgrade: WebSocketUpgrade, max_payload: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_message_size(max_payload)
        .max_frame_size(max_payload)
}

#[derive(Deserialize)]
struct IncomingFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

#[derive(Deserialize)]
struct TopicPayload {
    topic: String,
}

fn text(bytes: Bytes) -> Message {
    // Frames are built from &str and JSON, so they are UTF-8; a failure would be a bug in
    // the encoder, and sending an error frame keeps the connection consistent.
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Text(Utf8Bytes::from_static(
            r#"{"type":"error","payload":{"code":"INTERNAL","message":"internal error"}}"#,
        )),
    }
}

fn error_frame(code: ErrorCode, message: &str, event: Option<&str>) -> Message {
    count_error(code);
    let mut payload = json!({"code": code.as_str(), "message": message});
    if let Some(event) = event {
        payload["event"] = json!(event.chars().take(100).collect::<String>());
    }
    text(wire::ws_frame("error", &payload.to_string()))
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Answers one text frame from the client.
fn handle_text(raw: &str, dialect: Dialect, session: &SessionGuard) -> Message {
    let frame: IncomingFrame = match serde_json::from_str(raw) {
        Ok(frame) => frame,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return error_frame(ErrorCode::InvalidJson, "frame is not valid JSON", None);
        }
        Err(_) => {
            return error_frame(
                ErrorCode::InvalidPayload,
                "frame must be an object {\"type\": string, \"payload\": object}",
                None,
            );
        }
    };
    metrics::counter!(m::EVENTS_IN, "event" => m::event_label(&frame.kind)).increment(1);
    match dialect.incoming(&frame.kind) {
        "PING" => text(wire::ws_frame("PONG", &json!({"timestamp": now_millis()}).to_string())),
        "ping" => text(wire::ws_frame("pong", &json!({"timestamp": now_millis()}).to_string())),
        kind @ ("subscribe" | "unsubscribe") => {
            let Ok(TopicPayload { topic }) = serde_json::from_value(frame.payload) else {
                return error_frame(ErrorCode::InvalidPayload, "payload must be {\"topic\": string}", Some(kind));
            };
            let topic = match Topic::parse(&topic) {
                Ok(topic) => topic,
                Err(error) => return error_frame(ErrorCode::InvalidTopic, &error.to_string(), Some(kind)),
            };
            if kind == "subscribe" {
                if let Err(error) = session.subscribe(topic.clone()) {
                    return error_frame(error.code(), &error.to_string(), Some(kind));
                }
                text(wire::ws_frame("subscribed", &json!({"topic": topic.as_str()}).to_string()))
            } else {
                session.unsubscribe(&topic);
                text(wire::ws_frame("unsubscribed", &json!({"topic": topic.as_str()}).to_string()))
            }
        }
        other => error_frame(ErrorCode::UnknownEvent, &format!("unknown event type {other:?}"), Some(other)),
    }
}

/// Whether a receive error means the client sent a frame over the size limit.
pub fn is_too_large(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

pub async fn send_close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }));
    match tokio::time::timeout(CLOSE_TIMEOUT, socket.send(frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "close frame not sent"),
        Err(_) => tracing::debug!("close frame timed out"),
    }
}

/// Sends one delivery and whatever else is queued behind it as one flush.
async fn send_batch(
    socket: &mut WebSocket,
    first: Arc<Delivery>,
    queue: &mut Receiver<Arc<Delivery>>,
    dialect: Dialect,
) -> Result<(), axum::Error> {
    socket.feed(Message::Text(wire::ws_encoded(&first, dialect))).await?;
    for _ in 1..MAX_BATCH {
        match queue.try_recv() {
            Some(next) => socket.feed(Message::Text(wire::ws_encoded(&next, dialect))).await?,
            None => break,
        }
    }
    socket.flush().await
}

async fn run(mut socket: WebSocket, state: AppState, link: Link) {
    let Link { session, mut queue, signal, dialect, _permit } = link;
    tracing::debug!(session = %session.id(), user = %session.principal().user_id, ?dialect, "websocket session opened");
    if dialect == Dialect::Canonical {
        let topics: Vec<String> = session.topics().iter().map(|t| t.to_string()).collect();
        let hello = json!({"userId": session.principal().user_id.as_str(), "sessionId": session.id().to_string(), "topics": topics});
        if socket.send(text(wire::ws_frame("connected", &hello.to_string()))).await.is_err() {
            return;
        }
    }
    let end = drive(&mut socket, &state, &session, &signal, &mut queue, dialect).await;
    match end {
        End::Close(code, reason) => send_close(&mut socket, code, reason).await,
        End::Drain => {
            // Shutdown: flush what is already queued, then say goodbye.
            let drain = async {
                while let Some(next) = queue.try_recv() {
                    socket.feed(Message::Text(wire::ws_encoded(&next, dialect))).await?;
                }
                socket.flush().await
            };
            if tokio::time::timeout(state.settings.shutdown_timeout, drain).await.is_err() {
                tracing::debug!("queue not drained before the shutdown deadline");
            }
            let reason = CloseReason::ServerShutdown;
            send_close(&mut socket, close_code(reason), reason.message()).await;
        }
        End::Gone => {}
    }
    tracing::debug!(session = %session.id(), "websocket session closed");
}

/// How a session loop ended.
pub enum End {
    /// Send this close frame.
    Close(u16, &'static str),
    /// Shutting down: drain the queue, then close with 1001.
    Drain,
    /// The connection is gone or must be dropped without a close frame.
    Gone,
}

async fn drive(
    socket: &mut WebSocket,
    state: &AppState,
    session: &SessionGuard,
    signal: &CloseSignal,
    queue: &mut Receiver<Arc<Delivery>>,
    dialect: Dialect,
) -> End {
    let mut heartbeat = tokio::time::interval(state.settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            biased;
            _ = signal.closed() => {
                let reason = signal.reason().unwrap_or(CloseReason::ServerShutdown);
                return End::Close(close_code(reason), reason.message());
            }
            _ = state.shutdown.cancelled() => return End::Drain,
            incoming = socket.recv() => match incoming {
                None => return End::Gone,
                Some(Err(error)) if is_too_large(&error) => {
                    count_error(ErrorCode::PayloadTooLarge);
                    return End::Close(1009, "frame larger than the configured maximum");
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "websocket receive error");
                    return End::Gone;
                }
                Some(Ok(Message::Text(raw))) => {
                    session.touch();
                    let reply = handle_text(raw.as_str(), dialect, session);
                    if socket.send(reply).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    session.touch();
                    let reply = error_frame(ErrorCode::InvalidPayload, "binary frames are not supported; send JSON text", None);
                    if socket.send(reply).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) => return End::Gone,
            },
            delivery = queue.recv() => {
                tokio::select! {
                    biased;
                    _ = signal.closed() => {
                        let reason = signal.reason().unwrap_or(CloseReason::SlowConsumer);
                        return End::Close(close_code(reason), reason.message());
                    }
                    sent = send_batch(socket, delivery, queue, dialect) => {
                        if sent.is_err() {
                            return End::Gone;
                        }
                    }
                }
            }
            _ = heartbeat.tick() => {
                if awaiting_pong {
                    metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::HeartbeatTimeout.as_str()).increment(1);
                    tracing::debug!(session = %session.id(), "no pong: terminating");
                    return End::Gone;
                }
                awaiting_pong = true;
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return End::Gone;
                }
            }
        }
    }
}
