//! Conversations: rooms, groups and chats (seeds 001 and 003).
//!
//! Membership, messages, receipts and reactions live in the store (`herald_store::chat`);
//! this module checks client input, asks the store, and publishes what happened to the
//! conversation's topic through the broker, so every node's members get it. Every event
//! names its sender, so sessions of users who blocked the sender skip it (the hub's gate);
//! block lists reach sessions on every node as a directive on the user's own topic.
//!
//! - [`api`]: the HTTP API (server API for memberships, user API, seed 001's community
//!   messages).
//! - [`command`]: the socket commands (seed 003's `message:*`, `reaction:*`, `chat:*`, and
//!   seed 001's `TYPING`).
//! - [`json`]: a message as clients see it.
//! - Here: the operations both share, typing indicators with their expiry, and who is
//!   attending a conversation (`chat:member-joined` / `chat:member-left`).

pub mod api;
pub mod command;
pub mod json;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::metrics as m;
use herald_core::{
    Attendance, Directive, ErrorCode, Event, Hub, Position, Principal, Publication, SessionId, Topic, TopicKind, UserId,
};
use herald_store::{ChatError, ChatStore, Message, NewMessage, ReceiptKind};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::inbox::now_ms;
use crate::state::AppState;

/// A refused operation: a stable code and a client-safe message.
pub type Failure = (ErrorCode, String);

/// Most typing indicators tracked at once on a node; more are ignored.
const MAX_TYPING: usize = 100_000;
/// Most attendance changes waiting to be published; more are dropped (and counted).
const ATTENDANCE_QUEUE: usize = 10_000;
/// Longest message content accepted, in bytes (ciphertext included).
pub const MAX_CONTENT: usize = 16 * 1024;
/// Longest client metadata (JSON) accepted, in bytes.
pub const MAX_METADATA: usize = 4 * 1024;
const MAX_TEMP_ID: usize = 128;
const MAX_KIND: usize = 32;
/// Most conversations one `chat:join-multiple` names.
pub const MAX_JOIN_MULTIPLE: usize = 100;
/// Most message ids one receipt names.
pub const MAX_RECEIPT_IDS: usize = 100;

/// Node-local conversation state: who is typing where.
pub struct Chat {
    /// When each indicator runs out unless renewed.
    typing: Mutex<HashMap<(Topic, UserId), Instant>>,
    typing_timeout: Duration,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("typing", &self.typing.lock().len()).finish()
    }
}

impl Chat {
    pub fn new(typing_timeout: Duration) -> Self {
        Self { typing: Mutex::default(), typing_timeout }
    }

    /// Starts or renews `principal`'s indicator on `topic`; true when it was not on.
    fn start_typing(&self, topic: &Topic, principal: &Principal) -> bool {
        let mut typing = self.typing.lock();
        let key = (topic.clone(), principal.user_id.clone());
        let until = Instant::now() + self.typing_timeout;
        if let Some(current) = typing.get_mut(&key) {
            *current = until;
            return false;
        }
        if typing.len() >= MAX_TYPING {
            return false;
        }
        typing.insert(key, until);
        true
    }

    /// Ends an indicator; true when it was on.
    fn stop_typing(&self, topic: &Topic, user: &UserId) -> bool {
        self.typing.lock().remove(&(topic.clone(), user.clone())).is_some()
    }

    /// Indicators not renewed in time, removed.
    fn expired(&self) -> Vec<(Topic, UserId)> {
        let now = Instant::now();
        let mut typing = self.typing.lock();
        let expired: Vec<(Topic, UserId)> =
            typing.iter().filter(|(_, until)| **until <= now).map(|(key, _)| key.clone()).collect();
        for key in &expired {
            typing.remove(key);
        }
        expired
    }

    /// Sends `message:stop-typing` for indicators that ran out, until shutdown.
    pub async fn run_typing_expiry(state: AppState) {
        let period = (state.chat.typing_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for (topic, user) in state.chat.expired() {
                metrics::counter!(m::TYPING_EXPIRED).increment(1);
                let data = typing_json(&topic, &user, None, false);
                if let Err((_, message)) = publish(&state, topic, "message:stop-typing", data, &user).await {
                    tracing::debug!(message, "typing expiry not published");
                }
            }
        }
    }
}

/// The store's conversation side.
fn store(state: &AppState) -> &dyn ChatStore {
    state.inbox.store().chat()
}

pub fn chat_error(error: ChatError) -> Failure {
    match error {
        ChatError::NotMember => (ErrorCode::MembershipRequired, "not a member of this conversation".into()),
        ChatError::NotFound => (ErrorCode::NotFound, "message not found".into()),
        ChatError::NotAuthor => (ErrorCode::Forbidden, "only the author may change this message".into()),
        ChatError::Conflict => (ErrorCode::Conflict, "the call's state does not allow this".into()),
        ChatError::Store(error) => store_failure(error),
    }
}

pub fn store_failure(error: herald_store::StoreError) -> Failure {
    tracing::warn!(%error, "store request failed");
    (ErrorCode::StoreUnavailable, "the store could not answer; retry later".into())
}

fn invalid(message: impl Into<String>) -> Failure {
    (ErrorCode::InvalidPayload, message.into())
}

/// The payload field that names a conversation of this kind: `roomId`, `groupId`, `chatId`.
pub fn id_field(topic: &Topic) -> &'static str {
    match topic.kind() {
        TopicKind::Room => "roomId",
        TopicKind::Group => "groupId",
        _ => "chatId",
    }
}

/// A string or number field as text.
fn text_field(data: &Value, name: &str) -> Option<String> {
    match data.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    }
}

/// The conversation a payload names: `chatId`, `roomId`, `groupId`, or `topic`.
pub fn conversation(data: &Value) -> Result<Topic, Failure> {
    let kinds = [("chatId", TopicKind::Chat), ("roomId", TopicKind::Room), ("groupId", TopicKind::Group)];
    for (field, kind) in kinds {
        if let Some(id) = text_field(data, field) {
            return Topic::with_id(kind, &id).map_err(|error| (ErrorCode::InvalidTopic, format!("{field}: {error}")));
        }
    }
    match text_field(data, "topic") {
        Some(name) => conversation_topic(&name),
        None => Err(invalid("payload must name a conversation: chatId, roomId, groupId or topic")),
    }
}

/// A `room:`, `group:` or `chat:` topic by name.
pub fn conversation_topic(name: &str) -> Result<Topic, Failure> {
    let topic = Topic::parse(name).map_err(|error| (ErrorCode::InvalidTopic, error.to_string()))?;
    if topic.kind().needs_membership() {
        Ok(topic)
    } else {
        Err((ErrorCode::InvalidTopic, format!("{topic} is not a room, group or chat")))
    }
}

/// A message id given as a positive number or its decimal text.
pub fn message_id(value: Option<&Value>) -> Result<i64, Failure> {
    let id = match value {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.parse().ok(),
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or_else(|| invalid("messageId must be a message's id"))
}

/// Publishes a conversation event reported by `sender`.
async fn publish(
    state: &AppState,
    topic: Topic,
    name: &'static str,
    data: impl serde::Serialize,
    sender: &UserId,
) -> Result<Position, Failure> {
    let event = Event::from_value(name, &data).map_err(|error| (ErrorCode::Internal, error.to_string()))?;
    publish_event(state, topic, event.from_sender(sender.clone())).await
}

async fn publish_event(state: &AppState, topic: Topic, event: Event) -> Result<Position, Failure> {
    metrics::counter!(m::CHAT_EVENTS, "event" => m::event_label(event.name())).increment(1);
    state.broker.publish(Publication::new(vec![topic], event)).await.map_err(|error| {
        tracing::warn!(%error, "conversation event not published");
        (ErrorCode::BrokerUnavailable, "the broker could not take the event; retry later".into())
    })
}

/// What a client asks to post.
#[derive(Debug, Clone)]
pub struct PostRequest {
    pub topic: Topic,
    pub content: String,
    pub kind: Option<String>,
    pub encrypted: bool,
    pub reply_to: Option<i64>,
    pub forwarded_from: Option<i64>,
    pub temp_id: Option<String>,
    pub metadata: Option<String>,
}

impl PostRequest {
    /// Reads and checks a post from a payload: the conversation, `content` (or
    /// `encryptedContent`), and optional `type`, `tempId`, `replyTo`, `forwardedFrom`,
    /// `metadata`.
    pub fn from_payload(data: &Value) -> Result<Self, Failure> {
        let topic = conversation(data)?;
        let (content, encrypted) = match (data.get("content"), data.get("encryptedContent")) {
            (_, Some(Value::String(cipher))) => (cipher.clone(), true),
            (Some(Value::String(text)), None) => {
                (text.clone(), data.get("encrypted").and_then(Value::as_bool).unwrap_or(false))
            }
            _ => return Err(invalid("content must be a string")),
        };
        if content.trim().is_empty() {
            return Err(invalid("content must not be empty"));
        }
        if content.len() > MAX_CONTENT {
            return Err((ErrorCode::PayloadTooLarge, format!("content longer than {MAX_CONTENT} bytes")));
        }
        let kind = match data.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind))
                if !kind.is_empty()
                    && kind.len() <= MAX_KIND
                    && kind.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
            {
                Some(kind.clone())
            }
            _ => return Err(invalid(format!("type must be 1 to {MAX_KIND} letters, digits or _ - ."))),
        };
        let temp_id = match data.get("tempId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_TEMP_ID => Some(id.clone()),
            Some(Value::Number(number)) => Some(number.to_string()),
            _ => return Err(invalid(format!("tempId must be 1 to {MAX_TEMP_ID} bytes"))),
        };
        let reference = |field: &str| match data.get(field) {
            None | Some(Value::Null) => Ok(None),
            value => message_id(value).map(Some).map_err(|_| invalid(format!("{field} must be a message's id"))),
        };
        let metadata = match data.get("metadata") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let text = value.to_string();
                if text.len() > MAX_METADATA {
                    return Err((ErrorCode::PayloadTooLarge, format!("metadata longer than {MAX_METADATA} bytes")));
                }
                Some(text)
            }
        };
        Ok(Self {
            topic,
            content,
            kind,
            encrypted,
            reply_to: reference("replyTo")?,
            forwarded_from: reference("forwardedFrom")?,
            temp_id,
            metadata,
        })
    }
}

/// Stores a member's message and publishes `message:new` to the conversation. A retry
/// with the same `tempId` returns the stored message and publishes it again (clients
/// tell duplicates by id), so a message whose first publication failed still goes out.
pub async fn post(state: &AppState, principal: &Principal, request: PostRequest) -> Result<Message, Failure> {
    let new = NewMessage {
        topic: request.topic.as_str().to_owned(),
        author_id: principal.user_id.as_str().to_owned(),
        author_name: principal.name.clone(),
        author_image: principal.image.clone(),
        content: request.content,
        kind: request.kind.unwrap_or_else(|| "text".to_owned()),
        encrypted: request.encrypted,
        reply_to: request.reply_to,
        forwarded_from: request.forwarded_from,
        temp_id: request.temp_id,
        metadata: request.metadata,
        created_at: now_ms(),
    };
    let started = Instant::now();
    let posted = store(state).post_message(new).await.map_err(chat_error)?;
    metrics::histogram!(m::CHAT_STORE_SECONDS).record(started.elapsed().as_secs_f64());
    state.chat.stop_typing(&request.topic, &principal.user_id);
    publish(state, request.topic, "message:new", json::message(&posted.message), &principal.user_id).await?;
    Ok(posted.message)
}

/// The author edits a message; `message:edit` goes to the conversation.
pub async fn edit(state: &AppState, principal: &Principal, id: i64, content: &str) -> Result<Message, Failure> {
    if content.trim().is_empty() || content.len() > MAX_CONTENT {
        return Err(invalid(format!("content must be 1 to {MAX_CONTENT} bytes")));
    }
    let message =
        store(state).edit_message(principal.user_id.as_str(), id, content, now_ms()).await.map_err(chat_error)?;
    let topic = conversation_topic(&message.topic)?;
    publish(state, topic, "message:edit", json::edit(&message), &principal.user_id).await?;
    Ok(message)
}

/// The author deletes a message; `message:delete` goes to the conversation.
pub async fn delete(state: &AppState, principal: &Principal, id: i64) -> Result<Message, Failure> {
    let message = store(state).delete_message(principal.user_id.as_str(), id, now_ms()).await.map_err(chat_error)?;
    let topic = conversation_topic(&message.topic)?;
    publish(state, topic, "message:delete", json::deletion(&message), &principal.user_id).await?;
    Ok(message)
}

/// Records receipts and tells each message's author (`message:delivered` /
/// `message:read` on their user topic). Returns how many changed.
pub async fn receipts(
    state: &AppState,
    principal: &Principal,
    ids: &[i64],
    kind: ReceiptKind,
) -> Result<usize, Failure> {
    let at = now_ms();
    let changed = store(state).mark_receipts(principal.user_id.as_str(), ids, kind, at).await.map_err(store_failure)?;
    let (name, field) = match kind {
        ReceiptKind::Delivered => ("message:delivered", "deliveredAt"),
        ReceiptKind::Read => ("message:read", "readAt"),
    };
    for change in &changed {
        let (Ok(author), Ok(topic)) = (UserId::parse(&change.author_id), conversation_topic(&change.topic)) else {
            continue;
        };
        let mut data = json!({
            "messageId": change.message_id.to_string(),
            "userId": principal.user_id.as_str(),
            field: json::timestamp(at),
        });
        data[id_field(&topic)] = Value::from(topic.id());
        publish(state, Topic::user(&author), name, data, &principal.user_id).await?;
    }
    Ok(changed.len())
}

/// `message:typing` / `message:stop-typing` from a session subscribed to the conversation
/// (having joined it is the proof of membership, so typing costs no store lookup).
pub async fn typing(state: &AppState, principal: &Principal, topic: Topic, on: bool) -> Result<Value, Failure> {
    let user = &principal.user_id;
    let changed = if on { state.chat.start_typing(&topic, principal) } else { state.chat.stop_typing(&topic, user) };
    if changed {
        let name = if on { "message:typing" } else { "message:stop-typing" };
        let data = typing_json(&topic, user, principal.name.as_deref(), on);
        publish(state, topic, name, data, user).await?;
    }
    Ok(json!({}))
}

fn typing_json(topic: &Topic, user: &UserId, name: Option<&str>, on: bool) -> Value {
    let mut data = json!({"userId": user.as_str(), "isTyping": on});
    if let Some(name) = name {
        data["userName"] = Value::from(name);
    }
    data[id_field(topic)] = Value::from(topic.id());
    data
}

/// Adds or removes a reaction; `reaction:new` / `reaction:remove` goes to the conversation.
pub async fn react(state: &AppState, principal: &Principal, id: i64, emoji: &str, add: bool) -> Result<Value, Failure> {
    if emojis::get(emoji).is_none() {
        return Err(invalid("emoji must be one emoji"));
    }
    let (topic, changed) =
        store(state).react(principal.user_id.as_str(), id, emoji, add, now_ms()).await.map_err(chat_error)?;
    let topic = conversation_topic(&topic)?;
    let mut data = json!({"messageId": id.to_string(), "userId": principal.user_id.as_str(), "emoji": emoji});
    data[id_field(&topic)] = Value::from(topic.id());
    if changed {
        let name = if add { "reaction:new" } else { "reaction:remove" };
        publish(state, topic, name, data.clone(), &principal.user_id).await?;
    }
    data["changed"] = Value::from(changed);
    Ok(data)
}

/// A message's reactions for a member.
pub async fn reactions(state: &AppState, principal: &Principal, id: i64) -> Result<Value, Failure> {
    let reactions = store(state).reactions(principal.user_id.as_str(), id).await.map_err(chat_error)?;
    let reactions: Vec<Value> = reactions
        .into_iter()
        .map(|r| json!({"emoji": r.emoji, "count": r.user_ids.len(), "userIds": r.user_ids}))
        .collect();
    Ok(json!({"messageId": id.to_string(), "reactions": reactions}))
}

/// Subscribes a session to a conversation its user is a member of.
pub async fn join(state: &AppState, session: SessionId, principal: &Principal, topic: &Topic) -> Result<(), Failure> {
    let member = store(state).is_member(topic.as_str(), principal.user_id.as_str()).await.map_err(store_failure)?;
    if !member {
        return Err((ErrorCode::MembershipRequired, format!("{topic} requires membership")));
    }
    state.hub.subscribe_member(session, topic.clone()).map_err(|error| (error.code(), error.to_string()))?;
    // Answered once the conversation's events reach this node: a client told it joined
    // misses nothing published after.
    state.broker.subscribed(std::slice::from_ref(topic)).await;
    Ok(())
}

/// The members of a conversation who are online now (on any node), for a member.
pub async fn online_members(state: &AppState, principal: &Principal, topic: &Topic) -> Result<Vec<String>, Failure> {
    let chat = store(state);
    if !chat.is_member(topic.as_str(), principal.user_id.as_str()).await.map_err(store_failure)? {
        return Err((ErrorCode::MembershipRequired, format!("{topic} requires membership")));
    }
    let members = chat.members(topic.as_str()).await.map_err(store_failure)?;
    let mut online = Vec::new();
    for member in members {
        let Ok(user) = UserId::parse(&member.user_id) else { continue };
        if crate::presence::online(state, &user).await? {
            online.push(member.user_id);
        }
    }
    Ok(online)
}

/// Adds members to a conversation (creating it), and tells it `chat:updated`.
pub async fn add_members(
    state: &AppState,
    topic: &Topic,
    users: &[String],
    role: &str,
    name: Option<&str>,
) -> Result<Vec<String>, Failure> {
    let chat = store(state);
    let at = now_ms();
    if name.is_some() {
        chat.upsert_conversation(topic.as_str(), name, at).await.map_err(store_failure)?;
    }
    let added = chat.add_members(topic.as_str(), users, role, at).await.map_err(store_failure)?;
    if !added.is_empty() || name.is_some() {
        let mut data = json!({"added": added});
        if let Some(name) = name {
            data["name"] = Value::from(name);
        }
        data[id_field(topic)] = Value::from(topic.id());
        let event =
            Event::from_value("chat:updated", &data).map_err(|error| (ErrorCode::Internal, error.to_string()))?;
        publish_event(state, topic.clone(), event).await?;
    }
    Ok(added)
}

/// Removes a member: the conversation (the member included) is told `chat:updated`, then
/// the member's sessions on every node are unsubscribed from it.
pub async fn remove_member(state: &AppState, topic: &Topic, user: &UserId) -> Result<bool, Failure> {
    let removed =
        store(state).remove_members(topic.as_str(), &[user.as_str().to_owned()]).await.map_err(store_failure)?;
    if removed.is_empty() {
        return Ok(false);
    }
    let mut data = json!({"removed": [user.as_str()]});
    data[id_field(topic)] = Value::from(topic.id());
    let event = Event::from_value("chat:updated", &data)
        .map_err(|error| (ErrorCode::Internal, error.to_string()))?
        .with_directive(Directive::Unsubscribe(user.clone()));
    publish_event(state, topic.clone(), event).await?;
    Ok(true)
}

/// `user` blocks or unblocks `other`; the user's sessions on every node get the new list
/// (`block:updated {blocked}` on their user topic). Returns the list.
pub async fn set_block(state: &AppState, user: &UserId, other: &UserId, blocked: bool) -> Result<Vec<String>, Failure> {
    let chat = store(state);
    if blocked {
        chat.block(user.as_str(), other.as_str(), now_ms()).await.map_err(store_failure)?;
    } else {
        chat.unblock(user.as_str(), other.as_str()).await.map_err(store_failure)?;
    }
    let list = chat.blocked(user.as_str()).await.map_err(store_failure)?;
    let ids: Vec<UserId> = list.iter().filter_map(|name| UserId::parse(name).ok()).collect();
    let event = Event::from_value("block:updated", &json!({"blocked": list}))
        .map_err(|error| (ErrorCode::Internal, error.to_string()))?
        .with_directive(Directive::Blocks { user: user.clone(), blocked: ids.into() });
    publish_event(state, Topic::user(user), event).await?;
    Ok(list)
}

/// Gives a new session its user's block list before anything else: its live events wait
/// in its gate until the store has answered.
pub fn load_blocks(state: &AppState, session: &herald_core::SessionGuard) {
    let hold = session.hold();
    let (state, id, user) = (state.clone(), session.id(), session.principal().user_id.clone());
    state.tasks.clone().spawn(async move {
        let load = store(&state).blocked(user.as_str());
        let blocked = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            blocked = load => blocked,
        };
        match blocked {
            Ok(list) => state.hub.load_blocked(id, list.iter().filter_map(|name| UserId::parse(name).ok()).collect()),
            Err(error) => tracing::warn!(%error, "block list not loaded"),
        }
        hold.release(&[]);
    });
}

/// Publishes `chat:member-joined` / `chat:member-left` as the hub reports a user's first
/// and last local session on a conversation, and hands connection counts to presence.
pub struct AttendanceReporter {
    queue: mpsc::Sender<Reported>,
}

/// What the hub reported, waiting to be acted on.
enum Reported {
    Attendance(Topic, Arc<Principal>, bool),
    Connections(Arc<Principal>, usize, bool),
}

impl AttendanceReporter {
    /// The reporter to install in the hub, and the task that publishes what it reports.
    pub fn start(state: &AppState) -> Arc<Self> {
        let (queue, mut changes) = mpsc::channel::<Reported>(ATTENDANCE_QUEUE);
        let state = state.clone();
        state.tasks.clone().spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    change = changes.recv() => change,
                };
                let (topic, principal, present) = match change {
                    None => return,
                    Some(Reported::Connections(principal, connections, opened)) => {
                        crate::presence::connections_changed(&state, principal, connections, opened).await;
                        continue;
                    }
                    Some(Reported::Attendance(topic, principal, present)) => (topic, principal, present),
                };
                let mut data = json!({"userId": principal.user_id.as_str()});
                if present {
                    data["userName"] = principal.name.as_deref().map_or(Value::Null, Value::from);
                    data["userImage"] = principal.image.as_deref().map_or(Value::Null, Value::from);
                }
                data[id_field(&topic)] = Value::from(topic.id());
                let name = if present { "chat:member-joined" } else { "chat:member-left" };
                if !present {
                    state.chat.stop_typing(&topic, &principal.user_id);
                }
                if let Err((_, message)) = publish(&state, topic, name, data, &principal.user_id).await {
                    tracing::debug!(message, "attendance not published");
                }
            }
        });
        Arc::new(Self { queue })
    }
}

impl Attendance for AttendanceReporter {
    fn changed(&self, topic: &Topic, principal: &Principal, present: bool) {
        if self.queue.try_send(Reported::Attendance(topic.clone(), Arc::new(principal.clone()), present)).is_err() {
            metrics::counter!(m::CHAT_EVENTS, "event" => "attendance_dropped").increment(1);
        }
    }

    fn connections(&self, principal: &Principal, connections: usize, opened: bool) {
        if self.queue.try_send(Reported::Connections(Arc::new(principal.clone()), connections, opened)).is_err() {
            metrics::counter!(m::CHAT_EVENTS, "event" => "presence_dropped").increment(1);
        }
    }
}

/// Subscribes a seed 001 community connection to every room and group its user is a
/// member of (its clients never ask to join).
pub fn join_all(state: &AppState, session: &herald_core::SessionGuard) {
    let (state, id, user) = (state.clone(), session.id(), session.principal().user_id.clone());
    state.tasks.clone().spawn(async move {
        let topics = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            topics = store(&state).conversations_of(user.as_str()) => topics,
        };
        match topics {
            Ok(topics) => {
                for topic in topics.iter().filter_map(|name| Topic::parse(name).ok()) {
                    if matches!(topic.kind(), TopicKind::Room | TopicKind::Group)
                        && let Err(error) = state.hub.subscribe_member(id, topic)
                    {
                        tracing::debug!(%error, "community connection not subscribed");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "conversations of a community connection not loaded"),
        }
    });
}

/// Starts the conversation tasks: attendance reports from the hub, typing expiry, the
/// last-seen writer.
pub fn install(state: &AppState, hub: &Hub) {
    hub.set_attendance(AttendanceReporter::start(state));
    state.tasks.spawn(Chat::run_typing_expiry(state.clone()));
    state.tasks.spawn(crate::presence::run_last_seen_writer(state.clone()));
}
