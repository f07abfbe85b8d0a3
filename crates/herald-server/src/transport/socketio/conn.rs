//! One Engine.IO connection's Socket.IO side: its namespace sockets, their hub sessions,
//! and the commands they accept. Transport-neutral: long-polling and WebSocket both feed
//! it message text and drain its one bounded queue.

use std::sync::{Arc, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;
use herald_core::metrics::{self as m, count_error};
use herald_core::{
    CloseReason, Delivery, ErrorCode, OfferError, Outlet, Position, Principal, SessionGuard, Topic, TopicKind,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::packet::{self, Kind};
use crate::chat::command as chat_command;
use crate::inbox::{Joined, Presence, api as inbox_api};
use crate::limits::{ConnectionPermit, EventLimiter};
use crate::state::AppState;
use crate::transport::mailbox::{self, PushError, Receiver};
use crate::wire::{self, Dialect};

/// One item of a connection's outgoing queue.
pub enum Outgoing {
    /// A published event, framed once per namespace for every recipient.
    Event(Arc<Delivery>, Dialect),
    /// Any other packet (acks, greetings, errors, pings), as Engine.IO text. Boxed so
    /// that an item is two words: the queue's first block is allocated with the connection.
    #[allow(clippy::box_collection)]
    Packet(Box<String>),
}

impl Outgoing {
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Outgoing::Event(delivery, dialect) => wire::sio_encoded(&delivery, dialect),
            Outgoing::Packet(text) => Utf8Bytes::from(*text),
        }
    }

    pub fn packet(text: String) -> Self {
        Outgoing::Packet(Box::new(text))
    }
}

/// What the hub's outlets and the connection's driver share.
pub struct Link {
    sender: mailbox::Sender<Outgoing>,
    /// Namespace sockets the hub closed, waiting for the driver to tell their clients.
    closing: Mutex<Vec<(Dialect, CloseReason)>>,
    /// Set when the whole connection must end (its queue overflowed).
    fatal: OnceLock<CloseReason>,
    /// Cancelled with `fatal`, to abandon a write stuck on a client that stopped reading.
    pub fatal_signal: CancellationToken,
    /// Wakes the driver when `closing` or `fatal` changed.
    pub attention: Notify,
}

impl Link {
    fn push(&self, item: Outgoing) {
        if let Err(PushError::Full) = self.sender.try_send(item) {
            self.fail(CloseReason::SlowConsumer);
        }
    }

    fn fail(&self, reason: CloseReason) {
        if reason == CloseReason::SlowConsumer && self.fatal.get().is_none() {
            metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS, "transport" => "socketio").increment(1);
        }
        let _first = self.fatal.set(reason);
        self.fatal_signal.cancel();
        self.attention.notify_one();
    }
}

/// The hub's outlet for one namespace socket: the connection's shared queue. A full
/// queue is a slow consumer and ends the whole connection.
struct SocketOutlet {
    link: Arc<Link>,
    dialect: Dialect,
}

impl Outlet for SocketOutlet {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        self.link.sender.try_send(Outgoing::Event(delivery.clone(), self.dialect)).map_err(|error| match error {
            PushError::Full => OfferError::Full,
            PushError::Closed => OfferError::Closed,
        })
    }

    fn close(&self, reason: CloseReason) {
        if reason == CloseReason::SlowConsumer {
            // The hub already counted it.
            let _first = self.link.fatal.set(reason);
            self.link.fatal_signal.cancel();
        } else {
            self.link.closing.lock().push((self.dialect, reason));
        }
        self.link.attention.notify_one();
    }
}

/// A client's socket on one namespace.
struct NsSocket {
    dialect: Dialect,
    id: Box<str>,
    /// `None` until authenticated (namespace `/` allows a grace period).
    session: Option<SessionGuard>,
    /// Moves the device's inbox position when the socket ends.
    _presence: Option<Presence>,
    /// The inbox mark at registration (see `inbox::Joined`).
    through: i64,
}

/// The namespaces Herald serves, with their dialects.
pub fn dialect_of(namespace: &str) -> Option<Dialect> {
    match namespace {
        "/" => Some(Dialect::Canonical),
        "/notifications" => Some(Dialect::Notifications),
        _ => None,
    }
}

pub fn namespace_of(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Notifications => "/notifications",
        _ => "/",
    }
}

type CommandResult = Result<Value, (ErrorCode, String)>;

/// A random identifier for engine sessions and sockets, safe in a URL.
pub fn new_id() -> Box<str> {
    format!("{:032x}", rand::random::<u128>()).into_boxed_str()
}

pub struct Conn {
    state: AppState,
    pub link: Arc<Link>,
    /// The token in the handshake request (`Authorization: Bearer` or `?token=`).
    request_token: Option<Box<str>>,
    sockets: Mutex<Vec<NsSocket>>,
    /// Client event rate limits, shared by the connection's namespaces.
    limiter: Mutex<EventLimiter>,
    _permit: ConnectionPermit,
}

impl Conn {
    pub fn new(
        state: AppState,
        request_token: Option<String>,
        permit: ConnectionPermit,
    ) -> (Arc<Self>, Receiver<Outgoing>) {
        let (sender, receiver) = mailbox::mailbox(state.settings.socketio_buffer);
        let link = Arc::new(Link {
            sender,
            closing: Mutex::default(),
            fatal: OnceLock::new(),
            fatal_signal: CancellationToken::new(),
            attention: Notify::new(),
        });
        let conn = Arc::new(Self {
            state,
            link,
            request_token: request_token.map(String::into_boxed_str),
            sockets: Mutex::default(),
            limiter: Mutex::default(),
            _permit: permit,
        });
        (conn, receiver)
    }

    fn push(&self, text: String) {
        self.link.push(Outgoing::packet(text));
    }

    /// Queues an Engine.IO packet (a ping, a pong, a noop) behind what is already queued.
    pub fn send_packet(&self, text: String) {
        self.push(text);
    }

    pub fn max_payload(&self) -> usize {
        self.state.settings.max_payload
    }

    fn emit(&self, dialect: Dialect, event: &str, data: &Value) {
        self.push(packet::event_text(namespace_of(dialect), event, &data.to_string(), None));
    }

    fn emit_error(&self, dialect: Dialect, code: ErrorCode, message: &str) {
        count_error(code);
        self.emit(dialect, "error", &json!({"message": message, "code": code.as_str()}));
    }

    /// Acts on the hub's closes. Returns the reason when the whole connection must end.
    pub fn take_closes(&self) -> Option<CloseReason> {
        if let Some(reason) = self.link.fatal.get() {
            return Some(*reason);
        }
        let closes = std::mem::take(&mut *self.link.closing.lock());
        for (dialect, reason) in closes {
            self.disconnect(dialect, reason);
        }
        self.link.fatal.get().copied()
    }

    /// Tells a namespace socket's client why it is closed, then disconnects it.
    fn disconnect(&self, dialect: Dialect, reason: CloseReason) {
        let removed = {
            let mut sockets = self.sockets.lock();
            sockets.iter().position(|socket| socket.dialect == dialect).map(|index| sockets.swap_remove(index))
        };
        if removed.is_none() {
            return;
        }
        let code =
            if reason == CloseReason::AuthTimeout { ErrorCode::NotAuthenticated.as_str() } else { reason.as_str() };
        self.emit(dialect, "error", &json!({"code": code, "message": reason.message()}));
        self.push(packet::socketio_text(Kind::Disconnect, namespace_of(dialect), None, ""));
    }

    /// Shutdown: every namespace socket is told `disconnect` (after what is already queued).
    pub fn disconnect_all(&self) {
        let dialects: Vec<Dialect> = self.sockets.lock().iter().map(|socket| socket.dialect).collect();
        for dialect in dialects {
            self.sockets.lock().retain(|socket| socket.dialect != dialect);
            self.push(packet::socketio_text(Kind::Disconnect, namespace_of(dialect), None, ""));
        }
    }

    /// The Socket.IO packets of one Eng.IO message from the client.
    pub fn on_message(self: &Arc<Self>, text: &str) {
        let packet = match packet::parse_socketio(text) {
            Ok(packet) => packet,
            Err(error) => {
                count_error(ErrorCode::InvalidPayload);
                tracing::debug!(%error, "malformed socket.io packet");
                self.emit_error(Dialect::Canonical, ErrorCode::InvalidPayload, &error.to_string());
                return;
            }
        };
        match packet.kind {
            Kind::Connect => self.connect(packet.namespace, packet.data),
            Kind::Disconnect => {
                if let Some(dialect) = dialect_of(packet.namespace) {
                    self.sockets.lock().retain(|socket| socket.dialect != dialect);
                }
            }
            Kind::Event => self.event(packet.namespace, packet.ack, packet.data),
            Kind::Ack => tracing::trace!("client ack ignored: Herald emits without acks"),
            Kind::BinaryEvent | Kind::BinaryAck | Kind::ConnectError => {
                let Some(dialect) = self.connected(packet.namespace) else { return };
                let message = "binary attachments are not supported; send JSON";
                self.answer(dialect, packet.ack, Err((ErrorCode::InvalidPayload, message.into())));
            }
        }
    }

    /// A binary WebSocket frame: attachments are not supported.
    pub fn reject_binary(&self) {
        self.emit_error(
            Dialect::Canonical,
            ErrorCode::InvalidPayload,
            "binary attachments are not supported; send JSON",
        );
    }

    fn connected(&self, namespace: &str) -> Option<Dialect> {
        let dialect = dialect_of(namespace)?;
        self.sockets.lock().iter().any(|socket| socket.dialect == dialect).then_some(dialect)
    }

    fn refuse(&self, namespace: &str, code: ErrorCode, message: &str) {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => code.as_str()).increment(1);
        let body = json!({"message": format!("{code}: {message}"), "data": {"code": code.as_str()}});
        self.push(packet::socketio_text(Kind::ConnectError, namespace, None, &body.to_string()));
    }

    /// A namespace CONNECT: the token in `auth.token`, else the handshake request's.
    fn connect(self: &Arc<Self>, namespace: &str, data: &str) {
        let Some(dialect) = dialect_of(namespace) else {
            let body = json!({"message": "Invalid namespace"}).to_string();
            self.push(packet::socketio_text(Kind::ConnectError, namespace, None, &body));
            return;
        };
        if self.connected(namespace).is_some() {
            return self.refuse(namespace, ErrorCode::InvalidPayload, "already connected to this namespace");
        }
        let auth: Option<Value> = match data {
            "" => None,
            data => match serde_json::from_str(data) {
                Ok(auth) => Some(auth),
                Err(_) => return self.refuse(namespace, ErrorCode::InvalidJson, "auth is not valid JSON"),
            },
        };
        let token = auth
            .as_ref()
            .and_then(|auth| auth.get("token"))
            .and_then(Value::as_str)
            .map(|token| token.strip_prefix("Bearer ").unwrap_or(token))
            .filter(|token| !token.is_empty())
            .or(self.request_token.as_deref());
        let principal = match (token, dialect) {
            (Some(token), _) => Some(self.state.verifier.verify(token)),
            (None, Dialect::Notifications) => Some(Err(herald_auth::AuthError::missing())),
            (None, _) => None,
        };
        let principal = match principal.transpose() {
            Ok(principal) => principal,
            Err(error) => return self.refuse(namespace, error.code, &error.message),
        };
        let id = new_id();
        let recovering = auth.as_ref().and_then(recovery_request).filter(|_| principal.is_some());
        let mut joined = principal.map(|principal| self.register(principal, dialect, recovering.is_some()));
        let catch_up =
            joined.as_ref().map(|joined| (joined.session.id(), joined.session.principal().clone(), joined.through));
        let topics = joined.as_ref().map(|joined| joined.session.topics()).unwrap_or_default();
        let hold = joined.as_mut().and_then(|joined| joined.hold.take());
        let (session, presence, through) = match joined {
            Some(joined) => (Some(joined.session), Some(joined.presence), joined.through),
            None => (None, None, 0),
        };
        let sid = id.clone();
        self.sockets.lock().push(NsSocket { dialect, id, session, _presence: presence, through });
        let namespace_name = namespace.to_owned();
        let connect_packet = move |pid: &str| {
            // Both ids are Herald's own hex (or, for `pid`, checked to be a JSON-safe string
            // by serde): `sid` first, as Socket.IO servers send it.
            let body = format!("{{\"sid\":{},\"pid\":{}}}", json!(&*sid), json!(pid));
            packet::socketio_text(Kind::Connect, &namespace_name, None, &body)
        };
        match (hold, recovering, catch_up) {
            (Some(hold), Some((pid, since)), Some((session, principal, through))) => {
                // The client learns whether it recovered from the CONNECT's `pid` (its own
                // back: recovered), so CONNECT waits for the history; live events are held.
                let conn = self.clone();
                self.state.tasks.spawn(async move {
                    let (history, recovered) = conn.state.recovery(&topics, &since).await;
                    let pid = match pid {
                        Some(pid) if recovered => pid,
                        _ => new_id().into(),
                    };
                    conn.push(connect_packet(&pid));
                    conn.greet(dialect);
                    hold.release(&history);
                    conn.state.catch_up_session(session, principal, through, None);
                });
            }
            (_, _, Some((session, principal, through))) => {
                self.push(connect_packet(&new_id()));
                self.greet(dialect);
                self.state.catch_up_session(session, principal, through, None);
            }
            (_, _, None) => {
                self.push(connect_packet(&new_id()));
                self.start_auth_grace(dialect);
            }
        }
    }

    /// Registers the namespace socket's hub session; returns it with the inbox's mark,
    /// for [`AppState::catch_up`] once the client has been told it is connected.
    fn register(&self, principal: Principal, dialect: Dialect, held: bool) -> Joined {
        let outlet = Arc::new(SocketOutlet { link: self.link.clone(), dialect });
        self.state.inbox.register(&self.state.hub, principal, "socketio", outlet, held)
    }

    /// Seed 000: a socket on `/` without a token must send `authenticate` in time.
    fn start_auth_grace(self: &Arc<Self>, dialect: Dialect) {
        let conn: Weak<Self> = Arc::downgrade(self);
        let grace = self.state.settings.auth_timeout;
        let shutdown = self.state.shutdown.clone();
        self.state.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(conn) = conn.upgrade() else { return };
            let pending =
                conn.sockets.lock().iter().any(|socket| socket.dialect == dialect && socket.session.is_none());
            if pending {
                metrics::counter!(m::SESSIONS_CLOSED, "reason" => CloseReason::AuthTimeout.as_str()).increment(1);
                conn.link.closing.lock().push((dialect, CloseReason::AuthTimeout));
                conn.link.attention.notify_one();
            }
        });
    }

    /// Tells a freshly authenticated socket on `/` who it is.
    fn greet(&self, dialect: Dialect) {
        if dialect != Dialect::Canonical {
            return;
        }
        let greeting = {
            let sockets = self.sockets.lock();
            let Some(socket) = sockets.iter().find(|socket| socket.dialect == dialect) else { return };
            let Some(session) = &socket.session else { return };
            let user_id = session.principal().user_id.as_str();
            (
                json!({"success": true, "userId": user_id}),
                json!({"userId": user_id, "socketId": &*socket.id, "sessionId": session.id().to_string()}),
            )
        };
        self.emit(dialect, "authenticated", &greeting.0);
        self.emit(dialect, "connected", &greeting.1);
    }

    /// An EVENT packet: `["name", data?]`, answered through its ack when it has one.
    fn event(self: &Arc<Self>, namespace: &str, ack: Option<u64>, data: &str) {
        let Some(dialect) = self.connected(namespace) else {
            tracing::debug!(namespace, "event for a namespace the client has not joined");
            return;
        };
        let mut args: Vec<Value> = match serde_json::from_str(data) {
            Ok(Value::Array(args)) => args,
            _ => {
                let error = (ErrorCode::InvalidPayload, "an event is a JSON array [name, ...args]".to_owned());
                return self.answer(dialect, ack, Err(error));
            }
        };
        let Some(Value::String(name)) = (!args.is_empty()).then(|| args.remove(0)) else {
            let error = (ErrorCode::InvalidPayload, "an event's first element is its name".to_owned());
            return self.answer(dialect, ack, Err(error));
        };
        let argument = if args.is_empty() { Value::Null } else { args.swap_remove(0) };
        let member = {
            let sockets = self.sockets.lock();
            let socket = sockets.iter().find(|socket| socket.dialect == dialect);
            let member = socket.and_then(|socket| socket.session.as_ref().map(|session| (session, socket.through)));
            if let Some((session, _)) = member {
                session.touch();
            }
            member.map(|(session, through)| (session.principal().clone(), through))
        };
        let name = dialect.incoming(&name).to_owned();
        metrics::counter!(m::EVENTS_IN, "event" => m::event_label(&name)).increment(1);
        if let Err(wait) = self.limiter.lock().check(&self.state.settings.event_limits, &name) {
            return self.rate_limited(dialect, ack, &name, wait);
        }
        if let Some(answer) =
            inbox_api::command(&self.state, member.as_ref().map(|(p, t)| (p, *t)), &name, argument.clone())
        {
            return self.answer_later(dialect, ack, answer);
        }
        if chat_command::is_command(&name) {
            let answer = {
                let sockets = self.sockets.lock();
                let session = sockets.iter().find(|s| s.dialect == dialect).and_then(|s| s.session.as_ref());
                session.and_then(|session| chat_command::command(&self.state, session, &name, argument.clone()))
            };
            return match answer {
                Some(answer) => self.answer_later(dialect, ack, answer),
                None => {
                    let error = (ErrorCode::NotAuthenticated, "authenticate before using conversations".to_owned());
                    self.answer(dialect, ack, Err(error))
                }
            };
        }
        let result = self.command(dialect, &name, argument);
        self.answer(dialect, ack, result);
    }

    /// Answers a command once the store or the broker has: the ack follows when it has.
    fn answer_later(
        self: &Arc<Self>,
        dialect: Dialect,
        ack: Option<u64>,
        answer: impl std::future::Future<Output = CommandResult> + Send + 'static,
    ) {
        let conn = Arc::downgrade(self);
        self.state.tasks.spawn(async move {
            let result = answer.await;
            if let Some(conn) = conn.upgrade() {
                conn.answer(dialect, ack, result);
            }
        });
    }

    /// An event over its rate limit is dropped: an `error` event (and the ack, if asked
    /// for) with `retryAfterMs`; the connection stays.
    fn rate_limited(&self, dialect: Dialect, ack: Option<u64>, event: &str, wait: std::time::Duration) {
        let code = ErrorCode::RateLimited;
        count_error(code);
        let message = format!("too many {event} events; retry later");
        let retry = wait.as_millis().max(1) as u64;
        let shown: String = event.chars().take(100).collect();
        self.emit(
            dialect,
            "error",
            &json!({"message": message, "code": code.as_str(), "event": shown, "retryAfterMs": retry}),
        );
        if let Some(ack) = ack {
            let body =
                json!({"success": false, "error": {"code": code.as_str(), "message": message, "retryAfterMs": retry}});
            self.push(packet::socketio_text(Kind::Ack, namespace_of(dialect), Some(ack), &format!("[{body}]")));
        }
    }

    /// Answers a command: the ack when the client asked for one, and on failure also an
    /// `error` event (seed 000's clients listen for it).
    fn answer(&self, dialect: Dialect, ack: Option<u64>, result: CommandResult) {
        let body = match result {
            Ok(mut body) => {
                body["success"] = json!(true);
                body
            }
            Err((code, message)) => {
                self.emit_error(dialect, code, &message);
                json!({"success": false, "error": {"code": code.as_str(), "message": message}})
            }
        };
        if let Some(ack) = ack {
            let args = format!("[{body}]");
            self.push(packet::socketio_text(Kind::Ack, namespace_of(dialect), Some(ack), &args));
        }
    }

    fn command(&self, dialect: Dialect, name: &str, data: Value) -> CommandResult {
        match (dialect, name) {
            (Dialect::Canonical, "authenticate") => self.authenticate(data),
            (Dialect::Canonical, "subscribe" | "unsubscribe") => {
                let topic = field(&data, "topic")
                    .and_then(|name| Topic::parse(&name).map_err(|error| (ErrorCode::InvalidTopic, error.to_string())));
                self.subscribe(dialect, topic, name == "subscribe", since_of(&data)?)
            }
            (Dialect::Canonical, _) if let Some(&(_, kind, id_field, on)) = typed_command(name) => {
                let topic = field(&data, id_field).and_then(|id| {
                    Topic::with_id(kind, &id).map_err(|error| (ErrorCode::InvalidTopic, error.to_string()))
                });
                self.subscribe(dialect, topic, on, since_of(&data)?)
            }
            _ => {
                let shown: String = name.chars().take(100).collect();
                Err((ErrorCode::UnknownEvent, format!("unknown event {shown:?}")))
            }
        }
    }

    fn with_session(&self, dialect: Dialect, act: impl FnOnce(&SessionGuard) -> CommandResult) -> CommandResult {
        let sockets = self.sockets.lock();
        let session =
            sockets.iter().find(|socket| socket.dialect == dialect).and_then(|socket| socket.session.as_ref());
        match session {
            Some(session) => act(session),
            None => Err((
                ErrorCode::NotAuthenticated,
                "authenticate first: send a token in auth or an authenticate event".into(),
            )),
        }
    }

    fn subscribe(
        &self,
        dialect: Dialect,
        topic: Result<Topic, (ErrorCode, String)>,
        on: bool,
        since: Option<Position>,
    ) -> CommandResult {
        self.with_session(dialect, |session| {
            let topic = topic?;
            if on {
                self.state
                    .subscribe(session, topic.clone(), since)
                    .map_err(|error| (error.code(), error.to_string()))?;
            } else {
                session.unsubscribe(&topic);
            }
            Ok(json!({"topic": topic.as_str()}))
        })
    }

    /// Seed 000's `authenticate {token}` for sockets that connected without a token.
    fn authenticate(&self, data: Value) -> CommandResult {
        let dialect = Dialect::Canonical;
        if self.with_session(dialect, |_| Ok(Value::Null)).is_ok() {
            return Ok(json!({"alreadyAuthenticated": true}));
        }
        let token = match &data {
            Value::String(token) => Some(token.as_str()),
            other => other.get("token").and_then(Value::as_str),
        }
        .filter(|token| !token.is_empty())
        .or(self.request_token.as_deref());
        let principal = self.state.authenticate(token).map_err(|error| (error.code, error.message))?;
        let joined = self.register(principal, dialect, false);
        let catch_up = (joined.session.id(), joined.session.principal().clone(), joined.through);
        {
            let mut sockets = self.sockets.lock();
            let Some(socket) = sockets.iter_mut().find(|socket| socket.dialect == dialect) else {
                return Err((ErrorCode::NotAuthenticated, "socket disconnected".into()));
            };
            socket.session = Some(joined.session);
            socket._presence = Some(joined.presence);
            socket.through = joined.through;
        }
        self.greet(dialect);
        self.state.catch_up_session(catch_up.0, catch_up.1, catch_up.2, None);
        Ok(json!({}))
    }
}

/// Seed 000's commands that name one topic by a typed id: (event, topic kind, payload
/// field, subscribe or unsubscribe).
const TYPED_COMMANDS: &[(&str, TopicKind, &str, bool)] = &[
    ("join_channel", TopicKind::Channel, "channelId", true),
    ("leave_channel", TopicKind::Channel, "channelId", false),
    ("subscribe_user", TopicKind::User, "userId", true),
    ("unsubscribe_user", TopicKind::User, "userId", false),
];

/// A subscribe command's optional `since: "epoch:offset"`.
fn since_of(data: &Value) -> Result<Option<Position>, (ErrorCode, String)> {
    match data.get("since") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Position::parse(text)
            .map(Some)
            .ok_or_else(|| (ErrorCode::InvalidPayload, "since must be \"epoch:offset\"".into())),
        Some(_) => Err((ErrorCode::InvalidPayload, "since must be \"epoch:offset\"".into())),
    }
}

/// A returning client's position in its CONNECT auth: Socket.IO's own `{pid, offset}`
/// (sent by the official client by itself), or Herald's `recover: "epoch:offset"` /
/// `recover: {epoch, offset}`. With the `pid` it had, which it gets back if recovered.
fn recovery_request(auth: &Value) -> Option<(Option<String>, Position)> {
    let pid =
        auth.get("pid").and_then(Value::as_str).filter(|pid| !pid.is_empty() && pid.len() <= 64).map(str::to_owned);
    let since = match auth.get("recover") {
        Some(Value::String(text)) => Position::parse(text),
        Some(Value::Object(fields)) => {
            let epoch = fields.get("epoch").and_then(Value::as_str).filter(|e| herald_core::history::valid_epoch(e))?;
            let offset = fields.get("offset").and_then(Value::as_u64)?;
            Some(Position::new(epoch.into(), offset))
        }
        _ => auth.get("offset").and_then(Value::as_str).and_then(Position::parse),
    }?;
    Some((pid, since))
}

fn typed_command(name: &str) -> Option<&'static (&'static str, TopicKind, &'static str, bool)> {
    TYPED_COMMANDS.iter().find(|(command, ..)| *command == name)
}

/// Reads a string field (strings or numbers accepted) from a command payload.
fn field(data: &Value, name: &str) -> Result<String, (ErrorCode, String)> {
    match data.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        _ => Err((ErrorCode::InvalidPayload, format!("payload must be {{\"{name}\": string}}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_queue_item_is_two_words() {
        assert_eq!(std::mem::size_of::<super::Outgoing>(), 16);
    }
}
