//! The store conformance suite: every case runs against SQLite (a temporary file) and
//! PostgreSQL (its own schema in `HERALD_TEST_DATABASE_URL`, default the local `test`
//! database), so both backends behave alike.

use std::sync::Arc;

use herald_store::{
    ListQuery, NewNotification, Pending, PostgresStore, Priority, Retention, Selection, SqliteStore, Store, StoreError,
};

/// A store for one test, removed when the test ends.
struct TestStore {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

fn database_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("herald.db"), false).await.expect("sqlite store opens");
    TestStore { store: Arc::new(store), _dir: Some(dir), schema: None }
}

async fn postgres() -> TestStore {
    let schema = format!("herald_test_{:016x}", rand::random::<u64>());
    let store = PostgresStore::connect(&database_url(), Some(&schema)).await.expect("postgres store connects");
    TestStore { store: Arc::new(store), _dir: None, schema: Some(schema) }
}

impl TestStore {
    async fn cleanup(self) {
        if let Some(schema) = self.schema {
            drop(self.store);
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&database_url()).await.expect("connects");
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut connection)
                .await
                .expect("schema dropped");
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::sqlite().await;
                    super::cases::$case(db.store.as_ref()).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::postgres().await;
                    super::cases::$case(db.store.as_ref()).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    creates_in_order_with_increasing_ids,
    stores_payloads_verbatim,
    dedupe_key_makes_creation_idempotent,
    lists_newest_first_with_cursor_and_unread_filter,
    counts_unread_per_user,
    marks_read_by_ids_and_all,
    another_users_ids_are_not_found_and_change_nothing,
    marks_seen_without_reading,
    deletes_by_ids_and_all,
    pending_follows_delivery_and_device_positions,
    prunes_by_age_and_count,
    answers_ping_and_max_id,
    members_are_added_and_removed_once,
    only_members_post_and_temp_ids_make_posting_idempotent,
    messages_posted_at_once_are_each_answered_for_themselves,
    replies_and_forwards_must_be_visible_to_the_author,
    only_the_author_edits_or_deletes,
    history_pages_newest_first_without_deleted_or_blocked,
    receipts_move_forward_once_and_only_for_members,
    reactions_are_stored_per_member_and_emoji,
    blocks_are_per_user,
    presence_is_stored_per_user_and_contacts_share_a_conversation,
    calls_follow_their_state_machine_between_their_two_parties,
    outbox_events_are_enqueued_once_and_claimed_oldest_first_under_a_lease,
    failed_outbox_events_are_retried_then_dead_until_retried_by_hand,
    processed_outbox_events_are_purged_in_batches,
    enrichment_lookups_return_the_first_row_as_text,
);

mod chat;
mod outbox;

mod cases {
    pub use super::chat::*;
    pub use super::outbox::*;
    use super::*;

    pub(super) fn new(user: &str, kind: &str, at: i64) -> NewNotification {
        NewNotification {
            user_id: user.into(),
            kind: kind.into(),
            payload: format!(r#"{{"n":{at}}}"#),
            priority: Priority::Normal,
            sound: None,
            badge: None,
            dedupe_key: None,
            created_at: at,
            delivered_at: None,
        }
    }

    async fn ids_of(store: &dyn Store, user: &str, count: i64) -> Vec<i64> {
        let batch = (0..count).map(|i| new(user, "TIP", 1_000 + i)).collect();
        store.create(batch).await.expect("created").into_iter().map(|c| c.notification.id).collect()
    }

    pub async fn creates_in_order_with_increasing_ids(store: &dyn Store) {
        let mut batch = vec![new("alice", "TIP", 1), new("bob", "FOLLOW", 2), new("alice", "mention", 3)];
        batch[0].priority = Priority::High;
        batch[0].sound = Some("chime".into());
        batch[0].badge = Some(3);
        batch[1].delivered_at = Some(9);
        let created = store.create(batch).await.expect("created");
        assert_eq!(created.len(), 3);
        assert!(created.iter().all(|c| c.new));
        assert!(created.windows(2).all(|w| w[0].notification.id < w[1].notification.id));
        let first = &created[0].notification;
        assert_eq!((first.user_id.as_str(), first.kind.as_str()), ("alice", "TIP"));
        assert_eq!((first.priority, first.sound.as_deref(), first.badge), (Priority::High, Some("chime"), Some(3)));
        assert_eq!((first.created_at, first.read_at, first.delivered_at), (1, None, None));
        assert_eq!(created[1].notification.delivered_at, Some(9), "delivered live as it was created");
        let later = store.create(vec![new("alice", "SYSTEM", 4)]).await.expect("created");
        assert!(later[0].notification.id > created[2].notification.id);
        assert_eq!(store.get("alice", first.id).await.expect("found"), *first);
        assert!(store.create(Vec::new()).await.expect("empty batch").is_empty());
    }

    pub async fn stores_payloads_verbatim(store: &dyn Store) {
        let mut hostile = new("alice", "chat", 1);
        hostile.payload = r#"{"message":"'); DROP TABLE herald_notifications; --","html":"<script>alert(1)</script>","unicode":"žluťoučký 🐎"}"#.into();
        let mut user = new("o'brien; DROP TABLE x", "SYSTEM", 2);
        user.sound = Some("<b>".into());
        let created = store.create(vec![hostile.clone(), user.clone()]).await.expect("created");
        let back = store.get("alice", created[0].notification.id).await.expect("found");
        assert_eq!(back.payload, hostile.payload);
        let back = store.get(&user.user_id, created[1].notification.id).await.expect("found");
        assert_eq!((back.user_id, back.sound), (user.user_id, user.sound));
    }

    pub async fn dedupe_key_makes_creation_idempotent(store: &dyn Store) {
        let mut first = new("alice", "TIP", 1);
        first.dedupe_key = Some("event-1".into());
        let mut again = first.clone();
        again.payload = r#"{"other":true}"#.into();
        let mut bob = first.clone();
        bob.user_id = "bob".into();
        let created = store.create(vec![first.clone(), again.clone(), bob]).await.expect("created");
        assert!(created[0].new);
        assert!(!created[1].new, "same user and key in the same batch");
        assert_eq!(created[1].notification, created[0].notification);
        assert!(created[2].new, "the key is per user");
        let later = store.create(vec![again]).await.expect("created");
        assert!(!later[0].new);
        assert_eq!(later[0].notification.payload, first.payload);
        assert_eq!(store.unread_counts(&["alice".into()]).await.expect("counted"), vec![("alice".into(), 1)]);
    }

    pub async fn lists_newest_first_with_cursor_and_unread_filter(store: &dyn Store) {
        let ids = ids_of(store, "alice", 5).await;
        ids_of(store, "bob", 2).await;
        let page = store.list("alice", ListQuery { before: None, limit: 2, unread_only: false }).await.expect("listed");
        assert_eq!(page.items.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[4], ids[3]]);
        assert_eq!(page.next_cursor, Some(ids[3]));
        let page = store.list("alice", ListQuery { before: page.next_cursor, limit: 2, unread_only: false }).await;
        let page = page.expect("listed");
        assert_eq!(page.items.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[2], ids[1]]);
        let last = store.list("alice", ListQuery { before: page.next_cursor, limit: 2, unread_only: false }).await;
        let last = last.expect("listed");
        assert_eq!(last.items.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[0]]);
        assert_eq!(last.next_cursor, None);
        store.mark_read("alice", Selection::Ids(vec![ids[4], ids[2]]), 10).await.expect("marked");
        let unread =
            store.list("alice", ListQuery { before: None, limit: 50, unread_only: true }).await.expect("listed");
        assert_eq!(unread.items.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[3], ids[1], ids[0]]);
        let nobody =
            store.list("carol", ListQuery { before: None, limit: 0, unread_only: false }).await.expect("listed");
        assert!(nobody.items.is_empty());
    }

    pub async fn counts_unread_per_user(store: &dyn Store) {
        ids_of(store, "alice", 3).await;
        ids_of(store, "bob", 1).await;
        let counts = store.unread_counts(&["alice".into(), "bob".into(), "carol".into()]).await.expect("counted");
        assert_eq!(counts, vec![("alice".into(), 3), ("bob".into(), 1), ("carol".into(), 0)]);
    }

    pub async fn marks_read_by_ids_and_all(store: &dyn Store) {
        let ids = ids_of(store, "alice", 4).await;
        assert_eq!(
            store.mark_read("alice", Selection::Ids(vec![ids[0], ids[0], ids[1]]), 50).await.expect("marked"),
            2
        );
        assert_eq!(
            store.mark_read("alice", Selection::Ids(vec![ids[1]]), 60).await.expect("marked"),
            0,
            "already read"
        );
        let read = store.get("alice", ids[1]).await.expect("found");
        assert_eq!((read.read_at, read.seen_at), (Some(50), Some(50)), "reading also marks seen");
        assert_eq!(store.unread_counts(&["alice".into()]).await.expect("counted")[0].1, 2);
        assert_eq!(store.mark_read("alice", Selection::All, 70).await.expect("marked"), 2);
        assert_eq!(store.unread_counts(&["alice".into()]).await.expect("counted")[0].1, 0);
        assert_eq!(store.mark_read("alice", Selection::Ids(Vec::new()), 80).await.expect("nothing"), 0);
    }

    pub async fn another_users_ids_are_not_found_and_change_nothing(store: &dyn Store) {
        let alice = ids_of(store, "alice", 2).await;
        let bob = ids_of(store, "bob", 1).await;
        assert!(matches!(store.get("alice", bob[0]).await, Err(StoreError::NotFound)));
        assert!(matches!(store.get("alice", i64::MAX).await, Err(StoreError::NotFound)));
        let mixed = Selection::Ids(vec![alice[0], bob[0]]);
        assert!(matches!(store.mark_read("alice", mixed.clone(), 1).await, Err(StoreError::NotFound)));
        assert!(matches!(store.mark_seen("alice", mixed.clone(), 1).await, Err(StoreError::NotFound)));
        assert!(matches!(store.delete("alice", mixed).await, Err(StoreError::NotFound)));
        assert!(matches!(store.delete("alice", Selection::Ids(vec![-5])).await, Err(StoreError::NotFound)));
        assert_eq!(store.get("alice", alice[0]).await.expect("untouched").read_at, None, "all or nothing");
        let counts = store.unread_counts(&["alice".into(), "bob".into()]).await.expect("counted");
        assert_eq!(counts, vec![("alice".into(), 2), ("bob".into(), 1)]);
    }

    pub async fn marks_seen_without_reading(store: &dyn Store) {
        let ids = ids_of(store, "alice", 2).await;
        assert_eq!(store.mark_seen("alice", Selection::Ids(vec![ids[0]]), 5).await.expect("seen"), 1);
        let seen = store.get("alice", ids[0]).await.expect("found");
        assert_eq!((seen.seen_at, seen.read_at), (Some(5), None));
        assert_eq!(store.mark_seen("alice", Selection::All, 6).await.expect("seen"), 1);
        assert_eq!(store.unread_counts(&["alice".into()]).await.expect("counted")[0].1, 2);
    }

    pub async fn deletes_by_ids_and_all(store: &dyn Store) {
        let ids = ids_of(store, "alice", 3).await;
        ids_of(store, "bob", 1).await;
        assert_eq!(store.delete("alice", Selection::Ids(vec![ids[1]])).await.expect("deleted"), 1);
        assert!(matches!(store.get("alice", ids[1]).await, Err(StoreError::NotFound)));
        assert!(matches!(store.delete("alice", Selection::Ids(vec![ids[1]])).await, Err(StoreError::NotFound)));
        assert_eq!(store.delete("alice", Selection::All).await.expect("deleted"), 2);
        let counts = store.unread_counts(&["alice".into(), "bob".into()]).await.expect("counted");
        assert_eq!(counts, vec![("alice".into(), 0), ("bob".into(), 1)]);
        let bob = store.list("bob", ListQuery { before: None, limit: 1, unread_only: false }).await.expect("listed");
        store.delete("bob", Selection::All).await.expect("deleted");
        let newest_ever = bob.items[0].id.max(ids[2]);
        let again = ids_of(store, "alice", 1).await;
        assert!(again[0] > newest_ever, "ids are never reused, even after the newest were deleted");
    }

    pub async fn pending_follows_delivery_and_device_positions(store: &dyn Store) {
        let mut batch: Vec<_> = (0..4).map(|i| new("alice", "TIP", 1_000 + i)).collect();
        batch[2].delivered_at = Some(1_002);
        let ids: Vec<i64> =
            store.create(batch).await.expect("created").into_iter().map(|c| c.notification.id).collect();
        let through = store.max_id().await.expect("max id");
        let offline = store.pending("alice", Pending::Offline, through, 10).await.expect("pending");
        assert_eq!(offline.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[0], ids[1], ids[3]], "not pushed live");
        store.mark_delivered("alice", &ids[..2], 7).await.expect("delivered");
        store.mark_delivered("alice", &ids[..1], 9).await.expect("delivered again");
        assert_eq!(store.get("alice", ids[0]).await.expect("found").delivered_at, Some(7), "first delivery counts");
        let offline = store.pending("alice", Pending::Offline, through, 10).await.expect("pending");
        assert_eq!(offline.len(), 3, "delivery to one device does not change what a new device missed");
        store.mark_read("alice", Selection::Ids(vec![ids[1]]), 8).await.expect("read");
        let offline = store.pending("alice", Pending::Offline, through, 10).await.expect("pending");
        assert_eq!(offline.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[0], ids[3]], "unread only");
        let after = store.pending("alice", Pending::After(ids[0]), through, 10).await.expect("pending");
        assert_eq!(after.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[2], ids[3]]);
        let bounded = store.pending("alice", Pending::After(0), ids[2], 1).await.expect("pending");
        assert_eq!(bounded.iter().map(|n| n.id).collect::<Vec<_>>(), vec![ids[0]], "limit and upper bound");

        assert_eq!(store.device_cursor("alice", "phone").await.expect("cursor"), None);
        store.advance_device("alice", "phone", ids[1], 1).await.expect("advanced");
        store.advance_device("alice", "phone", ids[0], 2).await.expect("never backward");
        assert_eq!(store.device_cursor("alice", "phone").await.expect("cursor"), Some(ids[1]));
        assert_eq!(store.device_cursor("alice", "laptop").await.expect("cursor"), None);
        assert_eq!(store.device_cursor("bob", "phone").await.expect("cursor"), None);
    }

    pub async fn prunes_by_age_and_count(store: &dyn Store) {
        let old: Vec<_> = (0..3).map(|i| new("alice", "TIP", 100 + i)).collect();
        store.create(old).await.expect("created");
        let recent: Vec<_> = (0..5).map(|i| new("bob", "TIP", 10_000 + i)).collect();
        let bob = store.create(recent).await.expect("created");
        let retention = Retention { created_before: Some(1_000), max_per_user: None, batch: 2 };
        assert_eq!(store.prune(retention).await.expect("pruned"), vec!["alice".to_owned()]);
        assert_eq!(store.unread_counts(&["alice".into()]).await.expect("counted")[0].1, 1, "batch of two");
        store.prune(retention).await.expect("pruned");
        assert!(store.prune(retention).await.expect("pruned").is_empty(), "nothing left to prune");
        let retention = Retention { created_before: None, max_per_user: Some(2), batch: 100 };
        assert_eq!(store.prune(retention).await.expect("pruned"), vec!["bob".to_owned()]);
        let left = store.list("bob", ListQuery { before: None, limit: 10, unread_only: false }).await.expect("listed");
        let newest: Vec<i64> = bob.iter().rev().take(2).map(|c| c.notification.id).collect();
        assert_eq!(left.items.iter().map(|n| n.id).collect::<Vec<_>>(), newest, "the newest are kept");
    }

    pub async fn answers_ping_and_max_id(store: &dyn Store) {
        store.ping().await.expect("ping");
        assert_eq!(store.max_id().await.expect("max id"), 0);
        let ids = ids_of(store, "alice", 2).await;
        assert_eq!(store.max_id().await.expect("max id"), ids[1]);
        assert!(!store.kind().is_empty());
    }
}

/// SQLite only: with readers overlapping all the time, SQLite itself never gets the
/// moment it needs to start the WAL over, and the file grows without bound (seen under
/// the chat benchmark: 200 MB). The store's checkpoint resets it anyway.
#[tokio::test]
async fn sqlite_wal_is_reset_while_readers_overlap() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("herald.db");
    let store = Arc::new(SqliteStore::open(&path, false).await.expect("sqlite store opens"));
    let wal = dir.path().join("herald.db-wal");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    store.unread_counts(&["alice".into()]).await.expect("unread counts");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    // About 24 MiB of WAL: 600 commits of 10 notifications with 4 KiB payloads.
    let payload = format!(r#"{{"text":"{}"}}"#, "x".repeat(4_000));
    for batch in 0..600 {
        let rows = (0..10)
            .map(|i| NewNotification { payload: payload.clone(), ..cases::new("alice", "TIP", batch * 10 + i) })
            .collect();
        store.create(rows).await.expect("created");
    }
    let grown = std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0);
    // A round leaves the WAL alone while a reader still holds an older snapshot, and
    // does not run while the store's own checkpointer is running one (`None`: nothing
    // signals its end, so the next round comes a little later); one of the next rounds
    // does it.
    let mut left = i64::MAX;
    for _ in 0..100 {
        match store.checkpoint().await.expect("checkpoint") {
            Some(frames) => left = frames,
            None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
        if left < 4096 {
            break;
        }
    }
    assert!(left < 4096, "WAL reset: {left} frames left (it had grown to {grown} bytes)");
    // A log started over is written again from its beginning, and the file is trimmed to
    // the store's limit (32 MiB) by the first write after the reset.
    store.create(vec![cases::new("alice", "TIP", 6_000)]).await.expect("created after the reset");
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0, "readers ran alongside the writes");
    }
    let size = std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0);
    assert!(size <= 32 << 20, "WAL file trimmed to the limit: {size} bytes (it had grown to {grown} bytes)");
    let page = store.list("alice", ListQuery::default()).await.expect("list after reset");
    assert!(!page.items.is_empty(), "data survives the reset");
}

/// SQLite only: the poster writes on a connection of its own, which waits only briefly
/// (on Herald's worker thread) for SQLite's write lock. When another process holds the
/// lock for longer, the batch is posted again through sqlx, which waits on its own
/// thread: the message is stored once, when the lock is free.
#[tokio::test]
async fn sqlite_post_outlasts_another_process_holding_the_write_lock() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, false).await.expect("sqlite store opens");
    let chat = store.chat();
    chat.add_members("room:lock", &["alice".to_string()], "member", 1).await.expect("member added");
    let url = format!("sqlite://{}", path.display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.expect("another connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.expect("the other writer holds the lock");

    let new = herald_store::NewMessage {
        topic: "room:lock".into(),
        author_id: "alice".into(),
        content: "after the lock".into(),
        kind: "text".into(),
        created_at: 2,
        temp_id: Some("t-lock".into()),
        ..Default::default()
    };
    let post = tokio::spawn({
        let store = store.clone();
        let new = new.clone();
        async move { store.chat().post_message(new).await }
    });
    // Held past the poster's own wait (100 ms), well within sqlx's (5 s): a condition
    // being created, not a wait for an event.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!post.is_finished(), "nothing is written while another process holds the lock");
    sqlx::query("COMMIT").execute(&mut other).await.expect("the other writer commits");

    let posted = post.await.expect("task").expect("posted once the lock is free");
    assert!(posted.new);
    assert_eq!(posted.message.content, "after the lock");
    let history = chat.messages("alice", "room:lock", None, 10).await.expect("history");
    assert_eq!(history.len(), 1, "stored once: {history:?}");
    assert_eq!(history[0], posted.message);
    // The poster's connection writes again at once afterwards.
    let next =
        chat.post_message(herald_store::NewMessage { temp_id: None, created_at: 3, ..new }).await.expect("posted");
    assert!(next.new && next.message.id > posted.message.id);
}

/// A shared in-memory database named by URL (`open_url`): no file, so the poster writes
/// through sqlx's writer connection; posting behaves as on a file.
#[tokio::test]
async fn sqlite_shared_in_memory_url_posts_like_a_file() {
    let url = format!("sqlite:file:herald-shared-{:016x}?mode=memory&cache=shared", rand::random::<u64>());
    let store = SqliteStore::open_url(&url, false).await.expect("a shared in-memory store opens");
    cases::messages_posted_at_once_are_each_answered_for_themselves(&store).await;
    cases::only_members_post_and_temp_ids_make_posting_idempotent(&store).await;
}
