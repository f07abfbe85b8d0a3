//! The TypeScript client (`clients/typescript`) against this gateway: its own test suite
//! (`node --test`), built by scripts/test with `tsc`, run with the gateway's URL, API key
//! and tokens.

use herald_testkit::{API_KEY, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_passes_its_tests_against_a_real_gateway() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    assert!(
        dir.join("dist/index.js").exists() && dir.join("node_modules/ws").exists(),
        "clients/typescript is not built: run scripts/test (npm ci and npm run build there)"
    );
    let gateway = TestGateway::spawn().await;
    let mut command = tokio::process::Command::new("node");
    command
        .args(["--test", "--test-reporter=spec", "test/"])
        .current_dir(&dir)
        .env("HERALD_URL", gateway.http_url(""))
        .env("HERALD_API_KEY", API_KEY)
        .kill_on_drop(true);
    for user in ["alice", "bob", "carol"] {
        command.env(format!("HERALD_TOKEN_{}", user.to_uppercase()), gateway.token(user));
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("the client's tests finish within two minutes")
        .expect("node runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the TypeScript client's tests failed:\n{report}");
    assert!(report.contains("pass 4") && report.contains("fail 0"), "every test ran and passed:\n{report}");
}
