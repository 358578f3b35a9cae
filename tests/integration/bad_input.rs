//! Bad input from clients: oversized headers, slow headers, smuggling and pipelining, a spoofed
//! `Host`, malformed trace headers, bytes that are not UTF-8, and clients that leave mid-call.
//! Each gets a clear answer (in the provider's error format where tracegate answers itself),
//! nothing reaches a host that is not configured, and the proxy keeps serving.

use std::time::Duration;

use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Writes `raw` on a fresh connection and reads until the peer closes or `within` passes.
async fn exchange(proxy: &Proxy, raw: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    stream.write_all(raw).await.unwrap();
    read_all(&mut stream, within).await
}

async fn read_all(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn still_serving(proxy: &Proxy) {
    let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 200, "the proxy stopped serving");
}

#[tokio::test]
async fn oversized_headers_get_a_provider_shaped_431_and_never_reach_the_upstream() {
    let mock = Mock::start(Duration::ZERO).await;
    let upstream = Scripted::start(|_req| Response::new(full("{}"))).await;
    let providers = format!(
        "{}{}",
        provider("openai", "/openai", mock.addr, "openai"),
        provider("anthropic", "/anthropic", upstream.addr, "anthropic")
    );
    let store = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let proxy = Proxy::start_with_server(store, "max_header_bytes = 4096\n", &providers).await;
    let big = "a".repeat(5000);

    let (status, _, body) = post(&proxy.url("/openai/v1/chat/completions"), &[("x-big", &big)], CHAT).await;
    assert_eq!(status, 431);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_too_large", "OpenAI's error shape: {error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("server.max_header_bytes"));

    // Many small headers add up the same way; Anthropic routes answer in Anthropic's shape.
    let many: Vec<(String, String)> = (0..300).map(|i| (format!("x-h{i}"), "v".repeat(10))).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, body) = post(&proxy.url("/anthropic/v1/messages"), &many, MESSAGES).await;
    assert_eq!(status, 431);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error", "Anthropic's error shape: {error}");
    assert_eq!(upstream.requests().len(), 0, "an oversized request reached the upstream");

    // Just under the limit is forwarded.
    let fits = "a".repeat(3000);
    let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &[("x-big", &fits)], CHAT).await;
    assert_eq!(status, 200);
}

/// A proxy in front of a mock upstream (returned, to be kept alive), its
/// `header_read_timeout_secs` half a second.
async fn proxy_with_a_short_header_read_timeout() -> (Mock, Proxy) {
    let mock = Mock::start(Duration::ZERO).await;
    let store = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let proxy = Proxy::start_with_server(
        store,
        "header_read_timeout_secs = 0.5\n",
        &provider("openai", "/openai", mock.addr, "openai"),
    )
    .await;
    (mock, proxy)
}

#[tokio::test]
async fn a_client_slower_than_the_header_read_timeout_is_disconnected() {
    let (_mock, proxy) = proxy_with_a_short_header_read_timeout().await;
    let mut stream = TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    // Half a request line, then nothing: the connection must be closed, not held forever.
    stream.write_all(b"POST /openai/v1/chat/comp").await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the slow client was held {:?}", started.elapsed());
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected_after_the_header_read_timeout() {
    let (_mock, proxy) = proxy_with_a_short_header_read_timeout().await;
    // Not one byte: the proxy cannot yet tell HTTP/1 from HTTP/2, and must not wait forever.
    let mut stream = TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the silent client was held {:?}", started.elapsed());
    assert!(answer.is_empty(), "{answer}");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn a_request_written_a_byte_at_a_time_is_answered() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    // `P` could begin `PRI` (HTTP/2's preface) or `POST`: the proxy waits for the bytes that
    // tell, leaves them in the socket for hyper, and serves the request as HTTP/1.
    let request = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{CHAT}",
        CHAT.len()
    );
    let mut stream = TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in &request.as_bytes()[..6] {
        stream.write_all(std::slice::from_ref(byte)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(&request.as_bytes()[6..]).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_reframed_never_passed_on() {
    let upstream = Scripted::start(|_req| Response::new(full("{}"))).await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;

    // Two different Content-Lengths: refused outright.
    let answer = exchange(
        &proxy,
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // CL.TE: Transfer-Encoding wins (RFC 9112 §6.3), the body is the empty chunked body, and
    // the connection is closed after the answer, so the "smuggled" request is never read.
    let smuggled = "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /openai/v1/smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&proxy, smuggled.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "the smuggled request was served: {answer}");
    assert!(upstream.requests().iter().all(|r| !r.uri.path().contains("smuggled")));
    for request in upstream.requests() {
        assert!(!String::from_utf8_lossy(&request.body).contains("HTTP/1.1"), "a request body carried a request");
        let framing = ["content-length", "transfer-encoding"].iter().filter(|h| request.headers.contains_key(**h));
        assert!(framing.count() <= 1, "upstream got conflicting framing: {:?}", request.headers);
    }

    // TE.CL with an obfuscated Transfer-Encoding: refused or answered, never forwarded as one.
    let answer = exchange(
        &proxy,
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n5c\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5") || answer.is_empty(), "{answer}");
    for request in upstream.requests() {
        assert!(request.headers.get("transfer-encoding").is_none_or(|v| v == "chunked"), "{:?}", request.headers);
    }
    still_serving(&proxy).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let one = |model: &str, close: bool| {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        format!(
            "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{body}",
            if close { "Connection: close\r\n" } else { "" },
            body.len()
        )
    };
    let raw = [one("first-model", false), one("second-model", false), one("third-model", true)].concat();
    let answer = exchange(&proxy, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let (first, second, third) = (
        answer.find("first-model").unwrap(),
        answer.find("second-model").unwrap(),
        answer.find("third-model").unwrap(),
    );
    assert!(first < second && second < third, "answers out of order");
}

#[tokio::test]
async fn a_spoofed_host_goes_to_the_configured_upstream_only() {
    let upstream = Scripted::start(|_req| Response::new(full("{}"))).await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;
    for host in ["evil.example", "169.254.169.254", "127.0.0.1:1"] {
        let raw = format!(
            "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Host: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let answer = exchange(&proxy, raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3, "every call went to the configured upstream");
    for request in requests {
        assert_eq!(request.headers["host"], upstream.addr.to_string().as_str(), "Host is the upstream's own");
    }
}

#[tokio::test]
async fn malformed_trace_headers_and_non_utf8_values_start_a_new_trace_and_pass_through() {
    let upstream = Scripted::start(|_req| Response::new(full("{}"))).await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;
    let cases: [&[u8]; 6] = [
        b"traceparent: 00-zzzz-00f067aa0ba902b7-01\r\n",
        b"traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n",
        b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-extra-parts\r\n",
        b"x-b3-traceid: not-hex\r\nx-b3-spanid: 123\r\n",
        b"baggage: ;;;=,,key=%%%,=value\r\n",
        b"x-app-note: caf\xe9 \xff\xfe\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-\xff\xff-01\r\n",
    ];
    for extra in cases {
        let mut raw =
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
                .to_vec();
        raw.extend_from_slice(extra);
        raw.extend_from_slice(b"\r\n{}");
        let answer = exchange(&proxy, &raw, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{}: {answer}", String::from_utf8_lossy(extra));
        let trace_id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-tracegate-trace-id: "))
            .expect("every call gets a trace id")
            .trim()
            .to_string();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "00000000000000000000000000000000");
        assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "a malformed traceparent was half-trusted");
        proxy.wait_spans(&trace_id, 1).await;
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), cases.len());
    // Headers tracegate does not interpret are passed on byte for byte, valid UTF-8 or not.
    assert_eq!(requests[4].headers["baggage"].as_bytes(), b";;;=,,key=%%%,=value");
    assert_eq!(requests[5].headers["x-app-note"].as_bytes(), b"caf\xe9 \xff\xfe");
}

#[tokio::test]
async fn a_client_leaving_mid_request_or_mid_stream_cancels_the_upstream_request() {
    // The upstream reads the request head, then watches its connection: a proxy that cancels
    // closes it; one that does not keeps it open.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let streaming = String::from_utf8_lossy(&head).contains("x-case: stream");
                if streaming {
                    let start =
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    let _ = stream.write_all(start.as_bytes()).await;
                    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    // An endless slow stream; a write error or EOF means the proxy let go.
                    loop {
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            break;
                        }
                        tokio::select! {
                            read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                    }
                    let _ = closed_tx.send("stream");
                } else {
                    // Wait for the rest of a body that never comes.
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = closed_tx.send("upload");
                }
            });
        }
    });
    let proxy = Proxy::start(&provider("openai", "/openai", addr, "openai")).await;

    // Mid-request: the client sends half its body, waits until the upstream has the head, leaves.
    let mut client = TcpStream::connect(proxy.server().proxy_addr()).await.unwrap();
    let head = "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\nx-case: upload\r\n\r\n{\"model\":";
    client.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    let which = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv()).await;
    assert_eq!(which.expect("the upstream request was not cancelled within 5 s"), Some("upload"));

    // Mid-stream: the client reads the first event, then leaves.
    let (trace_id, first, body) = open_stream(&proxy.url("/openai/v1/chat/completions"), &[("x-case", "stream")]).await;
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    drop(body);
    let which = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv()).await;
    assert_eq!(which.expect("the upstream stream was not cancelled within 5 s"), Some("stream"));
    let spans = proxy.wait_spans(&trace_id, 1).await;
    assert_eq!(spans[0]["status"], "cancelled");
}
