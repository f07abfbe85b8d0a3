//! SSE: `/events` (canonical) and `/notifications/events` (seed 002).

use herald_testkit::{SseClient, TestGateway};
use serde_json::{Value, json};

use crate::support::publish_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_carries_event_data_and_the_stream_position_as_id() {
    let gateway = TestGateway::spawn().await;
    let mut stream = gateway.sse(&format!("/events?token={}", gateway.token("alice"))).await;
    let hello = stream.next().await;
    assert_eq!(hello.event, "connected");
    assert_eq!(serde_json::from_str::<Value>(&hello.data).unwrap()["userId"], "alice");

    publish_ok(&gateway, json!({"topic": "user:alice", "data": {"id": "n1"}})).await;
    publish_ok(&gateway, json!({"topic": "global", "event": "system", "data": {"text": "line1\nline2"}})).await;
    let first = stream.next().await;
    assert_eq!(first.event, "notification");
    assert_eq!(serde_json::from_str::<Value>(&first.data).unwrap(), json!({"id": "n1"}));
    let second = stream.next().await;
    assert_eq!(second.event, "system");
    assert_eq!(serde_json::from_str::<Value>(&second.data).unwrap(), json!({"text": "line1\nline2"}));
    // Published events carry their stream position `epoch:offset` as `id:`, so
    // `Last-Event-ID` names where a reconnecting client stopped.
    let (epoch, offset) = first.id.rsplit_once(':').expect("first id is epoch:offset");
    assert_eq!(second.id, format!("{epoch}:{}", offset.parse::<u64>().unwrap() + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_works_and_bad_tokens_get_401() {
    let gateway = TestGateway::spawn().await;
    let mut stream = SseClient::connect(&gateway.http_url("/events"), Some(&gateway.token("bob"))).await.unwrap();
    assert_eq!(stream.next().await.event, "connected");
    for url in ["/events", "/events?token=nope", "/notifications/events?token=x.y.z"] {
        assert_eq!(SseClient::connect(&gateway.http_url(url), None).await.err(), Some(401), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_notifications_stream_uses_type_and_data_messages() {
    // Seed 002's EventSource client reads `event.data` as `{type, data}` in onmessage.
    let gateway = TestGateway::spawn().await;
    let mut stream =
        SseClient::connect(&gateway.http_url("/notifications/events"), Some(&gateway.token("payer"))).await.unwrap();
    publish_ok(&gateway, json!({"topic": "user:payer", "event": "notification", "data": {"isNew": true}})).await;
    let message = stream.next().await;
    assert_eq!(message.event, "message", "seed 002 listens with onmessage, so no event: field");
    let body: Value = serde_json::from_str(&message.data).unwrap();
    assert_eq!(body, json!({"type": "notification", "data": {"isNew": true}}));
}
