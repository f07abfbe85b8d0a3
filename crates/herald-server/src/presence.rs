//! Presence (seed 003): online while any device is, a chosen status (`online`, `away`,
//! `busy`) with custom text, and when a user was last seen.
//!
//! A user's changes are published to `presence:{userId}` as `presence:update {userId,
//! online, status, customStatus, lastSeen}`; sessions subscribe with `presence:subscribe`
//! to users they share a conversation with (their contacts), which answers with each
//! one's current presence. Going offline waits a grace period (`HERALD_PRESENCE_GRACE`),
//! so a reload does not flap; across nodes "online" is the broker's shared presence.
//! The chosen status and last-seen time are kept in the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{ErrorCode, Event, Principal, Publication, SessionId, Topic, UserId};
use herald_store::StoredPresence;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::chat::{Failure, store_failure};
use crate::inbox::json::timestamp;
use crate::inbox::now_ms;
use crate::state::AppState;

/// Longest custom status text, in characters.
pub const MAX_CUSTOM_STATUS: usize = 140;
/// Most users one `presence:subscribe` names.
pub const MAX_SUBSCRIBE: usize = 100;
const STATUSES: &[&str] = &["online", "away", "busy"];

/// Node-local presence state: users whose last connection closed and who go offline when
/// their grace period ends, unless they come back.
#[derive(Debug)]
pub struct Presence {
    grace: Duration,
    /// Each leaving user's grace period, by a number that a return invalidates.
    leaving: Mutex<HashMap<UserId, u64>>,
    next: std::sync::atomic::AtomicU64,
    /// Last-seen times not yet written: many users leave at once (a load balancer
    /// draining, a deploy), and one transaction a second costs far less than one each.
    unsaved: Mutex<HashMap<String, i64>>,
}

/// How often last-seen times are written.
const LAST_SEEN_FLUSH: Duration = Duration::from_secs(1);
/// Most last-seen times held between writes; more are written at once.
const MAX_UNSAVED: usize = 50_000;

impl Presence {
    pub fn new(grace: Duration) -> Self {
        Self { grace, leaving: Mutex::default(), next: Default::default(), unsaved: Mutex::default() }
    }
}

/// Writes the last-seen times gathered since the last run, every second until shutdown
/// (and once more then).
pub async fn run_last_seen_writer(state: AppState) {
    let mut ticker = tokio::time::interval(LAST_SEEN_FLUSH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = state.shutdown.cancelled() => true,
            _ = ticker.tick() => false,
        };
        flush_last_seen(&state).await;
        if stopping {
            return;
        }
    }
}

async fn flush_last_seen(state: &AppState) {
    let seen: Vec<(String, i64)> = std::mem::take(&mut *state.presence.unsaved.lock()).into_iter().collect();
    if let Err(error) = state.inbox.store().chat().save_last_seen(&seen).await {
        tracing::warn!(%error, users = seen.len(), "last-seen times not saved");
    }
}

/// Whether `user` is connected anywhere (the broker's shared presence, or this node).
pub async fn online(state: &AppState, user: &UserId) -> Result<bool, Failure> {
    match state.broker.presence(user).await {
        Ok(Some(presence)) => Ok(presence.online),
        Ok(None) => Ok(state.hub.is_online(user)),
        Err(error) => {
            tracing::warn!(%error, "presence unavailable");
            Err((ErrorCode::BrokerUnavailable, "presence is unavailable while the broker is".into()))
        }
    }
}

async fn stored(state: &AppState, user: &UserId) -> Result<Option<StoredPresence>, Failure> {
    let users = [user.as_str().to_owned()];
    let mut found = state.inbox.store().chat().presences(&users).await.map_err(store_failure)?;
    Ok(found.pop())
}

/// What a user who never chose anything has.
fn first_presence(user: &UserId) -> StoredPresence {
    StoredPresence {
        user_id: user.as_str().to_owned(),
        status: "online".into(),
        custom_status: None,
        last_seen: None,
        updated_at: 0,
    }
}

/// A user's presence as clients see it.
fn view(user: &UserId, online: bool, stored: Option<&StoredPresence>) -> Value {
    let status = if online { stored.map_or("online", |s| s.status.as_str()) } else { "offline" };
    json!({
        "userId": user.as_str(),
        "online": online,
        "status": status,
        "customStatus": stored.and_then(|s| s.custom_status.as_deref()),
        "lastSeen": stored.and_then(|s| s.last_seen).map(timestamp),
    })
}

/// The current presence of `user`.
pub async fn current(state: &AppState, user: &UserId) -> Result<Value, Failure> {
    let online = online(state, user).await?;
    Ok(view(user, online, stored(state, user).await?.as_ref()))
}

/// Whether anyone follows `user`'s presence now: coming online and going offline are
/// announced only then (a subscriber gets the current state when it subscribes), so that
/// connections of users nobody follows cost no publication.
async fn followed(state: &AppState, user: &UserId) -> Result<bool, Failure> {
    state.broker.has_subscribers(&Topic::presence(user)).await.map_err(|error| {
        tracing::warn!(%error, "presence subscribers unknown");
        (ErrorCode::BrokerUnavailable, "the broker could not answer".into())
    })
}

async fn announce(state: &AppState, user: &UserId, data: Value) -> Result<(), Failure> {
    let event = Event::from_value("presence:update", &data)
        .map_err(|error| (ErrorCode::Internal, error.to_string()))?
        .from_sender(user.clone());
    state.broker.publish(Publication::new(vec![Topic::presence(user)], event)).await.map_err(|error| {
        tracing::warn!(%error, "presence change not published");
        (ErrorCode::BrokerUnavailable, "the broker could not take the event; retry later".into())
    })?;
    Ok(())
}

/// `presence:update {status?, customStatus?}`: stores the choice and tells subscribers.
pub async fn update(state: &AppState, principal: &Principal, data: &Value) -> Result<Value, Failure> {
    let user = &principal.user_id;
    let mut presence = stored(state, user).await?.unwrap_or_else(|| first_presence(user));
    match data.get("status") {
        None | Some(Value::Null) => {}
        Some(Value::String(status)) if STATUSES.contains(&status.as_str()) => presence.status = status.clone(),
        _ => return Err((ErrorCode::InvalidPayload, "status must be online, away or busy".into())),
    }
    match data.get("customStatus") {
        None => {}
        Some(Value::Null) => presence.custom_status = None,
        Some(Value::String(text)) if text.chars().count() <= MAX_CUSTOM_STATUS => {
            presence.custom_status = (!text.is_empty()).then(|| text.clone());
        }
        _ => {
            let message = format!("customStatus must be text of at most {MAX_CUSTOM_STATUS} characters");
            return Err((ErrorCode::InvalidPayload, message));
        }
    }
    presence.updated_at = now_ms();
    state.inbox.store().chat().save_presence(&presence).await.map_err(store_failure)?;
    let data = view(user, online(state, user).await?, Some(&presence));
    announce(state, user, data.clone()).await?;
    Ok(data)
}

/// The user ids a subscribe or unsubscribe names: `userIds` or `userId`.
fn user_ids(data: &Value) -> Result<Vec<UserId>, Failure> {
    let names: Vec<&Value> = match (data.get("userIds"), data.get("userId")) {
        (Some(Value::Array(ids)), _) if !ids.is_empty() && ids.len() <= MAX_SUBSCRIBE => ids.iter().collect(),
        (None, Some(id)) => vec![id],
        _ => return Err((ErrorCode::InvalidPayload, format!("userIds must name 1 to {MAX_SUBSCRIBE} users"))),
    };
    names
        .into_iter()
        .map(|name| {
            name.as_str()
                .and_then(|text| UserId::parse(text).ok())
                .ok_or_else(|| (ErrorCode::InvalidPayload, format!("{name} is not a user id")))
        })
        .collect()
}

/// `presence:subscribe {userIds}`: subscribes to the presence of contacts (users sharing
/// a conversation, or oneself); answers with each one's presence and the refused ones.
pub async fn subscribe(
    state: &AppState,
    session: SessionId,
    principal: &Principal,
    data: &Value,
) -> Result<Value, Failure> {
    let users = user_ids(data)?;
    let chat = state.inbox.store().chat();
    let (mut presences, mut refused, mut topics) = (Vec::new(), Vec::new(), Vec::new());
    for user in users {
        let allowed = user == principal.user_id
            || chat.share_conversation(principal.user_id.as_str(), user.as_str()).await.map_err(store_failure)?;
        if !allowed {
            refused.push(json!({"userId": user.as_str(), "code": ErrorCode::Forbidden.as_str(), "message": "not a contact: no shared conversation"}));
            continue;
        }
        let topic = Topic::presence(&user);
        state.hub.subscribe_member(session, topic.clone()).map_err(|error| (error.code(), error.to_string()))?;
        topics.push(topic);
        presences.push(current(state, &user).await?);
    }
    state.broker.subscribed(&topics).await;
    Ok(json!({"presences": presences, "refused": refused}))
}

/// `presence:unsubscribe {userIds}`.
pub fn unsubscribe(state: &AppState, session: SessionId, data: &Value) -> Result<Value, Failure> {
    let users = user_ids(data)?;
    for user in &users {
        state.hub.unsubscribe_session(session, &Topic::presence(user));
    }
    Ok(json!({"userIds": users.iter().map(UserId::as_str).collect::<Vec<_>>()}))
}

/// A user's local connection count changed (reported by the hub through the attendance
/// reporter's queue).
pub async fn connections_changed(state: &AppState, principal: Arc<Principal>, connections: usize, opened: bool) {
    let user = principal.user_id.clone();
    if connections > 0 {
        if opened && connections == 1 && state.presence.leaving.lock().remove(&user).is_none() {
            // Came online (not back within the grace period).
            if let Err((_, message)) = came_online(state, &user).await {
                tracing::debug!(message, "online presence not published");
            }
        }
        return;
    }
    let ticket = state.presence.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.presence.leaving.lock().insert(user.clone(), ticket);
    let state = state.clone();
    let grace = state.presence.grace;
    state.tasks.clone().spawn(async move {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(grace) => {}
        }
        {
            let mut leaving = state.presence.leaving.lock();
            if leaving.get(&user) != Some(&ticket) {
                return;
            }
            leaving.remove(&user);
        }
        if let Err((_, message)) = went_offline(&state, &user).await {
            tracing::debug!(message, "offline presence not published");
        }
    });
}

async fn came_online(state: &AppState, user: &UserId) -> Result<(), Failure> {
    if !followed(state, user).await? {
        return Ok(());
    }
    let stored = stored(state, user).await?;
    announce(state, user, view(user, true, stored.as_ref())).await
}

async fn went_offline(state: &AppState, user: &UserId) -> Result<(), Failure> {
    if online(state, user).await? {
        // Connected elsewhere in the cluster meanwhile.
        return Ok(());
    }
    let now = now_ms();
    let full = {
        let mut unsaved = state.presence.unsaved.lock();
        unsaved.insert(user.as_str().to_owned(), now);
        unsaved.len() >= MAX_UNSAVED
    };
    if full {
        flush_last_seen(state).await;
    }
    if !followed(state, user).await? {
        return Ok(());
    }
    let mut presence = stored(state, user).await?.unwrap_or_else(|| first_presence(user));
    presence.last_seen = Some(now);
    announce(state, user, view(user, false, Some(&presence))).await
}
