//! The outbox over HTTP (server API, `Authorization: Bearer <HERALD_API_KEY>`):
//! - `POST /api/outbox` `{eventId, recipient, type, data}` enqueues (for applications
//!   that do not share Herald's database; the others enqueue in SQL, docs/outbox.md);
//! - `GET /api/outbox/dead?limit=` lists dead events with their errors;
//! - `GET /api/outbox/{eventId}` shows one event's state;
//! - `POST /api/outbox/{eventId}/retry` gives a dead event a fresh start.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use herald_core::ErrorCode;
use herald_store::{NewOutboxEvent, OutboxEvent, StoreError};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::ApiError;
use crate::http::publish::{body_error, require_api_key};
use crate::inbox::{json::timestamp, now_ms};
use crate::state::AppState;

/// Longest event id accepted.
const MAX_EVENT_ID: usize = 200;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnqueueRequest {
    event_id: String,
    recipient: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidPayload, message)
}

fn store_error(error: StoreError) -> ApiError {
    tracing::warn!(%error, "outbox request failed");
    ApiError::from_code(ErrorCode::StoreUnavailable, "the store could not answer; retry later")
}

fn event_json(event: &OutboxEvent) -> Value {
    let state = if event.processed_at.is_some() {
        "processed"
    } else if event.dead_at.is_some() {
        "dead"
    } else {
        "pending"
    };
    json!({
        "eventId": event.event_id,
        "recipient": event.recipient,
        "type": event.kind,
        "data": serde_json::from_str::<Value>(&event.data).unwrap_or(Value::String(event.data.clone())),
        "state": state,
        "attempts": event.attempts,
        "createdAt": timestamp(event.created_at),
        "nextAttemptAt": (state == "pending").then(|| timestamp(event.next_attempt_at)),
        "processedAt": event.processed_at.map(timestamp),
        "deadAt": event.dead_at.map(timestamp),
        "lastError": event.last_error,
    })
}

/// `POST /api/outbox`.
pub async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_api_key(&state, &headers)?;
    let body = body.map_err(body_error)?;
    let request: EnqueueRequest = serde_json::from_slice(&body).map_err(|error| {
        let code = if error.is_syntax() || error.is_eof() { ErrorCode::InvalidJson } else { ErrorCode::InvalidPayload };
        ApiError::bad_request(code, format!("invalid outbox event: {error}"))
    })?;
    if request.event_id.is_empty() || request.event_id.len() > MAX_EVENT_ID {
        return Err(invalid(format!("\"eventId\" must be 1 to {MAX_EVENT_ID} characters")));
    }
    if super::recipient_topic(&request.recipient).is_none() {
        return Err(invalid("\"recipient\" must be user:{id}, channel:{id} or global"));
    }
    if !super::valid_type(&request.kind) {
        return Err(invalid("\"type\" must be 1 to 64 characters"));
    }
    let data = match request.data {
        None => "{}".to_owned(),
        Some(value @ Value::Object(_)) => value.to_string(),
        Some(_) => return Err(invalid("\"data\" must be a JSON object")),
    };
    let event = NewOutboxEvent {
        event_id: request.event_id,
        recipient: request.recipient,
        kind: request.kind,
        data,
        created_at: now_ms(),
    };
    let enqueued = state.inbox.store().outbox().enqueue(event).await.map_err(store_error)?;
    let status = if enqueued { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"success": true, "enqueued": enqueued}))))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DeadParams {
    limit: Option<u32>,
}

/// `GET /api/outbox/dead`.
pub async fn dead(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<DeadParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let Query(params) = params.map_err(|error| invalid(error.body_text()))?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let events = state.inbox.store().outbox().dead(limit).await.map_err(store_error)?;
    Ok(Json(json!({"success": true, "events": events.iter().map(event_json).collect::<Vec<_>>()})))
}

/// `GET /api/outbox/{eventId}`.
pub async fn get_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    match state.inbox.store().outbox().event(&event_id).await.map_err(store_error)? {
        Some(event) => Ok(Json(json!({"success": true, "event": event_json(&event)}))),
        None => Err(ApiError::from_code(ErrorCode::NotFound, "no outbox event with that id")),
    }
}

/// `POST /api/outbox/{eventId}/retry`.
pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    if state.inbox.store().outbox().retry(&event_id, now_ms()).await.map_err(store_error)? {
        Ok(Json(json!({"success": true})))
    } else {
        Err(ApiError::from_code(ErrorCode::NotFound, "no dead outbox event with that id"))
    }
}
