//! Engine.IO over WebSocket: a connection opened on the websocket transport directly, or
//! a long-polling session upgraded to it (`2probe` → `3probe`, a noop to release the
//! pending poll, then `5`). One task per connection owns the socket and the queue.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::SinkExt;
use herald_core::metrics::{self as m, count_error};
use herald_core::{CloseReason, ErrorCode};
use tokio::time::Instant;

use super::conn::{Conn, Outgoing, new_id};
use super::open_packet;
use super::packet::{EnginePacket, parse_engine};
use super::polling::{Session, Sessions};
use crate::limits::ConnectionPermit;
use crate::state::AppState;
use crate::transport::mailbox::Receiver;
use crate::transport::ws::{self, End, MAX_BATCH, close_code, is_too_large, send_close};

/// A connection that starts on the websocket transport.
pub fn accept(app: AppState, upgrade: WebSocketUpgrade, token: Option<String>, permit: ConnectionPermit) -> Response {
    let tasks = app.tasks.clone();
    ws::configure(upgrade, app.settings.max_payload).on_upgrade(move |socket| {
        let (conn, queue) = Conn::new(app.clone(), token, permit);
        let serving = serve(socket, app, conn, queue);
        tasks.track_future(serving)
    })
}

/// Every future here borrows the socket from this one, so the task holds it once.
async fn serve(mut socket: WebSocket, app: AppState, conn: Arc<Conn>, mut queue: Receiver<Outgoing>) {
    let open = open_packet(&app, &new_id(), &[]);
    if socket.send(Message::Text(open.into())).await.is_err() {
        return;
    }
    run(&mut socket, &app, &conn, &mut queue).await;
}

/// A long-polling session moving to this WebSocket.
pub fn upgrade(app: AppState, upgrade: WebSocketUpgrade, session: Arc<Session>, sessions: Arc<Sessions>) -> Response {
    let tasks = app.tasks.clone();
    ws::configure(upgrade, app.settings.max_payload)
        .on_upgrade(move |socket| tasks.track_future(take_over(socket, app, session, sessions)))
}

async fn take_over(mut socket: WebSocket, app: AppState, session: Arc<Session>, sessions: Arc<Sessions>) {
    let probed = tokio::time::timeout(app.settings.socketio_ping_timeout, probe(&mut socket, &session)).await;
    if probed != Ok(true) {
        tracing::debug!(sid = session.sid(), "websocket upgrade abandoned");
        session.abandon_upgrade();
        return;
    }
    session.upgraded.cancel();
    sessions.remove(session.sid());
    // The pending poll (released by the noop) gives the queue back.
    let mut queue = tokio::select! {
        queue = session.queue.lock() => queue,
        _ = session.closed.cancelled() => return,
    };
    run(&mut socket, &app, &session.conn, &mut queue).await;
    session.closed.cancel();
}

/// The upgrade handshake on the new socket; true once the client sent `5`.
async fn probe(socket: &mut WebSocket, session: &Session) -> bool {
    let mut probed = false;
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2probe" && !probed => {
                if socket.send(Message::Text(Utf8Bytes::from_static("3probe"))).await.is_err() {
                    return false;
                }
                probed = true;
                // Releases the pending long-poll so the client can pause polling.
                session.conn.send_packet("6".into());
            }
            Some(Ok(Message::Text(text))) if text.as_str() == "5" && probed => return true,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            _ => return false,
        }
    }
}

async fn run(socket: &mut WebSocket, app: &AppState, conn: &Arc<Conn>, queue: &mut Receiver<Outgoing>) {
    match drive(socket, app, conn, queue).await {
        End::Close(code, reason) => send_close(socket, code, reason).await,
        End::Drain => {
            // Shutdown: what is queued, then `disconnect` for every namespace, then 1001.
            conn.disconnect_all();
            let drain = async {
                while let Some(next) = queue.try_recv() {
                    socket.feed(Message::Text(next.into_text())).await?;
                }
                socket.flush().await
            };
            if tokio::time::timeout(app.settings.shutdown_timeout, drain).await.is_err() {
                tracing::debug!("socket.io queue not drained before the shutdown deadline");
            }
            let reason = CloseReason::ServerShutdown;
            send_close(socket, close_code(reason), reason.message()).await;
        }
        End::Gone => {}
    }
}

/// Sends one packet and whatever else is queued behind it as one flush.
async fn send_batch(
    socket: &mut WebSocket,
    first: Outgoing,
    queue: &mut Receiver<Outgoing>,
) -> Result<(), axum::Error> {
    socket.feed(Message::Text(first.into_text())).await?;
    for _ in 1..MAX_BATCH {
        match queue.try_recv() {
            Some(next) => socket.feed(Message::Text(next.into_text())).await?,
            None => break,
        }
    }
    socket.flush().await
}

async fn drive(socket: &mut WebSocket, app: &AppState, conn: &Arc<Conn>, queue: &mut Receiver<Outgoing>) -> End {
    let interval = app.settings.socketio_ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pong_deadline = tokio::time::sleep(interval);
    tokio::pin!(pong_deadline);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            biased;
            _ = conn.link.attention.notified() => {
                if let Some(reason) = conn.take_closes() {
                    return End::Close(close_code(reason), reason.message());
                }
            }
            _ = app.shutdown.cancelled() => return End::Drain,
            incoming = socket.recv() => match incoming {
                None => return End::Gone,
                Some(Err(error)) if is_too_large(&error) => {
                    count_error(ErrorCode::PayloadTooLarge);
                    return End::Close(1009, "frame larger than the configured maximum");
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "socket.io websocket receive error");
                    return End::Gone;
                }
                Some(Ok(Message::Text(text))) => match parse_engine(text.as_str()) {
                    Ok(EnginePacket::Message(message)) => conn.on_message(message),
                    Ok(EnginePacket::Pong(_)) => awaiting_pong = false,
                    Ok(EnginePacket::Ping(data)) => conn.send_packet(format!("3{data}")),
                    Ok(EnginePacket::Close) => return End::Gone,
                    Ok(EnginePacket::Noop | EnginePacket::Upgrade) => {}
                    Err(error) => {
                        count_error(ErrorCode::InvalidPayload);
                        tracing::debug!(%error, "not an engine.io packet: closing");
                        return End::Close(1003, "malformed engine.io packet");
                    }
                },
                Some(Ok(Message::Binary(_))) => conn.reject_binary(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) => return End::Gone,
            },
            Ok(item) = queue.recv() => {
                tokio::select! {
                    biased;
                    _ = conn.link.fatal_signal.cancelled() => {
                        let reason = conn.take_closes().unwrap_or(CloseReason::SlowConsumer);
                        return End::Close(close_code(reason), reason.message());
                    }
                    sent = send_batch(socket, item, queue) => {
                        if sent.is_err() {
                            return End::Gone;
                        }
                    }
                }
            }
            _ = &mut pong_deadline, if awaiting_pong => {
                metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::HeartbeatTimeout.as_str()).increment(1);
                return End::Gone;
            }
            _ = ping.tick() => {
                if !awaiting_pong {
                    if socket.send(Message::Text(Utf8Bytes::from_static("2"))).await.is_err() {
                        return End::Gone;
                    }
                    awaiting_pong = true;
                    pong_deadline.as_mut().reset(Instant::now() + app.settings.socketio_ping_timeout);
                }
            }
        }
    }
}
