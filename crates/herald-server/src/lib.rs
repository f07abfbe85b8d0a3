//! Herald's server: the three transports (plain WebSocket, Socket.IO, SSE), the HTTP API
//! and the ops endpoints, on one axum router and one port.
//!
//! Entry points: [`config::Config`] (flags and environment) resolves into
//! [`config::Settings`]; [`app::App::bind`] builds the gateway and binds its listener;
//! [`app::App::spawn`] serves until shut down.
//!
//! Invariants: transports translate frames to hub commands and hub deliveries to frames
//! and nothing else; errors reach clients once, at the edge, as a stable code; every
//! connection task is tracked and awaited on shutdown.

pub mod app;
pub mod calls;
pub mod chat;
pub mod config;
pub mod http;
pub mod inbox;
pub mod limits;
pub mod outbox;
pub mod presence;
pub mod state;
pub mod telemetry;
pub mod transport;
pub mod wire;

pub use app::{App, Running};
pub use config::{Config, Settings, StoreSettings};
