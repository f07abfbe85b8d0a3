//! `herald-load`: Herald's load generator. Each scenario prints one JSON result on stdout.
//!
//! Scenarios: `connect` (connection ramp, connect times, memory per connection), `fanout`
//! (N subscribers of one channel), `unicast` (messages to random users), `churn` (fan-out
//! while connections come and go), `inbox` (notifications created through Herald's
//! `POST /api/notifications`, stored and pushed to random users), `chat` (users in rooms
//! sending messages with typing indicators through `message:new`, Herald only). Publishing goes through
//! `POST /api/publish` on the target, which every target (Herald, the floor, the Node
//! reference) serves.

mod chat;
mod client;
mod procstat;
mod recorder;
mod worker;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use herald_auth::{Signer, TokenSpec};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use client::{Connection, Protocol, Target, failure_reason, open};
use procstat::{CpuWindow, rss_of};
use recorder::{Recorder, now_nanos};

#[derive(Parser)]
#[command(name = "herald-load", about = "Load generator for Herald and the servers it is compared with")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N connections at R/s and hold them; connect times and memory per connection.
    Connect(ConnectArgs),
    /// N subscribers of `channel:bench`; M messages published at Q/s (0: as fast as possible).
    Fanout(FanoutArgs),
    /// N users connected; M messages, each to one random user.
    Unicast(FanoutArgs),
    /// Fan-out at Q/s while connections are opened and closed at a steady rate.
    Churn(ChurnArgs),
    /// N users connected; M notifications created through `POST /api/notifications`, each
    /// for one random user: stored, then pushed (Herald only).
    Inbox(FanoutArgs),
    /// N users in rooms of S members (created through the conversation API), each
    /// sending a message every I ms with a typing indicator before it (Herald only).
    Chat(ChatArgs),
    /// N users connected; M notification events inserted into Herald's PostgreSQL outbox at
    /// Q/s (0: as fast as possible), enriched, stored and pushed by Herald's outbox
    /// worker(s); insert-to-device latency (Herald only).
    Worker(WorkerArgs),
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Events inserted per second; 0 inserts them as fast as possible.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Herald's PostgreSQL database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// Herald's schema (HERALD_DATABASE_SCHEMA), if any.
    #[arg(long)]
    schema: Option<String>,
    /// Event type; TIP, SUB and FOLLOW are enriched.
    #[arg(long, default_value = "TIP")]
    kind: String,
    /// Distinct actors the events come from (users in the `User` table).
    #[arg(long, default_value_t = 100)]
    actors: u64,
    /// How many worker processes serve the run (reported only).
    #[arg(long, default_value_t = 1)]
    workers: u32,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, default_value_t = 50)]
    room_size: usize,
    /// Milliseconds between one user's messages.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Milliseconds between a user's typing indicator and its message; 0 sends none.
    #[arg(long, default_value_t = 500)]
    typing_lead_ms: u64,
    /// Seconds users keep sending.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

#[derive(Args, Clone)]
struct Common {
    /// Base URL of the server under test; several (comma-separated) for a cluster, with
    /// connections spread over them in turn. Publishes go to the first.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "ws")]
    protocol: Protocol,
    /// Base URL for `POST /api/publish` when the server takes publishes elsewhere (the floor).
    #[arg(long)]
    publish_url: Option<String>,
    /// WebSocket path for ws/ws-auto.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// HS256 secret to mint tokens with.
    #[arg(long, env = "JWT_SECRET")]
    secret: String,
    /// Bearer key for POST /api/publish.
    #[arg(long, env = "HERALD_API_KEY", default_value = "")]
    api_key: String,
    /// PID of the server, for its CPU and memory; several (comma-separated) for a cluster,
    /// summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// PID of Redis, to report its CPU beside the servers'.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Source addresses to spread connections over (comma-separated), e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Connections opened per second while setting up.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    /// A label copied into the result.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connection counts at which memory is read; the last is the total.
    #[arg(long, value_delimiter = ',', default_value = "5000,15000")]
    sizes: Vec<usize>,
    /// Seconds to hold all connections.
    #[arg(long, default_value_t = 5)]
    hold: u64,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 500)]
    messages: u64,
    /// Messages per second; 0 publishes as fast as the publishers can.
    #[arg(long, default_value_t = 50)]
    msg_rate: u64,
    /// Concurrent publishers when publishing as fast as possible.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Padding bytes added to each message.
    #[arg(long, default_value_t = 0)]
    pad: usize,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Connections opened (and later closed) per second during the run.
    #[arg(long, default_value_t = 100)]
    churn_rate: u64,
    /// How long each churning connection stays, milliseconds.
    #[arg(long, default_value_t = 1000)]
    churn_life_ms: u64,
}

struct Env {
    targets: Vec<Target>,
    signer: Signer,
    common: Common,
    http: reqwest::Client,
    publish_url: String,
    /// Publish by creating inbox notifications instead of `POST /api/publish`.
    inbox: bool,
}

impl Env {
    fn new(common: &Common) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for base in common.url.split(',').map(str::trim).filter(|base| !base.is_empty()) {
            let url: reqwest::Url = base.parse()?;
            let host =
                format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port_or_known_default().unwrap_or(80));
            let address: SocketAddr =
                host.to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
            anyhow::ensure!(address.ip().is_loopback(), "load tests target loopback addresses only, not {address}");
            targets.push(Target { protocol: common.protocol, address, host, ws_path: common.ws_path.clone() });
        }
        anyhow::ensure!(!targets.is_empty(), "--url names no server");
        let mut common = common.clone();
        common.url = common.url.split(',').next().unwrap_or_default().trim().to_owned();
        let common = &common;
        Ok(Self {
            targets,
            signer: Signer::secret(common.secret.as_bytes()),
            common: common.clone(),
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            publish_url: format!(
                "{}/api/publish",
                common.publish_url.as_deref().unwrap_or(&common.url).trim_end_matches('/')
            ),
            inbox: false,
        })
    }

    fn token(&self, user: &str) -> String {
        self.signer.mint(&TokenSpec::new(user).ttl(Duration::from_secs(3 * 3600))).expect("token minted")
    }

    fn source(&self, index: usize) -> Option<IpAddr> {
        (!self.common.sources.is_empty()).then(|| self.common.sources[index % self.common.sources.len()])
    }

    /// The server node a connection goes to.
    fn target(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }

    fn pids(&self) -> Vec<String> {
        self.common.server_pid.iter().map(u32::to_string).collect()
    }

    fn cpu_window(&self) -> CpuWindow {
        CpuWindow::start(&self.pids(), self.common.redis_pid.map(|pid| pid.to_string()).as_deref())
    }

    async fn publish(&self, topic: &str, seq: u64, pad: &str) -> anyhow::Result<()> {
        let data = json!({"seq": seq, "pad": pad, "t": now_nanos()});
        let request = if self.inbox {
            let user = topic.strip_prefix("user:").unwrap_or(topic);
            let body = json!({"userId": user, "type": "bench", "payload": data});
            self.http.post(format!("{}/api/notifications", self.common.url.trim_end_matches('/'))).json(&body)
        } else {
            self.http.post(&self.publish_url).json(&json!({"topic": topic, "event": "notification", "data": data}))
        };
        let response = request.bearer_auth(&self.common.api_key).send().await?;
        anyhow::ensure!(response.status().is_success(), "publish answered {}", response.status());
        Ok(())
    }
}

/// Connection results: the live connections, connect-time histogram (µs) and failures.
struct Opened {
    connections: Vec<Connection>,
    connect_us: Histogram<u64>,
    failures: BTreeMap<String, u64>,
}

/// Opens `count` connections for users `user{first}..` at the configured rate.
async fn open_many(env: &Arc<Env>, first: usize, count: usize, subscribe: bool, recorder: &Arc<Recorder>) -> Opened {
    let interval = Duration::from_secs_f64(1.0 / f64::from(env.common.connect_rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for index in first..first + count {
        ticker.tick().await;
        let env = env.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let token = env.token(&format!("user{index}"));
            let opening = open(env.target(index), &token, subscribe, env.source(index), recorder);
            match tokio::time::timeout(Duration::from_secs(30), opening).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        });
    }
    let mut opened = Opened {
        connections: Vec::with_capacity(count),
        connect_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        failures: BTreeMap::new(),
    };
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(connection)) => {
                opened.connect_us.saturating_record(connection.connect_time.as_micros() as u64);
                opened.connections.push(connection);
            }
            Ok(Err(error)) => *opened.failures.entry(failure_reason(&error)).or_default() += 1,
            Err(error) => *opened.failures.entry(format!("task: {error}")).or_default() += 1,
        }
    }
    opened
}

fn connect_times(histogram: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "p50_ms": ms(histogram.value_at_quantile(0.5)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "max_ms": ms(histogram.max()),
    })
}

/// Waits until `recorder` has `expected` deliveries or `patience` passes without progress.
async fn await_deliveries(recorder: &Recorder, expected: u64, patience: Duration) {
    let mut last = recorder.delivered();
    let mut last_change = Instant::now();
    while recorder.delivered() < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = recorder.delivered();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > patience {
            break;
        }
    }
}

/// Publishes `messages` messages to topics chosen by `topic_of(seq)`, at `rate` per second
/// or as fast as `publishers` concurrent publishers can.
async fn publish_all(
    env: &Arc<Env>,
    messages: u64,
    rate: u64,
    publishers: usize,
    pad: usize,
    topic_of: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> u64 {
    let pad: Arc<str> = Arc::from("x".repeat(pad));
    let failed = Arc::new(AtomicU64::new(0));
    if rate > 0 {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = JoinSet::new();
        for seq in 0..messages {
            ticker.tick().await;
            let (env, pad, failed, topic) = (env.clone(), pad.clone(), failed.clone(), topic_of(seq));
            tasks.spawn(async move {
                if env.publish(&topic, seq, &pad).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..publishers.max(1) {
            let (env, pad, failed, next, topic_of) =
                (env.clone(), pad.clone(), failed.clone(), next.clone(), topic_of.clone());
            tasks.spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= messages {
                        return;
                    }
                    if env.publish(&topic_of(seq), seq, &pad).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    failed.load(Ordering::Relaxed)
}

async fn close_all(connections: &mut [Connection]) {
    for connection in connections.iter_mut() {
        connection.close();
    }
    for connection in connections.iter_mut() {
        drop((&mut connection.done).await);
    }
}

async fn scenario_connect(args: ConnectArgs) -> anyhow::Result<Value> {
    let env = Arc::new(Env::new(&args.common)?);
    let pids = env.pids();
    let recorder = Arc::new(Recorder::default());
    let rss_before = rss_of(&pids);
    let mut all = Vec::new();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = BTreeMap::new();
    let mut readings = Vec::new();
    let mut opened_so_far = 0;
    let started = Instant::now();
    for &size in &args.sizes {
        let batch = open_many(&env, opened_so_far, size.saturating_sub(opened_so_far), false, &recorder).await;
        opened_so_far = size;
        histogram.add(&batch.connect_us)?;
        for (reason, count) in batch.failures {
            *failures.entry(reason).or_insert(0) += count;
        }
        all.extend(batch.connections);
        // Let the server finish registering before reading its memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        readings.push(json!({"connections": all.len(), "rss_bytes": rss_of(&pids)}));
    }
    let ramp_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_held = rss_of(&pids);
    let marginal = match (readings.first(), readings.last()) {
        (Some(a), Some(b)) if readings.len() > 1 => {
            let connections = b["connections"].as_f64().unwrap_or(0.0) - a["connections"].as_f64().unwrap_or(0.0);
            let bytes = b["rss_bytes"].as_f64().unwrap_or(0.0) - a["rss_bytes"].as_f64().unwrap_or(0.0);
            (connections > 0.0).then(|| bytes / connections)
        }
        _ => None,
    };
    let connected = all.len();
    close_all(&mut all).await;
    Ok(json!({
        "scenario": "connect",
        "connected": connected,
        "failed": failures.values().sum::<u64>(),
        "failures": failures,
        "connect": connect_times(&histogram),
        "ramp_seconds": ramp_seconds,
        "rss_before_bytes": rss_before,
        "rss_readings": readings,
        "rss_held_bytes": rss_held,
        "marginal_bytes_per_connection": marginal,
    }))
}

fn fanout_result(
    name: &str,
    args: &FanoutArgs,
    expected: u64,
    recorder: &Recorder,
    cpu: procstat::CpuUse,
    failed_publishes: u64,
    extra: Value,
) -> Value {
    let delivered = recorder.delivered();
    let mut result = json!({
        "scenario": name,
        "connections": args.connections,
        "messages": args.messages,
        "msg_rate": args.msg_rate,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "failed_publishes": failed_publishes,
        "deliveries_per_second": delivered as f64 / cpu.wall_seconds.max(1e-9),
        "latency": recorder.latency(),
        "server_cpu_us_per_delivery": cpu.server_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "redis_cpu_us_per_delivery": cpu.redis_cpu_seconds.map(|s| s * 1e6 / (delivered.max(1) as f64)),
        "loadgen_cpu_us_per_delivery": cpu.loadgen_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "cpu": cpu,
    });
    if let (Some(object), Value::Object(extra)) = (result.as_object_mut(), extra) {
        object.extend(extra);
    }
    result
}

/// Which messages a fan-out style scenario sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fanout,
    Unicast,
    Inbox,
}

async fn scenario_fanout(args: FanoutArgs, kind: Kind) -> anyhow::Result<Value> {
    let unicast = kind != Kind::Fanout;
    let mut env = Env::new(&args.common)?;
    env.inbox = kind == Kind::Inbox;
    let env = Arc::new(env);
    let recorder = Arc::new(Recorder::default());
    let mut opened = open_many(&env, 0, args.connections, !unicast, &recorder).await;
    anyhow::ensure!(opened.failures.is_empty(), "connections failed: {:?}", opened.failures);
    let connections = args.connections as u64;
    let topic_of: Arc<dyn Fn(u64) -> String + Send + Sync> = if unicast {
        Arc::new(move |_seq| format!("user:user{}", rand::random_range(0..connections)))
    } else {
        Arc::new(|_seq| "channel:bench".to_owned())
    };
    // Warm-up: a few messages, all delivered, then measure from a clean slate.
    let warm = 5u64;
    publish_all(&env, warm, 0, 1, args.pad, topic_of.clone()).await;
    await_deliveries(&recorder, if unicast { warm } else { warm * connections }, Duration::from_secs(5)).await;
    recorder.reset();

    let expected = if unicast { args.messages } else { args.messages * connections };
    let window = env.cpu_window();
    let failed = publish_all(&env, args.messages, args.msg_rate, args.publishers, args.pad, topic_of).await;
    await_deliveries(&recorder, expected, Duration::from_secs(5)).await;
    let cpu = window.stop();
    close_all(&mut opened.connections).await;
    let name = match kind {
        Kind::Fanout => "fanout",
        Kind::Unicast => "unicast",
        Kind::Inbox => "inbox",
    };
    Ok(fanout_result(
        name,
        &args,
        expected,
        &recorder,
        cpu,
        failed,
        json!({"connect": connect_times(&opened.connect_us)}),
    ))
}

async fn scenario_churn(args: ChurnArgs) -> anyhow::Result<Value> {
    let fanout = &args.fanout;
    let env = Arc::new(Env::new(&fanout.common)?);
    let pids = env.pids();
    let recorder = Arc::new(Recorder::default());
    let churn_recorder = Arc::new(Recorder::default());
    let mut stable = open_many(&env, 0, fanout.connections, true, &recorder).await;
    anyhow::ensure!(stable.failures.is_empty(), "connections failed: {:?}", stable.failures);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_baseline = rss_of(&pids);

    let churn_failures = Arc::new(parking_lot::Mutex::new(BTreeMap::<String, u64>::new()));
    let churned = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = {
        let (env, churn_recorder, churn_failures, churned, stop) =
            (env.clone(), churn_recorder.clone(), churn_failures.clone(), churned.clone(), stop.clone());
        let (rate, life) = (args.churn_rate.max(1), Duration::from_millis(args.churn_life_ms));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut tasks = JoinSet::new();
            let mut index = 1_000_000usize;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                index += 1;
                let (env, churn_recorder, churn_failures, churned) =
                    (env.clone(), churn_recorder.clone(), churn_failures.clone(), churned.clone());
                tasks.spawn(async move {
                    let token = env.token(&format!("churn{index}"));
                    match open(env.target(index), &token, true, env.source(index), churn_recorder).await {
                        Ok(mut connection) => {
                            tokio::time::sleep(life).await;
                            connection.close();
                            drop(connection.done.await);
                            churned.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => *churn_failures.lock().entry(failure_reason(&error)).or_default() += 1,
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let connections = fanout.connections as u64;
    let expected = fanout.messages * connections;
    let window = env.cpu_window();
    let failed = publish_all(
        &env,
        fanout.messages,
        fanout.msg_rate.max(1),
        1,
        fanout.pad,
        Arc::new(|_| "channel:bench".to_owned()),
    )
    .await;
    await_deliveries(&recorder, expected, Duration::from_secs(5)).await;
    let cpu = window.stop();
    stop.store(true, Ordering::Relaxed);
    churner.await?;
    close_all(&mut stable.connections).await;
    // Give the server a moment to release what the closed connections held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_of(&pids);
    let failures = churn_failures.lock().clone();
    Ok(fanout_result(
        "churn",
        fanout,
        expected,
        &recorder,
        cpu,
        failed,
        json!({
            "churn_rate": args.churn_rate,
            "churned_connections": churned.load(Ordering::Relaxed),
            "churn_failures": failures,
            "rss_baseline_bytes": rss_baseline,
            "rss_after_bytes": rss_after,
        }),
    ))
}

async fn scenario_chat(args: ChatArgs) -> anyhow::Result<Value> {
    let env = Arc::new(Env::new(&args.common)?);
    let room_size = args.room_size.max(1);
    let rooms = args.users.div_ceil(room_size);
    // Rooms are made where publishes go (the floor takes them on its publish port).
    let base = args.common.publish_url.as_deref().unwrap_or(args.common.url.split(',').next().unwrap_or_default());
    let base = base.trim().trim_end_matches('/').to_owned();
    for room in 0..rooms {
        let members: Vec<String> =
            (room * room_size..((room + 1) * room_size).min(args.users)).map(|user| format!("user{user}")).collect();
        let response = env
            .http
            .put(format!("{base}/api/conversations/room:bench{room}"))
            .bearer_auth(&args.common.api_key)
            .json(&json!({"members": members}))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "room setup answered {}", response.status());
    }
    let recorder = Arc::new(Recorder::default());
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let typing_lead = Duration::from_millis(args.typing_lead_ms).min(interval / 2);
    // Connections open first; everyone starts sending once all have joined.
    let plan = Arc::new(chat::Plan {
        interval,
        typing_lead,
        sending: std::sync::atomic::AtomicBool::new(true),
        sent: AtomicU64::new(0),
        typing_sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        typing_stamps: (0..args.users).map(|_| AtomicU64::new(0)).collect(),
        typing: Recorder::default(),
    });
    let connect_interval = Duration::from_secs_f64(1.0 / f64::from(args.common.connect_rate.max(1)));
    let mut ticker = tokio::time::interval(connect_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let setup = Instant::now();
    let ramp = Duration::from_secs_f64(args.users as f64 * connect_interval.as_secs_f64());
    let start_at = setup + ramp + Duration::from_secs(2);
    // Messages begin a second after measuring does.
    let first_message = start_at + Duration::from_secs(1);
    let mut tasks = JoinSet::new();
    for user in 0..args.users {
        ticker.tick().await;
        let (env, recorder, plan) = (env.clone(), recorder.clone(), plan.clone());
        // Spread over one interval after everyone has joined.
        let phase = first_message.saturating_duration_since(Instant::now())
            + Duration::from_secs_f64(interval.as_secs_f64() * rand::random::<f64>());
        tasks.spawn(async move {
            let token = env.token(&format!("user{user}"));
            let room = format!("bench{}", user / room_size);
            let joining = chat::join(env.target(user), &token, &room, env.source(user), recorder, user, plan, phase);
            match tokio::time::timeout(Duration::from_secs(30), joining).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        });
    }
    let mut members = Vec::with_capacity(args.users);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(member)) => {
                connect_us.saturating_record(member.connect_time.as_micros() as u64);
                members.push(member);
            }
            Ok(Err(error)) => *failures.entry(failure_reason(&error)).or_default() += 1,
            Err(error) => *failures.entry(format!("task: {error}")).or_default() += 1,
        }
    }
    anyhow::ensure!(failures.is_empty(), "connections failed: {failures:?}");
    tokio::time::sleep(start_at.saturating_duration_since(Instant::now())).await;
    recorder.reset();
    plan.typing.reset();
    let window = env.cpu_window();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    // Stop sending, then let the last messages arrive.
    // A member that had already woken still sends its message: count until it settles.
    plan.sending.store(false, Ordering::Relaxed);
    let mut sent = plan.sent.load(Ordering::Relaxed);
    loop {
        await_deliveries(&recorder, sent * room_size as u64, Duration::from_secs(5)).await;
        let now = plan.sent.load(Ordering::Relaxed);
        if now == sent {
            break;
        }
        sent = now;
    }
    let expected = sent * room_size as u64;
    let cpu = window.stop();
    for member in &mut members {
        member.close();
    }
    for member in &mut members {
        drop((&mut member.done).await);
    }
    let delivered = recorder.delivered();
    Ok(json!({
        "scenario": "chat",
        "connections": args.users,
        "room_size": room_size,
        "rooms": rooms,
        "interval_ms": args.interval_ms,
        "typing": !typing_lead.is_zero(),
        "messages": sent,
        "typing_sent": plan.typing_sent.load(Ordering::Relaxed),
        "refused": plan.refused.load(Ordering::Relaxed),
        "duplicates": plan.duplicates.load(Ordering::Relaxed),
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "messages_per_second": sent as f64 / cpu.wall_seconds.max(1e-9),
        "deliveries_per_second": delivered as f64 / cpu.wall_seconds.max(1e-9),
        "latency": recorder.latency(),
        "typing_delivered": plan.typing.delivered(),
        "typing_latency": plan.typing.latency(),
        "server_cpu_us_per_delivery": cpu.server_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "loadgen_cpu_us_per_delivery": cpu.loadgen_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "connect": connect_times(&connect_us),
        "cpu": cpu,
    }))
}

async fn scenario_worker(args: WorkerArgs) -> anyhow::Result<Value> {
    let env = Arc::new(Env::new(&args.common)?);
    let producer = worker::Producer::connect(
        &args.database_url,
        args.schema.as_deref(),
        args.connections as u64,
        &args.kind,
        args.actors,
    )
    .await?;
    let recorder = Arc::new(Recorder::default());
    let mut opened = open_many(&env, 0, args.connections, false, &recorder).await;
    anyhow::ensure!(opened.failures.is_empty(), "connections failed: {:?}", opened.failures);
    let window = env.cpu_window();
    let started = Instant::now();
    producer.produce(args.events, args.rate).await?;
    let inserted_in = started.elapsed();
    await_deliveries(&recorder, args.events, Duration::from_secs(10)).await;
    let cpu = window.stop();
    let pending = producer.pending().await?;
    close_all(&mut opened.connections).await;
    let delivered = recorder.delivered();
    Ok(json!({
        "scenario": "worker",
        "connections": args.connections,
        "events": args.events,
        "rate": args.rate,
        "kind": args.kind,
        "workers": args.workers,
        "expected": args.events,
        "delivered": delivered,
        "lost": args.events.saturating_sub(delivered),
        "pending_after": pending,
        "inserted_per_second": args.events as f64 / inserted_in.as_secs_f64().max(1e-9),
        // One delivery per event; the names are the other scenarios' so reports aggregate alike.
        "deliveries_per_second": delivered as f64 / cpu.wall_seconds.max(1e-9),
        "latency": recorder.latency(),
        "server_cpu_us_per_delivery": cpu.server_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "loadgen_cpu_us_per_delivery": cpu.loadgen_cpu_seconds * 1e6 / (delivered.max(1) as f64),
        "cpu": cpu,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (label, result) = match cli.scenario {
        Scenario::Connect(args) => (args.common.label.clone(), scenario_connect(args).await?),
        Scenario::Fanout(args) => (args.common.label.clone(), scenario_fanout(args, Kind::Fanout).await?),
        Scenario::Unicast(args) => (args.common.label.clone(), scenario_fanout(args, Kind::Unicast).await?),
        Scenario::Inbox(args) => (args.common.label.clone(), scenario_fanout(args, Kind::Inbox).await?),
        Scenario::Churn(args) => (args.fanout.common.label.clone(), scenario_churn(args).await?),
        Scenario::Chat(args) => (args.common.label.clone(), scenario_chat(args).await?),
        Scenario::Worker(args) => (args.common.label.clone(), scenario_worker(args).await?),
    };
    let mut result = result;
    result["label"] = json!(label);
    println!("{result}");
    Ok(())
}
