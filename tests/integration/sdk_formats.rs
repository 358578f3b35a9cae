//! The official Google GenAI, Azure OpenAI and boto3 Bedrock clients through tracegate, unchanged
//! but for the base URL, with one team key for all three (`tests/sdk/more_formats.py`): each must
//! parse every proxied answer, the spans must say what the clients saw, and the upstreams must see
//! the provider's key or a valid SigV4 signature (checked by botocore's own signer,
//! `tests/sdk/check_sigv4.py`), never the team key.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::Response;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::*;

const TRACE: &str = "5c3a1f0e9d8b7a6c5b4a39281706f5e4";
const TEAM_KEY: &str = "tk-formats-sdk";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const SIGNED_ANSWER: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Signed hello"}]}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":2,"totalTokens":14},"metrics":{"latencyMs":40}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_azure_openai_and_boto3_work_through_the_proxy_with_a_team_key() {
    let mock = Mock::start(Duration::from_millis(1)).await;
    let signed_upstream = Scripted::start(|_| {
        Response::builder().header("content-type", "application/json").body(full(SIGNED_ANSWER)).unwrap()
    })
    .await;
    let pki = TestPki::new();
    let dir = Arc::new(TempDir::new().unwrap());
    let (cert, key, ca) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let server = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let providers = format!(
        "{}api_key = \"goog-provider-key\"\n{}api_key = \"azure-provider-key\"\n{}api_key = \"bedrock-provider-key\"\n\
         {}aws_region = \"us-east-1\"\naws_access_key_id = \"AKIDEXAMPLE\"\naws_secret_access_key = \"{AWS_SECRET}\"\n\
         [[teams]]\nname = \"apps\"\nkeys = [\"{TEAM_KEY}\"]\n",
        provider("gemini", "/gemini", mock.addr, "gemini"),
        provider("azure", "/azure", mock.addr, "azure"),
        provider("bedrock", "/bedrock", mock.addr, "bedrock"),
        provider("bedrock-signed", "/bedrock-signed", signed_upstream.addr, "bedrock"),
    );
    let proxy = Proxy::start_with_server(dir.clone(), &server, &providers).await;
    let base = format!("https://localhost:{}", proxy.server().proxy_addr().port());
    let traceparent = format!("00-{TRACE}-a1b2c3d4e5f60718-01");
    let args = vec![base, ca.display().to_string(), traceparent, TEAM_KEY.to_string()];
    let seen = sdk_script("more_formats.py", args).await;
    let reply = tracegate::mock_llm::REPLY_TEXT;

    // What the clients saw: whole answers, parsed by each SDK.
    for call in ["gemini_generate", "gemini_stream", "azure_create", "azure_stream", "bedrock_converse"] {
        assert_eq!(seen[call]["text"], reply, "{call}: {seen:#}");
    }
    assert_eq!(seen["bedrock_stream"]["text"], reply, "the event-stream frames arrive intact");
    assert_eq!(seen["bedrock_signed"]["text"], "Signed hello");
    assert_eq!(seen["client_signed"]["refused"], true);
    assert_eq!(
        (seen["client_signed"]["code"].as_str(), seen["client_signed"]["status"].as_u64()),
        (Some("UnrecognizedClientException"), Some(401))
    );
    assert!(seen["client_signed"]["message"].as_str().unwrap().contains("team key"), "{seen:#}");

    // The upstreams' view: the provider's credential in each format's place, never the team key.
    assert_eq!(seen["gemini_generate"]["upstream_saw"]["x-goog-api-key"], "goog-provider-key");
    assert_eq!(seen["azure_create"]["upstream_saw"]["api-key"], "azure-provider-key");
    assert_eq!(seen["bedrock_converse"]["upstream_saw"]["authorization"], "Bearer bedrock-provider-key");
    for call in ["gemini_generate", "azure_create", "bedrock_converse"] {
        assert!(!seen[call]["upstream_saw"].to_string().contains(TEAM_KEY), "{call}: {seen:#}");
    }
    let received = signed_upstream.requests();
    assert_eq!(received.len(), 1);
    let signed = &received[0];
    let authorization = signed.headers["authorization"].to_str().unwrap();
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{authorization}");
    let as_received = json!({
        "method": signed.method.as_str(),
        "url": format!("http://{}{}", signed.headers["host"].to_str().unwrap(), signed.uri.path_and_query().unwrap()),
        "headers": signed.headers.iter().map(|(n, v)| (n.as_str().to_string(), json!(v.to_str().unwrap()))).collect::<serde_json::Map<_, _>>(),
        "body": base64::engine::general_purpose::STANDARD.encode(&signed.body),
    });
    let request_file = dir.path().join("signed-request.json");
    std::fs::write(&request_file, as_received.to_string()).unwrap();
    let check = |secret: &str| {
        let file = request_file.display().to_string();
        sdk_script(
            "check_sigv4.py",
            vec![file, "AKIDEXAMPLE".into(), secret.into(), "us-east-1".into(), "bedrock".into()],
        )
    };
    assert_eq!(check(AWS_SECRET).await["valid"], true, "botocore finds tracegate's signature valid");
    assert_eq!(check("not-the-secret").await["valid"], false, "the check itself can fail");

    // What tracegate recorded, per call.
    let spans = proxy.wait_spans(TRACE, 11).await;
    let find = |path_end: &str, stream: bool| -> Value {
        spans
            .iter()
            .find(|s| s["path"].as_str().unwrap().ends_with(path_end) && s["stream"] == stream && s["status"] == "ok")
            .unwrap_or_else(|| panic!("no span {path_end} stream={stream} in {spans:#?}"))
            .clone()
    };
    let tokens = |span: &Value| (span["input_tokens"].as_u64(), span["output_tokens"].as_u64());
    let sdk_tokens = |call: &str| (seen[call]["input_tokens"].as_u64(), seen[call]["output_tokens"].as_u64());
    for span in &spans {
        assert_eq!(span["parent_span_id"], "a1b2c3d4e5f60718");
        if span["status_code"] != 401 {
            assert_eq!(span["team"], "apps", "one team key for every format: {span}");
        }
    }

    let generate = find(":generateContent", false);
    assert_eq!((generate["provider"].as_str(), generate["operation"].as_str()), (Some("gemini"), Some("chat")));
    assert_eq!(generate["request_model"], "gemini-2.5-flash", "the model comes from the path");
    assert_eq!(tokens(&generate), sdk_tokens("gemini_generate"));
    assert_eq!(generate["usage_source"], "reported");
    assert!(generate["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{generate}");
    let gemini_stream = find(":streamGenerateContent", true);
    assert_eq!(tokens(&gemini_stream), sdk_tokens("gemini_stream"));
    assert!(gemini_stream["ttft_ms"].as_f64().is_some());
    let counted = find(":countTokens", false);
    assert!(seen["gemini_count"]["total_tokens"].as_u64().is_some_and(|n| n > 0));
    // Counting tokens is not a use of them: no usage, no estimate, no cost.
    assert_eq!((tokens(&counted), counted["cost_usd"].as_f64()), ((None, None), None), "{counted}");
    assert_eq!(counted["usage_source"], "missing");
    let embed = find(":batchEmbedContents", false);
    assert_eq!(
        (embed["operation"].as_str(), embed["request_model"].as_str()),
        (Some("embeddings"), Some("gemini-embedding-001"))
    );

    let azure = find("/deployments/prod-mini/chat/completions", false);
    assert_eq!((azure["provider"].as_str(), azure["request_model"].as_str()), (Some("azure"), Some("prod-mini")));
    assert_eq!(azure["response_model"], seen["azure_create"]["model"], "the body names the model that answered");
    assert_eq!(tokens(&azure), sdk_tokens("azure_create"));
    let azure_stream = find("/deployments/prod-mini/chat/completions", true);
    assert_eq!(tokens(&azure_stream), sdk_tokens("azure_stream"));
    assert!(azure_stream["ttft_ms"].as_f64().is_some());

    let model = "anthropic.claude-haiku-4-5-20251001-v1:0";
    let converse = find("/converse", false);
    assert_eq!((converse["provider"].as_str(), converse["request_model"].as_str()), (Some("bedrock"), Some(model)));
    assert_eq!(tokens(&converse), sdk_tokens("bedrock_converse"));
    assert!(converse["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{converse}");
    let converse_stream = find("/converse-stream", true);
    assert_eq!(tokens(&converse_stream), sdk_tokens("bedrock_stream"));
    assert!(converse_stream["ttft_ms"].as_f64().is_some());
    let invoke = find("/invoke", false);
    assert_eq!(tokens(&invoke), sdk_tokens("bedrock_invoke"));
    assert_eq!(invoke["input_tokens"].as_u64(), seen["bedrock_invoke"]["header_input_tokens"].as_u64());
    let signed_span = spans.iter().find(|s| s["provider"] == "bedrock-signed").expect("the signed call's span");
    assert_eq!(tokens(signed_span), (Some(12), Some(2)));
    let refused = spans.iter().find(|s| s["status_code"] == 401).expect("the client-signed call's span");
    assert_eq!(refused["status"], "error");

    proxy.server().flush().await;
    let store = crate::support::walk(dir.path());
    for file in store {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(TEAM_KEY) && !text.contains("provider-key"), "a key in {}", file.display());
    }
}
