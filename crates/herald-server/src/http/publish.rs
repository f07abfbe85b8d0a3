//! `POST /api/publish`: a producer hands an event to the broker for one or more topics.
//!
//! Body: `{"topic": "user:42", "event": "notification", "data": {...}}` or
//! `{"topics": [...], ...}`; `event` defaults to `notification`, `data` to `{}`.
//! Answers 202 with the event's stream position (`epoch`, `offset`) only once the
//! broker has taken the event; 503 when it could not.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use herald_core::metrics as m;
use herald_core::{ErrorCode, Event, Publication, Topic};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::ApiError;
use crate::state::AppState;

/// Most topics one publish may name.
pub const MAX_TOPICS_PER_PUBLISH: usize = 100;

#[derive(Deserialize)]
struct PublishRequest<'a> {
    topic: Option<String>,
    topics: Option<Vec<String>>,
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Compares without an early exit, so response time does not reveal the key.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <HERALD_API_KEY>`.
pub fn require_api_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => Err(ApiError::from_code(ErrorCode::TokenMissing, "Authorization: Bearer <API key> required")),
        Some(key) if constant_time_eq(key.as_bytes(), state.settings.api_key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::from_code(ErrorCode::TokenInvalid, "invalid API key")),
    }
}

/// Maps a body that could not be read (too large, aborted) to a JSON error.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::from_code(ErrorCode::PayloadTooLarge, "request body larger than the configured maximum")
    } else {
        ApiError::bad_request(ErrorCode::InvalidPayload, "request body could not be read")
    }
}

#[utoipa::path(post, path = "/api/publish", tag = "publish", security(("api_key" = [])), request_body = crate::http::openapi::PublishBody, responses((status = 202, description = "Taken by the broker", body = crate::http::openapi::Published), (status = 400, description = "Malformed body, topic or event", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "The broker cannot take events now", body = crate::http::openapi::ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    require_api_key(&state, &headers)?;
    let body = body.map_err(body_error)?;
    publish_body(&state, &body).await
}

/// A publish whose caller is already authorised (the API key, or the dashboard's
/// operator): parses the body and hands the event to the broker.
pub async fn publish_body(state: &AppState, body: &[u8]) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request: PublishRequest = serde_json::from_slice(body).map_err(|error| {
        let code = if error.is_syntax() || error.is_eof() { ErrorCode::InvalidJson } else { ErrorCode::InvalidPayload };
        ApiError::bad_request(code, format!("invalid publish body: {error}"))
    })?;

    let names: Vec<String> = match (request.topic, request.topics) {
        (Some(topic), None) => vec![topic],
        (None, Some(topics)) => topics,
        (Some(topic), Some(mut topics)) => {
            topics.insert(0, topic);
            topics
        }
        (None, None) => return Err(ApiError::bad_request(ErrorCode::InvalidTopic, "\"topic\" or \"topics\" required")),
    };
    if names.is_empty() || names.len() > MAX_TOPICS_PER_PUBLISH {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidTopic,
            format!("between 1 and {MAX_TOPICS_PER_PUBLISH} topics required"),
        ));
    }
    let mut topics = Vec::with_capacity(names.len());
    for name in &names {
        let topic = Topic::parse(name)
            .map_err(|error| ApiError::bad_request(ErrorCode::InvalidTopic, format!("{name:?}: {error}")))?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }

    let event_name = request.event.unwrap_or_else(|| "notification".to_owned());
    let data = match request.data {
        Some(raw) => raw.to_owned(),
        None => RawValue::from_string("{}".to_owned())
            .map_err(|_| ApiError::from_code(ErrorCode::Internal, "internal error"))?,
    };
    let event = Event::new(&event_name, data)
        .map_err(|error| ApiError::bad_request(ErrorCode::InvalidPayload, format!("event: {error}")))?;
    metrics::counter!(m::EVENTS_IN, "event" => m::event_label(&event_name)).increment(1);

    let position = state.broker.publish(Publication::new(topics.clone(), event)).await.map_err(|error| {
        tracing::warn!(%error, "publish refused by the broker");
        ApiError::from_code(ErrorCode::BrokerUnavailable, "the broker could not take the event; retry later")
    })?;
    metrics::counter!(m::PUBLISHES).increment(1);
    let topic_names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "success": true,
            "event": event_name,
            "topics": topic_names,
            "epoch": &*position.epoch,
            "offset": position.offset,
        })),
    ))
}
