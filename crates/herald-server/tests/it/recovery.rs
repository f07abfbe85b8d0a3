//! Positions and recovery on one node: a returning client names the last position it
//! saw and gets what it missed on its topics, in order, before anything new; or is told
//! `recovered: false` when the history no longer has it.

use herald_testkit::{SseClient, TestGateway, WsClient};
use serde_json::{Value, json};

use crate::support::{driver, publish_ok};

/// Publishes and returns the event's position `epoch:offset`.
async fn publish_at(gateway: &TestGateway, topic: &str, event: &str, n: u64) -> String {
    let (status, body) = gateway.publish(json!({"topic": topic, "event": event, "data": {"n": n}})).await;
    assert_eq!(status, 202, "{body}");
    format!("{}:{}", body["epoch"].as_str().expect("epoch"), body["offset"])
}

/// Frames until the `recovered` one, which is returned with the events before it.
async fn frames_until_recovered(client: &mut WsClient) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "recovered" {
            return (before, frame["payload"].clone());
        }
        before.push(frame);
    }
}

fn numbers(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|frame| frame["payload"]["n"].as_u64().expect("n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_websocket_client_gets_what_it_missed_in_order_then_live_events() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("ret");
    let mut first = gateway.ws(&format!("/ws?token={token}")).await;
    first.next_event("connected").await;
    publish_ok(&gateway, json!({"topic": "user:ret", "event": "seen", "data": {"n": 0}})).await;
    let seen = first.next_json().await;
    let since = format!("{}:{}", seen["epoch"].as_str().unwrap(), seen["offset"]);
    drop(first);

    publish_at(&gateway, "user:ret", "missed", 1).await;
    publish_at(&gateway, "channel:elsewhere", "not-mine", 99).await;
    publish_at(&gateway, "global", "missed", 2).await;
    let current = publish_at(&gateway, "user:ret", "missed", 3).await;

    let mut back = gateway.ws(&format!("/ws?token={token}&since={since}")).await;
    back.next_event("connected").await;
    let (missed, recovered) = frames_until_recovered(&mut back).await;
    assert_eq!(numbers(&missed), [1, 2, 3], "its own topics' events, in order: {missed:?}");
    assert_eq!(recovered["recovered"], true);
    assert_eq!(recovered["missed"], 3);
    assert_eq!(format!("{}:{}", recovered["epoch"].as_str().unwrap(), recovered["offset"]), current);
    publish_ok(&gateway, json!({"topic": "user:ret", "event": "live", "data": {"n": 4}})).await;
    assert_eq!(back.next_published().await["payload"]["n"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_history_or_another_epoch_is_reported_not_papered_over() {
    let gateway = TestGateway::builder().settings(|s| s.history.size = 2).spawn().await;
    let token = gateway.token("gap");
    let since = publish_at(&gateway, "user:gap", "seen", 0).await;
    for n in 1..=3 {
        publish_at(&gateway, "user:gap", "missed", n).await;
    }
    let mut back = gateway.ws(&format!("/ws?token={token}&since={since}")).await;
    back.next_event("connected").await;
    let (missed, recovered) = frames_until_recovered(&mut back).await;
    assert!(missed.is_empty(), "nothing partial is given: {missed:?}");
    assert_eq!((recovered["recovered"].clone(), recovered["missed"].clone()), (json!(false), json!(0)));

    let mut other = gateway.ws(&format!("/ws?token={token}&since=someotherepoch:1")).await;
    other.next_event("connected").await;
    assert_eq!(frames_until_recovered(&mut other).await.1["recovered"], false);

    // A client with nothing missed recovers trivially.
    let latest = publish_at(&gateway, "user:gap", "latest", 4).await;
    let mut current = gateway.ws(&format!("/ws?token={token}&since={latest}")).await;
    current.next_event("connected").await;
    let (missed, recovered) = frames_until_recovered(&mut current).await;
    assert!(missed.is_empty());
    assert_eq!(recovered["recovered"], true);

    let response = reqwest::get(gateway.http_url(&format!("/ws?token={token}&since=garbage"))).await.unwrap();
    assert_eq!(response.status(), 400, "a malformed position is refused before the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_with_since_recovers_that_topic() {
    let gateway = TestGateway::spawn().await;
    let mut client = gateway.ws(&format!("/ws?token={}", gateway.token("sub"))).await;
    client.next_event("connected").await;
    let since = publish_at(&gateway, "channel:news", "old", 0).await;
    publish_at(&gateway, "channel:news", "missed", 1).await;
    publish_at(&gateway, "channel:news", "missed", 2).await;
    client.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:news", "since": since}})).await;
    assert_eq!(client.next_json().await["type"], "subscribed");
    let (missed, recovered) = frames_until_recovered(&mut client).await;
    assert_eq!(numbers(&missed), [1, 2]);
    assert_eq!(recovered["recovered"], true);

    client.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:x", "since": "nope"}})).await;
    let error = client.next_json().await;
    assert_eq!((error["type"].clone(), error["payload"]["code"].clone()), (json!("error"), json!("INVALID_PAYLOAD")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_from_last_event_id() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("eventsource");
    let url = gateway.http_url("/events");
    let mut stream = SseClient::connect(&url, Some(&token)).await.unwrap();
    assert_eq!(stream.next().await.event, "connected");
    publish_ok(&gateway, json!({"topic": "user:eventsource", "event": "seen", "data": {"n": 0}})).await;
    let seen = stream.next().await;
    drop(stream);
    publish_at(&gateway, "user:eventsource", "missed", 1).await;
    let last = publish_at(&gateway, "global", "missed", 2).await;

    let mut back = SseClient::connect_with(&url, Some(&token), &[("Last-Event-ID", &seen.id)]).await.unwrap();
    assert_eq!(back.next().await.event, "connected");
    let first = back.next().await;
    let second = back.next().await;
    assert_eq!((first.event.as_str(), second.event.as_str()), ("missed", "missed"));
    assert_eq!(second.id, last, "recovered events keep their positions as ids");
    let recovered = back.next().await;
    assert_eq!(recovered.event, "recovered");
    assert_eq!(serde_json::from_str::<Value>(&recovered.data).unwrap()["recovered"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_socketio_client_recovers_by_itself() {
    let gateway = TestGateway::builder().settings(|s| s.history.size = 5).spawn().await;
    let options = json!({"auth": {"token": gateway.token("sio")}, "transports": ["websocket"]});
    let mut sio = driver(&gateway, "/", options);
    assert_eq!(sio.kind("connect").await["recovered"], false);
    sio.event("connected").await;
    publish_at(&gateway, "user:sio", "seen", 0).await;
    assert_eq!(sio.event("seen").await[0]["n"], 0);

    sio.send(json!({"drop": true})).await;
    sio.kind("disconnect").await;
    publish_at(&gateway, "user:sio", "missed", 1).await;
    publish_at(&gateway, "global", "missed", 2).await;
    sio.send(json!({"connect": true})).await;
    assert_eq!(sio.kind("connect").await["recovered"], true, "socket.recovered: the server gave the pid back");
    let mut missed = Vec::new();
    while missed.len() < 2 {
        let record =
            sio.until(|r| r["kind"] == "event" && r["event"] != "authenticated" && r["event"] != "connected").await;
        missed.push((record["event"].clone(), record["args"][0]["n"].clone()));
    }
    assert_eq!(missed, [(json!("missed"), json!(1)), (json!("missed"), json!(2))]);
    assert_eq!(sio.event("recovered").await[0]["recovered"], true);

    // Past the history window the client is told, and gets a new pid.
    sio.send(json!({"drop": true})).await;
    sio.kind("disconnect").await;
    for n in 0..6 {
        publish_at(&gateway, "user:sio", "flood", n).await;
    }
    sio.send(json!({"connect": true})).await;
    assert_eq!(sio.kind("connect").await["recovered"], false);
    assert_eq!(sio.event("recovered").await[0]["recovered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_can_name_its_position_in_auth() {
    let gateway = TestGateway::spawn().await;
    let since = publish_at(&gateway, "user:named", "seen", 0).await;
    publish_at(&gateway, "user:named", "missed", 1).await;
    let (epoch, offset) = since.rsplit_once(':').unwrap();
    for recover in [json!(since), json!({"epoch": epoch, "offset": offset.parse::<u64>().unwrap()})] {
        let auth = json!({"token": gateway.token("named"), "recover": recover});
        let mut sio = driver(&gateway, "/", json!({"auth": auth, "transports": ["websocket"]}));
        assert_eq!(sio.event("missed").await[0]["n"], 1, "{recover}");
        let recovered = sio.event("recovered").await;
        assert_eq!((recovered[0]["recovered"].clone(), recovered[0]["missed"].clone()), (json!(true), json!(1)));
    }
}
