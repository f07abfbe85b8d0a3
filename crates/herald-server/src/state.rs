//! The state every handler shares: a cheap-to-clone handle over one `Arc<Shared>`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::ConnectInfo;
use herald_auth::{AuthError, Verifier};
use herald_core::{Broker, Delivery, Event, Hub, Outlet, Position, Principal, SessionGuard, SessionId, Topic};
use http::HeaderMap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::value::RawValue;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use herald_core::metrics as m;

use crate::config::Settings;
use crate::http::ApiError;
use crate::limits::{Admission, ConnectionPermit};

/// Sent after a returning client's missed events: `{recovered, missed, epoch, offset}`.
pub const RECOVERED_EVENT: &str = "recovered";

/// The node's shutdown signal: awaited like a `CancellationToken`, tested with one atomic
/// load. A token's `is_cancelled` takes the lock of its tree node, which every session
/// shares: tested on every wake of a WebSocket session, that lock was 0.7% of the
/// server's perf samples in the chat benchmark. The token is private, so it is cancelled
/// only through [`Shutdown::cancel`], which raises the flag first: whoever the
/// cancellation wakes sees the flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    begun: Arc<AtomicBool>,
}

impl Shutdown {
    /// Starts shutting down.
    pub fn cancel(&self) {
        self.begun.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Ready once shutting down.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// [`Shutdown::cancelled`], owning what it needs.
    pub fn cancelled_owned(self) -> WaitForCancellationFutureOwned {
        self.token.cancelled_owned()
    }

    /// A token cancelled with this one, for the parts that only wait on it (cancelling it
    /// does not shut the node down).
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// Everything shared by the transports, the HTTP API and the ops endpoints.
pub struct Shared {
    pub settings: Settings,
    /// Local sessions and subscriptions.
    pub hub: Hub,
    /// Where publications go; the only path to other nodes.
    pub broker: Arc<dyn Broker>,
    /// The notification inbox (over the store).
    pub inbox: Arc<crate::inbox::Inbox>,
    /// Verifies each connection's token once.
    pub verifier: Verifier,
    /// Connection cap and per-IP rate.
    pub admission: Admission,
    /// Cancelled when the node starts shutting down.
    pub shutdown: Shutdown,
    /// Every connection task, so shutdown can wait for them to drain.
    pub tasks: TaskTracker,
    pub metrics: PrometheusHandle,
    pub started_at: Instant,
    /// Node-local conversation state (typing indicators).
    pub chat: crate::chat::Chat,
    /// Node-local presence state (grace periods of leaving users).
    pub presence: crate::presence::Presence,
    /// Seed 000's Redis channels, when the outbox mirrors into them.
    pub outbox_mirror: Option<herald_redis::SeedMirror>,
}

/// A cheap-to-clone handle on [`Shared`].
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("listen", &self.settings.listen).finish_non_exhaustive()
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Finds a token in `Authorization: Bearer …` or the `token` query parameter.
pub fn token_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty());
    from_header.or_else(|| query_param(query, "token"))
}

/// One decoded query parameter.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let pairs: HashMap<String, String> = serde_urlencoded::from_str(query?).ok()?;
    pairs.get(name).cloned().filter(|value| !value.is_empty())
}

/// The peer address axum recorded for this request, if any.
pub fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

impl AppState {
    /// Registers a session through the inbox and starts giving it the notifications its
    /// device missed (see `inbox`). `after` is an SSE client's `Last-Event-ID`.
    ///
    /// With `since` (a returning client's last stream position) the session's live
    /// events are held until what it missed on its own topics has been given, followed
    /// by a `recovered` event.
    pub fn join(
        &self,
        principal: Principal,
        transport: &'static str,
        outlet: Arc<dyn Outlet>,
        after: Option<i64>,
        since: Option<Position>,
    ) -> crate::inbox::Joined {
        let mut joined = self.inbox.register(&self.hub, principal, transport, outlet, since.is_some());
        crate::chat::load_blocks(self, &joined.session);
        if let (Some(hold), Some(since)) = (joined.hold.take(), since) {
            let topics = joined.session.topics();
            let state = self.clone();
            self.tasks.spawn(async move {
                let (history, _) = state.recovery(&topics, &since).await;
                hold.release(&history);
            });
        }
        self.catch_up(&joined.session, joined.through, after);
        joined
    }

    /// Subscribes a session to `topic`; with `since`, what it missed on the topic since
    /// then reaches it before the topic's live events.
    pub fn subscribe(
        &self,
        session: &SessionGuard,
        topic: Topic,
        since: Option<Position>,
    ) -> Result<bool, herald_core::hub::SubscribeError> {
        let Some(since) = since else { return session.subscribe(topic) };
        let hold = session.hold();
        let subscribed = session.subscribe(topic.clone())?;
        let state = self.clone();
        self.tasks.spawn(async move {
            let (history, _) = state.recovery(&[topic], &since).await;
            hold.release(&history);
        });
        Ok(subscribed)
    }

    /// What a client at `since` missed on `topics`, as deliveries to give it before
    /// anything live, ending with the `recovered` event; and whether it was all there.
    /// Waits until the broker delivers `topics` to this node first, so nothing published
    /// meanwhile falls between history and live events.
    pub async fn recovery(&self, topics: &[Topic], since: &Position) -> (Vec<Arc<Delivery>>, bool) {
        let limit = (self.settings.session_queue.min(self.settings.socketio_buffer) / 2).max(1);
        let recovery = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            recovery = async {
                self.broker.subscribed(topics).await;
                self.broker.recover(topics, since, limit).await
            } => match recovery {
                Ok(recovery) => Some(recovery),
                Err(error) => {
                    tracing::warn!(%error, "history unavailable for a recovering client");
                    None
                }
            },
        };
        let recovered = recovery.as_ref().is_some_and(|recovery| recovery.recovered);
        metrics::counter!(m::RECOVERIES, "recovered" => if recovered { "true" } else { "false" }).increment(1);
        let (mut history, current) = match recovery {
            Some(recovery) => {
                let events: Vec<Arc<Delivery>> =
                    recovery.events.into_iter().map(|e| Arc::new(Delivery::new(e))).collect();
                (events, Some(recovery.current))
            }
            None => (Vec::new(), None),
        };
        let missed = history.len();
        let mut body = serde_json::json!({"recovered": recovered, "missed": missed});
        if let Some(current) = current {
            body["epoch"] = serde_json::Value::from(&*current.epoch);
            body["offset"] = serde_json::Value::from(current.offset);
        }
        let raw = serde_json::value::to_raw_value(&body).unwrap_or_else(|_| RawValue::NULL.to_owned());
        history.push(Arc::new(Delivery::new(Event::internal(RECOVERED_EVENT, raw))));
        (history, recovered)
    }

    /// Gives a session registered through `inbox.register` what its device missed, up to
    /// `through`, in a tracked task.
    pub fn catch_up(&self, session: &SessionGuard, through: i64, after: Option<i64>) {
        self.catch_up_session(session.id(), session.principal().clone(), through, after);
    }

    /// [`AppState::catch_up`] by session id.
    ///
    /// With a broker spanning nodes, another node's writer may push a notification at any
    /// time, so this node's mark does not bound what the device missed: the catch-up waits
    /// until the user's topic reaches this node, then gives everything stored after the
    /// device's position (a notification pushed meanwhile may arrive twice, never not at all).
    pub fn catch_up_session(&self, id: SessionId, principal: Principal, through: i64, after: Option<i64>) {
        let clustered = self.broker.cluster().is_some();
        if !clustered && through <= after.unwrap_or(0) {
            // Nothing was ever pushed up to the mark (or past `Last-Event-ID`): nothing to
            // look up, so connections cost the store nothing until the inbox is used.
            return;
        }
        let state = self.clone();
        // Catch-up must fit the session's queue beside live events.
        let limit = (self.settings.session_queue.min(self.settings.socketio_buffer) / 2).max(1) as u32;
        self.tasks.spawn(async move {
            let catch_up = async {
                let through = if clustered {
                    state.broker.subscribed(&[Topic::user(&principal.user_id)]).await;
                    crate::inbox::EVERYTHING
                } else {
                    through
                };
                state.inbox.catch_up(&state.hub, id, &principal, through, after, limit).await
            };
            tokio::select! {
                _ = state.shutdown.cancelled() => {}
                _ = catch_up => {}
            }
        });
    }
}

impl Shared {
    /// Admits a plain WebSocket or SSE connection: verifies the request's token, then the
    /// connection limits. The error is the HTTP answer to send instead.
    pub fn admit_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: SocketAddr,
    ) -> Result<(Principal, ConnectionPermit), ApiError> {
        let principal = self.authenticate(token_from_request(headers, query).as_deref()).map_err(|error| {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => error.code.as_str()).increment(1);
            ApiError::from_code(error.code, error.message)
        })?;
        let permit = self
            .admission
            .admit(Some(peer.ip()))
            .map_err(|refused| ApiError::from_code(refused.0, "connection refused by limits"))?;
        Ok((principal, permit))
    }

    /// Verifies a token that may be absent.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        match token {
            Some(token) => self.verifier.verify(token),
            None => Err(AuthError::missing()),
        }
    }
}
