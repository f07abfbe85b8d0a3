//! Several `herald` processes sharing one Redis: fan-out across nodes, seed 000/004's
//! Redis channels, recovery after a node dies, Redis outages and an emptied Redis.
//! Every test starts its own `redis-server` on a free port and stops it by its PID.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use herald_auth::{Signer, TokenSpec};
use herald_testkit::process::{RedisServer, Server};
use herald_testkit::{SseClient, WsClient, eventually};
use serde_json::{Value, json};
use tokio::process::Command;

const SECRET: &str = "cluster-secret";
const API_KEY: &str = "cluster-key";

fn token(user: &str) -> String {
    Signer::secret(SECRET.as_bytes()).mint(&TokenSpec::new(user)).unwrap()
}

fn scratch_database(node: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("herald-cluster-test-{}-{node}-{}.db", std::process::id(), rand_suffix()))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A node of the cluster on `redis`, with extra environment.
async fn node(redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Server {
    herald(&[], redis, id, extra).await
}

/// `herald {args}` (serve without any) on Redis, named `id`.
async fn herald(args: &[&str], redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args);
    for name in ["DATABASE_URL", "HERALD_ENV", "NODE_ENV", "HERALD_DEV", "HERALD_CONFIG", "METRICS_ENABLED"] {
        command.env_remove(name);
    }
    command
        .env("HOST", "127.0.0.1")
        .env("LOG_LEVEL", "info")
        .env("JWT_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("REDIS_URL", redis.url())
        .env("HERALD_NODE_ID", id)
        .env("HERALD_SQLITE_PATH", scratch_database(id));
    for (name, value) in extra {
        command.env(name, value);
    }
    Server::start(command).await
}

async fn publish(server: &Server, body: Value) -> (u16, Value) {
    let response =
        reqwest::Client::new().post(server.http("/api/publish")).bearer_auth(API_KEY).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish_ok(server: &Server, body: Value) -> Value {
    let (status, body) = publish(server, body).await;
    assert_eq!(status, 202, "{body}");
    body
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new().get(server.http(path)).bearer_auth(API_KEY).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn is_ready(server: &Server) -> bool {
    get(server, "/ready").await.0 == 200
}

/// Waits until every node sees all of them in the registry.
async fn until_registered(nodes: &[&Server]) {
    for server in nodes {
        eventually("every node is in the registry", Duration::from_secs(10), || async {
            get(server, "/api/community/ws/health").await.1["data"]["cluster"]["nodes"] == nodes.len()
        })
        .await;
    }
}

async fn ws(server: &Server, user: &str, query: &str) -> WsClient {
    let mut client = WsClient::connect(&server.ws(&format!("/ws?token={}{query}", token(user)))).await.unwrap();
    client.next_event("connected").await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_every_transport_on_every_node_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "a", &[]).await;
    let b = node(&redis, "b", &[]).await;
    let mut on_a = ws(&a, "alice", "").await;
    let mut on_b = ws(&b, "alice", "").await;
    let mut sse_b = SseClient::connect(&b.http("/events"), Some(&token("alice"))).await.unwrap();
    assert_eq!(sse_b.next().await.event, "connected");
    let mut sio_b = herald_testkit::NodeClient::start(
        "sio-driver.mjs",
        &[
            ("HERALD_URL", b.http("/")),
            ("SIO_OPTIONS", json!({"auth": {"token": token("alice")}, "transports": ["websocket"]}).to_string()),
        ],
    );
    sio_b.event("connected").await;
    eventually("both nodes subscribed to alice's topic", Duration::from_secs(5), || async {
        redis.cli(&["PUBSUB", "NUMSUB", "herald:c:user:alice"]).await.ends_with('2')
    })
    .await;

    for (n, from) in [&a, &b].into_iter().enumerate() {
        let published =
            publish_ok(from, json!({"topics": ["user:alice", "global"], "event": "hello", "data": {"n": n}})).await;
        for client in [&mut on_a, &mut on_b] {
            let frame = client.next_json().await;
            assert_eq!((&frame["type"], &frame["payload"]["n"]), (&json!("hello"), &json!(n)));
            assert_eq!((&frame["epoch"], &frame["offset"]), (&published["epoch"], &published["offset"]));
        }
        let event = sse_b.next().await;
        assert_eq!(event.id, format!("{}:{}", published["epoch"].as_str().unwrap(), published["offset"]));
        assert_eq!(sio_b.event("hello").await[0]["n"], n);
    }
    // Each event arrived once although it was published to two topics: the next frame
    // on each socket is the marker, not a second copy.
    publish_ok(&a, json!({"topic": "user:alice", "event": "marker"})).await;
    assert_eq!(on_a.next_json().await["type"], "marker");
    assert_eq!(on_b.next_json().await["type"], "marker");

    // Nodes subscribe in Redis only to topics with local subscribers.
    on_b.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:only-b"}})).await;
    assert_eq!(on_b.next_json().await["type"], "subscribed");
    eventually("b subscribed to the channel", Duration::from_secs(5), || async {
        redis.cli(&["PUBSUB", "NUMSUB", "herald:c:channel:only-b"]).await.ends_with('1')
    })
    .await;
    publish_ok(&a, json!({"topic": "channel:only-b", "event": "news"})).await;
    assert_eq!(on_b.next_json().await["type"], "news");
    on_b.send_json(json!({"type": "unsubscribe", "payload": {"topic": "channel:only-b"}})).await;
    assert_eq!(on_b.next_json().await["type"], "unsubscribed");
    eventually("nobody subscribed to the channel any more", Duration::from_secs(5), || async {
        redis.cli(&["PUBSUB", "NUMSUB", "herald:c:channel:only-b"]).await.ends_with('0')
    })
    .await;

    // Cluster-wide figures and presence.
    until_registered(&[&a, &b]).await;
    let (_, health) = get(&a, "/api/community/ws/health").await;
    eventually("the registry counts every connection", Duration::from_secs(5), || async {
        get(&a, "/api/community/ws/health").await.1["data"]["cluster"]["totalConnections"] == 4
    })
    .await;
    assert_eq!(health["data"]["websocket"]["totalConnections"], 1, "this node's own figure stays local");
    eventually("alice is present on both nodes", Duration::from_secs(5), || async {
        let (_, body) = get(&a, "/api/users/alice/presence").await;
        body["presence"] == json!({"online": true, "connections": 4, "nodes": ["a", "b"]})
    })
    .await;
    let (_, nobody) = get(&b, "/api/users/nobody/presence").await;
    assert_eq!(nobody["presence"]["online"], false);
    let metrics = reqwest::get(a.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_cluster_nodes 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_and_004_producers_publishing_to_redis_reach_clients_unchanged() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "a", &[]).await;
    let b = node(&redis, "b", &[]).await;
    let mut user = ws(&b, "42", "").await;
    let mut channel = ws(&a, "reader", "").await;
    channel.send_json(json!({"type": "subscribe", "payload": {"topic": "channel:sports"}})).await;
    assert_eq!(channel.next_json().await["type"], "subscribed");
    // One node (the lease holder) listens to the seed channels.
    eventually("a node listens to the seed channels", Duration::from_secs(10), || async {
        redis.cli(&["PUBSUB", "NUMPAT"]).await == "2"
    })
    .await;

    let notification = json!({"id": "n1", "type": "NEW_FOLLOWER", "title": "<b>Hi</b>", "data": {"from": 7}});
    assert_eq!(redis.cli(&["PUBLISH", "notifications:user:42", "not json {"]).await, "1");
    redis.cli(&["PUBLISH", "notifications:user:42", &notification.to_string()]).await;
    redis.cli(&["PUBLISH", "notifications:channel:sports", r#"{"score":"1-0"}"#]).await;
    redis.cli(&["PUBLISH", "notifications:global", r#"{"maintenance":true}"#]).await;

    let frame = user.next_json().await;
    assert_eq!(
        (&frame["type"], &frame["payload"]),
        (&json!("notification"), &notification),
        "the bad message was skipped"
    );
    assert!(frame["offset"].as_u64().is_some(), "seed messages get positions like any other: {frame}");
    assert_eq!(user.next_json().await["payload"], json!({"maintenance": true}));
    assert_eq!(channel.next_json().await["payload"], json!({"score": "1-0"}));
    assert_eq!(channel.next_json().await["payload"], json!({"maintenance": true}));

    let mut malformed = 0;
    for server in [&a, &b] {
        let metrics = reqwest::get(server.http("/metrics")).await.unwrap().text().await.unwrap();
        malformed += metrics
            .lines()
            .find(|line| line.starts_with("herald_seed_channel_messages_total{result=\"malformed\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert_eq!(malformed, 1, "the malformed message was counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_leaves_local_service_up_refuses_publishes_with_503_and_heals_by_itself() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, "a", &[]).await;
    let b = node(&redis, "b", &[]).await;
    let mut on_a = ws(&a, "carol", "").await;
    let mut on_b = ws(&b, "carol", "").await;
    eventually("both nodes ready", Duration::from_secs(5), || async { is_ready(&a).await && is_ready(&b).await }).await;

    redis.kill().await;
    for server in [&a, &b] {
        eventually("the node reports not ready", Duration::from_secs(5), || async { !is_ready(server).await }).await;
    }
    let (status, body) = publish(&a, json!({"topic": "user:carol", "event": "lost"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "BROKER_UNAVAILABLE");
    // Local connections are served: commands are answered, and a notification created
    // on this node reaches this node's session.
    on_a.send_json(json!({"type": "ping"})).await;
    assert_eq!(on_a.next_json().await["type"], "pong");
    let created = reqwest::Client::new()
        .post(a.http("/api/notifications"))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": "carol", "type": "ALERT", "payload": {"during": "outage"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(on_a.next_event("notification:new").await["payload"], json!({"during": "outage"}));
    let metrics = reqwest::get(a.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_broker_outages_total 1"), "{metrics}");

    redis.restart().await;
    let back = tokio::time::Instant::now();
    for server in [&a, &b] {
        eventually("the node is ready again", Duration::from_secs(2), || async { is_ready(server).await }).await;
    }
    eprintln!("both nodes ready {:?} after Redis answered", back.elapsed());
    // Resubscribed: a publish on one node reaches the other's session again.
    publish_ok(&a, json!({"topic": "user:carol", "event": "healed"})).await;
    assert_eq!(on_b.next_event("healed").await, json!({}));
}

/// The position of a frame, as a client keeps it.
fn position_of(frame: &Value) -> String {
    format!("{}:{}", frame["epoch"].as_str().unwrap(), frame["offset"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_reconnect_elsewhere_and_miss_nothing() {
    const TOTAL: u64 = 300;
    let redis = RedisServer::start().await;
    let history = [("HERALD_HISTORY_SIZE", "1000")];
    let mut a = node(&redis, "a", &history).await;
    let b = node(&redis, "b", &history).await;
    until_registered(&[&a, &b]).await;
    let mut client = ws(&a, "dave", "").await;
    eventually("dave is present on a", Duration::from_secs(5), || async {
        get(&b, "/api/users/dave/presence").await.1["presence"]["nodes"] == json!(["a"])
    })
    .await;

    // A producer publishes through b the whole time.
    let publisher_url = b.http("/api/publish");
    let producer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 0..TOTAL {
            let body = json!({"topic": "user:dave", "event": "seq", "data": {"n": n}});
            let response = http.post(&publisher_url).bearer_auth(API_KEY).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 202);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut received = Vec::new();
    let mut last = String::new();
    while received.len() < 50 {
        let frame = client.next_json().await;
        received.push(frame["payload"]["n"].as_u64().unwrap());
        last = position_of(&frame);
    }
    a.kill().await;
    drop(client);

    let mut client = ws(&b, "dave", &format!("&since={last}")).await;
    let mut recovered = None;
    while received.len() < TOTAL as usize {
        let frame = client.next_json().await;
        if frame["type"] == "recovered" {
            recovered = Some(frame["payload"].clone());
            continue;
        }
        received.push(frame["payload"]["n"].as_u64().unwrap());
    }
    producer.await.unwrap();
    assert_eq!(recovered.expect("a recovered frame")["recovered"], true);
    assert_eq!(received, (0..TOTAL).collect::<Vec<_>>(), "every message once, in order");

    // The dead node's presence expires with its heartbeat.
    eventually("the dead node is forgotten", Duration::from_secs(15), || async {
        let (_, body) = get(&b, "/api/users/dave/presence").await;
        body["presence"]["nodes"] == json!(["b"])
    })
    .await;
    until_registered(&[&b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_redis_starts_a_new_epoch_and_old_positions_are_not_recovered() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, "a", &[]).await;
    let mut client = ws(&a, "erin", "").await;
    publish_ok(&a, json!({"topic": "user:erin", "event": "before"})).await;
    let before = client.next_json().await;
    drop(client);

    redis.restart().await;
    eventually("the node is ready again", Duration::from_secs(2), || async { is_ready(&a).await }).await;
    let after = publish_ok(&a, json!({"topic": "user:erin", "event": "after"})).await;
    assert_ne!(after["epoch"], before["epoch"], "a new epoch");
    assert_eq!(after["offset"], 1, "offsets start again");

    let mut back = ws(&a, "erin", &format!("&since={}", position_of(&before))).await;
    let frame = back.next_json().await;
    assert_eq!(frame["type"], "recovered", "nothing of the new epoch is passed off as missed: {frame}");
    assert_eq!(frame["payload"]["recovered"], false);
    assert_eq!(frame["payload"]["epoch"], after["epoch"]);
}

async fn notify(server: &Server, user: &str, payload: Value) -> Value {
    let response = reqwest::Client::new()
        .post(server.http("/api/notifications"))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": user, "type": "ALERT", "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["notification"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_on_postgresql_serves_a_device_on_any_node_live_and_after_being_offline() {
    let redis = RedisServer::start().await;
    let schema = herald_testkit::TestSchema::new();
    let store = [("DATABASE_URL", schema.url.as_str()), ("HERALD_DATABASE_SCHEMA", schema.name.as_str())];
    let a = node(&redis, "a", &store).await;
    let b = node(&redis, "b", &store).await;

    // Created on a while frank is offline: his device gets it when it connects to b.
    let offline = notify(&a, "frank", json!({"n": 1})).await;
    let mut on_b = ws(&b, "frank", "").await;
    let caught_up = on_b.next_event("notification:new").await;
    assert_eq!(caught_up["id"], offline["id"]);

    // Created on a while frank is on b: pushed live through Redis.
    let live = notify(&a, "frank", json!({"n": 2})).await;
    loop {
        let event = on_b.next_event("notification:new").await;
        if event["id"] == live["id"] {
            break;
        }
        assert_eq!(event["id"], offline["id"], "only a duplicate of the first may come between: {event}");
    }
    schema.drop_schema().await;
}

/// Starts a node on `redis_url` that must fail to start; returns what it printed on stderr.
async fn startup_failure(redis_url: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("SSL_CERT_FILE")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("REDIS_URL", redis_url)
        .env("HERALD_SQLITE_PATH", scratch_database("refused"));
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    assert!(!output.status.success(), "the node started on {redis_url}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_redis_url_is_used_and_a_wrong_one_stops_startup() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    let with_password = format!("redis://:s3cret@127.0.0.1:{}", redis.port());
    let a = node(&redis, "a", &[("REDIS_URL", &with_password)]).await;
    eventually("the node is ready", Duration::from_secs(5), || async { is_ready(&a).await }).await;
    let mut client = ws(&a, "gina", "").await;
    publish_ok(&a, json!({"topic": "user:gina", "event": "through-redis"})).await;
    assert_eq!(client.next_json().await["type"], "through-redis");

    let stderr = startup_failure(&format!("redis://:wrong@127.0.0.1:{}", redis.port())).await;
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("wrong@"), "the password is not printed: {stderr}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
async fn certificates(dir: &std::path::Path) {
    let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=herald-test-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.crt 2>/dev/null
"#;
    let status = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().await.unwrap();
    assert!(status.success(), "openssl made the certificates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls_and_verify_the_server() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path()).await;
    let redis = RedisServer::start_tls(&dir.path().join("server.crt"), &dir.path().join("server.key")).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port());
    let ca = dir.path().join("ca.crt").display().to_string();
    // The CA is trusted through the system trust store's standard override.
    let a = node(&redis, "a", &[("REDIS_URL", &url), ("SSL_CERT_FILE", &ca)]).await;
    eventually("the node is ready", Duration::from_secs(5), || async { is_ready(&a).await }).await;
    let mut client = ws(&a, "hank", "").await;
    publish_ok(&a, json!({"topic": "user:hank", "event": "over-tls"})).await;
    assert_eq!(client.next_json().await["type"], "over-tls");

    // Without the CA the certificate is not trusted and startup fails.
    let stderr = startup_failure(&url).await;
    assert!(stderr.contains("cannot reach Redis"), "an untrusted certificate is refused: {stderr}");
}

async fn request(server: &Server, method: &str, path: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, server.http(path)).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends a command frame and returns its ack payload.
async fn ask(ws: &mut WsClient, kind: &str, payload: Value) -> Value {
    let id = format!("{kind}-{}", rand_suffix());
    ws.send_json(json!({"type": kind, "payload": payload, "id": id})).await;
    ws.expect_where(|frame| frame["type"] == "ack" && frame["payload"]["id"] == id.as_str()).await["payload"].clone()
}

async fn said(ws: &mut WsClient, content: &str) -> Value {
    let ack = ask(ws, "message:new", json!({"roomId": "r1", "content": content})).await;
    assert_eq!(ack["success"], true, "{ack}");
    ack
}

/// The frames before the `message:new` with `content`, which must arrive.
async fn before_message(ws: &mut WsClient, content: &str) -> Vec<Value> {
    ws.frames_until(|frame| frame["type"] == "message:new" && frame["payload"]["content"] == content).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_span_nodes_with_membership_blocks_and_removal_applied_everywhere() {
    let redis = RedisServer::start().await;
    let schema = herald_testkit::TestSchema::new();
    let store = [("DATABASE_URL", schema.url.as_str()), ("HERALD_DATABASE_SCHEMA", schema.name.as_str())];
    let a = node(&redis, "a", &store).await;
    let b = node(&redis, "b", &store).await;
    let members = json!({"members": ["alice", "bob", "mallory"]});
    assert_eq!(request(&a, "PUT", "/api/conversations/room:r1", API_KEY, Some(members)).await.0, 200);
    let mut alice_a = ws(&a, "alice", "").await;
    let mut alice_b = ws(&b, "alice", "").await;
    let mut bob_b = ws(&b, "bob", "").await;
    let mut mallory_a = ws(&a, "mallory", "").await;
    for client in [&mut alice_a, &mut alice_b, &mut bob_b, &mut mallory_a] {
        let ack = ask(client, "chat:join", json!({"roomId": "r1"})).await;
        assert_eq!(ack["success"], true, "{ack}");
    }
    let mut outsider_b = ws(&b, "eve", "").await;
    let refused = ask(&mut outsider_b, "chat:join", json!({"roomId": "r1"})).await;
    assert_eq!(refused["error"]["code"], "MEMBERSHIP_REQUIRED");

    // A message from b reaches both of alice's devices, on a and on b; typing and
    // receipts cross too.
    let id = said(&mut bob_b, "from b").await["messageId"].as_str().unwrap().to_owned();
    before_message(&mut alice_a, "from b").await;
    before_message(&mut alice_b, "from b").await;
    ask(&mut bob_b, "message:typing", json!({"roomId": "r1"})).await;
    assert_eq!(alice_a.expect("message:typing").await["userId"], "bob");
    ask(&mut alice_a, "message:read", json!({"messageId": id})).await;
    assert_eq!(bob_b.expect("message:read").await["userId"], "alice");
    ask(&mut alice_a, "reaction:new", json!({"messageId": id, "emoji": "🎉"})).await;
    assert_eq!(bob_b.expect("reaction:new").await["emoji"], "🎉");

    // Presence crosses nodes: bob on b follows alice, who changes her status on a.
    let ack = ask(&mut bob_b, "presence:subscribe", json!({"userIds": ["alice"]})).await;
    assert_eq!(ack["presences"][0]["online"], true, "alice is online on both nodes: {ack}");
    ask(&mut alice_a, "presence:update", json!({"status": "busy", "customStatus": "in a call"})).await;
    let update =
        bob_b.expect_where(|frame| frame["type"] == "presence:update" && frame["payload"]["status"] == "busy").await;
    assert_eq!(update["payload"]["customStatus"], "in a call");

    // A call from a rings bob on b; his answer on b reaches alice on a, and her other
    // device on b is told too.
    let call = ask(&mut alice_a, "call:initiate", json!({"calleeId": "bob", "type": "audio"})).await;
    let call_id = call["callId"].as_str().unwrap().to_owned();
    assert_eq!(bob_b.expect("call:incoming").await["callId"].as_str(), Some(call_id.as_str()));
    ask(&mut bob_b, "call:answer", json!({"callId": call_id})).await;
    assert_eq!(alice_a.expect("call:answer").await["userId"], "bob");
    assert_eq!(alice_b.expect("call:answer").await["state"], "active");

    // Alice blocks mallory through node b: her device on a stops hearing mallory too.
    let (status, _) = request(&b, "POST", "/api/me/blocks", &token("alice"), Some(json!({"userId": "mallory"}))).await;
    assert_eq!(status, 200);
    alice_a.expect("block:updated").await;
    alice_b.expect("block:updated").await;
    said(&mut mallory_a, "from mallory").await;
    said(&mut bob_b, "marker").await;
    for client in [&mut alice_a, &mut alice_b] {
        let frames = before_message(client, "marker").await;
        assert!(frames.iter().all(|f| f["payload"]["authorId"] != "mallory"), "blocked sender heard: {frames:?}");
    }

    // Bob is removed through node a: his session on b is told, then hears nothing more.
    let (status, _) = request(&a, "DELETE", "/api/conversations/room:r1/members/bob", API_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(bob_b.expect("chat:updated").await["removed"], json!(["bob"]));
    said(&mut alice_a, "after bob").await;
    before_message(&mut alice_b, "after bob").await;
    publish_ok(&a, json!({"topic": "user:bob", "event": "marker", "data": {}})).await;
    let frames = bob_b.frames_until(|frame| frame["type"] == "marker").await;
    assert!(frames.iter().all(|frame| frame["payload"]["content"] != "after bob"), "{frames:?}");
    schema.drop_schema().await;
}

/// Seed 004 end to end on PostgreSQL: an application enqueues notification events in its
/// own transaction (`herald_enqueue`); two `herald worker` processes share them (SKIP
/// LOCKED), woken by NOTIFY; one is SIGKILLed in the middle of a batch. Every event
/// reaches the user's device (twice at most for the killed batch), enriched from the application's `User` and `Channel`
/// tables with the default queries, and the inbox holds each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_workers_share_events_and_a_killed_one_loses_and_duplicates_nothing() {
    const EVENTS: usize = 300;
    let redis = RedisServer::start().await;
    let schema = herald_testkit::TestSchema::new();
    let store = [("DATABASE_URL", schema.url.as_str()), ("HERALD_DATABASE_SCHEMA", schema.name.as_str())];
    // The node serves the user and runs no worker; the workers are their own processes.
    let mut serving = store.to_vec();
    serving.push(("HERALD_OUTBOX", "false"));
    let gateway = node(&redis, "gateway", &serving).await;
    // The application's tables (seed 004's Prisma models), beside Herald's; every event
    // comes from another user.
    schema.psql(&format!(
        r#"CREATE TABLE "User" (id TEXT PRIMARY KEY, name TEXT, image TEXT);
           CREATE TABLE "Channel" (id TEXT PRIMARY KEY, name TEXT);
           INSERT INTO "User" SELECT g::text, 'fan ' || g, 'avatars/' || g || '.png' FROM generate_series(1, {EVENTS}) g;
           INSERT INTO "Channel" VALUES ('3', 'Ada live');"#
    ))
    .await;
    let mut working = store.to_vec();
    working.extend([
        ("HERALD_OUTBOX_BATCH", "10"),
        ("HERALD_OUTBOX_LEASE", "3s"),
        ("HERALD_OUTBOX_POLL_INTERVAL", "5s"),
        ("CLOUDFRONT_DOMAIN", "cdn.example"),
    ]);
    // The first worker's user lookup hangs for any actor past the first half: the first
    // batch it claims there, it is still in the middle of when it is killed. The second
    // uses the default query (seed 004's schema).
    let mut hanging = working.clone();
    hanging.push((
        "HERALD_OUTBOX_USER_QUERY",
        r#"SELECT name, image, pg_sleep(CASE WHEN id::int > 150 THEN 60 ELSE 0 END)::text AS pause FROM "User" WHERE id = $1"#,
    ));
    let mut first = herald(&["worker"], &redis, "worker-1", &hanging).await;
    let second = herald(&["worker"], &redis, "worker-2", &working).await;
    for worker in [&first, &second] {
        eventually("the worker is ready", Duration::from_secs(10), || is_ready(worker)).await;
        assert_eq!(get(worker, "/ws").await.0, 404, "a worker serves no clients");
    }
    let mut alice = ws(&gateway, "alice", "").await;

    // One application transaction enqueues them all; the workers are idle, polling only
    // every 5 s, so the first arrival within 2.5 s shows NOTIFY woke them.
    let enqueued = std::time::Instant::now();
    let created = schema
        .psql(&format!(
            r#"BEGIN;
           SELECT count(*) FILTER (WHERE herald_enqueue('tip-' || g, 'user:alice', 'TIP',
               json_build_object('actorId', g, 'channelId', '3', 'amount', g)::text))
           FROM generate_series(1, {EVENTS}) g;
           COMMIT;"#
        ))
        .await;
    assert_eq!(created, EVENTS.to_string());
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let receive = |seen: &mut std::collections::HashMap<String, usize>, frame: Value| {
        let payload = &frame["payload"];
        assert_eq!(payload["channelName"], "Ada live", "{frame}");
        let actor = payload["actorId"].as_i64().expect("actorId");
        assert_eq!(payload["userName"], format!("fan {actor}"));
        assert_eq!(payload["userImage"], format!("https://cdn.example/avatars/{actor}.png"));
        *seen.entry(frame["id"].as_str().expect("notification id").to_owned()).or_default() += 1;
    };
    receive(&mut seen, alice.next_event("notification:new").await);
    assert!(
        enqueued.elapsed() < Duration::from_millis(2500),
        "woken by NOTIFY, not the poll: {:?}",
        enqueued.elapsed()
    );
    // Wait until all that is left is the first worker's stuck batch: claimed once, not done.
    let stuck = "SELECT count(*) FROM herald_outbox WHERE processed_at IS NULL";
    let claimed_once = "SELECT count(*) FROM herald_outbox WHERE processed_at IS NULL AND attempts = 1";
    eventually("only the stuck batch is left", Duration::from_secs(20), || async {
        let left = schema.psql(stuck).await;
        left != "0" && left == schema.psql(claimed_once).await && left.parse::<usize>().unwrap() <= 10
    })
    .await;
    let stuck: usize = schema.psql(stuck).await.parse().unwrap();
    first.kill().await;
    // Its lookups would sleep on in PostgreSQL (holding the `User` table the schema's drop
    // needs); end them.
    schema.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(CASE WHEN id::int > 150%' AND pid <> pg_backend_pid()").await;
    // The other worker finishes, retaking the killed one's batch when its lease runs out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < EVENTS {
        let frame = tokio::time::timeout_at(deadline, alice.next_event("notification:new"))
            .await
            .unwrap_or_else(|_| panic!("{} of {EVENTS} events arrived", seen.len()));
        receive(&mut seen, frame);
    }
    eventually("every event is marked processed", Duration::from_secs(10), || async {
        schema.psql("SELECT count(*) FROM herald_outbox WHERE processed_at IS NULL").await == "0"
    })
    .await;
    let stored = schema.psql("SELECT count(*) || ' ' || count(DISTINCT dedupe_key) FROM herald_notifications").await;
    assert_eq!(stored, format!("{EVENTS} {EVENTS}"), "each event stored once");
    // The killed worker's batch was done again by the other, and only that batch.
    let retaken: usize = schema.psql("SELECT count(*) FROM herald_outbox WHERE attempts > 1").await.parse().unwrap();
    assert_eq!(retaken, stuck, "the stuck batch was retaken");
    // A retaken event may reach the device twice (stored and pushed, then killed before
    // being marked done); only those, and with the same notification id.
    let twice = seen.values().filter(|count| **count > 1).count();
    assert!(twice <= retaken && seen.values().all(|count| *count <= 2), "{twice} delivered twice, {retaken} retaken");
    let metrics = reqwest::get(second.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_outbox_events_total{result=\"processed\"}"), "{metrics}");
    drop(second);
    drop(gateway);
    schema.drop_schema().await;
}
