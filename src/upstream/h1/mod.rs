//! A lean HTTP/1.1 client for plain `http://` upstreams (local model servers, `mock-llm`).
//!
//! hyper's pooled client runs every upstream connection as a task of its own, and each request,
//! response head and body chunk crosses a channel between that task and the request's task. Here
//! the request's own task does the I/O: it takes a keep-alive connection from the upstream's
//! pool, writes the request, reads the response head, and the returned [`H1Body`] reads the body
//! straight from the socket as the client's side asks for it. The connection goes back to the
//! pool once the body has been read to its end and the connection can carry another request;
//! dropped half-way, it is closed, which is what cancels the upstream request.
//!
//! HTTPS (and so HTTP/2) upstreams keep using hyper's client (`upstream.rs`).

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Upstream;

/// Errors a relayed body can end with (a request body fed to [`H1Upstream::send`], an
/// [`H1Body`]).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are checked for expiry and for being closed by the upstream.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// TCP keep-alive probes start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The longest response head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 400 * 1024;
/// The most response headers (or trailers) accepted.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Free space made in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;
/// Body data up to this size is copied behind the request head, so both go in one write.
const COALESCE_BYTES: usize = 64 * 1024;

/// A failed upstream exchange.
#[derive(Debug)]
pub enum H1Error {
    /// Resolving the host or connecting failed.
    Connect(io::Error),
    /// Connecting took longer than the provider's connect timeout.
    ConnectTimeout,
    /// The request body ended with an error (the client broke off, or the body was too large).
    RequestBody(BodyError),
    /// The connection failed while the request was sent or the answer read.
    Io(io::Error),
    /// The upstream's answer was not valid HTTP/1.1.
    Protocol(&'static str),
    /// The request body was longer or shorter than its `content-length`, or that was invalid.
    BodyLength(&'static str),
}

impl fmt::Display for H1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            H1Error::Connect(e) => write!(f, "connect failed: {e}"),
            H1Error::ConnectTimeout => f.write_str("connect timeout"),
            H1Error::RequestBody(e) => write!(f, "request body failed: {e}"),
            H1Error::Io(e) => write!(f, "connection failed: {e}"),
            H1Error::Protocol(what) => write!(f, "invalid response: {what}"),
            H1Error::BodyLength(what) => write!(f, "request body {what} than its content-length"),
        }
    }
}

impl std::error::Error for H1Error {}

/// One plain-HTTP upstream: where it is, and its pool of idle keep-alive connections.
#[derive(Clone)]
pub struct H1Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    /// Host to resolve (an IPv6 literal without its brackets) and port.
    host: String,
    port: u16,
    /// The `Host` header sent: the authority, without `:80`.
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle: Mutex<Vec<IdleConnection>>,
    sweeper_started: AtomicBool,
}

struct IdleConnection {
    stream: TcpStream,
    since: Instant,
}

impl H1Upstream {
    /// The client for an `http://` upstream.
    pub fn new(upstream: &Upstream, connect_timeout: Duration) -> Self {
        let authority = &upstream.authority;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let shown = if port == 80 { authority.host().to_owned() } else { format!("{}:{port}", authority.host()) };
        let host_header = HeaderValue::from_str(&shown).expect("a parsed authority is a valid header value");
        H1Upstream {
            shared: Arc::new(Shared {
                host,
                port,
                host_header,
                connect_timeout,
                idle: Mutex::new(Vec::new()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (its URI's path and query; the host is this upstream's) and returns the
    /// response once its head has arrived; the body streams from the connection.
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<H1Body>, H1Error>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        let (parts, mut body) = req.into_parts();
        let mut head = BytesMut::with_capacity(1024);
        let mut framing =
            encode_head(&mut head, &parts.method, &parts.uri, &parts.headers, &self.shared.host_header, &body)?;

        // The first body frame (the proxy has read it ahead) rides in the same write as the head.
        let mut body_done = framing == RequestFraming::Empty || body.is_end_stream();
        let mut held = None;
        if !body_done {
            match next_frame(&mut body).await? {
                Some(frame) => match frame.into_data() {
                    Ok(data) if data.len() <= COALESCE_BYTES => framing.put(&mut head, &data)?,
                    Ok(data) => held = Some(data),
                    Err(_trailers) => {}
                },
                None => {
                    framing.finish(&mut head)?;
                    body_done = true;
                }
            }
            if !body_done && held.is_none() && body.is_end_stream() {
                framing.finish(&mut head)?;
                body_done = true;
            }
        }
        let first_write = head.freeze();

        let (mut stream, reused) = match self.shared.take_idle() {
            Some(stream) => (stream, true),
            None => (self.shared.connect().await?, false),
        };
        if let Err(error) = stream.write_all(&first_write).await {
            // A pooled connection the upstream closed just now: once more on a new one. Safe:
            // the upstream cannot have read a whole request, and the rest of the body has not
            // been taken from the client yet.
            if !reused {
                return Err(H1Error::Io(error));
            }
            stream = self.shared.connect().await?;
            stream.write_all(&first_write).await.map_err(H1Error::Io)?;
        }

        let mut buf = BytesMut::with_capacity(READ_RESERVE);
        let mut request_sent = true;
        let head = if body_done {
            read_head(&mut stream, &mut buf).await?
        } else {
            // The answer is read while the rest of the body is sent: an upstream that refuses
            // early (401, 413) is heard at once, not after a slow upload (RFC 9112 §9.5).
            let (mut reader, mut writer) = stream.split();
            let upload = stream_body(&mut writer, held, &mut body, &mut framing);
            let answer = read_head(&mut reader, &mut buf);
            tokio::pin!(upload, answer);
            tokio::select! {
                biased;
                sent = &mut upload => {
                    // A write that fails means the upstream stopped reading: it may have
                    // answered already (413, 400), so its answer is read before giving up.
                    request_sent = sent?;
                    answer.await?
                }
                head = &mut answer => {
                    // Answered before the whole body went out: the rest is not sent, and the
                    // connection cannot carry another request.
                    request_sent = false;
                    head?
                }
            }
        };
        let no_body = parts.method == Method::HEAD
            || head.status.is_informational()
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        let mut headers = head.headers;
        let (state, framed) = if no_body { (BodyState::Length(0), true) } else { response_framing(&mut headers)? };
        let reusable = request_sent
            && framed
            && head.version == Version::HTTP_11
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && !wants_close(&headers);
        let mut response =
            Response::new(H1Body { stream: Some(stream), buf, state, reusable, pool: Some(self.shared.clone()) });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers;
        if let Some(reason) = head.reason {
            response.extensions_mut().insert(reason);
        }
        response.body_mut().release_if_done();
        Ok(response)
    }
}

impl Shared {
    /// A pooled connection still open on the upstream's side, if there is one.
    fn take_idle(&self) -> Option<TcpStream> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if idle.usable() {
                return Some(idle.stream);
            }
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    fn put_idle(self: &Arc<Self>, stream: TcpStream) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(IdleConnection { stream, since: Instant::now() });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Connects to the first address of the host that answers. Like hyper's connector, the
    /// connect timeout is shared out: an address that swallows packets gets its part of the
    /// time left, and the next address still gets a chance.
    async fn connect(&self) -> Result<TcpStream, H1Error> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addresses: Vec<std::net::SocketAddr> =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host((self.host.as_str(), self.port))).await {
                Err(_) => return Err(H1Error::ConnectTimeout),
                Ok(Err(e)) => return Err(H1Error::Connect(e)),
                Ok(Ok(found)) => found.collect(),
            };
        let mut last_error = H1Error::Connect(io::Error::new(io::ErrorKind::NotFound, "the host has no address"));
        for (tried, address) in addresses.iter().enumerate() {
            let share =
                deadline.saturating_duration_since(tokio::time::Instant::now()) / (addresses.len() - tried) as u32;
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    // Both only tune the socket; a failure leaves a working connection.
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok(stream);
                }
                Ok(Err(e)) => last_error = H1Error::Connect(e),
                Err(_) => last_error = H1Error::ConnectTimeout,
            }
        }
        Err(last_error)
    }
}

/// Closes idle connections that expired or that the upstream closed, until the pool is gone.
async fn sweep(pool: Weak<Shared>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(IdleConnection::usable);
    }
}

impl IdleConnection {
    /// Not idle too long, and the peer has neither closed nor sent anything unasked. When
    /// tokio already knows the socket has nothing to read, the check costs no system call.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.since.elapsed() < IDLE_TIMEOUT
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RequestFraming {
    /// No body.
    Empty,
    /// A declared `content-length`, of which this many bytes are still to come.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

impl RequestFraming {
    /// Checks that `len` more bytes fit a declared length: bytes past it would be read by the
    /// upstream as the start of another request.
    fn admit(&mut self, len: usize) -> Result<(), H1Error> {
        match self {
            RequestFraming::Length(remaining) => {
                *remaining = remaining.checked_sub(len as u64).ok_or(H1Error::BodyLength("longer"))?;
                Ok(())
            }
            RequestFraming::Empty if len > 0 => Err(H1Error::BodyLength("longer")),
            _ => Ok(()),
        }
    }

    /// Appends one piece of body data, framed.
    fn put(&mut self, out: &mut BytesMut, data: &[u8]) -> Result<(), H1Error> {
        self.admit(data.len())?;
        match self {
            RequestFraming::Chunked if !data.is_empty() => {
                out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
            RequestFraming::Length(_) => out.put_slice(data),
            RequestFraming::Chunked | RequestFraming::Empty => {}
        }
        Ok(())
    }

    /// Appends the end of the body; a body shorter than its declared length is refused (the
    /// upstream would wait for the rest).
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), H1Error> {
        match self {
            RequestFraming::Chunked => out.put_slice(b"0\r\n\r\n"),
            RequestFraming::Length(remaining) if *remaining > 0 => return Err(H1Error::BodyLength("shorter")),
            _ => {}
        }
        Ok(())
    }
}

/// Writes the request line and headers; returns how the body will be framed.
fn encode_head(
    out: &mut BytesMut,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    host: &HeaderValue,
    body: &impl Body,
) -> Result<RequestFraming, H1Error> {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(host.as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::HOST || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    let framing = if let Some(declared) = declared {
        RequestFraming::Length(declared.ok_or(H1Error::BodyLength("invalid"))?)
    } else if body.is_end_stream() {
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.put_slice(b"\r\n");
    Ok(framing)
}

async fn next_frame<B>(body: &mut B) -> Result<Option<Frame<Bytes>>, H1Error>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await.transpose().map_err(H1Error::RequestBody)
}

/// Sends the rest of the request body, starting with `held` data. `Ok(false)` when the
/// upstream stopped reading it.
async fn stream_body<B, W>(
    stream: &mut W,
    mut held: Option<Bytes>,
    body: &mut B,
    framing: &mut RequestFraming,
) -> Result<bool, H1Error>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut piece = BytesMut::new();
    loop {
        piece.clear();
        let frame = match held.take() {
            Some(data) => Some(Frame::data(data)),
            None => next_frame(body).await?,
        };
        let ended = match frame {
            Some(frame) => {
                // Trailers of a client's chunked body are not forwarded; the proxy drops the
                // `Trailer` header that would announce them (hyper's client then sends none either).
                if let Ok(data) = frame.into_data() {
                    if matches!(framing, RequestFraming::Length(_)) {
                        framing.admit(data.len())?;
                        if stream.write_all(&data).await.is_err() {
                            return Ok(false);
                        }
                    } else {
                        framing.put(&mut piece, &data)?;
                    }
                }
                body.is_end_stream()
            }
            None => true,
        };
        if ended {
            framing.finish(&mut piece)?;
        }
        if !piece.is_empty() && stream.write_all(&piece).await.is_err() {
            return Ok(false);
        }
        if ended {
            return Ok(true);
        }
    }
}

/// A parsed response head.
struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The upstream's reason phrase when it is not the standard one, for the client to see.
    reason: Option<hyper::ext::ReasonPhrase>,
}

/// Reads until a final (non-1xx, or 101) response head is complete; body bytes that came
/// with it stay in `buf`.
async fn read_head<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut BytesMut) -> Result<ResponseHead, H1Error> {
    loop {
        if let Some(head) = parse_head(buf)? {
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue; // 100 Continue, 103 Early Hints: the final answer follows
            }
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(H1Error::Protocol("response head too large"));
        }
        buf.reserve(READ_RESERVE);
        if stream.read_buf(buf).await.map_err(H1Error::Io)? == 0 {
            let what = if buf.is_empty() {
                "the upstream closed the connection without answering"
            } else {
                "the upstream closed the connection inside the response head"
            };
            return Err(H1Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
        }
    }
}

/// Parses a complete head off the front of `buf`, or `None` if more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Protocol("too many headers")),
        Err(_) => return Err(H1Error::Protocol("malformed status line or header")),
    };
    let status =
        StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| H1Error::Protocol("invalid status code"))?;
    let version = if parsed.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    // Header values are slices of the head's bytes, not copies.
    // (name start, name length, value start, value length) in the head; the head is under
    // MAX_HEAD_BYTES plus one read, so u32 holds them.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = (offset(h.name.as_bytes()), h.name.len() as u32, offset(h.value), h.value.len() as u32);
    }
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()).ok());
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let (name_at, name_len, value_at, value_len) =
            (name_at as usize, name_len as usize, value_at as usize, value_len as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| H1Error::Protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| H1Error::Protocol("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead { status, version, headers, reason }))
}

/// How the response body is delimited (RFC 9112 §6.3), and whether that leaves the connection
/// reusable.
fn response_framing(headers: &mut HeaderMap) -> Result<(BodyState, bool), H1Error> {
    if let Some(last) = headers.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        // With a Content-Length as well, the message was framed by a confused sender: read it
        // by its transfer coding, do not pass the length on (RFC 9112 §6.3), and do not trust
        // the connection afterwards.
        let clean = headers.remove(header::CONTENT_LENGTH).is_none();
        return Ok(if chunked { (BodyState::Chunked(Chunk::Size), clean) } else { (BodyState::UntilClose, false) });
    }
    let mut length = None;
    // Repeated values (also as a list, `5, 5`) are fine as long as they agree (RFC 9110 §8.6).
    let values = headers.get_all(header::CONTENT_LENGTH).iter().flat_map(|v| v.to_str().unwrap_or("x").split(','));
    for value in values {
        let value = value.trim();
        let parsed = Some(value)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(H1Error::Protocol("invalid content-length"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(H1Error::Protocol("conflicting content-length values"));
        }
        length = Some(parsed);
    }
    Ok(match length {
        Some(n) => (BodyState::Length(n), true),
        None => (BodyState::UntilClose, false),
    })
}

/// Whether the upstream's `Connection` header ends the connection after this response.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Where reading the response body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// This many bytes remain.
    Length(u64),
    /// Chunked: where in the chunk grammar.
    Chunked(Chunk),
    /// Everything until the upstream closes.
    UntilClose,
    /// The body has ended.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers,
}

/// The body of a response read by [`H1Upstream::send`], read straight from the connection.
pub struct H1Body {
    stream: Option<TcpStream>,
    /// Bytes read from the connection and not yet returned.
    buf: BytesMut,
    state: BodyState,
    /// The connection may carry another request once this body has ended.
    reusable: bool,
    pool: Option<Arc<Shared>>,
}

impl fmt::Debug for H1Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H1Body").field("state", &self.state).field("buffered", &self.buf.len()).finish()
    }
}

impl H1Body {
    /// Once the body has ended, hands a clean connection back to the pool.
    fn release_if_done(&mut self) {
        if self.state == BodyState::Length(0) {
            self.state = BodyState::Done;
        }
        if self.state != BodyState::Done {
            return;
        }
        let (Some(stream), Some(pool)) = (self.stream.take(), self.pool.take()) else { return };
        // Bytes after the end of the body are a protocol error: that connection is not reused.
        if self.reusable && self.buf.is_empty() {
            pool.put_idle(stream);
        }
    }

    /// Reads more bytes into `buf`; `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = &self.stream else { return Poll::Ready(Ok(0)) };
        if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
            self.buf.reserve(READ_RESERVE);
        }
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Reads more, failing on an early end of the connection.
    fn poll_fill_or_fail(&mut self, cx: &mut Context<'_>, what: &'static str) -> Poll<Result<(), BodyError>> {
        match ready!(self.poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(Box::new(io::Error::new(io::ErrorKind::UnexpectedEof, what)))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(Box::new(e))),
        }
    }

    /// Takes up to `remaining` buffered bytes as a data frame.
    fn take_data(&mut self, remaining: u64) -> Bytes {
        let n = self.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        self.buf.split_to(n).freeze()
    }

    /// One step of chunked decoding: `Some` when there is something to return.
    fn poll_chunked(&mut self, cx: &mut Context<'_>, chunk: Chunk) -> Poll<Result<Option<Frame<Bytes>>, BodyError>> {
        match chunk {
            Chunk::Size => {
                let Some(eol) = memchr::memmem::find(&self.buf, b"\r\n") else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Err(protocol("chunk size line too long")));
                    }
                    ready!(self.poll_fill_or_fail(cx, "upstream closed the connection inside a chunked body"))?;
                    return Poll::Ready(Ok(None));
                };
                let line = &self.buf[..eol];
                let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                let digits = std::str::from_utf8(digits).unwrap_or("").trim_matches([' ', '\t']);
                let size = u64::from_str_radix(digits, 16).map_err(|_| protocol("invalid chunk size"))?;
                if digits.is_empty() || digits.starts_with('+') {
                    return Poll::Ready(Err(protocol("invalid chunk size")));
                }
                self.buf.advance(eol + 2);
                self.state = BodyState::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                Poll::Ready(Ok(None))
            }
            Chunk::Data(remaining) => {
                if self.buf.is_empty() {
                    ready!(self.poll_fill_or_fail(cx, "upstream closed the connection inside a chunk"))?;
                }
                let data = self.take_data(remaining);
                let left = remaining - data.len() as u64;
                self.state = BodyState::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                Poll::Ready(Ok(Some(Frame::data(data))))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    ready!(self.poll_fill_or_fail(cx, "upstream closed the connection inside a chunked body"))?;
                    return Poll::Ready(Ok(None));
                }
                if &self.buf[..2] != b"\r\n" {
                    return Poll::Ready(Err(protocol("chunk data not followed by CRLF")));
                }
                self.buf.advance(2);
                self.state = BodyState::Chunked(Chunk::Size);
                Poll::Ready(Ok(None))
            }
            Chunk::Trailers => {
                let end = if self.buf.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|at| at + 4)
                };
                let Some(end) = end else {
                    if self.buf.len() > MAX_HEAD_BYTES {
                        return Poll::Ready(Err(protocol("trailers too large")));
                    }
                    ready!(self.poll_fill_or_fail(cx, "upstream closed the connection inside the trailers"))?;
                    return Poll::Ready(Ok(None));
                };
                let section = self.buf.split_to(end).freeze();
                self.state = BodyState::Done;
                self.release_if_done();
                Poll::Ready(Ok(parse_trailers(&section).map(Frame::trailers)))
            }
        }
    }
}

fn protocol(what: &'static str) -> BodyError {
    Box::new(H1Error::Protocol(what))
}

/// The trailer fields of a chunked body's end (`section` ends with the empty line); `None`
/// when there are none or they do not parse (they are then dropped, the body is still whole).
fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    if section.len() <= 2 {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots) else { return None };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        {
            trailers.append(name, value);
        }
    }
    Some(trailers)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(0) => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                BodyState::Length(remaining) => {
                    if this.buf.is_empty() {
                        if let Err(e) = ready!(
                            this.poll_fill_or_fail(cx, "upstream closed the connection before the end of the body")
                        ) {
                            this.state = BodyState::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    let data = this.take_data(remaining);
                    this.state = BodyState::Length(remaining - data.len() as u64);
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::UntilClose => {
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                    }
                    match ready!(this.poll_fill(cx)) {
                        Ok(0) => {
                            this.state = BodyState::Done;
                            this.stream = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            this.state = BodyState::Done;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
                BodyState::Chunked(chunk) => match ready!(this.poll_chunked(cx, chunk)) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) if this.state == BodyState::Done => return Poll::Ready(None),
                    Ok(None) => continue,
                    Err(e) => {
                        this.state = BodyState::Done;
                        this.stream = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let port = up.shared.port;
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
            assert!(
                matches!(error, H1Error::Protocol(_)) && error.to_string().contains(expected),
                "{answer:?}: {error}"
            );
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
            assert_eq!(
                (up.shared.host.as_str(), up.shared.port, up.shared.host_header.to_str().unwrap()),
                (host, port, header)
            );
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
        assert!(up.shared.idle.lock().unwrap().is_empty(), "a connection with half a request is not reused");
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
        assert!(up.shared.idle.lock().unwrap().is_empty());
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
}
