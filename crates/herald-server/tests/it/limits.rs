//! Connection limits: node-wide cap and per-IP rate.

use herald_testkit::{TestGateway, WsClient};
use tokio_tungstenite::tungstenite::Error;

async fn refused_status(gateway: &TestGateway, token: &str) -> (u16, serde_json::Value) {
    match WsClient::connect(&gateway.ws_url(&format!("/ws?token={token}"))).await {
        Err(Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connection was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_503() {
    let gateway = TestGateway::builder().settings(|s| s.max_connections = 2).spawn().await;
    let token = gateway.token("cap");
    let _first = gateway.ws(&format!("/ws?token={token}")).await;
    let _second = gateway.sse(&format!("/events?token={token}")).await;
    let (status, body) = refused_status(&gateway, &token).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "TOO_MANY_CONNECTIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_rate_limit_answers_429() {
    let gateway = TestGateway::builder().settings(|s| s.rate_limit_max_connections = 2).spawn().await;
    let token = gateway.token("rate");
    let _first = gateway.ws(&format!("/ws?token={token}")).await;
    let _second = gateway.ws(&format!("/ws?token={token}")).await;
    let (status, body) = refused_status(&gateway, &token).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}
