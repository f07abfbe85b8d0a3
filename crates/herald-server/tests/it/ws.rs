//! Plain WebSocket: `/ws` (canonical) and `/api/community/ws` (seed 001).

use herald_testkit::{Ended, TestGateway, WsClient};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{connection_count, eventually, publish_bulk_paced, publish_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_query_token_and_receives_user_publishes() {
    let gateway = TestGateway::spawn().await;
    let mut alice = gateway.ws(&format!("/ws?token={}", gateway.token("alice"))).await;
    let hello = alice.next_event("connected").await;
    assert_eq!(hello["userId"], "alice");
    assert_eq!(hello["topics"], json!(["global", "user:alice"]));

    publish_ok(&gateway, json!({"topic": "user:alice", "data": {"id": "n1", "type": "TIP"}})).await;
    let frame = alice.next_published().await;
    assert_eq!(frame, json!({"type": "notification", "payload": {"id": "n1", "type": "TIP"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_bearer_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let gateway = TestGateway::spawn().await;
    let mut request = gateway.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", gateway.token("bob")).parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("connects");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401_and_a_stable_code() {
    let gateway = TestGateway::spawn().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = gateway.token_with_claims(json!({"sub": "a", "exp": now - 3600}));
    let wrong_key = herald_auth::Signer::secret(b"not-the-secret").mint(&herald_auth::TokenSpec::new("a")).unwrap();
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    for (query, code) in [
        ("".to_owned(), "TOKEN_MISSING"),
        ("?token=garbage".to_owned(), "TOKEN_INVALID"),
        (format!("?token={expired}"), "TOKEN_EXPIRED"),
        (format!("?token={wrong_key}"), "TOKEN_INVALID"),
        (format!("?token={alg_none}"), "TOKEN_INVALID"),
    ] {
        let error = WsClient::connect(&gateway.ws_url(&format!("/ws{query}"))).await.err().expect("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("expected HTTP error, got {error:?}")
        };
        assert_eq!(response.status(), 401, "{query}");
        let body: serde_json::Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
    }
    assert_eq!(connection_count(&gateway).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_channels() {
    let gateway = TestGateway::spawn().await;
    let mut member = gateway.ws(&format!("/ws?token={}", gateway.token("m"))).await;
    let mut outsider = gateway.ws(&format!("/ws?token={}", gateway.token("o"))).await;
    member.next_event("connected").await;
    outsider.next_event("connected").await;

    member.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:news"}})).await;
    assert_eq!(member.next_json().await, json!({"type": "subscribed", "payload": {"topic": "channel:news"}}));
    publish_ok(&gateway, json!({"topic": "channel:news", "event": "headline", "data": {"n": 1}})).await;
    assert_eq!(member.next_published().await, json!({"type": "headline", "payload": {"n": 1}}));

    // The outsider's next frame is a marker published afterwards: the channel event never came.
    publish_ok(&gateway, json!({"topic": "user:o", "event": "marker", "data": {}})).await;
    assert_eq!(outsider.next_json().await["type"], "marker");

    member.send_json(json!({"type": "unsubscribe", "payload": {"topic": "channel:news"}})).await;
    assert_eq!(member.next_json().await["type"], "unsubscribed");
    publish_ok(&gateway, json!({"topic": "channel:news", "event": "headline", "data": {"n": 2}})).await;
    publish_ok(&gateway, json!({"topic": "user:m", "event": "marker", "data": {}})).await;
    assert_eq!(member.next_json().await["type"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_session_survives() {
    let gateway = TestGateway::spawn().await;
    let mut client = gateway.ws(&format!("/ws?token={}", gateway.token("alice"))).await;
    let mut bystander = gateway.ws(&format!("/ws?token={}", gateway.token("bystander"))).await;
    client.next_event("connected").await;
    bystander.next_event("connected").await;

    let cases = [
        ("{not json", "INVALID_JSON"),
        ("[1,2,3]", "INVALID_PAYLOAD"),
        (r#"{"payload":{}}"#, "INVALID_PAYLOAD"),
        (r#"{"type":"launch-missiles","payload":{}}"#, "UNKNOWN_EVENT"),
        (r#"{"type":"subscribe","payload":{"topic":7}}"#, "INVALID_PAYLOAD"),
        (r#"{"type":"subscribe"}"#, "INVALID_PAYLOAD"),
        (r#"{"type":"subscribe","payload":{"topic":"nope:1"}}"#, "INVALID_TOPIC"),
        (r#"{"type":"subscribe","payload":{"topic":"user:bob"}}"#, "FORBIDDEN"),
        (r#"{"type":"subscribe","payload":{"topic":"room:1"}}"#, "MEMBERSHIP_REQUIRED"),
    ];
    for (frame, code) in cases {
        client.send_text(frame).await;
        let reply = client.next_json().await;
        assert_eq!(reply["type"], "error", "{frame}");
        assert_eq!(reply["payload"]["code"], code, "{frame}: {reply}");
    }
    client.send_message(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(client.next_json().await["payload"]["code"], "INVALID_PAYLOAD");

    // Still subscribed and working, and the other session never noticed.
    publish_ok(&gateway, json!({"topic": "global", "event": "still-here", "data": {}})).await;
    assert_eq!(client.next_json().await["type"], "still-here");
    assert_eq!(bystander.next_json().await["type"], "still-here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009_and_others_are_unaffected() {
    let gateway = TestGateway::builder().settings(|s| s.max_payload = 4096).spawn().await;
    let mut client = gateway.ws(&format!("/ws?token={}", gateway.token("big"))).await;
    let mut bystander = gateway.ws(&format!("/ws?token={}", gateway.token("small"))).await;
    client.next_event("connected").await;
    bystander.next_event("connected").await;
    let huge = format!(r#"{{"type":"ping","payload":{{"pad":"{}"}}}}"#, "x".repeat(10_000));
    client.send_text(&huge).await;
    assert!(matches!(client.ended().await, Ended::Closed(1009, _)));
    bystander.send_json(json!({"type": "ping"})).await;
    assert_eq!(bystander.next_json().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_community_client_ping_pong() {
    // Seed 001: `new WebSocket(`${base}/api/community/ws?token=${token}`)`, then
    // `{type: 'PING', payload: {}}` answered by PONG.
    let gateway = TestGateway::spawn().await;
    let mut client = gateway.ws(&format!("/api/community/ws?token={}", gateway.token("user-123"))).await;
    client.send_json(json!({"type": "PING", "payload": {}})).await;
    let pong = client.next_json().await;
    assert_eq!(pong["type"], "PONG");
    assert!(pong["payload"]["timestamp"].as_u64().is_some());
    publish_ok(&gateway, json!({"topic": "user:user-123", "event": "notification", "data": {"x": 1}})).await;
    assert_eq!(client.next_published().await, json!({"type": "notification", "payload": {"x": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_session_with_4001() {
    let gateway = TestGateway::builder().settings(|s| s.auth.leeway_secs = 0).spawn().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = gateway.token_with_claims(json!({"sub": "short", "exp": now + 2}));
    let mut client = gateway.ws(&format!("/ws?token={token}")).await;
    assert_eq!(client.ended().await, Ended::Closed(4001, "token expired".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_close_with_4002_but_active_ones_stay() {
    let gateway = TestGateway::builder()
        .settings(|s| s.max_idle_time = Some(std::time::Duration::from_millis(1500)))
        .spawn()
        .await;
    let mut idle = gateway.ws(&format!("/ws?token={}", gateway.token("idle"))).await;
    let mut busy = gateway.ws(&format!("/ws?token={}", gateway.token("busy"))).await;
    busy.next_event("connected").await;
    let ended = tokio::spawn(async move { idle.ended().await });
    // The busy client keeps talking until the idle one has been closed.
    while !ended.is_finished() {
        busy.send_json(json!({"type": "ping"})).await;
        assert_eq!(busy.next_json().await["type"], "pong");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(ended.await.unwrap(), Ended::Closed(4002, "idle timeout".into()));
    busy.send_json(json!({"type": "ping"})).await;
    assert_eq!(busy.next_json().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_answer_pings_are_terminated() {
    let gateway =
        TestGateway::builder().settings(|s| s.heartbeat_interval = std::time::Duration::from_millis(200)).spawn().await;
    // This client never reads, so tungstenite never answers the server's pings.
    let _silent = gateway.ws(&format!("/ws?token={}", gateway.token("silent"))).await;
    let mut answering = gateway.ws(&format!("/ws?token={}", gateway.token("answering"))).await;
    let keep_reading = tokio::spawn(async move {
        // Reading answers pings; this session must survive.
        answering.ended().await
    });
    eventually("the silent client is dropped", || async { connection_count(&gateway).await == 1 }).await;
    assert!(!keep_reading.is_finished(), "the answering client is still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_others_get_everything() {
    let gateway = TestGateway::builder().settings(|s| s.session_queue = 8).spawn().await;
    let stalled =
        WsClient::connect_with_small_window(&gateway.ws_url(&format!("/ws?token={}", gateway.token("stalled"))))
            .await
            .unwrap();
    let mut reader = gateway.ws(&format!("/ws?token={}", gateway.token("reader"))).await;
    reader.next_event("connected").await;
    let total = 400;
    let (count, mut received) = tokio::sync::watch::channel(0);
    let reading = tokio::spawn(async move {
        while *count.borrow() < total {
            if reader.next_json().await["type"] == "bulk" {
                count.send_modify(|n| *n += 1);
            }
        }
        (*count.borrow(), reader)
    });
    publish_bulk_paced(&gateway, total, 4, &mut received).await;
    let (received, _reader) = reading.await.unwrap();
    assert_eq!(received, total, "the reading client got every event");
    eventually("the stalled client is disconnected", || async { connection_count(&gateway).await == 1 }).await;
    let (_, metrics) = gateway.get_text("/metrics").await;
    assert!(metrics.contains("herald_slow_consumer_disconnects_total{transport=\"ws\"}"), "{metrics}");
    drop(stalled);
}
