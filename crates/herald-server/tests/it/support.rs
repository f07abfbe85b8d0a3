//! Helpers shared by the behaviour tests.

use std::future::Future;
use std::time::Duration;

use herald_testkit::{TestGateway, WAIT};
use serde_json::Value;

/// Polls `condition` until it holds (every 20 ms, at most [`WAIT`]). For state that is
/// only observable from outside (e.g. the server noticing a dead peer), not a sleep.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections the gateway counts right now (seed 001's health document).
pub async fn connection_count(gateway: &TestGateway) -> u64 {
    let (_, body) = gateway.get_json("/api/community/ws/health").await;
    body["data"]["websocket"]["totalConnections"].as_u64().expect("totalConnections")
}

/// A publish that must be accepted.
pub async fn publish_ok(gateway: &TestGateway, body: Value) {
    let (status, response) = gateway.publish(body).await;
    assert_eq!(status, 202, "{response}");
}

/// The npm socket.io-client connected to `path` (a namespace, optionally with a query).
pub fn driver(gateway: &TestGateway, path: &str, options: Value) -> herald_testkit::NodeClient {
    let url = gateway.http_url(path);
    gateway.node("sio-driver.mjs", &[("HERALD_URL", &url), ("SIO_OPTIONS", &options.to_string())])
}

/// Publishes `total` `bulk` events of 60 kB to `global` for a slow-consumer test, never more
/// than `window` events ahead of the count the reading client reports on `received`. The reader
/// keeps up by construction, however loaded the machine is, so only a client that does not
/// read at all can fill its queue.
pub async fn publish_bulk_paced(
    gateway: &TestGateway,
    total: usize,
    window: usize,
    received: &mut tokio::sync::watch::Receiver<usize>,
) {
    let padding = "x".repeat(60_000);
    for i in 0..total {
        herald_testkit::within("the reading client to catch up", received.wait_for(|n| n + window > i))
            .await
            .expect("the reading client is alive");
        publish_ok(gateway, serde_json::json!({"topic": "global", "event": "bulk", "data": {"i": i, "pad": padding}}))
            .await;
    }
}
