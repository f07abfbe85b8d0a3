//! The outbox worker (seed 004): takes notification events an application enqueued in
//! the database, enriches them, stores them in the inbox and publishes them.
//!
//! One loop per process (`herald serve` embeds it, `herald worker` runs it alone), as
//! many processes as wanted: each round claims a batch under a lease
//! ([`herald_store::OutboxStore::claim`]), prepares every event (recipient, JSON,
//! enrichment lookups, cached within the batch), writes the user notifications as one
//! inbox transaction keyed by event id (so an event done twice after a crash is stored
//! once), publishes channel and global events, then marks the batch processed. A failed
//! event is tried again after an exponential backoff with jitter, and parked as dead after
//! the configured attempts, with its error, until retried by hand (`api.rs`).
//!
//! The loop wakes on PostgreSQL's `NOTIFY` and polls anyway, so an event whose
//! notification was lost (the listener reconnecting) waits at most one poll interval.

pub mod api;

use std::collections::HashMap;
use std::time::Duration;

use herald_core::metrics as m;
use herald_core::{Event, Publication, Topic, TopicKind};
use herald_store::outbox::LookupRow;
use herald_store::{Failure, NewNotification, OutboxEvent, OutboxListener, Priority, Store, StoreError};
use serde_json::{Map, Value};

use crate::inbox::{self, now_ms};
use crate::state::AppState;

/// The default enrichment query for the actor of an event (seed 004's `User` model).
pub const DEFAULT_USER_QUERY: &str = r#"SELECT name, image FROM "User" WHERE id = $1"#;
/// The default enrichment query for a channel (seed 004's `Channel` model).
pub const DEFAULT_CHANNEL_QUERY: &str = r#"SELECT name FROM "Channel" WHERE id = $1"#;

/// Event types enriched with their actor's and channel's details (seed 004).
const ENRICHED_TYPES: [&str; 3] = ["TIP", "SUB", "FOLLOW"];

/// Event name of channel and global outbox events (seed 000's clients listen for it);
/// user events arrive as the inbox's `notification:new`.
pub const PUBLISHED_EVENT: &str = "notification";

/// Processed events deleted per statement by the cleanup.
const PURGE_BATCH: u32 = 1000;
/// How often the outbox gauges are refreshed.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// How often processed events past the retention are deleted.
const PURGE_PERIOD: Duration = Duration::from_secs(60);
/// Pause after a store error in the loop itself (the database is away).
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub enabled: bool,
    pub batch: u32,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub retention: Duration,
    pub user_query: String,
    pub channel_query: String,
    pub cloudfront_domain: Option<String>,
    /// Redis of an existing notify-wss, to publish to seed 000's channels as well.
    pub mirror_url: Option<String>,
    pub mirror_prefix: String,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            batch: 200,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
            user_query: DEFAULT_USER_QUERY.to_owned(),
            channel_query: DEFAULT_CHANNEL_QUERY.to_owned(),
            cloudfront_domain: None,
            mirror_url: None,
            mirror_prefix: "notifications:".to_owned(),
        }
    }
}

/// Why an event could not be delivered this time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    message: String,
    /// Trying again cannot help (malformed event): dead at once.
    permanent: bool,
}

impl Problem {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }

    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false }
    }
}

/// An event ready to deliver.
struct Prepared {
    event: OutboxEvent,
    topic: Topic,
    payload: Map<String, Value>,
}

/// Starts the worker's tasks (the loop, the gauges and the cleanup), tied to shutdown.
pub fn start(state: &AppState) {
    state.tasks.spawn(run(state.clone()));
    state.tasks.spawn(maintain(state.clone()));
}

/// Claims and delivers batches until shutdown.
async fn run(state: AppState) {
    let settings = state.settings.outbox.clone();
    let store = state.inbox.store_handle();
    let mut listener = listen(store.as_ref()).await;
    tracing::info!(listening = listener.is_some(), batch = settings.batch, "outbox worker started");
    loop {
        if state.shutdown.is_cancelled() {
            break;
        }
        let full = match round(&state, store.as_ref(), &settings).await {
            Ok(claimed) => claimed >= settings.batch as usize,
            Err(error) => {
                tracing::warn!(%error, "outbox round failed");
                tokio::select! {
                    _ = state.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
                continue;
            }
        };
        if full {
            continue;
        }
        let wake = async {
            match listener.as_mut() {
                Some(listener) => {
                    if let Err(error) = listener.wait().await {
                        // The next call reconnects; meanwhile the poll covers.
                        tracing::warn!(%error, "outbox listener lost its connection");
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = wake => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
    tracing::info!("outbox worker stopped");
}

async fn listen(store: &dyn Store) -> Option<OutboxListener> {
    match store.outbox().listen().await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "outbox LISTEN failed; polling only");
            None
        }
    }
}

/// One batch: claim, prepare, deliver, record. Returns how many events were claimed.
async fn round(state: &AppState, store: &dyn Store, settings: &OutboxSettings) -> Result<usize, StoreError> {
    let now = now_ms();
    let lease_until = now + settings.lease.as_millis() as i64;
    let claimed = store.outbox().claim(settings.batch, now, lease_until).await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let count = claimed.len();
    let mut parsed = Vec::with_capacity(count);
    let mut failed: Vec<(OutboxEvent, Problem)> = Vec::new();
    for event in claimed {
        match parse(&event) {
            Ok((topic, payload)) => parsed.push(Prepared { event, topic, payload }),
            Err(problem) => failed.push((event, problem)),
        }
    }
    let lookups = Lookups::fetch(store, settings, &parsed).await;
    let mut ready = Vec::with_capacity(parsed.len());
    for mut prepared in parsed {
        if !ENRICHED_TYPES.contains(&prepared.event.kind.as_str()) {
            ready.push(prepared);
            continue;
        }
        match enrich(std::mem::take(&mut prepared.payload), &lookups, settings.cloudfront_domain.as_deref()) {
            Ok(payload) => ready.push(Prepared { payload, ..prepared }),
            Err(problem) => failed.push((prepared.event, problem)),
        }
    }
    let ready = mirror(state, ready, &mut failed).await;
    let mut done = Vec::with_capacity(ready.len());
    let (users, others): (Vec<Prepared>, Vec<Prepared>) =
        ready.into_iter().partition(|prepared| prepared.topic.kind() == TopicKind::User);
    if !users.is_empty() {
        let batch = users.iter().map(notification_of).collect();
        match state.inbox.create(batch).await {
            Ok(created) => {
                // Already stored by an earlier attempt of the same event, which may have
                // died between its commit and its push: push it again (a device may get it
                // twice, with the same id; never not at all).
                for (prepared, created) in users.iter().zip(&created) {
                    if !created.new && prepared.event.attempts > 1 {
                        state.inbox.push_again(&created.notification, state.broker.as_ref()).await;
                    }
                }
                done.extend(users.into_iter().map(|prepared| prepared.event));
            }
            Err(error) => {
                let problem = Problem::transient(format!("inbox write failed: {error}"));
                failed.extend(users.into_iter().map(|prepared| (prepared.event, problem.clone())));
            }
        }
    }
    for prepared in others {
        match publish(state, &prepared).await {
            Ok(()) => done.push(prepared.event),
            Err(problem) => failed.push((prepared.event, problem)),
        }
    }
    let finished = now_ms();
    let ids: Vec<i64> = done.iter().map(|event| event.id).collect();
    store.outbox().complete(&ids, finished).await?;
    for event in &done {
        metrics::histogram!(m::OUTBOX_DELIVERY_SECONDS).record((finished - event.created_at).max(0) as f64 / 1000.0);
    }
    metrics::counter!(m::OUTBOX_EVENTS, "result" => "processed").increment(done.len() as u64);
    for (event, problem) in failed {
        let then = if problem.permanent || event.attempts >= i64::from(settings.max_attempts) {
            tracing::warn!(event_id = %event.event_id, attempts = event.attempts, error = %problem.message, "outbox event is dead");
            metrics::counter!(m::OUTBOX_EVENTS, "result" => "dead").increment(1);
            Failure::Dead
        } else {
            let retry_at = finished + backoff(settings, &event).as_millis() as i64;
            tracing::info!(event_id = %event.event_id, attempts = event.attempts, error = %problem.message, "outbox event will be retried");
            metrics::counter!(m::OUTBOX_EVENTS, "result" => "retried").increment(1);
            Failure::RetryAt(retry_at)
        };
        store.outbox().fail(event.id, &problem.message, then, finished).await?;
    }
    Ok(count)
}

/// The delay before the next attempt: the base doubled per attempt made, capped, then
/// scaled by a random factor in [0.5, 1] so that events failing together spread out.
fn backoff(settings: &OutboxSettings, event: &OutboxEvent) -> Duration {
    let doublings = u32::try_from(event.attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let delay = settings.backoff.saturating_mul(1u32 << doublings).min(settings.backoff_max);
    delay.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// The recipient of an outbox event: `user:{id}`, `channel:{id}` or `global`.
pub fn recipient_topic(recipient: &str) -> Option<Topic> {
    Topic::parse(recipient)
        .ok()
        .filter(|topic| matches!(topic.kind(), TopicKind::User | TopicKind::Channel | TopicKind::Global))
}

/// Whether an outbox event type is acceptable: 1 to 64 characters.
pub fn valid_type(kind: &str) -> bool {
    !kind.is_empty() && kind.len() <= 64
}

/// The recipient topic and the payload object of an event.
fn parse(event: &OutboxEvent) -> Result<(Topic, Map<String, Value>), Problem> {
    let topic = recipient_topic(&event.recipient).ok_or_else(|| {
        Problem::permanent(format!("recipient {:?} is not user:{{id}}, channel:{{id}} or global", event.recipient))
    })?;
    if !valid_type(&event.kind) {
        return Err(Problem::permanent("type must be 1 to 64 characters"));
    }
    match serde_json::from_str::<Value>(&event.data) {
        Ok(Value::Object(map)) => Ok((topic, map)),
        Ok(_) => Err(Problem::permanent("data is not a JSON object")),
        Err(error) => Err(Problem::permanent(format!("data is not JSON: {error}"))),
    }
}

/// Where an event names its actor, in order of preference.
const ACTOR_FIELDS: &[&str] = &["actorId", "fromUserId", "senderId"];

/// The actor id of an enriched event that lacks the actor's details.
fn actor_to_look_up(payload: &Map<String, Value>) -> Option<String> {
    if payload.contains_key("userName") { None } else { id_field(payload, ACTOR_FIELDS) }
}

/// The channel id of an enriched event that lacks the channel's name.
fn channel_to_look_up(payload: &Map<String, Value>) -> Option<String> {
    if payload.contains_key("channelName") { None } else { id_field(payload, &["channelId"]) }
}

/// Adds `userName`/`userImage` (the actor) and `channelName` where the event lacks them.
fn enrich(
    mut payload: Map<String, Value>,
    lookups: &Lookups,
    cloudfront: Option<&str>,
) -> Result<Map<String, Value>, Problem> {
    if !payload.contains_key("userName") {
        let actor =
            id_field(&payload, ACTOR_FIELDS).ok_or_else(|| Problem::permanent("no actorId to look the actor up by"))?;
        let row = lookups.user(&actor)?.ok_or_else(|| Problem::transient(format!("user {actor} not found")))?;
        payload.insert("userName".into(), column(&row, "name"));
        let image = match column(&row, "image") {
            Value::String(key) => Value::String(image_url(&key, cloudfront)),
            other => other,
        };
        payload.insert("userImage".into(), image);
    }
    if let Some(channel) = channel_to_look_up(&payload) {
        let row =
            lookups.channel(&channel)?.ok_or_else(|| Problem::transient(format!("channel {channel} not found")))?;
        payload.insert("channelName".into(), column(&row, "name"));
    }
    Ok(payload)
}

/// The first of `names` present, as text (ids may be numbers).
fn id_field(payload: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match payload.get(*name) {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    })
}

fn column(row: &LookupRow, name: &str) -> Value {
    row.iter()
        .find(|(column, _)| column == name)
        .and_then(|(_, value)| value.clone())
        .map_or(Value::Null, Value::String)
}

/// An image key as a CDN URL; full URLs (and everything without a CDN) unchanged.
fn image_url(key: &str, cloudfront: Option<&str>) -> String {
    match cloudfront {
        Some(domain) if !key.starts_with("http://") && !key.starts_with("https://") => {
            let domain = domain.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
            format!("https://{domain}/{}", key.trim_start_matches('/'))
        }
        _ => key.to_owned(),
    }
}

/// Lookups running at once while a batch is prepared.
const LOOKUP_CONCURRENCY: usize = 8;

type Looked = HashMap<String, Result<Option<LookupRow>, Problem>>;

/// A batch's enrichment lookups: every distinct actor and channel asked once, several at a
/// time, before the batch is prepared.
struct Lookups {
    users: Looked,
    channels: Looked,
}

impl Lookups {
    async fn fetch(store: &dyn Store, settings: &OutboxSettings, events: &[Prepared]) -> Self {
        let mut users = std::collections::BTreeSet::new();
        let mut channels = std::collections::BTreeSet::new();
        for prepared in events.iter().filter(|prepared| ENRICHED_TYPES.contains(&prepared.event.kind.as_str())) {
            users.extend(actor_to_look_up(&prepared.payload));
            channels.extend(channel_to_look_up(&prepared.payload));
        }
        Self {
            users: Self::all(store, &settings.user_query, users).await,
            channels: Self::all(store, &settings.channel_query, channels).await,
        }
    }

    async fn all(store: &dyn Store, sql: &str, ids: std::collections::BTreeSet<String>) -> Looked {
        use futures_util::StreamExt;
        futures_util::stream::iter(ids)
            .map(|id| async move {
                let row = store
                    .outbox()
                    .lookup(sql, &id)
                    .await
                    .map_err(|error| Problem::transient(format!("enrichment query failed: {error}")));
                (id, row)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect()
            .await
    }

    fn user(&self, id: &str) -> Result<Option<LookupRow>, Problem> {
        Self::found(&self.users, id)
    }

    fn channel(&self, id: &str) -> Result<Option<LookupRow>, Problem> {
        Self::found(&self.channels, id)
    }

    fn found(looked: &Looked, id: &str) -> Result<Option<LookupRow>, Problem> {
        looked.get(id).cloned().unwrap_or_else(|| Err(Problem::transient(format!("{id} was not looked up"))))
    }
}

/// The inbox notification of a user event, keyed by the event id.
fn notification_of(prepared: &Prepared) -> NewNotification {
    NewNotification {
        user_id: prepared.topic.id().to_owned(),
        kind: prepared.event.kind.clone(),
        payload: Value::Object(prepared.payload.clone()).to_string(),
        priority: Priority::Normal,
        sound: None,
        badge: None,
        dedupe_key: Some(format!("outbox:{}", prepared.event.event_id)),
        created_at: prepared.event.created_at,
        delivered_at: None,
    }
}

/// Seed 004's notification payload `{id, userId?, type, payload, createdAt}`.
fn seed_payload(prepared: &Prepared) -> Value {
    let mut data = serde_json::json!({
        "id": prepared.event.event_id,
        "type": prepared.event.kind,
        "payload": prepared.payload,
        "createdAt": inbox::json::timestamp(prepared.event.created_at),
    });
    if prepared.topic.kind() == TopicKind::User {
        data["userId"] = Value::String(prepared.topic.id().to_owned());
    }
    data
}

/// With a mirror configured, publishes each event to seed 000's channel first: an event
/// the mirror could not take is retried before Herald delivers it (so a retry repeats at
/// most the mirror's copy, never Herald's own delivery).
async fn mirror(state: &AppState, ready: Vec<Prepared>, failed: &mut Vec<(OutboxEvent, Problem)>) -> Vec<Prepared> {
    let Some(mirror) = &state.outbox_mirror else { return ready };
    let mut kept = Vec::with_capacity(ready.len());
    for prepared in ready {
        match mirror.publish(&prepared.topic, &seed_payload(&prepared).to_string()).await {
            Ok(()) => kept.push(prepared),
            Err(error) => failed.push((prepared.event, Problem::transient(format!("mirror publish failed: {error}")))),
        }
    }
    kept
}

/// Publishes a channel or global event as `notification` (seed 004's payload shape).
async fn publish(state: &AppState, prepared: &Prepared) -> Result<(), Problem> {
    let data = seed_payload(prepared);
    let event = Event::from_value(PUBLISHED_EVENT, &data).map_err(|error| Problem::permanent(error.to_string()))?;
    state
        .broker
        .publish(Publication::new(vec![prepared.topic.clone()], event))
        .await
        .map(|_| ())
        .map_err(|error| Problem::transient(format!("publish failed: {error}")))
}

/// Refreshes the gauges every second and deletes old processed events every minute.
async fn maintain(state: AppState) {
    let store = state.inbox.store_handle();
    let retention = state.settings.outbox.retention;
    let mut stats = tokio::time::interval(STATS_PERIOD);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge = tokio::time::interval(PURGE_PERIOD);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = stats.tick() => match store.outbox().stats().await {
                Ok(stats) => {
                    metrics::gauge!(m::OUTBOX_PENDING).set(stats.pending as f64);
                    metrics::gauge!(m::OUTBOX_DEAD).set(stats.dead as f64);
                    let lag = stats.oldest_pending_at.map_or(0, |oldest| (now_ms() - oldest).max(0));
                    metrics::gauge!(m::OUTBOX_LAG_SECONDS).set(lag as f64 / 1000.0);
                }
                Err(error) => tracing::debug!(%error, "outbox stats not read"),
            },
            _ = purge.tick() => {
                let before = now_ms() - retention.as_millis() as i64;
                loop {
                    match store.outbox().purge_processed(before, PURGE_BATCH).await {
                        Ok(deleted) if deleted == u64::from(PURGE_BATCH) && !state.shutdown.is_cancelled() => continue,
                        Ok(deleted) => {
                            if deleted > 0 {
                                tracing::debug!(deleted, "processed outbox events deleted");
                            }
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "outbox cleanup failed");
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_become_cdn_urls() {
        assert_eq!(image_url("avatars/7.png", Some("d1.cloudfront.net")), "https://d1.cloudfront.net/avatars/7.png");
        assert_eq!(image_url("/a.png", Some("https://d1.cloudfront.net/")), "https://d1.cloudfront.net/a.png");
        assert_eq!(image_url("https://x.example/a.png", Some("d1.cloudfront.net")), "https://x.example/a.png");
        assert_eq!(image_url("a.png", None), "a.png");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let settings = OutboxSettings {
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..OutboxSettings::default()
        };
        let event = |attempts| OutboxEvent {
            id: 1,
            event_id: "e".into(),
            recipient: "global".into(),
            kind: "SYSTEM".into(),
            data: "{}".into(),
            created_at: 0,
            attempts,
            next_attempt_at: 0,
            processed_at: None,
            dead_at: None,
            last_error: None,
        };
        for _ in 0..100 {
            let first = backoff(&settings, &event(1));
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1), "{first:?}");
            let third = backoff(&settings, &event(3));
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4), "{third:?}");
            let late = backoff(&settings, &event(40));
            assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10), "{late:?}");
        }
    }
}
