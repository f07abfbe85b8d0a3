//! `/dashboard`: who may see it, its live stream and its send form over HTTP, and the
//! whole page end to end in headless Chromium (tests/node/dashboard-browser.mjs).

use herald_testkit::{API_KEY, SseClient, TestGateway};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn status_of(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_the_api_key_or_an_admin_token() {
    let gateway = TestGateway::spawn().await;
    let http = client();
    let page = gateway.http_url("/dashboard");
    let (status, body) = status_of(http.get(&page)).await;
    assert_eq!(status, 401);
    assert!(body.contains(r#"name="credential""#) && !body.contains("count-ws"), "a sign-in form only");

    let login = gateway.http_url("/dashboard/login");
    let (status, body) = status_of(http.post(&login).form(&[("credential", "wrong")])).await;
    assert_eq!(status, 401);
    assert!(body.contains("Not accepted"), "{body}");
    let user = gateway.token("alice");
    let (status, _) = status_of(http.post(&login).form(&[("credential", user.as_str())])).await;
    assert_eq!(status, 401, "a token without the admin role is refused");
    let (status, _) = status_of(http.post(&login).body("credential=%ZZ").header("content-type", "x")).await;
    assert_eq!(status, 401, "an unreadable form is refused");

    let response = http.post(&login).form(&[("credential", API_KEY)]).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/dashboard");
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["herald_admin=", "HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (status, body) = status_of(http.get(&page).header("cookie", &pair)).await;
    assert_eq!(status, 200);
    assert!(body.contains("count-ws") && body.contains("/dashboard/stream"), "the dashboard itself");
    let (status, _) = status_of(http.get(&page).header("cookie", "herald_admin=forged")).await;
    assert_eq!(status, 401);

    // An admin token works as the credential too, as a bearer.
    let admin = gateway.token_with_roles("root", &["admin"]);
    let (status, _) = status_of(http.get(&page).bearer_auth(&admin)).await;
    assert_eq!(status, 200);
    let (status, _) = status_of(http.get(&page).bearer_auth(&user)).await;
    assert_eq!(status, 401);

    for (path, method) in [("/dashboard/stream", "GET"), ("/dashboard/send", "POST")] {
        let request = http.request(method.parse().unwrap(), gateway.http_url(path));
        let (status, body) = status_of(request).await;
        assert_eq!(status, 401, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "TOKEN_INVALID", "{path}");
    }

    let response = http.post(gateway.http_url("/dashboard/logout")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_connections_topics_and_errors_and_the_form_publishes() {
    let gateway = TestGateway::spawn().await;
    let admin = gateway.token_with_roles("root", &["admin"]);
    let mut stream = SseClient::connect(&gateway.http_url("/dashboard/stream"), Some(&admin)).await.unwrap();
    let first = stream.next().await;
    assert_eq!(first.event, "snapshot");
    let snapshot: Value = serde_json::from_str(&first.data).unwrap();
    for key in ["connections", "transports", "nodes", "topics", "eventsPerSecond", "deliveriesPerSecond", "errors"] {
        assert!(snapshot.get(key).is_some(), "{key} in {snapshot}");
    }
    let mut alice = gateway.ws(&format!("/ws?token={}", gateway.token("alice"))).await;
    alice.next_event("connected").await;
    // A refused connection is an error the page lists.
    assert!(herald_testkit::WsClient::connect(&gateway.ws_url("/ws?token=bad")).await.is_err());

    let http = client();
    let send = gateway.http_url("/dashboard/send");
    let (status, body) = status_of(http.post(&send).bearer_auth(&admin).body("{not json")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = status_of(http.post(&send).bearer_auth(&admin).json(&json!({"topic": "nowhere"}))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = status_of(
        http.post(&send)
            .bearer_auth(&admin)
            .json(&json!({"topic": "user:alice", "event": "notification", "data": {"message": "hi"}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let payload = alice.next_event("notification").await;
    assert_eq!(payload["message"], "hi");

    // Later snapshots show alice's connection, her topic, the delivery and the error.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next()).await.expect("a snapshot showing it all");
        let snapshot: Value = serde_json::from_str(&event.data).unwrap();
        let shows_topic = snapshot["topics"].as_array().unwrap().iter().any(|topic| topic["topic"] == "user:alice");
        let shows_error = snapshot["errors"].as_array().unwrap().iter().any(|error| error["code"] == "TOKEN_INVALID");
        if snapshot["transports"]["ws"].as_u64() >= Some(1)
            && shows_topic
            && shows_error
            && snapshot["delivered"].as_u64() >= Some(1)
        {
            break;
        }
    }
}

/// The page in a real browser: sign in, see a browser WebSocket and a browser EventSource
/// client of another page appear, send a notification from the form, see it reach both.
/// The screenshot it takes is docs/dashboard.png's source (copied there by hand when the
/// page changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: run scripts/test, which installs it"
    );
    let gateway = TestGateway::spawn().await;
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let token = gateway.token("alice");
    let mut browser = gateway.node(
        "dashboard-browser.mjs",
        &[("HERALD_API_KEY", API_KEY), ("HERALD_TOKEN", &token), ("HERALD_SCREENSHOT", screenshot.to_str().unwrap())],
    );
    let mut last = String::new();
    for step in [
        "browser",
        "login-form",
        "refused",
        "dashboard-live",
        "clients-connected",
        "clients-shown",
        "sent",
        "received",
        "screenshot",
    ] {
        let record = browser.until(|record| record["kind"] == "failed" || record["name"] == step).await;
        assert_ne!(record["kind"], "failed", "after step {last}: {}", record["error"]);
        match step {
            "login-form" => assert_eq!(record["status"], 401),
            "refused" => assert!(record["error"].as_str().unwrap().contains("Not accepted")),
            "clients-shown" => assert_eq!((&record["ws"], &record["sse"]), (&json!("1"), &json!("1")), "{record}"),
            "sent" => assert!(record["result"].as_str().unwrap().starts_with("sent to user:alice"), "{record}"),
            _ => {}
        }
        last = step.to_owned();
    }
    browser.kind("done").await;
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
}
