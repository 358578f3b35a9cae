//! Recording: every call becomes a span with the provider's reported usage, the right status
//! (ok, error, cancelled), its bodies, and it is still there after a restart.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::support::*;

async fn setup(chunk_delay: Duration) -> (Mock, Proxy) {
    let mock = Mock::start(chunk_delay).await;
    let providers = format!(
        "{}{}",
        provider("openai", "/openai", mock.addr, "openai"),
        provider("anthropic", "/anthropic", mock.addr, "anthropic")
    );
    let proxy = Proxy::start(&providers).await;
    (mock, proxy)
}

/// The usage object of the last SSE event that has one.
fn streamed_usage(body: &[u8]) -> Value {
    let text = std::str::from_utf8(body).unwrap();
    let mut usage = Value::Null;
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                for candidate in [&v["usage"], &v["message"]["usage"], &v["response"]["usage"]] {
                    if candidate.is_object() {
                        usage = candidate.clone();
                    }
                }
            }
        }
    }
    usage
}

async fn one_span(proxy: &Proxy, headers: &http::HeaderMap) -> Value {
    let spans = proxy.spans(header(headers, "x-tracegate-trace-id")).await;
    assert_eq!(spans.len(), 1);
    spans[0].clone()
}

#[tokio::test]
async fn reported_usage_is_recorded_exactly_for_every_wire_format() {
    let (_mock, proxy) = setup(Duration::ZERO).await;

    // OpenAI chat, not streamed.
    let (_, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let reply: Value = serde_json::from_slice(&body).unwrap();
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["input_tokens"], reply["usage"]["prompt_tokens"]);
    assert_eq!(span["output_tokens"], reply["usage"]["completion_tokens"]);
    assert_eq!(span["usage_source"], "reported");
    assert_eq!(span["name"], "chat gpt-4o-mini");
    assert_eq!(span["operation"], "chat");
    assert_eq!(span["kind"], "llm");
    assert_eq!(span["provider"], "openai");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["path"], "/v1/chat/completions");
    assert_eq!(span["status_code"], 200);
    assert_eq!(span["response_model"], "gpt-4o-mini");
    assert_eq!(span["stream"], false);
    assert!(span["ttft_ms"].is_null(), "no time to first token without a stream");
    assert!(span["duration_ms"].as_f64().unwrap() > 0.0);
    // No [pricing] in this config: the built-in catalog prices gpt-4o-mini (0.15 / 0.60 per Mtok).
    let expected = (reply["usage"]["prompt_tokens"].as_f64().unwrap() * 0.15
        + reply["usage"]["completion_tokens"].as_f64().unwrap() * 0.60)
        / 1e6;
    assert!((span["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{span}");

    // OpenAI chat streamed with include_usage: the final usage chunk.
    let (_, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT_STREAM_USAGE).await;
    let usage = streamed_usage(&body);
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["input_tokens"], usage["prompt_tokens"]);
    assert_eq!(span["output_tokens"], usage["completion_tokens"]);
    assert_eq!(span["usage_source"], "reported");
    assert_eq!(span["stream"], true);
    assert_eq!(span["finish_reason"], "stop");
    let ttft = span["ttft_ms"].as_f64().expect("stream has ttft");
    assert!(ttft <= span["duration_ms"].as_f64().unwrap());

    // OpenAI chat streamed without include_usage: the provider reported nothing, tracegate counts.
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT_STREAM).await;
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["usage_source"], "estimated");

    // Embeddings and the Responses API (plain and streamed).
    let (_, headers, body) =
        post(&proxy.url("/openai/v1/embeddings"), &[], r#"{"model":"text-embedding-3-small","input":["a b c","d e"]}"#)
            .await;
    let reply: Value = serde_json::from_slice(&body).unwrap();
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["operation"], "embeddings");
    assert_eq!(span["input_tokens"], reply["usage"]["prompt_tokens"]);
    assert_eq!(span["output_tokens"], 0);
    for stream in [false, true] {
        let request = format!(r#"{{"model":"gpt-4.1-mini","input":"Say hello","stream":{stream}}}"#);
        let (_, headers, body) = post(&proxy.url("/openai/v1/responses"), &[], &request).await;
        let usage = if stream {
            streamed_usage(&body)
        } else {
            serde_json::from_slice::<Value>(&body).unwrap()["usage"].clone()
        };
        let span = one_span(&proxy, &headers).await;
        assert_eq!(span["input_tokens"], usage["input_tokens"], "responses stream={stream}");
        assert_eq!(span["output_tokens"], usage["output_tokens"], "responses stream={stream}");
        assert_eq!(span["stream"], stream);
    }

    // Anthropic messages, plain and streamed (message_start + message_delta).
    let (_, headers, body) = post(&proxy.url("/anthropic/v1/messages"), &[], MESSAGES).await;
    let reply: Value = serde_json::from_slice(&body).unwrap();
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["input_tokens"], reply["usage"]["input_tokens"]);
    assert_eq!(span["output_tokens"], reply["usage"]["output_tokens"]);
    assert_eq!(span["finish_reason"], "end_turn");
    let (_, headers, body) = post(&proxy.url("/anthropic/v1/messages"), &[], MESSAGES_STREAM).await;
    let text = String::from_utf8_lossy(&body).to_string();
    let span = one_span(&proxy, &headers).await;
    let final_output = streamed_usage(&body)["output_tokens"].clone();
    assert!(text.contains("message_delta"));
    assert_eq!(span["output_tokens"], final_output);
    assert_eq!(span["input_tokens"], reply["usage"]["input_tokens"], "same prompt, same input tokens");
    assert_eq!(span["usage_source"], "reported");
    assert_eq!(span["stream"], true);
    assert!(span["ttft_ms"].as_f64().is_some());
}

#[tokio::test]
async fn cost_is_tokens_times_the_configured_price() {
    let mock = Mock::start(Duration::ZERO).await;
    let config = format!(
        "{}[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n",
        provider("openai", "/openai", mock.addr, "openai")
    );
    let proxy = Proxy::start(&config).await;
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let span = one_span(&proxy, &headers).await;
    let expected = span["input_tokens"].as_f64().unwrap() * 0.15e-6 + span["output_tokens"].as_f64().unwrap() * 0.60e-6;
    assert!((span["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
}

#[tokio::test]
async fn upstream_errors_are_relayed_unchanged_and_recorded_as_errors() {
    let (_mock, proxy) = setup(Duration::ZERO).await;
    let (status, headers, body) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("x-mock-status", "429")], CHAT).await;
    assert_eq!(status, 429);
    let relayed: Value = serde_json::from_slice(&body).unwrap();
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["status"], "error");
    assert_eq!(span["status_code"], 429);
    assert_eq!(span["error"], relayed["error"]["message"]);
    assert_eq!(span["usage_source"], "missing");

    let (_, errors) = proxy.admin_get("/api/traces?status=error").await;
    let listed = errors["traces"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["trace_id"], header(&headers, "x-tracegate-trace-id"));
}

#[tokio::test]
async fn attribution_properties_and_bodies_are_recorded() {
    let (_mock, proxy) = setup(Duration::ZERO).await;
    let (_, headers, body) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[
            ("x-tracegate-team", "search"),
            ("x-tracegate-user", "ada"),
            ("x-tracegate-property-env", "prod"),
            ("authorization", "Bearer sk-secret-123"),
        ],
        CHAT,
    )
    .await;
    let span = one_span(&proxy, &headers).await;
    assert_eq!(span["team"], "search");
    assert_eq!(span["user"], "ada");
    assert_eq!(span["properties"]["env"], "prod");

    let trace_id = header(&headers, "x-tracegate-trace-id");
    let span_id = header(&headers, "x-tracegate-span-id");
    let (status, detail) = proxy.admin_get(&format!("/api/traces/{trace_id}/spans/{span_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["request_body"], serde_json::from_str::<Value>(CHAT).unwrap());
    assert_eq!(detail["response_body"], serde_json::from_slice::<Value>(&body).unwrap());
    assert!(!detail.to_string().contains("sk-secret-123"), "credentials are never stored");

    // A credential inside the body itself is redacted before it is stored.
    let with_key = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"user_api_key":"ok","api_key":"sk-in-body-777"}"#;
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], with_key).await;
    let (trace_id, span_id) = (header(&headers, "x-tracegate-trace-id"), header(&headers, "x-tracegate-span-id"));
    let (_, detail) = proxy.admin_get(&format!("/api/traces/{trace_id}/spans/{span_id}")).await;
    assert_eq!(detail["request_body"]["api_key"], "[redacted]");
    assert_eq!(detail["request_body"]["model"], "gpt-4o-mini");
    proxy.server().flush().await;
    for file in walk(proxy.store_dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(14).any(|w| w == b"sk-in-body-777"), "{}", file.display());
        assert!(!bytes.windows(13).any(|w| w == b"sk-secret-123"), "{}", file.display());
    }

    // Omitted bodies: the span is kept, its bodies are not.
    let (_, headers, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-omit-bodies", "true")], CHAT).await;
    let (trace_id, span_id) = (header(&headers, "x-tracegate-trace-id"), header(&headers, "x-tracegate-span-id"));
    let (_, detail) = proxy.admin_get(&format!("/api/traces/{trace_id}/spans/{span_id}")).await;
    assert_eq!(detail["span_id"], span_id);
    assert!(detail["request_body"].is_null() && detail["response_body"].is_null());

    let (_, by_team) = proxy.admin_get("/api/traces?team=search").await;
    assert_eq!(by_team["traces"].as_array().unwrap().len(), 1);
    assert_eq!(by_team["traces"][0]["teams"], serde_json::json!(["search"]));
    let (status, _) = proxy.admin_get("/api/traces/0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn client_disconnect_mid_stream_records_a_cancelled_span() {
    let (_mock, proxy) = setup(Duration::from_millis(10)).await;
    let (trace_id, _, body) =
        open_stream(&proxy.url("/openai/v1/chat/completions"), &[("x-mock-chunks", "1000")]).await;
    drop(body); // the client hangs up after the first chunk of a 10 s stream

    let spans = proxy.wait_spans(&trace_id, 1).await;
    assert_eq!(spans[0]["status"], "cancelled");
    assert_eq!(spans[0]["stream"], true);
    assert!(
        spans[0]["duration_ms"].as_f64().unwrap() < 10_000.0,
        "recorded when the client left, not when the stream would have ended"
    );
}

#[tokio::test]
async fn restart_on_the_same_store_keeps_every_trace() {
    let mock = Mock::start(Duration::ZERO).await;
    let providers = provider("openai", "/openai", mock.addr, "openai");
    let proxy = Proxy::start(&providers).await;
    let mut traces = Vec::new();
    for i in 0..20 {
        let session = format!("s{}", i % 5);
        let (_, headers, _) =
            post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-session", &session)], CHAT).await;
        traces.push(header(&headers, "x-tracegate-trace-id").to_string());
    }
    let (_, before) = proxy.admin_get("/api/traces?limit=100").await;
    let store_dir = proxy.shutdown().await;

    let proxy = Proxy::start_in(store_dir, &providers).await;
    let (_, after) = proxy.admin_get("/api/traces?limit=100").await;
    assert_eq!(after["traces"].as_array().unwrap().len(), 5);
    assert_eq!(before, after, "the listing is identical after a restart");
    for trace_id in &traces[..5] {
        assert_eq!(proxy.spans(trace_id).await.len(), 4);
    }
    // New calls after the restart join the old traces.
    post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-session", "s0")], CHAT).await;
    assert_eq!(proxy.spans(&traces[0]).await.len(), 5);
}

#[tokio::test]
async fn metrics_count_recorded_spans_and_no_drops() {
    let (_mock, proxy) = setup(Duration::ZERO).await;
    for _ in 0..7 {
        post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    }
    proxy.server().flush().await;
    let resp = send(Request::get(proxy.admin_url("/metrics")).body(Full::new(Bytes::new())).unwrap()).await;
    let text = String::from_utf8(http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes().to_vec())
        .unwrap();
    assert!(text.contains("tracegate_spans_recorded_total 7"), "{text}");
    assert!(text.contains("tracegate_spans_dropped_total 0"), "{text}");
    assert!(
        text.contains("tracegate_requests_total{provider=\"openai\",model=\"gpt-4o-mini\",team=\"\",status=\"ok\"} 7"),
        "{text}"
    );
    for name in [
        "tracegate_request_duration_seconds_bucket",
        "tracegate_tokens_total",
        "tracegate_ttft_seconds",
        "tracegate_cost_usd_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn shutdown_closes_streams_still_open_after_the_grace_period_and_records_them() {
    let mock = Mock::start(Duration::from_millis(10)).await;
    let providers = provider("openai", "/openai", mock.addr, "openai");
    let mut proxy = Proxy::start(&providers).await;
    let (trace_id, _, body) =
        open_stream(&proxy.url("/openai/v1/chat/completions"), &[("x-mock-chunks", "100000")]).await;

    let server = proxy.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown_within(Duration::from_millis(300)))
        .await
        .expect("shutdown finishes even with a stream open");
    let proxy = Proxy::start_in(proxy.store_dir.clone(), &providers).await;
    let spans = proxy.spans(&trace_id).await;
    assert_eq!(spans.len(), 1, "the open call was written before the store closed");
    assert_eq!(spans[0]["status"], "cancelled");
    drop(body);
}

#[tokio::test]
async fn retention_deletes_spans_older_than_retention_days_at_start() {
    let mock = Mock::start(Duration::ZERO).await;
    let config = provider("openai", "/openai", mock.addr, "openai");
    let proxy = Proxy::start(&config).await;
    // An app span from 40 days ago (OTLP ingest keeps its timestamps) and a call from now.
    let old_trace = "9bf92f3577b34da6a3ce929d0e0e4736";
    let forty_days_ago = tracegate::model::clock::unix_nanos() - 40 * 86_400 * 1_000_000_000;
    let ingest = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": old_trace,
        "spanId": "4444444444444444", "name": "old step", "kind": 1,
        "startTimeUnixNano": forty_days_ago.to_string(), "endTimeUnixNano": (forty_days_ago + 1_000_000).to_string()}]}]}]});
    post(&proxy.admin_url("/v1/traces"), &[], &ingest.to_string()).await;
    // (Written before the next call: retention works on whole written batches.)
    assert_eq!(proxy.spans(old_trace).await.len(), 1);
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let new_trace = header(&headers, "x-tracegate-trace-id").to_string();
    let dir = proxy.shutdown().await;

    // storage.retention_days defaults to 30: the restart applies it.
    let proxy = Proxy::start_in(dir, &config).await;
    proxy.server().flush().await;
    assert!(proxy.spans(old_trace).await.is_empty(), "the 40-day-old span is gone");
    assert_eq!(proxy.spans(&new_trace).await.len(), 1, "today's span is kept");
}

#[tokio::test]
async fn calls_are_found_by_user_session_property_and_words_of_their_bodies() {
    let (_mock, proxy) = setup(Duration::ZERO).await;
    let chat =
        |content: &str| format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{content}"}}]}}"#);
    let url = proxy.url("/openai/v1/chat/completions");
    let mut traces = Vec::new();
    for i in 0..6 {
        let (session, user) = (format!("chat-{}", i % 2), format!("u{}", i % 3));
        let env = if i == 4 { "prod" } else { "dev" };
        let content =
            if i == 3 { "Tell me about the Quantum Marmalade, please".to_string() } else { format!("call {i}") };
        let headers = [
            ("x-tracegate-session", session.as_str()),
            ("x-tracegate-user", user.as_str()),
            ("x-tracegate-team", "search"),
            ("x-tracegate-property-env", env),
        ];
        let (status, headers, _) = post(&url, &headers, &chat(&content)).await;
        assert_eq!(status, 200);
        traces.push(header(&headers, "x-tracegate-trace-id").to_string());
    }
    // A session without trace context is one trace.
    proxy.wait_spans(&traces[0], 3).await;
    proxy.wait_spans(&traces[1], 3).await;

    let (_, found) = proxy.admin_get("/api/traces?q=quantum%20marmalade").await;
    assert_eq!(found["traces"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["traces"][0]["sessions"], serde_json::json!(["chat-1"]));
    let (_, none) = proxy.admin_get("/api/traces?q=marmal").await;
    assert!(none["traces"].as_array().unwrap().is_empty(), "whole words: {none}");
    let (_, prod) = proxy.admin_get("/api/traces?property.env=prod&user=u1").await;
    assert_eq!(prod["traces"][0]["users"].as_array().unwrap().len(), 3, "{prod}");

    let (status, sessions) = proxy.admin_get("/api/sessions?team=search&limit=1").await;
    assert_eq!(status, 200);
    let first = &sessions["sessions"][0];
    assert_eq!((first["session"].as_str(), first["span_count"].as_u64()), (Some("chat-1"), Some(3)), "{sessions}");
    assert_eq!((first["team"].as_str(), first["errors"].as_u64()), (Some("search"), Some(0)));
    assert!(first["input_tokens"].as_u64().unwrap() > 0 && first["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(first["first_time_unix_nano"].as_u64() <= first["last_time_unix_nano"].as_u64());
    let cursor = sessions["next_cursor"].as_str().expect("a second page").to_string();
    let (_, rest) = proxy.admin_get(&format!("/api/sessions?team=search&limit=1&cursor={cursor}")).await;
    assert_eq!(rest["sessions"][0]["session"], "chat-0");
    assert!(rest["next_cursor"].is_null());
    let (status, bad) = proxy.admin_get("/api/sessions?cursor=zz").await;
    assert_eq!(status, 400, "{bad}");

    // One user's usage, without every other user's rows.
    let (_, usage) = proxy.admin_get("/api/usage?user=u1&group_by=user,model").await;
    let rows = usage["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!((rows[0]["user"].as_str(), rows[0]["requests"].as_u64()), (Some("u1"), Some(2)));
}
