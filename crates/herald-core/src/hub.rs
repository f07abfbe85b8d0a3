//! The hub: the registry of local sessions and their topic subscriptions, and the
//! fan-out from one published event to every subscribed session on this node.
//!
//! Locking: two maps behind `parking_lot::RwLock`s. Fan-out takes only the topic map's
//! read lock and never blocks while holding it ([`Outlet::offer`] must not block and must
//! not call back into the hub). Sessions that cannot take an event are closed after the
//! lock is released.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::access::{AccessDenied, check_subscribe};
use crate::error::{CloseReason, ErrorCode};
use crate::event::{Delivery, Directive};
use crate::history::Position;
use crate::metrics as m;
use crate::principal::{Principal, UserId};
use crate::topic::Topic;

/// Identifies a session on this node. Never reused while the node runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Why an outlet did not take a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferError {
    /// The session's bounded queue is full: a slow consumer.
    Full,
    /// The session is already gone.
    Closed,
}

/// The hub's handle on one session's outgoing side, implemented by each transport.
pub trait Outlet: Send + Sync + 'static {
    /// Queues a delivery for the client. Must not block and must not call into the hub.
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError>;

    /// Ends the session for `reason`: tell the client if possible, then disconnect.
    /// Must not block and must not call into the hub.
    fn close(&self, reason: CloseReason);
}

/// Limits the hub enforces on every session.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Most topics one session may be subscribed to at once.
    pub max_topics_per_session: usize,
    /// Most live deliveries held for a session while it recovers history; more closes
    /// it as a slow consumer.
    pub max_held: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self { max_topics_per_session: 1_000, max_held: 1_024 }
    }
}

/// Told when this node's interest changes: a topic gains its first local subscriber or
/// loses its last, a user's local connection count changes. The Redis broker subscribes
/// and records presence from these. Called with hub locks held: must not block and must
/// not call into the hub.
pub trait Interest: Send + Sync + 'static {
    fn topic(&self, topic: &Topic, subscribed: bool);
    fn user(&self, _user: &UserId, _connections: usize) {}
}

/// Told when a user's first local session joins a conversation topic (`room:`,
/// `group:`, `chat:`) or the last one leaves it, however it leaves (unsubscribed,
/// disconnected, removed). Called with hub locks held: must not block and must not call
/// into the hub.
pub trait Attendance: Send + Sync + 'static {
    fn changed(&self, topic: &Topic, principal: &Principal, present: bool);

    /// A user's local connection count changed to `connections`, up by one when
    /// `opened`, else down by one (presence).
    fn connections(&self, _principal: &Principal, _connections: usize, _opened: bool) {}
}

/// A refused subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error("a session may hold at most {0} subscriptions")]
    TooMany(usize),
    #[error("session closed")]
    Closed,
}

impl SubscribeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::Denied(denied) => denied.code,
            SubscribeError::TooMany(_) => ErrorCode::RateLimited,
            SubscribeError::Closed => ErrorCode::Internal,
        }
    }
}

/// What the hub knows of one session.
struct SessionEntry {
    outlet: Arc<Gate>,
    principal: Arc<Principal>,
    transport: &'static str,
    topics: HashSet<Topic>,
    shared: Arc<SessionShared>,
}

/// State a session's transport task and the hub's sweeper both touch.
#[derive(Debug)]
struct SessionShared {
    /// Milliseconds since the hub started at the last client activity.
    last_activity_ms: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct TransportCount {
    active: u64,
    peak: u64,
}

/// Figures for health endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub unique_users: usize,
    pub topics: usize,
    pub subscriptions: usize,
    /// Events this node has dispatched to its sessions since start.
    pub dispatched: u64,
    /// Deliveries (one per receiving session) since start.
    pub delivered: u64,
}

/// The local sessions subscribed to one topic, with the outlet to reach each.
type Subscribers = HashMap<SessionId, Arc<dyn Outlet>>;

/// Every session's outlet, wrapped so that its live deliveries can be held back while
/// it recovers history ([`SessionGuard::hold`]): missed events reach the client before
/// new ones. Not holding costs one atomic load per delivery.
struct Gate {
    inner: Arc<dyn Outlet>,
    holding: AtomicBool,
    held: Mutex<Option<Box<Held>>>,
    max_held: usize,
    /// The users this session's user blocked: what they send is not offered. `None`
    /// until loaded (see [`SessionGuard::load_blocked`]).
    blocked: RwLock<Option<Arc<[UserId]>>>,
}

#[derive(Default)]
struct Held {
    holds: usize,
    deliveries: Vec<Arc<Delivery>>,
    /// Positions of history events given during the hold: held live copies are dropped.
    given: HashSet<Position>,
}

impl Outlet for Gate {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        if self.refuses(delivery) {
            return Ok(());
        }
        if !self.holding.load(Ordering::Acquire) {
            return self.inner.offer(delivery);
        }
        let mut held = self.held.lock();
        match held.as_mut() {
            Some(held) if held.deliveries.len() >= self.max_held => Err(OfferError::Full),
            Some(held) => {
                held.deliveries.push(delivery.clone());
                Ok(())
            }
            None => self.inner.offer(delivery),
        }
    }

    fn close(&self, reason: CloseReason) {
        self.inner.close(reason);
    }
}

impl Gate {
    /// Whether the delivery comes from a user this session blocked.
    fn refuses(&self, delivery: &Delivery) -> bool {
        let Some(sender) = delivery.event().sender() else { return false };
        self.blocked.read().as_ref().is_some_and(|blocked| blocked.contains(sender))
    }

    fn hold(&self) {
        let mut held = self.held.lock();
        held.get_or_insert_with(Default::default).holds += 1;
        self.holding.store(true, Ordering::Release);
    }

    /// Gives `history` to the client, then, when this was the last hold, what was held
    /// meanwhile (less what `history` already gave).
    fn release(&self, history: &[Arc<Delivery>]) -> Result<(), OfferError> {
        let mut guard = self.held.lock();
        let Some(held) = guard.as_mut() else { return Ok(()) };
        let mut result = Ok(());
        for delivery in history {
            if let Some(position) = delivery.event().stream() {
                held.given.insert(position.clone());
            }
            if result.is_ok() && !self.refuses(delivery) {
                result = self.inner.offer(delivery);
            }
        }
        held.holds -= 1;
        if held.holds == 0 {
            let held = guard.take().unwrap_or_default();
            self.holding.store(false, Ordering::Release);
            for delivery in &held.deliveries {
                let duplicate = delivery.event().stream().is_some_and(|position| held.given.contains(position));
                if !duplicate && result.is_ok() {
                    result = self.inner.offer(delivery);
                }
            }
        }
        result
    }
}

struct Inner {
    limits: HubLimits,
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
    topics: RwLock<HashMap<Topic, Subscribers>>,
    /// Connections per user, for unique-user figures and presence.
    users: Mutex<HashMap<UserId, usize>>,
    /// Sessions ordered by token expiry (Unix seconds), for the sweeper.
    expiries: Mutex<BTreeSet<(u64, SessionId)>>,
    per_transport: Mutex<HashMap<&'static str, TransportCount>>,
    next_id: AtomicU64,
    started: tokio::time::Instant,
    interest: std::sync::OnceLock<Arc<dyn Interest>>,
    /// Local sessions per user on each conversation topic, for [`Attendance`].
    attendance_counts: Mutex<HashMap<(Topic, UserId), u32>>,
    attendance: std::sync::OnceLock<Arc<dyn Attendance>>,
    dispatched: AtomicU64,
    delivered: AtomicU64,
}

/// The registry of local sessions and subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubLimits::default())
    }
}

impl Hub {
    pub fn new(limits: HubLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                sessions: RwLock::default(),
                topics: RwLock::default(),
                users: Mutex::default(),
                expiries: Mutex::default(),
                per_transport: Mutex::default(),
                next_id: AtomicU64::new(1),
                started: tokio::time::Instant::now(),
                interest: std::sync::OnceLock::new(),
                attendance_counts: Mutex::default(),
                attendance: std::sync::OnceLock::new(),
                dispatched: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Installs the listener told of interest changes (once; later calls are ignored).
    /// Topics and users already present are reported to it first.
    pub fn set_interest(&self, interest: Arc<dyn Interest>) {
        let topics = self.inner.topics.read();
        let users = self.inner.users.lock();
        if self.inner.interest.set(interest.clone()).is_ok() {
            for topic in topics.keys() {
                interest.topic(topic, true);
            }
            for (user, count) in users.iter() {
                interest.user(user, *count);
            }
        }
    }

    /// Installs the listener told of conversation attendance (once; later calls are ignored).
    pub fn set_attendance(&self, attendance: Arc<dyn Attendance>) {
        let _first = self.inner.attendance.set(attendance);
    }

    /// Counts a session of `principal` joining or leaving a conversation topic.
    fn attend(&self, topic: &Topic, principal: &Principal, joined: bool) {
        if !topic.kind().needs_membership() {
            return;
        }
        let mut counts = self.inner.attendance_counts.lock();
        let key = (topic.clone(), principal.user_id.clone());
        let changed = if joined {
            let count = counts.entry(key).or_default();
            *count += 1;
            *count == 1
        } else {
            match counts.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(&key);
                    true
                }
                None => false,
            }
        };
        if changed && let Some(attendance) = self.inner.attendance.get() {
            attendance.changed(topic, principal, joined);
        }
    }

    /// How many of `user`'s local sessions are subscribed to a conversation topic.
    pub fn attendance_of(&self, topic: &Topic, user: &UserId) -> u32 {
        self.inner.attendance_counts.lock().get(&(topic.clone(), user.clone())).copied().unwrap_or(0)
    }

    /// The topics with at least one local subscriber.
    pub fn topics(&self) -> Vec<Topic> {
        self.inner.topics.read().keys().cloned().collect()
    }

    fn add_subscriber(
        &self,
        topics: &mut HashMap<Topic, Subscribers>,
        topic: Topic,
        id: SessionId,
        outlet: Arc<dyn Outlet>,
    ) {
        match topics.entry(topic) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                entry.get_mut().insert(id, outlet);
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                if let Some(interest) = self.inner.interest.get() {
                    interest.topic(entry.key(), true);
                }
                entry.insert(HashMap::from([(id, outlet)]));
            }
        }
    }

    fn remove_subscriber(&self, topics: &mut HashMap<Topic, Subscribers>, topic: &Topic, id: SessionId) {
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                topics.remove(topic);
                if let Some(interest) = self.inner.interest.get() {
                    interest.topic(topic, false);
                }
            }
        }
    }

    fn count_user(&self, principal: &Principal, opened: bool) {
        let user = &principal.user_id;
        let mut users = self.inner.users.lock();
        let count = if opened {
            let count = users.entry(user.clone()).or_default();
            *count += 1;
            *count
        } else {
            let Some(count) = users.get_mut(user) else { return };
            *count -= 1;
            let count = *count;
            if count == 0 {
                users.remove(user);
            }
            count
        };
        if let Some(interest) = self.inner.interest.get() {
            interest.user(user, count);
        }
        if let Some(attendance) = self.inner.attendance.get() {
            attendance.connections(principal, count, opened);
        }
    }

    /// Registers a session and subscribes it to its own `user:{id}` topic and `global`.
    /// The session lives until the returned guard is dropped or the hub closes it.
    pub fn register(&self, principal: Principal, transport: &'static str, outlet: Arc<dyn Outlet>) -> SessionGuard {
        self.register_inner(principal, transport, outlet, false)
    }

    /// Like [`Hub::register`], with the session's live deliveries held from the start
    /// until the returned hold is released (a client recovering what it missed).
    pub fn register_held(
        &self,
        principal: Principal,
        transport: &'static str,
        outlet: Arc<dyn Outlet>,
    ) -> (SessionGuard, Hold) {
        let session = self.register_inner(principal, transport, outlet, true);
        let hold = Hold { hub: self.clone(), id: session.id, gate: Some(session.gate.clone()) };
        (session, hold)
    }

    fn register_inner(
        &self,
        principal: Principal,
        transport: &'static str,
        outlet: Arc<dyn Outlet>,
        held: bool,
    ) -> SessionGuard {
        let id = SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let principal = Arc::new(principal);
        let shared = Arc::new(SessionShared { last_activity_ms: AtomicU64::new(self.now_ms()) });
        let own_topics = [Topic::user(&principal.user_id), Topic::global()];
        let gate = Arc::new(Gate {
            inner: outlet,
            holding: AtomicBool::new(held),
            held: Mutex::new(held.then(|| Box::new(Held { holds: 1, ..Held::default() }))),
            max_held: self.inner.limits.max_held,
            blocked: RwLock::new(None),
        });
        {
            let mut topics = self.inner.topics.write();
            for topic in &own_topics {
                self.add_subscriber(&mut topics, topic.clone(), id, gate.clone());
            }
        }
        if let Some(expires_at) = principal.expires_at {
            self.inner.expiries.lock().insert((expires_at, id));
        }
        self.count_user(&principal, true);
        self.count_transport(transport, true);
        self.inner.sessions.write().insert(
            id,
            SessionEntry {
                outlet: gate.clone(),
                principal: principal.clone(),
                transport,
                topics: own_topics.into_iter().collect(),
                shared: shared.clone(),
            },
        );
        SessionGuard { hub: self.clone(), id, principal, shared, gate }
    }

    fn count_transport(&self, transport: &'static str, opened: bool) {
        let mut counts = self.inner.per_transport.lock();
        let count = counts.entry(transport).or_default();
        if opened {
            count.active += 1;
            count.peak = count.peak.max(count.active);
            metrics::counter!(m::CONNECTIONS_TOTAL, "transport" => transport).increment(1);
            metrics::gauge!(m::CONNECTIONS_PEAK, "transport" => transport).set(count.peak as f64);
        } else {
            count.active = count.active.saturating_sub(1);
        }
        metrics::gauge!(m::CONNECTIONS_ACTIVE, "transport" => transport).set(count.active as f64);
    }

    /// Removes a session everywhere. Returns its entry if it was still registered.
    fn remove(&self, id: SessionId) -> Option<SessionEntry> {
        let entry = self.inner.sessions.write().remove(&id)?;
        {
            let mut topics = self.inner.topics.write();
            for topic in &entry.topics {
                self.remove_subscriber(&mut topics, topic, id);
            }
        }
        for topic in &entry.topics {
            self.attend(topic, &entry.principal, false);
        }
        if let Some(expires_at) = entry.principal.expires_at {
            self.inner.expiries.lock().remove(&(expires_at, id));
        }
        self.count_user(&entry.principal, false);
        self.count_transport(entry.transport, false);
        Some(entry)
    }

    /// Ends a session for `reason`: removes it, then tells its outlet to close.
    pub fn close_session(&self, id: SessionId, reason: CloseReason) {
        if let Some(entry) = self.remove(id) {
            metrics::counter!(m::SESSIONS_CLOSED, "reason" => reason.as_str()).increment(1);
            if reason == CloseReason::SlowConsumer {
                metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS, "transport" => entry.transport).increment(1);
            }
            tracing::debug!(session = %id, user = %entry.principal.user_id, %reason, "closing session");
            entry.outlet.close(reason);
        }
    }

    /// Ends every session (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let ids: Vec<SessionId> = self.inner.sessions.read().keys().copied().collect();
        for id in ids {
            self.close_session(id, reason);
        }
    }

    fn subscribe(&self, id: SessionId, topic: Topic, member: bool) -> Result<bool, SubscribeError> {
        let mut sessions = self.inner.sessions.write();
        let entry = sessions.get_mut(&id).ok_or(SubscribeError::Closed)?;
        if !(member && topic.kind().checked_by_server()) {
            check_subscribe(&entry.principal, &topic)?;
        }
        if entry.topics.contains(&topic) {
            return Ok(false);
        }
        if entry.topics.len() >= self.inner.limits.max_topics_per_session {
            return Err(SubscribeError::TooMany(self.inner.limits.max_topics_per_session));
        }
        entry.topics.insert(topic.clone());
        let outlet: Arc<dyn Outlet> = entry.outlet.clone();
        self.add_subscriber(&mut self.inner.topics.write(), topic.clone(), id, outlet);
        self.attend(&topic, &entry.principal, true);
        Ok(true)
    }

    fn unsubscribe(&self, id: SessionId, topic: &Topic) -> bool {
        let mut sessions = self.inner.sessions.write();
        let Some(entry) = sessions.get_mut(&id) else {
            return false;
        };
        if !entry.topics.remove(topic) {
            return false;
        }
        self.remove_subscriber(&mut self.inner.topics.write(), topic, id);
        self.attend(topic, &entry.principal, false);
        true
    }

    /// Delivers one event to every local session subscribed to any of `topics`, once per
    /// session. Returns how many sessions took it. Sessions whose queue is full are closed
    /// as slow consumers.
    pub fn dispatch(&self, topics: &[Topic], delivery: Arc<Delivery>) -> usize {
        let mut delivered = 0usize;
        let mut full: Vec<SessionId> = Vec::new();
        let mut gone: Vec<SessionId> = Vec::new();
        {
            let map = self.inner.topics.read();
            let mut offer = |id: SessionId, outlet: &Arc<dyn Outlet>| match outlet.offer(&delivery) {
                Ok(()) => delivered += 1,
                Err(OfferError::Full) => full.push(id),
                Err(OfferError::Closed) => gone.push(id),
            };
            match topics {
                [topic] => {
                    if let Some(subscribers) = map.get(topic) {
                        for (id, outlet) in subscribers {
                            offer(*id, outlet);
                        }
                    }
                }
                _ => {
                    let mut seen = HashSet::new();
                    for topic in topics {
                        if let Some(subscribers) = map.get(topic) {
                            for (id, outlet) in subscribers {
                                if seen.insert(*id) {
                                    offer(*id, outlet);
                                }
                            }
                        }
                    }
                }
            }
        }
        for id in full {
            self.close_session(id, CloseReason::SlowConsumer);
        }
        // An outlet whose connection is already gone: forget the session, so a transport
        // that missed its cleanup cannot leave it registered.
        for id in gone {
            self.remove(id);
        }
        if let Some(directive) = delivery.event().directive() {
            self.apply(topics, directive);
        }
        self.inner.dispatched.fetch_add(1, Ordering::Relaxed);
        self.inner.delivered.fetch_add(delivered as u64, Ordering::Relaxed);
        let event_label = m::event_label(delivery.event().name());
        metrics::counter!(m::EVENTS_OUT, "event" => event_label).increment(delivered as u64);
        metrics::histogram!(m::PUBLISH_TO_ENQUEUE_SECONDS).record(delivery.accepted_instant().elapsed().as_secs_f64());
        delivered
    }

    /// [`SessionGuard::subscribe_member`] by session id, for work finished after the
    /// command that asked for it (a store lookup). `Ok(false)` when already subscribed.
    pub fn subscribe_member(&self, id: SessionId, topic: Topic) -> Result<bool, SubscribeError> {
        self.subscribe(id, topic, true)
    }

    /// [`SessionGuard::load_blocked`] by session id.
    pub fn load_blocked(&self, id: SessionId, blocked: Vec<UserId>) {
        let gate = self.inner.sessions.read().get(&id).map(|entry| entry.outlet.clone());
        if let Some(gate) = gate {
            let mut current = gate.blocked.write();
            if current.is_none() {
                *current = Some(blocked.into());
            }
        }
    }

    /// Unsubscribes a session by id; `false` when it was not subscribed.
    pub fn unsubscribe_session(&self, id: SessionId, topic: &Topic) -> bool {
        self.unsubscribe(id, topic)
    }

    /// Carries out a delivered event's directive on this node's sessions.
    fn apply(&self, topics: &[Topic], directive: &Directive) {
        match directive {
            Directive::Unsubscribe(user) => {
                for topic in topics {
                    for id in self.sessions_of_on(user, topic) {
                        self.unsubscribe(id, topic);
                    }
                }
            }
            Directive::Blocks { user, blocked } => {
                let ids = self.sessions_of_on(user, &Topic::user(user));
                let sessions = self.inner.sessions.read();
                for id in ids {
                    if let Some(entry) = sessions.get(&id) {
                        *entry.outlet.blocked.write() = Some(blocked.clone());
                    }
                }
            }
        }
    }

    /// The local sessions subscribed to `topic` (taken with the topic map's lock released
    /// before the session map's is taken).
    fn subscriber_ids(&self, topic: &Topic) -> Vec<SessionId> {
        self.inner.topics.read().get(topic).map(|subscribers| subscribers.keys().copied().collect()).unwrap_or_default()
    }

    /// The sessions of `user` subscribed to `topic`.
    fn sessions_of_on(&self, user: &UserId, topic: &Topic) -> Vec<SessionId> {
        let ids = self.subscriber_ids(topic);
        let sessions = self.inner.sessions.read();
        ids.into_iter().filter(|id| sessions.get(id).is_some_and(|entry| entry.principal.user_id == *user)).collect()
    }

    /// The users with a session on this node subscribed to `topic`, each once, sorted.
    pub fn users_on(&self, topic: &Topic) -> Vec<UserId> {
        let ids = self.subscriber_ids(topic);
        let sessions = self.inner.sessions.read();
        let users: BTreeSet<&str> =
            ids.iter().filter_map(|id| sessions.get(id)).map(|entry| entry.principal.user_id.as_str()).collect();
        users.into_iter().filter_map(|user| UserId::parse(user).ok()).collect()
    }

    /// Offers one event to one session only (e.g. notifications it missed while offline).
    /// Returns whether the session took it; a full queue closes it as a slow consumer.
    pub fn send_to(&self, id: SessionId, delivery: Arc<Delivery>) -> bool {
        let outlet = match self.inner.sessions.read().get(&id) {
            Some(entry) => entry.outlet.clone(),
            None => return false,
        };
        match outlet.offer(&delivery) {
            Ok(()) => true,
            Err(OfferError::Full) => {
                self.close_session(id, CloseReason::SlowConsumer);
                false
            }
            Err(OfferError::Closed) => {
                self.remove(id);
                false
            }
        }
    }

    /// Every user with sessions on this node, with how many.
    pub fn user_counts(&self) -> Vec<(UserId, usize)> {
        self.inner.users.lock().iter().map(|(user, count)| (user.clone(), *count)).collect()
    }

    /// How many sessions the user has on this node.
    pub fn connections_of(&self, user: &UserId) -> usize {
        self.inner.users.lock().get(user).copied().unwrap_or(0)
    }

    /// Whether the user has at least one session on this node.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.inner.users.lock().contains_key(user)
    }

    /// Closes sessions whose token has expired, and, when `idle` is set, sessions without
    /// client activity for that long. Returns how many were closed.
    pub fn sweep(&self, idle: Option<Duration>) -> usize {
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let expired: Vec<SessionId> = {
            let expiries = self.inner.expiries.lock();
            expiries.iter().take_while(|(expires_at, _)| *expires_at <= now_unix).map(|(_, id)| *id).collect()
        };
        let mut closed = expired.len();
        for id in expired {
            self.close_session(id, CloseReason::TokenExpired);
        }
        if let Some(idle) = idle {
            let cutoff = self.now_ms().saturating_sub(idle.as_millis() as u64);
            let idle_ids: Vec<SessionId> = self
                .inner
                .sessions
                .read()
                .iter()
                .filter(|(_, entry)| entry.shared.last_activity_ms.load(Ordering::Relaxed) < cutoff)
                .map(|(id, _)| *id)
                .collect();
            closed += idle_ids.len();
            for id in idle_ids {
                self.close_session(id, CloseReason::IdleTimeout);
            }
        }
        closed
    }

    /// Runs [`Hub::sweep`] every `period` until `shutdown` is cancelled.
    pub async fn run_sweeper(self, period: Duration, idle: Option<Duration>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => { self.sweep(idle); }
            }
        }
    }

    pub fn stats(&self) -> HubStats {
        let connections = self.inner.sessions.read().len();
        let unique_users = self.inner.users.lock().len();
        let topics = self.inner.topics.read();
        HubStats {
            connections,
            unique_users,
            topics: topics.len(),
            subscriptions: topics.values().map(HashMap::len).sum(),
            dispatched: self.inner.dispatched.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
        }
    }

    /// The `n` topics with the most local subscribers, most first.
    pub fn largest_topics(&self, n: usize) -> Vec<(Topic, usize)> {
        let map = self.inner.topics.read();
        let mut sizes: Vec<(usize, &Topic)> =
            map.iter().map(|(topic, subscribers)| (subscribers.len(), topic)).collect();
        let order =
            |a: &(usize, &Topic), b: &(usize, &Topic)| b.0.cmp(&a.0).then_with(|| a.1.as_str().cmp(b.1.as_str()));
        if n < sizes.len() {
            // The n largest first, in any order; only those are sorted.
            sizes.select_nth_unstable_by(n, order);
            sizes.truncate(n);
        }
        sizes.sort_unstable_by(order);
        sizes.into_iter().map(|(count, topic)| (topic.clone(), count)).collect()
    }

    /// Active connections per transport name.
    pub fn connections_by_transport(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<_> = self.inner.per_transport.lock().iter().map(|(name, c)| (*name, c.active)).collect();
        counts.sort();
        counts
    }

    /// How many local sessions are subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.inner.topics.read().get(topic).map_or(0, HashMap::len)
    }
}

/// Owns one registered session; dropping it unregisters the session.
pub struct SessionGuard {
    hub: Hub,
    id: SessionId,
    principal: Arc<Principal>,
    shared: Arc<SessionShared>,
    gate: Arc<Gate>,
}

impl fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGuard").field("id", &self.id).field("user", &self.principal.user_id).finish()
    }
}

impl SessionGuard {
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Subscribes after checking access. `Ok(false)` when already subscribed.
    pub fn subscribe(&self, topic: Topic) -> Result<bool, SubscribeError> {
        self.hub.subscribe(self.id, topic, false)
    }

    /// Subscribes to a conversation topic (`room:`, `group:`, `chat:`) whose membership
    /// the caller has checked in the store; other topics get the usual access check.
    pub fn subscribe_member(&self, topic: Topic) -> Result<bool, SubscribeError> {
        self.hub.subscribe(self.id, topic, true)
    }

    /// Whether the session is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &Topic) -> bool {
        self.hub.inner.sessions.read().get(&self.id).is_some_and(|entry| entry.topics.contains(topic))
    }

    /// Sets the users this session's user blocked, as loaded from the store, unless a
    /// newer list has already arrived through a [`Directive::Blocks`].
    pub fn load_blocked(&self, blocked: Vec<UserId>) {
        self.hub.load_blocked(self.id, blocked);
    }

    /// `false` when the session was not subscribed.
    pub fn unsubscribe(&self, topic: &Topic) -> bool {
        self.hub.unsubscribe(self.id, topic)
    }

    /// Holds the session's live deliveries back until the returned hold is released
    /// with the history to give first. Holds nest; what was held goes out when the
    /// last one is released.
    pub fn hold(&self) -> Hold {
        self.gate.hold();
        Hold { hub: self.hub.clone(), id: self.id, gate: Some(self.gate.clone()) }
    }

    /// Records client activity, for the idle timeout.
    pub fn touch(&self) {
        self.shared.last_activity_ms.store(self.hub.now_ms(), Ordering::Relaxed);
    }

    /// The topics this session is subscribed to, sorted by name.
    pub fn topics(&self) -> Vec<Topic> {
        let sessions = self.hub.inner.sessions.read();
        let mut topics: Vec<Topic> =
            sessions.get(&self.id).map(|e| e.topics.iter().cloned().collect()).unwrap_or_default();
        topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        topics
    }
}

/// Live deliveries held back for one session (see [`SessionGuard::hold`]). Dropping it
/// releases with no history.
pub struct Hold {
    hub: Hub,
    id: SessionId,
    gate: Option<Arc<Gate>>,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold").field("session", &self.id).finish()
    }
}

impl Hold {
    /// Gives `history` to the client, then what was held (unless another hold is still
    /// on). A queue that cannot take it all closes the session as a slow consumer.
    pub fn release(mut self, history: &[Arc<Delivery>]) -> bool {
        self.finish(history)
    }

    fn finish(&mut self, history: &[Arc<Delivery>]) -> bool {
        let Some(gate) = self.gate.take() else { return true };
        match gate.release(history) {
            Ok(()) => true,
            Err(OfferError::Full) => {
                self.hub.close_session(self.id, CloseReason::SlowConsumer);
                false
            }
            Err(OfferError::Closed) => {
                self.hub.remove(self.id);
                false
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.finish(&[]);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

#[cfg(test)]
mod tests;
