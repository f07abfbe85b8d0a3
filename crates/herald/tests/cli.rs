//! The `herald` binary as a user runs it: help, refusals, development mode, config file
//! precedence, token minting and SIGTERM.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use herald_testkit::process::Server;
use herald_testkit::{Ended, WsClient};
use serde_json::json;
use tokio::process::Command;

/// Environment variables that would change what these tests expect.
const CLEARED: &[&str] = &[
    "JWT_SECRET",
    "NEXTAUTH_SECRET",
    "JWT_PUBLIC_KEY",
    "HERALD_API_KEY",
    "REDIS_URL",
    "DATABASE_URL",
    "PORT",
    "HERALD_ENV",
    "NODE_ENV",
    "HERALD_DEV",
    "HERALD_CONFIG",
    "HOST",
    "METRICS_ENABLED",
    "HERALD_SQLITE_PATH",
    "HERALD_DATABASE_SCHEMA",
];

/// A fresh SQLite path for one server, so no test writes `herald.db` into the crate.
fn scratch_database() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("herald-cli-test-{}-{n}.db", std::process::id()))
}

fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    for name in CLEARED {
        command.env_remove(name);
    }
    command.env("HOST", "127.0.0.1").env("LOG_LEVEL", "info").env("HERALD_SQLITE_PATH", scratch_database());
    command.kill_on_drop(true);
    command
}

async fn output(command: &mut Command) -> (i32, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_documents_every_option() {
    let (code, stdout, _) = output(herald().arg("--help")).await;
    assert_eq!(code, 0);
    for name in [
        "PORT",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "HERALD_API_KEY",
        "REDIS_URL",
        "DATABASE_URL",
        "CORS_ORIGIN",
        "LOG_LEVEL",
        "SOCKETIO_PING_INTERVAL",
        "SOCKETIO_PING_TIMEOUT",
        "SOCKETIO_MAX_BUFFER_SIZE",
        "RATE_LIMIT_CONNECTION_WINDOW",
        "RATE_LIMIT_MAX_CONNECTIONS",
        "MAX_IDLE_TIME",
        "HEARTBEAT_INTERVAL",
        "METRICS_ENABLED",
        "METRICS_PORT",
        "--dev",
        "--config",
    ] {
        assert!(stdout.contains(name), "--help lacks {name}:\n{stdout}");
    }
    let (code, stdout, _) = output(herald().args(["token", "--help"])).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--sub") && stdout.contains("--ttl") && stdout.contains("--roles"));
}

#[tokio::test]
async fn refuses_to_start_without_a_secret_outside_development_mode() {
    let (code, _, stderr) = output(herald().env("PORT", "0")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("JWT_SECRET") && stderr.contains("--dev"), "{stderr}");

    let (code, _, stderr) = output(herald().env("PORT", "0").env("JWT_SECRET", "s")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("HERALD_API_KEY"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_or_malformed_redis_stops_startup_rather_than_running_single_node() {
    let (code, _, stderr) =
        output(herald().args(["--dev"]).env("PORT", "0").env("REDIS_URL", "redis://127.0.0.1:1")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    let (code, _, stderr) = output(herald().args(["--dev"]).env("PORT", "0").env("REDIS_URL", "http://x")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("REDIS_URL must start with redis://"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_or_unknown_database_stops_startup() {
    let (code, _, stderr) =
        output(herald().args(["--dev"]).env("PORT", "0").env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"))
            .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    let (code, _, stderr) = output(herald().args(["--dev"]).env("PORT", "0").env("DATABASE_URL", "mysql://x/y")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    let (code, _, stderr) =
        output(herald().args(["--dev"]).env("PORT", "0").env("HERALD_SQLITE_PATH", "/proc/no/such/dir/h.db")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("SQLite"), "{stderr}");
}

#[tokio::test]
async fn a_notification_answered_2xx_survives_kill_9_on_sqlite_and_postgres() {
    let directory = tempfile::tempdir().unwrap();
    let schema = herald_testkit::TestSchema::new();
    let sqlite: Vec<(&str, String)> =
        vec![("HERALD_SQLITE_PATH", directory.path().join("durable.db").display().to_string())];
    let postgres: Vec<(&str, String)> =
        vec![("DATABASE_URL", schema.url.clone()), ("HERALD_DATABASE_SCHEMA", schema.name.clone())];
    for store in [sqlite, postgres] {
        let server = |store: &[(&str, String)]| {
            let mut command = herald();
            command.env("JWT_SECRET", "durable-secret").env("HERALD_API_KEY", "durable-key");
            for (name, value) in store {
                command.env(name, value);
            }
            command
        };
        let mut first = Server::start(server(&store)).await;
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/notifications", first.port))
            .bearer_auth("durable-key")
            .json(&json!({"userId": "alice", "type": "TIP", "payload": {"amount": 3}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let id = response.json::<serde_json::Value>().await.unwrap()["notification"]["id"].clone();
        // SIGKILL right after the answer: no shutdown, no flush.
        first.child.kill().await.unwrap();

        let mut second = Server::start(server(&store)).await;
        let listed: serde_json::Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/users/alice/notifications", second.port))
            .bearer_auth("durable-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["notifications"][0]["id"], id, "{store:?}: {listed}");
        assert_eq!(listed["notifications"][0]["payload"], json!({"amount": 3}));
        second.child.kill().await.unwrap();
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn token_subcommand_mints_a_verifiable_jwt() {
    let (code, stdout, stderr) = output(
        herald()
            .args(["token", "--sub", "alice", "--roles", "admin,ops", "--ttl", "2h"])
            .env("JWT_SECRET", "cli-secret"),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let verifier = herald_auth::Verifier::new(&herald_auth::AuthConfig::secret("cli-secret")).unwrap();
    let principal = verifier.verify(stdout.trim()).unwrap();
    assert_eq!(principal.user_id.as_str(), "alice");
    assert_eq!(principal.roles, ["admin", "ops"]);
    let (code, _, stderr) = output(herald().args(["token", "--sub", "alice"])).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
}

fn banner_value(banner: &[String], key: &str) -> String {
    banner
        .iter()
        .find_map(|line| line.split(key).nth(1))
        .unwrap_or_else(|| panic!("{key} not in {banner:?}"))
        .trim()
        .to_owned()
}

async fn publish(port: u16, key: &str, body: serde_json::Value) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/publish"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn development_mode_prints_a_working_token_and_sigterm_exits_cleanly() {
    let mut server = Server::start({
        let mut command = herald();
        command.arg("--dev");
        command
    })
    .await;
    let token = banner_value(&server.banner, "token for user dev-user (24h): ");
    let api_key = banner_value(&server.banner, "HERALD_API_KEY=");
    let mut client = WsClient::connect(&format!("ws://127.0.0.1:{}/ws?token={token}", server.port)).await.unwrap();
    client.next_event("connected").await;
    assert_eq!(publish(server.port, &api_key, json!({"topic": "user:dev-user", "data": {"hello": 1}})).await, 202);
    let frame = client.next_json().await;
    assert_eq!((&frame["type"], &frame["payload"]), (&json!("notification"), &json!({"hello": 1})));
    assert_eq!(frame["offset"], 1, "the first event of a fresh node: {frame}");

    let pid = server.child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    assert_eq!(client.ended().await, Ended::Closed(1001, "server shutting down".into()));
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn config_file_values_apply_and_flags_override_them() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("herald.toml");
    std::fs::write(&path, "jwt_secret = \"file-secret\"\napi_key = \"file-key\"\nheartbeat_interval = 15000\n")
        .unwrap();

    let mut server = Server::start({
        let mut command = herald();
        command.arg("--config").arg(&path);
        command
    })
    .await;
    assert_eq!(publish(server.port, "file-key", json!({"topic": "global"})).await, 202);
    server.child.kill().await.unwrap();

    let mut server = Server::start({
        let mut command = herald();
        command.arg("--config").arg(&path).args(["--api-key", "flag-key"]);
        command
    })
    .await;
    assert_eq!(publish(server.port, "flag-key", json!({"topic": "global"})).await, 202);
    assert_eq!(publish(server.port, "file-key", json!({"topic": "global"})).await, 401);
    server.child.kill().await.unwrap();

    std::fs::write(&path, "no_such_setting = 1\n").unwrap();
    let (code, _, stderr) = output(herald().arg("--config").arg(&path)).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("no_such_setting"), "{stderr}");
}

#[tokio::test]
async fn herald_worker_needs_postgresql_and_redis_but_no_jwt_key() {
    let (code, _, stderr) = output(herald().args(["worker"]).env("PORT", "0").env("HERALD_API_KEY", "k")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("DATABASE_URL") && stderr.contains("PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("JWT_SECRET"), "a worker serves no clients and needs no JWT key: {stderr}");
    let (code, _, stderr) = output(
        herald()
            .args(["worker"])
            .env("PORT", "0")
            .env("HERALD_API_KEY", "k")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}

#[tokio::test]
async fn an_outbox_mirror_into_the_channels_herald_ingests_is_refused() {
    let (code, _, stderr) = output(
        herald()
            .args(["--dev"])
            .env("PORT", "0")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("HERALD_OUTBOX_MIRROR_URL", "redis://127.0.0.1:1"),
    )
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("HERALD_OUTBOX_MIRROR_URL") && stderr.contains("second time"), "{stderr}");
}

#[tokio::test]
async fn herald_health_exits_0_for_a_live_node_and_1_otherwise() {
    let server = Server::start({
        let mut command = herald();
        command.arg("--dev");
        command
    })
    .await;
    let port = server.port.to_string();
    let (code, stdout, stderr) = output(herald().args(["health"]).env("PORT", &port).env("HOST", "0.0.0.0")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("200"), "{stdout}");
    // A path that is not 200 is unhealthy.
    let (code, _, stderr) = output(herald().args(["health", "--port", &port, "--path", "/no-such-page"])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    drop(server);
    // Nothing listening: a clear error, exit 1.
    let closed = herald_testkit::process::free_port().to_string();
    let (code, _, stderr) = output(herald().args(["health", "--port", &closed])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
