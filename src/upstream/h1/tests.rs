//! The plain-HTTP client against real sockets on loopback: framing both ways, keep-alive and
//! the pool, early answers, trailers, broken upstreams.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::*;
use super::*;
use crate::config::Upstream;
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;

/// A request body of separate frames with no declared length.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.pop_front().map(|d| Ok(Frame::data(d))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

fn full(body: &'static str) -> Boxed {
    Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed_unsync()
}

/// A loopback upstream running `script` on every accepted connection; counts connections.
async fn upstream<F, Fut>(script: F) -> (H1Upstream, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(script(stream));
        }
    });
    let config: Upstream = Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
        base_path: String::new(),
    };
    (H1Upstream::new(&config, Duration::from_secs(2)), accepted)
}

/// Reads one request (head, then a Content-Length or chunked body); `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf.drain(..head_end).collect()).unwrap();
    let mut body = Vec::new();
    async fn fill(buf: &mut Vec<u8>, stream: &mut TcpStream) {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "request body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
        let len: usize = len.trim().parse().unwrap();
        while buf.len() < len {
            fill(buf, stream).await;
        }
        body = buf.drain(..len).collect();
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            while memchr::memmem::find(buf, b"\r\n").is_none() {
                fill(buf, stream).await;
            }
            let eol = memchr::memmem::find(buf, b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..eol]).unwrap(), 16).unwrap();
            while buf.len() < eol + 2 + size + 2 {
                fill(buf, stream).await;
            }
            body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
            buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Some((head, body))
}

type Script = Box<dyn Fn(TcpStream) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
/// Requests an upstream received: head and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Answers every request on a connection with `answer`, keeping what it received.
fn recording(answer: &'static str) -> (Script, Received) {
    let received = Received::default();
    let log = received.clone();
    let script: Script = Box::new(move |mut stream| {
        let log = log.clone();
        Box::pin(async move {
            let mut buf = Vec::new();
            while let Some(request) = read_request(&mut stream, &mut buf).await {
                log.lock().unwrap().push(request);
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        })
    });
    (script, received)
}

/// Answers every request on a connection with `answer`.
fn answering(answer: &'static str) -> Script {
    recording(answer).0
}

/// Answers the first request on a connection with `answer`, then closes it.
fn answering_once(answer: &'static str) -> Script {
    Box::new(move |mut stream| {
        Box::pin(async move {
            let mut buf = Vec::new();
            if read_request(&mut stream, &mut buf).await.is_some() {
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        })
    })
}

fn post(body: Boxed, length: Option<usize>) -> Request<Boxed> {
    let mut req = Request::post("http://ignored.example/v1/chat/completions?x=1").body(body).unwrap();
    if let Some(len) = length {
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    req.headers_mut().insert("x-custom", HeaderValue::from_static("kept"));
    req
}

async fn collect(response: Response<H1Body>) -> (Bytes, Option<HeaderMap>) {
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_length_framed_exchange_reuses_one_connection() {
    let (script, seen) = recording("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-up: a\r\nx-up: b\r\n\r\nhello");
    let (up, accepted) = upstream(script).await;
    for _ in 0..3 {
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        assert_eq!(response.status(), 200);
        let ups: Vec<_> = response.headers().get_all("x-up").iter().collect();
        assert_eq!(ups, ["a", "b"]);
        assert_eq!(collect(response).await.0, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one keep-alive connection carried all three");
    let (head, body) = seen.lock().unwrap()[0].clone();
    let port = up.pool.port;
    assert!(
        head.starts_with(&format!("POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(head.contains("x-custom: kept\r\n") && head.contains("content-length: 2\r\n"), "{head}");
    assert_eq!(body, b"{}");
}

#[tokio::test]
async fn a_chunked_answer_in_small_pieces_keeps_its_data_and_trailers() {
    let (up, accepted) = upstream(|mut stream| async move {
        let mut buf = Vec::new();
        while read_request(&mut stream, &mut buf).await.is_some() {
            let pieces: [&[u8]; 6] = [
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r",
                b"\nhel",
                b"lo\r\n",
                b"6\r\n world\r",
                b"\n0\r\nx-checksum: 42\r\n",
                b"\r\n",
            ];
            for piece in pieces {
                stream.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    for _ in 0..2 {
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        let (body, trailers) = collect(response).await;
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_a_length_goes_chunked() {
    let (script, seen) = recording("HTTP/1.1 204 No Content\r\n\r\n");
    let (up, _) = upstream(script).await;
    let big = Bytes::from(vec![b'x'; COALESCE_BYTES + 10]);
    for frames in
        [vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")], vec![big.clone(), Bytes::from_static(b"!")]]
    {
        let expected: Vec<u8> = frames.concat();
        let body = Frames(frames.into()).boxed_unsync();
        let response = up.send(post(body, None)).await.unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.body().is_end_stream());
        let (head, body) = seen.lock().unwrap().pop().unwrap();
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!(body, expected);
    }
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let (up, _) = upstream(answering("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")).await;
    let response = up.send(post(full("{}"), Some(2))).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(collect(response).await.0, "ok");
}

#[tokio::test]
async fn a_close_delimited_body_reads_to_the_end_and_its_connection_is_not_reused() {
    let (up, accepted) = upstream(|mut stream| async move {
        let mut buf = Vec::new();
        if read_request(&mut stream, &mut buf).await.is_some() {
            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil ").await.unwrap();
            stream.write_all(b"the end").await.unwrap();
        }
    })
    .await;
    for _ in 0..2 {
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        assert_eq!(collect(response).await.0, "until the end");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    // Answers one request per connection, then closes without saying so.
    let (up, accepted) = upstream(answering_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    for _ in 0..3 {
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        assert_eq!(collect(response).await.0, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await; // the close reaches us
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body_and_keep_the_connection() {
    let (up, accepted) = upstream(answering("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")).await;
    for _ in 0..2 {
        let req = Request::head("http://ignored.example/v1/models").body(full("")).unwrap();
        let response = up.send(req).await.unwrap();
        assert_eq!(response.headers()["content-length"], "100");
        assert!(response.body().is_end_stream());
        assert!(collect(response).await.0.is_empty());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_dropped_half_way_closes_its_connection() {
    let (up, accepted) = upstream(|mut stream| async move {
        let mut buf = Vec::new();
        while read_request(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.write_all(b"67890").await;
        }
    })
    .await;
    let mut body = up.send(post(full("{}"), Some(2))).await.unwrap().into_body();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "12345");
    drop(body);
    let response = up.send(post(full("{}"), Some(2))).await.unwrap();
    assert_eq!(collect(response).await.0, "1234567890");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn broken_answers_are_errors() {
    for (answer, expected) in [
        ("garbage\r\n\r\n", "malformed"),
        ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", "conflicting content-length"),
        ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "invalid content-length"),
    ] {
        let (up, _) = upstream(answering(answer)).await;
        let error = up.send(post(full("{}"), Some(2))).await.unwrap_err();
        assert!(matches!(error, H1Error::Protocol(_)) && error.to_string().contains(expected), "{answer:?}: {error}");
    }
    let (up, _) = upstream(|mut stream| async move {
        let mut buf = Vec::new();
        let _ = read_request(&mut stream, &mut buf).await;
    })
    .await;
    let error = up.send(post(full("{}"), Some(2))).await.unwrap_err();
    assert!(error.to_string().contains("without answering"), "{error}");

    for answer in [
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (up, _) = upstream(answering_once(answer)).await;
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        assert!(response.into_body().collect().await.is_err(), "{answer:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
        base_path: String::new(),
    };
    let up = H1Upstream::new(&config, Duration::from_secs(2));
    assert!(matches!(up.send(post(full("{}"), Some(2))).await, Err(H1Error::Connect(_))));
}

#[test]
fn the_host_header_leaves_out_port_80() {
    for (authority, host, port, header) in [
        ("example.com", "example.com", 80, "example.com"),
        ("[::1]:8000", "::1", 8000, "[::1]:8000"),
        ("a:80", "a", 80, "a"),
    ] {
        let config = Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: authority.parse().unwrap(),
            base_path: String::new(),
        };
        let up = H1Upstream::new(&config, Duration::from_secs(1));
        assert_eq!((up.pool.host.as_str(), up.pool.port, up.pool.host_header.to_str().unwrap()), (host, port, header));
    }
}

/// A request body that sends one frame, then stalls for ever.
struct Stalled(Option<Bytes>);

impl Body for Stalled {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test]
async fn an_early_answer_is_heard_during_a_stalled_upload() {
    let (up, _) = upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let body = Stalled(Some(Bytes::from_static(b"{\"model\":"))).boxed_unsync();
    let sent = tokio::time::timeout(Duration::from_secs(5), up.send(post(body, Some(1000)))).await;
    let response = sent.expect("the 401 was not read while the upload stalled").unwrap();
    assert_eq!(response.status(), 401);
    drop(response);
    assert!(up.pool.idle.lock().unwrap().is_empty(), "a connection with half a request is not reused");
}

#[tokio::test]
async fn a_large_upload_the_upstream_interrupts_still_gets_its_answer() {
    let (up, _) = upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!";
        let _ = stream.write_all(answer).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    let frames: VecDeque<Bytes> = (0..256).map(|_| Bytes::from(vec![b'x'; 64 * 1024])).collect();
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        up.send(post(Frames(frames).boxed_unsync(), Some(256 * 64 * 1024))),
    );
    let response = sent.await.expect("hung").unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(collect(response).await.0, "big!");
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_content_length_is_refused() {
    let (script, seen) = recording("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    let (up, _) = upstream(script).await;
    let smuggled = "{}GET /admin HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
    let longer = up.send(post(full(smuggled), Some(2))).await.unwrap_err();
    assert!(matches!(longer, H1Error::BodyLength("longer")), "{longer}");
    let frames = Frames(vec![Bytes::from_static(b"{}"), Bytes::from_static(smuggled.as_bytes())].into());
    assert!(matches!(up.send(post(frames.boxed_unsync(), Some(2))).await, Err(H1Error::BodyLength("longer"))));
    let shorter = Frames(vec![Bytes::from_static(b"{"), Bytes::from_static(b"}")].into());
    assert!(matches!(up.send(post(shorter.boxed_unsync(), Some(5))).await, Err(H1Error::BodyLength("shorter"))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().iter().all(|(head, _)| !head.contains("/admin")), "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn a_send_dropped_during_its_upload_leaves_no_connection_behind() {
    // Reads nothing for a while, so the upload blocks; then serves normally.
    let (up, accepted) = upstream(|mut stream| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut buf = Vec::new();
        while read_request(&mut stream, &mut buf).await.is_some() {
            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    })
    .await;
    let frames: VecDeque<Bytes> = (0..512).map(|_| Bytes::from(vec![b'x'; 64 * 1024])).collect();
    let upload = up.send(post(Frames(frames).boxed_unsync(), Some(512 * 64 * 1024)));
    assert!(tokio::time::timeout(Duration::from_millis(100), upload).await.is_err());
    assert!(up.pool.idle.lock().unwrap().is_empty());
    let response = up.send(post(full("{}"), Some(2))).await.unwrap();
    assert_eq!(collect(response).await.0, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_continue_during_the_upload_is_skipped_and_the_connection_kept() {
    let (up, accepted) = upstream(|mut stream| async move {
        let mut buf = Vec::new();
        loop {
            // Says 100 Continue as soon as the head is in, before reading the body.
            while memchr::memmem::find(&buf, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            let (_, body) = read_request(&mut stream, &mut buf).await.unwrap();
            let length = body.len().to_string();
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{length}", length.len());
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
    })
    .await;
    for _ in 0..2 {
        let frames: VecDeque<Bytes> = (0..64).map(|_| Bytes::from(vec![b'x'; 64 * 1024])).collect();
        let response = up.send(post(Frames(frames).boxed_unsync(), None)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(collect(response).await.0, (64 * 64 * 1024).to_string());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn header_values_reason_phrases_and_lengths_come_through_as_sent() {
    let (up, _) = upstream(answering(
        "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 Fine Thanks\r\nx-empty:\r\nx-sp:   spaced out  \r\ncontent-length: 2, 2\r\nx-last: z\r\n\r\nok",
    ))
    .await;
    let response = up.send(post(full("{}"), Some(2))).await.unwrap();
    let h = response.headers();
    assert_eq!(
        (&h["x-empty"], &h["x-sp"], &h["x-last"]),
        (&HeaderValue::from_static(""), &HeaderValue::from_static("spaced out"), &HeaderValue::from_static("z"))
    );
    assert!(h.get("link").is_none(), "the 103's headers are not the answer's");
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
    assert_eq!(reason.as_bytes(), b"Fine Thanks");
    assert_eq!(collect(response).await.0, "ok");

    // Chunked with a Content-Length too: decoded as chunked, and the length not passed on.
    let (up, accepted) = upstream(answering(
        "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ))
    .await;
    for _ in 0..2 {
        let response = up.send(post(full("{}"), Some(2))).await.unwrap();
        assert!(response.headers().get("content-length").is_none());
        assert!(response.extensions().get::<hyper::ext::ReasonPhrase>().is_none());
        assert_eq!(collect(response).await.0, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection framed both ways is not reused");
}

#[tokio::test]
async fn an_address_that_never_answers_gives_a_connect_timeout() {
    // A listener with a full accept queue drops further SYNs: the connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            fillers.push(stream);
        }
    }
    let config = Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
        base_path: String::new(),
    };
    let up = H1Upstream::new(&config, Duration::from_millis(300));
    let started = Instant::now();
    let result = up.send(post(full("{}"), Some(2))).await;
    assert!(matches!(result, Err(H1Error::ConnectTimeout)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the connect timeout bounds the wait");
}
