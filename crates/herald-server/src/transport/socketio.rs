//! Socket.IO v4 through socketioxide, on the same port under `/socket.io/`.
//!
//! Namespace `/` (canonical names, plus seed 000's commands): a token in the `auth`
//! payload `{token}`, `Authorization: Bearer` or `?token=` is verified at connect and a
//! bad one is refused with `connect_error`; a client that connects without one must send
//! `authenticate {token}` within the grace period or is disconnected.
//! Namespace `/notifications` (seed 002): the token is required at connect.
//!
//! Every command answers its ack callback when the client gives one:
//! `{success: true, ...}` or `{success: false, error: {code, message}}`. Errors are also
//! emitted as an `error` event `{message, code}` for clients that do not use acks
//! (socketioxide cannot tell whether a client asked for an ack).

use std::fmt;
use std::sync::Arc;

use herald_core::metrics::{self as m, count_error};
use herald_core::{CloseReason, Delivery, ErrorCode, OfferError, Outlet, Principal, SessionGuard, Topic, TopicKind};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;

use crate::limits::ConnectionPermit;
use crate::state::{AppState, peer_ip, query_param, token_from_request};
use crate::wire::Dialect;

/// The hub's outlet for one socket: emits through socketioxide's bounded per-socket
/// buffer, whose overflow is a slow consumer.
struct SocketOutlet {
    socket: SocketRef,
    dialect: Dialect,
}

impl Outlet for SocketOutlet {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        let event = delivery.event();
        match self.socket.emit(self.dialect.outgoing(event.name()), event.data()) {
            Ok(()) => Ok(()),
            Err(socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)) => {
                Err(OfferError::Full)
            }
            Err(_) => Err(OfferError::Closed),
        }
    }

    fn close(&self, reason: CloseReason) {
        // The buffer may be full (slow consumer); the error event is best effort.
        if self.socket.emit("error", &json!({"code": reason.as_str(), "message": reason.message()})).is_err() {
            tracing::debug!(socket = %self.socket.id, "error event not sent before disconnect");
        }
        if let Err(error) = self.socket.clone().disconnect() {
            tracing::debug!(%error, "socket already disconnected");
        }
    }
}

/// A session's state in the socket's extensions; dropped on disconnect.
struct SocketSession {
    guard: SessionGuard,
    _permit: Option<ConnectionPermit>,
}

/// The admission permit taken in the connect middleware, handed to the session.
#[derive(Clone)]
struct PendingPermit(Arc<parking_lot::Mutex<Option<ConnectionPermit>>>);

/// Why a namespace connection was refused; shown to the client as `connect_error`'s message.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The token a connecting socket presents: `auth.token`, then the header, then `?token=`.
fn presented_token(socket: &SocketRef, auth: &Option<Value>) -> Option<String> {
    let from_auth = auth
        .as_ref()
        .and_then(|auth| auth.get("token"))
        .and_then(Value::as_str)
        .map(|token| token.strip_prefix("Bearer ").unwrap_or(token).to_owned())
        .filter(|token| !token.is_empty());
    let parts = socket.req_parts();
    from_auth.or_else(|| token_from_request(&parts.headers, parts.uri.query()))
}

/// Registers both namespaces on `io`.
pub fn register(io: &SocketIo, state: AppState) {
    for (path, dialect, token_required) in
        [("/", Dialect::Canonical, false), ("/notifications", Dialect::Notifications, true)]
    {
        let middleware_state = state.clone();
        let handler_state = state.clone();
        let middleware = move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let state = middleware_state.clone();
            async move { admit(&state, &socket, auth.ok(), token_required, dialect) }
        };
        let handler = move |socket: SocketRef| {
            let state = handler_state.clone();
            async move { on_connect(state, socket, dialect) }
        };
        io.ns(path, handler.with(middleware));
    }
}

/// Connect middleware: admission limits, then the token if one is presented (or required);
/// then the socket's command handlers and, when authenticated, its hub session.
///
/// Everything is set up here, before socketioxide sends the CONNECT packet: it runs the
/// connect handler only after that packet, so a client that emits right after connecting
/// (seed 000's `join_channel`) would otherwise race the handler registration.
fn admit(
    state: &AppState,
    socket: &SocketRef,
    auth: Option<Value>,
    token_required: bool,
    dialect: Dialect,
) -> Result<(), Refusal> {
    let token = presented_token(socket, &auth);
    let principal = match (token, token_required) {
        (Some(token), _) => Some(state.verifier.verify(&token)),
        (None, true) => Some(Err(herald_auth::AuthError::missing())),
        (None, false) => None,
    };
    let principal = match principal {
        Some(Ok(principal)) => Some(principal),
        Some(Err(error)) => {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => error.code.as_str()).increment(1);
            return Err(Refusal { code: error.code, message: error.message });
        }
        None => None,
    };
    let permit = state
        .admission
        .admit(peer_ip(&socket.req_parts().extensions))
        .map_err(|refused| Refusal { code: refused.0, message: "connection refused by limits".into() })?;
    socket.extensions.insert(PendingPermit(Arc::new(parking_lot::Mutex::new(Some(permit)))));
    socket.on_disconnect(|socket: SocketRef, reason: DisconnectReason| async move {
        let session = socket.extensions.remove::<Arc<SocketSession>>();
        tracing::debug!(socket = %socket.id, ?reason, had_session = session.is_some(), "socket disconnected");
    });
    register_commands(state, socket, dialect);
    if let Some(principal) = principal {
        start_session(state, socket, principal, dialect);
    }
    Ok(())
}

fn on_connect(state: AppState, socket: SocketRef, dialect: Dialect) {
    if socket.extensions.get::<Arc<SocketSession>>().is_some() {
        greet(&socket, dialect);
        return;
    }
    // Seed 000: the client may authenticate with an event within the grace period.
    let grace = state.settings.auth_timeout;
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = shutdown.cancelled() => return,
        }
        if socket.connected() && socket.extensions.get::<Arc<SocketSession>>().is_none() {
            metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::AuthTimeout.as_str()).increment(1);
            emit_error(&socket, ErrorCode::NotAuthenticated, CloseReason::AuthTimeout.message());
            if let Err(error) = socket.disconnect() {
                tracing::debug!(%error, "socket already gone at auth timeout");
            }
        }
    });
}

/// Tells a freshly authenticated socket on `/` who it is.
fn greet(socket: &SocketRef, dialect: Dialect) {
    if dialect != Dialect::Canonical {
        return;
    }
    let Some(session) = socket.extensions.get::<Arc<SocketSession>>() else { return };
    let user_id = session.guard.principal().user_id.as_str();
    emit(socket, "authenticated", &json!({"success": true, "userId": user_id}));
    let connected =
        json!({"userId": user_id, "socketId": socket.id.to_string(), "sessionId": session.guard.id().to_string()});
    emit(socket, "connected", &connected);
}

fn start_session(state: &AppState, socket: &SocketRef, principal: Principal, dialect: Dialect) {
    let permit = socket.extensions.get::<PendingPermit>().and_then(|pending| pending.0.lock().take());
    let outlet = Arc::new(SocketOutlet { socket: socket.clone(), dialect });
    let guard = state.hub.register(principal, "socketio", outlet);
    socket.extensions.insert(Arc::new(SocketSession { guard, _permit: permit }));
}

fn emit(socket: &SocketRef, event: &str, data: &Value) {
    if let Err(error) = socket.emit(event, data) {
        tracing::debug!(%error, event, socket = %socket.id, connected = socket.connected(), "emit failed");
    }
}

fn emit_error(socket: &SocketRef, code: ErrorCode, message: &str) {
    count_error(code);
    emit(socket, "error", &json!({"message": message, "code": code.as_str()}));
}

/// Answers a command: the ack when the client asked for one, and on failure also an
/// `error` event.
fn answer(socket: &SocketRef, ack: AckSender, result: Result<Value, (ErrorCode, String)>) {
    let body = match result {
        Ok(mut body) => {
            body["success"] = json!(true);
            body
        }
        Err((code, message)) => {
            emit_error(socket, code, &message);
            json!({"success": false, "error": {"code": code.as_str(), "message": message}})
        }
    };
    if let Err(error) = ack.send(&body) {
        tracing::debug!(%error, "ack not sent");
    }
}

fn session_of(socket: &SocketRef) -> Result<Arc<SocketSession>, (ErrorCode, String)> {
    socket.extensions.get::<Arc<SocketSession>>().ok_or((
        ErrorCode::NotAuthenticated,
        "authenticate first: send a token in auth or an authenticate event".into(),
    ))
}

/// Reads a string field (strings or numbers accepted) from a command payload.
fn field(data: &Value, name: &str) -> Result<String, (ErrorCode, String)> {
    match data.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        _ => Err((ErrorCode::InvalidPayload, format!("payload must be {{\"{name}\": string}}"))),
    }
}

fn subscribe(
    socket: &SocketRef,
    topic: Result<Topic, (ErrorCode, String)>,
    on: bool,
) -> Result<Value, (ErrorCode, String)> {
    let session = session_of(socket)?;
    let topic = topic?;
    if on {
        session.guard.subscribe(topic.clone()).map_err(|error| (error.code(), error.to_string()))?;
    } else {
        session.guard.unsubscribe(&topic);
    }
    Ok(json!({"topic": topic.as_str()}))
}

fn typed_topic(kind: TopicKind, id: Result<String, (ErrorCode, String)>) -> Result<Topic, (ErrorCode, String)> {
    Topic::with_id(kind, &id?).map_err(|error| (ErrorCode::InvalidTopic, error.to_string()))
}

fn counted(name: &'static str) {
    metrics::counter!(m::EVENTS_IN, "event" => name).increment(1);
}

/// Seed 000's commands that name one topic by a typed id: (event, topic kind, payload
/// field, subscribe or unsubscribe).
const TYPED_COMMANDS: &[(&str, TopicKind, &str, bool)] = &[
    ("join_channel", TopicKind::Channel, "channelId", true),
    ("leave_channel", TopicKind::Channel, "channelId", false),
    ("subscribe_user", TopicKind::User, "userId", true),
    ("unsubscribe_user", TopicKind::User, "userId", false),
];

fn topic_field(data: &Value) -> Result<Topic, (ErrorCode, String)> {
    field(data, "topic")
        .and_then(|name| Topic::parse(&name).map_err(|error| (ErrorCode::InvalidTopic, error.to_string())))
}

fn register_commands(state: &AppState, socket: &SocketRef, dialect: Dialect) {
    match dialect {
        Dialect::Notifications => {
            socket.on("subscribe_notifications", |socket: SocketRef, ack: AckSender| async move {
                counted("subscribe_notifications");
                answer(&socket, ack, session_of(&socket).map(|_| json!({})));
            });
        }
        _ => {
            let auth_state = state.clone();
            socket.on("authenticate", move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                let state = auth_state.clone();
                async move {
                    counted("authenticate");
                    let result = authenticate(&state, &socket, data.unwrap_or(Value::Null));
                    answer(&socket, ack, result);
                }
            });
            for &(name, kind, id_field, on) in TYPED_COMMANDS {
                socket.on(name, move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| async move {
                    counted(name);
                    let data = data.unwrap_or(Value::Null);
                    answer(&socket, ack, subscribe(&socket, typed_topic(kind, field(&data, id_field)), on));
                });
            }
            for (name, on) in [("subscribe", true), ("unsubscribe", false)] {
                socket.on(name, move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| async move {
                    counted(name);
                    let data = data.unwrap_or(Value::Null);
                    answer(&socket, ack, subscribe(&socket, topic_field(&data), on));
                });
            }
        }
    }
    socket.on_fallback(|socket: SocketRef, Event(event): Event, ack: AckSender| async move {
        counted("unknown");
        let shown: String = event.chars().take(100).collect();
        answer(&socket, ack, Err((ErrorCode::UnknownEvent, format!("unknown event {shown:?}"))));
    });
}

/// Seed 000's `authenticate {token}` for sockets that connected without a token.
fn authenticate(state: &AppState, socket: &SocketRef, data: Value) -> Result<Value, (ErrorCode, String)> {
    if socket.extensions.get::<Arc<SocketSession>>().is_some() {
        return Ok(json!({"alreadyAuthenticated": true}));
    }
    let token = match &data {
        Value::String(token) => Some(token.clone()),
        other => other.get("token").and_then(Value::as_str).map(str::to_owned),
    }
    .filter(|token| !token.is_empty())
    .or_else(|| query_param(socket.req_parts().uri.query(), "token"));
    let principal = state.authenticate(token.as_deref()).map_err(|error| (error.code, error.message))?;
    start_session(state, socket, principal, Dialect::Canonical);
    greet(socket, Dialect::Canonical);
    Ok(json!({}))
}
