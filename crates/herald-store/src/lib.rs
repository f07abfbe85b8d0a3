//! Herald's durable state, behind one [`Store`] trait with two implementations:
//! [`SqliteStore`] (the embedded single-node default, a file in WAL mode) and
//! [`PostgresStore`] (`DATABASE_URL`). Both pass the same conformance suite
//! (`tests/it`), and each embeds its own migrations (`migrations/sqlite`,
//! `migrations/postgres`): sqlx's `Any` driver carries too few types to share one dialect.
//!
//! Invariants:
//! - The store knows nothing of sockets, topics or events: it stores and answers. Pushing
//!   what changed to devices is the caller's job (the server's inbox).
//! - Every operation that names notifications by id is scoped to one user: an id of
//!   another user's notification behaves exactly like an id that does not exist
//!   ([`StoreError::NotFound`]), so ids leak nothing.
//! - An operation on several ids is all or nothing.
//! - Times are milliseconds since the Unix epoch, chosen by the caller, so that both
//!   backends store the same values.

pub mod chat;
pub mod outbox;
mod postgres;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub use chat::{
    Call, CallStep, ChatError, ChatStore, Member, Message, NewMessage, Posted, Reaction, Receipt, ReceiptChange,
    ReceiptKind, StoredPresence,
};
pub use outbox::{Failure, NewOutboxEvent, OutboxEvent, OutboxListener, OutboxStats, OutboxStore};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A boxed future, so the store trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// One of the named notifications does not exist for this user; nothing was changed.
    #[error("notification not found")]
    NotFound,
    /// The database failed or could not be reached.
    #[error("store unavailable: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

/// How urgent a notification is (seed 003's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

/// A notification to be created.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub user_id: String,
    /// Its type, e.g. `TIP`, `FOLLOW`, `mention`; validated by the caller.
    pub kind: String,
    /// Free JSON, as text, stored verbatim.
    pub payload: String,
    pub priority: Priority,
    pub sound: Option<String>,
    pub badge: Option<i64>,
    /// Makes creation idempotent: a second notification with the same key for the same
    /// user is not created; the first is returned instead.
    pub dedupe_key: Option<String>,
    pub created_at: i64,
    /// Set when the notification is pushed live as it is created (its user has a
    /// connection): it is then delivered at creation, and not "missed while offline".
    pub delivered_at: Option<i64>,
}

impl NewNotification {
    /// The notification as stored under `id`, before anyone has seen or read it.
    fn stored_as(self, id: i64) -> Notification {
        Notification {
            id,
            user_id: self.user_id,
            kind: self.kind,
            payload: self.payload,
            priority: self.priority,
            sound: self.sound,
            badge: self.badge,
            dedupe_key: self.dedupe_key,
            created_at: self.created_at,
            delivered_at: self.delivered_at,
            seen_at: None,
            read_at: None,
        }
    }
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub user_id: String,
    pub kind: String,
    pub payload: String,
    pub priority: Priority,
    pub sound: Option<String>,
    pub badge: Option<i64>,
    pub dedupe_key: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub seen_at: Option<i64>,
    pub read_at: Option<i64>,
}

/// The result of creating one notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub notification: Notification,
    /// False when a notification with the same dedupe key already existed (and is returned).
    pub new: bool,
}

/// Which of a user's notifications an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids; every one must be the user's, or nothing is changed.
    Ids(Vec<i64>),
    /// All of the user's notifications.
    All,
}

/// One page of a user's notifications, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only notifications older than this id (the previous page's `next_cursor`).
    pub before: Option<i64>,
    pub limit: u32,
    pub unread_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Notification>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// Which unread notifications a connecting device has not been given, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// For a device never seen before: unread, created while the user had no connection
    /// (not pushed live).
    Offline,
    /// Unread, with an id above this one (what the device was last given).
    After(i64),
}

/// How long notifications are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Notifications created before this time are deleted.
    pub created_before: Option<i64>,
    /// A user keeps at most this many notifications, the newest.
    pub max_per_user: Option<u32>,
    /// At most this many rows are deleted per call.
    pub batch: u32,
}

/// Durable state: the notification inbox and per-device delivery positions (and, through
/// [`Store::chat`], conversations).
///
/// Mutations are expected from one writer per node (the server's inbox task), which is
/// what keeps ids increasing in commit order; reads may come from anywhere.
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for health output and logs.
    fn kind(&self) -> &'static str;

    /// Checks that the database answers (for `/ready`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The same database's conversations (rooms, groups, chats).
    fn chat(&self) -> &dyn ChatStore;

    /// The same database's outbox of notification events.
    fn outbox(&self) -> &dyn OutboxStore;

    /// Creates the notifications in one transaction, in order; ids increase in that order.
    fn create(&self, batch: Vec<NewNotification>) -> BoxFuture<'_, Result<Vec<Created>, StoreError>>;

    fn get<'a>(&'a self, user: &'a str, id: i64) -> BoxFuture<'a, Result<Notification, StoreError>>;

    fn list<'a>(&'a self, user: &'a str, query: ListQuery) -> BoxFuture<'a, Result<Page, StoreError>>;

    /// The number of unread notifications of each user named (users with none included).
    fn unread_counts<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>>;

    /// Marks notifications read (and seen) at `at`; returns how many changed state.
    fn mark_read<'a>(&'a self, user: &'a str, which: Selection, at: i64) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Marks notifications seen at `at`; returns how many changed state.
    fn mark_seen<'a>(&'a self, user: &'a str, which: Selection, at: i64) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes notifications; returns how many were deleted.
    fn delete<'a>(&'a self, user: &'a str, which: Selection) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Unread notifications a device has not been given, oldest first, at most `limit`,
    /// none above `through`.
    fn pending<'a>(
        &'a self,
        user: &'a str,
        which: Pending,
        through: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Notification>, StoreError>>;

    /// Records that the notifications reached a device at `at` (first delivery only).
    fn mark_delivered<'a>(&'a self, user: &'a str, ids: &'a [i64], at: i64) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The highest id a device has been given, if the device is known.
    fn device_cursor<'a>(&'a self, user: &'a str, device: &'a str) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;

    /// Moves a device's position forward to `through` (never backward).
    fn advance_device<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        through: i64,
        at: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The highest notification id in the store (0 when empty).
    fn max_id(&self) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Deletes what the retention policy no longer keeps, at most `batch` rows; returns
    /// the users whose notifications were deleted (their unread counts may have changed).
    fn prune(&self, retention: Retention) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// Ids named once each, in the order first named.
fn distinct(ids: &[i64]) -> Vec<i64> {
    let mut seen = std::collections::HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The largest page a list query returns, whatever it asks for.
pub const MAX_PAGE: u32 = 200;

fn page_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_PAGE)
}

fn priority_of(text: &str) -> Priority {
    // Written only by this crate; an unknown value (a hand-edited row) reads as normal.
    Priority::parse(text).unwrap_or_default()
}

fn into_page(mut items: Vec<Notification>, limit: u32) -> Page {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|n| n.id)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// The columns every query that returns notifications selects, in [`decode`]'s order.
macro_rules! columns {
    () => {
        "id, user_id, type, payload, priority, sound, badge, dedupe_key, created_at, delivered_at, seen_at, read_at"
    };
}
pub(crate) use columns;

/// Reads one row selected with [`columns!`], from either backend.
fn decode<R>(row: &R) -> Result<Notification, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(Notification {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        kind: row.try_get(2)?,
        payload: row.try_get(3)?,
        priority: priority_of(&row.try_get::<String, _>(4)?),
        sound: row.try_get(5)?,
        badge: row.try_get(6)?,
        dedupe_key: row.try_get(7)?,
        created_at: row.try_get(8)?,
        delivered_at: row.try_get(9)?,
        seen_at: row.try_get(10)?,
        read_at: row.try_get(11)?,
    })
}

/// `(user_id, count)` rows as one count per user named, in the order named (0 for users
/// without a row), from either backend.
fn counts_in_order<R>(users: &[String], rows: &[R]) -> Result<Vec<(String, u64)>, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        found.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    Ok(users.iter().map(|user| (user.clone(), found.get(user).copied().unwrap_or(0) as u64)).collect())
}
