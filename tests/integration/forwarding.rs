//! Forwarding: bodies pass unchanged in both directions, streams are not buffered, and only
//! configured upstreams are ever contacted.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Sends `request_body` through the proxy to a scripted upstream answering `chunks`, and checks
/// both directions byte for byte.
async fn pass_through(
    api: &str,
    path: &str,
    request_body: &str,
    content_type: &'static str,
    chunks: Vec<&'static str>,
) {
    let expected: String = chunks.concat();
    let upstream = Scripted::start(move |_req| {
        let body = chunked(chunks.clone());
        Response::builder()
            .header("content-type", content_type)
            .header("x-upstream-custom", "kept")
            .body(body.boxed())
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&provider("p", "/p", upstream.addr, api)).await;

    let (status, headers, body) = post(
        &proxy.url(&format!("/p{path}?api-version=1")),
        &[("x-tracegate-team", "t1"), ("x-custom", "c")],
        request_body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected, "response body changed on the way");
    assert_eq!(header(&headers, "x-upstream-custom"), "kept");
    assert_eq!(header(&headers, "x-tracegate-trace-id").len(), 32);
    assert_eq!(header(&headers, "x-tracegate-span-id").len(), 16);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(seen[0].uri.path_and_query().unwrap().as_str(), format!("{path}?api-version=1"));
    assert_eq!(&seen[0].body[..], request_body.as_bytes(), "request body changed on the way");
    assert_eq!(header(&seen[0].headers, "x-custom"), "c");
    assert!(seen[0].headers.keys().all(|k| !k.as_str().starts_with("x-tracegate-")), "x-tracegate-* went upstream");
    assert_eq!(header(&seen[0].headers, "host"), upstream.addr.to_string());

    let spans = proxy.spans(header(&headers, "x-tracegate-trace-id")).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["status"], "ok");
    assert_eq!(spans[0]["team"], "t1");
}

#[tokio::test]
async fn openai_non_stream_passes_through_byte_for_byte() {
    let body = "{\n  \"id\": \"chatcmpl-1\",\n  \"model\": \"gpt-4o-mini\",  \"choices\": [{\"message\":{\"content\":\"h\u{e9}llo\"},\"finish_reason\":\"stop\"}],\n\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n";
    pass_through("openai", "/v1/chat/completions", CHAT, "application/json", vec![body]).await;
}

#[tokio::test]
async fn openai_stream_passes_through_byte_for_byte() {
    let chunks = vec![
        "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n",
        "\ndata: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n",
        ": keep-alive comment\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
    ];
    pass_through("openai", "/v1/chat/completions", CHAT_STREAM_USAGE, "text/event-stream", chunks).await;
}

#[tokio::test]
async fn anthropic_non_stream_passes_through_byte_for_byte() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
    pass_through("anthropic", "/v1/messages", MESSAGES, "application/json", vec![body]).await;
}

#[tokio::test]
async fn anthropic_stream_passes_through_byte_for_byte() {
    let chunks = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku-20241022\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    pass_through("anthropic", "/v1/messages", MESSAGES_STREAM, "text/event-stream", chunks).await;
}

#[tokio::test]
async fn first_streamed_chunk_reaches_the_client_before_the_upstream_sends_the_last() {
    let (upstream, tx) = streaming_upstream().await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;

    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"first\"}}]}\n\n";
    tx.send(Bytes::from_static(first.as_bytes())).await.unwrap();
    // The upstream has sent only the first chunk and is waiting: `open_stream` returns only
    // once a first chunk reached the client (and fails after 10 s otherwise).
    let (trace_id, first_chunk, mut body) = open_stream(&proxy.url("/openai/v1/chat/completions"), &[]).await;
    assert_eq!(first_chunk, first.as_bytes());

    let last =
        "data: {\"choices\":[{\"delta\":{\"content\":\" last\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    tx.send(Bytes::from_static(last.as_bytes())).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, last.as_bytes());

    let spans = proxy.wait_spans(&trace_id, 1).await;
    assert_eq!(spans[0]["stream"], true);
    assert_eq!(spans[0]["status"], "ok");
    assert!(spans[0]["ttft_ms"].as_f64().is_some(), "a stream has a time to first token");
    assert_eq!(spans[0]["usage_source"], "estimated", "no usage was reported: tracegate counted");
    assert_eq!(spans[0]["output_tokens"], 2, "\"first\" and \" last\"");
}

#[tokio::test]
async fn unknown_prefix_absolute_form_and_connect_never_reach_an_upstream() {
    let upstream = Scripted::start(|_req| Response::new(full("should not be called"))).await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;

    let (status, _, body) = post(&proxy.url("/nope/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "no_route");
    assert_eq!(error["error"]["type"], "invalid_request_error");

    // A prefix must end at a path segment boundary.
    let (status, _, _) = post(&proxy.url("/openaiX/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 404);

    // Dot segments and encoded slashes could climb out of the upstream's base path.
    for path in ["/openai/../admin", "/openai/%2e%2e/admin", "/openai/v1%2fchat/completions"] {
        let (status, _, body) = post(&proxy.url(path), &[], CHAT).await;
        assert_eq!(status, 400, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("unsafe_path"));
    }

    // Absolute-form target naming the upstream itself, and CONNECT: refused, nothing forwarded.
    for raw in [
        format!("GET http://{0}/v1/models HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", upstream.addr),
        format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", upstream.addr),
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 400") || head.starts_with("HTTP/1.1 405"), "{head}");
    }
    assert_eq!(upstream.requests().len(), 0, "an unrouted request reached the upstream");
}

#[tokio::test]
async fn upstream_down_gives_provider_shaped_502_and_an_error_span() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = Proxy::start(&format!(
        "{}{}",
        provider("openai", "/openai", closed, "openai"),
        provider("anthropic", "/anthropic", closed, "anthropic")
    ))
    .await;

    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 502);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_unreachable");
    let spans = proxy.spans(header(&headers, "x-tracegate-trace-id")).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["status"], "error");
    assert_eq!(spans[0]["status_code"], 502);
    assert!(spans[0]["error"].as_str().unwrap().contains("could not be reached"));
    assert_eq!(spans[0]["request_model"], "gpt-4o-mini");

    let (status, _, body) = post(&proxy.url("/anthropic/v1/messages"), &[], MESSAGES).await;
    assert_eq!(status, 502);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
}

#[tokio::test]
async fn an_upstream_that_goes_quiet_mid_stream_fails_after_the_idle_timeout() {
    let (upstream, tx) = streaming_upstream().await;
    let config = format!("{}idle_timeout_secs = 0.3\n", provider("openai", "/openai", upstream.addr, "openai"));
    let proxy = Proxy::start(&config).await;
    tx.send(Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")).await.unwrap();
    let (trace_id, _, body) = open_stream(&proxy.url("/openai/v1/chat/completions"), &[]).await;
    // The upstream keeps the stream open and sends nothing more: the proxy gives up.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), body.collect())
        .await
        .expect("the proxy ends the stream");
    assert!(rest.is_err(), "the client sees the stream break, not a clean end");
    let spans = proxy.wait_spans(&trace_id, 1).await;
    assert_eq!(spans[0]["status"], "error");
    assert!(spans[0]["error"].as_str().unwrap().contains("idle timeout"), "{}", spans[0]);
    drop(tx);
}

#[tokio::test]
async fn a_client_that_breaks_off_its_upload_is_recorded_as_cancelled() {
    let upstream = Scripted::start(|_req| Response::new(full("{}"))).await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut stream = tokio::net::TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\n\r\n{{\"model\":\"gpt-4o-mini\","
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(stream);
    let spans = proxy.wait_spans(trace, 1).await;
    assert_eq!(spans[0]["status"], "cancelled", "{}", spans[0]);
    assert_eq!(spans[0]["request_model"], "gpt-4o-mini", "what arrived is still read");
    assert!(upstream.requests().iter().all(|r| r.body.len() < 1000), "no complete request was forwarded");
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_is_reached_over_http2() {
    let pki = TestPki::new();
    let upstream = Scripted::start_tls(&pki, |_req| {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"model":"m","choices":[]}"#))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let config = format!(
        "[[providers]]\nname = \"tls\"\nprefix = \"/tls\"\nupstream = \"https://localhost:{}\"\napi = \"openai\"\nca_file = \"{}\"\n",
        upstream.addr.port(),
        ca_file.display()
    );
    let proxy = Proxy::start(&config).await;
    let (status, _, body) = post(&proxy.url("/tls/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], br#"{"model":"m","choices":[]}"#);
    let seen = upstream.requests();
    assert_eq!(seen[0].version, http::Version::HTTP_2, "ALPN picked HTTP/2");
    assert_eq!(&seen[0].body[..], CHAT.as_bytes());

    // Without the private CA the certificate is not trusted: 502, nothing served.
    let untrusted = Proxy::start(&provider_https("tls", "/tls", upstream.addr.port())).await;
    let (status, _, body) = post(&untrusted.url("/tls/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.requests().len(), 1);
}

fn provider_https(name: &str, prefix: &str, port: u16) -> String {
    format!("[[providers]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"https://localhost:{port}\"\napi = \"openai\"\n")
}

#[tokio::test]
async fn http2_clients_are_served() {
    let mock = Mock::start(std::time::Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let request = Request::post(proxy.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT_STREAM_USAGE.as_bytes())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let trace_id = header(response.headers(), "x-tracegate-trace-id").to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    let spans = proxy.wait_spans(&trace_id, 1).await;
    assert_eq!(spans[0]["usage_source"], "reported");
}

#[tokio::test]
async fn the_proxy_listener_speaks_https_with_rustls() {
    let pki = TestPki::new();
    let dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    let mock = Mock::start(std::time::Duration::ZERO).await;
    let server = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let proxy =
        Proxy::start_with_server(dir.clone(), &server, &provider("openai", "/openai", mock.addr, "openai")).await;

    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    let tls = tracegate::upstream::tls_config(&rustls::RootCertStore::empty(), &[ca]);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        tracegate::upstream::build_client(std::time::Duration::from_secs(5), tls);
    let url = format!("https://localhost:{}/openai/v1/chat/completions", proxy.server().proxy_addr().port());
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    let response = client.request(request).await.expect("TLS handshake and request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2, "ALPN offers h2");
    let trace_id = header(response.headers(), "x-tracegate-trace-id").to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("mock reply"));
    assert_eq!(proxy.spans(&trace_id).await.len(), 1);

    // Plain HTTP on the TLS port gets no answer a client could mistake for the proxy's.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(proxy.server().proxy_addr()),
    )
    .await
    .unwrap();
    let mut plain = plain.unwrap();
    plain.write_all(b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_route_with_record_false_forwards_without_a_span_a_capture_or_a_ledger_row() {
    let mock = Mock::start(std::time::Duration::ZERO).await;
    let providers = format!(
        "{}api_key = \"sk-provider\"\nrecord = false\n{}[[teams]]\nname = \"apps\"\nkeys = [\"tk-norec\"]\ndaily_budget_usd = 0.000001\n",
        provider("norec", "/norec", mock.addr, "openai"),
        provider("openai", "/openai", mock.addr, "openai"),
    );
    let proxy = Proxy::start(&providers).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let secret_phrase =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Unrecorded zebra pineapple"}]}"#;
    let url = proxy.url("/norec/v1/chat/completions");
    let auth = [("authorization", "Bearer tk-norec"), ("traceparent", traceparent)];
    // Twice, beyond what the tiny budget would admit: no budget applies to an unrecorded route.
    for body in [secret_phrase, CHAT_STREAM_USAGE] {
        let (status, headers, answer) = post(&url, &auth, body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("mock reply") || answer.ends_with("data: [DONE]\n\n"), "{answer}");
        assert!(headers.get("x-tracegate-trace-id").is_none(), "no span, no ids");
        let saw = upstream_saw(&headers);
        assert_eq!(saw["traceparent"], traceparent, "the caller's trace context passes unchanged");
        assert_eq!(saw["authorization"], "Bearer sk-provider", "the team key is still swapped");
    }
    let (status, _, _) = post(&url, &[("x-mock-status", "500")], CHAT).await;
    assert_eq!(status, 500);

    let (_, traces) = proxy.admin_get("/api/traces").await;
    assert_eq!(traces["traces"].as_array().map(Vec::len), Some(0), "{traces}");
    let (_, usage) = proxy.admin_get("/api/usage").await;
    assert_eq!(usage["totals"]["requests"], 0, "no ledger row: {usage}");
    let admin = proxy.admin_url("");
    assert_eq!(metric(&admin, "tracegate_spans_recorded_total").await, 0.0);
    let (_, _, text) = get(&format!("{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&text);
    let count = |status: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("tracegate_requests_total{") && l.contains("provider=\"norec\""))
            .filter(|l| l.contains(&format!("status=\"{status}\"")))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!((count("ok"), count("error")), (2.0, 1.0), "{text}");
    assert!(text.lines().any(|l| l.contains("provider=\"norec\"") && l.contains("team=\"apps\"")), "{text}");

    // The recorded route beside it records as before.
    let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 200);
    let (_, traces) = proxy.admin_get("/api/traces").await;
    assert_eq!(traces["traces"].as_array().map(Vec::len), Some(1));
    let dir = proxy.shutdown().await;
    for file in walk(dir.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains("zebra pineapple"), "captured in {}", file.display());
    }
}
