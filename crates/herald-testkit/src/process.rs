//! Processes as a user runs them: `herald` nodes and a private `redis-server`, each
//! stopped by its own PID (never a shared service).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to start listening.
const START_WAIT: Duration = Duration::from_secs(30);

/// A running `herald` process and what it printed before listening.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub banner: Vec<String>,
}

impl Server {
    /// Starts `command` (with `PORT=0`) and reads its stdout until the listening line.
    pub async fn start(mut command: Command) -> Server {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit()).env("PORT", "0").kill_on_drop(true);
        let mut child = command.spawn().expect("herald starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut banner = Vec::new();
        let port = tokio::time::timeout(START_WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stdout readable") {
                // Plain logs say `local_addr=IP:PORT`; JSON logs (production) `"local_addr":"IP:PORT"`.
                let plain = line.split("local_addr=").nth(1);
                let json = line.split(r#""local_addr":""#).nth(1).and_then(|rest| rest.split('"').next());
                if let Some(rest) = plain.or(json) {
                    let address: std::net::SocketAddr = rest.trim().trim_matches('"').parse().expect("an address");
                    return address.port();
                }
                banner.push(line);
            }
            panic!("herald exited before listening: {banner:?}");
        })
        .await
        .expect("herald listens in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, port, banner }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL: no shutdown, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id()?;
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        tokio::time::timeout(START_WAIT, self.child.wait()).await.ok()?.ok()?.code()
    }
}

/// A private `redis-server` on a free loopback port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
    tls: bool,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// With extra `redis-server` arguments, e.g. `["--requirepass", "secret"]`.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut server =
            RedisServer { child: None, port, extra: extra.iter().map(|arg| arg.to_string()).collect(), tls: false };
        server.launch().await;
        server
    }

    /// TLS only (`rediss://`), with the given PEM files; clients are not asked for certificates.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let port = free_port();
        let extra = vec![
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = RedisServer { child: None, port, extra, tls: true };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let port = self.port.to_string();
        let ports: [&str; 4] =
            if self.tls { ["--port", "0", "--tls-port", &port] } else { ["--port", &port, "--tls-port", "0"] };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_WAIT;
        while !self.answers().await {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether a PING gets PONG (or, with a password set, the refusal that proves it listens).
    pub async fn answers(&self) -> bool {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(("127.0.0.1", self.port)))
                .await
        else {
            return false;
        };
        if self.tls {
            // Listening is all that can be seen without a TLS client.
            return true;
        }
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        matches!(tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await, Ok(Ok(_)) if &reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis-cli ARGS` against this server; its trimmed output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// SIGKILL by PID.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts again on the same port, empty (no persistence).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port").port()
}
