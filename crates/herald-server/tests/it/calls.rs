//! Call signalling between two users with two devices each: every callee device rings,
//! one answers and the others are told, ICE candidates go to the other party only, a
//! call nobody answers is missed, and a third user receives nothing.

use std::time::Duration;

use herald_testkit::{API_KEY, TestGateway, WsClient};
use serde_json::{Value, json};

use crate::chat::{ask, conversation, device};
use crate::support::publish_ok;

async fn event(ws: &mut WsClient, kind: &str) -> Value {
    ws.expect(kind).await
}

/// Nothing of type `call:*` arrived before a marker published to `user`.
async fn no_calls(gateway: &TestGateway, ws: &mut WsClient, user: &str) {
    publish_ok(gateway, json!({"topic": format!("user:{user}"), "event": "marker", "data": {}})).await;
    let frames = ws.frames_until(|frame| frame["type"] == "marker").await;
    let calls: Vec<&Value> =
        frames.iter().filter(|f| f["type"].as_str().is_some_and(|t| t.starts_with("call:"))).collect();
    assert!(calls.is_empty(), "{user} received call events: {calls:?}");
}

#[tokio::test]
async fn a_call_rings_every_callee_device_and_stays_between_its_two_parties() {
    let gateway = TestGateway::builder().settings(|s| s.call_ring_timeout = Duration::from_millis(400)).spawn().await;
    conversation(&gateway, "chat:c1", &["alice", "bob", "mallory"]).await;
    let mut alice_phone = device(&gateway, "alice").await;
    let mut alice_laptop = device(&gateway, "alice").await;
    let mut bob_phone = device(&gateway, "bob").await;
    let mut bob_laptop = device(&gateway, "bob").await;
    let mut mallory = device(&gateway, "mallory").await;

    let ack =
        ask(&mut alice_phone, "call:initiate", json!({"calleeId": "bob", "type": "video", "offer": {"sdp": "v=0"}}))
            .await;
    assert_eq!((ack["success"].clone(), ack["state"].clone()), (json!(true), json!("ringing")), "{ack}");
    let id = ack["callId"].as_str().unwrap().to_owned();
    for ws in [&mut bob_phone, &mut bob_laptop] {
        let incoming = event(ws, "call:incoming").await;
        assert_eq!((incoming["callId"].as_str(), incoming["callerId"].clone()), (Some(id.as_str()), json!("alice")));
        assert_eq!(incoming["offer"], json!({"sdp": "v=0"}));
    }
    // The laptop answers: every device of both is told, so the phone stops ringing.
    let answered = ask(&mut bob_laptop, "call:answer", json!({"callId": id, "answer": {"sdp": "v=1"}})).await;
    assert_eq!(answered["state"], "active", "{answered}");
    for ws in [&mut alice_phone, &mut alice_laptop, &mut bob_phone] {
        let answer = event(ws, "call:answer").await;
        assert_eq!((answer["userId"].clone(), answer["answer"]["sdp"].clone()), (json!("bob"), json!("v=1")));
    }
    let again = ask(&mut bob_phone, "call:answer", json!({"callId": id})).await;
    assert_eq!(again["error"]["code"], "CONFLICT", "answered on one device only: {again}");

    // ICE candidates go to the other party only.
    ask(&mut alice_phone, "call:ice-candidate", json!({"callId": id, "candidate": {"c": 1}})).await;
    assert_eq!(event(&mut bob_phone, "call:ice-candidate").await["candidate"], json!({"c": 1}));
    assert_eq!(event(&mut bob_laptop, "call:ice-candidate").await["userId"], "alice");
    let stranger = ask(&mut mallory, "call:ice-candidate", json!({"callId": id, "candidate": {}})).await;
    assert_eq!(stranger["error"]["code"], "NOT_FOUND", "a third user cannot touch the call: {stranger}");
    let stranger = ask(&mut mallory, "call:end", json!({"callId": id})).await;
    assert_eq!(stranger["error"]["code"], "NOT_FOUND");

    // Either party ends it; the history has it.
    let ended = ask(&mut bob_phone, "call:end", json!({"callId": id})).await;
    assert_eq!((ended["state"].clone(), ended["reason"].clone()), (json!("ended"), json!("completed")));
    assert_eq!(event(&mut alice_laptop, "call:end").await["reason"], "completed");
    let late = ask(&mut alice_phone, "call:ice-candidate", json!({"callId": id, "candidate": {}})).await;
    assert_eq!(late["error"]["code"], "CONFLICT");

    // A call nobody answers is missed after the ring timeout.
    let ack = ask(&mut bob_phone, "call:initiate", json!({"calleeId": "alice"})).await;
    let missed_id = ack["callId"].as_str().unwrap().to_owned();
    event(&mut alice_phone, "call:incoming").await;
    let missed = alice_phone
        .expect_where(|f| f["type"] == "call:end" && f["payload"]["callId"] == missed_id.as_str())
        .await["payload"]
        .clone();
    assert_eq!((missed["callId"].as_str(), missed["reason"].clone()), (Some(missed_id.as_str()), json!("missed")));
    let missed_on_caller =
        bob_laptop.expect_where(|f| f["type"] == "call:end" && f["payload"]["callId"] == missed_id.as_str()).await;
    assert_eq!(missed_on_caller["payload"]["state"], "missed");
    let rejected =
        ask(&mut alice_phone, "call:initiate", json!({"calleeId": "bob"})).await["callId"].as_str().unwrap().to_owned();
    let reject = ask(&mut bob_phone, "call:reject", json!({"callId": rejected})).await;
    assert_eq!(reject["reason"], "rejected");
    assert_eq!(event(&mut alice_laptop, "call:reject").await["userId"], "bob");

    let (status, history) = gateway.request("GET", "/api/me/calls", Some(&gateway.token("bob")), None).await;
    assert_eq!(status, 200);
    let states: Vec<&str> = history["calls"].as_array().unwrap().iter().map(|c| c["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["ended", "missed", "ended"], "{history}");

    // Mallory, in the same chat but no party to any call, received nothing of them.
    no_calls(&gateway, &mut mallory, "mallory").await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn only_contacts_can_be_called_and_bad_input_is_refused() {
    let gateway = TestGateway::spawn().await;
    conversation(&gateway, "chat:c1", &["alice", "bob"]).await;
    let mut alice = device(&gateway, "alice").await;
    let mut eve = device(&gateway, "eve").await;
    let cases = [
        (json!({"calleeId": "eve"}), "FORBIDDEN"),
        (json!({"calleeId": "alice"}), "INVALID_PAYLOAD"),
        (json!({"calleeId": "bob", "type": "hologram"}), "INVALID_PAYLOAD"),
        (json!({}), "INVALID_PAYLOAD"),
        (json!({"calleeId": "bob", "offer": "x".repeat(17 * 1024)}), "PAYLOAD_TOO_LARGE"),
    ];
    for (payload, code) in cases {
        let answer = ask(&mut alice, "call:initiate", payload.clone()).await;
        assert_eq!(answer["error"]["code"], code, "{payload}: {answer}");
    }
    let answer = ask(&mut alice, "call:answer", json!({"callId": "nope"})).await;
    assert_eq!(answer["error"]["code"], "INVALID_PAYLOAD");
    no_calls(&gateway, &mut eve, "eve").await;
    // The per-connection limit of call:initiate (5 a minute) holds.
    let gateway_limits = gateway
        .request("PUT", "/api/conversations/chat:c2", Some(API_KEY), Some(json!({"members": ["alice", "eve"]})))
        .await;
    assert_eq!(gateway_limits.0, 200);
    let mut fresh = device(&gateway, "alice").await;
    let mut refused = 0;
    for _ in 0..6 {
        fresh.send_json(json!({"type": "call:initiate", "payload": {"calleeId": "eve"}, "id": "x"})).await;
    }
    for _ in 0..6 {
        let frame = fresh
            .expect_where(|f| f["type"] == "error" || (f["type"] == "ack" && f["payload"]["event"] == "call:initiate"))
            .await;
        if frame["type"] == "error" && frame["payload"]["code"] == "RATE_LIMITED" {
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "the sixth is refused");
    gateway.shutdown().await;
}
