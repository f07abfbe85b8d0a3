//! `GET /api/openapi.json`: the document is valid OpenAPI (openapi-spec-validator) and
//! lists the HTTP API, every documented operation is routed, and schemathesis (PyPI, installed by scripts/test into target/tools) drives
//! every operation with generated valid and invalid input, as the server API and as a
//! user, finding no 5xx answer.

use herald_testkit::{API_KEY, TestGateway};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_the_api_and_every_operation_in_it_is_routed() {
    let gateway = TestGateway::spawn().await;
    let (status, document) = gateway.get_json("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")), "{}", document["openapi"]);
    validate(&document).await;
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/api/publish",
        "/api/notifications",
        "/api/me/notifications",
        "/api/community/messages",
        "/api/community/messages/{id}",
        "/api/conversations/{topic}",
        "/api/conversations/{topic}/members",
        "/health",
        "/ready",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    for scheme in ["api_key", "user_token"] {
        assert_eq!(document["components"]["securitySchemes"][scheme]["scheme"], "bearer");
    }
    // Each documented operation reaches a handler: without credentials it is refused
    // (or answered), never the router's "no such endpoint" or 405.
    let http = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{topic}", "room:x").replace("{action}", "read").replace(['{', '}'], "");
        for method in item.as_object().unwrap().keys() {
            let response =
                http.request(method.to_uppercase().parse().unwrap(), gateway.http_url(&concrete)).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404 && body["error"]["message"] == "no such endpoint"),
                "{method} {path} is documented but not routed"
            );
            operations += 1;
        }
    }
    assert!(operations >= 19, "{operations} operations");
}

/// Checks the document against the OpenAPI specification with openapi-spec-validator
/// (PyPI, installed by scripts/test into target/tools).
async fn validate(document: &Value) {
    use tokio::io::AsyncWriteExt;
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/openapi-validator");
    assert!(
        tools.exists(),
        "openapi-spec-validator is not installed: run scripts/test, which installs it into target/tools"
    );
    let mut child = tokio::process::Command::new("python3")
        .env("PYTHONPATH", &tools)
        .args(["-c", "import json, sys; from openapi_spec_validator import validate; validate(json.load(sys.stdin))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(document.to_string().as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "not a valid OpenAPI document:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Runs schemathesis against the gateway with `authorization` on every request.
async fn schemathesis(gateway: &TestGateway, authorization: &str) -> (bool, String) {
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/schemathesis");
    let program = tools.join("bin/schemathesis");
    assert!(program.exists(), "schemathesis is not installed: run scripts/test, which installs it into target/tools");
    let seed = std::env::var("HERALD_FUZZ_SEED").unwrap_or_else(|_| "1".to_owned());
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new(&program)
            .env("PYTHONPATH", &tools)
            .args(["run", &gateway.http_url("/api/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {authorization}")])
            // One worker: with two threads, CPython 3.11 before 3.11.8 can fail hypothesis's
            // own source parsing with "AST constructor recursion depth mismatch" (a race in
            // the interpreter's AST state, python/cpython#106905), which reads as a test error.
            .args(["--checks", "not_a_server_error", "--max-examples", "15", "--workers", "1"])
            .args(["--seed", &seed, "--suppress-health-check", "all", "--no-shrink"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finishes within five minutes")
    .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_to_every_documented_operation_get_no_server_error() {
    let gateway = TestGateway::spawn().await;
    let (_, document) = gateway.get_json("/api/openapi.json").await;
    let operations: usize =
        document["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    let user = gateway.token("alice");
    for (who, authorization) in [("the API key", API_KEY), ("a user's token", user.as_str())] {
        let (passed, report) = schemathesis(&gateway, authorization).await;
        assert!(passed, "schemathesis with {who} found failures:\n{report}");
        assert!(report.contains(&format!("Tested: {operations}")), "every operation was tested with {who}:\n{report}");
    }
}
