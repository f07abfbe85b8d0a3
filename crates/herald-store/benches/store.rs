//! Store micro-benchmarks: one transaction creating a batch of notifications, on SQLite
//! (a temporary file, as Herald runs it) and, when it answers, PostgreSQL; and chat
//! messages posted on SQLite one after another and 64 at a time (the poster's batches).
//!
//! `cargo bench -p herald-store`

use criterion::{Criterion, criterion_group, criterion_main};
use herald_store::{ChatStore, NewMessage, NewNotification, PostgresStore, Priority, SqliteStore, Store};

fn batch(size: usize, round: u64) -> Vec<NewNotification> {
    (0..size)
        .map(|i| NewNotification {
            user_id: format!("user{}", (round as usize * size + i) % 1000),
            kind: "bench".into(),
            payload: r#"{"seq":1,"t":123456789}"#.into(),
            priority: Priority::Normal,
            sound: None,
            badge: None,
            dedupe_key: None,
            created_at: 1,
            delivered_at: Some(1),
        })
        .collect()
}

fn create(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = runtime.block_on(SqliteStore::open(&dir.path().join("bench.db"), false)).expect("sqlite");
    let url =
        std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("herald_bench_{}", std::process::id());
    let postgres = runtime.block_on(PostgresStore::connect(&url, Some(&schema))).ok();
    let mut stores: Vec<(&str, Box<dyn Store>)> = vec![("sqlite", Box::new(sqlite))];
    if let Some(postgres) = postgres {
        stores.push(("postgres", Box::new(postgres)));
    }
    for (name, store) in &stores {
        for size in [1usize, 8, 64] {
            let mut round = 0u64;
            c.bench_function(&format!("create/{name}/batch_{size}"), |b| {
                b.iter(|| {
                    round += 1;
                    runtime.block_on(store.create(batch(size, round))).expect("created")
                })
            });
        }
        c.bench_function(&format!("unread_counts/{name}/8_users"), |b| {
            let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
            b.iter(|| runtime.block_on(store.unread_counts(&users)).expect("counted"))
        });
    }
    if stores.len() > 1 {
        let drop = std::process::Command::new("psql")
            .arg(&url)
            .args(["-q", "-c", &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")])
            .status();
        if !drop.is_ok_and(|status| status.success()) {
            eprintln!("schema {schema} left behind");
        }
    }
}

fn message(author: usize) -> NewMessage {
    NewMessage {
        topic: "room:bench".into(),
        author_id: format!("user{}", author % 50),
        content: "a chat message of a usual length, some forty bytes".into(),
        kind: "text".into(),
        created_at: 1,
        ..NewMessage::default()
    }
}

/// Posting chat messages on SQLite: one at a time (each waits for the last: the write
/// turn's hand-over is on the path) and 64 at once from 64 tasks (the poster's batches).
fn post(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = runtime.block_on(SqliteStore::open(&dir.path().join("chat.db"), false)).expect("sqlite");
    let members: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    runtime.block_on(store.add_members("room:bench", &members, "member", 1)).expect("members");
    let mut author = 0usize;
    c.bench_function("post_message/sqlite/one_at_a_time", |b| {
        b.iter(|| {
            author += 1;
            runtime.block_on(store.post_message(message(author))).expect("posted")
        })
    });
    c.bench_function("post_message/sqlite/64_at_once", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let posts: Vec<_> = (0..64)
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move { store.post_message(message(i)).await })
                    })
                    .collect();
                for post in posts {
                    post.await.expect("task").expect("posted");
                }
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = create, post
}
criterion_main!(benches);
