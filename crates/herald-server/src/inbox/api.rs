//! The inbox over HTTP and as socket commands.
//!
//! Server API (`Authorization: Bearer <HERALD_API_KEY>`):
//! - `POST /api/notifications`: one notification (`userId`), the same one for many users
//!   (`userIds`), or several (`notifications: [...]`), stored in one transaction.
//! - `GET /api/users/{userId}/notifications`: a user's inbox.
//!
//! User API (the user's JWT; a user only ever sees their own notifications, and another
//! user's id answers 404 exactly like an id that does not exist):
//! `GET /api/me/notifications`, `GET /api/me/notifications/unread-count`,
//! `GET|DELETE /api/me/notifications/{id}`, `POST /api/me/notifications/{read,seen,delete}`.

use std::future::Future;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use herald_core::{ErrorCode, Principal, UserId};
use herald_store::{ListQuery, NewNotification, Priority, Selection, StoreError};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Change, Inbox, json::notification_json, now_ms};
use crate::http::ApiError;
use crate::http::publish::{body_error, require_api_key};
use crate::state::{AppState, token_from_request};

/// Most notifications one request may create.
pub const MAX_PER_REQUEST: usize = 1000;
/// Most ids one request may name.
pub const MAX_IDS: usize = 1000;
const MAX_TYPE_LEN: usize = 64;
const MAX_SOUND_LEN: usize = 256;
const MAX_KEY_LEN: usize = 200;

/// A command's answer: the ack body, or a stable code and message.
pub type CommandResult = Result<Value, (ErrorCode, String)>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewRequest<'a> {
    user_id: Option<String>,
    user_ids: Option<Vec<String>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    priority: Option<String>,
    sound: Option<String>,
    badge: Option<i64>,
    key: Option<String>,
    #[serde(borrow)]
    notifications: Option<Vec<NewRequest<'a>>>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidPayload, message)
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound => ApiError::from_code(ErrorCode::NotFound, "notification not found"),
        StoreError::Backend(detail) => {
            tracing::warn!(error = %detail, "store request failed");
            ApiError::from_code(ErrorCode::StoreUnavailable, "the store could not answer; retry later")
        }
    }
}

fn command_error(error: StoreError) -> (ErrorCode, String) {
    let api = store_error(error);
    (api.code, api.message)
}

/// Checks one request item and expands it to a notification per user.
fn expand(item: NewRequest<'_>, max_payload: usize, out: &mut Vec<NewNotification>) -> Result<(), ApiError> {
    if item.notifications.is_some() {
        return Err(invalid("\"notifications\" items cannot nest"));
    }
    let kind = item.kind.ok_or_else(|| invalid("\"type\" required"))?;
    if kind.is_empty()
        || kind.len() > MAX_TYPE_LEN
        || !kind.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return Err(invalid(format!("\"type\" must be 1 to {MAX_TYPE_LEN} letters, digits or _ - . :")));
    }
    let payload = item.payload.map(|raw| raw.get().to_owned()).unwrap_or_else(|| "{}".to_owned());
    if payload.len() > max_payload {
        return Err(ApiError::from_code(
            ErrorCode::PayloadTooLarge,
            format!("payload larger than {max_payload} bytes"),
        ));
    }
    // Stored on one line, as every wire format carries it.
    let payload = if payload.contains(['\n', '\r']) { payload.replace(['\n', '\r'], "") } else { payload };
    let priority = match item.priority.as_deref() {
        None => Priority::Normal,
        Some(text) => Priority::parse(text).ok_or_else(|| invalid("\"priority\" must be low, normal or high"))?,
    };
    if item.sound.as_ref().is_some_and(|sound| sound.len() > MAX_SOUND_LEN) {
        return Err(invalid(format!("\"sound\" longer than {MAX_SOUND_LEN} bytes")));
    }
    if item.badge.is_some_and(|badge| badge < 0) {
        return Err(invalid("\"badge\" must not be negative"));
    }
    if item.key.as_ref().is_some_and(|key| key.is_empty() || key.len() > MAX_KEY_LEN) {
        return Err(invalid(format!("\"key\" must be 1 to {MAX_KEY_LEN} bytes")));
    }
    let users = match (item.user_id, item.user_ids) {
        (Some(user), None) => vec![user],
        (None, Some(users)) if !users.is_empty() => users,
        _ => return Err(invalid("exactly one of \"userId\" or a non-empty \"userIds\" required")),
    };
    let created_at = now_ms();
    for user in users {
        UserId::parse(&user).map_err(|error| invalid(format!("userId {user:?}: {error}")))?;
        out.push(NewNotification {
            user_id: user,
            kind: kind.clone(),
            payload: payload.clone(),
            priority,
            sound: item.sound.clone(),
            badge: item.badge,
            dedupe_key: item.key.clone(),
            created_at,
            delivered_at: None,
        });
        if out.len() > MAX_PER_REQUEST {
            return Err(invalid(format!("at most {MAX_PER_REQUEST} notifications per request")));
        }
    }
    Ok(())
}

fn raw_json(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// `POST /api/notifications`.
#[utoipa::path(post, path = "/api/notifications", tag = "inbox", security(("api_key" = [])), request_body = crate::http::openapi::NewNotification, responses((status = 201, description = "Stored and pushed: `{success, created, notification}` or `{success, created, notifications}`", body = crate::http::openapi::Success), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody), (status = 413, description = "Payload too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot answer now", body = crate::http::openapi::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_api_key(&state, &headers)?;
    let body = body.map_err(body_error)?;
    let request: NewRequest = serde_json::from_slice(&body).map_err(|error| {
        let code = if error.is_syntax() || error.is_eof() { ErrorCode::InvalidJson } else { ErrorCode::InvalidPayload };
        ApiError::bad_request(code, format!("invalid notification body: {error}"))
    })?;
    let max_payload = state.inbox.settings.max_payload;
    let mut batch = Vec::new();
    let single = request.notifications.is_none() && request.user_ids.is_none();
    match request.notifications {
        Some(items) => {
            if items.is_empty() {
                return Err(invalid("\"notifications\" must not be empty"));
            }
            for item in items {
                expand(item, max_payload, &mut batch)?;
            }
        }
        None => expand(request, max_payload, &mut batch)?,
    }
    let created = state.inbox.create(batch).await.map_err(store_error)?;
    if single && let Some(first) = created.first() {
        let status = if first.new { StatusCode::CREATED } else { StatusCode::OK };
        let body = format!(
            r#"{{"success":true,"created":{},"notification":{}}}"#,
            first.new,
            notification_json(&first.notification, false)
        );
        return Ok((status, Json(raw_json(body))).into_response());
    }
    let items: Vec<String> = created.iter().map(|c| notification_json(&c.notification, false)).collect();
    let fresh = created.iter().filter(|c| c.new).count();
    let body = format!(r#"{{"success":true,"created":{fresh},"notifications":[{}]}}"#, items.join(","));
    Ok((StatusCode::CREATED, Json(raw_json(body))).into_response())
}

/// Query of a list request.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
    unread: Option<String>,
}

fn list_query(params: &ListParams) -> Result<ListQuery, ApiError> {
    let before = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => {
            Some(parse_id(cursor).ok_or_else(|| invalid("\"cursor\" is not a cursor from a previous page"))?)
        }
    };
    let unread_only = match params.unread.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => return Err(invalid("\"unread\" must be true or false")),
    };
    Ok(ListQuery { before, limit: params.limit.unwrap_or(50), unread_only })
}

async fn list_for(inbox: &Inbox, user: &UserId, params: &ListParams) -> Result<Json<Box<RawValue>>, ApiError> {
    let query = list_query(params)?;
    let page = inbox.store().list(user.as_str(), query).await.map_err(store_error)?;
    let unread = inbox.unread_count(user).await.map_err(store_error)?;
    let items: Vec<String> = page.items.iter().map(|n| notification_json(n, false)).collect();
    let cursor = match page.next_cursor {
        Some(cursor) => format!("\"{cursor}\""),
        None => "null".to_owned(),
    };
    Ok(Json(raw_json(format!(
        r#"{{"success":true,"notifications":[{}],"nextCursor":{cursor},"unreadCount":{unread}}}"#,
        items.join(",")
    ))))
}

/// `GET /api/users/{userId}/notifications` (server API).
#[utoipa::path(get, path = "/api/users/{user}/notifications", tag = "inbox", security(("api_key" = [])), params(("user" = String, Path, description = "The user id"), ("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page"), ("limit" = Option<u32>, Query, description = "1 to 100 (50)"), ("unread" = Option<String>, Query, description = "Only unread ones")), responses((status = 200, description = "A page of the user's inbox", body = crate::http::openapi::NotificationPage), (status = 400, description = "Malformed user id or query", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong API key", body = crate::http::openapi::ErrorBody)))]
pub async fn list_of_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    require_api_key(&state, &headers)?;
    let user = UserId::parse(&user).map_err(|error| invalid(format!("userId: {error}")))?;
    let Query(params) = params.map_err(|error| invalid(error.body_text()))?;
    list_for(&state.inbox, &user, &params).await
}

/// The principal of a user API request.
pub fn user_of(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Result<Principal, ApiError> {
    state
        .authenticate(token_from_request(headers, query).as_deref())
        .map_err(|error| ApiError::from_code(error.code, error.message))
}

/// `GET /api/me/notifications`.
#[utoipa::path(get, path = "/api/me/notifications", tag = "inbox", security(("user_token" = [])), params(("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page"), ("limit" = Option<u32>, Query, description = "1 to 100 (50)"), ("unread" = Option<String>, Query, description = "Only unread ones")), responses((status = 200, description = "A page of the user's own inbox", body = crate::http::openapi::NotificationPage), (status = 400, description = "Malformed query", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody)))]
pub async fn my_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Box<RawValue>>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let params: ListParams = match raw.as_deref() {
        Some(raw) => serde_urlencoded::from_str(raw).map_err(|error| invalid(format!("query: {error}")))?,
        None => ListParams::default(),
    };
    list_for(&state.inbox, &principal.user_id, &params).await
}

/// `GET /api/me/notifications/unread-count`.
#[utoipa::path(get, path = "/api/me/notifications/unread-count", tag = "inbox", security(("user_token" = [])), responses((status = 200, description = "`{success, count}`", body = crate::http::openapi::Success), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody)))]
pub async fn my_unread_count(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let count = state.inbox.unread_count(&principal.user_id).await.map_err(store_error)?;
    Ok(Json(json!({"success": true, "count": count})))
}

/// A notification id as clients send it: decimal digits, as a string or a number.
fn parse_id(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|id| *id > 0)
}

fn id_of(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => parse_id(text),
        Value::Number(number) => number.as_i64().filter(|id| *id > 0),
        _ => None,
    }
}

/// `{ids: [...]}`, `{all: true}`, a bare array of ids, or a single `{id}`.
pub fn selection(data: &Value, all_by_default: bool) -> Result<Selection, (ErrorCode, String)> {
    let bad = |message: &str| (ErrorCode::InvalidPayload, message.to_owned());
    let ids = match data {
        Value::Array(ids) => Some(ids),
        Value::Object(fields) => {
            if fields.get("all").and_then(Value::as_bool) == Some(true) {
                return Ok(Selection::All);
            }
            match (fields.get("ids"), fields.get("id").or_else(|| fields.get("notificationId"))) {
                (Some(Value::Array(ids)), _) => Some(ids),
                (Some(_), _) => return Err(bad("\"ids\" must be an array of notification ids")),
                (None, Some(id)) => {
                    return id_of(id).map(|id| Selection::Ids(vec![id])).ok_or_else(|| bad("invalid notification id"));
                }
                (None, None) => None,
            }
        }
        Value::Null => None,
        _ => return Err(bad("expected {\"ids\": [...]} or {\"all\": true}")),
    };
    match ids {
        None if all_by_default => Ok(Selection::All),
        None => Err(bad("expected {\"ids\": [...]} or {\"all\": true}")),
        Some(ids) if ids.is_empty() => Err(bad("\"ids\" must not be empty")),
        Some(ids) if ids.len() > MAX_IDS => Err(bad("too many ids in one request")),
        Some(ids) => {
            let parsed: Option<Vec<i64>> = ids.iter().map(id_of).collect();
            parsed.map(Selection::Ids).ok_or_else(|| bad("invalid notification id"))
        }
    }
}

/// `POST /api/me/notifications/{read,seen,delete}`.
#[utoipa::path(post, path = "/api/me/notifications/{action}", tag = "inbox", security(("user_token" = [])), params(("action" = String, Path, description = "`read`, `seen` or `delete`")), request_body = crate::http::openapi::Selection, responses((status = 200, description = "Changed", body = crate::http::openapi::Changed), (status = 400, description = "Malformed selection", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such action", body = crate::http::openapi::ErrorBody)))]
pub async fn my_change(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(action): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let body = body.map_err(body_error)?;
    let data: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::bad_request(ErrorCode::InvalidJson, "body is not valid JSON"))?
    };
    let which = selection(&data, false).map_err(|(code, message)| ApiError::bad_request(code, message))?;
    let change = match action.as_str() {
        "read" => Change::Read(which),
        "seen" => Change::Seen(which),
        "delete" => Change::Delete(which),
        _ => return Err(ApiError::from_code(ErrorCode::NotFound, "no such action")),
    };
    let changed = state.inbox.change(&principal.user_id, change).await.map_err(store_error)?;
    Ok(Json(json!({"success": true, "changed": changed.changed, "unreadCount": changed.unread})))
}

/// `GET /api/me/notifications/{id}`.
#[utoipa::path(get, path = "/api/me/notifications/{id}", tag = "inbox", security(("user_token" = [])), params(("id" = String, Path, description = "A notification id")), responses((status = 200, description = "`{success, notification}`", body = crate::http::openapi::Success), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such notification of this user", body = crate::http::openapi::ErrorBody)))]
pub async fn my_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = parse_id(&id).ok_or_else(|| store_error(StoreError::NotFound))?;
    let notification = state.inbox.store().get(principal.user_id.as_str(), id).await.map_err(store_error)?;
    Ok(Json(raw_json(format!(r#"{{"success":true,"notification":{}}}"#, notification_json(&notification, false)))))
}

/// `DELETE /api/me/notifications/{id}`.
#[utoipa::path(delete, path = "/api/me/notifications/{id}", tag = "inbox", security(("user_token" = [])), params(("id" = String, Path, description = "A notification id")), responses((status = 200, description = "Deleted", body = crate::http::openapi::Changed), (status = 401, description = "Missing, invalid or expired token", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such notification of this user", body = crate::http::openapi::ErrorBody)))]
pub async fn my_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = user_of(&state, &headers, raw.as_deref())?;
    let id = parse_id(&id).ok_or_else(|| store_error(StoreError::NotFound))?;
    let changed =
        state.inbox.change(&principal.user_id, Change::Delete(Selection::Ids(vec![id]))).await.map_err(store_error)?;
    Ok(Json(json!({"success": true, "changed": changed.changed, "unreadCount": changed.unread})))
}

/// The inbox's socket commands (seed 003's `notification:*`, seed 002's
/// `subscribe_notifications`), by canonical name; `None` when `name` is not one.
/// `member` is the session's principal and its inbox mark ([`super::Joined::through`]);
/// a session that has not authenticated gets `NOT_AUTHENTICATED`.
pub fn command(
    state: &AppState,
    member: Option<(&Principal, i64)>,
    name: &str,
    data: Value,
) -> Option<impl Future<Output = CommandResult> + Send + 'static> {
    enum Action {
        Change(Change),
        Pending,
        Count,
    }
    let action = match name {
        "notification:read" => selection(&data, false).map(|which| Action::Change(Change::Read(which))),
        "notification:seen" => selection(&data, true).map(|which| Action::Change(Change::Seen(which))),
        "notification:clear" => selection(&data, false).map(|which| Action::Change(Change::Delete(which))),
        "notification:clear-all" => Ok(Action::Change(Change::Delete(Selection::All))),
        "notification:get-pending" => Ok(Action::Pending),
        "subscribe_notifications" | "notification:unread-count" => Ok(Action::Count),
        _ => return None,
    };
    let inbox = state.inbox.clone();
    let member = member.map(|(principal, through)| (principal.clone(), through));
    Some(async move {
        let Some((principal, through)) = member else {
            return Err((ErrorCode::NotAuthenticated, "authenticate before using the inbox".to_owned()));
        };
        match action? {
            Action::Change(change) => {
                let changed = inbox.change(&principal.user_id, change).await.map_err(command_error)?;
                Ok(json!({"changed": changed.changed, "unreadCount": changed.unread}))
            }
            Action::Pending => {
                // What came after the session's mark was pushed to it live.
                let missed =
                    inbox.missed(&principal, through, None, super::MAX_CATCH_UP).await.map_err(command_error)?;
                let items: Vec<String> = missed.iter().map(|n| notification_json(n, false)).collect();
                let notifications: Value = serde_json::from_str(&format!("[{}]", items.join(","))).unwrap_or_default();
                Ok(json!({"notifications": notifications}))
            }
            Action::Count => {
                let count = inbox.unread_count(&principal.user_id).await.map_err(command_error)?;
                Ok(json!({"unreadCount": count}))
            }
        }
    })
}
