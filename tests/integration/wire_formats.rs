//! Gemini, Azure OpenAI and Bedrock routes against scripted upstreams: what the upstream
//! receives (the provider's key or a SigV4 signature in place of a team key, a `?key=` taken
//! out), what the caller gets back (bytes unchanged, tracegate's own errors in the provider's
//! shape) and what the span says (models from paths, usage from each format's fields or
//! headers, streams' first content). The official SDKs drive the same routes in `more_formats`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::Response;
use serde_json::Value;
use tracegate::formats::eventstream;

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent() -> String {
    format!("00-{TRACE}-00f067aa0ba902b7-01")
}

const GEMINI_ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":7,"thoughtsTokenCount":30,"cachedContentTokenCount":100,"totalTokenCount":157},"modelVersion":"gemini-2.5-flash"}"#;
const GEMINI_REQUEST: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Say hello"}]}]}"#;

/// Every span of the store, with bodies, as `/api/export` gives them.
async fn exported(proxy: &Proxy) -> String {
    proxy.server().flush().await;
    let (status, _, body) = get(&proxy.admin_url("/api/export")).await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_gemini_team_key_in_the_query_is_swapped_for_the_provider_key_and_never_stored() {
    let upstream = Scripted::start(|req| {
        let body = if req.uri.path().ends_with(":streamGenerateContent") {
            // Without `alt=sse`: one JSON array, sent element by element.
            chunked([
                "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"}}],\"usageMetadata\":{\"promptTokenCount\":4},\"modelVersion\":\"gemini-2.5-flash\"}\r\n",
                ",\r\n{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":2,\"totalTokenCount\":6},\"modelVersion\":\"gemini-2.5-flash\"}\r\n",
                "]",
            ])
        } else {
            full(GEMINI_ANSWER)
        };
        Response::builder().header("content-type", "application/json").body(body).unwrap()
    })
    .await;
    let providers = format!(
        "{}api_key = \"goog-provider-key\"\n[[teams]]\nname = \"research\"\nkeys = [\"tk-gemini\"]\n",
        provider("gemini", "/gemini", upstream.addr, "gemini")
    );
    let proxy = Proxy::start(&providers).await;
    let tp = traceparent();
    let url = proxy.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=tk-gemini&alt=json");
    let (status, _, body) = post(&url, &[("traceparent", &tp)], GEMINI_REQUEST).await;
    assert_eq!((status, &body[..]), (200, GEMINI_ANSWER.as_bytes()), "the answer passes unchanged");
    // The app's own Google key is the app's business: forwarded as it came.
    let url = proxy.url("/gemini/v1/models/gemini-2.5-flash:streamGenerateContent?key=AIza-the-apps-own-key");
    let (status, _, body) = post(&url, &[("traceparent", &tp)], GEMINI_REQUEST).await;
    assert_eq!(status, 200);
    assert!(body.ends_with(b"]"));

    let seen = upstream.requests();
    assert_eq!(seen[0].uri.query(), Some("alt=json"), "the team key left the query, nothing else did");
    assert_eq!(seen[0].headers["x-goog-api-key"], "goog-provider-key");
    assert_eq!(seen[1].uri.query(), Some("key=AIza-the-apps-own-key"));
    assert!(!seen[1].headers.contains_key("x-goog-api-key"));

    let spans = proxy.wait_spans(TRACE, 2).await;
    let chat = spans.iter().find(|s| s["stream"] == false).expect("the generateContent span");
    assert_eq!(chat["name"], "chat gemini-2.5-flash");
    assert_eq!((chat["request_model"].as_str(), chat["team"].as_str()), (Some("gemini-2.5-flash"), Some("research")));
    assert_eq!((chat["input_tokens"].as_u64(), chat["output_tokens"].as_u64()), (Some(120), Some(37)));
    assert_eq!((chat["reasoning_tokens"].as_u64(), chat["cache_read_input_tokens"].as_u64()), (Some(30), Some(100)));
    assert!(chat["cost_usd"].as_f64().is_some_and(|c| c > 0.0));
    let stream = spans.iter().find(|s| s["stream"] == true).expect("the streamGenerateContent span");
    assert_eq!((stream["input_tokens"].as_u64(), stream["output_tokens"].as_u64()), (Some(4), Some(2)));
    assert!(stream["ttft_ms"].as_f64().is_some(), "a JSON-array stream has a first content: {stream}");
    for span in &spans {
        assert!(!span["path"].as_str().unwrap().contains('?'), "the span keeps the path only");
    }
    let store = exported(&proxy).await;
    assert!(!store.contains("tk-gemini") && !store.contains("AIza-the-apps-own-key"), "no key is ever stored");
}

#[tokio::test]
async fn an_azure_deployment_names_the_request_model_and_the_team_key_becomes_the_api_key() {
    let upstream = Scripted::start(|_| {
        let body = "data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n\
                    data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"content_filter_results\":{}}]}\n\n\
                    data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"content_filter_results\":{\"hate\":{\"filtered\":false}}}]}\n\n\
                    data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\n\
                    data: [DONE]\n\n";
        Response::builder().header("content-type", "text/event-stream").body(full(body)).unwrap()
    })
    .await;
    let providers = format!(
        "{}api_key = \"azure-provider-key\"\n[[teams]]\nname = \"ops\"\nkeys = [\"tk-azure\"]\n",
        provider("azure", "/azure", upstream.addr, "azure")
    );
    let proxy = Proxy::start(&providers).await;
    let url = proxy.url("/azure/openai/deployments/prod-mini/chat/completions?api-version=2024-10-21");
    let (status, _, _) =
        post(&url, &[("api-key", "tk-azure"), ("traceparent", &traceparent())], CHAT_STREAM_USAGE).await;
    assert_eq!(status, 200);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.headers["api-key"], "azure-provider-key");
    assert_eq!(seen.uri.query(), Some("api-version=2024-10-21"));
    let span = &proxy.wait_spans(TRACE, 1).await[0];
    assert_eq!(span["request_model"], "prod-mini", "the deployment is what was asked for");
    assert_eq!(span["response_model"], "gpt-4o-mini-2024-07-18", "the body names the model that answered");
    assert_eq!((span["input_tokens"].as_u64(), span["output_tokens"].as_u64()), (Some(9), Some(1)));
    assert_eq!((span["team"].as_str(), span["usage_source"].as_str()), (Some("ops"), Some("reported")));
    assert!(span["ttft_ms"].as_f64().is_some(), "the first content, not the content-filter chunk");
    assert!(span["cost_usd"].as_f64().is_some(), "priced by the response model");
}

/// Re-signs what the upstream received with the same credentials and time and compares: the
/// signature covers the method, host, path, query, signed headers and body as they arrived.
fn signature_is_valid(req: &Received, secret: &str) -> bool {
    let auth = req.headers["authorization"].to_str().unwrap();
    let Some(signed) = auth.split("SignedHeaders=").nth(1).and_then(|s| s.split(',').next()) else { return false };
    let names: Vec<&str> = signed.split(';').collect();
    let headers: Vec<(&str, &str)> = names
        .iter()
        .filter(|n| **n != "x-amz-date")
        .map(|n| (*n, req.headers.get(*n).and_then(|v| v.to_str().ok()).unwrap_or("")))
        .collect();
    let date = req.headers["x-amz-date"].to_str().unwrap();
    let time = chrono_free_parse(date);
    let identity: Identity = Credentials::new("AKIDEXAMPLE", secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let host = req.headers["host"].to_str().unwrap();
    let uri = format!("http://{host}{}", req.uri.path_and_query().unwrap());
    let request = SignableRequest::new(req.method.as_str(), uri, headers.into_iter(), SignableBody::Bytes(&req.body));
    let (instructions, _) = sign(request.unwrap(), &params).unwrap().into_parts();
    let found = instructions.headers().find(|(n, _)| *n == "authorization").map(|(_, v)| v.to_owned());
    found.as_deref() == Some(auth)
}

/// `20261206T193000Z` as a time.
fn chrono_free_parse(stamp: &str) -> SystemTime {
    let n = |r: std::ops::Range<usize>| stamp[r].parse::<u64>().unwrap();
    let days = tracegate::model::clock::days_from_civil(n(0..4) as i64, n(4..6) as u32, n(6..8) as u32);
    let secs = days as u64 * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

#[tokio::test]
async fn bedrock_team_keys_are_signed_api_keys_pass_and_client_signatures_are_refused() {
    let converse = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":20,"outputTokens":5,"totalTokens":1525,"cacheReadInputTokens":1000,"cacheWriteInputTokens":500},"metrics":{"latencyMs":300}}"#;
    let upstream = Scripted::start(move |req| {
        if req.uri.path().ends_with("/invoke") {
            // A model family whose body tracegate does not read: the headers count it.
            return Response::builder()
                .header("content-type", "application/json")
                .header("x-amzn-bedrock-input-token-count", "11")
                .header("x-amzn-bedrock-output-token-count", "3")
                .body(full(r#"{"outputs":[{"text":"Hi","stop_reason":"stop"}]}"#))
                .unwrap();
        }
        Response::builder().header("content-type", "application/json").body(full(converse)).unwrap()
    })
    .await;
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let providers = format!(
        "{}aws_region = \"us-east-1\"\naws_access_key_id = \"AKIDEXAMPLE\"\naws_secret_access_key = \"{secret}\"\n[[teams]]\nname = \"ml\"\nkeys = [\"tk-bedrock\"]\n",
        provider("bedrock", "/bedrock", upstream.addr, "bedrock")
    );
    let proxy = Proxy::start(&providers).await;
    let tp = traceparent();
    let body = r#"{"messages":[{"role":"user","content":[{"text":"Say hello"}]}],"inferenceConfig":{"maxTokens":64}}"#;
    let model_path = "/bedrock/model/anthropic.claude-haiku-4-5-20251001-v1%3A0";

    let auth = "Bearer tk-bedrock";
    let (status, _, answer) =
        post(&proxy.url(&format!("{model_path}/converse")), &[("authorization", auth), ("traceparent", &tp)], body)
            .await;
    assert_eq!((status, &answer[..]), (200, converse.as_bytes()));
    let bedrock_api_key = "Bearer ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl";
    let (status, _, _) = post(
        &proxy.url("/bedrock/model/mistral.mistral-large-2402-v1%3A0/invoke"),
        &[("authorization", bedrock_api_key), ("traceparent", &tp)],
        r#"{"prompt":"<s>[INST] Say hello [/INST]","max_tokens":20}"#,
    )
    .await;
    assert_eq!(status, 200);
    let client_signed = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00";
    let (status, headers, refusal) = post(
        &proxy.url(&format!("{model_path}/converse")),
        &[("authorization", client_signed), ("x-amz-date", "20261206T000000Z"), ("traceparent", &tp)],
        body,
    )
    .await;
    assert_eq!((status, header(&headers, "x-amzn-errortype")), (401, "UnrecognizedClientException"));
    let refusal: Value = serde_json::from_slice(&refusal).unwrap();
    assert!(refusal["message"].as_str().unwrap().contains("team key"), "{refusal}");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "the client-signed request never went upstream");
    let signed = &seen[0];
    let authorization = signed.headers["authorization"].to_str().unwrap();
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{authorization}");
    assert!(!authorization.contains("tk-bedrock"));
    assert!(signature_is_valid(signed, secret), "the upstream got a valid signature: {authorization}");
    assert!(!signature_is_valid(signed, "another-secret"), "the check itself can fail");
    assert_eq!(seen[1].headers["authorization"], bedrock_api_key, "a Bedrock API key passes unchanged");

    let spans = proxy.wait_spans(TRACE, 3).await;
    let by_status = |code: u64| spans.iter().find(|s| s["status_code"] == code).unwrap();
    let converse_span =
        spans.iter().find(|s| s["path"].as_str().unwrap().ends_with("/converse") && s["status"] == "ok");
    let converse_span = converse_span.expect("the converse span");
    assert_eq!(converse_span["request_model"], "anthropic.claude-haiku-4-5-20251001-v1:0");
    assert_eq!(
        (converse_span["input_tokens"].as_u64(), converse_span["output_tokens"].as_u64()),
        (Some(1520), Some(5))
    );
    assert_eq!(converse_span["team"], "ml");
    assert!(converse_span["cost_usd"].as_f64().is_some());
    let invoke = spans.iter().find(|s| s["path"].as_str().unwrap().ends_with("/invoke")).unwrap();
    assert_eq!((invoke["input_tokens"].as_u64(), invoke["output_tokens"].as_u64()), (Some(11), Some(3)));
    assert_eq!(invoke["usage_source"], "reported");
    assert_eq!(by_status(401)["status"], "error");
    let store = exported(&proxy).await;
    assert!(!store.contains("tk-bedrock") && !store.contains("ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"));
}

#[tokio::test]
async fn a_corrupt_bedrock_frame_is_relayed_unchanged_and_the_span_says_so() {
    let mut corrupt =
        eventstream::encode_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"lo"}}"#);
    let at = corrupt.len() - 6;
    corrupt[at] ^= 0x20;
    let frames = [
        eventstream::encode_event("messageStart", r#"{"role":"assistant"}"#),
        eventstream::encode_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hel"}}"#),
        corrupt,
        eventstream::encode_event("messageStop", r#"{"stopReason":"end_turn"}"#),
        eventstream::encode_event(
            "metadata",
            r#"{"usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11},"metrics":{"latencyMs":90}}"#,
        ),
    ];
    let stream = frames.concat();
    let sent = stream.clone();
    let upstream = Scripted::start(move |_| {
        let chunks: Vec<Vec<u8>> = frames.to_vec();
        Response::builder().header("content-type", "application/vnd.amazon.eventstream").body(chunked(chunks)).unwrap()
    })
    .await;
    let proxy = Proxy::start(&provider("bedrock", "/bedrock", upstream.addr, "bedrock")).await;
    let (status, _, body) = post(
        &proxy.url("/bedrock/model/meta.llama3-2-1b-instruct-v1%3A0/converse-stream"),
        &[("authorization", "Bearer ABSK-key"), ("traceparent", &traceparent())],
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], &sent[..], "every byte relayed, the corrupt frame too");
    let span = &proxy.wait_spans(TRACE, 1).await[0];
    assert_eq!((span["stream"].as_bool(), span["status"].as_str()), (Some(true), Some("error")));
    assert!(span["error"].as_str().unwrap().contains("CRC"), "{span}");
    assert_eq!((span["input_tokens"].as_u64(), span["output_tokens"].as_u64()), (Some(9), Some(2)));
    assert!(span["ttft_ms"].as_f64().is_some());
}

#[tokio::test]
async fn tracegates_own_errors_come_in_googles_and_aws_shapes() {
    // An upstream nobody listens on: tracegate answers 502 itself.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let providers = format!(
        "{}{}",
        provider("gemini", "/gemini", closed, "gemini"),
        provider("bedrock", "/bedrock", closed, "bedrock")
    );
    let proxy = Proxy::start(&providers).await;
    let (status, _, body) =
        post(&proxy.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"), &[], GEMINI_REQUEST).await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_u64(), error["error"]["status"].as_str()),
        (502, Some(502), Some("UNAVAILABLE"))
    );
    let (status, headers, body) = post(&proxy.url("/bedrock/model/m/converse"), &[], "{}").await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, header(&headers, "x-amzn-errortype")), (502, "ServiceUnavailableException"));
    assert!(error["message"].as_str().unwrap().contains("could not be reached"));
}
