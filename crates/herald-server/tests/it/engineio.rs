//! Socket.IO below the official client: Engine.IO handshakes, long-polling requests and
//! raw WebSocket packets, for the cases a well-behaved client never produces.

use std::time::Duration;

use herald_testkit::{Ended, TestGateway, WsClient};
use serde_json::{Value, json};

use crate::support::{connection_count, eventually, publish_bulk_paced, publish_ok};

const POLLING: &str = "/socket.io/?EIO=4&transport=polling";
const WEBSOCKET: &str = "/socket.io/?EIO=4&transport=websocket";

/// A WebSocket speaking raw Engine.IO packets.
struct RawSocket {
    ws: WsClient,
}

impl RawSocket {
    async fn open(gateway: &TestGateway) -> (Self, Value) {
        Self::open_with(WsClient::connect(&gateway.ws_url(WEBSOCKET)).await.unwrap()).await
    }

    async fn open_with(ws: WsClient) -> (Self, Value) {
        let mut socket = Self { ws };
        let open = socket.next_packet().await;
        let handshake = serde_json::from_str(open.strip_prefix('0').expect("OPEN packet first")).unwrap();
        (socket, handshake)
    }

    async fn send(&mut self, packet: &str) {
        self.ws.send_text(packet).await;
    }

    /// The next text frame, answering pings on the way.
    async fn next_packet(&mut self) -> String {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        herald_testkit::within("an engine.io packet", async {
            loop {
                match self.ws.stream().next().await {
                    Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                        self.ws.stream().send(Message::text("3")).await.unwrap();
                    }
                    Some(Ok(Message::Text(text))) => return text.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
    }

    /// Reads until a packet starting with `prefix`; returns the rest.
    async fn until(&mut self, prefix: &str) -> String {
        loop {
            let packet = self.next_packet().await;
            if let Some(rest) = packet.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }
}

async fn get(gateway: &TestGateway, path: &str) -> (u16, String) {
    gateway.get_text(path).await
}

async fn post(gateway: &TestGateway, path: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new().post(gateway.http_url(path)).body(body.to_owned()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn engine_code(body: &str) -> i64 {
    serde_json::from_str::<Value>(body).unwrap()["code"].as_i64().expect("engine.io error code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_400_with_engine_io_codes() {
    let gateway = TestGateway::spawn().await;
    for (path, code) in [
        ("/socket.io/?EIO=3&transport=polling", 5),
        ("/socket.io/?EIO=4&transport=pigeon", 0),
        ("/socket.io/?EIO=4&transport=polling&sid=unknown", 1),
        ("/socket.io/?EIO=4&transport=websocket", 3),
    ] {
        let (status, body) = get(&gateway, path).await;
        assert_eq!((status, engine_code(&body)), (400, code), "GET {path}: {body}");
    }
    let (status, body) = post(&gateway, POLLING, "40").await;
    assert_eq!((status, engine_code(&body)), (400, 2), "a POST cannot open a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_by_hand() {
    let gateway = TestGateway::spawn().await;
    let (status, open) = get(&gateway, POLLING).await;
    assert_eq!(status, 200);
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    assert_eq!(handshake["pingInterval"], 25_000);
    let session = format!("{POLLING}&sid={}", handshake["sid"].as_str().unwrap());

    let token = gateway.token("poller");
    assert_eq!(post(&gateway, &session, &format!("40{}", json!({"token": token}))).await, (200, "ok".into()));
    let (_, body) = get(&gateway, &session).await;
    let packets: Vec<&str> = body.split('\x1e').collect();
    assert!(packets[0].starts_with("40{\"sid\":"), "{body}");
    assert!(packets[1].starts_with("42[\"authenticated\""), "{body}");
    assert!(packets[2].starts_with("42[\"connected\""), "{body}");

    let published = gateway.publish(json!({"topic": "user:poller", "event": "hello", "data": {"n": 1}})).await.1;
    let position = format!("{}:{}", published["epoch"].as_str().unwrap(), published["offset"]);
    // The position is the last argument, as with Socket.IO's own connection state recovery.
    assert_eq!(get(&gateway, &session).await, (200, format!("42[\"hello\",{{\"n\":1}},\"{position}\"]")));

    // Two polls at once: one is refused and the session ends, which the other learns.
    let (first, second) = tokio::join!(get(&gateway, &session), get(&gateway, &session));
    let mut answers = [first, second];
    answers.sort();
    assert_eq!(answers[0], (200, "1".into()), "the waiting poll is told the session closed");
    assert_eq!((answers[1].0, engine_code(&answers[1].1)), (400, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_polling_payload_ends_only_that_session() {
    let gateway = TestGateway::spawn().await;
    let sid_of = |open: String| {
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        format!("{POLLING}&sid={}", handshake["sid"].as_str().unwrap())
    };
    let bad = sid_of(get(&gateway, POLLING).await.1);
    let good = sid_of(get(&gateway, POLLING).await.1);
    let (status, body) = post(&gateway, &bad, "9nonsense").await;
    assert_eq!((status, engine_code(&body)), (400, 3));
    let after = get(&gateway, &bad).await;
    let closed = after == (200, "1".to_owned()) || (after.0 == 400 && engine_code(&after.1) == 1);
    assert!(closed, "the bad session is gone: {after:?}");
    let token = gateway.token("good");
    assert_eq!(post(&gateway, &good, &format!("40{}", json!({"token": token}))).await, (200, "ok".into()));
    assert!(get(&gateway, &good).await.1.starts_with("40{\"sid\":"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_packet_errors_are_answered_and_the_socket_survives() {
    let gateway = TestGateway::spawn().await;
    let (mut socket, handshake) = RawSocket::open(&gateway).await;
    assert_eq!(handshake["upgrades"], json!([]));

    socket.send("40/nope,").await;
    assert_eq!(socket.next_packet().await, "44/nope,{\"message\":\"Invalid namespace\"}");
    socket.send(&format!("40{}", json!({"token": "forged"}))).await;
    let refused: Value = serde_json::from_str(&socket.until("44").await).unwrap();
    assert!(refused["message"].as_str().unwrap().starts_with("TOKEN_INVALID"), "{refused}");

    socket.send(&format!("40{}", json!({"token": gateway.token("raw")}))).await;
    assert!(socket.next_packet().await.starts_with("40{\"sid\":"));
    socket.until("42[\"connected\"").await;

    socket.send("421{\"not\":\"an array\"}").await;
    let ack: Value = serde_json::from_str(&socket.until("431").await).unwrap();
    assert_eq!(ack[0]["error"]["code"], "INVALID_PAYLOAD", "{ack}");
    socket.send("451-2[\"subscribe\",{\"_placeholder\":true,\"num\":0}]").await;
    let ack: Value = serde_json::from_str(&socket.until("432").await).unwrap();
    assert_eq!(ack[0]["error"]["message"], "binary attachments are not supported; send JSON");
    socket.send("423[\"subscribe\",{\"topic\":\"channel:x\"}]").await;
    let ack: Value = serde_json::from_str(&socket.until("433").await).unwrap();
    assert_eq!(ack, json!([{"topic": "channel:x", "success": true}]));
    publish_ok(&gateway, json!({"topic": "channel:x", "event": "still-here", "data": 1})).await;
    assert!(socket.until("42[\"still-here\"").await.starts_with(",1,\""));

    socket.send("not engine.io").await;
    assert_eq!(socket.ws.ended().await, Ended::Closed(1003, "malformed engine.io packet".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let gateway = TestGateway::builder()
        .settings(|s| {
            s.socketio_ping_interval = Duration::from_millis(100);
            s.socketio_ping_timeout = Duration::from_millis(200);
        })
        .spawn()
        .await;
    let (mut answering, _) = RawSocket::open(&gateway).await;
    let (mut silent, _) = RawSocket::open(&gateway).await;
    answering.send(&format!("40{}", json!({"token": gateway.token("a")}))).await;
    silent.send(&format!("40{}", json!({"token": gateway.token("s")}))).await;
    answering.until("40").await;
    // The answering client keeps reading (and answering pings) until its event arrives.
    let answering = tokio::spawn(async move { answering.until("42[\"alive\"").await });
    // `ended` reads the pings without answering them.
    assert_eq!(silent.ws.ended().await, Ended::Dropped);
    eventually("only the answering client is left", || async { connection_count(&gateway).await == 1 }).await;
    publish_ok(&gateway, json!({"topic": "user:a", "event": "alive", "data": {}})).await;
    assert!(answering.await.unwrap().starts_with(",{},\""), "the event, then its position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_that_stops_reading_is_cut_off_and_others_get_everything() {
    let gateway = TestGateway::builder().settings(|s| s.socketio_buffer = 8).spawn().await;
    let stalled = WsClient::connect_with_small_window(&gateway.ws_url(WEBSOCKET)).await.unwrap();
    let (mut stalled, _) = RawSocket::open_with(stalled).await;
    stalled.send(&format!("40{}", json!({"token": gateway.token("stalled")}))).await;
    let (mut reader, _) = RawSocket::open(&gateway).await;
    reader.send(&format!("40{}", json!({"token": gateway.token("reader")}))).await;
    reader.until("42[\"connected\"").await;
    eventually("both sockets are connected", || async { connection_count(&gateway).await == 2 }).await;
    let total = 400;
    let (count, mut received) = tokio::sync::watch::channel(0);
    let reading = tokio::spawn(async move {
        while *count.borrow() < total {
            if reader.next_packet().await.starts_with("42[\"bulk\"") {
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
    assert!(metrics.contains("herald_slow_consumer_disconnects_total{transport=\"socketio\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_disconnects_the_namespace_with_its_reason() {
    let gateway = TestGateway::builder().settings(|s| s.auth.leeway_secs = 0).spawn().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = gateway.token_with_claims(json!({"sub": "short", "exp": now + 2}));
    let options = json!({"auth": {"token": token}, "transports": ["websocket"]}).to_string();
    let mut client = gateway.node("sio-driver.mjs", &[("SIO_OPTIONS", &options)]);
    client.kind("connect").await;
    let error = client.event("error").await;
    assert_eq!(error[0], json!({"code": "TOKEN_EXPIRED", "message": "token expired"}));
    assert_eq!(client.kind("disconnect").await["reason"], "io server disconnect");
}
