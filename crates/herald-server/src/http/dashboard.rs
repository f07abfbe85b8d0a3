//! `/dashboard`: a live page for operators, behind the API key or an admin token.
//!
//! - `GET /dashboard`: the page, or a sign-in form (401) without a credential.
//! - `POST /dashboard/login` (form `credential=`): the API key or a JWT with the `admin`
//!   role; sets the cookie `herald_admin` (HttpOnly, SameSite=Strict, path /dashboard).
//! - `POST /dashboard/logout`: clears it.
//! - `GET /dashboard/stream`: Server-Sent Events, one `snapshot` a second (connections by
//!   transport, nodes, largest topics, events and deliveries per second, recent errors).
//! - `POST /dashboard/send`: a publish (`POST /api/publish`'s body) from the page's form.
//!
//! Every route also takes `Authorization: Bearer <credential>`. The page is one file of
//! plain HTML and JavaScript (`dashboard.html`), reading only these routes.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{Html, IntoResponse, Response};
use futures_util::StreamExt;
use herald_core::ErrorCode;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::ApiError;
use super::publish::{body_error, constant_time_eq, publish_body};
use crate::state::AppState;

const COOKIE: &str = "herald_admin";
const PAGE: &str = include_str!("dashboard.html");
const LOGIN: &str = include_str!("dashboard_login.html");
/// How often the stream sends a snapshot.
const TICK: Duration = Duration::from_secs(1);
/// Topics listed in a snapshot.
const TOPICS: usize = 10;
/// Longest credential taken from a form or a cookie (a JWT with claims fits).
const MAX_CREDENTIAL: usize = 8 * 1024;

/// The API key, or a valid token whose principal has the `admin` role.
fn accepted(state: &AppState, credential: &str) -> bool {
    !credential.is_empty()
        && credential.len() <= MAX_CREDENTIAL
        && (constant_time_eq(credential.as_bytes(), state.settings.api_key.as_bytes())
            || state.verifier.verify(credential).is_ok_and(|principal| principal.is_admin()))
}

/// The credential a request presents: `Authorization: Bearer`, else the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    crate::state::token_from_request(headers, None).or_else(|| {
        headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()).find_map(|cookies| {
            cookies.split(';').find_map(|pair| {
                let value = pair.trim().strip_prefix(COOKIE)?.strip_prefix('=')?;
                serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={value}"))
                    .ok()
                    .and_then(|mut pairs| pairs.pop())
                    .map(|(_, value)| value)
            })
        })
    })
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    presented(headers).is_some_and(|credential| accepted(state, &credential))
}

fn unauthorized() -> ApiError {
    ApiError::from_code(ErrorCode::TokenInvalid, "the API key or an admin token is required")
}

/// Headers every dashboard page carries: never cached, never framed.
fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

fn login_page(message: Option<&str>) -> Response {
    let notice = message.map(|text| format!(r#"<p class="error" id="error">{text}</p>"#)).unwrap_or_default();
    page(StatusCode::UNAUTHORIZED, LOGIN.replace("<!--error-->", &notice))
}

/// `GET /dashboard`.
pub async fn show(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if authorized(&state, &headers) { page(StatusCode::OK, PAGE.to_owned()) } else { login_page(None) }
}

/// `POST /dashboard/login`.
pub async fn login(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let Ok(body) = body else { return login_page(Some("The form could not be read.")) };
    let credential = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|pairs| pairs.into_iter().find(|(name, _)| name == "credential"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    if !accepted(&state, &credential) {
        return login_page(Some("Not accepted: give the API key or a token with the admin role."));
    }
    let encoded = serde_urlencoded::to_string([("v", credential.as_str())]).unwrap_or_default();
    let value = encoded.strip_prefix("v=").unwrap_or_default();
    let cookie = format!("{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=43200");
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `POST /dashboard/logout`.
pub async fn logout() -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herald_admin=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// `POST /dashboard/send`: the form's publish.
pub async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !authorized(&state, &headers) {
        return Err(unauthorized());
    }
    let body = body.map_err(body_error)?;
    publish_body(&state, &body).await
}

/// What the page shows, now; `previous` is the last snapshot's hub totals.
fn snapshot(state: &AppState, previous: &mut Option<(tokio::time::Instant, u64, u64)>) -> Value {
    let stats = state.hub.stats();
    let now = tokio::time::Instant::now();
    let (events_per_second, deliveries_per_second) = match previous.replace((now, stats.dispatched, stats.delivered)) {
        Some((at, dispatched, delivered)) => {
            let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
            (
                (stats.dispatched.saturating_sub(dispatched)) as f64 / seconds,
                (stats.delivered.saturating_sub(delivered)) as f64 / seconds,
            )
        }
        None => (0.0, 0.0),
    };
    let transports: serde_json::Map<String, Value> =
        state.hub.connections_by_transport().into_iter().map(|(name, count)| (name.to_owned(), count.into())).collect();
    let nodes = match state.broker.cluster() {
        Some(nodes) => nodes
            .iter()
            .map(|node| json!({"id": node.id, "connections": node.connections, "users": node.unique_users, "topics": node.topics}))
            .collect(),
        None => vec![json!({"id": "this node", "connections": stats.connections, "users": stats.unique_users, "topics": stats.topics})],
    };
    let topics: Vec<Value> = state
        .hub
        .largest_topics(TOPICS)
        .into_iter()
        .map(|(topic, subscribers)| json!({"topic": topic.as_str(), "subscribers": subscribers}))
        .collect();
    let errors: Vec<Value> = herald_core::metrics::recent_errors()
        .into_iter()
        .rev()
        .take(20)
        .map(|(at, code)| json!({"at": at, "code": code}))
        .collect();
    json!({
        "uptimeSeconds": state.started_at.elapsed().as_secs(),
        "connections": stats.connections,
        "users": stats.unique_users,
        "transports": transports,
        "broker": {"kind": state.broker.kind(), "ready": state.broker.is_ready()},
        "nodes": nodes,
        "topics": topics,
        "eventsPerSecond": (events_per_second * 10.0).round() / 10.0,
        "deliveriesPerSecond": (deliveries_per_second * 10.0).round() / 10.0,
        "delivered": stats.delivered,
        "errors": errors,
    })
}

/// `GET /dashboard/stream`: a snapshot now and every second, until the page closes or
/// the node shuts down.
pub async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized().into_response();
    }
    let shutdown = state.shutdown.clone().cancelled_owned();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let frames = futures_util::stream::unfold((state, ticker, None), |(state, mut ticker, mut previous)| async move {
        ticker.tick().await;
        let frame = format!("event: snapshot\ndata: {}\n\n", snapshot(&state, &mut previous));
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), (state, ticker, previous)))
    })
    .take_until(shutdown);
    let mut response = Body::from_stream(frames).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
