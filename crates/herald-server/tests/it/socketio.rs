//! Socket.IO v4 with the official npm client: seed 000 and seed 002 client code, and the
//! generic driver for the rest.

use herald_testkit::TestGateway;
use serde_json::json;

use crate::support::publish_ok;

use crate::support::driver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_client_receives_notifications_and_joins_channels() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("viewer-1");
    let mut client = gateway.node("seed000-client.mjs", &[("TOKEN", &token)]);
    client.until(|r| r["kind"] == "log" && r["args"][0] == "Connected to notification server").await;

    let notification = json!({"id": "n1", "userId": "viewer-1", "type": "TIP", "payload": {"amount": 5}, "createdAt": "2024-01-01T00:00:00.000Z"});
    publish_ok(&gateway, json!({"topic": "user:viewer-1", "event": "notification", "data": notification})).await;
    let log = client.until(|r| r["kind"] == "log" && r["args"][0] == "New notification:").await;
    assert_eq!(log["args"][1], notification);

    client.send(json!({"joinChannel": "stream-9"})).await;
    // The join is acked by nothing in seed 000's code; publish until it lands, in order.
    let channel_event = json!({"id": "n2", "type": "SUB", "payload": {"channelId": "stream-9"}});
    crate::support::eventually("the channel join took effect", || async {
        gateway.running().state().hub.subscriber_count(&herald_core::Topic::parse("channel:stream-9").unwrap()) == 1
    })
    .await;
    publish_ok(&gateway, json!({"topic": "channel:stream-9", "data": channel_event})).await;
    let log = client.until(|r| r["kind"] == "log" && r["args"][0] == "New notification:").await;
    assert_eq!(log["args"][1], channel_event);

    // Another user's topic without the admin role: seed 000's `error` listener hears it.
    client.send(json!({"subscribeToUser": "someone-else"})).await;
    let error = client.until(|r| r["kind"] == "log-error").await;
    assert_eq!(error["args"][1]["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_authenticate_event_and_grace_period() {
    let gateway =
        TestGateway::builder().settings(|s| s.auth_timeout = std::time::Duration::from_millis(800)).spawn().await;
    let mut late = driver(&gateway, "/", json!({}));
    late.kind("connect").await;
    let before = late.emit_with_ack("join_channel", json!({"channelId": "c"})).await;
    assert_eq!(before["error"]["code"], "NOT_AUTHENTICATED");
    let reply = late.emit_with_ack("authenticate", json!({"token": gateway.token("late")})).await;
    assert_eq!(reply["success"], true);
    assert_eq!(late.event("authenticated").await[0]["success"], true);
    publish_ok(&gateway, json!({"topic": "user:late", "data": {"ok": 1}})).await;
    assert_eq!(late.event("notification").await[0], json!({"ok": 1}));
    // Everything before the notification has been read: the greeting came exactly once
    // (`authenticated` was consumed above, `connected` was skipped).
    let count = |name: &str| late.seen.iter().filter(|r| r["event"] == name).count();
    assert_eq!((count("authenticated"), count("connected")), (0, 1), "{:?}", late.seen);

    let mut wrong = driver(&gateway, "/", json!({}));
    wrong.kind("connect").await;
    let reply = wrong.emit_with_ack("authenticate", json!({"token": "forged"})).await;
    assert_eq!(reply["error"]["code"], "TOKEN_INVALID");

    // Never authenticates: disconnected after the grace period, with a reason.
    let error = wrong.until(|r| r["event"] == "error" && r["args"][0]["code"] == "NOT_AUTHENTICATED").await;
    assert_eq!(error["args"][0]["message"], "not authenticated within the grace period");
    assert_eq!(wrong.kind("disconnect").await["reason"], "io server disconnect");
    // The authenticated one is still there.
    publish_ok(&gateway, json!({"topic": "user:late", "data": {"ok": 2}})).await;
    assert_eq!(late.event("notification").await[0], json!({"ok": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_connect_error_with_a_stable_code() {
    let gateway = TestGateway::spawn().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = gateway.token_with_claims(json!({"sub": "a", "exp": now - 60}));
    for (path, auth, code) in [
        ("/", json!({"token": expired}), "TOKEN_EXPIRED"),
        ("/", json!({"token": "x.y.z"}), "TOKEN_INVALID"),
        ("/notifications", json!({}), "TOKEN_MISSING"),
    ] {
        let mut client = driver(&gateway, path, json!({"auth": auth}));
        let error = client.kind("connect_error").await;
        assert!(error["message"].as_str().unwrap().starts_with(code), "{path}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_acks_and_refuse_bad_payloads() {
    let gateway = TestGateway::spawn().await;
    let mut admin = driver(&gateway, "/", json!({"auth": {"token": gateway.token_with_roles("root", &["admin"])}}));
    let connected = admin.event("connected").await;
    assert_eq!(connected[0]["userId"], "root");

    assert_eq!(admin.emit_with_ack("subscribe_user", json!({"userId": "bob"})).await["success"], true);
    assert_eq!(
        admin.emit_with_ack("subscribe", json!({"topic": "channel:x"})).await,
        json!({"success": true, "topic": "channel:x"})
    );
    assert_eq!(admin.emit_with_ack("leave_channel", json!({"channelId": "x"})).await["success"], true);
    for (event, data, code) in [
        ("join_channel", json!({}), "INVALID_PAYLOAD"),
        ("join_channel", json!("just a string"), "INVALID_PAYLOAD"),
        ("join_channel", json!({"channelId": "has space"}), "INVALID_TOPIC"),
        ("subscribe", json!({"topic": "bogus"}), "INVALID_TOPIC"),
        ("subscribe", json!({"topic": "group:1"}), "MEMBERSHIP_REQUIRED"),
        ("self-destruct", json!({}), "UNKNOWN_EVENT"),
    ] {
        let reply = admin.emit_with_ack(event, data.clone()).await;
        assert_eq!(reply["success"], false, "{event} {data}");
        assert_eq!(reply["error"]["code"], code, "{event} {data}: {reply}");
    }
    publish_ok(&gateway, json!({"topic": "user:bob", "event": "for-bob", "data": {"n": 1}})).await;
    assert_eq!(admin.event("for-bob").await[0], json!({"n": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_upgrades_to_websocket_and_polling_alone_works() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("poller");
    let mut upgrading = driver(&gateway, "/", json!({"auth": {"token": token}}));
    assert_eq!(upgrading.kind("open").await["transport"], "polling");
    assert_eq!(upgrading.kind("upgrade").await["transport"], "websocket");

    let mut polling_only = driver(&gateway, "/", json!({"auth": {"token": token}, "transports": ["polling"]}));
    polling_only.kind("connect").await;
    publish_ok(&gateway, json!({"topic": "user:poller", "data": {"via": "both"}})).await;
    assert_eq!(polling_only.event("notification").await[0], json!({"via": "both"}));
    assert_eq!(upgrading.event("notification").await[0], json!({"via": "both"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_client_subscribes_and_receives_notifications() {
    let gateway = TestGateway::spawn().await;
    let token = gateway.token("payer-7");
    let mut client = gateway.node("seed002-client.mjs", &[("TOKEN", &token)]);
    client.until(|r| r["kind"] == "log" && r["args"][0] == "Successfully subscribed to notifications").await;
    publish_ok(
        &gateway,
        json!({"topic": "user:payer-7", "event": "notification", "data": {"isNew": true, "title": "Escrow released"}}),
    )
    .await;
    let alert = client.kind("alert").await;
    assert_eq!(alert["notification"]["title"], "Escrow released");
    publish_ok(&gateway, json!({"topic": "user:payer-7", "event": "notification:unread-count", "data": {"count": 3}}))
        .await;
    assert_eq!(client.kind("badge").await["count"], 3, "notification:unread-count reaches seed 002 as unread_count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_namespace_accepts_the_query_token() {
    let gateway = TestGateway::spawn().await;
    let path = format!("/notifications?token={}", gateway.token("q"));
    let mut client = driver(&gateway, &path, json!({}));
    client.kind("connect").await;
    assert_eq!(
        client.emit_with_ack("subscribe_notifications", json!({})).await,
        json!({"success": true, "unreadCount": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_disconnects_only_its_sender() {
    let gateway = TestGateway::builder().settings(|s| s.max_payload = 8 * 1024).spawn().await;
    let options = json!({"auth": {"token": gateway.token("big")}, "transports": ["websocket"]});
    let mut big = driver(&gateway, "/", options);
    big.kind("connect").await;
    let mut small =
        driver(&gateway, "/", json!({"auth": {"token": gateway.token("small")}, "transports": ["websocket"]}));
    small.kind("connect").await;
    big.emit("subscribe", json!({"topic": "channel:1", "pad": "x".repeat(20_000)})).await;
    big.kind("disconnect").await;
    assert_eq!(small.emit_with_ack("subscribe", json!({"topic": "channel:1"})).await["success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_the_moment_a_socket_connects_are_never_lost() {
    // socketioxide runs the connect handler after sending CONNECT; Herald registers its
    // handlers before that, so an immediate `join_channel` always finds them.
    let gateway = TestGateway::spawn().await;
    let tokens: Vec<String> = (0..10).map(|i| gateway.token(&format!("burst{i}"))).collect();
    let tokens = serde_json::to_string(&tokens).unwrap();
    let mut burst = gateway.node("burst-join.mjs", &[("COUNT", "200"), ("TOKENS", &tokens)]);
    let result = burst.kind("result").await;
    assert_eq!(result["acked"], 200, "{result}");
}
