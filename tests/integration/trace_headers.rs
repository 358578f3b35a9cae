//! Trace context: calls join the caller's trace (W3C, B3, session header), the upstream sees
//! the proxy span as the parent, and invalid context starts a new trace.

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn setup() -> (Mock, Proxy) {
    let mock = Mock::start(std::time::Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    (mock, proxy)
}

#[tokio::test]
async fn traceparent_joins_the_callers_trace_and_upstream_sees_the_proxy_span_as_parent() {
    let (_mock, proxy) = setup().await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut span_ids = Vec::new();
    for _ in 0..2 {
        let (status, headers, _) = post(
            &proxy.url("/openai/v1/chat/completions"),
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc,other=1")],
            CHAT,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-tracegate-trace-id"), TRACE);
        let span_id = header(&headers, "x-tracegate-span-id").to_string();
        let seen = upstream_saw(&headers);
        assert_eq!(seen["traceparent"], format!("00-{TRACE}-{span_id}-01"), "upstream's parent is the proxy span");
        assert_eq!(seen["tracestate"], "vendor=abc,other=1");
        span_ids.push(span_id);
    }
    let spans = proxy.spans(TRACE).await;
    assert_eq!(spans.len(), 2);
    for span in &spans {
        assert_eq!(span["parent_span_id"], CALLER_SPAN);
        assert!(span_ids.contains(&span["span_id"].as_str().unwrap().to_string()));
    }
}

#[tokio::test]
async fn unsampled_flag_is_passed_on() {
    let (_mock, proxy) = setup().await;
    let (_, headers, _) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-00"))],
        CHAT,
    )
    .await;
    let seen = upstream_saw(&headers);
    assert!(seen["traceparent"].as_str().unwrap().ends_with("-00"));
}

#[tokio::test]
async fn b3_single_and_multi_headers_join_the_trace() {
    let (_mock, proxy) = setup().await;
    let (_, headers, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("b3", &format!("{TRACE}-{CALLER_SPAN}-1"))], CHAT).await;
    assert_eq!(header(&headers, "x-tracegate-trace-id"), TRACE);
    let span_id = header(&headers, "x-tracegate-span-id").to_string();
    let seen = upstream_saw(&headers);
    assert_eq!(seen["traceparent"], format!("00-{TRACE}-{span_id}-01"));
    assert_eq!(seen["b3"], format!("{TRACE}-{span_id}-1"), "a B3 caller's upstream gets B3 too");

    // 64-bit B3 trace ids are left-padded to 128 bits.
    let (_, headers, _) = post(
        &proxy.url("/openai/v1/chat/completions"),
        &[("X-B3-TraceId", "a3ce929d0e0e4736"), ("X-B3-SpanId", CALLER_SPAN), ("X-B3-Sampled", "1")],
        CHAT,
    )
    .await;
    let padded = "0000000000000000a3ce929d0e0e4736";
    assert_eq!(header(&headers, "x-tracegate-trace-id"), padded);
    let seen = upstream_saw(&headers);
    assert!(seen.get("x-b3-traceid").is_none(), "the caller's B3 ids are replaced, not forwarded");
    let spans = proxy.spans(padded).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["parent_span_id"], CALLER_SPAN);
}

#[tokio::test]
async fn session_header_groups_calls_without_trace_context() {
    let (_mock, proxy) = setup().await;
    let mut traces = Vec::new();
    for session in ["chat-42", "chat-42", "chat-43"] {
        let (_, headers, _) =
            post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-session", session)], CHAT).await;
        assert!(upstream_saw(&headers).get("x-tracegate-session").is_none());
        traces.push(header(&headers, "x-tracegate-trace-id").to_string());
    }
    assert_eq!(traces[0], traces[1]);
    assert_ne!(traces[0], traces[2]);
    let spans = proxy.spans(&traces[0]).await;
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s["session"] == "chat-42" && s["parent_span_id"].is_null()));

    // Without any context every call is its own trace.
    let (_, a, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let (_, b, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_ne!(header(&a, "x-tracegate-trace-id"), header(&b, "x-tracegate-trace-id"));
}

#[tokio::test]
async fn invalid_traceparent_starts_a_new_trace() {
    let (_mock, proxy) = setup().await;
    let invalid = [
        format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()),
        format!("00-00000000000000000000000000000000-{CALLER_SPAN}-01"),
        format!("ff-{TRACE}-{CALLER_SPAN}-01"),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("00-{TRACE}-{CALLER_SPAN}-01-extra"),
        "garbage".to_string(),
    ];
    for value in invalid {
        let (status, headers, _) =
            post(&proxy.url("/openai/v1/chat/completions"), &[("traceparent", &value)], CHAT).await;
        assert_eq!(status, 200);
        let trace_id = header(&headers, "x-tracegate-trace-id").to_string();
        assert_ne!(trace_id, TRACE, "{value} was accepted");
        let span_id = header(&headers, "x-tracegate-span-id");
        // A new trace is sampled (01) and its ids random (02, W3C Level 2).
        assert_eq!(upstream_saw(&headers)["traceparent"], format!("00-{trace_id}-{span_id}-03"));
        let spans = proxy.spans(&trace_id).await;
        assert!(spans[0]["parent_span_id"].is_null(), "{value}");
    }
}
