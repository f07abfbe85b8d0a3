//! The production store: PostgreSQL (`DATABASE_URL`).
//!
//! A batch of notifications is one `INSERT … SELECT FROM UNNEST(…)` with ids drawn from
//! the table's sequence first, so that each input keeps its id whatever order the
//! database inserts rows in. Sets of ids travel as one `bigint[]` (`= ANY($n)`).

use std::str::FromStr;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};

use crate::{
    BoxFuture, Created, ListQuery, NewNotification, Notification, Page, Pending, Retention, Selection, Store,
    StoreError, columns, counts_in_order, decode, distinct, into_page, page_limit,
};

const POOL_SIZE: u32 = 8;

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "inbox".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0001_inbox.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "chat".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0002_chat.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "presence".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0003_presence.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            4,
            "calls".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0004_calls.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            5,
            "outbox".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0005_outbox.sql").into_sql_str(),
            false,
        ),
    ])
}

crate::chat::chat_store!(PostgresStore);
crate::outbox::outbox_store!(PostgresStore, " FOR UPDATE SKIP LOCKED");

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// A schema name Herald may put into `CREATE SCHEMA` and `search_path`.
fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PostgresStore {
    /// A connection to write on. PostgreSQL lets writers wait for each other's row locks
    /// itself, so any pooled connection will do.
    async fn write_turn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
        self.pool.acquire().await
    }

    /// Posts a message in a statement of its own: PostgreSQL takes each on any pooled
    /// connection, so concurrent posts already run side by side.
    async fn post(&self, new: crate::chat::NewMessage) -> Result<crate::chat::Posted, crate::chat::ChatError> {
        self.post_single(new).await
    }

    /// `LISTEN herald_outbox` on a connection of its own.
    async fn outbox_listener(&self) -> Result<Option<crate::outbox::OutboxListener>, StoreError> {
        crate::outbox::OutboxListener::connect(&self.pool).await.map(Some)
    }

    /// Connects to `url` and migrates. With `schema`, Herald's tables live in that schema
    /// (created if missing), so several Herald deployments or test runs can share one
    /// database without touching each other's tables.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)?;
        if schema.is_some_and(|schema| !valid_schema(schema)) {
            return Err(StoreError::Backend(
                format!("invalid schema name {schema:?}: lower-case letters, digits and _ only").into(),
            ));
        }
        // One plain connection first: an unreachable server fails here at once, where the
        // pool would keep retrying until its acquire timeout.
        let mut connection = sqlx::PgConnection::connect_with(&options).await?;
        if let Some(schema) = schema {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
                .execute(&mut connection)
                .await?;
            options = options.options([("search_path", schema)]);
        }
        connection.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    async fn apply(
        &self,
        user: &str,
        which: Selection,
        leading: Vec<i64>,
        all: &'static str,
        some: &'static str,
    ) -> Result<u64, StoreError> {
        match which {
            Selection::All => {
                let mut query = sqlx::query(all);
                for value in &leading {
                    query = query.bind(*value);
                }
                Ok(query.bind(user).execute(&self.pool).await?.rows_affected())
            }
            Selection::Ids(ids) => {
                let ids = distinct(&ids);
                if ids.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.pool.begin().await?;
                let owned: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM herald_notifications WHERE user_id = $1 AND id = ANY($2)")
                        .bind(user)
                        .bind(&ids)
                        .fetch_one(&mut *tx)
                        .await?;
                if owned as usize != ids.len() {
                    return Err(StoreError::NotFound);
                }
                let mut query = sqlx::query(some);
                for value in &leading {
                    query = query.bind(*value);
                }
                let changed = query.bind(user).bind(&ids).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok(changed)
            }
        }
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn chat(&self) -> &dyn crate::ChatStore {
        self
    }

    fn outbox(&self) -> &dyn crate::OutboxStore {
        self
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn create(&self, batch: Vec<NewNotification>) -> BoxFuture<'_, Result<Vec<Created>, StoreError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let mut tx = self.pool.begin().await?;
            let mut ids: Vec<i64> = sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('herald_notifications', 'id')) FROM generate_series(1, $1)",
            )
            .bind(batch.len() as i64)
            .fetch_all(&mut *tx)
            .await?;
            ids.sort_unstable();
            let inserted: Vec<i64> = sqlx::query_scalar(concat!(
                "INSERT INTO herald_notifications (id, user_id, type, payload, priority, sound, badge, dedupe_key, created_at, delivered_at, pushed_live) ",
                "SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], ",
                "$7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::boolean[]) ON CONFLICT (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING id"
            ))
            .bind(&ids)
            .bind(batch.iter().map(|n| n.user_id.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.kind.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.payload.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.priority.as_str().to_owned()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.sound.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.badge).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.dedupe_key.clone()).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.created_at).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.delivered_at).collect::<Vec<_>>())
            .bind(batch.iter().map(|n| n.delivered_at.is_some()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
            let mut created = Vec::with_capacity(batch.len());
            for (new, id) in batch.into_iter().zip(ids) {
                if inserted.contains(&id) {
                    created.push(Created { notification: new.stored_as(id), new: true });
                } else {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        columns!(),
                        " FROM herald_notifications WHERE user_id = $1 AND dedupe_key = $2"
                    ))
                    .bind(&new.user_id)
                    .bind(&new.dedupe_key)
                    .fetch_one(&mut *tx)
                    .await?;
                    created.push(Created { notification: decode(&row)?, new: false });
                }
            }
            tx.commit().await?;
            Ok(created)
        })
    }

    fn get<'a>(&'a self, user: &'a str, id: i64) -> BoxFuture<'a, Result<Notification, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM herald_notifications WHERE user_id = $1 AND id = $2"
            ))
            .bind(user)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
            Ok(decode(&row)?)
        })
    }

    fn list<'a>(&'a self, user: &'a str, query: ListQuery) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let limit = page_limit(query.limit);
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM herald_notifications WHERE user_id = $1 AND id < $2 AND ($3 = false OR read_at IS NULL) ",
                "ORDER BY id DESC LIMIT $4"
            ))
            .bind(user)
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(query.unread_only)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
            Ok(into_page(items, limit))
        })
    }

    fn unread_counts<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async move {
            // One index lookup per user (the partial unread index); a GROUP BY over
            // `user_id = ANY($1)` lets the planner scan the whole table instead.
            let rows = sqlx::query(concat!(
                "SELECT u, (SELECT count(*) FROM herald_notifications WHERE user_id = u AND read_at IS NULL) ",
                "FROM unnest($1::text[]) AS u"
            ))
            .bind(users)
            .fetch_all(&self.pool)
            .await?;
            Ok(counts_in_order(users, &rows)?)
        })
    }

    fn mark_read<'a>(&'a self, user: &'a str, which: Selection, at: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.apply(
            user,
            which,
            vec![at, at],
            concat!(
                "UPDATE herald_notifications SET read_at = $1, seen_at = COALESCE(seen_at, $2) ",
                "WHERE user_id = $3 AND read_at IS NULL"
            ),
            concat!(
                "UPDATE herald_notifications SET read_at = $1, seen_at = COALESCE(seen_at, $2) ",
                "WHERE user_id = $3 AND read_at IS NULL AND id = ANY($4)"
            ),
        ))
    }

    fn mark_seen<'a>(&'a self, user: &'a str, which: Selection, at: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.apply(
            user,
            which,
            vec![at],
            "UPDATE herald_notifications SET seen_at = $1 WHERE user_id = $2 AND seen_at IS NULL",
            "UPDATE herald_notifications SET seen_at = $1 WHERE user_id = $2 AND seen_at IS NULL AND id = ANY($3)",
        ))
    }

    fn delete<'a>(&'a self, user: &'a str, which: Selection) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.apply(
            user,
            which,
            Vec::new(),
            "DELETE FROM herald_notifications WHERE user_id = $1",
            "DELETE FROM herald_notifications WHERE user_id = $1 AND id = ANY($2)",
        ))
    }

    fn pending<'a>(
        &'a self,
        user: &'a str,
        which: Pending,
        through: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Notification>, StoreError>> {
        Box::pin(async move {
            let (after, offline_only) = match which {
                Pending::Offline => (0, true),
                Pending::After(after) => (after, false),
            };
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM herald_notifications WHERE user_id = $1 AND read_at IS NULL AND id > $2 AND id <= $3 ",
                "AND ($4 = false OR NOT pushed_live) ORDER BY id LIMIT $5"
            ))
            .bind(user)
            .bind(after)
            .bind(through)
            .bind(offline_only)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn mark_delivered<'a>(&'a self, user: &'a str, ids: &'a [i64], at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query(concat!(
                "UPDATE herald_notifications SET delivered_at = $1 ",
                "WHERE user_id = $2 AND delivered_at IS NULL AND id = ANY($3)"
            ))
            .bind(at)
            .bind(user)
            .bind(ids)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn device_cursor<'a>(&'a self, user: &'a str, device: &'a str) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT delivered_through FROM herald_inbox_devices WHERE user_id = $1 AND device = $2",
            )
            .bind(user)
            .bind(device)
            .fetch_optional(&self.pool)
            .await?)
        })
    }

    fn advance_device<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        through: i64,
        at: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(concat!(
                "INSERT INTO herald_inbox_devices (user_id, device, delivered_through, updated_at) VALUES ($1, $2, $3, $4) ",
                "ON CONFLICT (user_id, device) DO UPDATE SET ",
                "delivered_through = GREATEST(herald_inbox_devices.delivered_through, excluded.delivered_through), ",
                "updated_at = excluded.updated_at"
            ))
            .bind(user)
            .bind(device)
            .bind(through)
            .bind(at)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn max_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let max: Option<i64> =
                sqlx::query_scalar("SELECT max(id) FROM herald_notifications").fetch_one(&self.pool).await?;
            Ok(max.unwrap_or(0))
        })
    }

    fn prune(&self, retention: Retention) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let batch = i64::from(retention.batch.max(1));
            let mut users: Vec<String> = Vec::new();
            if let Some(before) = retention.created_before {
                let mut deleted: Vec<String> = sqlx::query_scalar(concat!(
                    "DELETE FROM herald_notifications WHERE id IN ",
                    "(SELECT id FROM herald_notifications WHERE created_at < $1 ORDER BY id LIMIT $2) RETURNING user_id"
                ))
                .bind(before)
                .bind(batch)
                .fetch_all(&self.pool)
                .await?;
                users.append(&mut deleted);
            }
            if let Some(keep) = retention.max_per_user {
                let over: Vec<String> = sqlx::query_scalar(
                    "SELECT user_id FROM herald_notifications GROUP BY user_id HAVING count(*) > $1 LIMIT 100",
                )
                .bind(i64::from(keep))
                .fetch_all(&self.pool)
                .await?;
                for user in over {
                    sqlx::query(concat!(
                        "DELETE FROM herald_notifications WHERE id IN (SELECT id FROM herald_notifications ",
                        "WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3)"
                    ))
                    .bind(&user)
                    .bind(batch)
                    .bind(i64::from(keep))
                    .execute(&self.pool)
                    .await?;
                    users.push(user);
                }
            }
            users.sort();
            users.dedup();
            Ok(users)
        })
    }
}
