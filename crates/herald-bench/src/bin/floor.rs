//! The floor: the cheapest server that can do the benchmark's job at all.
//!
//! It accepts WebSocket connections at `/ws?token=`, checks the HS256 token, and on
//! `POST /api/publish {"topic", "event", "data"}` builds one frame and writes it to every
//! connection of that topic (each connection is in `user:{sub}` and `channel:bench`).
//! Nothing else: no heartbeats, no metrics, no access rules. On loopback most of a
//! delivery's cost is the kernel's TCP work; this is what Herald is measured against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::SinkExt;
use herald_auth::{AuthConfig, Verifier};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

type Subscribers = HashMap<u64, mpsc::Sender<Utf8Bytes>>;

struct Floor {
    verifier: Verifier,
    topics: RwLock<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

#[derive(Deserialize)]
struct Publish<'a> {
    topic: String,
    event: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8090);
    let secret = std::env::var("JWT_SECRET").map_err(|_| anyhow::anyhow!("JWT_SECRET required"))?;
    let floor = Arc::new(Floor {
        verifier: Verifier::new(&AuthConfig::secret(secret))?,
        topics: RwLock::default(),
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/api/publish", post(publish))
        .route("/health", get(|| async { "ok" }))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("herald-floor listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(State(floor): State<Arc<Floor>>, Query(query): Query<TokenQuery>, ws: WebSocketUpgrade) -> Response {
    let Ok(principal) = floor.verifier.verify(&query.token) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let user_topic = format!("user:{}", principal.user_id);
    ws.read_buffer_size(4096).write_buffer_size(16 * 1024).on_upgrade(move |socket| serve(socket, floor, user_topic))
}

async fn serve(mut socket: WebSocket, floor: Arc<Floor>, user_topic: String) {
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    let (sender, mut receiver) = mpsc::channel::<Utf8Bytes>(256);
    let topics = [user_topic, "channel:bench".to_owned()];
    {
        let mut map = floor.topics.write();
        for topic in &topics {
            map.entry(topic.clone()).or_default().insert(id, sender.clone());
        }
    }
    drop(sender);
    loop {
        tokio::select! {
            frame = receiver.recv() => {
                let Some(frame) = frame else { break };
                if socket.feed(Message::Text(frame)).await.is_err() { break; }
                while let Ok(next) = receiver.try_recv() {
                    if socket.feed(Message::Text(next)).await.is_err() { break; }
                }
                if socket.flush().await.is_err() { break; }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut map = floor.topics.write();
    for topic in &topics {
        if let Some(subscribers) = map.get_mut(topic) {
            subscribers.remove(&id);
        }
    }
}

async fn publish(State(floor): State<Arc<Floor>>, body: Bytes) -> StatusCode {
    let Ok(request) = serde_json::from_slice::<Publish>(&body) else { return StatusCode::BAD_REQUEST };
    let event = request.event.as_deref().unwrap_or("notification");
    let frame = Utf8Bytes::from(format!("{{\"type\":\"{event}\",\"payload\":{}}}", request.data.get()));
    if let Some(subscribers) = floor.topics.read().get(&request.topic) {
        for sender in subscribers.values() {
            // A full queue drops the frame; the load generator reports it as loss.
            if sender.try_send(frame.clone()).is_err() {}
        }
    }
    StatusCode::ACCEPTED
}
