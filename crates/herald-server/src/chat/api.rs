//! Conversations over HTTP.
//!
//! Server API (`Authorization: Bearer <HERALD_API_KEY>`): memberships.
//! - `PUT /api/conversations/{topic}` `{name?, members?: [userId], role?}`: creates or
//!   renames a conversation and adds members.
//! - `POST /api/conversations/{topic}/members` `{userIds: [...], role?}`,
//!   `DELETE /api/conversations/{topic}/members/{userId}`,
//!   `GET /api/conversations/{topic}/members`.
//!
//! User API (the user's JWT):
//! - `GET /api/me/conversations`; `GET /api/conversations/{topic}/messages?before=&limit=`
//!   and `GET /api/conversations/{topic}/online` (members only).
//! - `GET /api/messages/{id}/receipts`, `GET /api/messages/{id}/reactions` (members only).
//! - `GET /api/me/blocks`, `POST /api/me/blocks {userId}`, `DELETE /api/me/blocks/{userId}`.
//!
//! Seed 001's community API (the user's JWT), answering `{success, data}`:
//! `POST /api/community/messages {content, roomId | groupId}` (201),
//! `PATCH /api/community/messages/{id} {content}`, `DELETE /api/community/messages/{id}`,
//! `GET /api/community/messages?roomId=|groupId=&before=&limit=`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use herald_core::{ErrorCode, Principal, Topic, UserId};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Failure, PostRequest, conversation, conversation_topic, json as wire, message_id, store};
use crate::http::ApiError;
use crate::http::publish::{body_error, require_api_key};
use crate::inbox::api::user_of;
use crate::state::AppState;

/// Most members one request adds.
const MAX_MEMBERS_PER_REQUEST: usize = 1000;
const MAX_ROLE_LEN: usize = 32;
const MAX_NAME_LEN: usize = 200;

fn api_error((code, message): Failure) -> ApiError {
    ApiError::from_code(code, message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidPayload, message)
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(body_error)?;
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|error| ApiError::bad_request(ErrorCode::InvalidJson, error.to_string()))
}

/// A message id from a URL path.
fn id_in_path(text: String) -> Result<i64, ApiError> {
    message_id(Some(&Value::from(text))).map_err(api_error)
}

fn topic_of(name: &str) -> Result<Topic, ApiError> {
    conversation_topic(name).map_err(api_error)
}

fn user_ids(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let Value::Array(items) = value else { return Err(invalid("members must be an array of user ids")) };
    if items.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(invalid(format!("at most {MAX_MEMBERS_PER_REQUEST} members per request")));
    }
    items
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| invalid("user ids must be strings"))?;
            UserId::parse(text).map(|id| id.as_str().to_owned()).map_err(|error| invalid(format!("{text:?}: {error}")))
        })
        .collect()
}

fn role_of(data: &Value) -> Result<String, ApiError> {
    match data.get("role") {
        None | Some(Value::Null) => Ok("member".to_owned()),
        Some(Value::String(role))
            if !role.is_empty()
                && role.len() <= MAX_ROLE_LEN
                && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(role.clone())
        }
        _ => Err(invalid(format!("role must be 1 to {MAX_ROLE_LEN} letters, digits or _"))),
    }
}

/// `PUT /api/conversations/{topic}`.
#[utoipa::path(put, path = "/api/conversations/{topic}", tag = "conversations", security(("api_key" = [])), params(("topic" = String, Path, description = "`room:{id}`, `group:{id}` or `chat:{id}`")), request_body = crate::http::openapi::Conversation, responses((status = 200, description = "`{success, conversation, added}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed topic or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody)))]
pub async fn put_conversation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let topic = topic_of(&topic)?;
    let data = json_body(body)?;
    let name = match data.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.len() <= MAX_NAME_LEN => Some(name.clone()),
        _ => return Err(invalid(format!("name must be a string of at most {MAX_NAME_LEN} bytes"))),
    };
    let members = user_ids(data.get("members"))?;
    let role = role_of(&data)?;
    let added = super::add_members(&state, &topic, &members, &role, name.as_deref()).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "topic": topic.as_str(), "added": added})))
}

/// `POST /api/conversations/{topic}/members`.
#[utoipa::path(post, path = "/api/conversations/{topic}/members", tag = "conversations", security(("api_key" = [])), params(("topic" = String, Path, description = "A conversation topic")), request_body = crate::http::openapi::NewMembers, responses((status = 200, description = "`{success, added}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed topic or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such conversation", body = crate::http::openapi::ErrorBody)))]
pub async fn add_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let topic = topic_of(&topic)?;
    let data = json_body(body)?;
    let members = user_ids(data.get("userIds").or_else(|| data.get("members")))?;
    if members.is_empty() {
        return Err(invalid("userIds must name at least one user"));
    }
    let added = super::add_members(&state, &topic, &members, &role_of(&data)?, None).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "topic": topic.as_str(), "added": added})))
}

/// `DELETE /api/conversations/{topic}/members/{userId}`.
#[utoipa::path(delete, path = "/api/conversations/{topic}/members/{user}", tag = "conversations", security(("api_key" = [])), params(("topic" = String, Path, description = "A conversation topic"), ("user" = String, Path, description = "The member's user id")), responses((status = 200, description = "`{success, removed}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed topic or user id", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((topic, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let topic = topic_of(&topic)?;
    let user = UserId::parse(&user).map_err(|error| invalid(format!("userId: {error}")))?;
    if !super::remove_member(&state, &topic, &user).await.map_err(api_error)? {
        return Err(ApiError::from_code(ErrorCode::NotFound, "not a member"));
    }
    Ok(Json(json!({"success": true})))
}

/// `GET /api/conversations/{topic}/members`.
#[utoipa::path(get, path = "/api/conversations/{topic}/members", tag = "conversations", security(("api_key" = [])), params(("topic" = String, Path, description = "A conversation topic")), responses((status = 200, description = "`{success, members: [{userId, role, joinedAt}]}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed topic", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such conversation", body = crate::http::openapi::ErrorBody)))]
pub async fn members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let topic = topic_of(&topic)?;
    let members =
        store(&state).members(topic.as_str()).await.map_err(|error| api_error(super::store_failure(error)))?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| json!({"userId": m.user_id, "role": m.role, "joinedAt": wire::timestamp(m.joined_at)}))
        .collect();
    Ok(Json(json!({"success": true, "topic": topic.as_str(), "members": members})))
}

/// `GET /api/me/conversations`.
pub async fn my_conversations(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let topics = store(&state)
        .conversations_of(principal.user_id.as_str())
        .await
        .map_err(|error| api_error(super::store_failure(error)))?;
    Ok(Json(json!({"success": true, "conversations": topics})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PageParams {
    before: Option<String>,
    limit: Option<u32>,
    room_id: Option<String>,
    group_id: Option<String>,
    chat_id: Option<String>,
}

fn page_params(raw: Option<&str>) -> Result<PageParams, ApiError> {
    match raw {
        Some(raw) => serde_urlencoded::from_str(raw).map_err(|error| invalid(format!("query: {error}"))),
        None => Ok(PageParams::default()),
    }
}

async fn page(state: &AppState, principal: &Principal, topic: &Topic, params: &PageParams) -> Result<Value, ApiError> {
    let before = match &params.before {
        None => None,
        Some(text) => Some(message_id(Some(&Value::from(text.as_str()))).map_err(api_error)?),
    };
    let limit = params.limit.unwrap_or(50);
    let messages = store(state)
        .messages(principal.user_id.as_str(), topic.as_str(), before, limit)
        .await
        .map_err(|error| api_error(super::chat_error(error)))?;
    let next = (messages.len() as u32 >= limit.clamp(1, herald_store::chat::MAX_MESSAGE_PAGE))
        .then(|| messages.last().map(|m| m.id.to_string()))
        .flatten();
    let data: Vec<wire::MessageJson> = messages.iter().map(wire::message).collect();
    Ok(json!({"success": true, "data": data, "nextCursor": next}))
}

/// `GET /api/conversations/{topic}/messages`.
#[utoipa::path(get, path = "/api/conversations/{topic}/messages", tag = "conversations", security(("user_token" = [])), params(("topic" = String, Path, description = "A conversation topic"), ("before" = Option<String>, Query, description = "A message id: older messages only"), ("limit" = Option<u32>, Query, description = "1 to 100")), responses((status = 200, description = "`{success, messages}`, newest first", body = crate::http::openapi::Success), (status = 400, description = "Malformed topic or query", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not a member", body = crate::http::openapi::ErrorBody)))]
pub async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let topic = topic_of(&topic)?;
    Ok(Json(page(&state, &principal, &topic, &page_params(raw.as_deref())?).await?))
}

/// `GET /api/conversations/{topic}/online`: members online now.
pub async fn online(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let topic = topic_of(&topic)?;
    let online = super::online_members(&state, &principal, &topic).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "topic": topic.as_str(), "online": online})))
}

/// `GET /api/messages/{id}/receipts`.
pub async fn receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = id_in_path(id)?;
    let receipts = store(&state)
        .receipts(principal.user_id.as_str(), id)
        .await
        .map_err(|error| api_error(super::chat_error(error)))?;
    let receipts: Vec<Value> = receipts
        .into_iter()
        .map(|r| {
            json!({"userId": r.user_id, "deliveredAt": r.delivered_at.map(wire::timestamp), "readAt": r.read_at.map(wire::timestamp)})
        })
        .collect();
    Ok(Json(json!({"success": true, "messageId": id.to_string(), "receipts": receipts})))
}

/// `GET /api/messages/{id}/reactions`.
pub async fn reactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = id_in_path(id)?;
    let mut body = super::reactions(&state, &principal, id).await.map_err(api_error)?;
    body["success"] = Value::from(true);
    Ok(Json(body))
}

/// `GET /api/me/blocks`.
pub async fn my_blocks(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let blocked = store(&state)
        .blocked(principal.user_id.as_str())
        .await
        .map_err(|error| api_error(super::store_failure(error)))?;
    Ok(Json(json!({"success": true, "blocked": blocked})))
}

/// `POST /api/me/blocks {userId}`.
pub async fn block(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let data = json_body(body)?;
    let other = data.get("userId").and_then(Value::as_str).ok_or_else(|| invalid("userId required"))?;
    let other = UserId::parse(other).map_err(|error| invalid(format!("userId: {error}")))?;
    if other == principal.user_id {
        return Err(invalid("a user cannot block themself"));
    }
    let blocked = super::set_block(&state, &principal.user_id, &other, true).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "blocked": blocked})))
}

/// `DELETE /api/me/blocks/{userId}`.
pub async fn unblock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(other): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let other = UserId::parse(&other).map_err(|error| invalid(format!("userId: {error}")))?;
    let blocked = super::set_block(&state, &principal.user_id, &other, false).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "blocked": blocked})))
}

/// `POST /api/community/messages` (seed 001): stores the message and broadcasts
/// `CHAT_MESSAGE` to the room on every node.
#[utoipa::path(post, path = "/api/community/messages", tag = "community", security(("user_token" = [])), request_body = crate::http::openapi::CommunityMessage, responses((status = 201, description = "`{success, data: message}`, broadcast as `CHAT_MESSAGE`", body = crate::http::openapi::Success), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not a member", body = crate::http::openapi::ErrorBody)))]
pub async fn community_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let data = json_body(body)?;
    let request = PostRequest::from_payload(&data).map_err(api_error)?;
    let message = super::post(&state, &principal, request).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(json!({"success": true, "data": wire::message(&message)}))))
}

/// `PATCH /api/community/messages/{id} {content}`.
#[utoipa::path(patch, path = "/api/community/messages/{id}", tag = "community", security(("user_token" = [])), params(("id" = String, Path, description = "A message id")), request_body = crate::http::openapi::CommunityEdit, responses((status = 200, description = "`{success, data: message}`, broadcast as `MESSAGE_EDIT`", body = crate::http::openapi::Success), (status = 400, description = "Malformed id or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not the author", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such message", body = crate::http::openapi::ErrorBody)))]
pub async fn community_edit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = id_in_path(id)?;
    let data = json_body(body)?;
    let content = data.get("content").and_then(Value::as_str).ok_or_else(|| invalid("content must be a string"))?;
    let message = super::edit(&state, &principal, id, content).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "data": wire::message(&message)})))
}

/// `DELETE /api/community/messages/{id}`.
#[utoipa::path(delete, path = "/api/community/messages/{id}", tag = "community", security(("user_token" = [])), params(("id" = String, Path, description = "A message id")), responses((status = 200, description = "`{success, data}`, broadcast as `MESSAGE_DELETE`", body = crate::http::openapi::Success), (status = 400, description = "Malformed id", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not the author", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such message", body = crate::http::openapi::ErrorBody)))]
pub async fn community_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = id_in_path(id)?;
    super::delete(&state, &principal, id).await.map_err(api_error)?;
    Ok(Json(json!({"success": true, "data": {"messageId": id.to_string()}})))
}

/// `GET /api/community/messages?roomId=|groupId=&before=&limit=`.
#[utoipa::path(get, path = "/api/community/messages", tag = "community", security(("user_token" = [])), params(("roomId" = Option<String>, Query, description = "The room"), ("groupId" = Option<String>, Query, description = "Or the group"), ("before" = Option<String>, Query, description = "A message id"), ("limit" = Option<u32>, Query, description = "1 to 100")), responses((status = 200, description = "`{success, data: [message]}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed query", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not a member", body = crate::http::openapi::ErrorBody)))]
pub async fn community_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let params = page_params(raw.as_deref())?;
    let named = json!({"roomId": params.room_id, "groupId": params.group_id, "chatId": params.chat_id});
    let named: serde_json::Map<String, Value> = named
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let topic = conversation(&Value::Object(named)).map_err(api_error)?;
    Ok(Json(page(&state, &principal, &topic, &params).await?))
}
