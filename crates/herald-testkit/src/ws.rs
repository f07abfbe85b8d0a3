//! A tokio-tungstenite client speaking Herald's `{type, payload}` frames.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::within;

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read by [`WsClient::expect`] while looking for another one, oldest first.
    unread: std::collections::VecDeque<Value>,
}

/// How the server ended a connection.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::connect_with_response(url).await?.0)
    }

    /// Connects and returns the server's upgrade response too (its headers).
    pub async fn connect_with_response(
        url: &str,
    ) -> Result<(Self, tokio_tungstenite::tungstenite::handshake::client::Response), Error> {
        let (stream, response) = connect_async(url).await?;
        Ok((Self { stream, unread: Default::default() }, response))
    }

    /// Connects with a tiny socket receive buffer (which turns off the kernel's
    /// autotuning), so a client that stops reading makes the server's writes back up
    /// after kilobytes rather than tens of megabytes.
    pub async fn connect_with_small_window(url: &str) -> Result<Self, Error> {
        let address = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|host| host.parse::<std::net::SocketAddr>().ok())
            .expect("ws://IP:PORT/... url");
        let socket = tokio::net::TcpSocket::new_v4().map_err(Error::Io)?;
        socket.set_recv_buffer_size(4096).map_err(Error::Io)?;
        let stream = socket.connect(address).await.map_err(Error::Io)?;
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
        Ok(Self { stream, unread: Default::default() })
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("frame sent");
    }

    pub async fn send_message(&mut self, message: Message) -> Result<(), Error> {
        self.stream.send(message).await
    }

    /// The next JSON text frame (pings are answered by tungstenite and skipped).
    pub async fn next_json(&mut self) -> Value {
        if let Some(frame) = self.unread.pop_front() {
            return frame;
        }
        self.read_json().await
    }

    async fn read_json(&mut self) -> Value {
        within("a websocket frame", async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("frame is JSON"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
    }

    /// The next frame, which must be a published event: it carries its stream position
    /// (`offset`, `epoch`). Returns `{type, payload}` without them.
    pub async fn next_published(&mut self) -> Value {
        let mut frame = self.next_json().await;
        assert!(frame["offset"].as_u64().is_some_and(|offset| offset > 0), "no offset in {frame}");
        assert!(frame["epoch"].as_str().is_some_and(|epoch| !epoch.is_empty()), "no epoch in {frame}");
        let object = frame.as_object_mut().expect("frame is an object");
        object.remove("offset");
        object.remove("epoch");
        frame
    }

    /// Reads frames until one of type `kind` arrives; returns its payload. Frames of
    /// other types before it are returned in `skipped` order via panic message on timeout.
    pub async fn next_event(&mut self, kind: &str) -> Value {
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(crate::WAIT, async {
            loop {
                let frame = self.next_json().await;
                if frame["type"] == kind {
                    return frame["payload"].clone();
                }
                skipped.push(frame);
            }
        })
        .await;
        match found {
            Ok(payload) => payload,
            Err(_) => panic!("no {kind:?} frame; got instead: {skipped:?}"),
        }
    }

    /// The first frame of type `kind`, among those read before or by reading on; frames of
    /// other types stay, in order, for later calls. Returns its payload.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(|frame| frame["type"] == kind).await["payload"].clone()
    }

    /// The first frame matching `predicate`, like [`WsClient::expect`]; returns the frame.
    pub async fn expect_where(&mut self, predicate: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.unread.iter().position(&predicate) {
            return self.unread.remove(index).unwrap_or_default();
        }
        let found = tokio::time::timeout(crate::WAIT, async {
            loop {
                let frame = self.read_json().await;
                if predicate(&frame) {
                    return frame;
                }
                self.unread.push_back(frame);
            }
        })
        .await;
        match found {
            Ok(frame) => frame,
            Err(_) => panic!("no matching frame; got instead: {:?}", self.unread),
        }
    }

    /// Every frame until the first matching `marker` (which is returned last), those
    /// kept by earlier calls included: to show what did *not* arrive before the marker.
    pub async fn frames_until(&mut self, marker: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut frames: Vec<Value> = Vec::new();
        loop {
            let frame = self.next_json().await;
            let done = marker(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Reads until the server ends the connection; returns how it ended.
    pub async fn ended(&mut self) -> Ended {
        within("the connection to end", async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                        return Ended::Closed(code.into(), reason.to_string());
                    }
                    Some(Ok(Message::Close(None))) => return Ended::Closed(1005, String::new()),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Ended::Dropped,
                }
            }
        })
        .await
    }

    /// The raw stream, for tests that need tungstenite directly.
    pub fn stream(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.stream
    }
}
