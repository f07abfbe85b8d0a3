//! Socket.IO v4 (Engine.IO protocol 4, Socket.IO protocol 5) at `/socket.io/`, Herald's own.
//!
//! Long-polling, WebSocket, and the upgrade from one to the other, for the official
//! `socket.io-client` (v3 and v4) with its default options. A WebSocket-only client costs
//! one task and one bounded queue; see ARCHITECTURE.md for why this is not socketioxide.
//!
//! Namespace `/` (canonical names, plus seed 000's commands): a token in the `auth`
//! payload `{token}`, `Authorization: Bearer` or `?token=` is verified at connect and a
//! bad one is refused with `connect_error` (`"CODE: message"`); a client that connects
//! without one must send `authenticate {token}` within the grace period or is disconnected.
//! Namespace `/notifications` (seed 002): the token is required at connect.
//!
//! Every command answers its ack when the client asked for one:
//! `{success: true, ...}` or `{success: false, error: {code, message}}`. Failures are also
//! emitted as an `error` event `{message, code}`, which seed 000's clients listen for.
//! Binary attachments are refused with `INVALID_PAYLOAD`.

mod conn;
mod packet;
mod polling;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use serde_json::json;

pub use conn::namespace_of;
pub use packet::event_text;

use crate::state::{AppState, token_from_request};

/// The state of the Socket.IO routes: the app's, plus the long-polling sessions.
#[derive(Clone)]
struct Io {
    app: AppState,
    polling: Arc<polling::Sessions>,
}

/// The `/socket.io/` routes, to merge into the app's router.
pub fn routes(app: AppState) -> Router {
    let io = Io { app, polling: Arc::default() };
    Router::new()
        .route("/socket.io/", get(on_get).post(on_post))
        .route("/socket.io", get(on_get).post(on_post))
        .with_state(io)
}

/// Engine.IO's handshake errors: HTTP 400 with `{code, message}`.
#[derive(Debug, Clone, Copy)]
enum EngineError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedProtocolVersion,
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            EngineError::UnknownTransport => (0, "Transport unknown"),
            EngineError::UnknownSid => (1, "Session ID unknown"),
            EngineError::BadHandshakeMethod => (2, "Bad handshake method"),
            EngineError::BadRequest => (3, "Bad request"),
            EngineError::UnsupportedProtocolVersion => (5, "Unsupported protocol version"),
        };
        (StatusCode::BAD_REQUEST, axum::Json(json!({"code": code, "message": message}))).into_response()
    }
}

/// The Engine.IO query: `EIO`, `transport`, `sid`.
struct EngineQuery {
    transport: Transport,
    sid: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Polling,
    WebSocket,
}

fn engine_query(query: Option<&str>) -> Result<EngineQuery, EngineError> {
    let pairs: HashMap<String, String> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|_| EngineError::BadRequest)?;
    if pairs.get("EIO").map(String::as_str) != Some("4") {
        return Err(EngineError::UnsupportedProtocolVersion);
    }
    let transport = match pairs.get("transport").map(String::as_str) {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => return Err(EngineError::UnknownTransport),
    };
    Ok(EngineQuery { transport, sid: pairs.get("sid").cloned() })
}

/// The OPEN packet: `0{"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}`.
fn open_packet(app: &AppState, sid: &str, upgrades: &[&str]) -> String {
    let settings = &app.settings;
    let open = json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": settings.socketio_ping_interval.as_millis() as u64,
        "pingTimeout": settings.socketio_ping_timeout.as_millis() as u64,
        "maxPayload": settings.max_payload,
    });
    format!("0{open}")
}

async fn on_get(
    State(io): State<Io>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let engine = match engine_query(query.as_deref()) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    match (engine.transport, engine.sid, upgrade) {
        (Transport::Polling, None, _) => {
            let permit = match io.app.admission.admit(Some(peer.ip())) {
                Ok(permit) => permit,
                Err(refused) => {
                    return crate::http::ApiError::from_code(refused.0, "connection refused by limits").into_response();
                }
            };
            let token = token_from_request(&headers, query.as_deref());
            io.polling.open(&io.app, token, permit)
        }
        (Transport::Polling, Some(sid), _) => io.polling.poll(&sid).await,
        (Transport::WebSocket, None, Ok(upgrade)) => {
            let permit = match io.app.admission.admit(Some(peer.ip())) {
                Ok(permit) => permit,
                Err(refused) => {
                    return crate::http::ApiError::from_code(refused.0, "connection refused by limits").into_response();
                }
            };
            let token = token_from_request(&headers, query.as_deref());
            websocket::accept(io.app, upgrade, token, permit)
        }
        (Transport::WebSocket, Some(sid), Ok(upgrade)) => match io.polling.begin_upgrade(&sid) {
            Ok(session) => websocket::upgrade(io.app, upgrade, session, io.polling.clone()),
            Err(error) => error.into_response(),
        },
        (Transport::WebSocket, _, Err(_)) => EngineError::BadRequest.into_response(),
    }
}

async fn on_post(State(io): State<Io>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let engine = match engine_query(query.as_deref()) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    match (engine.transport, engine.sid) {
        (Transport::Polling, Some(sid)) => io.polling.post(&sid, &body),
        (Transport::Polling, None) => EngineError::BadHandshakeMethod.into_response(),
        (Transport::WebSocket, _) => EngineError::BadRequest.into_response(),
    }
}
