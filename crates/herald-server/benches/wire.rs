//! Encoding one event for each wire format and dialect.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use herald_core::{Delivery, Event};
use herald_server::wire::{self, Dialect};

fn encode(c: &mut Criterion) {
    let payload = serde_json::json!({
        "id": "n-1", "userId": "42", "type": "TIP",
        "payload": {"amount": 5, "currency": "USD", "channelId": "c9", "userName": "Ann", "message": "hi"},
        "createdAt": "2024-01-01T00:00:00.000Z"
    });
    let event = Event::from_value("notification:new", &payload).unwrap();
    let mut group = c.benchmark_group("encode");
    type Encoder = fn(&Delivery) -> usize;
    let formats: [(&str, Encoder); 4] = [
        ("ws_canonical", |d| wire::ws_encoded(d, Dialect::Canonical).len()),
        ("ws_community", |d| wire::ws_encoded(d, Dialect::Community).len()),
        ("sse_canonical", |d| wire::sse_encoded(d, Dialect::Canonical).len()),
        ("sse_notifications", |d| wire::sse_encoded(d, Dialect::Notifications).len()),
    ];
    for (name, format) in formats {
        // A fresh delivery each time: the first encoding is the cost; later ones are a clone.
        group.bench_function(BenchmarkId::new("first", name), |b| {
            b.iter(|| format(black_box(&Delivery::new(event.clone()))))
        });
    }
    let delivery = Delivery::new(event.clone());
    group.bench_function(BenchmarkId::new("cached", "ws_canonical"), |b| {
        b.iter(|| wire::ws_encoded(black_box(&delivery), Dialect::Canonical))
    });
    group.bench_function("event_from_value", |b| b.iter(|| Event::from_value("notification", black_box(&payload))));
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
