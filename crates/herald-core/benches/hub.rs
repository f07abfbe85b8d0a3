//! Hot paths of the hub: topic parsing and fan-out to N in-memory sessions.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_core::{CloseReason, Delivery, Event, Hub, OfferError, Outlet, Principal, Topic, UserId};

/// An outlet that only counts, so the benchmark measures the hub itself.
struct CountingOutlet(AtomicU64);

impl Outlet for CountingOutlet {
    fn offer(&self, delivery: &Arc<Delivery>) -> Result<(), OfferError> {
        black_box(delivery);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn close(&self, _: CloseReason) {}
}

fn topic_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_parse");
    for name in ["global", "user:42", "channel:stream-9a8b7c6d", "room:0123456789abcdef0123456789abcdef"] {
        group.bench_with_input(BenchmarkId::from_parameter(name), name, |b, name| {
            b.iter(|| Topic::parse(black_box(name)))
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_dispatch");
    for sessions in [1usize, 100, 1_000, 10_000] {
        let hub = Hub::default();
        let outlet = Arc::new(CountingOutlet(AtomicU64::new(0)));
        let guards: Vec<_> = (0..sessions)
            .map(|i| {
                let guard =
                    hub.register(Principal::new(UserId::parse(&format!("u{i}")).unwrap()), "bench", outlet.clone());
                guard.subscribe(Topic::parse("channel:bench").unwrap()).unwrap();
                guard
            })
            .collect();
        let topics = [Topic::parse("channel:bench").unwrap()];
        let event = Event::from_value("notification", &serde_json::json!({"id": "n1", "t": 1})).unwrap();
        group.throughput(Throughput::Elements(sessions as u64));
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| hub.dispatch(&topics, Arc::new(Delivery::new(event.clone()))))
        });
        drop(guards);
    }
    group.finish();
}

criterion_group!(benches, topic_parsing, fan_out);
criterion_main!(benches);
