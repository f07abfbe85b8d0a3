//! Stable error codes shown to clients, and the reasons a session is closed.
//!
//! Transports translate these once, at the edge: an `error` event or frame with
//! `{code, message}`, an HTTP status, or a WebSocket close code.

use std::fmt;

/// A stable, machine-readable error code. The text never changes once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No token was presented.
    TokenMissing,
    /// The token is malformed, unsigned, signed with another key or algorithm, or has bad claims.
    TokenInvalid,
    /// The token's `exp` is in the past.
    TokenExpired,
    /// A command that needs an authenticated session arrived before authentication.
    NotAuthenticated,
    /// The principal may not do this (e.g. another user's `user:` topic without admin role).
    Forbidden,
    /// The topic needs membership, which the principal does not have.
    MembershipRequired,
    /// The topic name is malformed.
    InvalidTopic,
    /// The frame is not valid JSON.
    InvalidJson,
    /// The payload is valid JSON of the wrong shape.
    InvalidPayload,
    /// The event or command name is not known on this endpoint.
    UnknownEvent,
    /// A frame or body is larger than the configured maximum.
    PayloadTooLarge,
    /// Too many requests or connections in the configured window.
    RateLimited,
    /// The node has reached its connection limit.
    TooManyConnections,
    /// The broker could not take the event.
    BrokerUnavailable,
    /// The named resource does not exist for this principal (another user's included).
    NotFound,
    /// The store (SQLite or PostgreSQL) failed or is unreachable.
    StoreUnavailable,
    /// The resource is not in a state that allows this (e.g. answering a call that ended).
    Conflict,
    /// An unexpected internal failure; details are only in the logs.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "TOKEN_MISSING",
            ErrorCode::TokenInvalid => "TOKEN_INVALID",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::MembershipRequired => "MEMBERSHIP_REQUIRED",
            ErrorCode::InvalidTopic => "INVALID_TOPIC",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::UnknownEvent => "UNKNOWN_EVENT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::BrokerUnavailable => "BROKER_UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server ended a session. Each transport maps it to its own signal
/// (WebSocket close code, Socket.IO `error` + disconnect, end of the SSE stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The outgoing queue was full: the client does not read fast enough.
    SlowConsumer,
    /// The token expired while connected.
    TokenExpired,
    /// No client activity for the configured idle time.
    IdleTimeout,
    /// The client did not answer heartbeats.
    HeartbeatTimeout,
    /// The client did not authenticate within the grace period.
    AuthTimeout,
    /// The node is shutting down.
    ServerShutdown,
}

impl CloseReason {
    /// Stable text used in close frames, error events and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "SLOW_CONSUMER",
            CloseReason::TokenExpired => "TOKEN_EXPIRED",
            CloseReason::IdleTimeout => "IDLE_TIMEOUT",
            CloseReason::HeartbeatTimeout => "HEARTBEAT_TIMEOUT",
            CloseReason::AuthTimeout => "AUTH_TIMEOUT",
            CloseReason::ServerShutdown => "SERVER_SHUTDOWN",
        }
    }

    /// A short human sentence for the client.
    pub fn message(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "outgoing queue full: client is not reading fast enough",
            CloseReason::TokenExpired => "token expired",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::HeartbeatTimeout => "no heartbeat answer",
            CloseReason::AuthTimeout => "not authenticated within the grace period",
            CloseReason::ServerShutdown => "server shutting down",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
