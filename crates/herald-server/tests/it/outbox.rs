//! The outbox worker embedded in a node (SQLite): events enqueued over the API are
//! enriched, stored in the inbox once and pushed; channel and global events are
//! published; failures are retried with backoff, then dead until retried by hand; bad
//! events are refused or parked with their error.

use std::time::Duration;

use herald_testkit::{API_KEY, TestGateway, WsClient};
use serde_json::{Value, json};

use crate::chat::device;

/// Enrichment queries over Herald's own tables, so the test needs no application schema:
/// a "user" is a conversation `room:{id}` and its name; a "channel" likewise `group:{id}`.
const USER_QUERY: &str = "SELECT name, 'avatars/' || substr(topic, 6) || '.png' AS image FROM herald_conversations WHERE topic = 'room:' || $1";
const CHANNEL_QUERY: &str = "SELECT name FROM herald_conversations WHERE topic = 'group:' || $1";

async fn gateway() -> TestGateway {
    TestGateway::builder()
        .settings(|s| {
            s.outbox.user_query = USER_QUERY.into();
            s.outbox.channel_query = CHANNEL_QUERY.into();
            s.outbox.cloudfront_domain = Some("d1.cloudfront.net".into());
            s.outbox.poll_interval = Duration::from_millis(20);
            s.outbox.backoff = Duration::from_millis(20);
            s.outbox.backoff_max = Duration::from_millis(40);
            s.outbox.max_attempts = 3;
        })
        .spawn()
        .await
}

/// An application's user or channel, as the enrichment queries above see it.
async fn named(gateway: &TestGateway, topic: &str, name: &str) {
    let (status, body) = gateway
        .request("PUT", &format!("/api/conversations/{topic}"), Some(API_KEY), Some(json!({"name": name})))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn enqueue(gateway: &TestGateway, event: Value) -> (u16, Value) {
    gateway.request("POST", "/api/outbox", Some(API_KEY), Some(event)).await
}

/// Waits (bounded) until the event reaches `state`; returns it.
async fn until_state(gateway: &TestGateway, event_id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = gateway.request("GET", &format!("/api/outbox/{event_id}"), Some(API_KEY), None).await;
        assert_eq!(status, 200, "{body}");
        if body["event"]["state"] == state {
            return body["event"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{event_id} never became {state}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn inbox_of(gateway: &TestGateway, user: &str) -> Vec<Value> {
    let (status, body) = gateway.request("GET", &format!("/api/users/{user}/notifications"), Some(API_KEY), None).await;
    assert_eq!(status, 200, "{body}");
    body["notifications"].as_array().cloned().unwrap_or_default()
}

async fn next_notification(ws: &mut WsClient) -> Value {
    ws.expect("notification:new").await
}

#[tokio::test]
async fn an_enqueued_tip_reaches_every_device_enriched_and_is_stored_once() {
    let gateway = gateway().await;
    named(&gateway, "room:7", "Ada").await;
    named(&gateway, "group:3", "Ada's streams").await;
    let mut phone = device(&gateway, "alice").await;
    let mut laptop = device(&gateway, "alice").await;
    let mut bob = device(&gateway, "bob").await;

    let tip = json!({"eventId": "tip-1", "recipient": "user:alice", "type": "TIP",
        "data": {"actorId": 7, "channelId": "3", "amount": 5, "currency": "USD"}});
    let (status, body) = enqueue(&gateway, tip.clone()).await;
    assert_eq!((status, body["enqueued"].clone()), (201, json!(true)), "{body}");
    for ws in [&mut phone, &mut laptop] {
        let pushed = next_notification(ws).await;
        assert_eq!(pushed["type"], "TIP", "{pushed}");
        let payload = &pushed["payload"];
        assert_eq!(payload["userName"], "Ada", "{pushed}");
        assert_eq!(payload["userImage"], "https://d1.cloudfront.net/avatars/7.png");
        assert_eq!(payload["channelName"], "Ada's streams");
        assert_eq!((payload["amount"].clone(), payload["currency"].clone()), (json!(5), json!("USD")));
    }
    let done = until_state(&gateway, "tip-1", "processed").await;
    assert_eq!(done["attempts"], 1);

    // The same event again: enqueued once, stored once.
    let (status, body) = enqueue(&gateway, tip).await;
    assert_eq!((status, body["enqueued"].clone()), (200, json!(false)), "{body}");
    assert_eq!(inbox_of(&gateway, "alice").await.len(), 1);
    assert!(inbox_of(&gateway, "bob").await.is_empty());

    // Bob got nothing of it: the next thing he sees is his own marker.
    let (status, _) = enqueue(
        &gateway,
        json!({"eventId": "sys-1", "recipient": "user:bob", "type": "SYSTEM",
        "data": {"text": "hello"}}),
    )
    .await;
    assert_eq!(status, 201);
    let first = next_notification(&mut bob).await;
    assert_eq!((first["type"].clone(), first["payload"]["text"].clone()), (json!("SYSTEM"), json!("hello")));
    assert!(first["payload"].get("userName").is_none(), "SYSTEM events are not enriched");
}

#[tokio::test]
async fn channel_and_global_events_are_published_as_notification() {
    let gateway = gateway().await;
    let mut fan = device(&gateway, "fan").await;
    fan.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:3"}})).await;
    fan.expect("subscribed").await;
    let mut other = device(&gateway, "other").await;

    enqueue(
        &gateway,
        json!({"eventId": "live-1", "recipient": "channel:3", "type": "LIVE", "data": {"title": "on air"}}),
    )
    .await;
    let live = fan.expect("notification").await;
    assert_eq!((live["id"].clone(), live["type"].clone()), (json!("live-1"), json!("LIVE")), "{live}");
    assert_eq!(live["payload"]["title"], "on air");
    assert!(live["createdAt"].is_string());

    enqueue(&gateway, json!({"eventId": "all-1", "recipient": "global", "type": "SYSTEM", "data": {}})).await;
    for ws in [&mut fan, &mut other] {
        assert_eq!(ws.expect("notification").await["id"], "all-1");
    }
    // `other` never saw live-1: the global event was the first notification it got.
    until_state(&gateway, "live-1", "processed").await;
}

/// A counter's value in `/metrics` (the recorder is shared by the gateways of this test
/// process, so tests compare before and after).
async fn counter(gateway: &TestGateway, series: &str) -> f64 {
    let metrics = gateway.get_text("/metrics").await.1;
    metrics.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

const DEAD: &str = r#"herald_outbox_events_total{result="dead"}"#;
const RETRIED: &str = r#"herald_outbox_events_total{result="retried"}"#;

#[tokio::test]
async fn a_missing_user_is_retried_with_backoff_then_dead_until_retried_by_hand() {
    let gateway = gateway().await;
    let mut alice = device(&gateway, "alice").await;
    let (dead_before, retried_before) = (counter(&gateway, DEAD).await, counter(&gateway, RETRIED).await);
    enqueue(
        &gateway,
        json!({"eventId": "follow-1", "recipient": "user:alice", "type": "FOLLOW",
        "data": {"actorId": "9"}}),
    )
    .await;
    let dead = until_state(&gateway, "follow-1", "dead").await;
    assert_eq!(dead["attempts"], 3, "max attempts made: {dead}");
    assert_eq!(dead["lastError"], "user 9 not found");
    let (_, listed) = gateway.request("GET", "/api/outbox/dead", Some(API_KEY), None).await;
    assert_eq!(listed["events"][0]["eventId"], "follow-1", "{listed}");
    assert!(counter(&gateway, DEAD).await >= dead_before + 1.0, "dead counted");
    assert!(counter(&gateway, RETRIED).await >= retried_before + 2.0, "two retries counted");

    // The user appears; a retry by hand delivers.
    named(&gateway, "room:9", "Grace").await;
    let (status, _) = gateway.request("POST", "/api/outbox/follow-1/retry", Some(API_KEY), None).await;
    assert_eq!(status, 200);
    let pushed = next_notification(&mut alice).await;
    assert_eq!((pushed["type"].clone(), pushed["payload"]["userName"].clone()), (json!("FOLLOW"), json!("Grace")));
    let done = until_state(&gateway, "follow-1", "processed").await;
    assert_eq!(done["attempts"], 1, "attempts started over: {done}");
    let (status, _) = gateway.request("POST", "/api/outbox/follow-1/retry", Some(API_KEY), None).await;
    assert_eq!(status, 404, "only dead events are retried");
}

#[tokio::test]
async fn bad_outbox_events_are_refused_or_parked_with_their_error() {
    let gateway = gateway().await;
    for (event, why) in [
        (json!({"eventId": "", "recipient": "user:a", "type": "TIP"}), "empty id"),
        (json!({"eventId": "b1", "recipient": "room:r1", "type": "TIP"}), "room recipient"),
        (json!({"eventId": "b2", "recipient": "user:", "type": "TIP"}), "empty user"),
        (json!({"eventId": "b3", "recipient": "user:a", "type": ""}), "empty type"),
        (json!({"eventId": "b4", "recipient": "user:a", "type": "TIP", "data": [1]}), "data not an object"),
        (json!({"eventId": "b5", "recipient": "user:a", "type": "TIP", "extra": 1}), "unknown field"),
    ] {
        let (status, body) = enqueue(&gateway, event).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body["error"]["code"].is_string(), "{why}: {body}");
    }
    let (status, _) = gateway.post_json("/api/outbox", Some(API_KEY), "{not json".into()).await;
    assert_eq!(status, 400);
    let (status, _) = gateway.post_json("/api/outbox", None, json!({}).to_string()).await;
    assert_eq!(status, 401);
    let (status, _) = gateway.request("GET", "/api/outbox/nope", Some(API_KEY), None).await;
    assert_eq!(status, 404);

    // A TIP with no actor to look up cannot succeed: dead at the first attempt.
    enqueue(&gateway, json!({"eventId": "b6", "recipient": "user:a", "type": "TIP", "data": {"amount": 1}})).await;
    let dead = until_state(&gateway, "b6", "dead").await;
    assert_eq!(
        (dead["attempts"].clone(), dead["lastError"].clone()),
        (json!(1), json!("no actorId to look the actor up by"))
    );
    // The worker goes on with the next event.
    let mut a = device(&gateway, "a").await;
    enqueue(&gateway, json!({"eventId": "ok-1", "recipient": "user:a", "type": "SYSTEM", "data": {}})).await;
    assert_eq!(next_notification(&mut a).await["type"], "SYSTEM");
}

/// With `HERALD_OUTBOX_MIRROR_URL`, an existing notify-wss listening on seed 000's Redis
/// channels gets every outbox event too, in seed 004's payload shape.
#[tokio::test]
async fn outbox_events_are_mirrored_into_seed_000_channels() {
    use tokio::io::AsyncBufReadExt;
    let redis = herald_testkit::process::RedisServer::start().await;
    let mut subscriber = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "SUBSCRIBE", "notifications:user:alice", "notifications:global"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli starts");
    let mut lines = tokio::io::BufReader::new(subscriber.stdout.take().expect("piped")).lines();
    let mut next = async || {
        tokio::time::timeout(herald_testkit::WAIT, lines.next_line())
            .await
            .expect("redis-cli answers")
            .unwrap()
            .unwrap()
    };
    // "subscribe", channel, count: twice.
    for _ in 0..6 {
        next().await;
    }
    let url = redis.url();
    let gateway = TestGateway::builder()
        .settings(|s| {
            s.outbox.mirror_url = Some(url);
            s.outbox.poll_interval = Duration::from_millis(20);
        })
        .spawn()
        .await;
    let mut alice = device(&gateway, "alice").await;
    enqueue(&gateway, json!({"eventId": "m1", "recipient": "user:alice", "type": "SYSTEM", "data": {"text": "hi"}}))
        .await;
    assert_eq!(next_notification(&mut alice).await["payload"]["text"], "hi", "Herald's own delivery");
    let (kind, channel, message) = (next().await, next().await, next().await);
    assert_eq!((kind.as_str(), channel.as_str()), ("message", "notifications:user:alice"));
    let message: Value = serde_json::from_str(&message).expect("JSON");
    assert_eq!((message["id"].clone(), message["userId"].clone()), (json!("m1"), json!("alice")), "{message}");
    assert_eq!((message["type"].clone(), message["payload"]["text"].clone()), (json!("SYSTEM"), json!("hi")));
    enqueue(&gateway, json!({"eventId": "m2", "recipient": "global", "type": "SYSTEM", "data": {}})).await;
    let (_, channel, message) = (next().await, next().await, next().await);
    assert_eq!(channel, "notifications:global");
    assert_eq!(serde_json::from_str::<Value>(&message).unwrap()["id"], "m2");
}
