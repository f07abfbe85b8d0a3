//! socketioxide with nothing of Herald's: accepts Socket.IO connections with any token,
//! answers `join_channel` with an ack, and relays `POST /api/publish` to `channel:bench`.
//! It tells how much of Herald's Socket.IO cost is the library's own (docs/benchmarks.md).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef};

#[derive(Deserialize)]
struct Publish<'a> {
    topic: String,
    event: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8092);
    let buffer: usize = std::env::var("MAX_BUFFER").ok().and_then(|b| b.parse().ok()).unwrap_or(256);
    let (layer, io) = SocketIo::builder().ws_read_buffer_size(512).max_buffer_size(buffer).build_layer();
    io.ns("/", async |socket: SocketRef| {
        socket.on("join_channel", async |socket: SocketRef, ack: AckSender| {
            socket.join("channel:bench");
            ack.send(&serde_json::json!({"success": true})).ok();
        });
    });
    let app = Router::new()
        .route("/api/publish", post(publish))
        .route("/health", get(|| async { "ok" }))
        .with_state(io)
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("sio-baseline listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(State(io): State<SocketIo>, body: Bytes) -> StatusCode {
    let Ok(request) = serde_json::from_slice::<Publish>(&body) else { return StatusCode::BAD_REQUEST };
    let event = request.event.unwrap_or_else(|| "notification".into());
    if io.to(request.topic).emit(&event, request.data).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::ACCEPTED
}
