//! Building and running one gateway: [`App::bind`] builds the state and binds the
//! listener (reporting the address), [`App::spawn`] serves until shutdown and returns a
//! [`Running`] handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, put};
use axum::serve::ListenerExt;
use herald_auth::Verifier;
use herald_core::hub::HubLimits;
use herald_core::{Broker, CloseReason, ErrorCode, Hub, MemoryBroker};
use http::{HeaderValue, Method};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::chat::api as chat_api;
use crate::config::{Settings, StoreSettings};
use crate::http::{ApiError, dashboard, ops, publish};
use crate::inbox::{Inbox, api as inbox_api};
use crate::limits::Admission;
use crate::outbox::api as outbox_api;
use crate::state::{AppState, Shared, Shutdown};
use crate::telemetry;
use crate::transport::{socketio, sse, ws};
use herald_store::{PostgresStore, SqliteStore, Store};

/// Opens the configured store; failing to is a startup error, never a silent fallback.
async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match settings {
        StoreSettings::SqliteFile(path) => Arc::new(
            SqliteStore::open(path, false)
                .await
                .map_err(|error| anyhow::anyhow!("cannot open the SQLite store {}: {error}", path.display()))?,
        ),
        StoreSettings::SqliteUrl(url) => Arc::new(
            SqliteStore::open_url(url, false)
                .await
                .map_err(|error| anyhow::anyhow!("cannot open the SQLite store: {error}"))?,
        ),
        StoreSettings::SqliteMemory => Arc::new(
            SqliteStore::open_memory()
                .await
                .map_err(|error| anyhow::anyhow!("cannot open the SQLite store: {error}"))?,
        ),
        StoreSettings::Postgres { url, schema } => Arc::new(
            PostgresStore::connect(url, schema.as_deref())
                .await
                .map_err(|error| anyhow::anyhow!("cannot connect to the PostgreSQL store: {error}"))?,
        ),
    };
    Ok(store)
}

/// How often expired tokens and idle sessions are looked for.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// A built gateway with its listener bound, not yet serving.
pub struct App {
    state: AppState,
    router: Router,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("local_addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl App {
    /// Builds the gateway on the broker its settings name (memory, or Redis with
    /// `REDIS_URL`, which must be reachable) and binds `settings.listen`.
    pub async fn bind(settings: Settings) -> anyhow::Result<Self> {
        let hub = Hub::new(HubLimits {
            max_topics_per_session: settings.max_topics_per_session,
            max_held: settings.session_queue.max(settings.socketio_buffer),
        });
        let shutdown = Shutdown::default();
        let tasks = TaskTracker::new();
        let broker: Arc<dyn Broker> = match &settings.redis {
            None => Arc::new(MemoryBroker::with_history(hub.clone(), settings.history.clone())),
            Some(redis) => {
                let mut config = redis.clone();
                config.history = settings.history.clone();
                Arc::new(
                    herald_redis::RedisBroker::start(hub.clone(), config, shutdown.token(), &tasks)
                        .await
                        .map_err(|error| anyhow::anyhow!("{error}"))?,
                )
            }
        };
        Self::assemble(settings, hub, broker, shutdown, tasks).await
    }

    /// Builds the gateway around a given hub and broker.
    pub async fn bind_with(settings: Settings, hub: Hub, broker: Arc<dyn Broker>) -> anyhow::Result<Self> {
        Self::assemble(settings, hub, broker, Shutdown::default(), TaskTracker::new()).await
    }

    async fn assemble(
        settings: Settings,
        hub: Hub,
        broker: Arc<dyn Broker>,
        shutdown: Shutdown,
        tasks: TaskTracker,
    ) -> anyhow::Result<Self> {
        let verifier = Verifier::new(&settings.auth)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", settings.listen))?;
        let metrics_listener = match settings.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|error| anyhow::anyhow!("cannot listen on {address} for metrics: {error}"))?,
            ),
            None => None,
        };
        let admission =
            Admission::new(settings.max_connections, settings.rate_limit_max_connections, settings.rate_limit_window);
        let store = open_store(&settings.store).await?;
        let inbox = Inbox::start(store, settings.inbox.clone(), hub.clone(), broker.clone(), shutdown.token(), &tasks)
            .await
            .map_err(|error| anyhow::anyhow!("cannot start the inbox: {error}"))?;
        let outbox_mirror = match &settings.outbox.mirror_url {
            Some(url) if settings.outbox.enabled || settings.worker_only => Some(
                herald_redis::SeedMirror::connect(url, &settings.outbox.mirror_prefix)
                    .await
                    .map_err(|error| anyhow::anyhow!("outbox mirror (HERALD_OUTBOX_MIRROR_URL): {error}"))?,
            ),
            _ => None,
        };
        let state = AppState(Arc::new(Shared {
            hub,
            broker,
            inbox,
            verifier,
            admission,
            shutdown,
            tasks,
            metrics: telemetry::prometheus(),
            started_at: Instant::now(),
            chat: crate::chat::Chat::new(settings.typing_timeout),
            presence: crate::presence::Presence::new(settings.presence_grace),
            outbox_mirror,
            settings,
        }));
        crate::chat::install(&state, &state.hub);
        let router = if state.settings.worker_only { worker_router(state.clone()) } else { router(state.clone()) };
        let router = router.layer(cors(&state.settings.cors_origins));
        Ok(Self { state, router, listener, metrics_listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until [`Running::shutdown`] (or the state's shutdown token) is triggered.
    pub fn spawn(self) -> anyhow::Result<Running> {
        let local_addr = self.listener.local_addr()?;
        let state = self.state.clone();
        let shutdown = state.shutdown.clone();
        if state.settings.outbox.enabled || state.settings.worker_only {
            crate::outbox::start(&state);
        }
        let sweeper = state.hub.clone().run_sweeper(SWEEP_PERIOD, state.settings.max_idle_time, shutdown.token());
        state.tasks.spawn(sweeper);
        {
            let state = state.clone();
            state.tasks.clone().spawn(async move {
                let mut ticker = tokio::time::interval(state.settings.rate_limit_window.max(Duration::from_secs(1)));
                loop {
                    tokio::select! {
                        _ = state.shutdown.cancelled() => return,
                        _ = ticker.tick() => state.admission.retain_recent(),
                    }
                }
            });
        }
        if let Some(listener) = self.metrics_listener {
            let ops_router = Router::new()
                .route("/metrics", get(ops::metrics))
                .route("/health", get(ops::health))
                .route("/ready", get(ops::ready))
                .with_state(state.clone());
            let stop = shutdown.clone();
            state.tasks.spawn(async move {
                let served = axum::serve(listener, ops_router).with_graceful_shutdown(stop.cancelled_owned()).await;
                if let Err(error) = served {
                    tracing::error!(%error, "metrics listener failed");
                }
            });
        }
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm and the
        // peer's delayed ACK hold some of them back by ~40 ms.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let serve_state = state.clone();
        let handle = tokio::spawn(async move {
            let stop = serve_state.shutdown.clone();
            let server = axum::serve(listener, service).with_graceful_shutdown(stop.clone().cancelled_owned());
            let server = tokio::spawn(async move { server.await });
            stop.cancelled().await;
            tracing::info!("shutting down: closing sessions");
            let deadline = serve_state.settings.shutdown_timeout;
            // Every connection task (WebSocket, SSE, Socket.IO) watches the same token:
            // it flushes what is queued, tells its client, and ends.
            serve_state.tasks.close();
            if tokio::time::timeout(deadline, serve_state.tasks.wait()).await.is_err() {
                tracing::warn!("connection tasks still running at the shutdown deadline");
            }
            // Anything still registered (a connection that did not notice) is closed now.
            serve_state.hub.close_all(CloseReason::ServerShutdown);
            match tokio::time::timeout(deadline, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(%error, "server error"),
                Ok(Err(error)) => tracing::error!(%error, "server task failed"),
                Err(_) => tracing::warn!("http connections still open at the shutdown deadline"),
            }
        });
        tracing::info!(%local_addr, "herald listening");
        Ok(Running { local_addr, state, handle })
    }
}

/// A serving gateway.
pub struct Running {
    local_addr: SocketAddr,
    state: AppState,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Starts shutting down: stop accepting, tell clients, drain queues.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Waits until the gateway has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await.map_err(|error| anyhow::anyhow!("gateway task failed: {error}"))
    }
}

/// The outbox's server API (both roles).
fn outbox_routes() -> Router<AppState> {
    Router::new()
        .route("/api/outbox", post(outbox_api::enqueue))
        .route("/api/outbox/dead", get(outbox_api::dead))
        .route("/api/outbox/{event_id}", get(outbox_api::get_event))
        .route("/api/outbox/{event_id}/retry", post(outbox_api::retry))
}

/// `herald worker`: the ops endpoints and the outbox API, no client connections.
pub fn worker_router(state: AppState) -> Router {
    let body_limit = state.settings.max_payload;
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .merge(outbox_routes())
        .fallback(|| async {
            ApiError::from_code(ErrorCode::UnknownEvent, "no such endpoint").with_status(http::StatusCode::NOT_FOUND)
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The HTTP routes, Socket.IO's included.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_payload;
    let socketio = socketio::routes(state.clone()).layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/community/ws/health", get(ops::community_health))
        .route("/api/publish", post(publish::publish))
        // Browsers ask every host for one; answering keeps their visits out of the errors.
        .route("/api/openapi.json", get(crate::http::openapi::serve))
        .route("/favicon.ico", get(|| async { http::StatusCode::NO_CONTENT }))
        .route("/dashboard", get(dashboard::show))
        .route("/dashboard/login", post(dashboard::login))
        .route("/dashboard/logout", post(dashboard::logout))
        .route("/dashboard/stream", get(dashboard::stream))
        .route("/dashboard/send", post(dashboard::send))
        .route("/api/notifications", post(inbox_api::create))
        .route("/api/users/{user}/notifications", get(inbox_api::list_of_user))
        .route("/api/users/{user}/presence", get(ops::presence))
        .route("/api/me/notifications", get(inbox_api::my_list))
        .route("/api/me/notifications/unread-count", get(inbox_api::my_unread_count))
        .route(
            "/api/me/notifications/{id}",
            get(inbox_api::my_get).delete(inbox_api::my_delete).post(inbox_api::my_change),
        )
        .route("/api/conversations/{topic}", put(chat_api::put_conversation))
        .route("/api/conversations/{topic}/members", get(chat_api::members).post(chat_api::add_members))
        .route("/api/conversations/{topic}/members/{user}", delete(chat_api::remove_member))
        .route("/api/conversations/{topic}/messages", get(chat_api::messages))
        .route("/api/conversations/{topic}/online", get(chat_api::online))
        .route("/api/me/conversations", get(chat_api::my_conversations))
        .route("/api/me/calls", get(crate::calls::history))
        .merge(outbox_routes())
        .route("/api/me/blocks", get(chat_api::my_blocks).post(chat_api::block))
        .route("/api/me/blocks/{user}", delete(chat_api::unblock))
        .route("/api/messages/{id}/receipts", get(chat_api::receipts))
        .route("/api/messages/{id}/reactions", get(chat_api::reactions))
        .route("/api/community/messages", get(chat_api::community_list).post(chat_api::community_post))
        .route("/api/community/messages/{id}", patch(chat_api::community_edit).delete(chat_api::community_delete))
        .route("/ws", get(ws::canonical))
        .route("/api/community/ws", get(ws::community))
        .route("/events", get(sse::canonical))
        .route("/notifications/events", get(sse::notifications))
        .fallback(|| async {
            ApiError::from_code(ErrorCode::UnknownEvent, "no such endpoint").with_status(http::StatusCode::NOT_FOUND)
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
        .merge(socketio)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE]);
    if origins.iter().any(|origin| origin == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list)).allow_credentials(true)
    }
}
