//! The outbox: notification events an application enqueues (in the same transaction as
//! its own change) for Herald's worker to enrich, store in the inbox and publish.
//!
//! An event is claimed by one worker at a time: [`OutboxStore::claim`] counts an attempt
//! and moves the event's next attempt past a lease, in one statement (PostgreSQL skips rows
//! another worker has locked, `FOR UPDATE SKIP LOCKED`). A worker that dies mid-batch
//! leaves its events to be claimed again when the lease runs out; the inbox notification
//! made from an event is keyed by its id, so doing it twice stores it once.
//!
//! One SQL text serves both backends, as in [`crate::chat`]; only the claim differs.

use sqlx::{Column, Row};

use crate::{BoxFuture, StoreError};

/// An event to enqueue (the HTTP API and tests; applications use SQL, docs/outbox.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxEvent {
    pub event_id: String,
    /// `user:{id}`, `channel:{id}` or `global`.
    pub recipient: String,
    pub kind: String,
    /// JSON text.
    pub data: String,
    pub created_at: i64,
}

/// An event in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_id: String,
    pub recipient: String,
    pub kind: String,
    pub data: String,
    pub created_at: i64,
    /// Attempts made, the current one included once claimed.
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub processed_at: Option<i64>,
    pub dead_at: Option<i64>,
    pub last_error: Option<String>,
}

/// The outbox at a glance (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Neither processed nor dead.
    pub pending: i64,
    pub dead: i64,
    /// Creation time of the oldest pending event.
    pub oldest_pending_at: Option<i64>,
}

/// What becomes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Tried again from this time.
    RetryAt(i64),
    /// Parked as dead, until retried by hand.
    Dead,
}

/// Wakes a worker when events are enqueued (PostgreSQL `LISTEN`); a worker polls as well,
/// since notifications sent while the listener reconnects are lost.
pub struct OutboxListener {
    inner: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for OutboxListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxListener").finish_non_exhaustive()
    }
}

impl OutboxListener {
    pub(crate) async fn connect(pool: &sqlx::PgPool) -> Result<Self, StoreError> {
        let mut inner = sqlx::postgres::PgListener::connect_with(pool).await?;
        inner.listen(CHANNEL).await?;
        Ok(Self { inner })
    }

    /// Until the next wake-up. An error is a lost connection: the next call reconnects.
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        self.inner.recv().await?;
        Ok(())
    }
}

/// The `NOTIFY` channel of the outbox trigger (migration 0005).
const CHANNEL: &str = "herald_outbox";

/// One row of an enrichment lookup: column name and text value.
pub type LookupRow = Vec<(String, Option<String>)>;

/// The outbox side of a [`crate::Store`].
pub trait OutboxStore: Send + Sync {
    /// Enqueues an event; `false` when one with the same id was enqueued before.
    fn enqueue(&self, event: NewOutboxEvent) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Claims up to `limit` events due at `now`, oldest first: each gets one more attempt
    /// and is left alone by other workers until `lease_until`.
    fn claim(&self, limit: u32, now: i64, lease_until: i64) -> BoxFuture<'_, Result<Vec<OutboxEvent>, StoreError>>;

    /// Marks events processed.
    fn complete<'a>(&'a self, ids: &'a [i64], at: i64) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records a failed attempt and what becomes of the event.
    fn fail<'a>(&'a self, id: i64, error: &'a str, then: Failure, at: i64) -> BoxFuture<'a, Result<(), StoreError>>;

    /// An event by its id.
    fn event<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<Option<OutboxEvent>, StoreError>>;

    /// Dead events, most recent first.
    fn dead(&self, limit: u32) -> BoxFuture<'_, Result<Vec<OutboxEvent>, StoreError>>;

    /// Gives a dead event a fresh start (attempts from zero, due at `now`); `false` when
    /// there is no dead event with that id.
    fn retry<'a>(&'a self, event_id: &'a str, now: i64) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn stats(&self) -> BoxFuture<'_, Result<OutboxStats, StoreError>>;

    /// Deletes up to `limit` events processed before `before`; returns how many.
    fn purge_processed(&self, before: i64, limit: u32) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Runs an operator's enrichment query (one text parameter, `$1`) and returns its first
    /// row, every column as text (`None` for NULL); `None` when there is no row.
    fn lookup<'a>(&'a self, sql: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<LookupRow>, StoreError>>;

    /// A listener woken by enqueues, where the backend has one (PostgreSQL).
    fn listen(&self) -> BoxFuture<'_, Result<Option<OutboxListener>, StoreError>>;
}

/// Decodes a lookup row: every column as text.
pub(crate) fn lookup_row<R: Row>(row: &R) -> Result<LookupRow, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let value: Option<String> = row.try_get(index).map_err(|error| {
                StoreError::Backend(
                    format!("enrichment column {:?} is not text (cast it in the query): {error}", column.name()).into(),
                )
            })?;
            Ok((column.name().to_owned(), value))
        })
        .collect()
}

macro_rules! outbox_columns {
    () => {
        "id, event_id, recipient, type, data, created_at, CAST(attempts AS BIGINT) AS attempts, next_attempt_at, \
         processed_at, dead_at, last_error"
    };
}
pub(crate) use outbox_columns;

/// Decodes an [`outbox_columns!`] row.
pub(crate) fn decode_event<R: Row>(row: &R) -> Result<OutboxEvent, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxEvent {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        recipient: row.try_get("recipient")?,
        kind: row.try_get("type")?,
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        processed_at: row.try_get("processed_at")?,
        dead_at: row.try_get("dead_at")?,
        last_error: row.try_get("last_error")?,
    })
}

/// Implements [`OutboxStore`] for a store with a `pool`, a `write_turn()` and an
/// `outbox_listener()`; `$lock` is what the claim's row selection ends with
/// (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
macro_rules! outbox_store {
    ($store:ty, $lock:literal) => {
        impl $crate::outbox::OutboxStore for $store {
            fn enqueue(
                &self,
                event: $crate::outbox::NewOutboxEvent,
            ) -> $crate::BoxFuture<'_, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let done = sqlx::query(concat!(
                        "INSERT INTO herald_outbox (event_id, recipient, type, data, created_at, next_attempt_at) ",
                        "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (event_id) DO NOTHING"
                    ))
                    .bind(&event.event_id)
                    .bind(&event.recipient)
                    .bind(&event.kind)
                    .bind(&event.data)
                    .bind(event.created_at)
                    .execute(&mut *turn)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn claim(
                &self,
                limit: u32,
                now: i64,
                lease_until: i64,
            ) -> $crate::BoxFuture<'_, Result<Vec<$crate::outbox::OutboxEvent>, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let rows = sqlx::query(concat!(
                        "UPDATE herald_outbox SET attempts = attempts + 1, next_attempt_at = $3 WHERE id IN (",
                        "SELECT id FROM herald_outbox WHERE processed_at IS NULL AND dead_at IS NULL ",
                        "AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2",
                        $lock,
                        ") RETURNING ",
                        $crate::outbox::outbox_columns!()
                    ))
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(lease_until)
                    .fetch_all(&mut *turn)
                    .await?;
                    let mut events =
                        rows.iter().map($crate::outbox::decode_event).collect::<Result<Vec<_>, sqlx::Error>>()?;
                    events.sort_by_key(|event| event.id);
                    Ok(events)
                })
            }

            fn complete<'a>(&'a self, ids: &'a [i64], at: i64) -> $crate::BoxFuture<'a, Result<(), $crate::StoreError>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    let mut turn = self.write_turn().await?;
                    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                    // Ids are integers formatted here, never input text.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE herald_outbox SET processed_at = $1, last_error = NULL WHERE id IN ({})",
                        list.join(",")
                    )))
                    .bind(at)
                    .execute(&mut *turn)
                    .await?;
                    Ok(())
                })
            }

            fn fail<'a>(
                &'a self,
                id: i64,
                error: &'a str,
                then: $crate::outbox::Failure,
                at: i64,
            ) -> $crate::BoxFuture<'a, Result<(), $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let (retry_at, dead_at) = match then {
                        $crate::outbox::Failure::RetryAt(when) => (Some(when), None),
                        $crate::outbox::Failure::Dead => (None, Some(at)),
                    };
                    sqlx::query(concat!(
                        "UPDATE herald_outbox SET last_error = $2, ",
                        "next_attempt_at = COALESCE(CAST($3 AS BIGINT), next_attempt_at), dead_at = CAST($4 AS BIGINT) ",
                        "WHERE id = $1 AND processed_at IS NULL"
                    ))
                    .bind(id)
                    .bind(error)
                    .bind(retry_at)
                    .bind(dead_at)
                    .execute(&mut *turn)
                    .await?;
                    Ok(())
                })
            }

            fn event<'a>(
                &'a self,
                event_id: &'a str,
            ) -> $crate::BoxFuture<'a, Result<Option<$crate::outbox::OutboxEvent>, $crate::StoreError>> {
                Box::pin(async move {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        $crate::outbox::outbox_columns!(),
                        " FROM herald_outbox WHERE event_id = $1"
                    ))
                    .bind(event_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.as_ref().map($crate::outbox::decode_event).transpose()?)
                })
            }

            fn dead(
                &self,
                limit: u32,
            ) -> $crate::BoxFuture<'_, Result<Vec<$crate::outbox::OutboxEvent>, $crate::StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        $crate::outbox::outbox_columns!(),
                        " FROM herald_outbox WHERE dead_at IS NOT NULL ORDER BY dead_at DESC, id DESC LIMIT $1"
                    ))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.iter().map($crate::outbox::decode_event).collect::<Result<Vec<_>, sqlx::Error>>()?)
                })
            }

            fn retry<'a>(&'a self, event_id: &'a str, now: i64) -> $crate::BoxFuture<'a, Result<bool, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let done = sqlx::query(concat!(
                        "UPDATE herald_outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $2 ",
                        "WHERE event_id = $1 AND dead_at IS NOT NULL"
                    ))
                    .bind(event_id)
                    .bind(now)
                    .execute(&mut *turn)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn stats(&self) -> $crate::BoxFuture<'_, Result<$crate::outbox::OutboxStats, $crate::StoreError>> {
                Box::pin(async move {
                    let (pending, dead, oldest_pending_at): (i64, i64, Option<i64>) = sqlx::query_as(concat!(
                        "SELECT (SELECT count(*) FROM herald_outbox WHERE processed_at IS NULL AND dead_at IS NULL), ",
                        "(SELECT count(*) FROM herald_outbox WHERE dead_at IS NOT NULL), ",
                        "(SELECT min(created_at) FROM herald_outbox WHERE processed_at IS NULL AND dead_at IS NULL)"
                    ))
                    .fetch_one(&self.pool)
                    .await?;
                    Ok($crate::outbox::OutboxStats { pending, dead, oldest_pending_at })
                })
            }

            fn purge_processed(&self, before: i64, limit: u32) -> $crate::BoxFuture<'_, Result<u64, $crate::StoreError>> {
                Box::pin(async move {
                    let mut turn = self.write_turn().await?;
                    let done = sqlx::query(concat!(
                        "DELETE FROM herald_outbox WHERE id IN (SELECT id FROM herald_outbox ",
                        "WHERE processed_at IS NOT NULL AND processed_at < $1 LIMIT $2)"
                    ))
                    .bind(before)
                    .bind(i64::from(limit))
                    .execute(&mut *turn)
                    .await?;
                    Ok(done.rows_affected())
                })
            }

            fn lookup<'a>(
                &'a self,
                sql: &'a str,
                id: &'a str,
            ) -> $crate::BoxFuture<'a, Result<Option<$crate::outbox::LookupRow>, $crate::StoreError>> {
                Box::pin(async move {
                    // The operator's configured statement, with the id bound as a parameter.
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
                    row.as_ref().map($crate::outbox::lookup_row).transpose()
                })
            }

            fn listen(
                &self,
            ) -> $crate::BoxFuture<'_, Result<Option<$crate::outbox::OutboxListener>, $crate::StoreError>> {
                Box::pin(self.outbox_listener())
            }
        }
    };
}
pub(crate) use outbox_store;
