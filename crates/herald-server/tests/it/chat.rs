//! Conversations on one node: membership, messages, receipts, typing, reactions, blocks,
//! removal, rate limits and bad input, with two users on two devices each over plain
//! WebSocket and the official socket.io-client, and seed 001's community dialect.
//!
//! "Receives nothing" is shown by order, not by waiting: after the event that must not
//! arrive, a marker that travels the same path after it does arrive, and nothing
//! forbidden came before it.

use std::time::Duration;

use herald_testkit::{API_KEY, NodeClient, TestGateway, WsClient};
use serde_json::{Value, json};

use crate::support::{driver, publish_ok};

const ROOM: &str = "room:r1";

/// Creates `topic` with `members` through the server API.
pub async fn conversation(gateway: &TestGateway, topic: &str, members: &[&str]) {
    let (status, body) = gateway
        .request("PUT", &format!("/api/conversations/{topic}"), Some(API_KEY), Some(json!({"members": members})))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A canonical `/ws` client of `user`, past its greeting.
pub async fn device(gateway: &TestGateway, user: &str) -> WsClient {
    let mut ws = gateway.ws(&format!("/ws?token={}", gateway.token(user))).await;
    ws.expect("connected").await;
    ws
}

/// Sends a command frame and returns its ack payload.
pub async fn ask(ws: &mut WsClient, kind: &str, payload: Value) -> Value {
    let id = format!("{kind}-{}", rand_id());
    ws.send_json(json!({"type": kind, "payload": payload, "id": id})).await;
    ws.expect_where(|frame| frame["type"] == "ack" && frame["payload"]["id"] == id.as_str()).await["payload"].clone()
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Joins `topic` and checks the ack.
pub async fn join(ws: &mut WsClient, topic: &str) {
    let ack = ask(ws, "chat:join", json!({"topic": topic})).await;
    assert_eq!(ack["success"], true, "{ack}");
}

/// Posts `content` and returns the ack.
pub async fn say(ws: &mut WsClient, topic: &str, content: &str) -> Value {
    let ack = ask(ws, "message:new", json!({"topic": topic, "content": content})).await;
    assert_eq!(ack["success"], true, "{ack}");
    ack
}

/// The `message:new` payload with `content`, read from `ws`.
pub async fn heard(ws: &mut WsClient, content: &str) -> Value {
    ws.expect_where(|frame| frame["type"] == "message:new" && frame["payload"]["content"] == content).await["payload"]
        .clone()
}

/// Frames up to the `message:new` with `content`: none may satisfy `forbidden`.
pub async fn nothing_before(ws: &mut WsClient, content: &str, forbidden: impl Fn(&Value) -> bool) {
    let frames =
        ws.frames_until(|frame| frame["type"] == "message:new" && frame["payload"]["content"] == content).await;
    let bad: Vec<&Value> = frames.iter().filter(|frame| forbidden(frame)).collect();
    assert!(bad.is_empty(), "received what it must not: {bad:?}");
}

/// The socket.io-client of `user` on `/`, connected.
async fn sio_device(gateway: &TestGateway, user: &str) -> NodeClient {
    let mut client = driver(gateway, "/", json!({"auth": {"token": gateway.token(user)}, "transports": ["websocket"]}));
    client.kind("connect").await;
    client
}

#[tokio::test]
async fn members_on_both_transports_get_messages_and_outsiders_nothing() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let mut alice_phone = device(&gateway, "alice").await;
    let mut alice_laptop = device(&gateway, "alice").await;
    let mut bob_phone = device(&gateway, "bob").await;
    let mut bob_laptop = sio_device(&gateway, "bob").await;
    let mut mallory = device(&gateway, "mallory").await;
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob_phone] {
        join(ws, ROOM).await;
    }
    let ack = bob_laptop.emit_with_ack("chat:join", json!({"roomId": "r1"})).await;
    assert_eq!(ack["success"], true, "{ack}");

    // An outsider can neither join nor subscribe nor post.
    let refused = ask(&mut mallory, "chat:join", json!({"roomId": "r1"})).await;
    assert_eq!(refused["error"]["code"], "MEMBERSHIP_REQUIRED", "{refused}");
    mallory.send_json(json!({"type": "subscribe", "payload": {"topic": ROOM}})).await;
    assert_eq!(mallory.expect("error").await["code"], "MEMBERSHIP_REQUIRED");
    let refused = ask(&mut mallory, "message:new", json!({"roomId": "r1", "content": "let me in"})).await;
    assert_eq!(refused["error"]["code"], "MEMBERSHIP_REQUIRED", "{refused}");

    // Seed 003's send: acked with the message id and the client's temp id.
    let sent = json!({"roomId": "r1", "content": "hello", "tempId": "tmp-1", "metadata": {"mentions": ["bob"]}});
    let ack = ask(&mut alice_phone, "message:new", sent).await;
    assert_eq!((ack["success"].clone(), ack["tempId"].clone()), (json!(true), json!("tmp-1")), "{ack}");
    let id = ack["messageId"].as_str().expect("message id").to_owned();
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob_phone] {
        let message = heard(ws, "hello").await;
        assert_eq!((message["messageId"].as_str(), message["authorId"].as_str()), (Some(id.as_str()), Some("alice")));
        assert_eq!(
            (message["roomId"].clone(), message["metadata"]["mentions"][0].clone()),
            (json!("r1"), json!("bob"))
        );
    }
    let args = bob_laptop.event("message:new").await;
    assert_eq!((args[0]["content"].clone(), args[0]["tempId"].clone()), (json!("hello"), json!("tmp-1")));
    assert!(args[1].as_str().is_some_and(|position| position.contains(':')), "published with a position: {args:?}");

    // Over Socket.IO, with a reply to the first message.
    let ack = bob_laptop
        .emit_with_ack("message:new", json!({"roomId": "r1", "content": "hi alice", "replyTo": id, "tempId": 7}))
        .await;
    assert_eq!((ack["success"].clone(), ack["tempId"].clone()), (json!(true), json!(7)), "{ack}");
    let reply = heard(&mut alice_laptop, "hi alice").await;
    assert_eq!(reply["replyTo"].as_str(), Some(id.as_str()));

    // The outsider got nothing of it: its own user topic's marker comes first.
    publish_ok(&gateway, json!({"topic": "user:mallory", "event": "marker", "data": {}})).await;
    let frames = mallory.frames_until(|frame| frame["type"] == "marker").await;
    assert!(frames.iter().all(|frame| frame["type"] != "message:new"), "{frames:?}");

    // History for members only, newest first.
    let (status, page) =
        gateway.request("GET", "/api/conversations/room:r1/messages?limit=1", Some(&gateway.token("bob")), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"][0]["content"], "hi alice");
    let before = page["nextCursor"].as_str().expect("a next page").to_owned();
    let (_, older) = gateway
        .request(
            "GET",
            &format!("/api/conversations/room:r1/messages?before={before}"),
            Some(&gateway.token("bob")),
            None,
        )
        .await;
    assert_eq!(older["data"].as_array().map(|page| page.len()), Some(1), "{older}");
    let (status, _) =
        gateway.request("GET", "/api/conversations/room:r1/messages", Some(&gateway.token("mallory")), None).await;
    assert_eq!(status, 403);
    gateway.shutdown().await;
}

#[tokio::test]
async fn seed_001_community_clients_chat_over_rest_and_see_members_come_and_go() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let alice_token = gateway.token_with_claims(
        json!({"sub": "alice", "name": "Alice", "image": "https://a.example/a.png", "exp": 4_000_000_000u64}),
    );
    let mut alice = gateway.ws(&format!("/api/community/ws?token={alice_token}")).await;
    // A community connection joins its rooms by itself, and the room is told.
    let joined = alice.expect("USER_JOINED").await;
    assert_eq!(
        joined,
        json!({"userId": "alice", "userName": "Alice", "userImage": "https://a.example/a.png", "roomId": "r1"})
    );
    let bob_token = gateway.token("bob");
    let mut bob = gateway.ws(&format!("/api/community/ws?token={bob_token}")).await;
    assert_eq!(alice.expect("USER_JOINED").await["userId"], "bob");
    assert_eq!(bob.expect("USER_JOINED").await["userId"], "bob");

    // Messages go through the REST API and reach the room as CHAT_MESSAGE.
    let (status, created) = gateway
        .request(
            "POST",
            "/api/community/messages",
            Some(&alice_token),
            Some(json!({"content": "Hello, world!", "roomId": "r1"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    for ws in [&mut alice, &mut bob] {
        let message = ws.expect("CHAT_MESSAGE").await;
        for field in ["id", "content", "roomId", "authorId", "authorName", "authorImage", "isEdited", "createdAt"] {
            assert!(message.get(field).is_some(), "seed 001 field {field} in {message}");
        }
        assert_eq!(
            (message["content"].clone(), message["authorName"].clone()),
            (json!("Hello, world!"), json!("Alice"))
        );
        assert_eq!(message["isEdited"], false);
    }
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let (status, _) = gateway
        .request(
            "PATCH",
            &format!("/api/community/messages/{id}"),
            Some(&bob_token),
            Some(json!({"content": "mine now"})),
        )
        .await;
    assert_eq!(status, 403, "only the author edits");
    let (status, _) = gateway
        .request(
            "PATCH",
            &format!("/api/community/messages/{id}"),
            Some(&alice_token),
            Some(json!({"content": "Updated content"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        bob.expect("MESSAGE_EDIT").await,
        json!({"messageId": id, "content": "Updated content", "roomId": "r1", "topic": ROOM, "editedAt": bob_edit_time(&gateway, &id, &bob_token).await})
    );
    let (status, _) =
        gateway.request("DELETE", &format!("/api/community/messages/{id}"), Some(&alice_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(bob.expect("MESSAGE_DELETE").await, json!({"messageId": id, "roomId": "r1", "topic": ROOM}));
    let (status, body) = gateway
        .request(
            "POST",
            "/api/community/messages",
            Some(&gateway.token("mallory")),
            Some(json!({"content": "x", "roomId": "r1"})),
        )
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("MEMBERSHIP_REQUIRED")));

    // TYPING relayed to the room, PING answered, the online list.
    alice.send_json(json!({"type": "TYPING", "payload": {"userId": "alice", "userName": "Alice", "roomId": "r1", "isTyping": true}})).await;
    assert_eq!(
        bob.expect("TYPING").await,
        json!({"userId": "alice", "userName": "Alice", "roomId": "r1", "isTyping": true})
    );
    alice.send_json(json!({"type": "TYPING", "payload": {"roomId": "r1", "isTyping": false}})).await;
    assert_eq!(bob.expect("TYPING").await["isTyping"], false);
    bob.send_json(json!({"type": "PING", "payload": {}})).await;
    assert!(bob.expect("PONG").await["timestamp"].is_u64());
    let (_, online) = gateway.request("GET", "/api/conversations/room:r1/online", Some(&bob_token), None).await;
    assert_eq!(online["online"], json!(["alice", "bob"]));
    let (_, listed) = gateway.request("GET", "/api/community/messages?roomId=r1", Some(&bob_token), None).await;
    assert_eq!(listed["data"], json!([]), "the deleted message is gone from history");

    // Bob leaves: the room is told USER_LEFT.
    drop(bob);
    assert_eq!(alice.expect("USER_LEFT").await, json!({"userId": "bob", "roomId": "r1"}));
    gateway.shutdown().await;
}

/// The edit time the store recorded, as the history shows it.
async fn bob_edit_time(gateway: &TestGateway, id: &str, token: &str) -> Value {
    let (_, page) = gateway.request("GET", "/api/community/messages?roomId=r1", Some(token), None).await;
    let message = page["data"].as_array().unwrap().iter().find(|m| m["id"] == id).cloned().unwrap_or_default();
    message["editedAt"].clone()
}

#[tokio::test]
async fn receipts_are_stored_and_reach_every_device_of_the_author() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let mut alice_phone = device(&gateway, "alice").await;
    let mut alice_laptop = sio_device(&gateway, "alice").await;
    let mut bob = device(&gateway, "bob").await;
    join(&mut alice_phone, ROOM).await;
    join(&mut bob, ROOM).await;
    let id = say(&mut alice_phone, ROOM, "read me").await["messageId"].as_str().unwrap().to_owned();
    heard(&mut bob, "read me").await;
    let ack = ask(&mut bob, "message:delivered", json!({"messageId": id, "roomId": "r1"})).await;
    assert_eq!(ack["changed"], 1, "{ack}");
    let delivered = alice_phone.expect("message:delivered").await;
    assert_eq!((delivered["messageId"].as_str(), delivered["userId"].clone()), (Some(id.as_str()), json!("bob")));
    assert!(delivered["deliveredAt"].is_string());
    let ack = ask(&mut bob, "message:read", json!({"messageIds": [id]})).await;
    assert_eq!(ack["changed"], 1);
    assert_eq!(alice_phone.expect("message:read").await["userId"], "bob");
    assert_eq!(alice_laptop.event("message:delivered").await[0]["userId"], "bob");
    assert_eq!(alice_laptop.event("message:read").await[0]["userId"], "bob");
    let again = ask(&mut bob, "message:read", json!({"messageId": id})).await;
    assert_eq!(again["changed"], 0, "a receipt moves forward once");
    let own = ask(&mut alice_phone, "message:read", json!({"messageId": id})).await;
    assert_eq!(own["changed"], 0, "no receipts for one's own message");
    let (_, receipts) =
        gateway.request("GET", &format!("/api/messages/{id}/receipts"), Some(&gateway.token("alice")), None).await;
    let receipt = &receipts["receipts"][0];
    assert_eq!(receipt["userId"], "bob");
    assert!(receipt["deliveredAt"].is_string() && receipt["readAt"].is_string(), "{receipts}");
    let (status, _) =
        gateway.request("GET", &format!("/api/messages/{id}/receipts"), Some(&gateway.token("mallory")), None).await;
    assert_eq!(status, 404, "an outsider cannot tell the message exists");
    gateway.shutdown().await;
}

#[tokio::test]
async fn typing_reaches_members_and_ends_by_itself_without_renewal() {
    let gateway = TestGateway::builder().settings(|s| s.typing_timeout = Duration::from_millis(300)).spawn().await;
    conversation(&gateway, "chat:c1", &["alice", "bob"]).await;
    let mut alice = device(&gateway, "alice").await;
    let mut bob = device(&gateway, "bob").await;
    let not_joined = ask(&mut alice, "message:typing", json!({"chatId": "c1"})).await;
    assert_eq!(not_joined["error"]["code"], "MEMBERSHIP_REQUIRED", "typing needs a joined chat: {not_joined}");
    join(&mut alice, "chat:c1").await;
    join(&mut bob, "chat:c1").await;
    ask(&mut alice, "message:typing", json!({"chatId": "c1"})).await;
    let typing = bob.expect("message:typing").await;
    assert_eq!(typing, json!({"userId": "alice", "chatId": "c1", "isTyping": true}));
    // Alice never says she stopped: the server does, after the timeout.
    let stopped = bob.expect("message:stop-typing").await;
    assert_eq!(stopped, json!({"userId": "alice", "chatId": "c1", "isTyping": false}));
    // An explicit stop, and a message, end it too.
    ask(&mut alice, "message:typing", json!({"chatId": "c1"})).await;
    bob.expect("message:typing").await;
    ask(&mut alice, "message:stop-typing", json!({"chatId": "c1"})).await;
    bob.expect("message:stop-typing").await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn reactions_are_validated_stored_and_broadcast() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let mut alice = device(&gateway, "alice").await;
    let mut bob = sio_device(&gateway, "bob").await;
    join(&mut alice, ROOM).await;
    assert_eq!(bob.emit_with_ack("chat:join", json!({"topic": ROOM})).await["success"], true);
    let id = say(&mut alice, ROOM, "react").await["messageId"].as_str().unwrap().to_owned();
    let ack = bob.emit_with_ack("reaction:new", json!({"messageId": id, "emoji": "👍"})).await;
    assert_eq!(ack["success"], true, "{ack}");
    let reaction = alice.expect("reaction:new").await;
    assert_eq!((reaction["emoji"].clone(), reaction["userId"].clone()), (json!("👍"), json!("bob")));
    let refused = bob.emit_with_ack("reaction:new", json!({"messageId": id, "emoji": "lol"})).await;
    assert_eq!(refused["error"]["code"], "INVALID_PAYLOAD", "{refused}");
    ask(&mut alice, "reaction:new", json!({"messageId": id, "emoji": "👍"})).await;
    let all = ask(&mut alice, "reaction:get", json!({"messageId": id})).await;
    // Ordered by time, then user id: these two may share a millisecond.
    let mut users: Vec<&str> =
        all["reactions"][0]["userIds"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    users.sort_unstable();
    assert_eq!(
        (all["reactions"][0]["emoji"].clone(), all["reactions"][0]["count"].clone()),
        (json!("👍"), json!(2)),
        "{all}"
    );
    assert_eq!(users, ["alice", "bob"]);
    bob.emit_with_ack("reaction:remove", json!({"messageId": id, "emoji": "👍"})).await;
    assert_eq!(alice.expect("reaction:remove").await["userId"], "bob");
    let (_, stored) =
        gateway.request("GET", &format!("/api/messages/{id}/reactions"), Some(&gateway.token("bob")), None).await;
    assert_eq!(stored["reactions"], json!([{"emoji": "👍", "count": 1, "userIds": ["alice"]}]));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_user_who_blocked_someone_receives_nothing_from_them() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob", "mallory"]).await;
    let mut alice = device(&gateway, "alice").await;
    let mut bob = device(&gateway, "bob").await;
    let mut mallory = device(&gateway, "mallory").await;
    for ws in [&mut alice, &mut bob, &mut mallory] {
        join(ws, ROOM).await;
    }
    // Mallory joining was before the block.
    alice.expect_where(|frame| frame["type"] == "chat:member-joined" && frame["payload"]["userId"] == "mallory").await;
    let alice_token = gateway.token("alice");
    let (status, blocked) =
        gateway.request("POST", "/api/me/blocks", Some(&alice_token), Some(json!({"userId": "mallory"}))).await;
    assert_eq!((status, blocked["blocked"].clone()), (200, json!(["mallory"])));
    assert_eq!(alice.expect("block:updated").await, json!({"blocked": ["mallory"]}));

    ask(&mut mallory, "message:typing", json!({"roomId": "r1"})).await;
    say(&mut mallory, ROOM, "from mallory").await;
    heard(&mut bob, "from mallory").await;
    say(&mut bob, ROOM, "from bob").await;
    nothing_before(&mut alice, "from bob", |frame| {
        frame["payload"]["userId"] == "mallory" || frame["payload"]["authorId"] == "mallory"
    })
    .await;

    // A device that connects later gets the list from the store.
    let mut alice_later = device(&gateway, "alice").await;
    join(&mut alice_later, ROOM).await;
    say(&mut mallory, ROOM, "again").await;
    say(&mut bob, ROOM, "bob again").await;
    nothing_before(&mut alice_later, "bob again", |frame| frame["payload"]["authorId"] == "mallory").await;
    let (_, history) = gateway.request("GET", "/api/conversations/room:r1/messages", Some(&alice_token), None).await;
    assert!(history["data"].as_array().unwrap().iter().all(|m| m["authorId"] != "mallory"), "{history}");

    // Unblocked, she hears mallory again.
    let (status, _) = gateway.request("DELETE", "/api/me/blocks/mallory", Some(&alice_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(alice.expect("block:updated").await, json!({"blocked": []}));
    say(&mut mallory, ROOM, "hello again").await;
    heard(&mut alice, "hello again").await;
    let (status, _) =
        gateway.request("POST", "/api/me/blocks", Some(&alice_token), Some(json!({"userId": "alice"}))).await;
    assert_eq!(status, 400, "no blocking oneself");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_removed_member_is_told_then_hears_nothing_more() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let mut alice = device(&gateway, "alice").await;
    let mut bob_phone = device(&gateway, "bob").await;
    let mut bob_laptop = device(&gateway, "bob").await;
    for ws in [&mut alice, &mut bob_phone, &mut bob_laptop] {
        join(ws, ROOM).await;
    }
    let (status, _) = gateway.request("DELETE", "/api/conversations/room:r1/members/bob", Some(API_KEY), None).await;
    assert_eq!(status, 200);
    for ws in [&mut bob_phone, &mut bob_laptop, &mut alice] {
        assert_eq!(ws.expect("chat:updated").await, json!({"roomId": "r1", "removed": ["bob"]}));
    }
    assert_eq!(alice.expect("chat:member-left").await["userId"], "bob", "bob's devices left the room");
    say(&mut alice, ROOM, "after bob").await;
    publish_ok(&gateway, json!({"topic": "user:bob", "event": "marker", "data": {}})).await;
    for ws in [&mut bob_phone, &mut bob_laptop] {
        let frames = ws.frames_until(|frame| frame["type"] == "marker").await;
        assert!(frames.iter().all(|frame| frame["payload"]["content"] != "after bob"), "{frames:?}");
    }
    let refused = ask(&mut bob_phone, "message:new", json!({"roomId": "r1", "content": "still here?"})).await;
    assert_eq!(refused["error"]["code"], "MEMBERSHIP_REQUIRED");
    let (status, _) = gateway.request("DELETE", "/api/conversations/room:r1/members/bob", Some(API_KEY), None).await;
    assert_eq!(status, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_event_over_its_rate_limit_is_refused_and_the_connection_stays() {
    let gateway = TestGateway::builder()
        .settings(|s| s.event_limits = herald_server::limits::EventLimits::parse("message:new=2/1m").unwrap())
        .spawn()
        .await;
    conversation(&gateway, ROOM, &["alice"]).await;
    let mut ws = device(&gateway, "alice").await;
    let mut sio = sio_device(&gateway, "alice").await;
    join(&mut ws, ROOM).await;
    say(&mut ws, ROOM, "one").await;
    say(&mut ws, ROOM, "two").await;
    ws.send_json(json!({"type": "message:new", "payload": {"topic": ROOM, "content": "three"}})).await;
    let error = ws.expect("error").await;
    assert_eq!((error["code"].clone(), error["event"].clone()), (json!("RATE_LIMITED"), json!("message:new")));
    let retry = error["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!(retry > 1_000 && retry <= 30_000, "{retry}");
    let others = ask(&mut ws, "reaction:get", json!({"messageId": 1})).await;
    assert_eq!(others["success"], true, "other events are not limited by it: {others}");
    // Each connection has its own limits; Socket.IO answers the same way.
    for _ in 0..2 {
        assert_eq!(sio.emit_with_ack("message:new", json!({"topic": ROOM, "content": "sio"})).await["success"], true);
    }
    let refused = sio.emit_with_ack("message:new", json!({"topic": ROOM, "content": "sio"})).await;
    assert_eq!(refused["error"]["code"], "RATE_LIMITED", "{refused}");
    assert!(refused["error"]["retryAfterMs"].as_u64().is_some());
    assert_eq!(sio.event("error").await[0]["code"], "RATE_LIMITED");
    let (_, page) =
        gateway.request("GET", "/api/conversations/room:r1/messages", Some(&gateway.token("alice")), None).await;
    assert_eq!(page["data"].as_array().map(|data| data.len()), Some(4), "refused messages were not stored");
    gateway.shutdown().await;
}

#[tokio::test]
async fn bad_conversation_input_gets_clear_errors() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, ROOM, &["alice", "bob"]).await;
    let mut alice = device(&gateway, "alice").await;
    join(&mut alice, ROOM).await;
    let cases = [
        ("message:new", json!({"topic": ROOM}), "INVALID_PAYLOAD"),
        ("message:new", json!({"topic": ROOM, "content": "   "}), "INVALID_PAYLOAD"),
        ("message:new", json!({"topic": ROOM, "content": "x".repeat(17 * 1024)}), "PAYLOAD_TOO_LARGE"),
        ("message:new", json!({"topic": "channel:c", "content": "x"}), "INVALID_TOPIC"),
        ("message:new", json!({"content": "x"}), "INVALID_PAYLOAD"),
        ("message:new", json!({"topic": ROOM, "content": "x", "replyTo": 999_999}), "NOT_FOUND"),
        ("message:new", json!({"topic": ROOM, "content": "x", "type": "bad type!"}), "INVALID_PAYLOAD"),
        ("message:read", json!({"messageId": "abc"}), "INVALID_PAYLOAD"),
        ("message:read", json!({"messageIds": []}), "INVALID_PAYLOAD"),
        ("message:edit", json!({"messageId": 999_999, "content": "x"}), "NOT_FOUND"),
        ("reaction:new", json!({"messageId": 1}), "INVALID_PAYLOAD"),
        ("chat:join", json!({"chatId": "bad id!"}), "INVALID_TOPIC"),
        ("chat:join-multiple", json!({"chatIds": "c1"}), "INVALID_PAYLOAD"),
        ("chat:get-active-members", json!({"roomId": "elsewhere"}), "MEMBERSHIP_REQUIRED"),
    ];
    for (kind, payload, code) in cases {
        let answer = ask(&mut alice, kind, payload.clone()).await;
        assert_eq!(answer["error"]["code"], code, "{kind} {payload}: {answer}");
    }
    let multiple = ask(&mut alice, "chat:join-multiple", json!({"chatIds": ["room:r1", "room:nope"]})).await;
    assert_eq!(multiple["joined"], json!(["r1"]));
    assert_eq!(multiple["failed"][0]["code"], "MEMBERSHIP_REQUIRED");
    let active = ask(&mut alice, "chat:get-active-members", json!({"roomId": "r1"})).await;
    assert_eq!(active["members"], json!(["alice"]), "bob is a member but offline");
    // The server API checks its input too.
    let (status, _) = gateway.request("PUT", "/api/conversations/user:alice", Some(API_KEY), Some(json!({}))).await;
    assert_eq!(status, 400);
    let (status, _) =
        gateway.request("PUT", "/api/conversations/room:x", Some(API_KEY), Some(json!({"members": ["bad id!"]}))).await;
    assert_eq!(status, 400);
    let (status, _) =
        gateway.request("PUT", "/api/conversations/room:x", Some(&gateway.token("alice")), Some(json!({}))).await;
    assert_eq!(status, 401, "memberships need the API key");
    // Nothing disturbed the session.
    say(&mut alice, ROOM, "still fine").await;
    gateway.shutdown().await;
}
