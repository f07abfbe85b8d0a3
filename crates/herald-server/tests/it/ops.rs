//! Health, readiness, metrics, seed 001's health JSON, and graceful shutdown.

use herald_testkit::{Ended, SseClient, TestGateway};
use serde_json::json;

use crate::support::publish_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_community_health() {
    let gateway = TestGateway::spawn().await;
    let (status, health) = gateway.get_json("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = gateway.get_json("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["broker"], json!({"kind": "memory", "ready": true}));

    let token = gateway.token("u1");
    let mut first = gateway.ws(&format!("/ws?token={token}")).await;
    let mut second = gateway.ws(&format!("/api/community/ws?token={token}")).await;
    let mut other = gateway.ws(&format!("/ws?token={}", gateway.token("u2"))).await;
    first.next_event("connected").await;
    other.next_event("connected").await;
    second.send_json(json!({"type": "PING"})).await;
    second.next_json().await;
    let (status, body) = gateway.get_json("/api/community/ws/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    let websocket = &body["data"]["websocket"];
    assert_eq!(websocket["totalConnections"], 3);
    assert_eq!(websocket["uniqueUsers"], 2);
    assert_eq!(websocket["averageConnectionsPerUser"], 1.5);
    assert_eq!(websocket["isHealthy"], true);
    assert_eq!(body["data"]["pubsub"]["isHealthy"], true);
    assert!(body["data"]["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let gateway = TestGateway::spawn().await;
    let mut client = gateway.ws(&format!("/ws?token={}", gateway.token("m"))).await;
    client.next_event("connected").await;
    publish_ok(&gateway, json!({"topic": "user:m", "event": "metric-probe", "data": {}})).await;
    client.next_json().await;
    let (status, text) = gateway.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "herald_connections_active{transport=\"ws\"}",
        "herald_connections_total{transport=\"ws\"}",
        "herald_connections_peak{transport=\"ws\"}",
        "herald_events_out_total{event=\"metric-probe\"}",
        "herald_publish_to_enqueue_seconds_bucket",
        "herald_publishes_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_client_and_drains() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("leaving");
    let mut ws = gateway.ws(&format!("/ws?token={token}")).await;
    ws.next_event("connected").await;
    let mut sse = SseClient::connect(&gateway.http_url("/events"), Some(&token)).await.unwrap();
    sse.next().await;
    // A settled websocket transport: a client caught mid-upgrade from long-polling at the
    // moment of shutdown may only see the transport close (see docs/protocol.md).
    let options = json!({"auth": {"token": token}, "transports": ["websocket"]}).to_string();
    let mut sio = gateway.node("sio-driver.mjs", &[("SIO_OPTIONS", &options)]);
    sio.event("connected").await;
    publish_ok(&gateway, json!({"topic": "user:leaving", "event": "last-words", "data": {}})).await;

    gateway.shutdown().await;

    assert_eq!(ws.next_json().await["type"], "last-words", "queued events are flushed first");
    assert_eq!(ws.ended().await, Ended::Closed(1001, "server shutting down".into()));
    assert_eq!(sse.next().await.event, "last-words");
    let goodbye = sse.next().await;
    assert_eq!(goodbye.event, "error");
    assert!(goodbye.data.contains("SERVER_SHUTDOWN"));
    assert!(sse.next_or_end().await.is_none(), "the stream ends");
    assert_eq!(sio.event("last-words").await.len(), 2, "data and position");
    assert_eq!(sio.kind("disconnect").await["reason"], "io server disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let gateway =
        TestGateway::builder().settings(|s| s.cors_origins = vec!["https://app.example".into()]).spawn().await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gateway.http_url("/api/publish"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "https://app.example");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_json_404s() {
    let gateway = TestGateway::spawn().await;
    let (status, body) = gateway.get_json("/no/such/thing").await;
    assert_eq!(status, 404);
    assert_eq!(body["success"], false);
}
