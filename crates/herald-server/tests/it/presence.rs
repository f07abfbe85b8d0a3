//! Presence: online while any device is, a chosen status with custom text, last seen,
//! a grace period so a reload does not flap, and subscriptions only to contacts (users
//! sharing a conversation).

use std::time::Duration;

use herald_testkit::{TestGateway, WsClient};
use serde_json::{Value, json};

use crate::chat::{ask, conversation, device};

/// The next `presence:update` about `user`.
async fn update_of(ws: &mut WsClient, user: &str) -> Value {
    ws.expect_where(|frame| frame["type"] == "presence:update" && frame["payload"]["userId"] == user).await["payload"]
        .clone()
}

#[tokio::test]
async fn contacts_see_status_changes_and_a_reload_does_not_flap() {
    let gateway = TestGateway::builder().settings(|s| s.presence_grace = Duration::from_millis(300)).spawn().await;
    conversation(&gateway, "chat:c1", &["alice", "bob"]).await;
    let mut bob = device(&gateway, "bob").await;
    // Alice is offline: bob subscribes and gets her presence at once.
    let ack = ask(&mut bob, "presence:subscribe", json!({"userIds": ["alice", "mallory"]})).await;
    assert_eq!(ack["presences"][0]["userId"], "alice");
    assert_eq!(
        (ack["presences"][0]["online"].clone(), ack["presences"][0]["status"].clone()),
        (json!(false), json!("offline"))
    );
    assert_eq!(ack["refused"][0]["userId"], "mallory", "no shared conversation, no presence: {ack}");

    // She connects on two devices: one announcement.
    let mut phone = device(&gateway, "alice").await;
    let online = update_of(&mut bob, "alice").await;
    assert_eq!((online["online"].clone(), online["status"].clone()), (json!(true), json!("online")));
    let mut laptop = device(&gateway, "alice").await;
    let away = ask(&mut laptop, "presence:update", json!({"status": "away", "customStatus": "lunch"})).await;
    assert_eq!(away["status"], "away", "{away}");
    let seen = update_of(&mut bob, "alice").await;
    assert_eq!(
        (seen["status"].clone(), seen["customStatus"].clone()),
        (json!("away"), json!("lunch")),
        "the second device did not announce her again"
    );

    // A reload (every device gone and one back within the grace period) says nothing.
    drop(phone);
    drop(laptop);
    phone = device(&gateway, "alice").await;
    ask(&mut phone, "presence:update", json!({"status": "busy"})).await;
    let next = update_of(&mut bob, "alice").await;
    assert_eq!(
        (next["online"].clone(), next["status"].clone()),
        (json!(true), json!("busy")),
        "no offline/online flap: {next}"
    );

    // Gone for longer than the grace period: offline with a last-seen time.
    drop(phone);
    let offline = update_of(&mut bob, "alice").await;
    assert_eq!((offline["online"].clone(), offline["status"].clone()), (json!(false), json!("offline")));
    assert!(offline["lastSeen"].is_string(), "{offline}");
    assert_eq!(offline["customStatus"], "lunch", "the choice is kept for next time");

    // Bad input is refused, nothing else disturbed.
    let bad = ask(&mut bob, "presence:update", json!({"status": "invisible"})).await;
    assert_eq!(bad["error"]["code"], "INVALID_PAYLOAD");
    let long = ask(&mut bob, "presence:update", json!({"customStatus": "x".repeat(141)})).await;
    assert_eq!(long["error"]["code"], "INVALID_PAYLOAD");
    let none = ask(&mut bob, "presence:subscribe", json!({"userIds": []})).await;
    assert_eq!(none["error"]["code"], "INVALID_PAYLOAD");
    bob.send_json(json!({"type": "subscribe", "payload": {"topic": "presence:alice"}})).await;
    assert_eq!(bob.expect("error").await["code"], "FORBIDDEN", "presence topics only through presence:subscribe");
    let gone = ask(&mut bob, "presence:unsubscribe", json!({"userIds": ["alice"]})).await;
    assert_eq!(gone["success"], true);
    gateway.shutdown().await;
}
