//! `GET /api/export` (JSON Lines with bodies, newest first, streamed) and the deletes
//! (`DELETE /api/traces/{id}`, `DELETE /api/spans?…`, dry runs, the admin token), through a
//! real tracegate on loopback; and the CLI's `traces` filters, `export` and `delete`, both as
//! library calls and as the real binary.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use serde_json::Value;

use crate::support::*;

fn config(mock: &Mock, extra: &str) -> String {
    format!("{}{extra}", provider("openai", "/openai", mock.addr, "openai"))
}

/// One chat call of `team` and `user` asking about `topic` (its own session, so its own
/// trace); returns its trace id.
async fn call(proxy: &Proxy, team: &str, user: &str, topic: &str) -> String {
    let body = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Tell me about {topic}"}}]}}"#);
    let (status, headers, _) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[("x-tracegate-team", team), ("x-tracegate-user", user), ("x-tracegate-session", &format!("{user}: {topic}"))],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    header(&headers, "x-tracegate-trace-id").to_string()
}

/// `GET /api/export?query`: status, content type and the lines.
async fn export(proxy: &Proxy, query: &str) -> (u16, String, Vec<Value>) {
    proxy.server().flush().await;
    let (status, headers, body) = get(&proxy.admin_url(&format!("/api/export?{query}"))).await;
    let lines = match status {
        200 => {
            body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
        }
        _ => Vec::new(),
    };
    (status, header(&headers, "content-type").to_string(), lines)
}

fn topic_of(span: &Value) -> String {
    span["request_body"]["messages"][0]["content"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn export_streams_every_matching_span_with_its_bodies_newest_first() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    let mut traces = Vec::new();
    for i in 0..12 {
        let team = if i % 2 == 0 { "alpha" } else { "beta" };
        traces.push(call(&proxy, team, &format!("u{}", i % 3), &format!("topic number {i}")).await);
    }
    let (status, content_type, lines) = export(&proxy, "team=alpha").await;
    assert_eq!((status, content_type.as_str()), (200, "application/x-ndjson"));
    let topics: Vec<String> = lines.iter().map(topic_of).collect();
    let want: Vec<String> =
        (0..12).rev().filter(|i| i % 2 == 0).map(|i| format!("Tell me about topic number {i}")).collect();
    assert_eq!(topics, want, "alpha's spans, newest first, with their request bodies");
    for line in &lines {
        assert_eq!(line["team"], "alpha");
        assert!(line["response_body"]["choices"].is_array(), "response body present: {line}");
        let trace = line["trace_id"].as_str().unwrap();
        let (_, one) =
            proxy.admin_get(&format!("/api/traces/{trace}/spans/{}", line["span_id"].as_str().unwrap())).await;
        assert_eq!(line, &one, "a line is what the span endpoint shows");
    }
    let starts: Vec<u64> = lines.iter().map(|l| l["start_time_unix_nano"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]));
    // Every filter of /api/traces, q included.
    assert_eq!(export(&proxy, "").await.2.len(), 12);
    assert_eq!(export(&proxy, "user=u1&team=beta").await.2.len(), 2);
    let (_, _, found) = export(&proxy, "q=TOPIC%20NUMBER%207").await;
    assert_eq!(found.iter().map(topic_of).collect::<Vec<_>>(), ["Tell me about topic number 7"]);
    assert_eq!(export(&proxy, "team=nobody").await.2.len(), 0);
    // No paging, no unknown parameter.
    for bad in ["limit=5", "cursor=1-2", "teem=alpha", "status=fine"] {
        let (status, _, _) = export(&proxy, bad).await;
        assert_eq!(status, 400, "{bad}");
    }
}

/// `n` ingested spans of one trace each (no bodies), a thousand per OTLP request.
async fn ingest(proxy: &Proxy, n: usize) {
    for first in (0..n).step_by(1000) {
        let spans = (first..(first + 1000).min(n))
            .map(|i| {
                let mut trace_id = vec![0xab; 16];
                trace_id[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                OtlpSpan {
                    trace_id,
                    span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                    name: format!("app step {i} {}", "x".repeat(200)),
                    start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                    end_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 + 1000,
                    ..Default::default()
                }
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        let (status, _, _) =
            post_bytes(&proxy.admin_url("/v1/traces"), "application/x-protobuf", request.encode_to_vec()).await;
        assert_eq!(status, 200);
    }
    proxy.server().flush().await;
}

async fn post_bytes(url: &str, content_type: &str, body: Vec<u8>) -> (u16, http::HeaderMap, Bytes) {
    let req = Request::post(url).header("content-type", content_type).body(Full::new(Bytes::from(body))).unwrap();
    let resp = send(req).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn a_large_export_streams_in_chunks_and_stops_when_the_client_goes_away() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    const SPANS: usize = 20_000;
    ingest(&proxy, SPANS).await;
    let response = send(Request::get(proxy.admin_url("/api/export")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut frames, mut bytes, mut lines, mut last_start) = (0, 0, 0, u64::MAX);
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        frames += 1;
        bytes += data.len();
        rest.extend_from_slice(&data);
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let line: Value = serde_json::from_slice(&rest[..end]).unwrap();
            let start = line["start_time_unix_nano"].as_u64().unwrap();
            assert!(start < last_start, "newest first");
            last_start = start;
            lines += 1;
            rest.drain(..=end);
        }
    }
    assert_eq!(lines, SPANS);
    assert!(rest.is_empty());
    assert!(frames > 10, "{bytes} bytes came in {frames} frames: streamed, not gathered");

    // A client that reads one chunk and leaves: the walk stops, the server serves on.
    for _ in 0..3 {
        let response = send(Request::get(proxy.admin_url("/api/export")).body(Full::new(Bytes::new())).unwrap()).await;
        let mut body = response.into_body();
        assert!(body.frame().await.is_some());
        drop(body);
    }
    let (status, traces) = proxy.admin_get("/api/traces?limit=3").await;
    assert_eq!((status, traces["traces"].as_array().unwrap().len()), (200, 3));
    assert_eq!(export(&proxy, "").await.2.len(), SPANS);
}

#[tokio::test]
async fn deletes_by_filter_and_by_trace_count_first_then_delete_and_keep_the_usage_totals() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    for i in 0..9 {
        match i % 3 {
            0 => alpha.push(call(&proxy, "alpha", "ann", &format!("alpha thing {i}")).await),
            _ => beta.push(call(&proxy, "beta", &format!("bob{}", i % 2), &format!("beta thing {i}")).await),
        }
    }
    let usage_before = proxy.admin_get("/api/usage?group_by=team,user,model").await.1;
    assert_eq!(usage_before["totals"]["requests"], 9);

    // A dry run counts and deletes nothing.
    assert_eq!(
        admin_call(&proxy, "DELETE", "/api/spans?team=alpha&dry_run=true", None).await,
        (200, serde_json::json!({"deleted": 3}))
    );
    assert_eq!(proxy.spans(&alpha[0]).await.len(), 1);
    assert_eq!(
        admin_call(&proxy, "DELETE", "/api/spans?team=alpha", None).await,
        (200, serde_json::json!({"deleted": 3}))
    );
    for trace in &alpha {
        assert_eq!(proxy.admin_get(&format!("/api/traces/{trace}")).await.0, 404);
    }
    assert_eq!(proxy.admin_get("/api/traces?team=alpha").await.1["traces"], serde_json::json!([]));
    assert_eq!(proxy.admin_get("/api/sessions?user=ann").await.1["sessions"], serde_json::json!([]));
    assert_eq!(proxy.admin_get("/api/traces").await.1["traces"].as_array().unwrap().len(), 6);
    assert!(export(&proxy, "q=alpha%20thing").await.2.is_empty(), "bodies gone from the search too");
    assert_eq!(admin_call(&proxy, "DELETE", "/api/spans?team=alpha", None).await.1["deleted"], 0);

    // One trace; again is 0, not an error.
    let (status, answer) = admin_call(&proxy, "DELETE", &format!("/api/traces/{}", beta[0]), None).await;
    assert_eq!((status, answer["deleted"].as_u64()), (200, Some(1)));
    assert_eq!(proxy.admin_get(&format!("/api/traces/{}", beta[0])).await.0, 404);
    assert_eq!(
        admin_call(&proxy, "DELETE", &format!("/api/traces/{}?dry_run=true", beta[0]), None).await.1["deleted"],
        0
    );
    assert_eq!(admin_call(&proxy, "DELETE", &format!("/api/traces/{}", beta[0]), None).await.1["deleted"], 0);
    // Combined filters: bob1's calls (i = 1, 5, 7) minus the trace deleted above (i = 1).
    assert_eq!(admin_call(&proxy, "DELETE", "/api/spans?user=bob1&team=beta&dry_run=1", None).await.1["deleted"], 2);
    let one_session = "/api/spans?user=bob1&session=bob1:%20beta%20thing%205";
    assert_eq!(admin_call(&proxy, "DELETE", one_session, None).await.1["deleted"], 1);
    assert_eq!(admin_call(&proxy, "DELETE", "/api/spans?user=bob1&team=beta", None).await.1["deleted"], 1);
    assert_eq!(export(&proxy, "").await.2.len(), 3);

    // The usage ledger keeps its totals.
    assert_eq!(proxy.admin_get("/api/usage?group_by=team,user,model").await.1, usage_before);

    // Refusals: no filter, paging, unknown parameters, bad ids, other methods.
    for (method, path, status) in [
        ("DELETE", "/api/spans", 400),
        ("DELETE", "/api/spans?dry_run=true", 400),
        ("DELETE", "/api/spans?team=", 400),
        ("DELETE", "/api/spans?team=beta&limit=3", 400),
        ("DELETE", "/api/spans?team=beta&dry_run=maybe", 400),
        ("DELETE", "/api/spans?teem=beta", 400),
        ("DELETE", "/api/traces/not-hex", 400),
        ("DELETE", &format!("/api/traces/{}?team=beta", beta[1]), 400),
        ("GET", "/api/spans?team=beta", 405),
        ("DELETE", "/api/usage", 405),
        ("DELETE", "/api/traces", 405),
        ("POST", "/api/spans?team=beta", 405),
    ] {
        let (got, answer) = admin_call(&proxy, method, path, None).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{method} {path}: {answer}");
    }
    assert_eq!(export(&proxy, "").await.2.len(), 3, "no refused request deleted anything");
}

#[tokio::test]
async fn deletes_and_export_need_the_admin_token_when_one_is_set() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&mock, "[admin]\ntoken = \"delete-secret\"\n")).await;
    let trace = call(&proxy, "alpha", "ann", "secrets").await;
    for (method, path) in [
        ("DELETE", "/api/spans?team=alpha".to_string()),
        ("DELETE", format!("/api/traces/{trace}")),
        ("GET", "/api/export".into()),
    ] {
        assert_eq!(admin_call(&proxy, method, &path, None).await.0, 401, "{method} {path}");
        assert_eq!(admin_call(&proxy, method, &path, Some("wrong")).await.0, 401, "{method} {path}");
    }
    assert_eq!(
        admin_call(&proxy, "DELETE", "/api/spans?team=alpha&dry_run=true", Some("delete-secret")).await.1["deleted"],
        1
    );
    assert_eq!(
        admin_call(&proxy, "DELETE", &format!("/api/traces/{trace}"), Some("delete-secret")).await.1["deleted"],
        1
    );
}

/// The span ids of a trace, as stored.
async fn span_ids(proxy: &Proxy, trace: &str) -> Vec<String> {
    proxy.spans(trace).await.iter().map(|s| s["span_id"].as_str().unwrap().to_string()).collect()
}

/// An OTLP JSON collector that can be down (503); the span ids it received, in order.
async fn collector(down: Arc<std::sync::atomic::AtomicBool>) -> (Scripted, Arc<Mutex<Vec<String>>>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = received.clone();
    let upstream = Scripted::start(move |req| {
        if down.load(std::sync::atomic::Ordering::SeqCst) {
            return http::Response::builder().status(503).body(full("down")).unwrap();
        }
        let request: ExportTraceServiceRequest = serde_json::from_slice(&req.body).unwrap();
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            log.lock().unwrap().push(span.span_id.iter().map(|b| format!("{b:02x}")).collect());
        }
        http::Response::builder().body(full(Bytes::new())).unwrap()
    })
    .await;
    (upstream, received)
}

async fn wait_received(received: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
    for _ in 0..400 {
        if received.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    received.lock().unwrap().clone()
}

#[tokio::test]
async fn deleted_spans_are_never_exported_and_the_exporters_cursor_moves_on() {
    let mock = Mock::start(Duration::ZERO).await;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (upstream, received) = collector(down.clone()).await;
    let export = format!(
        "[export]\notlp_endpoint = \"http://{}/v1/traces\"\notlp_protocol = \"json\"\ncompression = \"none\"\n",
        upstream.addr
    );
    let proxy = Proxy::start(&config(&mock, &export)).await;
    let mut delivered = Vec::new();
    for i in 0..3 {
        let trace = call(&proxy, "alpha", "ann", &format!("early {i}")).await;
        delivered.extend(span_ids(&proxy, &trace).await);
    }
    assert_eq!(wait_received(&received, 3).await, delivered);
    // Delivered spans deleted: nothing is sent again.
    assert_eq!(admin_call(&proxy, "DELETE", "/api/spans?team=alpha", None).await.1["deleted"], 3);

    // While the collector is down, three calls of which two are deleted once the exporter has
    // read them and failed to send them: its retry leaves them out.
    let attempts = upstream.requests().len();
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut kept = Vec::new();
    for (i, team) in ["gone", "kept", "gone"].iter().enumerate() {
        let trace = call(&proxy, team, "bob", &format!("late {i}")).await;
        if *team == "kept" {
            kept.extend(span_ids(&proxy, &trace).await);
        }
    }
    for _ in 0..400 {
        if upstream.requests().len() > attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(upstream.requests().len() > attempts, "the exporter tried while the collector was down");
    assert_eq!(admin_call(&proxy, "DELETE", "/api/spans?team=gone", None).await.1["deleted"], 2);
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let trace = call(&proxy, "kept", "bob", "after").await;
    kept.extend(span_ids(&proxy, &trace).await);
    let all = wait_received(&received, 5).await;
    assert_eq!(all[..3], delivered[..]);
    let late: HashSet<&String> = all[3..].iter().collect();
    assert_eq!(late, kept.iter().collect::<HashSet<_>>(), "only the kept calls, each once");
    assert_eq!(all.len(), 5);
}

#[tokio::test]
async fn the_cli_filters_traces_exports_and_deletes_through_the_admin_api() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    for i in 0..6 {
        let team = if i < 4 { "alpha" } else { "beta" };
        call(&proxy, team, if i % 2 == 0 { "ann" } else { "bob" }, &format!("cli topic {i}")).await;
    }
    proxy.server().flush().await;
    let target = tracegate::cli::AdminTarget { url: Some(proxy.admin_url("")), config: None };
    let filters = |team: Option<&str>, search: Option<&str>| tracegate::cli::Filters {
        team: team.map(String::from),
        search: search.map(String::from),
        since: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let listed = tracegate::cli::traces(10, &filters(Some("alpha"), None), &target).await.unwrap();
    assert_eq!(listed.lines().count(), 1 + 4, "{listed}");
    let listed = tracegate::cli::traces(10, &filters(None, Some("CLI topic 5")), &target).await.unwrap();
    assert_eq!(listed.lines().count(), 1 + 1, "{listed}");
    let none = tracegate::cli::traces(10, &filters(Some("nobody"), None), &target).await.unwrap();
    assert_eq!(none, "no traces match these filters\n");

    let mut out = Vec::new();
    tracegate::cli::export(&filters(Some("beta"), None), &target, &mut out).await.unwrap();
    let lines: Vec<Value> =
        out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(
        lines.iter().map(topic_of).collect::<Vec<_>>(),
        ["Tell me about cli topic 5", "Tell me about cli topic 4"]
    );

    let user_bob = tracegate::cli::Filters { user: Some("bob".into()), ..Default::default() };
    let said = tracegate::cli::delete(&user_bob, None, true, &target).await.unwrap();
    assert_eq!(said, "would delete 3 spans\n");
    assert_eq!(tracegate::cli::delete(&user_bob, None, false, &target).await.unwrap(), "deleted 3 spans\n");
    let error = tracegate::cli::delete(&Default::default(), None, false, &target).await.unwrap_err();
    assert!(error.contains("--trace"), "{error}");
    let error = tracegate::cli::delete(&Default::default(), Some("xyz"), false, &target).await.unwrap_err();
    assert!(error.contains("32 hex digits"), "{error}");

    // The real binary: export to stdout as it arrives, delete with a count, flags refused.
    let admin_url = proxy.admin_url("");
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tracegate")).args(&args).output().unwrap()
        })
    };
    let args = |list: &[&str]| -> Vec<String> {
        list.iter().map(|s| s.to_string()).chain(["--admin".to_string(), admin_url.clone()]).collect()
    };
    let out = run(args(&["export", "--team", "alpha", "--status", "ok"])).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(
        exported.iter().map(topic_of).collect::<Vec<_>>(),
        ["Tell me about cli topic 2", "Tell me about cli topic 0"]
    );
    let trace = exported[0]["trace_id"].as_str().unwrap().to_string();
    let out = run(args(&["delete", "--trace", &trace, "--dry-run"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "would delete 1 span\n");
    let out = run(args(&["delete", "--team", "alpha", "--since", "2d"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deleted 2 spans\n");
    let out = run(args(&["traces", "--team", "beta", "--search", "topic", "--limit", "5"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1 + 1, "only ann's beta call is left");
    let out = run(args(&["delete"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run(args(&["delete", "--trace", &trace, "--team", "alpha"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "--trace and filters conflict");
    let out = run(args(&["traces", "--since", "yesterday"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30m, 1h, 2d"));
}
