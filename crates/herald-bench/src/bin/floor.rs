//! The floor: the cheapest server that can do the benchmark's job at all.
//!
//! WebSocket connections arrive on a bare TCP listener (no HTTP framework): the handshake
//! is tungstenite's, the token (`?token=`, HS256) is checked in it, and each connection is
//! in `user:{sub}` and `channel:bench`. A second listener (`PUBLISH_PORT`, default
//! PORT+1) takes `POST /api/publish {"topic", "event", "data"}`, builds one frame and
//! hands the same bytes to every connection of the topic, whose task writes it.
//! For the `chat` scenario a connection may also send `chat:join {roomId}` (it joins
//! `room:{roomId}`, acked; `PUT /api/conversations/{topic}` on the publish port accepts
//! and ignores a member list), `message:typing` (broadcast to the room) and `message:new`
//! (numbered, serialised once with the fields of Herald's message, broadcast to the room,
//! the sender included, and acked): no store, no membership check, no rate limits.
//! Nothing else: no heartbeats, metrics, access rules, limits or shutdown. On loopback
//! most of a delivery's cost is the kernel's TCP work; this is what Herald is measured
//! against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use futures_util::{SinkExt, StreamExt};
use herald_auth::{AuthConfig, Verifier};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = HashMap<u64, mpsc::Sender<Utf8Bytes>>;

struct Floor {
    verifier: Verifier,
    topics: RwLock<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
    next_message: AtomicU64,
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
    let publish_port: u16 =
        std::env::var("PUBLISH_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(port.wrapping_add(1));
    let secret = std::env::var("JWT_SECRET").map_err(|_| anyhow::anyhow!("JWT_SECRET required"))?;
    let floor = Arc::new(Floor {
        verifier: Verifier::new(&AuthConfig::secret(secret))?,
        topics: RwLock::default(),
        next_id: AtomicU64::new(1),
        next_message: AtomicU64::new(1),
    });
    let publisher = Router::new()
        .route("/api/publish", post(publish))
        .route("/api/conversations/{topic}", put(|| async { StatusCode::OK }))
        .route("/health", get(|| async { "ok" }))
        .with_state(floor.clone());
    let publish_listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], publish_port))).await?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("herald-floor websocket {} publish {}", listener.local_addr()?, publish_listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(publish_listener, publisher).await {
            eprintln!("publish listener: {error}");
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, floor.clone()));
            }
            Err(error) => {
                eprintln!("accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

// The handshake callback's error type is tungstenite's own HTTP response.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, floor: Arc<Floor>) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut user_topic = None;
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let token = request.uri().query().and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        match token.map(|token| floor.verifier.verify(token)) {
            Some(Ok(principal)) => {
                user_topic = Some(format!("user:{}", principal.user_id));
                Ok(response)
            }
            _ => {
                let mut refusal = ErrorResponse::new(None);
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        }
    };
    // The same buffer sizes as Herald (`transport::ws::READ_BUFFER`, `ws::configure`).
    let config = WebSocketConfig::default().read_buffer_size(128).write_buffer_size(16 * 1024);
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await else {
        return;
    };
    let Some(user_topic) = user_topic else { return };
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    let (sender, mut receiver) = mpsc::channel::<Utf8Bytes>(256);
    let topics = [user_topic, "channel:bench".to_owned()];
    {
        let mut map = floor.topics.write();
        for topic in &topics {
            map.entry(topic.clone()).or_default().insert(id, sender.clone());
        }
    }
    let mut rooms = Vec::new();
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
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = chat(&floor, &text, &topics[0], id, &sender, &mut rooms)
                        && socket.send(Message::Text(reply)).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(sender);
    let mut map = floor.topics.write();
    for topic in topics.iter().chain(&rooms) {
        if let Some(subscribers) = map.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                map.remove(topic);
            }
        }
    }
}

#[derive(Deserialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload: ChatPayload<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ChatPayload<'a> {
    room_id: Option<String>,
    content: Option<String>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// A chat command from a connection: joins, typing and messages; returns the reply.
fn chat(
    floor: &Floor,
    text: &str,
    user_topic: &str,
    id: u64,
    sender: &mpsc::Sender<Utf8Bytes>,
    rooms: &mut Vec<String>,
) -> Option<Utf8Bytes> {
    let command: Command = serde_json::from_str(text).ok()?;
    let room = format!("room:{}", command.payload.room_id.as_deref()?);
    let user = user_topic.strip_prefix("user:").unwrap_or(user_topic);
    let ack = |data: serde_json::Value| {
        let id = command.id.map_or("null", RawValue::get);
        Utf8Bytes::from(format!(r#"{{"type":"ack","id":{id},"success":true,"data":{data}}}"#))
    };
    match command.kind {
        "chat:join" => {
            floor.topics.write().entry(room.clone()).or_default().insert(id, sender.clone());
            rooms.push(room);
            Some(ack(serde_json::json!({})))
        }
        "message:typing" => {
            let data = serde_json::json!({"userId": user, "isTyping": true, "roomId": command.payload.room_id});
            broadcast(floor, &room, "message:typing", &data.to_string());
            None
        }
        "message:new" => {
            let number = floor.next_message.fetch_add(1, Ordering::Relaxed).to_string();
            let metadata: Option<&RawValue> = command.payload.metadata;
            let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let data = serde_json::json!({
                "id": number, "messageId": number, "content": command.payload.content, "type": "text",
                "encrypted": false, "authorId": user, "senderId": user, "authorName": null, "authorImage": null,
                "replyTo": null, "forwardedFrom": null, "tempId": null, "metadata": metadata,
                "isEdited": false, "isDeleted": false, "createdAt": created.as_millis().to_string(), "editedAt": null,
                "roomId": command.payload.room_id, "topic": room,
            });
            broadcast(floor, &room, "message:new", &data.to_string());
            Some(ack(serde_json::json!({"messageId": number})))
        }
        _ => None,
    }
}

/// One frame, handed to every connection of `topic`.
fn broadcast(floor: &Floor, topic: &str, event: &str, data: &str) {
    let frame = Utf8Bytes::from(format!("{{\"type\":\"{event}\",\"payload\":{data}}}"));
    if let Some(subscribers) = floor.topics.read().get(topic) {
        for sender in subscribers.values() {
            // A full queue drops the frame; the load generator reports it as loss.
            if sender.try_send(frame.clone()).is_err() {}
        }
    }
}

async fn publish(State(floor): State<Arc<Floor>>, body: Bytes) -> StatusCode {
    let Ok(request) = serde_json::from_slice::<Publish>(&body) else { return StatusCode::BAD_REQUEST };
    let event = request.event.as_deref().unwrap_or("notification");
    broadcast(&floor, &request.topic, event, request.data.get());
    StatusCode::ACCEPTED
}
