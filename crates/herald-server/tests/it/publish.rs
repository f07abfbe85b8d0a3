//! `POST /api/publish`: delivery on every transport, and its errors.

use herald_testkit::{API_KEY, SseClient, TestGateway};
use serde_json::{Value, json};

use crate::support::publish_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_reaches_the_same_user_on_all_three_transports() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("everywhere");
    let mut ws = gateway.ws(&format!("/ws?token={token}")).await;
    ws.next_event("connected").await;
    let mut sse = SseClient::connect(&gateway.http_url("/events"), Some(&token)).await.unwrap();
    assert_eq!(sse.next().await.event, "connected");
    let mut sio = gateway.node("sio-driver.mjs", &[("SIO_OPTIONS", &json!({"auth": {"token": token}}).to_string())]);
    sio.event("connected").await;

    let data = json!({"id": "n-42", "type": "SYSTEM", "payload": {"message": "hello"}});
    publish_ok(&gateway, json!({"topic": "user:everywhere", "event": "notification", "data": data})).await;

    assert_eq!(ws.next_published().await, json!({"type": "notification", "payload": data}));
    let event = sse.next().await;
    assert_eq!(
        (event.event.as_str(), serde_json::from_str::<Value>(&event.data).unwrap()),
        ("notification", data.clone())
    );
    let args = sio.event("notification").await;
    assert_eq!(args[0], data);
    assert!(
        args[1].as_str().is_some_and(|position| position.contains(':')),
        "Socket.IO gets the position last: {args:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_list_delivers_once_per_session() {
    let gateway = TestGateway::spawn().await;
    let mut ws = gateway.ws(&format!("/ws?token={}", gateway.token("u1"))).await;
    ws.next_event("connected").await;
    let (status, body) =
        gateway.publish(json!({"topics": ["user:u1", "global", "user:u1"], "event": "e", "data": {"n": 1}})).await;
    assert_eq!(status, 202);
    assert_eq!(body["topics"], json!(["user:u1", "global"]));
    publish_ok(&gateway, json!({"topic": "user:u1", "event": "marker"})).await;
    assert_eq!(ws.next_json().await["type"], "e");
    assert_eq!(
        ws.next_published().await,
        json!({"type": "marker", "payload": {}}),
        "event defaults data to {{}} and arrives once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_are_json_with_stable_codes() {
    let gateway = TestGateway::builder().settings(|s| s.max_payload = 2048).spawn().await;
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (None, json!({"topic": "global"}).to_string(), 401, "TOKEN_MISSING"),
        (Some("wrong-key"), json!({"topic": "global"}).to_string(), 401, "TOKEN_INVALID"),
        (Some(API_KEY), "{not json".into(), 400, "INVALID_JSON"),
        (Some(API_KEY), json!({"data": {}}).to_string(), 400, "INVALID_TOPIC"),
        (Some(API_KEY), json!({"topic": "user:has space"}).to_string(), 400, "INVALID_TOPIC"),
        (Some(API_KEY), json!({"topics": []}).to_string(), 400, "INVALID_TOPIC"),
        (Some(API_KEY), json!({"topic": 5}).to_string(), 400, "INVALID_PAYLOAD"),
        (Some(API_KEY), json!({"topic": "global", "event": ""}).to_string(), 400, "INVALID_PAYLOAD"),
        (Some(API_KEY), json!({"topic": "global", "event": "a\nb"}).to_string(), 400, "INVALID_PAYLOAD"),
        (
            Some(API_KEY),
            json!({"topic": "global", "data": {"pad": "x".repeat(4096)}}).to_string(),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got_status, response) = gateway.post_json("/api/publish", key, body.clone()).await;
        assert_eq!(got_status, status, "{body}: {response}");
        assert_eq!(response["success"], false);
        assert_eq!(response["error"]["code"], code, "{body}: {response}");
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("channel:{i}")).collect();
    let (status, _) = gateway.publish(json!({"topics": too_many})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_and_sql_in_payloads_pass_through_verbatim() {
    let gateway = TestGateway::spawn().await;
    let mut ws = gateway.ws(&format!("/ws?token={}", gateway.token("v"))).await;
    ws.next_event("connected").await;
    let data = json!({"message": "<script>alert(1)</script>'; DROP TABLE users; --", "emoji": "🎉", "quote": "\"\\"});
    publish_ok(&gateway, json!({"topic": "user:v", "event": "odd", "data": data})).await;
    assert_eq!(ws.next_published().await, json!({"type": "odd", "payload": data}));
}
