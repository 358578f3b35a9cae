//! The official OpenAI (and Anthropic) Python SDKs as clients, unchanged but for the base URL:
//! they must parse every proxied answer, and tracegate must record what they saw.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_work_through_the_proxy_and_their_calls_are_recorded() {
    let mock = Mock::start(Duration::from_millis(1)).await;
    let providers = format!(
        "{}{}",
        provider("openai", "/openai", mock.addr, "openai"),
        provider("anthropic", "/anthropic", mock.addr, "anthropic")
    );
    let proxy = Proxy::start(&providers).await;
    let traceparent = format!("00-{TRACE}-b7ad6b7169203331-01");
    let seen = sdk_script("official_sdks.py", vec![proxy.url(""), traceparent]).await;

    assert_eq!(seen["chat"]["trace_id"], TRACE);
    assert_eq!(seen["chat"]["text"], tracegate::mock_llm::REPLY_TEXT);
    assert_eq!(seen["chat_stream"]["text"], tracegate::mock_llm::REPLY_TEXT, "the streamed text arrives whole");
    assert_eq!(seen["messages_stream"]["text"], tracegate::mock_llm::REPLY_TEXT);
    assert_eq!(seen["rate_limited"], true, "the SDK sees the upstream's 429 as its own error type");

    let spans = proxy.wait_spans(TRACE, 6).await;
    assert_eq!(spans.len(), 6);
    let find = |name: &str, stream: bool| -> Value {
        spans
            .iter()
            .find(|s| s["name"] == name && s["stream"] == stream && s["status"] == "ok")
            .unwrap_or_else(|| panic!("no span {name} stream={stream} in {spans:#?}"))
            .clone()
    };
    let chat = find("chat gpt-4o-mini", false);
    assert_eq!(chat["span_id"], seen["chat"]["span_id"]);
    assert_eq!(chat["input_tokens"], seen["chat"]["input_tokens"]);
    assert_eq!(chat["output_tokens"], seen["chat"]["output_tokens"]);
    let chat_stream = find("chat gpt-4o-mini", true);
    assert_eq!(chat_stream["input_tokens"], seen["chat_stream"]["input_tokens"]);
    assert_eq!(chat_stream["output_tokens"], seen["chat_stream"]["output_tokens"]);
    assert!(chat_stream["ttft_ms"].as_f64().is_some());
    let embeddings = find("embeddings text-embedding-3-small", false);
    assert_eq!(embeddings["input_tokens"], seen["embeddings"]["input_tokens"]);
    let responses = find("chat gpt-4.1-mini", false);
    assert_eq!(responses["output_tokens"], seen["responses"]["output_tokens"]);
    let messages = find("chat claude-3-5-haiku-latest", true);
    assert_eq!(messages["input_tokens"], seen["messages_stream"]["input_tokens"]);
    assert_eq!(messages["output_tokens"], seen["messages_stream"]["output_tokens"]);
    assert_eq!(spans.iter().filter(|s| s["status"] == "error" && s["status_code"] == 429).count(), 1);
    for span in &spans {
        assert_eq!(span["parent_span_id"], "b7ad6b7169203331");
    }
}
