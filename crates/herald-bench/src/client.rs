//! Load-generator clients: plain WebSocket, Socket.IO v4 over its websocket transport
//! (engine.io handshake, namespace connect with `auth: {token}`, ping/pong, `42[...]`
//! events, acks), and SSE. Each connection runs one task that counts the benchmark
//! events it receives and records their latency.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio_websockets::{Message, WebSocketStream};

use crate::recorder::{Recorder, stamp_of};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Plain WebSocket with `{type, payload}` frames and a `subscribe` command.
    Ws,
    /// Socket.IO v4 over the websocket transport, `join_channel` to subscribe.
    Sio,
    /// Server-Sent Events (receive only; subscribed to the user topic and `global`).
    Sse,
    /// Plain WebSocket to a server that subscribes every connection to `channel:bench` itself.
    WsAuto,
}

/// What a connection needs to know.
#[derive(Clone, Debug)]
pub struct Target {
    pub protocol: Protocol,
    pub address: SocketAddr,
    pub host: String,
    pub ws_path: String,
}

/// Why a connection failed, as reported in the results.
pub fn failure_reason(error: &anyhow::Error) -> String {
    let text = error.to_string();
    if text.contains("Connection refused") {
        "refused".into()
    } else if text.contains("timed out") || text.contains("deadline") {
        "timeout".into()
    } else if text.contains("401") {
        "unauthorized".into()
    } else if text.contains("Too many open files") {
        "emfile".into()
    } else if text.contains("Cannot assign requested address") {
        "no-ports".into()
    } else {
        text.chars().take(60).collect()
    }
}

/// A live connection; dropping `stop` ends it.
pub struct Connection {
    pub connect_time: Duration,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub fn close(&mut self) {
        // The reading task may already have ended; then there is nothing to stop.
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap_or_default();
        }
    }
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

async fn tcp(target: &Target, source: Option<IpAddr>) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = if target.address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.set_nodelay(true)?;
    Ok(socket.connect(target.address).await?)
}

/// A plain WebSocket client connection (tokio-websockets: it reads into spare capacity
/// without zeroing it and polls the socket with the task's own waker; tokio-tungstenite's
/// `memset` of its read buffer and its waker proxies were 6% of the load generator's CPU
/// in the chat scenario, measured with perf, CPU taken from the server on the same cores).
pub async fn websocket(target: &Target, path: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let stream = tcp(target, source).await?;
    let uri = format!("ws://{}{path}", target.host);
    let (ws, _) = tokio_websockets::ClientBuilder::new().uri(&uri)?.connect_on(stream).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(message)) if message.is_ping() || message.is_pong() => continue,
            Some(Ok(message)) => match message.as_text() {
                Some(text) => return Ok(text.to_owned()),
                None => anyhow::bail!("unexpected message {message:?}"),
            },
            Some(Err(error)) => return Err(error.into()),
            None => anyhow::bail!("connection closed during handshake"),
        }
    }
}

/// Opens one connection for `user`, subscribed to `channel:bench` when `subscribe` is
/// set, and starts its reading task. Returns once the server has confirmed.
pub async fn open(
    target: &Target,
    token: &str,
    subscribe: bool,
    source: Option<IpAddr>,
    recorder: Arc<Recorder>,
) -> anyhow::Result<Connection> {
    let started = Instant::now();
    let (stop, stopped) = oneshot::channel();
    let done = match target.protocol {
        Protocol::Ws | Protocol::WsAuto => {
            let separator = if target.ws_path.contains('?') { '&' } else { '?' };
            let mut ws = websocket(target, &format!("{}{separator}token={token}", target.ws_path), source).await?;
            if subscribe && target.protocol == Protocol::Ws {
                ws.send(Message::text(r#"{"type":"subscribe","payload":{"topic":"channel:bench"}}"#)).await?;
                loop {
                    let text = next_text(&mut ws).await?;
                    if text.contains("\"subscribed\"") {
                        break;
                    }
                    if text.contains("\"error\"") {
                        anyhow::bail!("subscribe refused: {text}");
                    }
                }
            }
            tokio::spawn(read_frames(ws, stopped, recorder, false))
        }
        Protocol::Sio => {
            let mut ws = websocket(target, "/socket.io/?EIO=4&transport=websocket", source).await?;
            let open = next_text(&mut ws).await?;
            anyhow::ensure!(open.starts_with('0'), "expected engine.io open, got {open}");
            ws.send(Message::text(format!("40{{\"token\":\"{token}\"}}"))).await?;
            loop {
                let text = next_text(&mut ws).await?;
                if text.starts_with("40") {
                    break;
                }
                if text.starts_with("44") {
                    anyhow::bail!("connect_error {text}");
                }
                if text == "2" {
                    ws.send(Message::text("3")).await?;
                }
            }
            if subscribe {
                ws.send(Message::text(r#"420["join_channel",{"channelId":"bench"}]"#)).await?;
                loop {
                    let text = next_text(&mut ws).await?;
                    if text.starts_with("430") {
                        anyhow::ensure!(text.contains("\"success\":true"), "join refused: {text}");
                        break;
                    }
                    if text == "2" {
                        ws.send(Message::text("3")).await?;
                    }
                }
            }
            tokio::spawn(read_frames(ws, stopped, recorder, true))
        }
        Protocol::Sse => {
            let url = format!("http://{}/events?token={token}", target.host);
            let response = reqwest::Client::new().get(url).send().await?;
            anyhow::ensure!(response.status() == 200, "status {}", response.status());
            tokio::spawn(read_sse(response, stopped, recorder))
        }
    };
    Ok(Connection { connect_time: started.elapsed(), stop: Some(stop), done })
}

/// Reads a plain WebSocket or (with `socket_io`) a Socket.IO connection until stopped,
/// recording each benchmark event; Socket.IO pings (`2`) are answered (`3`).
async fn read_frames(mut ws: Ws, mut stopped: oneshot::Receiver<()>, recorder: Arc<Recorder>, socket_io: bool) {
    loop {
        tokio::select! {
            _ = &mut stopped => {
                // Closing is best effort: the benchmark is over for this connection. The
                // close waits for the server's close frame, at most a few seconds.
                drop(tokio::time::timeout(Duration::from_secs(5), ws.close()).await);
                return;
            }
            message = ws.next() => match message {
                Some(Ok(message)) => if let Some(text) = message.as_text() {
                    if socket_io && text == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            return;
                        }
                    } else if (!socket_io || text.starts_with("42"))
                        && let Some(stamp) = stamp_of(text)
                    {
                        recorder.record(stamp);
                    }
                },
                _ => return,
            }
        }
    }
}

async fn read_sse(response: reqwest::Response, mut stopped: oneshot::Receiver<()>, recorder: Arc<Recorder>) {
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            chunk = body.next() => match chunk {
                Some(Ok(bytes)) => {
                    pending.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(end) = pending.find("\n\n") {
                        let message: String = pending.drain(..end + 2).collect();
                        if let Some(stamp) = stamp_of(&message) {
                            recorder.record(stamp);
                        }
                    }
                }
                _ => return,
            }
        }
    }
}
