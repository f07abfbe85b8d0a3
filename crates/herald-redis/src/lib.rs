//! The Redis broker: many Herald nodes behind a load balancer, one Redis between them.
//!
//! - **Fan-out.** A publication runs one Lua script ([`scripts::PUBLISH`]) that gives it
//!   the cluster's next offset, appends it to each topic's history stream and publishes it
//!   on each topic's channel. Every node subscribes only to the channels of topics it has
//!   local subscribers for (the hub tells it, see [`herald_core::Interest`]), and delivers
//!   what arrives through its hub, in Redis's order. A publication to several topics
//!   arrives once per channel; a node delivers it once (offsets only grow).
//! - **Recovery.** [`scripts::RECOVER`] reads what a client missed since its position,
//!   or says that some of it is gone (trimmed, expired, another epoch).
//! - **Faults.** The subscriber connection is Herald's own loop: when Redis goes away the
//!   node keeps serving local connections, reports not ready and counts the outage; it
//!   reconnects with a short backoff (at most 500 ms apart) and resubscribes every channel.
//!   Publishing while Redis is away fails, so the HTTP API answers 503.
//! - **Registry and presence.** Each node writes its figures to `P nodes` every
//!   heartbeat, and its users' connection counts to `P p:{user}`; nodes whose heartbeat is
//!   older than the node timeout are ignored and, by the lease holder, cleaned up.
//! - **Seed 000/004 channels.** One node at a time (the holder of the `P ingest` lease)
//!   subscribes to `notifications:user:*`, `notifications:channel:*` and
//!   `notifications:global` and republishes each message through the script above as the
//!   event `notification`, so those events get positions and history like any other.

mod mirror;
mod scripts;

pub use mirror::SeedMirror;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald_core::broker::{BoxFuture, NodeStats, UserPresence};
use herald_core::history::new_epoch;
use herald_core::metrics as m;
use herald_core::{
    Broker, BrokerError, Delivery, Directive, Event, HistoryConfig, Hub, Interest, Position, Publication, Recovery,
    Topic, UserId,
};
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the broker reaches Redis and names its keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// Prefix of every key and channel Herald owns, e.g. `herald:`.
    pub prefix: String,
    /// Prefix of seed 000/004's channels (`notifications:`); `None` ignores them.
    pub seed_prefix: Option<String>,
    /// This node's name in the registry and presence.
    pub node_id: String,
    pub history: HistoryConfig,
    /// How long a topic's last offset is remembered after its history expired.
    pub meta_ttl: Duration,
    /// How often the node writes its figures and renews its lease.
    pub heartbeat: Duration,
    /// A node silent for this long is considered gone.
    pub node_timeout: Duration,
    /// Longest a command (a publish, a history read) may take before it fails.
    pub command_timeout: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "herald:".into(),
            seed_prefix: Some("notifications:".into()),
            node_id: node_id.into(),
            history: HistoryConfig::default(),
            meta_ttl: Duration::from_secs(7 * 24 * 3600),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid REDIS_URL: {0}")]
    Url(String),
    #[error("cannot reach Redis: {0}")]
    Connect(String),
}

/// Opens a client for `url` and a command connection that reconnects by itself, each
/// command bounded by `timeout`; the connection must answer within three of them.
pub(crate) async fn connect_manager(
    url: &str,
    timeout: Duration,
) -> Result<(redis::Client, ConnectionManager), StartError> {
    // rustls needs a process-wide crypto provider for `rediss://`; one may be set already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::open(url).map_err(|error| StartError::Url(error.to_string()))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    let commands =
        tokio::time::timeout(timeout * 3, ConnectionManager::new_with_config(client.clone(), manager_config))
            .await
            .map_err(|_| StartError::Connect("timed out".into()))?
            .map_err(|error| StartError::Connect(error.to_string()))?;
    Ok((client, commands))
}

/// Most seed-channel messages waiting to be republished; more are dropped and counted.
const INGEST_QUEUE: usize = 10_000;
/// Most channels named in one SUBSCRIBE.
const SUBSCRIBE_CHUNK: usize = 1_000;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long `subscribed` waits for the subscriber connection to confirm.
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(2);

struct Keys {
    prefix: String,
}

impl Keys {
    fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }
    fn stream(&self, topic: &str) -> String {
        format!("{}h:{topic}", self.prefix)
    }
    fn top(&self, topic: &str) -> String {
        format!("{}t:{topic}", self.prefix)
    }
    fn channel(&self, topic: &str) -> String {
        format!("{}c:{topic}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    fn presence(&self, user: &str) -> String {
        format!("{}p:{user}", self.prefix)
    }
    fn node_users(&self, node: &str) -> String {
        format!("{}nu:{node}", self.prefix)
    }
    fn lease(&self) -> String {
        format!("{}ingest", self.prefix)
    }
}

#[derive(Default)]
struct Subscriptions {
    /// The channels of every topic with local subscribers.
    wanted: HashSet<String>,
    /// Channels confirmed on the current subscriber connection.
    active: HashSet<String>,
}

/// What the subscriber delivered last: offsets only grow within an epoch, so a message
/// at or below it is a second copy (a publication to several subscribed topics).
struct LastDelivered {
    epoch: Arc<str>,
    offset: u64,
}

struct Inner {
    config: RedisConfig,
    keys: Keys,
    hub: Hub,
    client: redis::Client,
    commands: ConnectionManager,
    publish: redis::Script,
    recover: redis::Script,
    lease: redis::Script,
    subscriptions: Mutex<Subscriptions>,
    /// Woken when `wanted` or the lease changes.
    changed: Notify,
    /// Bumped each time the subscriber confirms subscriptions.
    confirmed: watch::Sender<u64>,
    subscriber_up: AtomicBool,
    commands_up: AtomicBool,
    ready: AtomicBool,
    leader: AtomicBool,
    last: Mutex<LastDelivered>,
    cluster: RwLock<Vec<NodeStats>>,
    /// Users whose local connection count changed since the last presence write.
    presence_dirty: Mutex<HashMap<UserId, usize>>,
    presence_changed: Notify,
    resync_presence: AtomicBool,
    ingest: mpsc::Sender<(Topic, Box<RawValue>)>,
    shutdown: CancellationToken,
}

/// The broker for many nodes. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("node", &self.inner.config.node_id).finish_non_exhaustive()
    }
}

/// Tells the broker what the hub's sessions need (see [`Interest`]).
struct Interested(std::sync::Weak<Inner>);

impl Interest for Interested {
    fn topic(&self, topic: &Topic, subscribed: bool) {
        let Some(inner) = self.0.upgrade() else { return };
        let channel = inner.keys.channel(topic.as_str());
        {
            let mut subscriptions = inner.subscriptions.lock();
            if subscribed {
                subscriptions.wanted.insert(channel);
            } else {
                subscriptions.wanted.remove(&channel);
            }
        }
        inner.changed.notify_one();
    }

    fn user(&self, user: &UserId, connections: usize) {
        let Some(inner) = self.0.upgrade() else { return };
        inner.presence_dirty.lock().insert(user.clone(), connections);
        inner.presence_changed.notify_one();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn broker_error(error: impl std::fmt::Display) -> BrokerError {
    BrokerError(error.to_string().into())
}

impl RedisBroker {
    /// Connects (failing if Redis cannot be reached), installs itself as the hub's
    /// interest listener and starts its tasks on `tasks` until `shutdown`.
    pub async fn start(
        hub: Hub,
        config: RedisConfig,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, StartError> {
        let (client, commands) = connect_manager(&config.url, config.command_timeout).await?;
        let (ingest, ingest_queue) = mpsc::channel(INGEST_QUEUE);
        let inner = Arc::new(Inner {
            keys: Keys { prefix: config.prefix.clone() },
            config,
            hub: hub.clone(),
            client,
            commands,
            publish: redis::Script::new(scripts::PUBLISH),
            recover: redis::Script::new(scripts::RECOVER),
            lease: redis::Script::new(scripts::LEASE),
            subscriptions: Mutex::default(),
            changed: Notify::new(),
            confirmed: watch::channel(0).0,
            subscriber_up: AtomicBool::new(false),
            commands_up: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            last: Mutex::new(LastDelivered { epoch: Arc::from(""), offset: 0 }),
            cluster: RwLock::default(),
            presence_dirty: Mutex::default(),
            presence_changed: Notify::new(),
            resync_presence: AtomicBool::new(true),
            ingest,
            shutdown,
        });
        hub.set_interest(Arc::new(Interested(Arc::downgrade(&inner))));
        tasks.spawn(inner.clone().run_subscriber());
        tasks.spawn(inner.clone().run_heartbeat());
        tasks.spawn(inner.clone().run_presence());
        tasks.spawn(inner.clone().run_ingest(ingest_queue));
        Ok(Self { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// Whether this node republishes the seed channels now.
    pub fn is_ingesting(&self) -> bool {
        self.inner.leader.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn update_ready(&self) {
        let ready = self.subscriber_up.load(Ordering::Relaxed) && self.commands_up.load(Ordering::Relaxed);
        let was = self.ready.swap(ready, Ordering::Relaxed);
        metrics::gauge!(m::BROKER_CONNECTED).set(if ready { 1.0 } else { 0.0 });
        if was && !ready {
            metrics::counter!(m::BROKER_OUTAGES).increment(1);
            tracing::warn!(node = %self.config.node_id, "Redis unavailable: serving local connections only");
        } else if !was && ready {
            tracing::info!(node = %self.config.node_id, "Redis connected");
        }
    }

    fn command_result<T>(&self, result: Result<T, String>) -> Result<T, BrokerError> {
        match result {
            Ok(value) => {
                if !self.commands_up.swap(true, Ordering::Relaxed) {
                    self.update_ready();
                }
                Ok(value)
            }
            Err(error) => {
                if self.commands_up.swap(false, Ordering::Relaxed) {
                    self.resync_presence.store(true, Ordering::Relaxed);
                    self.update_ready();
                }
                Err(broker_error(error))
            }
        }
    }

    /// Runs a command with the command timeout.
    async fn timed<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(self.config.command_timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("Redis did not answer in time".to_owned()),
        };
        self.command_result(result)
    }

    async fn publish(&self, publication: Publication) -> Result<Position, BrokerError> {
        let names: Vec<&str> = publication.topics.iter().map(Topic::as_str).collect();
        let body = serde_json::to_string(&Body {
            event: Cow::Borrowed(publication.event.name()),
            topics: names.iter().map(|name| Cow::Borrowed(*name)).collect(),
            data: publication.event.data(),
            from: publication.event.sender().map(|user| Cow::Borrowed(user.as_str())),
            directive: publication.event.directive().map(WireDirective::of),
        })
        .map_err(broker_error)?;
        let history = &self.config.history;
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(self.keys.meta());
        for name in &names {
            invocation.key(self.keys.stream(name));
        }
        for name in &names {
            invocation.key(self.keys.top(name));
        }
        invocation
            .arg(body)
            // A fresh candidate each time, used only if Redis has no epoch (it was emptied):
            // a restarted Redis must never get an epoch it had before.
            .arg(&*new_epoch())
            .arg(history.size)
            .arg(history.max_age.as_millis().max(1) as u64)
            .arg(self.config.meta_ttl.max(history.max_age).as_millis().max(1) as u64)
            .arg(names.len());
        for name in &names {
            invocation.arg(self.keys.channel(name));
        }
        let mut connection = self.commands.clone();
        let (epoch, offset): (String, u64) = self.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(Position::new(self.epoch_arc(&epoch), offset))
    }

    /// The epoch as a shared string, reusing the last one seen.
    fn epoch_arc(&self, epoch: &str) -> Arc<str> {
        let last = self.last.lock();
        if &*last.epoch == epoch { last.epoch.clone() } else { Arc::from(epoch) }
    }

    async fn recover(&self, topics: &[Topic], since: &Position, limit: usize) -> Result<Recovery, BrokerError> {
        let mut invocation = self.recover.prepare_invoke();
        invocation.key(self.keys.meta());
        for topic in topics {
            invocation.key(self.keys.stream(topic.as_str()));
        }
        for topic in topics {
            invocation.key(self.keys.top(topic.as_str()));
        }
        invocation
            .arg(&*since.epoch)
            .arg(since.offset)
            .arg(limit)
            .arg(topics.len())
            .arg(self.config.history.max_age.as_millis() as u64);
        let mut connection = self.commands.clone();
        let reply: Vec<redis::Value> = self.timed(invocation.invoke_async(&mut connection)).await?;
        parse_recovery(&reply, limit).map_err(broker_error)
    }

    /// Waits until the subscriber has confirmed the channels of `topics`.
    async fn subscribed(&self, topics: &[Topic]) {
        let channels: Vec<String> = topics.iter().map(|topic| self.keys.channel(topic.as_str())).collect();
        let mut confirmed = self.confirmed.subscribe();
        let waited = tokio::time::timeout(SUBSCRIBED_WAIT, async {
            loop {
                {
                    let subscriptions = self.subscriptions.lock();
                    if channels.iter().all(|channel| subscriptions.active.contains(channel)) {
                        return;
                    }
                }
                if confirmed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::debug!(?topics, "subscriptions not confirmed in time");
        }
    }

    /// The subscriber connection: connect, subscribe what is wanted, deliver, and on any
    /// loss start over with a short backoff.
    async fn run_subscriber(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                connected = tokio::time::timeout(self.config.command_timeout, self.client.get_async_pubsub()) => connected,
            };
            match connected {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(50);
                    if let Err(error) = self.serve(pubsub).await {
                        tracing::debug!(%error, "subscriber connection lost");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "subscriber cannot connect"),
                Err(_) => tracing::debug!("subscriber connection timed out"),
            }
            self.subscriptions.lock().active.clear();
            self.subscriber_up.store(false, Ordering::Relaxed);
            self.resync_presence.store(true, Ordering::Relaxed);
            self.update_ready();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn serve(&self, pubsub: redis::aio::PubSub) -> Result<(), redis::RedisError> {
        let (mut sink, mut messages) = pubsub.split();
        let mut ingesting = false;
        self.sync_subscriptions(&mut sink, &mut ingesting).await?;
        self.subscriber_up.store(true, Ordering::Relaxed);
        self.update_ready();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                message = messages.next() => match message {
                    Some(message) => self.on_message(&message),
                    None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "connection closed"))),
                },
                _ = self.changed.notified() => self.sync_subscriptions(&mut sink, &mut ingesting).await?,
            }
        }
    }

    /// Brings the connection's subscriptions to what is wanted.
    async fn sync_subscriptions(
        &self,
        sink: &mut redis::aio::PubSubSink,
        ingesting: &mut bool,
    ) -> redis::RedisResult<()> {
        let (add, remove): (Vec<String>, Vec<String>) = {
            let subscriptions = self.subscriptions.lock();
            let add = subscriptions.wanted.iter().filter(|c| !subscriptions.active.contains(*c)).cloned().collect();
            let remove = subscriptions.active.iter().filter(|c| !subscriptions.wanted.contains(*c)).cloned().collect();
            (add, remove)
        };
        for chunk in add.chunks(SUBSCRIBE_CHUNK) {
            sink.subscribe(chunk).await?;
            self.subscriptions.lock().active.extend(chunk.iter().cloned());
        }
        for chunk in remove.chunks(SUBSCRIBE_CHUNK) {
            sink.unsubscribe(chunk).await?;
            let mut subscriptions = self.subscriptions.lock();
            for channel in chunk {
                subscriptions.active.remove(channel);
            }
        }
        let leader = self.leader.load(Ordering::Relaxed);
        if let Some(seed) = self.config.seed_prefix.as_deref()
            && leader != *ingesting
        {
            let patterns = [format!("{seed}user:*"), format!("{seed}channel:*")];
            let global = format!("{seed}global");
            if leader {
                sink.psubscribe(&patterns).await?;
                sink.subscribe(&global).await?;
            } else {
                sink.punsubscribe(&patterns).await?;
                sink.unsubscribe(&global).await?;
            }
            *ingesting = leader;
        }
        self.confirmed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    fn on_message(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if channel.starts_with(self.keys.prefix.as_str()) && channel[self.keys.prefix.len()..].starts_with("c:") {
            metrics::counter!(m::BROKER_MESSAGES_IN).increment(1);
            if let Err(error) = self.deliver(payload) {
                tracing::warn!(%error, channel, "undeliverable message on a Herald channel");
            }
        } else if let Some(seed) = self.config.seed_prefix.as_deref()
            && let Some(rest) = channel.strip_prefix(seed)
        {
            self.on_seed_message(rest, payload);
        }
    }

    fn deliver(&self, payload: &[u8]) -> Result<(), String> {
        let wire: Wire = serde_json::from_slice(payload).map_err(|error| error.to_string())?;
        let epoch = {
            let mut last = self.last.lock();
            if &*last.epoch == wire.epoch {
                if wire.offset <= last.offset {
                    return Ok(());
                }
            } else {
                last.epoch = Arc::from(wire.epoch);
            }
            last.offset = wire.offset;
            last.epoch.clone()
        };
        let event = event_from(&wire.event, wire.data, wire.from.as_deref(), wire.directive)?
            .at_stream(Position::new(epoch, wire.offset));
        let topics: Vec<Topic> = wire.topics.iter().filter_map(|name| Topic::parse(name).ok()).collect();
        self.hub.dispatch(&topics, Arc::new(Delivery::new(event)));
        Ok(())
    }

    /// A message a seed 000/004 producer published: its JSON becomes the payload of the
    /// event `notification` on the topic its channel names.
    fn on_seed_message(&self, rest: &str, payload: &[u8]) {
        let topic = Topic::parse(rest).ok().filter(|topic| {
            matches!(
                topic.kind(),
                herald_core::TopicKind::User | herald_core::TopicKind::Channel | herald_core::TopicKind::Global
            )
        });
        let data = std::str::from_utf8(payload).ok().and_then(|text| RawValue::from_string(text.to_owned()).ok());
        let (Some(topic), Some(data)) = (topic, data) else {
            metrics::counter!(m::SEED_MESSAGES, "result" => "malformed").increment(1);
            tracing::warn!(channel = rest, bytes = payload.len(), "malformed message on a seed channel ignored");
            return;
        };
        if self.ingest.try_send((topic, data)).is_err() {
            metrics::counter!(m::SEED_MESSAGES, "result" => "dropped").increment(1);
            tracing::warn!("seed channel backlog full: message dropped");
        }
    }

    /// Republishes seed-channel messages one at a time, so their order is kept.
    async fn run_ingest(self: Arc<Self>, mut queue: mpsc::Receiver<(Topic, Box<RawValue>)>) {
        loop {
            let (topic, data) = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            let Ok(event) = Event::new("notification", data) else {
                metrics::counter!(m::SEED_MESSAGES, "result" => "malformed").increment(1);
                continue;
            };
            match self.publish(Publication::new(vec![topic], event)).await {
                Ok(_) => metrics::counter!(m::SEED_MESSAGES, "result" => "ok").increment(1),
                Err(error) => {
                    metrics::counter!(m::SEED_MESSAGES, "result" => "dropped").increment(1);
                    tracing::warn!(%error, "seed channel message could not be republished");
                }
            }
        }
    }

    /// Every heartbeat: write this node's figures, read the registry, renew the lease,
    /// and (as lease holder) clean up after nodes that stopped without saying goodbye.
    async fn run_heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.goodbye().await;
                    return;
                }
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.heartbeat().await {
                tracing::debug!(%error, "heartbeat failed");
                if self.leader.swap(false, Ordering::Relaxed) {
                    self.changed.notify_one();
                }
            }
        }
    }

    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let stats = self.hub.stats();
        let now = unix_ms();
        let me = NodeStats {
            id: self.config.node_id.clone(),
            connections: stats.connections as u64,
            unique_users: stats.unique_users as u64,
            topics: stats.topics as u64,
            heartbeat_ms: now,
        };
        let record = serde_json::to_string(&me).map_err(broker_error)?;
        let mut connection = self.commands.clone();
        let (_, nodes): ((), HashMap<String, String>) = self
            .timed(
                redis::pipe()
                    .hset(self.keys.nodes(), &self.config.node_id, record)
                    .hgetall(self.keys.nodes())
                    .query_async(&mut connection),
            )
            .await?;
        let timeout = self.config.node_timeout.as_millis() as u64;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in nodes {
            match serde_json::from_str::<NodeStats>(&record) {
                Ok(node) if now.saturating_sub(node.heartbeat_ms) <= timeout => live.push(node),
                _ => gone.push(id),
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        metrics::gauge!(m::CLUSTER_NODES).set(live.len() as f64);
        metrics::gauge!(m::CLUSTER_CONNECTIONS).set(live.iter().map(|n| n.connections).sum::<u64>() as f64);
        *self.cluster.write() = live;

        let lease_ttl = self.config.node_timeout.min(self.config.heartbeat * 3).as_millis() as u64;
        let mut invocation = self.lease.prepare_invoke();
        invocation.key(self.keys.lease()).arg(&self.config.node_id).arg(lease_ttl.max(100));
        let held: i64 = self.timed(invocation.invoke_async(&mut connection)).await?;
        let leader = held == 1 && self.config.seed_prefix.is_some();
        if self.leader.swap(leader, Ordering::Relaxed) != leader {
            tracing::info!(node = %self.config.node_id, leader, "seed channel ingestion lease changed");
            self.changed.notify_one();
        }
        if held == 1 {
            for node in gone {
                self.forget_node(&node).await?;
            }
        }
        Ok(())
    }

    /// Removes a node's registry entry and presence (it stopped or died).
    async fn forget_node(&self, node: &str) -> Result<(), BrokerError> {
        let mut connection = self.commands.clone();
        let users: Vec<String> =
            self.timed(redis::cmd("SMEMBERS").arg(self.keys.node_users(node)).query_async(&mut connection)).await?;
        let mut pipe = redis::pipe();
        for user in &users {
            pipe.hdel(self.keys.presence(user), node).ignore();
        }
        pipe.del(self.keys.node_users(node)).ignore().hdel(self.keys.nodes(), node).ignore();
        self.timed(pipe.query_async::<()>(&mut connection)).await?;
        tracing::info!(node, users = users.len(), "forgot a node that stopped sending heartbeats");
        Ok(())
    }

    /// A clean shutdown: remove this node from the registry and presence at once.
    async fn goodbye(&self) {
        if let Err(error) = self.forget_node(&self.config.node_id.clone()).await {
            tracing::debug!(%error, "goodbye not written");
        }
    }

    /// Writes changed presence counts; after an outage, all of this node's.
    async fn run_presence(self: Arc<Self>) {
        let mut retry = tokio::time::interval(self.config.heartbeat);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.presence_changed.notified() => {}
                _ = retry.tick() => {}
            }
            let resync = self.resync_presence.swap(false, Ordering::Relaxed);
            let changes: Vec<(UserId, usize)> = if resync {
                self.presence_dirty.lock().clear();
                self.hub.user_counts()
            } else {
                self.presence_dirty.lock().drain().collect()
            };
            if changes.is_empty() && !resync {
                continue;
            }
            if let Err(error) = self.write_presence(&changes, resync).await {
                tracing::debug!(%error, "presence not written; will retry");
                if resync {
                    self.resync_presence.store(true, Ordering::Relaxed);
                } else {
                    let mut dirty = self.presence_dirty.lock();
                    for (user, count) in changes {
                        dirty.entry(user).or_insert(count);
                    }
                }
            }
        }
    }

    async fn write_presence(&self, changes: &[(UserId, usize)], full: bool) -> Result<(), BrokerError> {
        let node = &self.config.node_id;
        let node_users = self.keys.node_users(node);
        let mut pipe = redis::pipe();
        if full {
            // Forget what this node wrote before the outage; rewrite what is true now.
            let mut connection = self.commands.clone();
            let stale: Vec<String> =
                self.timed(redis::cmd("SMEMBERS").arg(&node_users).query_async(&mut connection)).await?;
            for user in stale {
                pipe.hdel(self.keys.presence(&user), node).ignore();
            }
            pipe.del(&node_users).ignore();
        }
        for (user, count) in changes {
            if *count == 0 {
                pipe.hdel(self.keys.presence(user.as_str()), node).ignore();
                pipe.srem(&node_users, user.as_str()).ignore();
            } else {
                pipe.hset(self.keys.presence(user.as_str()), node, *count).ignore();
                pipe.sadd(&node_users, user.as_str()).ignore();
            }
        }
        let mut connection = self.commands.clone();
        self.timed(pipe.query_async::<()>(&mut connection)).await
    }

    async fn presence(&self, user: &UserId) -> Result<UserPresence, BrokerError> {
        let mut connection = self.commands.clone();
        let counts: HashMap<String, u64> = self
            .timed(redis::cmd("HGETALL").arg(self.keys.presence(user.as_str())).query_async(&mut connection))
            .await?;
        let live: HashSet<String> = self.cluster.read().iter().map(|node| node.id.clone()).collect();
        // This node's own count is exact and may not be written yet; another node's counts
        // only while its heartbeat is live (a dead node's stay until the lease holder cleans up).
        let here = self.hub.connections_of(user) as u64;
        let mut nodes: Vec<String> = Vec::new();
        let mut connections = here;
        if here > 0 {
            nodes.push(self.config.node_id.clone());
        }
        for (node, count) in counts {
            if count > 0 && node != self.config.node_id && live.contains(&node) {
                connections += count;
                nodes.push(node);
            }
        }
        nodes.sort();
        Ok(UserPresence { online: connections > 0, connections, nodes })
    }
}

/// The body of a Herald channel message or history entry.
#[derive(serde::Serialize, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    topics: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    /// The event's sender (see `Event::sender`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    from: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    directive: Option<WireDirective>,
}

/// An `Event`'s directive as JSON: `{"unsubscribe": user}` or
/// `{"blocks": {"user": user, "blocked": [users]}}`.
#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireDirective {
    Unsubscribe(String),
    Blocks { user: String, blocked: Vec<String> },
}

impl WireDirective {
    fn of(directive: &Directive) -> Self {
        match directive {
            Directive::Unsubscribe(user) => WireDirective::Unsubscribe(user.as_str().to_owned()),
            Directive::Blocks { user, blocked } => WireDirective::Blocks {
                user: user.as_str().to_owned(),
                blocked: blocked.iter().map(|user| user.as_str().to_owned()).collect(),
            },
        }
    }

    fn into_directive(self) -> Result<Directive, String> {
        let user = |text: &str| UserId::parse(text).map_err(|error| error.to_string());
        Ok(match self {
            WireDirective::Unsubscribe(name) => Directive::Unsubscribe(user(&name)?),
            WireDirective::Blocks { user: name, blocked } => Directive::Blocks {
                user: user(&name)?,
                blocked: blocked.iter().map(|name| user(name)).collect::<Result<Vec<_>, _>>()?.into(),
            },
        })
    }
}

/// A Herald channel message: the body with its position in front.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    epoch: &'a str,
    offset: u64,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    topics: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    directive: Option<WireDirective>,
}

/// Rebuilds an event from a channel message or history entry.
fn event_from(
    name: &str,
    data: &RawValue,
    from: Option<&str>,
    directive: Option<WireDirective>,
) -> Result<Event, String> {
    let mut event = Event::new(name, data.to_owned()).map_err(|error| error.to_string())?;
    if let Some(from) = from {
        event = event.from_sender(UserId::parse(from).map_err(|error| error.to_string())?);
    }
    if let Some(directive) = directive {
        event = event.with_directive(directive.into_directive()?);
    }
    Ok(event)
}

fn value_text(value: &redis::Value) -> Option<Cow<'_, str>> {
    match value {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
        redis::Value::SimpleString(text) => Some(Cow::Borrowed(text)),
        redis::Value::Int(number) => Some(Cow::Owned(number.to_string())),
        _ => None,
    }
}

fn parse_recovery(reply: &[redis::Value], limit: usize) -> Result<Recovery, String> {
    let [epoch, offset, status, entries @ ..] = reply else { return Err("short recovery reply".into()) };
    let epoch: Arc<str> = Arc::from(&*value_text(epoch).ok_or("epoch")?);
    let offset: u64 = value_text(offset).and_then(|text| text.parse().ok()).ok_or("offset")?;
    let current = Position::new(epoch.clone(), offset);
    if value_text(status).as_deref() != Some("1") {
        return Ok(Recovery::lost(current));
    }
    let mut events: Vec<(u64, Event)> = Vec::new();
    for pair in entries.chunks(2) {
        let [id, body] = pair else { return Err("odd recovery entries".into()) };
        let id = value_text(id).ok_or("entry id")?;
        let entry_offset: u64 = id.split('-').next().and_then(|n| n.parse().ok()).ok_or("entry id")?;
        let body = value_text(body).ok_or("entry body")?;
        let body: Body = serde_json::from_str(&body).map_err(|error| error.to_string())?;
        let event = event_from(&body.event, body.data, body.from.as_deref(), body.directive)?
            .at_stream(Position::new(epoch.clone(), entry_offset));
        events.push((entry_offset, event));
    }
    events.sort_by_key(|(offset, _)| *offset);
    events.dedup_by_key(|(offset, _)| *offset);
    if events.len() > limit {
        return Ok(Recovery::lost(current));
    }
    Ok(Recovery { current, recovered: true, events: events.into_iter().map(|(_, event)| event).collect() })
}

impl Broker for RedisBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Position, BrokerError>> {
        Box::pin(self.inner.publish(publication))
    }

    fn recover<'a>(
        &'a self,
        topics: &'a [Topic],
        since: &'a Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(self.inner.recover(topics, since, limit))
    }

    fn subscribed<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.subscribed(topics))
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn cluster(&self) -> Option<Vec<NodeStats>> {
        Some(self.inner.cluster.read().clone())
    }

    fn presence<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Option<UserPresence>, BrokerError>> {
        Box::pin(async move { self.inner.presence(user).await.map(Some) })
    }

    fn has_subscribers<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            // A node subscribes to a topic's channel exactly while it has local subscribers.
            let mut connection = self.inner.commands.clone();
            let channel = self.inner.keys.channel(topic.as_str());
            let counts: Vec<(String, u64)> =
                self.inner.timed(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut connection)).await?;
            Ok(counts.iter().any(|(_, count)| *count > 0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> redis::Value {
        redis::Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn recovery_replies_are_parsed_sorted_and_deduplicated() {
        let body = r#"{"event":"e","topics":["global"],"data":{"n":1}}"#;
        let later = r#"{"event":"e","topics":["global"],"data":{"n":2}}"#;
        let reply = [
            bulk("ep"),
            redis::Value::Int(9),
            redis::Value::Int(1),
            bulk("8-0"),
            bulk(later),
            bulk("5-0"),
            bulk(body),
            bulk("8-0"),
            bulk(later),
        ];
        let recovery = parse_recovery(&reply, 10).unwrap();
        assert!(recovery.recovered);
        assert_eq!(recovery.current, Position::new("ep".into(), 9));
        let offsets: Vec<u64> = recovery.events.iter().map(|e| e.stream().unwrap().offset).collect();
        assert_eq!(offsets, [5, 8]);
        assert!(!parse_recovery(&reply, 1).unwrap().recovered, "over the limit");
        let lost = [bulk("ep"), redis::Value::Int(9), redis::Value::Int(0)];
        assert!(!parse_recovery(&lost, 10).unwrap().recovered);
        assert!(parse_recovery(&[bulk("ep")], 10).is_err());
    }
}
