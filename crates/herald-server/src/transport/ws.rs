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

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::metrics::{self as m, count_error};
use herald_core::{CloseReason, Delivery, ErrorCode, Event, Position, SessionGuard, Topic};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::QueueOutlet;
use super::mailbox::Receiver;
use crate::chat::command as chat_command;
use crate::inbox::{Presence, api as inbox_api};
use crate::limits::{ConnectionPermit, EventLimiter};
use crate::state::{AppState, query_param};
use crate::wire::{self, Dialect};

/// Initial read buffer per connection. Clients send little (commands, pings), and the
/// buffer grows when a larger frame arrives, so idle connections stay small.
pub const READ_BUFFER: usize = 128;
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
    // `?since=epoch:offset`: a returning client gets what it missed first.
    let since = match query_param(query.as_deref(), "since") {
        None => None,
        Some(text) => match Position::parse(&text) {
            Some(since) => Some(since),
            None => {
                return crate::http::ApiError::bad_request(ErrorCode::InvalidPayload, "since must be \"epoch:offset\"")
                    .into_response();
            }
        },
    };
    let (outlet, queue) = QueueOutlet::channel(state.settings.session_queue);
    let joined = state.join(principal, "ws", outlet, None, since);
    if dialect == Dialect::Community {
        crate::chat::join_all(&state, &joined.session);
    }
    let link = Link {
        session: joined.session,
        through: joined.through,
        queue,
        dialect,
        limiter: EventLimiter::default(),
        _presence: joined.presence,
        _permit: permit,
    };
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
    dialect: Dialect,
    /// The inbox mark at registration (see `inbox::Joined`).
    through: i64,
    /// This connection's client event rate limits.
    limiter: EventLimiter,
    _presence: Presence,
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
    /// A client's request id, echoed in the `ack` frame of an inbox command.
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TopicPayload {
    topic: String,
    /// `epoch:offset`: also give what was missed on the topic since then.
    #[serde(default)]
    since: Option<String>,
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

/// Answers one text frame from the client: at once, or (commands that wait for the
/// store or the broker) with an `ack` frame through the session's queue once they have.
fn handle_text(
    raw: &str,
    dialect: Dialect,
    session: &SessionGuard,
    through: i64,
    limiter: &mut EventLimiter,
    state: &AppState,
) -> Option<Message> {
    let frame: IncomingFrame = match serde_json::from_str(raw) {
        Ok(frame) => frame,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return Some(error_frame(ErrorCode::InvalidJson, "frame is not valid JSON", None));
        }
        Err(_) => {
            return Some(error_frame(
                ErrorCode::InvalidPayload,
                "frame must be an object {\"type\": string, \"payload\": object}",
                None,
            ));
        }
    };
    metrics::counter!(m::EVENTS_IN, "event" => m::event_label(&frame.kind)).increment(1);
    let kind = dialect.incoming(&frame.kind);
    if let Err(wait) = limiter.check(&state.settings.event_limits, kind) {
        return Some(rate_limited_frame(&frame.kind, wait));
    }
    if let Some(answer) = inbox_api::command(state, Some((session.principal(), through)), kind, frame.payload.clone()) {
        reply_later(state, session, dialect, kind, frame.id, answer);
        return None;
    }
    if let Some(answer) = chat_command::command(state, session, kind, frame.payload.clone()) {
        reply_later(state, session, dialect, kind, frame.id, answer);
        return None;
    }
    Some(answer_now(kind, frame.payload, session, state))
}

/// The error frame of an event over its rate limit: it is dropped, the connection stays.
fn rate_limited_frame(event: &str, wait: Duration) -> Message {
    count_error(ErrorCode::RateLimited);
    let payload = json!({
        "code": ErrorCode::RateLimited.as_str(),
        "message": format!("too many {event} events; retry later"),
        "event": event.chars().take(100).collect::<String>(),
        "retryAfterMs": wait.as_millis().max(1) as u64,
    });
    text(wire::ws_frame("error", &payload.to_string()))
}

/// Sends a command's answer once it is ready, through the session's queue: an `ack`
/// frame `{success, event, id?, ...}` (seed 001's clients expect no acks, so the
/// community dialect gets only failures, as `error` frames).
fn reply_later(
    state: &AppState,
    session: &SessionGuard,
    dialect: Dialect,
    event: &str,
    request: Option<serde_json::Value>,
    answer: impl Future<Output = inbox_api::CommandResult> + Send + 'static,
) {
    let (state, id, event) = (state.clone(), session.id(), event.to_owned());
    state.tasks.clone().spawn(async move {
        let (name, mut body) = match answer.await {
            Ok(_) if dialect == Dialect::Community => return,
            Ok(body) => ("ack", body),
            Err((code, message)) if dialect == Dialect::Community => {
                count_error(code);
                ("error", json!({"code": code.as_str(), "message": message}))
            }
            Err((code, message)) => {
                count_error(code);
                ("ack", json!({"success": false, "error": {"code": code.as_str(), "message": message}}))
            }
        };
        if name == "ack" && body.get("success").is_none() {
            body["success"] = json!(true);
        }
        body["event"] = json!(event);
        if let Some(request) = request {
            body["id"] = request;
        }
        if let Ok(reply) = Event::from_value(name, &body) {
            state.hub.send_to(id, Arc::new(Delivery::new(reply)));
        }
    });
}

/// The commands answered without the store.
fn answer_now(kind: &str, payload: serde_json::Value, session: &SessionGuard, state: &AppState) -> Message {
    match kind {
        "PING" => text(wire::ws_frame("PONG", &json!({"timestamp": now_millis()}).to_string())),
        "ping" => text(wire::ws_frame("pong", &json!({"timestamp": now_millis()}).to_string())),
        kind @ ("subscribe" | "unsubscribe") => {
            let Ok(TopicPayload { topic, since }) = serde_json::from_value(payload) else {
                return error_frame(ErrorCode::InvalidPayload, "payload must be {\"topic\": string}", Some(kind));
            };
            let since = match since.as_deref().map(Position::parse) {
                None => None,
                Some(Some(since)) => Some(since),
                Some(None) => {
                    return error_frame(ErrorCode::InvalidPayload, "since must be \"epoch:offset\"", Some(kind));
                }
            };
            let topic = match Topic::parse(&topic) {
                Ok(topic) => topic,
                Err(error) => return error_frame(ErrorCode::InvalidTopic, &error.to_string(), Some(kind)),
            };
            if kind == "subscribe" {
                if let Err(error) = state.subscribe(session, topic.clone(), since) {
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

/// Why a write stopped before it finished.
enum Halt {
    /// The hub closed the session (a slow consumer, most likely) while the write waited.
    Closed(CloseReason),
    /// The connection failed.
    Gone,
}

/// Sends one delivery and whatever else is queued behind it as one flush.
///
/// Not an `async fn`, and no frame is held across an await, so that this adds little to
/// every connection's future (see [`run`]).
#[allow(clippy::manual_async_fn, reason = "an async fn would keep its arguments twice in its future")]
fn send_batch<'a>(
    socket: &'a mut WebSocket,
    first: Arc<Delivery>,
    queue: &'a mut Receiver<Arc<Delivery>>,
    dialect: Dialect,
) -> impl Future<Output = Result<(), Halt>> + 'a {
    async move {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(delivery) = next.take() {
            poll_fn(|cx| unless_closed(socket.poll_ready_unpin(cx), queue, cx)).await?;
            socket.start_send_unpin(delivery_frame(&delivery, dialect)).map_err(|_| Halt::Gone)?;
            fed += 1;
            if fed < MAX_BATCH {
                next = queue.try_recv();
            }
        }
        poll_fn(|cx| unless_closed(socket.poll_flush_unpin(cx), queue, cx)).await
    }
}

/// A delivery's frame in the session's dialect (encoded once per delivery and dialect).
fn delivery_frame(delivery: &Delivery, dialect: Dialect) -> Message {
    Message::Text(wire::ws_encoded(delivery, dialect))
}

/// A write's progress, unless it is stuck and the hub has closed the session meanwhile.
fn unless_closed(
    write: Poll<Result<(), axum::Error>>,
    queue: &mut Receiver<Arc<Delivery>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Halt>> {
    match write {
        Poll::Ready(result) => Poll::Ready(result.map_err(|_| Halt::Gone)),
        Poll::Pending => queue.poll_closed(cx).map(|reason| Err(Halt::Closed(reason))),
    }
}

/// The frame that greets a canonical client: its user, session and topics.
fn hello(session: &SessionGuard) -> Message {
    let topics: Vec<String> = session.topics().iter().map(|t| t.to_string()).collect();
    let hello = json!({"userId": session.principal().user_id.as_str(), "sessionId": session.id().to_string(), "topics": topics});
    text(wire::ws_frame("connected", &hello.to_string()))
}

/// Serves one upgraded connection until it ends.
///
/// Not an `async fn`: an async fn keeps its arguments twice in its future
/// (rust-lang/rust#62958), and the WebSocket alone is 368 bytes. The block below uses the
/// captured values in place and keeps its temporaries out of the await points, so an idle
/// connection's future is the socket, the link and the session loop's state.
#[allow(clippy::manual_async_fn, reason = "an async fn would keep its arguments twice in its future")]
fn run(mut socket: WebSocket, state: AppState, mut link: Link) -> impl Future<Output = ()> {
    async move {
        let link = &mut link;
        tracing::debug!(session = %link.session.id(), user = %link.session.principal().user_id, dialect = ?link.dialect, "websocket session opened");
        if link.dialect == Dialect::Canonical && socket.send(hello(&link.session)).await.is_err() {
            return;
        }
        let end = drive(&mut socket, &state, link).await;
        // The closing paths hold timers; boxed, they cost nothing while the session is open.
        Box::pin(finish(&mut socket, &state, &mut link.queue, link.dialect, end)).await;
        tracing::debug!(session = %link.session.id(), "websocket session closed");
    }
}

/// Says goodbye the way `end` asks.
async fn finish(
    socket: &mut WebSocket,
    state: &AppState,
    queue: &mut Receiver<Arc<Delivery>>,
    dialect: Dialect,
    end: End,
) {
    match end {
        End::Close(code, reason) => send_close(socket, code, reason).await,
        End::Drain => {
            // Shutdown: flush what is already queued, then say goodbye.
            let drain = async {
                while let Some(next) = queue.try_recv() {
                    socket.feed(delivery_frame(&next, dialect)).await?;
                }
                socket.flush().await
            };
            if tokio::time::timeout(state.settings.shutdown_timeout, drain).await.is_err() {
                tracing::debug!("queue not drained before the shutdown deadline");
            }
            let reason = CloseReason::ServerShutdown;
            send_close(socket, close_code(reason), reason.message()).await;
        }
        End::Gone => {}
    }
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

/// What woke the session loop.
enum Wake {
    Closed(CloseReason),
    Shutdown,
    Incoming(Option<Result<Message, axum::Error>>),
    Deliver(Arc<Delivery>),
    Heartbeat,
}

/// The waker a session polls its socket with: it records that the socket woke the task,
/// then wakes it. A wake for a delivery then skips the socket's read path (axum,
/// tungstenite, hyper's upgrade and the registration: about 3% of the server's CPU in
/// the chat benchmark when polled on every wake, measured with perf).
struct SocketWake {
    /// Set by every wake from the socket (read or write readiness) and whenever the
    /// socket handed out a frame, since more may be buffered; cleared before each read.
    woken: AtomicBool,
    task: Waker,
}

impl std::task::Wake for SocketWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

async fn drive(socket: &mut WebSocket, state: &AppState, link: &mut Link) -> End {
    let Link { session, queue, dialect, through, limiter, .. } = link;
    let (dialect, through) = (*dialect, *through);
    let every = state.settings.heartbeat_interval;
    let mut heartbeat = Box::pin(tokio::time::sleep(every));
    // The timer's deadline, kept here too: read from the boxed timer on every wake, it was
    // a cache miss per delivery (1.9% of the server's perf samples in the chat benchmark).
    let mut heartbeat_due = heartbeat.deadline();
    let mut shutdown = pin!(state.shutdown.cancelled());
    // The timer and the shutdown wait are polled once each to register this task's
    // waker (the same at every poll of a task), which they wake when they fire; after
    // that a clock read and a flag tell whether they have, at a fraction of a poll's cost
    // on every wake.
    let (mut heartbeat_armed, mut shutdown_armed) = (false, false);
    let mut awaiting_pong = false;
    // A delivery taken from the mailbox in a round that then served the socket first.
    let mut taken: Option<Arc<Delivery>> = None;
    // Made at the first poll, from the task's waker (the same at every poll of a task).
    let mut socket_wake: Option<(Arc<SocketWake>, Waker)> = None;
    loop {
        // Every source polled in priority order, with no future kept per source (as
        // `select!` would): an idle connection's loop holds only the timer and the
        // shutdown wait. The mailbox is locked once per round: its close outranks
        // everything, and the delivery it hands out waits in `taken` while incoming
        // frames go first.
        let wake = poll_fn(|cx| {
            let closed = match taken {
                None => match queue.poll_recv(cx) {
                    Poll::Ready(Ok(delivery)) => {
                        taken = Some(delivery);
                        Poll::Pending
                    }
                    Poll::Ready(Err(reason)) => Poll::Ready(reason),
                    Poll::Pending => Poll::Pending,
                },
                Some(_) => queue.poll_closed(cx),
            };
            if let Poll::Ready(reason) = closed {
                return Poll::Ready(Wake::Closed(reason));
            }
            let shutting_down = if shutdown_armed {
                state.shutdown.is_cancelled()
            } else {
                shutdown_armed = true;
                shutdown.as_mut().poll(cx).is_ready()
            };
            if shutting_down {
                return Poll::Ready(Wake::Shutdown);
            }
            let (socket_woke, waker) = match &socket_wake {
                Some((wake, waker)) if wake.task.will_wake(cx.waker()) => (wake, waker),
                _ => {
                    let flag = Arc::new(SocketWake { woken: AtomicBool::new(true), task: cx.waker().clone() });
                    let waker = Waker::from(flag.clone());
                    let (flag, waker) = socket_wake.insert((flag, waker));
                    (&*flag, &*waker)
                }
            };
            if socket_woke.woken.swap(false, Ordering::Acquire)
                && let Poll::Ready(incoming) = socket.poll_next_unpin(&mut Context::from_waker(waker))
            {
                socket_woke.woken.store(true, Ordering::Release);
                return Poll::Ready(Wake::Incoming(incoming));
            }
            if let Some(delivery) = taken.take() {
                return Poll::Ready(Wake::Deliver(delivery));
            }
            let due = if heartbeat_armed {
                tokio::time::Instant::now() >= heartbeat_due
            } else {
                heartbeat_armed = true;
                heartbeat.as_mut().poll(cx).is_ready()
            };
            if due { Poll::Ready(Wake::Heartbeat) } else { Poll::Pending }
        })
        .await;
        match wake {
            Wake::Closed(reason) => return End::Close(close_code(reason), reason.message()),
            Wake::Shutdown => {
                // The drain sends what is still queued; a delivery already taken goes first.
                if let Some(delivery) = taken.take()
                    && socket.feed(delivery_frame(&delivery, dialect)).await.is_err()
                {
                    return End::Gone;
                }
                return End::Drain;
            }
            Wake::Incoming(incoming) => match incoming {
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
                    if let Some(reply) = handle_text(raw.as_str(), dialect, session, through, limiter, state)
                        && socket.send(reply).await.is_err()
                    {
                        return End::Gone;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    session.touch();
                    let reply =
                        error_frame(ErrorCode::InvalidPayload, "binary frames are not supported; send JSON text", None);
                    if socket.send(reply).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) => return End::Gone,
            },
            Wake::Deliver(delivery) => match send_batch(socket, delivery, queue, dialect).await {
                Ok(()) => {}
                Err(Halt::Closed(reason)) => return End::Close(close_code(reason), reason.message()),
                Err(Halt::Gone) => return End::Gone,
            },
            Wake::Heartbeat => {
                heartbeat_due = tokio::time::Instant::now() + every;
                heartbeat.as_mut().reset(heartbeat_due);
                heartbeat_armed = false;
                if awaiting_pong {
                    metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::HeartbeatTimeout.as_str())
                        .increment(1);
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
