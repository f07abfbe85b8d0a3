//! The embedded default: one SQLite file in WAL mode.
//!
//! `synchronous = NORMAL`: a commit is in the WAL before Herald answers, so it survives
//! the process being killed; only a power loss can take the last commits (set
//! `synchronous = FULL` by passing `durable_on_power_loss`). Sets of ids and batches of
//! rows travel as one JSON array read with `json_each` (`jsonb_each` for the poster's
//! messages, see [`INSERT_MESSAGES`]), so every statement is static.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Row, SqlSafeStr};
use tokio::sync::{mpsc, oneshot};

use crate::chat::{ChatError, NewMessage, Posted};
use crate::{
    BoxFuture, Created, ListQuery, NewNotification, Notification, Page, Pending, Retention, Selection, Store,
    StoreError, columns, counts_in_order, decode, distinct, into_page, page_limit,
};

/// Readers beside the one writer connection.
const POOL_SIZE: u32 = 4;

/// How long a write waits for its turn before it fails (`PoolTimedOut`): a queue of
/// writers is bounded in time.
const WRITE_WAIT: Duration = Duration::from_secs(30);

/// Messages waiting for the poster; beyond it, posting waits for room (at most
/// [`WRITE_WAIT`]).
const POST_QUEUE: usize = 1024;

/// The most messages the poster writes in one statement.
const MAX_POST_BATCH: usize = 128;

/// A row the poster's batch insert wrote: id, topic, author, temp id, reply and forward
/// references (what tells which message of the batch it is).
type WrittenRow = (i64, String, String, Option<String>, Option<i64>, Option<i64>);

/// The poster's batch insert: the messages of a batch as one JSON array (`rows`), each
/// written where `post_single` would write it, in the batch's order.
///
/// Read with `jsonb_each`, whose `value` is SQLite's binary JSON, which `->>` reads as it
/// is: `json_each` hands each row's object out as text, parsed again by each of the
/// twelve `->>`. Measured with `cargo bench -p herald-store -- post_message`, 64
/// messages at once: 0.58–0.64 ms against 0.90–1.07 ms (a message alone: no difference
/// beyond the noise, its commit is most of its cost).
const INSERT_MESSAGES: &str = concat!(
    "INSERT INTO herald_messages (topic, author_id, author_name, author_image, content, type, ",
    "encrypted, reply_to, forwarded_from, temp_id, metadata, created_at) ",
    "SELECT m.t, m.a, m.n, m.i, m.c, m.k, m.e, m.r, m.f, m.x, m.m, m.at FROM (SELECT key, ",
    "value ->> '$.t' AS t, value ->> '$.a' AS a, value ->> '$.n' AS n, value ->> '$.i' AS i, ",
    "value ->> '$.c' AS c, value ->> '$.k' AS k, value ->> '$.e' AS e, value ->> '$.r' AS r, ",
    "value ->> '$.f' AS f, value ->> '$.x' AS x, value ->> '$.m' AS m, value ->> '$.at' AS at ",
    "FROM jsonb_each(?)) m ",
    "WHERE EXISTS (SELECT 1 FROM herald_members WHERE topic = m.t AND user_id = m.a) ",
    "AND (m.r IS NULL OR EXISTS (SELECT 1 FROM herald_messages r ",
    "WHERE r.id = m.r AND r.topic = m.t AND r.deleted_at IS NULL)) ",
    "AND (m.f IS NULL OR EXISTS (SELECT 1 FROM herald_messages f ",
    "JOIN herald_members fm ON fm.topic = f.topic AND fm.user_id = m.a ",
    "WHERE f.id = m.f AND f.deleted_at IS NULL)) ",
    "ORDER BY m.key ",
    "ON CONFLICT (author_id, temp_id) WHERE temp_id IS NOT NULL DO NOTHING ",
    "RETURNING id, topic, author_id, temp_id, reply_to, forwarded_from"
);

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);

/// WAL frames (pages) beyond which the checkpointer has the WAL started over: about
/// 16 MiB at SQLite's 4 KiB pages.
const WAL_RESET_FRAMES: i64 = 4096;

/// Bytes a WAL file is trimmed to when SQLite starts it over (`journal_size_limit`,
/// 32 MiB): above what it holds when the checkpointer resets it (4,096 frames and what a
/// second adds under load), so a reset WAL is written again in place, neither truncated
/// under the writers' turn nor grown back block by block.
const WAL_SIZE_LIMIT: &str = "33554432";

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "inbox".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0001_inbox.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "chat".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0002_chat.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "presence".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0003_presence.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            4,
            "calls".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0004_calls.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            5,
            "outbox".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0005_outbox.sql").into_sql_str(),
            false,
        ),
    ])
}

crate::chat::chat_store!(SqliteStore);
crate::outbox::outbox_store!(SqliteStore, "");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection every write goes through, taken in turn. SQLite lets one
    /// connection write at a time, and a second writer is not queued but told
    /// `SQLITE_BUSY` and left to its busy handler, which sleeps in steps of milliseconds:
    /// writers wait their turn for this connection instead. Always the same connection,
    /// so its page cache stays warm: a connection drops its whole cache whenever another
    /// one has written since its last transaction (measured: with writes spread over the
    /// four pooled connections, re-reading pages was a quarter of the SQLite thread's time
    /// in the chat benchmark).
    writer: Writer,
    /// Messages on their way to the poster (see [`SqliteStore::post`]); `None` in the
    /// poster's own copy of the store, so the poster ends when the last other copy goes.
    poster: Option<mpsc::Sender<(NewMessage, PostReply)>>,
    /// Stops the checkpointer when the last clone of the store is dropped.
    checkpointer: Option<std::sync::Arc<StopOnDrop>>,
}

/// Where a write takes its turn (see `SqliteStore::writer`).
#[derive(Debug, Clone)]
enum Writer {
    /// A database file: the writer connections (see [`HeldWriter`]), held by the store
    /// behind a lock rather than pooled. sqlx does not hand a pooled connection given
    /// back to the next taker at once: it spawns a task that pings the connection (a
    /// round trip to its thread) and only then releases it, two more wake-ups between two
    /// writes, each waiting its turn on a busy runtime. Measured in the chat benchmark at
    /// 10,000 users (two rounds each): the poster's write cycle took 11-12.5 ms with the
    /// pool and 2.3-3.9 ms with the lock, and a message's time in the store 107-300 ms
    /// against 29-67 ms. A lock given back is the next writer's at once, in the order
    /// they came.
    Held(std::sync::Arc<tokio::sync::Mutex<HeldWriter>>),
    /// In memory: the pool's only connection, which reads too.
    Pooled(SqlitePool),
}

/// A database file's writer: two connections to the file that take the same turns, so
/// they never wait for each other in SQLite.
#[derive(Debug)]
struct HeldWriter {
    /// sqlx's connection, for every write but the poster's.
    sqlx: SqliteConnection,
    /// The poster's connection, driven synchronously (rusqlite) on the worker thread that
    /// runs the poster: a batch of messages is one statement of 0.1 to 2 ms, run where it
    /// is needed, with no round trip to a connection thread. Through sqlx, each batch
    /// waited for an answer from that thread, and a wake-up from outside the runtime goes
    /// through tokio's shared queue, which is longest when the machine is busiest (see
    /// [`eagerly`]). `None` when the database is not a file (a shared in-memory URL).
    direct: Option<rusqlite::Connection>,
}

/// A write's turn: the writer connection until dropped.
enum WriteTurn<'a> {
    Held(tokio::sync::MutexGuard<'a, HeldWriter>),
    Pooled(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl std::ops::Deref for WriteTurn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Held(writer) => &writer.sqlx,
            Self::Pooled(connection) => connection,
        }
    }
}

impl std::ops::DerefMut for WriteTurn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Held(writer) => &mut writer.sqlx,
            Self::Pooled(connection) => connection,
        }
    }
}

impl WriteTurn<'_> {
    /// The poster's synchronous connection, where there is one.
    fn direct(&mut self) -> Option<&mut rusqlite::Connection> {
        match self {
            Self::Held(writer) => writer.direct.as_mut(),
            Self::Pooled(_) => None,
        }
    }
}

/// Where the poster answers one message.
type PostReply = oneshot::Sender<Result<Posted, ChatError>>;

/// Eager polls per batch: on an idle runtime they come back at once (a few
/// microseconds in all, then the poster waits to be woken as usual); on a busy one
/// each is a round of the worker's queue.
const EAGER_POLLS: u32 = 256;

/// Polls `future` again at the poster's next turn on its worker, up to [`EAGER_POLLS`]
/// times, rather than only when woken. The poster waits on sqlx's SQLite thread where it
/// writes through sqlx (in memory, or a batch posted again after its own connection
/// failed) and, for the write turn, on other writers, which write through sqlx; a
/// wake-up from outside the runtime goes through tokio's shared queue, which a busy
/// worker takes from once per ~200 µs of polling and which also holds what overflows the
/// workers' own queues; with the machine saturated (10,000 chat users) it held 1,200 to
/// 2,400 tasks on average, and the poster's cycles fell from 300-700 a second to 7-30,
/// a message waiting hundreds of milliseconds. A task that wakes itself is put at the
/// back of its worker's own queue (at most 256 tasks ahead of it), so it sees the
/// answer within one round of that queue.
async fn eagerly<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut polls = 0;
    std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() && polls < EAGER_POLLS {
            polls += 1;
            cx.waker().wake_by_ref();
        }
        poll
    })
    .await
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the poster's connection waits for SQLite's write lock, on the worker thread,
/// before its batch fails and is posted one message at a time through sqlx (whose busy
/// wait is on its own thread). Both writer connections take the same turns, so it only
/// waits for another process writing the same file.
const DIRECT_BUSY_WAIT: Duration = Duration::from_millis(100);

/// The settings of every connection to a database file, sqlx's and the poster's (the
/// busy wait apart: see [`DIRECT_BUSY_WAIT`]).
fn connection_pragmas(durable_on_power_loss: bool) -> [(&'static str, &'static str); 4] {
    [
        ("synchronous", if durable_on_power_loss { "FULL" } else { "NORMAL" }),
        ("foreign_keys", "ON"),
        // Checkpoints are the checkpointer's, never a commit's: a commit that copies
        // 1,000 pages and syncs the file would stall every write behind it.
        ("wal_autocheckpoint", "0"),
        // When a writer starts the WAL over on its own (everything copied, no reader left
        // in it), SQLite reuses the file at its old size; this trims it back, so the file
        // stays bounded however it was reset.
        ("journal_size_limit", WAL_SIZE_LIMIT),
    ]
}

/// Opens the poster's connection to the database file at `path` (already migrated, in
/// WAL mode).
fn open_direct(path: &Path, durable_on_power_loss: bool) -> rusqlite::Result<rusqlite::Connection> {
    let direct = rusqlite::Connection::open(path)?;
    direct.busy_timeout(DIRECT_BUSY_WAIT)?;
    for (name, value) in connection_pragmas(durable_on_power_loss) {
        direct.pragma_update(None, name, value)?;
    }
    Ok(direct)
}

/// Runs the poster's batch insert ([`INSERT_MESSAGES`]) on the poster's connection.
fn insert_directly(direct: &rusqlite::Connection, rows: &str) -> rusqlite::Result<Vec<WrittenRow>> {
    let mut statement = direct.prepare_cached(INSERT_MESSAGES)?;
    let written = statement
        .query_map([rows], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)))?;
    written.collect()
}

fn json_ids(ids: &[i64]) -> String {
    let parts: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

impl SqliteStore {
    /// SQLite has no `LISTEN`: the outbox worker polls.
    async fn outbox_listener(&self) -> Result<Option<crate::outbox::OutboxListener>, StoreError> {
        Ok(None)
    }

    /// This store's turn to write (see `writer`). In memory the writer is the only
    /// connection, so a turn must not wait on `pool` for a read: it reads on the turn.
    async fn write_turn(&self) -> Result<WriteTurn<'_>, sqlx::Error> {
        match &self.writer {
            Writer::Held(connection) => match tokio::time::timeout(WRITE_WAIT, connection.lock()).await {
                Ok(turn) => Ok(WriteTurn::Held(turn)),
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            },
            Writer::Pooled(pool) => Ok(WriteTurn::Pooled(pool.acquire().await?)),
        }
    }

    /// Opens (creating if missing) the database file at `path` and migrates it.
    pub async fn open(path: &Path, durable_on_power_loss: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
        Self::open_with(options, durable_on_power_loss).await
    }

    /// Opens a `sqlite:` URL (e.g. `sqlite://data/herald.db`).
    pub async fn open_url(url: &str, durable_on_power_loss: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        Self::open_with(options, durable_on_power_loss).await
    }

    /// A private in-memory database (tests, embedding): one connection that is never
    /// closed, since the data lives and dies with it.
    pub async fn open_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        // The one connection reads and writes; a write's turn is that connection.
        Ok(Self { writer: Writer::Pooled(pool.clone()), pool, poster: None, checkpointer: None }.with_poster())
    }

    async fn open_with(options: SqliteConnectOptions, durable_on_power_loss: bool) -> Result<Self, StoreError> {
        let mut options = options.journal_mode(SqliteJournalMode::Wal).busy_timeout(Duration::from_secs(5));
        for (name, value) in connection_pragmas(durable_on_power_loss) {
            options = options.pragma(name, value);
        }
        // An embedded file needs no liveness check before each use (sqlx's default pings
        // every connection it hands out, a round trip to the connection's thread).
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        migrator().run(&pool).await?;
        let mut sqlx = options.connect().await?;
        let (file,): (String,) =
            sqlx::query_as("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_one(&mut sqlx).await?;
        let direct = if file.is_empty() {
            None
        } else {
            let open = move || open_direct(Path::new(&file), durable_on_power_loss);
            Some(tokio::task::spawn_blocking(open).await.map_err(|error| StoreError::Backend(Box::new(error)))??)
        };
        let writer = Writer::Held(std::sync::Arc::new(tokio::sync::Mutex::new(HeldWriter { sqlx, direct })));
        let mut store = Self { pool, writer, poster: None, checkpointer: None };
        let task = tokio::spawn(store.clone().checkpoint_forever());
        store.checkpointer = Some(std::sync::Arc::new(StopOnDrop(task.abort_handle())));
        Ok(store.with_poster())
    }

    /// Starts the poster, which writes the messages posted at the same moment in one
    /// statement. Each commit writes its pages to the WAL, and (through sqlx) each
    /// statement is a round trip to the connection's thread, so under load sharing both
    /// is most of a message's cost in the store (measured in the chat benchmark when the
    /// poster wrote through sqlx: the SQLite thread's time was a quarter WAL writes, a
    /// quarter waking up, a third running statements; on a database file the poster now
    /// writes on a connection of its own, see `HeldWriter::direct`). A message that finds
    /// the poster idle goes alone, at once: nothing waits to make a batch.
    fn with_poster(mut self) -> Self {
        let (poster, queue) = mpsc::channel(POST_QUEUE);
        tokio::spawn(self.clone().post_forever(queue));
        self.poster = Some(poster);
        self
    }

    /// Posts a message through the poster (alone when the poster is not running).
    async fn post(&self, new: NewMessage) -> Result<Posted, ChatError> {
        let Some(poster) = &self.poster else { return self.post_single(new).await };
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout(WRITE_WAIT, poster.send((new, reply))).await {
            Ok(Ok(())) => {}
            Ok(Err(mpsc::error::SendError((new, _)))) => return self.post_single(new).await,
            Err(_) => return Err(sqlx::Error::PoolTimedOut.into()),
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::Backend("the SQLite poster stopped".into()).into()))
    }

    /// Writes what is queued, a batch at a time, until every other copy of the store
    /// is gone.
    async fn post_forever(self, mut queue: mpsc::Receiver<(NewMessage, PostReply)>) {
        let mut batch = Vec::with_capacity(MAX_POST_BATCH);
        while queue.recv_many(&mut batch, MAX_POST_BATCH).await > 0 {
            let (messages, replies): (Vec<NewMessage>, Vec<PostReply>) = batch.drain(..).unzip();
            for (reply, result) in replies.into_iter().zip(eagerly(self.post_batch(messages)).await) {
                // The poster of a message that gave up waiting is not told.
                let _ = reply.send(result);
            }
        }
    }

    /// Posts `batch`, answering each message for itself, in order.
    async fn post_batch(&self, mut batch: Vec<NewMessage>) -> Vec<Result<Posted, ChatError>> {
        // Alone through sqlx: its own statement, with no array to build and read. The
        // poster's own connection writes a batch of one like any other.
        if batch.len() == 1 && matches!(self.writer, Writer::Pooled(_)) {
            let new = batch.pop().expect("one message");
            return vec![self.post_single(new).await];
        }
        let mut results = Vec::with_capacity(batch.len());
        match self.insert_messages(&batch).await {
            Ok(ids) => {
                for (new, id) in batch.into_iter().zip(ids) {
                    results.push(match id {
                        Some(id) => Ok(Posted { message: new.stored_as(id), new: true }),
                        None => self.why_not_posted(&new).await,
                    });
                }
            }
            Err(error) => {
                // One message's failure must not become the others': each goes alone.
                tracing::warn!(%error, messages = batch.len(), "a batch of messages failed; posting them one by one");
                for new in batch {
                    results.push(self.post_single(new).await);
                }
            }
        }
        results
    }

    /// Inserts what may be inserted of `batch` in one statement, with the checks of
    /// `post_single`; returns each message's id, `None` where it was not written.
    ///
    /// Which row is which: SQLite inserts the rows in the order selected (by array
    /// index), each with the next id, so the ids returned, sorted, follow the batch's
    /// order. They are matched in that order on what decides whether a message is
    /// written (conversation, author, temp id, references): messages alike in all of
    /// those are written or refused alike, except a repeated temp id, where the first
    /// is written, so the first unmatched message alike with a row is that row's.
    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Option<i64>>, StoreError> {
        let rows: Vec<serde_json::Value> = batch
            .iter()
            .map(|new| {
                serde_json::json!({
                    "t": new.topic, "a": new.author_id, "n": new.author_name, "i": new.author_image,
                    "c": new.content, "k": new.kind, "e": i64::from(new.encrypted), "r": new.reply_to,
                    "f": new.forwarded_from, "x": new.temp_id, "m": new.metadata, "at": new.created_at,
                })
            })
            .collect();
        let rows = serde_json::to_string(&rows).map_err(|error| StoreError::Backend(Box::new(error)))?;
        let mut turn = self.write_turn().await?;
        let mut written = match turn.direct() {
            Some(direct) => insert_directly(direct, &rows)?,
            None => sqlx::query_as::<_, WrittenRow>(INSERT_MESSAGES).bind(rows).fetch_all(&mut *turn).await?,
        };
        drop(turn);
        written.sort_unstable_by_key(|row| row.0);
        let mut written = written.into_iter().peekable();
        Ok(batch
            .iter()
            .map(|new| {
                let (_, topic, author, temp_id, reply_to, forwarded_from) = written.peek()?;
                let alike = *topic == new.topic
                    && *author == new.author_id
                    && *temp_id == new.temp_id
                    && *reply_to == new.reply_to
                    && *forwarded_from == new.forwarded_from;
                alike.then(|| written.next().map(|row| row.0)).flatten()
            })
            .collect())
    }

    /// Keeps the WAL bounded. SQLite's own checkpoint after a commit copies pages into
    /// the database file, but the WAL only starts over from its beginning when no reader
    /// is using it at the moment of a write; with readers overlapping all the time (a
    /// busy node) that moment never comes and the file grows without bound, every read
    /// searching a longer log (measured: 200 MB after 15,000 chat messages). So, once a
    /// second: copy what can be copied (no lock taken that a writer waits for), and when
    /// the WAL is long, take the writers' turn and reset it: `RESTART` copies the frames
    /// written since, waits (within the busy timeout) for readers still on the old log,
    /// and makes the next write start the log over. Posts wait for it: measured under the
    /// chat benchmark at 5,000 users, 5–20 ms, where `TRUNCATE` (which also truncates the
    /// file) took 30–220 ms.
    async fn checkpoint_forever(self) {
        let mut tick = tokio::time::interval(CHECKPOINT_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.checkpoint().await {
                tracing::warn!(%error, "SQLite checkpoint failed");
            }
        }
    }

    /// One round of [`Self::checkpoint_forever`]; returns the WAL's frames left (0 once
    /// reset: the next write starts it over), or `None` when another checkpoint was
    /// running (SQLite then reports no log at all).
    #[doc(hidden)]
    pub async fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        let (busy, log, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&self.pool).await?;
        if busy != 0 || log < 0 {
            return Ok(None);
        }
        if log < WAL_RESET_FRAMES {
            return Ok(Some(log));
        }
        if copied < log {
            // A reader's snapshot still needs frames not yet copied: a reset would wait for
            // it with every writer stopped. Copy the rest next time.
            tracing::debug!(frames = log, copied, "SQLite WAL not reset: a reader holds an older snapshot");
            return Ok(Some(log));
        }
        // Everything is in the database file, so new readers no longer look in the WAL;
        // the reset waits only for reads begun before the copy finished.
        let mut turn = self.write_turn().await?;
        let (busy, log, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(RESTART)").fetch_one(&mut *turn).await?;
        if busy != 0 {
            tracing::warn!(frames = log, "SQLite WAL not reset: a reader held it past the busy timeout");
            return Ok((log >= 0).then_some(log));
        }
        Ok(Some(0))
    }

    /// Counts which of `ids` are the user's; errs unless all are.
    async fn owns_all(
        connection: &mut sqlx::SqliteConnection,
        user: &str,
        ids: &[i64],
        json: &str,
    ) -> Result<(), StoreError> {
        let owned: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM herald_notifications WHERE user_id = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(user)
        .bind(json)
        .fetch_one(connection)
        .await?;
        if owned as usize == ids.len() { Ok(()) } else { Err(StoreError::NotFound) }
    }

    /// Runs one statement over the user's selection, all or nothing; `all` and `some`
    /// are the statement without and with the id set (its last parameter), and
    /// `leading` the values of the parameters before the user's id.
    async fn apply(
        &self,
        user: &str,
        which: Selection,
        leading: Vec<i64>,
        all: &'static str,
        some: &'static str,
    ) -> Result<u64, StoreError> {
        let mut turn = self.write_turn().await?;
        match which {
            Selection::All => {
                let mut query = sqlx::query(all);
                for value in &leading {
                    query = query.bind(*value);
                }
                Ok(query.bind(user).execute(&mut *turn).await?.rows_affected())
            }
            Selection::Ids(ids) => {
                let ids = distinct(&ids);
                if ids.is_empty() {
                    return Ok(0);
                }
                let json = json_ids(&ids);
                let mut tx = sqlx::Connection::begin(&mut *turn).await?;
                Self::owns_all(&mut tx, user, &ids, &json).await?;
                let mut query = sqlx::query(some);
                for value in &leading {
                    query = query.bind(*value);
                }
                let changed = query.bind(user).bind(&json).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok(changed)
            }
        }
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
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
            let mut turn = self.write_turn().await?;
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            // The whole batch is one statement over a JSON array: with sqlx's SQLite driver
            // every statement is a round trip to the connection's thread, so one per row
            // would cost a context switch per notification. Ids are given explicitly, above
            // every id ever used (AUTOINCREMENT's sequence), so each input keeps its own;
            // `BEGIN IMMEDIATE` holds the write lock from that read to the commit.
            let mut tx = sqlx::Connection::begin_with(&mut *turn, "BEGIN IMMEDIATE").await?;
            let base: i64 = sqlx::query_scalar(concat!(
                "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'herald_notifications'), 0), ",
                "COALESCE((SELECT max(id) FROM herald_notifications), 0))"
            ))
            .fetch_one(&mut *tx)
            .await?;
            let rows: Vec<serde_json::Value> = batch
                .iter()
                .zip(base + 1..)
                .map(|(new, id)| {
                    serde_json::json!({
                        "id": id, "u": new.user_id, "k": new.kind, "p": new.payload, "r": new.priority.as_str(),
                        "s": new.sound, "b": new.badge, "d": new.dedupe_key, "c": new.created_at,
                        "v": new.delivered_at, "l": i64::from(new.delivered_at.is_some()),
                    })
                })
                .collect();
            let rows = serde_json::to_string(&rows).map_err(|error| StoreError::Backend(Box::new(error)))?;
            let inserted: Vec<i64> = sqlx::query_scalar(concat!(
                "INSERT INTO herald_notifications (id, user_id, type, payload, priority, sound, badge, dedupe_key, ",
                "created_at, delivered_at, pushed_live) SELECT json_extract(value, '$.id'), json_extract(value, '$.u'), ",
                "json_extract(value, '$.k'), json_extract(value, '$.p'), json_extract(value, '$.r'), ",
                "json_extract(value, '$.s'), json_extract(value, '$.b'), json_extract(value, '$.d'), ",
                "json_extract(value, '$.c'), json_extract(value, '$.v'), json_extract(value, '$.l') ",
                "FROM json_each(?) WHERE true ON CONFLICT (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING id"
            ))
            .bind(rows)
            .fetch_all(&mut *tx)
            .await?;
            let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
            let mut created = Vec::with_capacity(batch.len());
            for (new, id) in batch.into_iter().zip(base + 1..) {
                if inserted.contains(&id) {
                    created.push(Created { notification: new.stored_as(id), new: true });
                } else {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        columns!(),
                        " FROM herald_notifications WHERE user_id = ? AND dedupe_key = ?"
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
            let row =
                sqlx::query(concat!("SELECT ", columns!(), " FROM herald_notifications WHERE user_id = ? AND id = ?"))
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
                " FROM herald_notifications WHERE user_id = ? AND id < ? AND (? = 0 OR read_at IS NULL) ",
                "ORDER BY id DESC LIMIT ?"
            ))
            .bind(user)
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(i64::from(query.unread_only))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
            Ok(into_page(items, limit))
        })
    }

    fn unread_counts<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async move {
            let names = serde_json::to_string(users).map_err(|error| StoreError::Backend(Box::new(error)))?;
            let rows = sqlx::query(concat!(
                "SELECT user_id, count(*) FROM herald_notifications WHERE read_at IS NULL ",
                "AND user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id"
            ))
            .bind(names)
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
            "UPDATE herald_notifications SET read_at = ?, seen_at = COALESCE(seen_at, ?) WHERE user_id = ? AND read_at IS NULL",
            concat!(
                "UPDATE herald_notifications SET read_at = ?, seen_at = COALESCE(seen_at, ?) ",
                "WHERE user_id = ? AND read_at IS NULL AND id IN (SELECT value FROM json_each(?))"
            ),
        ))
    }

    fn mark_seen<'a>(&'a self, user: &'a str, which: Selection, at: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.apply(
            user,
            which,
            vec![at],
            "UPDATE herald_notifications SET seen_at = ? WHERE user_id = ? AND seen_at IS NULL",
            concat!(
                "UPDATE herald_notifications SET seen_at = ? ",
                "WHERE user_id = ? AND seen_at IS NULL AND id IN (SELECT value FROM json_each(?))"
            ),
        ))
    }

    fn delete<'a>(&'a self, user: &'a str, which: Selection) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.apply(
            user,
            which,
            Vec::new(),
            "DELETE FROM herald_notifications WHERE user_id = ?",
            "DELETE FROM herald_notifications WHERE user_id = ? AND id IN (SELECT value FROM json_each(?))",
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
                Pending::Offline => (0, 1),
                Pending::After(after) => (after, 0),
            };
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM herald_notifications WHERE user_id = ? AND read_at IS NULL AND id > ? AND id <= ? ",
                "AND (? = 0 OR pushed_live = 0) ORDER BY id LIMIT ?"
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
            let mut turn = self.write_turn().await?;
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query(concat!(
                "UPDATE herald_notifications SET delivered_at = ? ",
                "WHERE user_id = ? AND delivered_at IS NULL AND id IN (SELECT value FROM json_each(?))"
            ))
            .bind(at)
            .bind(user)
            .bind(json_ids(ids))
            .execute(&mut *turn)
            .await?;
            Ok(())
        })
    }

    fn device_cursor<'a>(&'a self, user: &'a str, device: &'a str) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT delivered_through FROM herald_inbox_devices WHERE user_id = ? AND device = ?",
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
            let mut turn = self.write_turn().await?;
            sqlx::query(concat!(
                "INSERT INTO herald_inbox_devices (user_id, device, delivered_through, updated_at) VALUES (?, ?, ?, ?) ",
                "ON CONFLICT (user_id, device) DO UPDATE SET ",
                "delivered_through = max(delivered_through, excluded.delivered_through), updated_at = excluded.updated_at"
            ))
            .bind(user)
            .bind(device)
            .bind(through)
            .bind(at)
            .execute(&mut *turn)
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
            let mut turn = self.write_turn().await?;
            let batch = i64::from(retention.batch.max(1));
            let mut users: Vec<String> = Vec::new();
            if let Some(before) = retention.created_before {
                let rows = sqlx::query(concat!(
                    "DELETE FROM herald_notifications WHERE id IN ",
                    "(SELECT id FROM herald_notifications WHERE created_at < ? ORDER BY id LIMIT ?) RETURNING user_id"
                ))
                .bind(before)
                .bind(batch)
                .fetch_all(&mut *turn)
                .await?;
                for row in rows {
                    users.push(row.try_get(0)?);
                }
            }
            if let Some(keep) = retention.max_per_user {
                let over: Vec<String> = sqlx::query_scalar(
                    "SELECT user_id FROM herald_notifications GROUP BY user_id HAVING count(*) > ? LIMIT 100",
                )
                .bind(i64::from(keep))
                .fetch_all(&mut *turn)
                .await?;
                for user in over {
                    sqlx::query(concat!(
                        "DELETE FROM herald_notifications WHERE id IN (SELECT id FROM herald_notifications ",
                        "WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?)"
                    ))
                    .bind(&user)
                    .bind(batch)
                    .bind(i64::from(keep))
                    .execute(&mut *turn)
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
