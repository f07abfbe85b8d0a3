//! Test support: a small language for driving a real Herald gateway with real clients.
//!
//! ```text
//! let gateway = TestGateway::spawn().await;
//! let mut ws = gateway.ws("/ws", &gateway.token("alice")).await;
//! gateway.publish(json!({"topic": "user:alice", "data": {"n": 1}})).await;
//! assert_eq!(ws.next_event("notification").await, json!({"n": 1}));
//! ```
//!
//! Every wait has a timeout ([`WAIT`]) so a missing event fails the test instead of
//! hanging it; nothing sleeps to synchronise.

mod node;
pub mod process;
mod sse;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use herald_auth::{Signer, TokenSpec};
use herald_server::{App, Running, Settings, StoreSettings};
use serde_json::Value;

pub use node::NodeClient;
pub use sse::SseClient;
pub use ws::{Ended, WsClient};

/// Settings for a gateway whose store is `store` (e.g. [`TestSchema::store`]).
pub fn with_store(store: StoreSettings) -> impl FnOnce(&mut Settings) {
    move |settings| settings.store = store
}

/// The JWT secret every test gateway uses.
pub const SECRET: &str = "herald-test-secret-0123456789abcdef";
/// The API key every test gateway uses.
pub const API_KEY: &str = "herald-test-api-key";
/// The longest any test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A PostgreSQL schema of its own for one test, in `HERALD_TEST_DATABASE_URL` (default the
/// local `test` database); [`TestSchema::drop_schema`] removes it.
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    pub fn new() -> Self {
        let url = std::env::var("HERALD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("herald_test_{:016x}", rand_u64());
        Self { url, name }
    }

    /// Store settings that put Herald's tables in this schema.
    pub fn store(&self) -> StoreSettings {
        StoreSettings::Postgres { url: self.url.clone(), schema: Some(self.name.clone()) }
    }

    /// Runs SQL in this schema with psql; returns its unaligned output.
    pub async fn psql(&self, sql: &str) -> String {
        let output = tokio::process::Command::new("psql")
            .arg(&self.url)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("SET search_path = {}; {sql}", self.name))
            .output()
            .await
            .expect("psql runs");
        assert!(output.status.success(), "psql failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Drops the schema and everything in it (call at the end of the test).
    pub async fn drop_schema(self) {
        let status = tokio::process::Command::new("psql")
            .arg(&self.url)
            .args(["-q", "-c", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)])
            .status()
            .await
            .expect("psql runs");
        assert!(status.success(), "schema {} dropped", self.name);
    }
}

impl Default for TestSchema {
    fn default() -> Self {
        Self::new()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    hasher.finish()
}

/// Builds a [`TestGateway`] with adjusted settings.
pub struct Builder {
    settings: Settings,
}

impl Builder {
    /// Changes settings before the gateway starts.
    pub fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self
    }

    pub async fn spawn(self) -> TestGateway {
        let app = App::bind(self.settings).await.expect("gateway binds 127.0.0.1:0");
        let running = app.spawn().expect("gateway starts");
        TestGateway { addr: running.local_addr(), running: Some(running), signer: Signer::secret(SECRET.as_bytes()) }
    }
}

/// A real gateway on 127.0.0.1 with an ephemeral port.
pub struct TestGateway {
    pub addr: SocketAddr,
    running: Option<Running>,
    signer: Signer,
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder { settings: Settings::new(SECRET, API_KEY) }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("gateway running")
    }

    /// A valid one-hour token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.signer.mint(&TokenSpec::new(sub)).expect("token minted")
    }

    /// A valid one-hour token for `sub` on one device (`deviceId` claim).
    pub fn device_token(&self, sub: &str, device: &str) -> String {
        let spec = TokenSpec { device: Some(device.to_owned()), ..TokenSpec::new(sub) };
        self.signer.mint(&spec).expect("token minted")
    }

    /// A token with roles.
    pub fn token_with_roles(&self, sub: &str, roles: &[&str]) -> String {
        self.signer.mint(&TokenSpec::new(sub).roles(roles)).expect("token minted")
    }

    /// A token signed with the test secret over arbitrary claims.
    pub fn token_with_claims(&self, claims: Value) -> String {
        let claims = claims.as_object().expect("claims object").clone();
        self.signer.mint_claims(&claims).expect("token minted")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `POST /api/publish` with the API key; returns status and JSON body.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.post_json("/api/publish", Some(API_KEY), body.to_string()).await
    }

    /// POSTs a raw body with an optional bearer key.
    pub async fn post_json(&self, path: &str, bearer: Option<&str>, body: String) -> (u16, Value) {
        let mut request =
            reqwest::Client::new().post(self.http_url(path)).header("content-type", "application/json").body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Any request with an optional bearer (API key or user token) and JSON body; returns
    /// status and JSON body (or `Null` when not JSON).
    pub async fn request(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request = reqwest::Client::new().request(method, self.http_url(path));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST /api/notifications` with the API key.
    pub async fn notify(&self, body: Value) -> (u16, Value) {
        self.request("POST", "/api/notifications", Some(API_KEY), Some(body)).await
    }

    /// GETs a path; returns status and JSON body (or `Null` when not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(self.http_url(path)).await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs a path as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.http_url(path)).await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Opens a plain WebSocket at `path_and_query` (e.g. `/ws?token=…`); panics on refusal.
    pub async fn ws(&self, path_and_query: &str) -> WsClient {
        WsClient::connect(&self.ws_url(path_and_query)).await.expect("websocket connects")
    }

    /// Opens an SSE stream at `path_and_query`; panics unless the answer is 200.
    pub async fn sse(&self, path_and_query: &str) -> SseClient {
        SseClient::connect(&self.http_url(path_and_query), None).await.expect("sse stream opens")
    }

    /// Starts one of the Node scripts in `tests/node` against this gateway.
    pub fn node(&self, script: &str, env: &[(&str, &str)]) -> NodeClient {
        let mut all = vec![("HERALD_URL", self.http_url(""))];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        NodeClient::start(script, &all)
    }

    /// Shuts the gateway down and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.wait().await.expect("gateway stops cleanly");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}

/// Waits for `future` at most [`WAIT`]; panics with `what` on timeout.
/// Polls until `condition` holds, at most `within`: for state only observable from
/// outside (a node noticing Redis is back, a health check passing), never as a stand-in
/// for an event.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}
