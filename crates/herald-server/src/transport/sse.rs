//! Server-Sent Events at `/events` (canonical: `id:`/`event:`/`data:`) and
//! `/notifications/events` (seed 002: `data: {"type", "data"}` read by `onmessage`).
//!
//! The token comes from `Authorization: Bearer` or `?token=`. Keep-alive comments are
//! sent every `HEARTBEAT_INTERVAL`. When the server ends the session it sends an `error`
//! message with `{code, message}` and closes the stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use herald_core::{CloseReason, Delivery, Position, SessionGuard};
use http::{HeaderMap, HeaderValue, header};
use serde_json::json;
use tokio::time::Interval;

use super::QueueOutlet;
use crate::limits::ConnectionPermit;
use crate::state::{AppState, query_param};
use crate::wire::{self, Dialect};

/// How long a browser waits before reconnecting, announced once per stream.
const RETRY_MS: u64 = 3_000;

/// `GET /events`.
pub async fn canonical(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    accept(state, peer, headers, query, Dialect::Canonical)
}

/// `GET /notifications/events`.
pub async fn notifications(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    accept(state, peer, headers, query, Dialect::Notifications)
}

/// The state one SSE stream carries between polls.
struct StreamState {
    state: AppState,
    session: SessionGuard,
    queue: super::mailbox::Receiver<Arc<Delivery>>,
    keep_alive: Interval,
    dialect: Dialect,
    /// The opening bytes, sent before anything else.
    opening: Option<Bytes>,
    finished: bool,
    _presence: crate::inbox::Presence,
    _permit: ConnectionPermit,
}

fn accept(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    dialect: Dialect,
) -> Response {
    let (principal, permit) = match state.admit_request(&headers, query.as_deref(), peer) {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    // A reconnecting EventSource names the last event it received: a broker position
    // (`epoch:offset`, what it missed is recovered) or a notification id (catch-up from
    // the inbox). `?since=epoch:offset` does the same for a first connection.
    let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok()).map(str::trim);
    let since = last_event_id
        .and_then(Position::parse)
        .or_else(|| query_param(query.as_deref(), "since").as_deref().and_then(Position::parse));
    let after = last_event_id.and_then(|value| value.parse::<i64>().ok()).filter(|id| *id >= 0);
    let (outlet, queue) = QueueOutlet::channel(state.settings.session_queue);
    let joined = state.join(principal, "sse", outlet, after, since);
    let session = joined.session;
    let mut opening = format!("retry: {RETRY_MS}\n\n");
    if dialect == Dialect::Canonical {
        let hello = json!({"userId": session.principal().user_id.as_str(), "sessionId": session.id().to_string()});
        opening.push_str(&String::from_utf8_lossy(&wire::sse_message(None, Some("connected"), &hello.to_string())));
    }
    let mut keep_alive = tokio::time::interval(state.settings.heartbeat_interval);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keep_alive.reset();
    let stream_state = StreamState {
        state: state.clone(),
        session,
        queue,
        keep_alive,
        dialect,
        opening: Some(Bytes::from(opening)),
        finished: false,
        _presence: joined.presence,
        _permit: permit,
    };
    let body = stream::unfold(stream_state, next_chunk);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn closing_message(reason: CloseReason, dialect: Dialect) -> Bytes {
    let payload = json!({"code": reason.as_str(), "message": reason.message()}).to_string();
    match dialect {
        Dialect::Notifications => wire::sse_message(None, None, &wire::typed_data("error", &payload)),
        _ => wire::sse_message(None, Some("error"), &payload),
    }
}

/// The stream's last chunk: at shutdown what is still queued, then the reason.
fn last_chunk(s: &mut StreamState, reason: CloseReason) -> Bytes {
    let mut chunk = Vec::new();
    if reason == CloseReason::ServerShutdown {
        while let Some(delivery) = s.queue.try_recv() {
            chunk.extend_from_slice(&wire::sse_encoded(&delivery, s.dialect));
        }
    }
    chunk.extend_from_slice(&closing_message(reason, s.dialect));
    s.finished = true;
    tracing::debug!(session = %s.session.id(), %reason, "sse stream closed");
    Bytes::from(chunk)
}

async fn next_chunk(mut s: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if s.finished {
        return None;
    }
    if let Some(opening) = s.opening.take() {
        return Some((Ok(opening), s));
    }
    tokio::select! {
        biased;
        _ = s.state.shutdown.cancelled() => Some((Ok(last_chunk(&mut s, CloseReason::ServerShutdown)), s)),
        delivery = s.queue.recv() => {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(reason) => return Some((Ok(last_chunk(&mut s, reason)), s)),
            };
            s.session.touch();
            let first = wire::sse_encoded(&delivery, s.dialect);
            let chunk = match s.queue.try_recv() {
                None => first,
                Some(second) => {
                    let mut batch = first.to_vec();
                    batch.extend_from_slice(&wire::sse_encoded(&second, s.dialect));
                    while let Some(next) = s.queue.try_recv() {
                        batch.extend_from_slice(&wire::sse_encoded(&next, s.dialect));
                        if batch.len() > 64 * 1024 {
                            break;
                        }
                    }
                    Bytes::from(batch)
                }
            };
            Some((Ok(chunk), s))
        }
        _ = s.keep_alive.tick() => {
            // An SSE client never sends; the stream being read is its activity.
            s.session.touch();
            Some((Ok(Bytes::from_static(b": keep-alive\n\n")), s))
        }
    }
}
