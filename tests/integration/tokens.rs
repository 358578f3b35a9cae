//! Token counts: tracegate's estimates agree exactly with OpenAI's own Python `tiktoken` on a
//! shipped corpus (tests/tokens/corpus.json, made by tests/tokens/generate_corpus.py), and
//! every stream mode leaves a span with tokens and an honest `usage_source`.

use std::time::Duration;

use serde_json::Value;
use tracegate::formats::tokens::{count_chat_messages, Encoding};

use crate::support::*;

fn encoding(name: &str) -> Encoding {
    serde_json::from_value(Value::String(name.to_string())).expect("corpus names a known encoding")
}

#[test]
fn counts_agree_exactly_with_python_tiktoken() {
    let corpus: Value =
        serde_json::from_str(include_str!("../tokens/corpus.json")).expect("tests/tokens/corpus.json is JSON");
    let texts = corpus["texts"].as_array().unwrap();
    let chats = corpus["chats"].as_array().unwrap();
    assert!(texts.len() >= 100 && chats.len() >= 10, "the corpus is complete");
    let mut mismatches = Vec::new();
    for case in texts {
        let got = encoding(case["encoding"].as_str().unwrap()).count(case["text"].as_str().unwrap());
        if got != case["tokens"].as_u64().unwrap() {
            mismatches
                .push(format!("{}: {:?} → {got}, tiktoken says {}", case["encoding"], case["text"], case["tokens"]));
        }
    }
    for case in chats {
        let messages = case["messages"].as_array().unwrap();
        let got = count_chat_messages(encoding(case["encoding"].as_str().unwrap()), messages);
        if got != case["tokens"].as_u64().unwrap() {
            mismatches
                .push(format!("{}: chat {messages:?} → {got}, tiktoken says {}", case["encoding"], case["tokens"]));
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// What tracegate should estimate for `CHAT_STREAM` and the mock's reply (gpt-4o-mini → o200k).
fn expected_chat_estimate(reply_words: usize) -> (u64, u64) {
    let request: Value = serde_json::from_str(CHAT_STREAM).unwrap();
    let input = count_chat_messages(Encoding::O200kBase, request["messages"].as_array().unwrap());
    let reply: String = tracegate::mock_llm::REPLY_TEXT
        .split_inclusive(' ')
        .take(reply_words)
        .collect::<String>()
        .trim_end()
        .to_string();
    (input, Encoding::O200kBase.count(&reply))
}

#[tokio::test]
async fn every_stream_mode_gets_tokens_with_the_right_source() {
    let mock = Mock::start(Duration::from_millis(20)).await;
    let config = format!(
        "{}[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n",
        provider("openai", "/openai", mock.addr, "openai")
    );
    let proxy = Proxy::start(&config).await;
    let url = proxy.url("/openai/v1/chat/completions");
    let price = |span: &Value| {
        span["input_tokens"].as_f64().unwrap() * 0.15e-6 + span["output_tokens"].as_f64().unwrap() * 0.60e-6
    };

    // With include_usage: the provider's numbers.
    let (_, headers, _) = post(&url, &[], CHAT_STREAM_USAGE).await;
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["usage_source"], "reported");

    // Without include_usage: counted by tracegate from the request and the streamed text.
    let (_, headers, _) = post(&url, &[], CHAT_STREAM).await;
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    let (input, output) = expected_chat_estimate(usize::MAX);
    assert_eq!(span["usage_source"], "estimated");
    assert_eq!((span["input_tokens"].as_u64().unwrap(), span["output_tokens"].as_u64().unwrap()), (input, output));
    assert!((span["cost_usd"].as_f64().unwrap() - price(&span)).abs() < 1e-15, "cost = tokens × price");

    // Cancelled by the client after a few chunks: input, and the output that reached it.
    let (trace_id, _, mut body) = open_stream(&url, &[("x-mock-chunks", "1000")]).await;
    let mut content_events = 0;
    while content_events < 3 {
        let chunk = next_chunk(&mut body).await.unwrap();
        content_events += String::from_utf8_lossy(&chunk).matches("\"content\":").count();
    }
    drop(body);
    let span = proxy.wait_spans(&trace_id, 1).await.remove(0);
    assert_eq!(span["status"], "cancelled");
    assert_eq!(span["usage_source"], "estimated");
    assert_eq!(span["input_tokens"].as_u64().unwrap(), input);
    let output = span["output_tokens"].as_u64().unwrap();
    assert!((2..1000).contains(&output), "only what reached the client counts: {output}");
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_is_estimated_from_what_arrived() {
    let (upstream, tx) = streaming_upstream().await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;
    tx.send(bytes::Bytes::from_static(
        b"data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"hello world\"}}]}\n\n",
    ))
    .await
    .unwrap();
    let (trace_id, _, body) = open_stream(&proxy.url("/openai/v1/chat/completions"), &[]).await;
    drop(tx); // the upstream ends the body without [DONE] or usage
    let _ = http_body_util::BodyExt::collect(body).await;
    let span = proxy.wait_spans(&trace_id, 1).await.remove(0);
    assert_eq!(span["usage_source"], "estimated");
    assert_eq!(span["output_tokens"], Encoding::O200kBase.count("hello world"));
    assert_eq!(span["input_tokens"], expected_chat_estimate(0).0);
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_recorded_and_priced() {
    let upstream = Scripted::start(|_req| {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(
                r#"{"model":"o3-mini-2025-01-31","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}],
                   "usage":{"prompt_tokens":2000,"completion_tokens":500,
                            "prompt_tokens_details":{"cached_tokens":1500},
                            "completion_tokens_details":{"reasoning_tokens":400}}}"#,
            ))
            .unwrap()
    })
    .await;
    let config = format!(
        "{}[pricing.\"o3-mini\"]\ninput_per_mtok = 1.10\noutput_per_mtok = 4.40\ncached_input_per_mtok = 0.55\n",
        provider("openai", "/openai", upstream.addr, "openai")
    );
    let proxy = Proxy::start(&config).await;
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["input_tokens"], 2000);
    assert_eq!(span["cache_read_input_tokens"], 1500);
    assert_eq!(span["output_tokens"], 500);
    assert_eq!(span["reasoning_tokens"], 400);
    let expected = 500.0 * 1.10e-6 + 1500.0 * 0.55e-6 + 500.0 * 4.40e-6;
    assert!((span["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{}", span["cost_usd"]);
}

/// The SSE body an OpenAI-like upstream sends: with `"usage":null` on every chunk and a final
/// usage chunk only when the request asked for usage.
fn openai_like_stream(include_usage: bool) -> String {
    let usage_field = if include_usage { ",\"usage\":null" } else { "" };
    let mut body = String::new();
    for (i, piece) in ["Hel", "lo", " there"].iter().enumerate() {
        body.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}},\"finish_reason\":{}}}]{usage_field}}}\n\n",
            if i == 2 { "\"stop\"" } else { "null" }
        ));
    }
    if include_usage {
        body.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n");
    }
    body.push_str("data: [DONE]\n\n");
    body
}

#[tokio::test]
async fn injected_include_usage_is_invisible_to_the_client_and_reported_in_the_span() {
    let upstream = Scripted::start(|req| {
        let asked: Value = serde_json::from_slice(&req.body).unwrap();
        let include_usage = asked["stream_options"]["include_usage"] == true;
        // Deliver in small pieces so events straddle chunk boundaries.
        let body = openai_like_stream(include_usage);
        let pieces = body.as_bytes().chunks(37).map(bytes::Bytes::copy_from_slice);
        http::Response::builder().header("content-type", "text/event-stream").body(chunked(pieces)).unwrap()
    })
    .await;
    let config = format!("{}inject_stream_usage = true\n", provider("openai", "/openai", upstream.addr, "openai"));
    let proxy = Proxy::start(&config).await;

    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT_STREAM).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        openai_like_stream(false),
        "the client sees what it would have without the proxy"
    );
    let sent: Value = serde_json::from_slice(&upstream.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "the upstream was asked for usage");
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["usage_source"], "reported");
    assert_eq!((span["input_tokens"].as_u64(), span["output_tokens"].as_u64()), (Some(11), Some(3)));
    let (_, detail) = proxy
        .admin_get(&format!(
            "/api/traces/{}/spans/{}",
            header(&headers, "x-tracegate-trace-id"),
            header(&headers, "x-tracegate-span-id")
        ))
        .await;
    assert_eq!(
        detail["request_body"],
        serde_json::from_str::<Value>(CHAT_STREAM).unwrap(),
        "the app's own request is stored"
    );

    // An app that asked for usage itself gets it, untouched.
    let (_, _, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT_STREAM_USAGE).await;
    assert_eq!(String::from_utf8_lossy(&body), openai_like_stream(true));
}
