//! The `worker` scenario (seed 004): a producer inserts notification events into Herald's
//! PostgreSQL outbox at a steady rate (or as fast as it can), the way an application does
//! in its own transactions; Herald's outbox worker(s) enrich, store and push them; devices
//! connected to the gateway record insert-to-device latency from the `t` stamp each event
//! carries in its data.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::recorder::now_nanos;

/// Where and what the producer inserts.
pub struct Producer {
    pool: sqlx::PgPool,
    /// Distinguishes this run's event ids from earlier runs'.
    run: String,
    connections: u64,
    kind: String,
    actors: u64,
}

/// Events per statement when inserting as fast as possible.
const MAX_CHUNK: u64 = 1000;

impl Producer {
    /// Connects (Herald's tables in `schema`, when given) and creates the application's
    /// `User` and `Channel` tables the default enrichment queries read (seed 004's models),
    /// with `actors` users.
    pub async fn connect(
        url: &str,
        schema: Option<&str>,
        connections: u64,
        kind: &str,
        actors: u64,
    ) -> anyhow::Result<Self> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::query(r#"CREATE TABLE IF NOT EXISTS "User" (id TEXT PRIMARY KEY, name TEXT, image TEXT)"#)
            .execute(&pool)
            .await?;
        sqlx::query(r#"CREATE TABLE IF NOT EXISTS "Channel" (id TEXT PRIMARY KEY, name TEXT)"#).execute(&pool).await?;
        sqlx::query(concat!(
            r#"INSERT INTO "User" SELECT g::text, 'fan ' || g, 'avatars/' || g || '.png' "#,
            "FROM generate_series(1, $1) g ON CONFLICT DO NOTHING"
        ))
        .bind(actors.max(1) as i64)
        .execute(&pool)
        .await?;
        sqlx::query(r#"INSERT INTO "Channel" VALUES ('1', 'bench channel') ON CONFLICT DO NOTHING"#)
            .execute(&pool)
            .await?;
        let run = format!("{:x}", rand::random::<u64>());
        Ok(Self { pool, run, connections: connections.max(1), kind: kind.to_owned(), actors: actors.max(1) })
    }

    /// Inserts events `first..first + count` in one statement, all stamped now; each is for
    /// user `user{seq % connections}`, from actor `seq % actors + 1`.
    async fn insert(&self, first: u64, count: u64) -> anyhow::Result<()> {
        sqlx::query(concat!(
            "INSERT INTO herald_outbox (event_id, recipient, type, data) ",
            "SELECT $1 || '-' || (g + $2), 'user:user' || ((g + $2) % $3), $4, ",
            "json_build_object('actorId', ((g + $2) % $5) + 1, 'channelId', '1', 'amount', 1, ",
            "'seq', g + $2, 't', $6::bigint)::text ",
            "FROM generate_series(0, $7 - 1) g"
        ))
        .bind(&self.run)
        .bind(first as i64)
        .bind(self.connections as i64)
        .bind(&self.kind)
        .bind(self.actors as i64)
        .bind(now_nanos() as i64)
        .bind(count as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts `events` events at `rate` per second (0: as fast as it can, in statements of
    /// [`MAX_CHUNK`]); returns when the last is in.
    pub async fn produce(&self, events: u64, rate: u64) -> anyhow::Result<()> {
        if rate == 0 {
            let mut sent = 0;
            while sent < events {
                let count = MAX_CHUNK.min(events - sent);
                self.insert(sent, count).await?;
                sent += count;
            }
            return Ok(());
        }
        // A statement every 10 ms with the events due by then.
        let tick = Duration::from_millis(10);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut sent = 0;
        while sent < events {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(events);
            if due > sent {
                self.insert(sent, due - sent).await?;
                sent = due;
            }
        }
        Ok(())
    }

    /// Events of this run not yet processed (none once all were delivered).
    pub async fn pending(&self) -> anyhow::Result<i64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM herald_outbox WHERE processed_at IS NULL AND event_id LIKE $1 || '-%'",
        )
        .bind(&self.run)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }
}
