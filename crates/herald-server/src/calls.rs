//! Call signalling (seed 003): `call:initiate`, `call:answer`, `call:reject`, `call:end`
//! and `call:ice-candidate`, relayed only between the call's two parties through their
//! user topics (so every device of each, on every node).
//!
//! A call is a row in the store with its state machine: ringing → active → ended, or
//! ringing → ended (rejected, cancelled) or missed when nobody answers within
//! `HERALD_CALL_RING_TIMEOUT`. The callee's devices all get `call:incoming`; when one
//! answers (or rejects), both parties' devices are told, so the others stop ringing.
//! `GET /api/me/calls` is the call history.

use axum::Json;
use axum::extract::{RawQuery, State};
use herald_core::{ErrorCode, Event, Principal, Publication, Topic, UserId};
use herald_store::{Call, CallStep};
use http::HeaderMap;
use serde_json::{Value, json};

use crate::chat::{Failure, chat_error, store_failure};
use crate::http::ApiError;
use crate::inbox::json::timestamp;
use crate::inbox::now_ms;
use crate::state::AppState;

/// Largest SDP offer, answer or ICE candidate relayed, in bytes of JSON.
pub const MAX_SIGNAL: usize = 16 * 1024;

fn invalid(message: impl Into<String>) -> Failure {
    (ErrorCode::InvalidPayload, message.into())
}

/// A call as clients see it.
pub fn call_json(call: &Call) -> Value {
    json!({
        "callId": call.id.to_string(),
        "callerId": call.caller_id,
        "calleeId": call.callee_id,
        "type": call.kind,
        "state": call.state,
        "reason": call.reason,
        "createdAt": timestamp(call.created_at),
        "answeredAt": call.answered_at.map(timestamp),
        "endedAt": call.ended_at.map(timestamp),
    })
}

/// A store error about a call, for clients.
fn call_error(error: herald_store::ChatError) -> Failure {
    match error {
        herald_store::ChatError::NotFound => (ErrorCode::NotFound, "call not found".into()),
        other => chat_error(other),
    }
}

fn call_id(data: &Value) -> Result<i64, Failure> {
    crate::chat::message_id(data.get("callId")).map_err(|_| invalid("callId must be a call's id"))
}

/// An opaque signalling value (SDP, ICE candidate), size-checked.
fn signal(data: &Value, field: &str) -> Result<Value, Failure> {
    let value = data.get(field).cloned().unwrap_or(Value::Null);
    if value.to_string().len() > MAX_SIGNAL {
        return Err((ErrorCode::PayloadTooLarge, format!("{field} larger than {MAX_SIGNAL} bytes")));
    }
    Ok(value)
}

fn user(text: &str) -> Result<UserId, Failure> {
    UserId::parse(text).map_err(|error| (ErrorCode::Internal, error.to_string()))
}

/// Publishes a call event from `sender` to the user topics named.
async fn tell(state: &AppState, to: &[&str], name: &'static str, data: Value, sender: &UserId) -> Result<(), Failure> {
    let topics = to.iter().map(|name| user(name).map(|user| Topic::user(&user))).collect::<Result<Vec<_>, _>>()?;
    let event = Event::from_value(name, &data)
        .map_err(|error| (ErrorCode::Internal, error.to_string()))?
        .from_sender(sender.clone());
    state.broker.publish(Publication::new(topics, event)).await.map_err(|error| {
        tracing::warn!(%error, "call event not published");
        (ErrorCode::BrokerUnavailable, "the broker could not take the event; retry later".into())
    })?;
    Ok(())
}

/// `call:initiate {calleeId, type?, offer?, chatId?}`: rings every device of the callee,
/// who must be a contact (share a conversation with the caller).
pub async fn initiate(state: &AppState, principal: &Principal, data: &Value) -> Result<Value, Failure> {
    let callee = data
        .get("calleeId")
        .or_else(|| data.get("userId"))
        .and_then(Value::as_str)
        .and_then(|text| UserId::parse(text).ok())
        .ok_or_else(|| invalid("calleeId must be a user id"))?;
    if callee == principal.user_id {
        return Err(invalid("a user cannot call themself"));
    }
    let kind = match data.get("type").and_then(Value::as_str) {
        None => "audio",
        Some(kind @ ("audio" | "video")) => kind,
        Some(_) => return Err(invalid("type must be audio or video")),
    };
    let offer = signal(data, "offer")?;
    let chat = state.inbox.store().chat();
    let contact = chat.share_conversation(principal.user_id.as_str(), callee.as_str()).await.map_err(store_failure)?;
    if !contact {
        return Err((ErrorCode::Forbidden, "not a contact: no shared conversation".into()));
    }
    let call =
        chat.create_call(principal.user_id.as_str(), callee.as_str(), kind, now_ms()).await.map_err(store_failure)?;
    let mut incoming = call_json(&call);
    incoming["callerName"] = principal.name.as_deref().map_or(Value::Null, Value::from);
    incoming["offer"] = offer;
    if let Some(chat) = data.get("chatId") {
        incoming["chatId"] = chat.clone();
    }
    tell(state, &[callee.as_str()], "call:incoming", incoming, &principal.user_id).await?;
    ring_timeout(state, call.id, principal.user_id.clone());
    Ok(call_json(&call))
}

/// Ends a call nobody answered once the ring timeout passes.
fn ring_timeout(state: &AppState, id: i64, caller: UserId) {
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(state.settings.call_ring_timeout) => {}
        }
        let chat = state.inbox.store().chat();
        // Only a call still ringing changes; one answered or ended meanwhile is left alone.
        if let Ok(call) = chat.step_call("", id, CallStep::Miss, now_ms()).await {
            let mut data = call_json(&call);
            data["userId"] = Value::from(call.caller_id.as_str());
            if let Err((_, message)) =
                tell(&state, &[&call.caller_id, &call.callee_id], "call:end", data, &caller).await
            {
                tracing::debug!(message, "missed call not published");
            }
        }
    });
}

/// `call:answer`, `call:reject`, `call:end`: a step of the call's state machine, told to
/// both parties' devices.
pub async fn step(state: &AppState, principal: &Principal, data: &Value, step: CallStep) -> Result<Value, Failure> {
    let id = call_id(data)?;
    let answer = if step == CallStep::Answer { signal(data, "answer")? } else { Value::Null };
    let call = state.inbox.store().chat().step_call(principal.user_id.as_str(), id, step, now_ms()).await.map_err(
        |error| match error {
            herald_store::ChatError::Conflict => (ErrorCode::Conflict, "the call's state does not allow this".into()),
            herald_store::ChatError::NotFound => (ErrorCode::NotFound, "call not found".into()),
            other => chat_error(other),
        },
    )?;
    let name = match step {
        CallStep::Answer => "call:answer",
        CallStep::Reject => "call:reject",
        CallStep::End | CallStep::Miss => "call:end",
    };
    let mut event = call_json(&call);
    event["userId"] = Value::from(principal.user_id.as_str());
    if step == CallStep::Answer {
        event["answer"] = answer;
    }
    tell(state, &[&call.caller_id, &call.callee_id], name, event, &principal.user_id).await?;
    Ok(call_json(&call))
}

/// `call:ice-candidate {callId, candidate}`: relayed to the other party only, while the
/// call rings or is active.
pub async fn ice_candidate(state: &AppState, principal: &Principal, data: &Value) -> Result<Value, Failure> {
    let id = call_id(data)?;
    let candidate = signal(data, "candidate")?;
    let call = state.inbox.store().chat().call(principal.user_id.as_str(), id).await.map_err(call_error)?;
    if call.state != "ringing" && call.state != "active" {
        return Err((ErrorCode::Conflict, "the call has ended".into()));
    }
    let other = if call.caller_id == principal.user_id.as_str() { &call.callee_id } else { &call.caller_id };
    let data = json!({"callId": id.to_string(), "userId": principal.user_id.as_str(), "candidate": candidate});
    tell(state, &[other], "call:ice-candidate", data, &principal.user_id).await?;
    Ok(json!({"callId": id.to_string()}))
}

/// `GET /api/me/calls?limit=`: the user's calls, newest first.
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = crate::inbox::api::user_of(&state, &headers, raw.as_deref())?;
    let limit = crate::state::query_param(raw.as_deref(), "limit").and_then(|text| text.parse().ok()).unwrap_or(50);
    let calls = state.inbox.store().chat().calls_of(principal.user_id.as_str(), limit).await.map_err(|error| {
        let (code, message) = store_failure(error);
        ApiError::from_code(code, message)
    })?;
    Ok(Json(json!({"success": true, "calls": calls.iter().map(call_json).collect::<Vec<_>>()})))
}
