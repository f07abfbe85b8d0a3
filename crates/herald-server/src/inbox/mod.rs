//! The notification inbox: stores notifications, pushes them to every device of their
//! user, and keeps each device's unread count equal to the store's.
//!
//! Every change goes through one writer task per node, in arrival order: concurrent
//! creations are written as one transaction (a batch, so a database commit is shared by
//! many requests), and after each commit the writer pushes what changed in commit order:
//! `notification:new` for each new notification, then `notification:unread-count` with the
//! count read after the commit. Because pushes leave in commit order, the last count a
//! device receives is the store's count. Reads (lists, counts) go straight to the store.
//!
//! Offline delivery: a session registers through [`Inbox::register`], which notes the
//! highest notification id already pushed; [`Inbox::catch_up`] then gives the session the
//! unread notifications up to that id that its device has not had, oldest first, and
//! everything after it arrives live. See docs/inbox.md.

pub mod api;
pub mod json;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::metrics as m;
use herald_core::{
    Broker, Delivery, Event, Hold, Hub, Outlet, Principal, Publication, SessionGuard, SessionId, Topic, UserId,
};
use herald_store::{
    Created, ListQuery, NewNotification, Notification, Pending, Retention, Selection, Store, StoreError,
};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use json::notification_json;

/// Canonical event names (dialects rename them, see `wire`).
pub const NEW_EVENT: &str = "notification:new";
pub const COUNT_EVENT: &str = "notification:unread-count";

/// Most notifications written in one transaction.
const MAX_BATCH: usize = 512;
/// Changes waiting for the writer before callers wait for room.
const QUEUE: usize = 4096;
/// Most missed notifications pushed to a connecting device; the rest stay in the inbox.
pub const MAX_CATCH_UP: u32 = 500;

/// How the inbox is run.
#[derive(Debug, Clone)]
pub struct InboxSettings {
    /// Largest notification payload accepted, bytes of JSON.
    pub max_payload: usize,
    /// Notifications older than this are pruned.
    pub max_age: Option<Duration>,
    /// A user keeps at most this many notifications.
    pub max_per_user: Option<u32>,
    /// How often pruning runs.
    pub prune_interval: Duration,
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            max_payload: 16 * 1024,
            max_age: Some(Duration::from_secs(90 * 24 * 3600)),
            max_per_user: Some(1000),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// A change of read state.
#[derive(Debug, Clone)]
pub enum Change {
    Read(Selection),
    Seen(Selection),
    Delete(Selection),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub changed: u64,
    pub unread: u64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Create {
        batch: Vec<NewNotification>,
        reply: Reply<Vec<Created>>,
    },
    Change {
        user: UserId,
        change: Change,
        reply: Reply<Changed>,
    },
    /// Records deliveries to a device and moves its position to `through`; with
    /// `if_reached`, only when its position had already reached that id (a session ending:
    /// a catch-up cut short leaves a gap the position must not jump).
    Delivered {
        user: UserId,
        ids: Vec<i64>,
        device: String,
        through: i64,
        if_reached: Option<i64>,
        reply: Option<Reply<()>>,
    },
    Prune,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The inbox service; cheap to share.
pub struct Inbox {
    store: Arc<dyn Store>,
    commands: mpsc::Sender<Command>,
    /// The highest notification id pushed live. Held while pushing and while a session
    /// registers, so a session gets each notification either live or in its catch-up,
    /// never both and never neither.
    published: Mutex<i64>,
    pub settings: InboxSettings,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("store", &self.store.kind()).finish_non_exhaustive()
    }
}

/// The writer's side of the inbox.
struct Writer {
    inbox: Arc<Inbox>,
    hub: Hub,
    broker: Arc<dyn Broker>,
    commands: mpsc::Receiver<Command>,
    /// Unread counts of recently changed users. Exact because the writer makes every
    /// change (invariant 8): a creation adds its new notifications, any other change reads
    /// the count afresh. Cleared when it holds [`MAX_CACHED_COUNTS`] users.
    counts: HashMap<String, u64>,
}

/// Users whose unread count the writer keeps in memory.
const MAX_CACHED_COUNTS: usize = 100_000;

impl Inbox {
    /// Starts the inbox over `store`; the writer and the pruner run until `shutdown`.
    pub async fn start(
        store: Arc<dyn Store>,
        settings: InboxSettings,
        hub: Hub,
        broker: Arc<dyn Broker>,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Self>, StoreError> {
        let published = store.max_id().await?;
        let (commands, receiver) = mpsc::channel(QUEUE);
        let inbox = Arc::new(Self { store, commands, published: Mutex::new(published), settings });
        let writer = Writer { inbox: inbox.clone(), hub, broker, commands: receiver, counts: HashMap::new() };
        tasks.spawn(writer.run(shutdown.clone()));
        tasks.spawn(prune_loop(Arc::downgrade(&inbox), shutdown));
        Ok(inbox)
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The store, shared (for tasks that outlive a borrow).
    pub fn store_handle(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn submit<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stores the notifications (one transaction) and pushes the new ones.
    pub async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<Created>, StoreError> {
        self.submit(|reply| Command::Create { batch, reply }).await
    }

    /// Pushes an existing notification to its user's devices again (a redone outbox event
    /// whose first attempt stored it but may have died before pushing it).
    pub async fn push_again(&self, notification: &Notification, broker: &dyn Broker) {
        let Ok(user) = UserId::parse(&notification.user_id) else { return };
        let publication = Publication::new(vec![Topic::user(&user)], new_event(notification));
        if let Err(error) = broker.publish(publication).await {
            tracing::warn!(%error, id = notification.id, "notification not pushed again");
        }
    }

    /// Applies a change of read state for `user` and pushes the new unread count.
    pub async fn change(&self, user: &UserId, change: Change) -> Result<Changed, StoreError> {
        self.submit(|reply| Command::Change { user: user.clone(), change, reply }).await
    }

    pub async fn unread_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let users = [user.as_str().to_owned()];
        Ok(self.store.unread_counts(&users).await?.first().map(|(_, count)| *count).unwrap_or(0))
    }

    /// Registers a session with the hub, noting how far live pushes have gone; pass the
    /// result to [`Inbox::catch_up`].
    pub fn register(
        self: &Arc<Self>,
        hub: &Hub,
        principal: Principal,
        transport: &'static str,
        outlet: Arc<dyn Outlet>,
        held: bool,
    ) -> Joined {
        let user = principal.user_id.clone();
        let device = device_of(&principal);
        let (session, hold, through) = {
            let published = self.published.lock();
            let (session, hold) = if held {
                let (session, hold) = hub.register_held(principal, transport, outlet);
                (session, Some(hold))
            } else {
                (hub.register(principal, transport, outlet), None)
            };
            (session, hold, *published)
        };
        let presence = Presence { inbox: Arc::downgrade(self), user, device, registered_through: through };
        Joined { session, hold, through, presence }
    }

    /// The highest notification id pushed live so far.
    pub fn published_through(&self) -> i64 {
        *self.published.lock()
    }

    /// Unread notifications the session's device has not had (up to the registration's
    /// mark, at most `limit`), marked delivered for that device. With `after` (SSE `Last-Event-ID`), those
    /// above that id instead of the device's position.
    pub async fn missed(
        &self,
        principal: &Principal,
        through: i64,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let user = principal.user_id.as_str();
        let device = device_of(principal);
        let which = match after {
            Some(after) => Pending::After(after),
            None => match self.store.device_cursor(user, &device).await? {
                Some(position) => Pending::After(position),
                None => Pending::Offline,
            },
        };
        let limit = limit.clamp(1, MAX_CATCH_UP);
        let missed = self.store.pending(user, which, through, limit).await?;
        if missed.is_empty() {
            return Ok(missed);
        }
        let ids: Vec<i64> = missed.iter().map(|n| n.id).collect();
        // When the limit cut the list, the device's position stops at the last one given,
        // so the rest come with its next connection or `notification:get-pending`.
        let last_given = ids.last().copied().unwrap_or(through);
        let position = if missed.len() == limit as usize || through == EVERYTHING { last_given } else { through };
        // Recorded before anything is pushed, so that the device's next connection, however
        // soon, starts after these.
        let user_id = principal.user_id.clone();
        self.submit(|reply| Command::Delivered {
            user: user_id,
            ids,
            device,
            through: position,
            if_reached: None,
            reply: Some(reply),
        })
        .await?;
        Ok(missed)
    }

    /// Pushes to one session what it missed, then (if it missed anything) its unread count.
    pub async fn catch_up(
        &self,
        hub: &Hub,
        session: SessionId,
        principal: &Principal,
        through: i64,
        after: Option<i64>,
        limit: u32,
    ) {
        let missed = match self.missed(principal, through, after, limit).await {
            Ok(missed) => missed,
            Err(error) => {
                tracing::warn!(%error, user = %principal.user_id, "catch-up failed");
                return;
            }
        };
        if missed.is_empty() {
            return;
        }
        for notification in &missed {
            if !hub.send_to(session, Arc::new(Delivery::new(new_event(notification)))) {
                return;
            }
        }
        match self.unread_count(&principal.user_id).await {
            Ok(count) => {
                hub.send_to(session, Arc::new(Delivery::new(count_event(count))));
            }
            Err(error) => tracing::warn!(%error, "unread count for catch-up failed"),
        }
    }
}

/// A catch-up mark meaning "everything stored": with several nodes, pushes come from
/// every node's writer, so no node's own mark bounds them; the device's position then
/// moves only to the last notification given.
pub const EVERYTHING: i64 = i64::MAX;

/// A session registered through the inbox.
pub struct Joined {
    pub session: SessionGuard,
    /// When registered held (a recovering client): release it with the history.
    pub hold: Option<Hold>,
    /// The highest notification id pushed before the session existed.
    pub through: i64,
    /// Keep it as long as the session.
    pub presence: Presence,
}

/// The device a session speaks for: the token's `deviceId`/`device` claim; tokens without
/// one share the device `""` of their user.
fn device_of(principal: &Principal) -> String {
    principal.device.clone().unwrap_or_default()
}

/// Held by a transport for as long as a device's session lives. When it is dropped, the
/// device's position moves to what was pushed live meanwhile, so its next connection does
/// not get those notifications again.
pub struct Presence {
    inbox: std::sync::Weak<Inbox>,
    user: UserId,
    device: String,
    /// The inbox mark when the session registered.
    registered_through: i64,
}

impl Drop for Presence {
    fn drop(&mut self) {
        let Some(inbox) = self.inbox.upgrade() else { return };
        let through = inbox.published_through();
        if through <= self.registered_through {
            // Nothing was pushed live to anyone while the session lasted.
            return;
        }
        let command = Command::Delivered {
            user: self.user.clone(),
            ids: Vec::new(),
            device: std::mem::take(&mut self.device),
            through,
            if_reached: Some(self.registered_through),
            reply: None,
        };
        if inbox.commands.try_send(command).is_err() {
            tracing::debug!(user = %self.user, "inbox busy or stopped: device position not advanced");
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the inbox is shutting down".into())
}

/// `notification:new` for one notification.
pub fn new_event(notification: &Notification) -> Event {
    // The text is built by `notification_json` around a payload validated at creation.
    let raw =
        RawValue::from_string(notification_json(notification, true)).unwrap_or_else(|_| RawValue::NULL.to_owned());
    Event::internal(NEW_EVENT, raw).at_position(notification.id.max(0) as u64)
}

/// `notification:unread-count {count}`.
pub fn count_event(count: u64) -> Event {
    let raw = RawValue::from_string(format!(r#"{{"count":{count}}}"#)).unwrap_or_else(|_| RawValue::NULL.to_owned());
    Event::internal(COUNT_EVENT, raw)
}

impl Writer {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut next: Option<Command> = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                None => tokio::select! {
                    biased;
                    command = self.commands.recv() => match command {
                        Some(command) => command,
                        None => return,
                    },
                    _ = shutdown.cancelled() => return,
                },
            };
            match command {
                Command::Create { batch, reply } => {
                    let mut requests = vec![(batch, reply)];
                    let mut size: usize = requests[0].0.len();
                    while size < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(Command::Create { batch, reply }) => {
                                size += batch.len();
                                requests.push((batch, reply));
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.create(requests).await;
                }
                Command::Change { user, change, reply } => {
                    let result = self.change(&user, change).await;
                    if reply.send(result).is_err() {
                        tracing::debug!("change requester went away");
                    }
                }
                Command::Delivered { user, ids, device, through, if_reached, reply } => {
                    let at = now_ms();
                    let store = self.inbox.store.as_ref();
                    let result = async {
                        store.mark_delivered(user.as_str(), &ids, at).await?;
                        if let Some(mark) = if_reached {
                            // A session ended. Its catch-up left the position at the mark
                            // (or never needed to write one); a position below the mark is a
                            // catch-up cut short, whose gap must not be jumped. Only a user
                            // who was given something live needs a write.
                            let position = store.device_cursor(user.as_str(), &device).await?;
                            if position.is_some_and(|position| position < mark) {
                                return Ok(());
                            }
                            let newest =
                                store.list(user.as_str(), ListQuery { before: None, limit: 1, unread_only: false });
                            if newest.await?.items.first().is_none_or(|n| n.id <= mark) {
                                return Ok(());
                            }
                        }
                        store.advance_device(user.as_str(), &device, through, at).await?;
                        Ok::<_, StoreError>(())
                    };
                    let result = result.await;
                    if let Err(error) = &result {
                        tracing::warn!(%error, "recording delivery failed");
                    }
                    if let Some(reply) = reply
                        && reply.send(result).is_err()
                    {
                        tracing::debug!("delivery requester went away");
                    }
                }
                Command::Prune => self.prune().await,
            }
        }
    }

    async fn create(&mut self, requests: Vec<(Vec<NewNotification>, Reply<Vec<Created>>)>) {
        let sizes: Vec<usize> = requests.iter().map(|(batch, _)| batch.len()).collect();
        let mut replies = Vec::with_capacity(requests.len());
        let mut all = Vec::with_capacity(sizes.iter().sum());
        let at = now_ms();
        for (batch, reply) in requests {
            all.extend(batch);
            replies.push(reply);
        }
        // A user connected here gets the notification live right after the commit; record
        // that in the same write rather than in another one.
        for new in &mut all {
            if UserId::parse(&new.user_id).is_ok_and(|user| self.hub.is_online(&user)) {
                new.delivered_at = Some(at);
            }
        }
        let started = std::time::Instant::now();
        let result = self.inbox.store.create(all).await;
        metrics::histogram!(m::INBOX_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
        let created = match result {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(%error, "storing notifications failed");
                let message = error.to_string();
                for reply in replies {
                    let _answered = reply.send(Err(StoreError::Backend(message.clone().into())));
                }
                return;
            }
        };
        metrics::counter!(m::INBOX_CREATED).increment(created.iter().filter(|c| c.new).count() as u64);
        let pushing = std::time::Instant::now();
        self.push_new(&created).await;
        metrics::histogram!(m::INBOX_PUSH_SECONDS).record(pushing.elapsed().as_secs_f64());
        let mut rest = created.into_iter();
        for (reply, size) in replies.into_iter().zip(sizes) {
            let part: Vec<Created> = rest.by_ref().take(size).collect();
            if reply.send(Ok(part)).is_err() {
                tracing::debug!("create requester went away");
            }
        }
    }

    /// Pushes each new notification to its user, then each user's count.
    async fn push_new(&mut self, created: &[Created]) {
        let mut added: Vec<(String, u64)> = Vec::new();
        // Started in commit order and awaited together: with Redis each push is a round
        // trip, and one at a time they would bound the inbox at one push per round trip.
        // The multiplexed connection sends them in the order they were started.
        let mut pushes = Vec::new();
        for created in created.iter().filter(|c| c.new) {
            let notification = &created.notification;
            let Ok(user) = UserId::parse(&notification.user_id) else { continue };
            let publication = Publication::new(vec![Topic::user(&user)], new_event(notification));
            pushes.push(self.publish_at(publication, notification.id));
            match added.iter_mut().find(|(name, _)| name == &notification.user_id) {
                Some((_, count)) => *count += 1,
                None => added.push((notification.user_id.clone(), 1)),
            }
        }
        futures_util::future::join_all(pushes).await;
        // Known counts grow by what was added; unknown ones are read (after the commit, so
        // they include it).
        if self.counts.len() + added.len() > MAX_CACHED_COUNTS {
            self.counts.clear();
        }
        let unknown: Vec<String> =
            added.iter().filter(|(user, _)| !self.counts.contains_key(user)).map(|(user, _)| user.clone()).collect();
        for (user, count) in &added {
            if let Some(known) = self.counts.get_mut(user) {
                *known += count;
            }
        }
        if !unknown.is_empty() && !self.read_counts(&unknown).await {
            return;
        }
        let counts: Vec<(String, u64)> =
            added.iter().filter_map(|(user, _)| self.counts.get(user).map(|count| (user.clone(), *count))).collect();
        self.publish_counts(counts).await;
    }

    /// Publishes with the inbox's push mark held, so registering sessions see it either
    /// before or after (see [`Inbox::register`]); the returned future reports.
    fn publish_at(&self, publication: Publication, id: i64) -> impl std::future::Future<Output = ()> + '_ {
        let fallback = publication.clone();
        let sent = {
            let mut published = self.inbox.published.lock();
            // The memory broker delivers inside `publish`; the future only reports.
            let sent = self.broker.publish(publication);
            *published = (*published).max(id);
            sent
        };
        async move {
            if let Err(error) = sent.await {
                self.deliver_locally(fallback, &error);
            }
        }
    }

    /// The broker could not take a push (Redis away): this node's sessions still get it,
    /// without a stream position; other nodes' devices get it from the store when they
    /// next connect.
    fn deliver_locally(&self, publication: Publication, error: &herald_core::BrokerError) {
        tracing::warn!(%error, "broker unavailable: notification push delivered on this node only");
        self.hub.dispatch(&publication.topics, Arc::new(Delivery::new(publication.event)));
    }

    /// Reads the users' counts from the store into the cache; false if the store failed.
    async fn read_counts(&mut self, users: &[String]) -> bool {
        match self.inbox.store.unread_counts(users).await {
            Ok(counts) => {
                self.counts.extend(counts);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "reading unread counts failed");
                false
            }
        }
    }

    /// Reads the users' counts afresh and pushes them.
    async fn push_counts(&mut self, users: &[String]) {
        if self.counts.len() + users.len() > MAX_CACHED_COUNTS {
            self.counts.clear();
        }
        if users.is_empty() || !self.read_counts(users).await {
            return;
        }
        let counts: Vec<(String, u64)> =
            users.iter().filter_map(|user| self.counts.get(user).map(|count| (user.clone(), *count))).collect();
        self.publish_counts(counts).await;
    }

    async fn publish_counts(&self, counts: Vec<(String, u64)>) {
        let pushes = counts.into_iter().filter_map(|(user, count)| {
            let user = UserId::parse(&user).ok()?;
            let publication = Publication::new(vec![Topic::user(&user)], count_event(count));
            let sent = self.broker.publish(publication.clone());
            Some(async move {
                if let Err(error) = sent.await {
                    self.deliver_locally(publication, &error);
                }
            })
        });
        futures_util::future::join_all(pushes).await;
    }

    async fn change(&mut self, user: &UserId, change: Change) -> Result<Changed, StoreError> {
        let store = self.inbox.store.as_ref();
        let at = now_ms();
        let changed = match change {
            Change::Read(which) => store.mark_read(user.as_str(), which, at).await?,
            Change::Seen(which) => store.mark_seen(user.as_str(), which, at).await?,
            Change::Delete(which) => store.delete(user.as_str(), which).await?,
        };
        let users = [user.as_str().to_owned()];
        // Whatever happens next, a cached count of this user may be stale now.
        self.counts.remove(user.as_str());
        let unread = store.unread_counts(&users).await?.first().map(|(_, count)| *count).unwrap_or(0);
        if self.counts.len() < MAX_CACHED_COUNTS {
            self.counts.insert(user.as_str().to_owned(), unread);
        }
        self.publish_counts(vec![(user.as_str().to_owned(), unread)]).await;
        Ok(Changed { changed, unread })
    }

    async fn prune(&mut self) {
        let settings = &self.inbox.settings;
        let retention = Retention {
            created_before: settings.max_age.map(|age| now_ms() - age.as_millis() as i64),
            max_per_user: settings.max_per_user,
            batch: 1000,
        };
        match self.inbox.store.prune(retention).await {
            Ok(users) if !users.is_empty() => {
                metrics::counter!(m::INBOX_PRUNE_RUNS).increment(1);
                self.push_counts(&users).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the inbox failed"),
        }
    }
}

/// Asks the writer to prune every `prune_interval` (in the writer, so pruning is ordered
/// with every other change and pushes the counts it changes).
async fn prune_loop(inbox: std::sync::Weak<Inbox>, shutdown: CancellationToken) {
    let Some(interval) = inbox.upgrade().map(|inbox| inbox.settings.prune_interval) else { return };
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                let Some(inbox) = inbox.upgrade() else { return };
                // A full queue skips this round: the writer is busy, pruning can wait.
                if inbox.commands.try_send(Command::Prune).is_err() {
                    tracing::debug!("inbox busy: pruning skipped this round");
                }
            }
        }
    }
}
