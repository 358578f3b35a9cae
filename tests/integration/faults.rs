//! Upstream faults: a reset connection, an upstream that never accepts or never answers, and
//! garbage bodies all give the client a clear answer, a recorded span, and leave the proxy
//! serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn still_serving(proxy: &Proxy) {
    let (status, _) = proxy.admin_get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_upstream_that_resets_the_connection_gives_502_and_an_error_span() {
    let addr = raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        drop(stream); // close without answering
    })
    .await;
    let proxy = Proxy::start(&provider("openai", "/openai", addr, "openai")).await;
    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_unreachable");
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["status"], "error");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn a_hung_upstream_gives_504_after_the_response_timeout() {
    let addr = raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        tokio::time::sleep(Duration::from_secs(30)).await; // never answers
    })
    .await;
    let config = format!("{}response_timeout_secs = 0.3\n", provider("anthropic", "/anthropic", addr, "anthropic"));
    let proxy = Proxy::start(&config).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = post(&proxy.url("/anthropic/v1/messages"), &[], MESSAGES).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout applied");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "timeout_error");
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!((span["status"].as_str(), span["status_code"].as_u64()), (Some("error"), Some(504)));
    assert_eq!(span["request_model"], "claude-3-5-haiku-latest");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn an_upstream_that_never_accepts_gives_504_after_the_connect_timeout() {
    // A listener with a backlog of one that never accepts: once its queue is full, the kernel
    // drops further SYNs, so a new connection hangs in connect.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    let config = format!(
        "{}connect_timeout_secs = 0.5
",
        provider("openai", "/openai", addr, "openai")
    );
    let proxy = Proxy::start(&config).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(5), "the connect timeout applied");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("connect timeout"), "{error}");
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!((span["status"].as_str(), span["status_code"].as_u64()), (Some("error"), Some(504)));
    still_serving(&proxy).await;
}

#[tokio::test]
async fn garbage_from_the_upstream_is_relayed_unchanged_and_recorded_without_crashing() {
    let bodies: [(&str, &[u8]); 4] = [
        ("application/json", b"{\"model\": \"gpt-4o-mini\", \"choices\": [ {\"message\": "),
        (
            "text/event-stream",
            b"data: {not json}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\nevent\xff: \x00\n\n",
        ),
        ("application/json", b"\xff\xfe\x00\x01 binary"),
        ("text/event-stream", b"data: [DONE]\n\n"),
    ];
    for (content_type, body) in bodies {
        let addr = raw_upstream(move |mut stream| async move {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body).await;
        })
        .await;
        let proxy = Proxy::start(&provider("openai", "/openai", addr, "openai")).await;
        let (status, headers, received) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT_STREAM).await;
        assert_eq!(status, 200);
        assert_eq!(&received[..], body, "relayed byte for byte");
        let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
        assert_eq!(span["status"], "ok");
        assert_ne!(span["usage_source"], "reported");
        still_serving(&proxy).await;
    }
}

#[tokio::test]
async fn bodies_over_max_request_bytes_get_413_and_never_reach_the_upstream_whole() {
    let upstream = Scripted::start(|_req| http::Response::new(full("{}"))).await;
    let dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let proxy = Proxy::start_with_server(
        dir,
        "max_request_bytes = 1000\n",
        &format!(
            "{}{}",
            provider("openai", "/openai", upstream.addr, "openai"),
            provider("anthropic", "/anthropic", upstream.addr, "anthropic")
        ),
    )
    .await;
    let big = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(5000));

    // Declared too large by Content-Length: refused before any upstream contact.
    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], &big).await;
    assert_eq!(status, 413);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_too_large");
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["status_code"], 413);
    let (status, _, body) = post(&proxy.url("/anthropic/v1/messages"), &[], &big).await;
    assert_eq!(status, 413);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"]["type"], "request_too_large");

    // Chunked (no Content-Length): cut off when it passes the limit.
    let mut stream = tokio::net::TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    let mut request = String::from("POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    for piece in big.as_bytes().chunks(700) {
        request.push_str(&format!("{:x}\r\n{}\r\n", piece.len(), String::from_utf8_lossy(piece)));
    }
    request.push_str("0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&answer));
    assert!(upstream.requests().iter().all(|r| r.body.len() <= 1000), "no oversized body was forwarded whole");
    still_serving(&proxy).await;
}
