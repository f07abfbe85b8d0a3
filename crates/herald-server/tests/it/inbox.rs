//! The notification inbox: creation and real-time push on every transport and dialect,
//! the user API, socket commands, unread counts in sync, offline delivery, retention,
//! and bad input. Cases that depend on the store run on SQLite and on PostgreSQL.

use std::time::Duration;

use herald_server::StoreSettings;
use herald_testkit::{API_KEY, SseClient, TestGateway, TestSchema, WsClient, with_store};
use serde_json::{Value, json};

use crate::support::{driver, eventually, publish_ok};

/// A gateway on a fresh SQLite file, or on a PostgreSQL schema of its own.
struct Inbox {
    gateway: TestGateway,
    schema: Option<TestSchema>,
    _dir: Option<tempfile::TempDir>,
}

impl Inbox {
    async fn sqlite() -> Self {
        Self::sqlite_with(|_| {}).await
    }

    async fn sqlite_with(change: impl FnOnce(&mut herald_server::Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreSettings::SqliteFile(dir.path().join("herald.db"));
        let gateway = TestGateway::builder().settings(with_store(store)).settings(change).spawn().await;
        Self { gateway, schema: None, _dir: Some(dir) }
    }

    async fn postgres() -> Self {
        let schema = TestSchema::new();
        let gateway = TestGateway::builder().settings(with_store(schema.store())).spawn().await;
        Self { gateway, schema: Some(schema), _dir: None }
    }

    async fn finish(self) {
        self.gateway.shutdown().await;
        if let Some(schema) = self.schema {
            schema.drop_schema().await;
        }
    }
}

async fn created(gateway: &TestGateway, body: Value) -> Value {
    let (status, response) = gateway.notify(body).await;
    assert!(status == 201 || status == 200, "{status} {response}");
    response
}

async fn canonical_ws(gateway: &TestGateway, token: &str) -> WsClient {
    let mut ws = gateway.ws(&format!("/ws?token={token}")).await;
    ws.next_event("connected").await;
    ws
}

/// Reads unread-count pushes until `marker` arrives; returns the last count seen.
async fn last_count_before_marker(ws: &mut WsClient) -> Option<u64> {
    let mut last = None;
    loop {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("notification:unread-count") => last = frame["payload"]["count"].as_u64(),
            Some("marker") => return last,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_notification_is_pushed_to_every_device_in_each_dialect_with_the_count() {
    let inbox = Inbox::sqlite().await;
    let gateway = &inbox.gateway;
    let token = gateway.token("alice");
    let mut ws = canonical_ws(gateway, &token).await;
    let mut sse = SseClient::connect(&gateway.http_url("/notifications/events"), Some(&token)).await.unwrap();
    let mut sio = driver(gateway, "/notifications", json!({"auth": {"token": token}}));
    sio.kind("connect").await;
    let subscribed = sio.emit_with_ack("subscribe_notifications", json!({})).await;
    assert_eq!(subscribed, json!({"success": true, "unreadCount": 0}));

    let body = created(
        gateway,
        json!({"userId": "alice", "type": "TIP", "payload": {"amount": 5, "currency": "USD", "userName": "bob"},
               "priority": "high", "sound": "coin", "badge": 1}),
    )
    .await;
    assert_eq!(body["created"], true);
    let notification = body["notification"].clone();
    assert_eq!(notification["userId"], "alice");
    assert_eq!(notification["type"], "TIP");
    assert_eq!(notification["payload"], json!({"amount": 5, "currency": "USD", "userName": "bob"}));
    assert_eq!((notification["priority"].as_str(), notification["isRead"].as_bool()), (Some("high"), Some(false)));
    assert!(notification["createdAt"].as_str().unwrap().ends_with('Z'));

    let pushed = ws.next_event("notification:new").await;
    assert_eq!((pushed["id"].clone(), pushed["isNew"].clone()), (notification["id"].clone(), json!(true)));
    assert_eq!(ws.next_event("notification:unread-count").await, json!({"count": 1}));

    let typed = |event: eventsource_stream::Event| serde_json::from_str::<Value>(&event.data).unwrap();
    let mut first = typed(sse.next().await);
    while first["type"] == "unread_count" {
        first = typed(sse.next().await);
    }
    assert_eq!(first["type"], "notification");
    assert_eq!(first["data"]["id"], notification["id"]);
    assert_eq!(typed(sse.next().await), json!({"type": "unread_count", "data": {"count": 1}}));

    let args = sio.event("notification").await;
    assert_eq!(args[0]["id"], notification["id"]);
    assert_eq!(args[0]["isNew"], true, "seed 002 clients alert on isNew");
    let counts = loop {
        let args = sio.event("unread_count").await;
        if args[0]["count"] == 1 {
            break args;
        }
    };
    assert_eq!(counts[0], json!({"count": 1}));
    assert!(counts[1].is_string(), "published events end with their position: {counts:?}");
    inbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_api_pages_counts_marks_and_deletes_only_the_users_own() {
    for inbox in [Inbox::sqlite().await, Inbox::postgres().await] {
        user_api_case(&inbox.gateway).await;
        inbox.finish().await;
    }
}

async fn user_api_case(gateway: &TestGateway) {
    let alice = gateway.token("alice");
    let bob = gateway.token("bob");
    let many = json!({"notifications": [
        {"userId": "alice", "type": "FOLLOW", "payload": {"n": 1}},
        {"userId": "alice", "type": "SUB", "payload": {"n": 2}},
        {"userId": "alice", "type": "mention", "payload": {"n": 3}},
        {"userId": "bob", "type": "SYSTEM", "payload": {"n": 4}},
    ]});
    let body = created(gateway, many).await;
    assert_eq!(body["created"], 4);
    let ids: Vec<String> =
        body["notifications"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();

    let (status, page) = gateway.request("GET", "/api/me/notifications?limit=2", Some(&alice), None).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> =
        page["notifications"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()], "newest first");
    assert_eq!(page["unreadCount"], 3);
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (_, next) =
        gateway.request("GET", &format!("/api/me/notifications?limit=2&cursor={cursor}"), Some(&alice), None).await;
    assert_eq!(next["notifications"][0]["id"], ids[0]);
    assert_eq!(next["nextCursor"], Value::Null);

    let (status, read) = gateway
        .request("POST", "/api/me/notifications/read", Some(&alice), Some(json!({"ids": [ids[0], ids[1]]})))
        .await;
    assert_eq!((status, read["changed"].as_u64(), read["unreadCount"].as_u64()), (200, Some(2), Some(1)));
    let (_, unread) = gateway.request("GET", "/api/me/notifications?unread=true", Some(&alice), None).await;
    assert_eq!(unread["notifications"].as_array().unwrap().len(), 1);
    let (_, count) = gateway.request("GET", "/api/me/notifications/unread-count", Some(&alice), None).await;
    assert_eq!(count, json!({"success": true, "count": 1}));
    let (status, one) = gateway.request("GET", &format!("/api/me/notifications/{}", ids[0]), Some(&alice), None).await;
    assert_eq!((status, one["notification"]["isRead"].as_bool()), (200, Some(true)));
    assert!(one["notification"]["readAt"].is_string() && one["notification"]["seenAt"].is_string());

    // Bob's notification, a missing id and a malformed one all look the same to Alice.
    for path in [
        format!("/api/me/notifications/{}", ids[3]),
        "/api/me/notifications/999999".into(),
        "/api/me/notifications/x'1".into(),
    ] {
        let (status, body) = gateway.request("GET", &path, Some(&alice), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("NOT_FOUND")), "{path}");
    }
    for action in ["read", "seen", "delete"] {
        let path = format!("/api/me/notifications/{action}");
        let (status, _) = gateway.request("POST", &path, Some(&alice), Some(json!({"ids": [ids[2], ids[3]]}))).await;
        assert_eq!(status, 404, "{action} with another user's id changes nothing");
    }
    let (status, _) = gateway.request("DELETE", &format!("/api/me/notifications/{}", ids[3]), Some(&alice), None).await;
    assert_eq!(status, 404);
    let (_, bobs) = gateway.request("GET", "/api/me/notifications", Some(&bob), None).await;
    assert_eq!(
        (bobs["unreadCount"].as_u64(), bobs["notifications"][0]["id"].as_str()),
        (Some(1), Some(ids[3].as_str()))
    );

    let bad_ids = [json!({"ids": ["abc"]}), json!({"ids": []}), json!({"ids": "1"}), json!({}), json!([-1])];
    for body in bad_ids {
        let (status, answer) =
            gateway.request("POST", "/api/me/notifications/read", Some(&alice), Some(body.clone())).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("INVALID_PAYLOAD")), "{body}");
    }
    let (status, _) = gateway.request("GET", "/api/me/notifications", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = gateway.request("GET", "/api/me/notifications?cursor=zzz", Some(&alice), None).await;
    assert_eq!(status, 400);

    let (status, all) =
        gateway.request("POST", "/api/me/notifications/delete", Some(&alice), Some(json!({"all": true}))).await;
    assert_eq!((status, all["changed"].as_u64(), all["unreadCount"].as_u64()), (200, Some(3), Some(0)));
    let (status, listed) = gateway.request("GET", "/api/users/bob/notifications", Some(API_KEY), None).await;
    assert_eq!((status, listed["notifications"].as_array().map(Vec::len)), (200, Some(1)), "server API reads any user");
    let (status, _) = gateway.request("GET", "/api/users/bob/notifications", Some(&bob), None).await;
    assert_eq!(status, 401, "the server API wants the API key, not a user token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_rejects_bad_input_with_clear_errors_and_stores_hostile_text_verbatim() {
    let inbox = Inbox::sqlite_with(|s| s.inbox.max_payload = 256).await;
    let gateway = &inbox.gateway;
    let cases = [
        (json!({"type": "TIP"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "has space"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "x".repeat(65)}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "bad id!", "type": "TIP"}), 400, "INVALID_PAYLOAD"),
        (json!({"userIds": [], "type": "TIP"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "a", "userIds": ["b"], "type": "TIP"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "TIP", "priority": "urgent"}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "TIP", "badge": -1}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "TIP", "colour": "red"}), 400, "INVALID_PAYLOAD"),
        (json!({"notifications": []}), 400, "INVALID_PAYLOAD"),
        (json!({"userId": "alice", "type": "TIP", "payload": {"big": "x".repeat(300)}}), 413, "PAYLOAD_TOO_LARGE"),
        (
            json!({"userIds": (0..1001).map(|i| format!("u{i}")).collect::<Vec<_>>(), "type": "TIP"}),
            400,
            "INVALID_PAYLOAD",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = gateway.notify(body.clone()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}");
    }
    let (status, answer) = gateway.post_json("/api/notifications", Some(API_KEY), "{not json".into()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("INVALID_JSON")));
    let (status, _) = gateway.post_json("/api/notifications", Some("wrong"), "{}".into()).await;
    assert_eq!(status, 401);

    let hostile = json!({"text": "'); DROP TABLE herald_notifications; --", "html": "<img src=x onerror=alert(1)>"});
    let body = created(gateway, json!({"userId": "alice", "type": "custom.kind:v2", "payload": hostile})).await;
    let alice = gateway.token("alice");
    let (_, listed) = gateway.request("GET", "/api/me/notifications", Some(&alice), None).await;
    assert_eq!(listed["notifications"][0]["payload"], hostile);
    assert_eq!(listed["notifications"][0]["id"], body["notification"]["id"]);
    inbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedupe_key_makes_creation_idempotent() {
    let inbox = Inbox::sqlite().await;
    let gateway = &inbox.gateway;
    let mut ws = canonical_ws(gateway, &gateway.token("alice")).await;
    let request = json!({"userId": "alice", "type": "TIP", "key": "event-7", "payload": {"n": 1}});
    let (status, first) = gateway.notify(request.clone()).await;
    assert_eq!((status, first["created"].as_bool()), (201, Some(true)));
    let (status, again) = gateway.notify(request).await;
    assert_eq!((status, again["created"].as_bool()), (200, Some(false)));
    assert_eq!(again["notification"]["id"], first["notification"]["id"]);
    publish_ok(gateway, json!({"topic": "user:alice", "event": "marker"})).await;
    let mut pushed = 0;
    loop {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("notification:new") => pushed += 1,
            Some("marker") => break,
            _ => {}
        }
    }
    assert_eq!(pushed, 1, "the duplicate is not pushed again");
    inbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_commands_mark_clear_and_fetch_pending_with_acks_and_counts_reach_every_device() {
    let inbox = Inbox::sqlite().await;
    let gateway = &inbox.gateway;
    let token = gateway.token("carol");
    let mut other_device = canonical_ws(gateway, &token).await;
    let mut sio = driver(gateway, "/", json!({"auth": {"token": token}}));
    sio.event("connected").await;
    let body = created(gateway, json!({"userIds": ["carol", "carol", "carol"], "type": "reply"})).await;
    let ids: Vec<Value> = body["notifications"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect();
    for id in &ids {
        assert_eq!(&sio.event("notification:new").await[0]["id"], id, "canonical name on namespace /");
    }

    let read = sio.emit_with_ack("notification:read", json!({"ids": [ids[0]]})).await;
    assert_eq!(read, json!({"success": true, "changed": 1, "unreadCount": 2}));
    let mut counts = Vec::new();
    while counts.last() != Some(&json!({"count": 2})) {
        counts.push(other_device.next_event("notification:unread-count").await);
    }

    // Plain WebSocket commands answer with an `ack` frame carrying the request id.
    other_device.send_json(json!({"type": "notification:clear", "id": 7, "payload": {"ids": [ids[1]]}})).await;
    let ack = other_device.next_event("ack").await;
    assert_eq!(ack, json!({"success": true, "event": "notification:clear", "id": 7, "changed": 1, "unreadCount": 1}));
    let clear_elsewhere = sio.emit_with_ack("notification:clear", json!({"ids": ["999999"]})).await;
    assert_eq!(clear_elsewhere["error"]["code"], "NOT_FOUND");
    let bad = sio.emit_with_ack("notification:read", json!({"ids": "nope"})).await;
    assert_eq!(bad["error"]["code"], "INVALID_PAYLOAD");

    let pending = sio.emit_with_ack("notification:get-pending", Value::Null).await;
    let pending_ids: Vec<Value> =
        pending["notifications"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect();
    assert_eq!(pending_ids, Vec::<Value>::new(), "delivered live already: nothing pending");

    let cleared = sio.emit_with_ack("notification:clear-all", Value::Null).await;
    assert_eq!(cleared, json!({"success": true, "changed": 2, "unreadCount": 0}), "the read one and the unread one");
    loop {
        if other_device.next_event("notification:unread-count").await == json!({"count": 0}) {
            break;
        }
    }
    inbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_created_offline_reach_each_device_once_in_order() {
    for inbox in [Inbox::sqlite().await, Inbox::postgres().await] {
        offline_case(&inbox.gateway).await;
        inbox.finish().await;
    }
}

async fn offline_case(gateway: &TestGateway) {
    let body = created(
        gateway,
        json!({"notifications": [
            {"userId": "dave", "type": "TIP", "payload": {"n": 1}},
            {"userId": "dave", "type": "SUB", "payload": {"n": 2}},
            {"userId": "dave", "type": "FOLLOW", "payload": {"n": 3}},
        ]}),
    )
    .await;
    let ids: Vec<Value> = body["notifications"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect();

    let phone = gateway.device_token("dave", "phone");
    let mut ws = canonical_ws(gateway, &phone).await;
    for id in &ids {
        assert_eq!(&ws.next_event("notification:new").await["id"], id, "in order");
    }
    assert_eq!(ws.next_event("notification:unread-count").await, json!({"count": 3}));
    ws.stream().close(None).await.unwrap();

    // The same device again: nothing is given twice.
    let mut again = canonical_ws(gateway, &phone).await;
    publish_ok(gateway, json!({"topic": "user:dave", "event": "marker"})).await;
    assert_eq!(again.next_json().await["type"], "marker", "nothing before the marker");

    // Another device of the same user has its own position.
    let laptop = gateway.device_token("dave", "laptop");
    let mut sse = SseClient::connect(&gateway.http_url("/events"), Some(&laptop)).await.unwrap();
    assert_eq!(sse.next().await.event, "connected");
    for id in &ids {
        let event = sse.next().await;
        assert_eq!(event.event, "notification:new");
        assert_eq!(&serde_json::from_str::<Value>(&event.data).unwrap()["id"], id);
        assert_eq!(Some(&event.id), id.as_str().map(str::to_owned).as_ref(), "the SSE id is the notification's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id() {
    let inbox = Inbox::sqlite().await;
    let gateway = &inbox.gateway;
    let token = gateway.token("erin");
    let first = created(gateway, json!({"userId": "erin", "type": "TIP", "payload": {"n": 1}})).await;
    let first_id = first["notification"]["id"].as_str().unwrap().to_owned();
    let missed = created(gateway, json!({"userIds": ["erin", "erin"], "type": "SUB"})).await;
    let missed: Vec<Value> = missed["notifications"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect();
    let url = gateway.http_url("/notifications/events");
    let mut sse = SseClient::connect_with(&url, Some(&token), &[("Last-Event-ID", &first_id)]).await.unwrap();
    for id in &missed {
        let event = sse.next().await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!((&data["type"], &data["data"]["id"]), (&json!("notification"), id));
    }
    let count: Value = serde_json::from_str(&sse.next().await.data).unwrap();
    assert_eq!(count, json!({"type": "unread_count", "data": {"count": 3}}));
    inbox.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_counts_equal_the_stored_unread_count_under_concurrent_devices() {
    for inbox in [Inbox::sqlite().await, Inbox::postgres().await] {
        concurrency_case(&inbox.gateway).await;
        inbox.finish().await;
    }
}

async fn concurrency_case(gateway: &TestGateway) {
    let token = gateway.token("frank");
    let mut devices = Vec::new();
    for _ in 0..3 {
        devices.push(canonical_ws(gateway, &token).await);
    }
    let mut markers = Vec::new();
    for _ in 0..2 {
        markers.push(canonical_ws(gateway, &token).await);
    }
    let mut work = tokio::task::JoinSet::new();
    for round in 0..20 {
        let (url, token) = (gateway.http_url(""), token.clone());
        work.spawn(async move {
            let client = reqwest::Client::new();
            let created: Value = client
                .post(format!("{url}/api/notifications"))
                .bearer_auth(API_KEY)
                .json(&json!({"userIds": ["frank", "frank"], "type": "chat", "payload": {"round": round}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = created["notifications"][0]["id"].clone();
            let action = if round % 3 == 0 { "delete" } else { "read" };
            let answer = client
                .post(format!("{url}/api/me/notifications/{action}"))
                .bearer_auth(&token)
                .json(&json!({"ids": [id]}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            if round % 5 == 0 {
                let all = client
                    .post(format!("{url}/api/me/notifications/read"))
                    .bearer_auth(&token)
                    .json(&json!({"all": true}));
                assert_eq!(all.send().await.unwrap().status(), 200);
            }
        });
    }
    // Devices mark too, over their own sockets, while the work runs.
    for (index, ws) in markers.iter_mut().enumerate() {
        ws.send_json(json!({"type": "notification:read", "id": index, "payload": {"all": true}})).await;
    }
    while let Some(done) = work.join_next().await {
        done.unwrap();
    }
    for ws in &mut markers {
        ws.next_event("ack").await;
    }
    let (_, stored) = gateway.request("GET", "/api/me/notifications/unread-count", Some(&token), None).await;
    let stored = stored["count"].as_u64().unwrap();
    publish_ok(gateway, json!({"topic": "user:frank", "event": "marker"})).await;
    for ws in devices.iter_mut().chain(markers.iter_mut()) {
        assert_eq!(last_count_before_marker(ws).await, Some(stored), "the last count a device got is the store's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_beyond_the_per_user_maximum_and_pushes_the_new_count() {
    let inbox = Inbox::sqlite_with(|s| {
        s.inbox.max_per_user = Some(2);
        s.inbox.prune_interval = Duration::from_millis(50);
    })
    .await;
    let gateway = &inbox.gateway;
    let token = gateway.token("gina");
    let mut ws = canonical_ws(gateway, &token).await;
    created(gateway, json!({"userIds": ["gina", "gina", "gina", "gina"], "type": "SYSTEM"})).await;
    loop {
        if ws.next_event("notification:unread-count").await == json!({"count": 2}) {
            break;
        }
    }
    let (_, listed) = gateway.request("GET", "/api/me/notifications", Some(&token), None).await;
    assert_eq!(listed["notifications"].as_array().unwrap().len(), 2);
    eventually("the count stays at the maximum", || async {
        let (_, count) = gateway.request("GET", "/api/me/notifications/unread-count", Some(&token), None).await;
        count["count"] == 2
    })
    .await;
    inbox.finish().await;
}
