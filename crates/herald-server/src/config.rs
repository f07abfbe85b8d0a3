//! Configuration: environment variables (the seeds' names where they exist), an optional
//! TOML file, and command-line flags. Precedence: flags, then environment, then the file,
//! then the built-in defaults.
//!
//! [`Config`] is what the command line and environment say; [`Settings`] is the resolved
//! runtime configuration the gateway is built from (tests build it directly).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use herald_auth::{AuthConfig, KeyConfig};

/// Defaults, shared by the flags and [`Settings::default`].
pub mod defaults {
    pub const PORT: u16 = 8080;
    pub const MAX_PAYLOAD: usize = 1024 * 1024;
    pub const PING_INTERVAL_MS: u64 = 25_000;
    pub const PING_TIMEOUT_MS: u64 = 20_000;
    pub const HEARTBEAT_INTERVAL_MS: u64 = 30_000;
    pub const MAX_IDLE_TIME_MS: u64 = 1_800_000;
    pub const AUTH_TIMEOUT_MS: u64 = 10_000;
    pub const RATE_LIMIT_WINDOW_MS: u64 = 60_000;
    pub const RATE_LIMIT_MAX_CONNECTIONS: u32 = 0;
    pub const MAX_CONNECTIONS: usize = 100_000;
    pub const SESSION_QUEUE: usize = 256;
    pub const SOCKETIO_BUFFER: usize = 256;
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
    pub const JWT_LEEWAY_SECS: u64 = 5;
    pub const MAX_TOPICS_PER_SESSION: usize = 1_000;
    pub const SQLITE_PATH: &str = "herald.db";
    pub const INBOX_MAX_PAYLOAD: usize = 16 * 1024;
    pub const INBOX_MAX_AGE: &str = "90d";
    pub const INBOX_MAX_PER_USER: u32 = 1_000;
    pub const INBOX_PRUNE_INTERVAL: &str = "60s";
    pub const HISTORY_SIZE: usize = 100;
    pub const HISTORY_TTL: &str = "5m";
    pub const HISTORY_MAX_TOPICS: usize = 100_000;
    pub const HISTORY_MAX_EVENTS: usize = 100_000;
}

/// Everything `herald serve` can be told. Each flag also reads the environment variable
/// named beside it; a TOML file given with `--config` may set any of them by the flag's
/// name with underscores (e.g. `jwt_secret = "..."`, `socketio_ping_interval = 25000`).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// TOML file with settings; flags and environment variables take precedence over it.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Port for every transport, the HTTP API and the ops endpoints.
    #[arg(long, env = "PORT", default_value_t = defaults::PORT)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// Development mode: generates a JWT secret and an API key when none is configured
    /// and prints a ready-to-use token and a curl example. Never use in production.
    #[arg(long, env = "HERALD_DEV")]
    pub dev: bool,

    /// `production` switches logs to JSON; `development` implies --dev. Falls back to NODE_ENV.
    #[arg(long = "environment", env = "HERALD_ENV")]
    pub environment: Option<String>,

    /// HMAC secret for HS256/384/512 tokens. NEXTAUTH_SECRET is read when this is unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Path to a PEM public key (RSA or EC) for RS256/ES256 tokens; replaces the secret.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Seconds of clock skew tolerated on `exp`.
    #[arg(long, env = "JWT_LEEWAY", default_value_t = defaults::JWT_LEEWAY_SECS)]
    pub jwt_leeway: u64,

    /// Bearer key for the server API (`POST /api/publish`).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Redis URL for the multi-node broker (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS). Unset: the single-node memory broker. Unreachable: startup fails.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel Herald owns.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald:")]
    pub redis_prefix: String,

    /// Prefix of seed 000/004's Redis channels (`{prefix}user:{id}`, `{prefix}channel:{id}`,
    /// `{prefix}global`), relayed as the event `notification`; empty to ignore them.
    #[arg(long, env = "HERALD_SEED_CHANNEL_PREFIX", default_value = "notifications:")]
    pub seed_channel_prefix: String,

    /// This node's name in the cluster registry (default: host name and process id).
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<String>,

    /// Store: a `postgres://` URL for PostgreSQL, or a `sqlite:` URL; unset means the
    /// SQLite file at --sqlite-path. A store that cannot be opened stops startup.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL schema for Herald's tables (created if missing); default the URL's search path.
    #[arg(long, env = "HERALD_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,

    /// SQLite database file used when DATABASE_URL is unset (created if missing, WAL mode).
    #[arg(long, env = "HERALD_SQLITE_PATH", default_value = defaults::SQLITE_PATH)]
    pub sqlite_path: PathBuf,

    /// Largest notification payload accepted by the inbox, bytes of JSON.
    #[arg(long, env = "HERALD_INBOX_MAX_PAYLOAD", default_value_t = defaults::INBOX_MAX_PAYLOAD)]
    pub inbox_max_payload: usize,

    /// Notifications older than this are pruned (e.g. `90d`, `12h`); `0s` keeps them forever.
    #[arg(long, env = "HERALD_INBOX_MAX_AGE", default_value = defaults::INBOX_MAX_AGE, value_parser = humantime::parse_duration)]
    pub inbox_max_age: Duration,

    /// A user keeps at most this many notifications, the newest; 0 means no limit.
    #[arg(long, env = "HERALD_INBOX_MAX_PER_USER", default_value_t = defaults::INBOX_MAX_PER_USER)]
    pub inbox_max_per_user: u32,

    /// How often the inbox is pruned (e.g. `60s`).
    #[arg(long, env = "HERALD_INBOX_PRUNE_INTERVAL", default_value = defaults::INBOX_PRUNE_INTERVAL, value_parser = humantime::parse_duration)]
    pub inbox_prune_interval: Duration,

    /// Recent events kept per topic for clients that come back (0 keeps none).
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = defaults::HISTORY_SIZE)]
    pub history_size: usize,

    /// How long an event stays recoverable (e.g. `5m`).
    #[arg(long, env = "HERALD_HISTORY_TTL", default_value = defaults::HISTORY_TTL, value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Most topics with history kept in memory by one node (memory broker).
    #[arg(long, env = "HERALD_HISTORY_MAX_TOPICS", default_value_t = defaults::HISTORY_MAX_TOPICS)]
    pub history_max_topics: usize,

    /// Most events kept in memory for returning clients, all topics together (memory broker).
    #[arg(long, env = "HERALD_HISTORY_MAX_EVENTS", default_value_t = defaults::HISTORY_MAX_EVENTS)]
    pub history_max_events: usize,

    /// Allowed CORS origin(s), comma-separated; `*` allows any.
    #[arg(long, env = "CORS_ORIGIN", default_value = "*")]
    pub cors_origin: String,

    /// Log filter, e.g. `info` or `herald_server=debug,info`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Socket.IO (engine.io) ping interval, milliseconds.
    #[arg(long, env = "SOCKETIO_PING_INTERVAL", default_value_t = defaults::PING_INTERVAL_MS)]
    pub socketio_ping_interval: u64,

    /// Socket.IO (engine.io) ping timeout, milliseconds.
    #[arg(long, env = "SOCKETIO_PING_TIMEOUT", default_value_t = defaults::PING_TIMEOUT_MS)]
    pub socketio_ping_timeout: u64,

    /// Largest frame, message or request body accepted, bytes (all transports and the API).
    #[arg(long, env = "SOCKETIO_MAX_BUFFER_SIZE", default_value_t = defaults::MAX_PAYLOAD)]
    pub max_payload: usize,

    /// Window of the per-IP connection rate limit, milliseconds.
    #[arg(long, env = "RATE_LIMIT_CONNECTION_WINDOW", default_value_t = defaults::RATE_LIMIT_WINDOW_MS)]
    pub rate_limit_connection_window: u64,

    /// Connections one IP may open per window; 0 turns the limit off.
    #[arg(long, env = "RATE_LIMIT_MAX_CONNECTIONS", default_value_t = defaults::RATE_LIMIT_MAX_CONNECTIONS)]
    pub rate_limit_max_connections: u32,

    /// Client event rate limits per connection, overriding seed 003's defaults:
    /// `event=count/duration` items separated by commas, e.g.
    /// `message:new=60/1m,call:initiate=off` (docs/chat.md lists the events).
    #[arg(long, env = "HERALD_RATE_LIMITS", default_value = "")]
    pub rate_limits: String,

    /// How long a typing indicator lasts without being renewed before Herald sends
    /// `message:stop-typing` itself.
    #[arg(long, env = "HERALD_TYPING_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub typing_timeout: Duration,

    /// How long a user whose last connection closed stays online, so that a reload does
    /// not announce them offline and online again.
    #[arg(long, env = "HERALD_PRESENCE_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub presence_grace: Duration,

    /// How long a call rings unanswered before it is missed.
    #[arg(long, env = "HERALD_CALL_RING_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_ring_timeout: Duration,

    /// Runs the outbox worker inside this node (`herald worker` runs it alone).
    #[arg(long, env = "HERALD_OUTBOX", default_value_t = true, action = clap::ArgAction::Set)]
    pub outbox: bool,

    /// Outbox events claimed at once.
    #[arg(long, env = "HERALD_OUTBOX_BATCH", default_value_t = 200)]
    pub outbox_batch: u32,

    /// How often the outbox is looked at without a wake-up (PostgreSQL's NOTIFY wakes the
    /// worker at once; SQLite relies on this).
    #[arg(long, env = "HERALD_OUTBOX_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub outbox_poll_interval: Duration,

    /// How long a claimed event is left to its worker before another may take it.
    #[arg(long, env = "HERALD_OUTBOX_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub outbox_lease: Duration,

    /// Attempts before an event is parked as dead.
    #[arg(long, env = "HERALD_OUTBOX_MAX_ATTEMPTS", default_value_t = 8)]
    pub outbox_max_attempts: u32,

    /// First retry delay; each further one doubles, up to `--outbox-backoff-max`, with jitter.
    #[arg(long, env = "HERALD_OUTBOX_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub outbox_backoff: Duration,

    #[arg(long, env = "HERALD_OUTBOX_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub outbox_backoff_max: Duration,

    /// Processed events are deleted once older than this.
    #[arg(long, env = "HERALD_OUTBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,

    /// Enrichment: the actor of a TIP, SUB or FOLLOW event by id (`$1`), columns `name`
    /// and `image` as text. The default fits seed 004's Prisma schema.
    #[arg(long, env = "HERALD_OUTBOX_USER_QUERY", default_value = crate::outbox::DEFAULT_USER_QUERY)]
    pub outbox_user_query: String,

    /// Enrichment: a channel by id (`$1`), column `name` as text.
    #[arg(long, env = "HERALD_OUTBOX_CHANNEL_QUERY", default_value = crate::outbox::DEFAULT_CHANNEL_QUERY)]
    pub outbox_channel_query: String,

    /// Also publish outbox events to seed 000's channels (`{prefix}user:{id}`, …) on this
    /// Redis, for an existing notify-wss that listens there.
    #[arg(long, env = "HERALD_OUTBOX_MIRROR_URL")]
    pub outbox_mirror_url: Option<String>,

    /// Channel prefix of the mirror.
    #[arg(long, env = "HERALD_OUTBOX_MIRROR_PREFIX", default_value = "notifications:")]
    pub outbox_mirror_prefix: String,

    /// Image keys from the user query become `https://{domain}/{key}`.
    #[arg(long, env = "CLOUDFRONT_DOMAIN")]
    pub cloudfront_domain: Option<String>,

    /// Most concurrent connections on this node; further ones get 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Close sessions without client activity for this long, milliseconds; 0 turns it off.
    #[arg(long, env = "MAX_IDLE_TIME", default_value_t = defaults::MAX_IDLE_TIME_MS)]
    pub max_idle_time: u64,

    /// Plain WebSocket ping interval, milliseconds; a client that has not answered the
    /// previous ping is terminated.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = defaults::HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval: u64,

    /// Grace period for a Socket.IO client that connected without a token to send
    /// `authenticate`, milliseconds.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT", default_value_t = defaults::AUTH_TIMEOUT_MS)]
    pub auth_timeout: u64,

    /// Events queued per plain WebSocket or SSE session before it counts as a slow consumer.
    #[arg(long, env = "HERALD_SESSION_QUEUE", default_value_t = defaults::SESSION_QUEUE)]
    pub session_queue: usize,

    /// Packets buffered per Socket.IO socket before it counts as a slow consumer.
    #[arg(long, env = "HERALD_SOCKETIO_BUFFER", default_value_t = defaults::SOCKETIO_BUFFER)]
    pub socketio_buffer: usize,

    /// Most topics one session may subscribe to.
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_SESSION", default_value_t = defaults::MAX_TOPICS_PER_SESSION)]
    pub max_topics_per_session: usize,

    /// How long shutdown waits for queues to drain, milliseconds.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", default_value_t = defaults::SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout: u64,

    /// Also serve /metrics, /health and /ready on METRICS_PORT.
    #[arg(long, env = "METRICS_ENABLED")]
    pub metrics_enabled: bool,

    /// Port of the separate metrics listener (with METRICS_ENABLED).
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
}

/// Why a configuration cannot start a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no JWT key configured: set JWT_SECRET (or NEXTAUTH_SECRET) or JWT_PUBLIC_KEY, or start with --dev for a generated development secret"
    )]
    MissingJwtKey,
    #[error(
        "HERALD_OUTBOX_MIRROR_URL is this cluster's own Redis and its prefix the channels Herald ingests: every event would come back a second time; point it at the notify-wss's Redis or change HERALD_OUTBOX_MIRROR_PREFIX / HERALD_SEED_CHANNEL_PREFIX"
    )]
    MirrorLoop,
    #[error("herald worker runs beside other nodes and needs their database: set DATABASE_URL to PostgreSQL")]
    WorkerNeedsPostgres,
    #[error("herald worker reaches the nodes' clients through Redis: set REDIS_URL")]
    WorkerNeedsRedis,
    #[error("no API key configured: set HERALD_API_KEY, or start with --dev for a generated development key")]
    MissingApiKey,
    #[error("cannot read JWT public key {path}: {source}")]
    PublicKey { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Key(#[from] herald_auth::KeyError),
    #[error("REDIS_URL must start with redis:// or rediss://")]
    RedisUrl,
    #[error("invalid CORS_ORIGIN {0:?}")]
    Cors(String),
    #[error("DATABASE_URL must start with postgres://, postgresql:// or sqlite:")]
    DatabaseUrl,
    #[error("HERALD_RATE_LIMITS: {0}")]
    RateLimits(String),
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// An SQLite file, created if missing (the embedded default).
    SqliteFile(PathBuf),
    /// An SQLite `sqlite:` URL.
    SqliteUrl(String),
    /// A private in-memory SQLite database, gone with the process (tests, embedding).
    SqliteMemory,
    /// PostgreSQL, optionally in its own schema.
    Postgres { url: String, schema: Option<String> },
}

impl StoreSettings {
    /// From `DATABASE_URL`.
    pub fn from_url(url: &str, schema: Option<String>) -> Result<Self, ConfigError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreSettings::Postgres { url: url.to_owned(), schema })
        } else if url.starts_with("sqlite:") {
            Ok(StoreSettings::SqliteUrl(url.to_owned()))
        } else {
            Err(ConfigError::DatabaseUrl)
        }
    }
}

/// The resolved runtime configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub auth: AuthConfig,
    pub api_key: String,
    pub cors_origins: Vec<String>,
    pub max_payload: usize,
    pub socketio_ping_interval: Duration,
    pub socketio_ping_timeout: Duration,
    pub socketio_buffer: usize,
    pub heartbeat_interval: Duration,
    pub max_idle_time: Option<Duration>,
    pub auth_timeout: Duration,
    pub rate_limit_window: Duration,
    pub rate_limit_max_connections: u32,
    pub max_connections: usize,
    /// Per-connection limits of client events.
    pub event_limits: crate::limits::EventLimits,
    pub typing_timeout: Duration,
    pub presence_grace: Duration,
    pub call_ring_timeout: Duration,
    pub outbox: crate::outbox::OutboxSettings,
    /// `herald worker`: the outbox worker and the ops endpoints only.
    pub worker_only: bool,
    pub session_queue: usize,
    pub max_topics_per_session: usize,
    pub shutdown_timeout: Duration,
    pub json_logs: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub store: StoreSettings,
    pub inbox: crate::inbox::InboxSettings,
    /// Recent events kept per topic for returning clients.
    pub history: herald_core::HistoryConfig,
    /// The Redis broker (`REDIS_URL`); `None` runs single-node on the memory broker.
    pub redis: Option<herald_redis::RedisConfig>,
}

impl Settings {
    /// Defaults with the given secret and API key, listening on 127.0.0.1:0 (tests, embedding).
    pub fn new(jwt_secret: &str, api_key: &str) -> Self {
        let ms = Duration::from_millis;
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            auth: AuthConfig { leeway_secs: defaults::JWT_LEEWAY_SECS, ..AuthConfig::secret(jwt_secret) },
            api_key: api_key.to_owned(),
            cors_origins: vec!["*".into()],
            max_payload: defaults::MAX_PAYLOAD,
            socketio_ping_interval: ms(defaults::PING_INTERVAL_MS),
            socketio_ping_timeout: ms(defaults::PING_TIMEOUT_MS),
            socketio_buffer: defaults::SOCKETIO_BUFFER,
            heartbeat_interval: ms(defaults::HEARTBEAT_INTERVAL_MS),
            max_idle_time: Some(ms(defaults::MAX_IDLE_TIME_MS)),
            auth_timeout: ms(defaults::AUTH_TIMEOUT_MS),
            rate_limit_window: ms(defaults::RATE_LIMIT_WINDOW_MS),
            rate_limit_max_connections: defaults::RATE_LIMIT_MAX_CONNECTIONS,
            max_connections: defaults::MAX_CONNECTIONS,
            event_limits: crate::limits::EventLimits::default(),
            typing_timeout: Duration::from_secs(5),
            presence_grace: Duration::from_secs(5),
            call_ring_timeout: Duration::from_secs(30),
            outbox: crate::outbox::OutboxSettings::default(),
            worker_only: false,
            session_queue: defaults::SESSION_QUEUE,
            max_topics_per_session: defaults::MAX_TOPICS_PER_SESSION,
            shutdown_timeout: ms(defaults::SHUTDOWN_TIMEOUT_MS),
            json_logs: false,
            metrics_listen: None,
            store: StoreSettings::SqliteMemory,
            inbox: crate::inbox::InboxSettings::default(),
            history: herald_core::HistoryConfig::default(),
            redis: None,
        }
    }
}

/// What development mode generated, to be printed for the developer.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub jwt_secret: Option<String>,
    pub api_key: Option<String>,
}

impl Config {
    fn is_development(&self) -> bool {
        self.dev || self.environment().is_some_and(|env| env.eq_ignore_ascii_case("development"))
    }

    /// `HERALD_ENV`, falling back to `NODE_ENV`.
    pub fn environment(&self) -> Option<String> {
        self.environment.clone().or_else(|| std::env::var("NODE_ENV").ok())
    }

    /// The HMAC secret: `JWT_SECRET`, falling back to `NEXTAUTH_SECRET`.
    pub fn jwt_secret(&self) -> Option<String> {
        self.jwt_secret.clone().or_else(|| std::env::var("NEXTAUTH_SECRET").ok()).filter(|s| !s.is_empty())
    }

    /// Resolves the settings of `herald worker`: the outbox worker alone, on PostgreSQL,
    /// publishing through Redis. It serves no client, so it needs no JWT key.
    pub fn resolve_worker(&self) -> Result<(Settings, Generated), ConfigError> {
        let mut config = self.clone();
        if config.jwt_public_key.is_none() && config.jwt_secret().is_none() {
            config.jwt_secret = Some(random_hex(32));
        }
        let (mut settings, generated) = config.resolve()?;
        if !matches!(settings.store, StoreSettings::Postgres { .. }) {
            return Err(ConfigError::WorkerNeedsPostgres);
        }
        if settings.redis.is_none() {
            return Err(ConfigError::WorkerNeedsRedis);
        }
        settings.worker_only = true;
        Ok((settings, Generated { jwt_secret: None, ..generated }))
    }

    /// Resolves the runtime settings; in development mode fills in missing secrets.
    pub fn resolve(&self) -> Result<(Settings, Generated), ConfigError> {
        let redis = self.redis_url.as_deref().filter(|url| !url.is_empty()).map(|url| {
            let node_id = self.node_id.clone().filter(|id| !id.is_empty()).unwrap_or_else(default_node_id);
            let mut config = herald_redis::RedisConfig::new(url, node_id);
            config.prefix = self.redis_prefix.clone();
            config.seed_prefix = Some(self.seed_channel_prefix.clone()).filter(|prefix| !prefix.is_empty());
            config
        });
        if let Some(redis) = &redis
            && !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://"))
        {
            return Err(ConfigError::RedisUrl);
        }
        if let (Some(redis), Some(mirror)) = (&redis, self.outbox_mirror_url.as_deref())
            && redis.url == mirror
            && redis.seed_prefix.as_deref() == Some(self.outbox_mirror_prefix.as_str())
        {
            return Err(ConfigError::MirrorLoop);
        }
        let store = match self.database_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => StoreSettings::from_url(url, self.database_schema.clone())?,
            None => StoreSettings::SqliteFile(self.sqlite_path.clone()),
        };
        let development = self.is_development();
        let mut generated = Generated::default();
        let key = match (&self.jwt_public_key, self.jwt_secret()) {
            (Some(path), _) => KeyConfig::PublicKeyPem(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::PublicKey { path: path.clone(), source })?,
            ),
            (None, Some(secret)) => KeyConfig::Secret(secret.into_bytes()),
            (None, None) if development => {
                let secret = random_hex(32);
                generated.jwt_secret = Some(secret.clone());
                KeyConfig::Secret(secret.into_bytes())
            }
            (None, None) => return Err(ConfigError::MissingJwtKey),
        };
        let api_key = match self.api_key.clone().filter(|k| !k.is_empty()) {
            Some(key) => key,
            None if development => {
                let key = random_hex(24);
                generated.api_key = Some(key.clone());
                key
            }
            None => return Err(ConfigError::MissingApiKey),
        };
        let cors_origins: Vec<String> =
            self.cors_origin.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        for origin in &cors_origins {
            if origin != "*" && http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::Cors(origin.clone()));
            }
        }
        let ms = Duration::from_millis;
        let settings = Settings {
            listen: SocketAddr::new(self.host, self.port),
            auth: AuthConfig {
                key,
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
                leeway_secs: self.jwt_leeway,
                require_exp: true,
            },
            api_key,
            cors_origins,
            max_payload: self.max_payload,
            socketio_ping_interval: ms(self.socketio_ping_interval),
            socketio_ping_timeout: ms(self.socketio_ping_timeout),
            socketio_buffer: self.socketio_buffer.max(1),
            heartbeat_interval: ms(self.heartbeat_interval.max(100)),
            max_idle_time: (self.max_idle_time > 0).then(|| ms(self.max_idle_time)),
            auth_timeout: ms(self.auth_timeout),
            rate_limit_window: ms(self.rate_limit_connection_window.max(1)),
            rate_limit_max_connections: self.rate_limit_max_connections,
            max_connections: self.max_connections,
            event_limits: crate::limits::EventLimits::parse(&self.rate_limits).map_err(ConfigError::RateLimits)?,
            typing_timeout: self.typing_timeout.max(Duration::from_millis(100)),
            presence_grace: self.presence_grace,
            call_ring_timeout: self.call_ring_timeout.max(Duration::from_millis(100)),
            outbox: crate::outbox::OutboxSettings {
                enabled: self.outbox,
                batch: self.outbox_batch.clamp(1, 10_000),
                poll_interval: self.outbox_poll_interval.max(Duration::from_millis(10)),
                lease: self.outbox_lease.max(Duration::from_secs(1)),
                max_attempts: self.outbox_max_attempts.max(1),
                backoff: self.outbox_backoff.max(Duration::from_millis(1)),
                backoff_max: self.outbox_backoff_max.max(self.outbox_backoff),
                retention: self.outbox_retention,
                user_query: self.outbox_user_query.clone(),
                channel_query: self.outbox_channel_query.clone(),
                cloudfront_domain: self.cloudfront_domain.clone().filter(|domain| !domain.is_empty()),
                mirror_url: self.outbox_mirror_url.clone().filter(|url| !url.is_empty()),
                mirror_prefix: self.outbox_mirror_prefix.clone(),
            },
            worker_only: false,
            session_queue: self.session_queue.max(1),
            max_topics_per_session: self.max_topics_per_session.max(2),
            shutdown_timeout: ms(self.shutdown_timeout),
            json_logs: self.environment().is_some_and(|env| env.eq_ignore_ascii_case("production")),
            metrics_listen: self.metrics_enabled.then(|| SocketAddr::new(self.host, self.metrics_port)),
            store,
            inbox: crate::inbox::InboxSettings {
                max_payload: self.inbox_max_payload,
                max_age: (!self.inbox_max_age.is_zero()).then_some(self.inbox_max_age),
                max_per_user: (self.inbox_max_per_user > 0).then_some(self.inbox_max_per_user),
                prune_interval: self.inbox_prune_interval.max(Duration::from_secs(1)),
            },
            history: herald_core::HistoryConfig {
                size: self.history_size,
                max_age: self.history_ttl.max(Duration::from_secs(1)),
                max_topics: self.history_max_topics.max(1),
                max_events: self.history_max_events.max(1),
            },
            redis,
        };
        Ok((settings, generated))
    }
}

/// `{host}-{pid}`: unique among nodes on one machine and readable in the registry.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{}", std::process::id())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies a TOML file's values as defaults of the matching flags of `command`, so that
/// environment variables and flags still win. Keys are flag names with underscores.
pub fn apply_toml_defaults(command: clap::Command, toml_text: &str) -> Result<clap::Command, String> {
    let table: toml::Table = toml_text.parse().map_err(|e| format!("invalid TOML: {e}"))?;
    let mut command = command;
    for (key, value) in table {
        let id = key.replace('-', "_");
        if !command.get_arguments().any(|arg| arg.get_id() == id.as_str()) {
            return Err(format!("unknown setting {key:?} in config file"));
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Float(number) => number.to_string(),
            other => return Err(format!("setting {key:?} must be a string, number or boolean, not {other}")),
        };
        command = command.mut_arg(id, |arg| arg.default_value(text));
    }
    Ok(command)
}

/// docs/configuration-reference.md: every flag of `herald serve` (and `herald worker`),
/// its environment variable, default and help, from the same definitions `--help` prints.
pub fn reference_markdown() -> String {
    use clap::Args as _;
    let command = Config::augment_args(clap::Command::new("serve"));
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code (`Config` in `crates/herald-server/src/config.rs`) by \
         `HERALD_UPDATE_DOCS=1 cargo test -p herald-server --lib configuration_reference`; a test fails when this file and the code differ.\n\
         [configuration.md](configuration.md) explains the settings; `herald --help` prints the same list.\n\n\
         | flag | environment | default | help |\n|---|---|---|---|\n",
    );
    let cell = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let env = arg.get_env().map(|env| format!("`{}`", env.to_string_lossy())).unwrap_or_default();
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() { String::new() } else { format!("`{}`", defaults.join(",")) };
        let help = arg.get_long_help().or(arg.get_help()).map(|help| cell(&help.to_string())).unwrap_or_default();
        out.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod reference_tests {
    #[test]
    fn configuration_reference_is_generated_from_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration-reference.md");
        let generated = super::reference_markdown();
        if std::env::var_os("HERALD_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).expect("docs written");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/configuration-reference.md is out of date: run HERALD_UPDATE_DOCS=1 cargo test -p herald-server --lib configuration_reference"
        );
        for flag in ["`--port`", "`--redis-url`", "`--outbox-batch`", "`--rate-limits`"] {
            assert!(generated.contains(flag), "{flag} in the reference");
        }
    }
}
