//! Teams: attribution (team key, headers, nobody), provider key injection, the usage ledger
//! (equal to the spans, kept across restarts), budgets and rate limits under concurrency.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const TEAMS: &str = r#"
[[teams]]
name = "search"
keys = ["tk-search-0001"]

[[teams]]
name = "ads"
keys = ["tk-ads-0001"]
"#;

fn providers_with_keys(mock: &Mock) -> String {
    format!(
        "{}api_key = \"sk-provider-openai\"\n{}api_key = \"sk-ant-provider\"\n",
        provider("openai", "/openai", mock.addr, "openai"),
        provider("anthropic", "/anthropic", mock.addr, "anthropic")
    )
}

/// A call of a mixed run: path, headers, body.
type Call<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

async fn span_of(proxy: &Proxy, headers: &http::HeaderMap) -> Value {
    proxy.spans(header(headers, "x-tracegate-trace-id")).await.remove(0)
}

#[tokio::test]
async fn attribution_by_key_by_header_and_unattributed_with_provider_key_injection() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&format!("{}{TEAMS}", providers_with_keys(&mock))).await;

    // A team key as Bearer: the team is known, the provider gets its own key, never the team's.
    let (status, headers, _) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[("authorization", "Bearer tk-search-0001"), ("x-tracegate-user", "ada")],
        CHAT,
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream_saw(&headers);
    assert_eq!(seen["authorization"], "Bearer sk-provider-openai");
    assert!(!seen.to_string().contains("tk-search"), "the team key went upstream: {seen}");
    let span = span_of(&proxy, &headers).await;
    assert_eq!((span["team"].as_str(), span["user"].as_str()), (Some("search"), Some("ada")));
    let fingerprint = span["key_fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("sha256:") && !fingerprint.contains("tk-"));

    // A team key as x-api-key on an Anthropic route: Anthropic's header carries the provider key.
    let (_, headers, _) = post(&proxy.url("/anthropic/v1/messages"), &[("x-api-key", "tk-ads-0001")], MESSAGES).await;
    assert_eq!(upstream_saw(&headers)["x-api-key"], "sk-ant-provider");
    assert_eq!(span_of(&proxy, &headers).await["team"], "ads");

    // No team key: the caller's own provider key passes through, the header names the team.
    let (_, headers, _) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[("authorization", "Bearer sk-callers-own"), ("x-tracegate-team", "research")],
        CHAT,
    )
    .await;
    assert_eq!(upstream_saw(&headers)["authorization"], "Bearer sk-callers-own");
    let span = span_of(&proxy, &headers).await;
    assert_eq!(span["team"], "research");
    assert!(span["key_fingerprint"].is_null());

    // Nobody said who: unattributed.
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let span = span_of(&proxy, &headers).await;
    assert!(span["team"].is_null() && span["user"].is_null());

    // The store never holds a team key.
    proxy.server().flush().await;
    let store_dir = proxy.store_dir.path().to_path_buf();
    for entry in walk(&store_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, b"tk-search-0001") && !contains(&bytes, b"tk-ads-0001"), "{}", entry.display());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn require_team_key_refuses_calls_without_one_and_records_them() {
    let mock = Mock::start(Duration::ZERO).await;
    let dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let proxy =
        Proxy::start_with_server(dir, "require_team_key = true\n", &format!("{}{TEAMS}", providers_with_keys(&mock)))
            .await;

    for headers in [vec![], vec![("authorization", "Bearer sk-not-a-team-key")], vec![("x-tracegate-team", "search")]] {
        let (status, response_headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &headers, CHAT).await;
        assert_eq!(status, 401, "{headers:?}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["type"], "authentication_error");
        let span = span_of(&proxy, &response_headers).await;
        assert_eq!((span["status"].as_str(), span["status_code"].as_u64()), (Some("error"), Some(401)));
    }
    let (status, _, body) = post(&proxy.url("/anthropic/v1/messages"), &[], MESSAGES).await;
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["type"], "authentication_error");
    let (status, _, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("authorization", "Bearer tk-search-0001")], CHAT).await;
    assert_eq!(status, 200);
}

/// Sums spans by (team, user, provider, model).
fn sums_from_spans(spans: &[Value]) -> std::collections::BTreeMap<String, (u64, u64, u64, f64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for s in spans {
        let model = s["response_model"].as_str().or(s["request_model"].as_str()).unwrap_or("");
        let key = format!(
            "{}|{}|{}|{}",
            s["team"].as_str().unwrap_or(""),
            s["user"].as_str().unwrap_or(""),
            s["provider"].as_str().unwrap_or(""),
            model
        );
        let e = out.entry(key).or_insert((0, 0, 0, 0.0, 0));
        e.0 += 1;
        e.1 += s["input_tokens"].as_u64().unwrap_or(0);
        e.2 += s["output_tokens"].as_u64().unwrap_or(0);
        e.3 += s["cost_usd"].as_f64().unwrap_or(0.0);
        e.4 += u64::from(s["status"] == "error");
    }
    out
}

fn sums_from_usage(usage: &Value) -> std::collections::BTreeMap<String, (u64, u64, u64, f64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for r in usage["rows"].as_array().unwrap() {
        let key = format!(
            "{}|{}|{}|{}",
            r["team"].as_str().unwrap_or(""),
            r["user"].as_str().unwrap_or(""),
            r["provider"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or("")
        );
        let e = out.entry(key).or_insert((0, 0, 0, 0.0, 0));
        e.0 += r["requests"].as_u64().unwrap();
        e.1 += r["input_tokens"].as_u64().unwrap();
        e.2 += r["output_tokens"].as_u64().unwrap();
        e.3 += r["cost_usd"].as_f64().unwrap();
        e.4 += r["errors"].as_u64().unwrap();
    }
    out
}

async fn all_spans(proxy: &Proxy) -> Vec<Value> {
    let (_, list) = proxy.admin_get("/api/traces?limit=1000").await;
    let mut spans = Vec::new();
    for t in list["traces"].as_array().unwrap() {
        spans.extend(proxy.spans(t["trace_id"].as_str().unwrap()).await);
    }
    spans
}

#[tokio::test]
async fn the_ledger_equals_the_sum_of_spans_and_survives_a_restart() {
    let mock = Mock::start(Duration::ZERO).await;
    let config = format!(
        "{}{TEAMS}[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n[pricing.\"claude-3-5-haiku\"]\ninput_per_mtok = 0.8\noutput_per_mtok = 4.0\n",
        providers_with_keys(&mock)
    );
    let proxy = Proxy::start(&config).await;
    let calls: Vec<Call> = vec![
        (
            "/openai/v1/chat/completions",
            vec![("authorization", "Bearer tk-search-0001"), ("x-tracegate-user", "ada")],
            CHAT,
        ),
        ("/openai/v1/chat/completions", vec![("authorization", "Bearer tk-search-0001")], CHAT_STREAM_USAGE),
        ("/openai/v1/chat/completions", vec![("authorization", "Bearer tk-search-0001")], CHAT_STREAM),
        ("/openai/v1/chat/completions", vec![("authorization", "Bearer tk-ads-0001"), ("x-mock-status", "500")], CHAT),
        ("/anthropic/v1/messages", vec![("x-api-key", "tk-ads-0001")], MESSAGES_STREAM),
        (
            "/openai/v1/embeddings",
            vec![("x-tracegate-team", "research")],
            r#"{"model":"text-embedding-3-small","input":"a b"}"#,
        ),
        ("/openai/v1/chat/completions", vec![], CHAT),
    ];
    for round in 0..3 {
        for (path, headers, body) in &calls {
            let (status, _, _) = post(&proxy.url(path), headers, body).await;
            assert!(status == 200 || status == 500, "round {round} {path}: {status}");
        }
    }
    let spans = all_spans(&proxy).await;
    assert_eq!(spans.len(), 21);
    let (status, usage) = proxy.admin_get("/api/usage?group_by=team,user,provider,model").await;
    assert_eq!(status, 200);
    let expected = sums_from_spans(&spans);
    let got = sums_from_usage(&usage);
    assert_eq!(expected.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (k, e) in &expected {
        let g = &got[k];
        assert_eq!((e.0, e.1, e.2, e.4), (g.0, g.1, g.2, g.4), "{k}");
        assert!((e.3 - g.3).abs() < 1e-12, "{k}: cost {} vs {}", e.3, g.3);
    }
    assert_eq!(usage["totals"]["requests"], 21);
    assert_eq!(usage["totals"]["errors"], 3);

    // The CLI prints the same report.
    let target = tracegate::cli::AdminTarget { url: Some(proxy.admin_url("")), config: None };
    let mut query = tracegate::cli::UsageQuery { by: vec!["team".into()], ..Default::default() };
    let table = tracegate::cli::usage(&query, &target).await.unwrap();
    assert!(table.contains("search") && table.contains("TOTAL"), "{table}");
    query.csv = true;
    let csv = tracegate::cli::usage(&query, &target).await.unwrap();
    assert!(csv.starts_with("team,requests,input_tokens,output_tokens,cost_usd,errors\n"), "{csv}");

    let dir = proxy.shutdown().await;
    let proxy = Proxy::start_in(dir, &config).await;
    let (_, after) = proxy.admin_get("/api/usage?group_by=team,user,provider,model").await;
    assert_eq!(after, usage, "the ledger is the same after a restart");
    let (status, _) = proxy.admin_get("/api/usage?from=2026-13-01").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_cannot_overshoot_a_small_budget() {
    let mock = Mock::start(Duration::from_millis(20)).await;
    // $1000 per million tokens: each call costs a few cents; the budget holds a handful.
    let teams = "[[teams]]\nname = \"search\"\nkeys = [\"tk-search-0001\"]\ndaily_budget_usd = 0.5\n";
    let pricing = "[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0\n";
    let config = format!("{}{teams}{pricing}", providers_with_keys(&mock));
    let proxy = std::sync::Arc::new(Proxy::start(&config).await);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":12,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let proxy = proxy.clone();
        calls.push(tokio::spawn(async move {
            post(&proxy.url("/openai/v1/chat/completions"), &[("authorization", "Bearer tk-search-0001")], body).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        let (status, headers, body) = call.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert!(header(&headers, "retry-after").parse::<u64>().unwrap() > 0);
                assert!(!header(&headers, "x-tracegate-budget-remaining-usd").is_empty());
                let error: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(error["error"]["type"], "rate_limit_error");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 3, "the budget admits calls: {ok}");
    assert!(refused >= 1, "the budget refuses calls: {refused}");
    let (_, usage) = proxy.admin_get("/api/usage?group_by=team").await;
    let spent =
        usage["rows"].as_array().unwrap().iter().find(|r| r["team"] == "search").unwrap()["cost_usd"].as_f64().unwrap();
    // Every admitted call reserved more than it cost, so even with all 50 in flight at once
    // the spend stays within the budget.
    assert!(spent <= 0.5 + 1e-9, "spent {spent} of 0.5");
    assert_eq!(usage["totals"]["requests"], 50, "refused calls are recorded too");
    assert_eq!(usage["totals"]["errors"].as_u64().unwrap(), refused);
}

#[tokio::test]
async fn requests_per_minute_limit_answers_429_with_retry_after() {
    let mock = Mock::start(Duration::ZERO).await;
    let teams = "[[teams]]\nname = \"search\"\nkeys = [\"tk-search-0001\"]\nrequests_per_minute = 3\ntokens_per_minute = 100000\n";
    let proxy = Proxy::start(&format!("{}{teams}", providers_with_keys(&mock))).await;
    let key = [("authorization", "Bearer tk-search-0001")];
    for expected_remaining in ["2", "1", "0"] {
        let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &key, CHAT).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-tracegate-ratelimit-remaining-requests"), expected_remaining);
        assert_eq!(header(&headers, "x-tracegate-ratelimit-limit-requests"), "3");
    }
    let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &key, CHAT).await;
    assert_eq!(status, 429);
    let retry: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
    let (status, _, body) =
        post(&proxy.url("/anthropic/v1/messages"), &[("x-api-key", "tk-search-0001")], MESSAGES).await;
    assert_eq!(status, 429);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_spent_daily_budget_stays_spent_after_a_restart() {
    let mock = Mock::start(Duration::ZERO).await;
    let teams = "[[teams]]\nname = \"search\"\nkeys = [\"tk-search-0001\"]\ndaily_budget_usd = 0.05\n";
    let pricing = "[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0\n";
    let config = format!("{}{teams}{pricing}", providers_with_keys(&mock));
    let proxy = Proxy::start(&config).await;
    let key = [("authorization", "Bearer tk-search-0001")];
    let body = r#"{"model":"gpt-4o-mini","max_tokens":12,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&proxy.url("/openai/v1/chat/completions"), &key, body).await.0);
    }
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    let dir = proxy.shutdown().await;
    let proxy = Proxy::start_in(dir, &config).await;
    let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &key, body).await;
    assert_eq!(status, 429, "what was spent before the restart still counts");
}
