//! Store micro-benchmarks: one transaction creating a batch of notifications, on SQLite
//! (a temporary file, as Herald runs it) and, when it answers, PostgreSQL.
//!
//! `cargo bench -p herald-store`

use criterion::{Criterion, criterion_group, criterion_main};
use herald_store::{NewNotification, PostgresStore, Priority, SqliteStore, Store};

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = create
}
criterion_main!(benches);
