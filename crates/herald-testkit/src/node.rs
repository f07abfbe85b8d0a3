//! Runs the Node scripts in `tests/node` (official npm clients) and reads their JSON lines.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The folder with the Node scripts and their `node_modules`.
pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

pub struct NodeClient {
    _child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Records seen while waiting for something else, oldest first.
    pub seen: Vec<Value>,
    next_ack: u64,
}

impl NodeClient {
    pub fn start(script: &str, env: &[(&str, String)]) -> Self {
        let dir = node_dir();
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "tests/node/node_modules is missing: run scripts/test (or npm ci --prefix tests/node)"
        );
        let mut command = Command::new("node");
        command
            .arg(dir.join(script))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("node starts (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"kind": "text", "text": line}));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        Self { _child: child, stdin, lines, seen: Vec::new(), next_ack: 0 }
    }

    pub async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.expect("command written to node");
        self.stdin.flush().await.expect("stdin flushed");
    }

    /// Emits `event` with `data` and waits for the ack response.
    pub async fn emit_with_ack(&mut self, event: &str, data: Value) -> Value {
        self.next_ack += 1;
        let id = self.next_ack;
        self.send(json!({"emit": event, "data": data, "ack": true, "id": id})).await;
        let record = self.until(|r| r["kind"] == "ack" && r["id"] == id).await;
        record["response"].clone()
    }

    /// Emits without an ack.
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send(json!({"emit": event, "data": data})).await;
    }

    /// Returns the oldest record matching `predicate` that no earlier call returned:
    /// first from those already read and skipped, then by waiting for new ones (which are
    /// kept in `seen` when they do not match).
    pub async fn until(&mut self, predicate: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.seen.iter().position(&predicate) {
            return self.seen.remove(index);
        }
        let seen = &mut self.seen;
        let lines = &mut self.lines;
        let found = tokio::time::timeout(crate::WAIT, async {
            while let Some(record) = lines.recv().await {
                if predicate(&record) {
                    return Some(record);
                }
                seen.push(record);
            }
            None
        })
        .await;
        match found {
            Ok(Some(record)) => record,
            Ok(None) => panic!("node exited; records seen: {:?}", self.seen),
            Err(_) => panic!("timed out; records seen: {:?}", self.seen),
        }
    }

    /// Waits for an `event` record named `event`; returns its arguments.
    pub async fn event(&mut self, event: &str) -> Vec<Value> {
        let record = self.until(|r| r["kind"] == "event" && r["event"] == event).await;
        record["args"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for a record of `kind` (connect, connect_error, disconnect, ...).
    pub async fn kind(&mut self, kind: &str) -> Value {
        self.until(|r| r["kind"] == kind).await
    }
}
