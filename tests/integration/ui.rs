//! The web UI in a real headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/e2e/ui.mjs) against a real tracegate with real traffic from `mock-llm`: the list shows
//! the traces, a click opens the waterfall with one bar per span (an app span's panel shows its
//! OpenTelemetry kind and events), the usage page shows the API's totals, new calls appear
//! live, and an admin token is asked for; then the user, session, property and text filters
//! (kept in the URL), "Load more" by cursor, the Sessions tab with a session's traces and
//! totals, and a user's page; and the assembled text of a stream in every wire format
//! (tests/e2e/streams.mjs). Screenshots are written to
//! $TRACEGATE_SCREENSHOTS (docs/ holds the committed ones) or a temp dir.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Real traffic: an app span with LLM children (one streamed), other teams and models, an error.
async fn traffic(proxy: &Proxy) -> String {
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let step = "3333333333333333";
    let now = tracegate::model::clock::unix_nanos();
    let ingest = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "support-agent"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace, "spanId": step, "name": "answer ticket", "kind": 2,
            "startTimeUnixNano": (now - 5_000_000).to_string(), "endTimeUnixNano": (now + 900_000_000).to_string(),
            "events": [{"name": "tickets retrieved", "timeUnixNano": now.to_string(),
                "attributes": [{"key": "ticket.ids", "value": {"arrayValue": {"values": [{"stringValue": "T-1"}, {"stringValue": "T-2"}]}}}]}]}]}]}]});
    let (status, _, _) = post(&proxy.admin_url("/v1/traces"), &[], &ingest.to_string()).await;
    assert_eq!(status, 200);
    let traceparent = format!("00-{trace}-{step}-01");
    let child = [("traceparent", traceparent.as_str()), ("x-tracegate-team", "support"), ("x-tracegate-user", "ada")];
    post(&proxy.url("/openai/v1/chat/completions"), &child, CHAT).await;
    post(&proxy.url("/openai/v1/chat/completions"), &child, CHAT_STREAM_USAGE).await;
    post(&proxy.url("/anthropic/v1/messages"), &child, MESSAGES_STREAM).await;
    for team in ["search", "search", "ads"] {
        post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-team", team)], CHAT).await;
    }
    post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-team", "ads"), ("x-mock-status", "500")], CHAT)
        .await;
    finding_traffic(proxy).await;
    trace.to_string()
}

/// What the list's filters, the Sessions tab and the user page find: ada's session of three
/// traces (each call with its own traceparent; the last one fails), grace's session of one
/// trace of two calls under a name that needs escaping in a URL (with a property), and a rare
/// phrase in one request body.
async fn finding_traffic(proxy: &Proxy) {
    let chat = proxy.url("/openai/v1/chat/completions");
    for i in 0..3u32 {
        let traceparent = format!("00-{:032x}-{:016x}-01", 0xada0 + i, 0x51 + i);
        let mut headers = vec![
            ("traceparent", traceparent.as_str()),
            ("x-tracegate-team", "support"),
            ("x-tracegate-user", "ada"),
            ("x-tracegate-session", "ada-chat-1"),
        ];
        if i == 2 {
            headers.push(("x-mock-status", "500"));
        }
        post(&chat, &headers, CHAT).await;
    }
    let grace = [
        ("x-tracegate-team", "search"),
        ("x-tracegate-user", "grace"),
        ("x-tracegate-session", "grace/week 1"),
        ("x-tracegate-property-env", "staging"),
    ];
    post(&chat, &grace, CHAT).await;
    post(&chat, &grace, CHAT_STREAM_USAGE).await;
    let elephant =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Where is the purple Elephant today?"}]}"#;
    post(&chat, &[("x-tracegate-user", "grace")], elephant).await;
}

fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("TRACEGATE_SCREENSHOTS") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let dir = tempfile::tempdir().unwrap();
            (dir.path().to_path_buf(), Some(dir))
        }
    }
}

async fn run_browser(proxy: &Proxy, trace: &str, token: Option<&str>) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/ui.mjs");
    let (shots, _keep) = screenshot_dir();
    let mut command = Command::new("node");
    command.arg(script).arg(proxy.admin_url("")).arg(proxy.url("")).arg(trace).arg(&shots);
    if let Some(token) = token {
        command.arg(token);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("node runs");
    assert!(
        output.status.success(),
        "the browser check failed (tests/run.sh installs chromium and tests/e2e's node modules):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("ui.mjs prints a JSON summary")
}

fn providers(mock: &Mock) -> String {
    format!(
        "{}{}[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n",
        provider("openai", "/openai", mock.addr, "openai"),
        provider("anthropic", "/anthropic", mock.addr, "anthropic")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_traces_waterfalls_and_usage_in_chromium() {
    let mock = Mock::start(Duration::from_millis(5)).await;
    let proxy = Proxy::start(&providers(&mock)).await;
    let trace = traffic(&proxy).await;
    let summary = run_browser(&proxy, &trace, None).await;
    assert_eq!(summary["traces"], 10, "one agent trace, four single calls and five of finding_traffic: {summary}");
    assert_eq!(summary["bars"], 4, "the app span and its three LLM calls: {summary}");
    assert_eq!(summary["app_span_events"], 1, "the app span's panel lists its event: {summary}");
    let (_, usage) = proxy.admin_get("/api/usage").await;
    assert_eq!(summary["requests"], usage["totals"]["requests"], "{summary}");
    assert_eq!(summary["live"], true);
    // The finding features, each checked by ui.mjs against the API's own answer.
    assert_eq!(summary["filter_user"], 4, "ada's agent trace and her session's three: {summary}");
    assert_eq!(summary["filter_user_session"], 3, "{summary}");
    assert_eq!(summary["filter_property"], 1, "grace's session: {summary}");
    assert_eq!(summary["filter_text"], 1, "the one body with the phrase: {summary}");
    assert_eq!(summary["filter_user_errors"], 1, "{summary}");
    assert_eq!(summary["load_more"]["pages"], 4, "11 traces by pages of 3: {summary}");
    assert_eq!(summary["load_more"]["rows"], 11, "{summary}");
    assert_eq!(summary["sessions"], 2, "{summary}");
    assert_eq!(summary["session_traces"], 3, "{summary}");
    assert_eq!(summary["session_spans"], 3, "{summary}");
    assert_eq!(summary["session_errors"], 1, "{summary}");
    assert_eq!(summary["user_sessions"], 1, "{summary}");
    assert_eq!(summary["user_errors"], 1, "{summary}");
    assert_eq!(summary["user_traces"], 4, "{summary}");
    assert_eq!(summary["user_link"], true, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_asks_for_the_admin_token() {
    let mock = Mock::start(Duration::ZERO).await;
    let dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let config = format!("{}[admin]\ntoken = \"ui-secret-token\"\n", providers(&mock));
    let proxy = Proxy::start_in(dir, &config).await;
    let trace = traffic(&proxy).await;
    // Without the token the API refuses; the page itself holds no data.
    let (status, _) = proxy.admin_get("/api/traces").await;
    assert_eq!(status, 401);
    let summary = run_browser(&proxy, &trace, Some("ui-secret-token")).await;
    assert_eq!(summary["bars"], 4, "{summary}");
}

/// Streams of every wire format in one trace, each read back by the UI as its assembled text:
/// Gemini's SSE and JSON array, Azure's (an opening content-filter chunk with no choices),
/// Bedrock's event-stream frames (ConverseStream, and InvokeModelWithResponseStream's base64
/// chunks), beside OpenAI's and Anthropic's SSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_assembles_the_streamed_text_of_every_wire_format() {
    let mock = Mock::start(Duration::from_millis(1)).await;
    let providers = format!(
        "{}{}{}{}",
        providers(&mock),
        provider("gemini", "/gemini", mock.addr, "gemini"),
        provider("azure", "/azure", mock.addr, "azure"),
        provider("bedrock", "/bedrock", mock.addr, "bedrock")
    );
    let proxy = Proxy::start(&providers).await;
    let trace = "6a1f0e9d8b7a6c5b4a39281706f5e4c3";
    let traceparent = format!("00-{trace}-0102030405060708-01");
    let tp = [("traceparent", traceparent.as_str())];
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"Stream to the UI"}]}]}"#;
    let claude = "/bedrock/model/anthropic.claude-haiku-4-5-20251001-v1%3A0";
    let calls: [(String, &str); 7] = [
        ("/openai/v1/chat/completions".into(), CHAT_STREAM_USAGE),
        ("/anthropic/v1/messages".into(), MESSAGES_STREAM),
        ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".into(), gemini),
        ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent".into(), gemini),
        ("/azure/openai/deployments/prod-mini/chat/completions?api-version=2024-10-21".into(), CHAT_STREAM_USAGE),
        (
            format!("{claude}/converse-stream"),
            r#"{"messages":[{"role":"user","content":[{"text":"Stream to the UI"}]}]}"#,
        ),
        (
            format!("{claude}/invoke-with-response-stream"),
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"Stream to the UI"}]}"#,
        ),
    ];
    for (path, body) in &calls {
        let (status, _, _) = post(&proxy.url(path), &tp, body).await;
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(proxy.wait_spans(trace, calls.len()).await.len(), calls.len());

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/streams.mjs");
    let mut command = Command::new("node");
    command.arg(script).arg(proxy.admin_url("")).arg(trace);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("node runs");
    assert!(
        output.status.success(),
        "the browser check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let panels: Value = serde_json::from_slice(&output.stdout).expect("streams.mjs prints JSON");
    let panels = panels.as_array().unwrap();
    assert_eq!(panels.len(), calls.len(), "{panels:#?}");
    for panel in panels {
        assert_eq!(panel["text"], tracegate::mock_llm::REPLY_TEXT, "{panel}");
    }
    let toggles = |end: &str| -> Vec<&str> {
        let matching = panels.iter().filter(|p| p["path"].as_str().unwrap().ends_with(end));
        let mut labels: Vec<&str> = matching.map(|p| p["toggle"].as_str().unwrap()).collect();
        labels.sort();
        labels
    };
    assert_eq!(toggles(":streamGenerateContent"), ["raw JSON array", "raw SSE"]);
    assert_eq!(toggles("-stream"), ["raw event stream", "raw event stream"]);
    assert_eq!(toggles("/chat/completions"), ["raw SSE", "raw SSE"]);
}
