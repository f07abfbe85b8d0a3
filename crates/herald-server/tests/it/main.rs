#![allow(clippy::unwrap_used)]
//! Herald's behaviour tests: a real gateway on 127.0.0.1:0, real clients
//! (tokio-tungstenite, reqwest + eventsource-stream, the npm socket.io-client).

mod calls;
mod chat;
mod dashboard;
mod engineio;
mod inbox;
mod limits;
mod openapi;
mod ops;
mod outbox;
mod presence;
mod publish;
mod recovery;
mod socketio;
mod sse;
mod support;
mod typescript;
mod ws;
