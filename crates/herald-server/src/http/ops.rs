//! Liveness, readiness, Prometheus metrics and seed 001's health JSON.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use herald_core::metrics as m;
use http::StatusCode;
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "The process is up: `{status, uptimeSeconds}`")))]
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "uptimeSeconds": state.started_at.elapsed().as_secs()}))
}

/// `GET /ready`: the broker (and, once it exists, the store) can be reached; 503 otherwise
/// or while shutting down.
/// How long `/ready` waits for the store to answer.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200, description = "Broker and store reachable"), (status = 503, description = "Not ready: broker or store unreachable, or shutting down")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let broker_ready = state.broker.is_ready();
    let shutting_down = state.shutdown.is_cancelled();
    let store = state.inbox.store();
    let store_ready = match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, "store not ready");
            false
        }
        Err(_) => false,
    };
    let ready = broker_ready && store_ready && !shutting_down;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": ready,
        "shuttingDown": shutting_down,
        "broker": {"kind": state.broker.kind(), "ready": broker_ready},
        "store": {"kind": store.kind(), "ready": store_ready},
    });
    (status, Json(body)).into_response()
}

/// The cluster's figures as the broker's registry last saw them (this node alone with
/// the memory broker).
fn cluster_json(state: &AppState) -> serde_json::Value {
    match state.broker.cluster() {
        None => json!({"nodes": 1, "totalConnections": state.hub.stats().connections}),
        Some(nodes) => json!({
            "nodes": nodes.len(),
            "totalConnections": nodes.iter().map(|node| node.connections).sum::<u64>(),
            "members": nodes,
        }),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.hub.stats();
    metrics::gauge!(m::UNIQUE_USERS).set(stats.unique_users as f64);
    metrics::gauge!(m::TOPICS_ACTIVE).set(stats.topics as f64);
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

/// `GET /api/community/ws/health`: seed 001's health document.
pub async fn community_health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats = state.hub.stats();
    let average = if stats.unique_users == 0 { 0.0 } else { stats.connections as f64 / stats.unique_users as f64 };
    let broker_ready = state.broker.is_ready();
    Json(json!({
        "success": true,
        "data": {
            "cluster": cluster_json(&state),
            "websocket": {
                "totalConnections": stats.connections,
                "uniqueUsers": stats.unique_users,
                "averageConnectionsPerUser": (average * 100.0).round() / 100.0,
                "isHealthy": !state.shutdown.is_cancelled(),
            },
            "pubsub": {
                "isHealthy": broker_ready,
                "publisherConnected": broker_ready,
                "subscriberConnected": broker_ready,
                "subscribedChannels": stats.topics,
                "totalSubscriptions": stats.subscriptions,
            },
            "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }))
}

/// `GET /api/users/{user}/presence` (API key): where the user is connected, across the
/// cluster with the Redis broker, on this node otherwise.
pub async fn presence(
    State(state): State<AppState>,
    headers: http::HeaderMap,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, super::ApiError> {
    super::publish::require_api_key(&state, &headers)?;
    let user = herald_core::UserId::parse(&user).map_err(|error| {
        super::ApiError::bad_request(herald_core::ErrorCode::InvalidPayload, format!("userId: {error}"))
    })?;
    let presence = match state.broker.presence(&user).await {
        Ok(Some(presence)) => presence,
        Ok(None) => {
            let connections = state.hub.connections_of(&user) as u64;
            let nodes = if connections > 0 { vec!["local".to_owned()] } else { Vec::new() };
            herald_core::UserPresence { online: connections > 0, connections, nodes }
        }
        Err(error) => {
            tracing::warn!(%error, "presence unavailable");
            return Err(super::ApiError::from_code(
                herald_core::ErrorCode::BrokerUnavailable,
                "presence is unavailable while the broker is",
            ));
        }
    };
    Ok(Json(json!({"success": true, "userId": user.as_str(), "presence": presence})))
}
