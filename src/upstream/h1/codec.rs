//! HTTP/1.1 on the wire, both ways: a request's head and body framing (content-length or
//! chunked, the first body bytes coalesced with the head), and a response's head, framing
//! (RFC 9112 §6.3) and trailers. Reading a body frame by frame is `body`'s.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::upstream::h1::error::{BodyError, H1Error};

/// The longest response head (status line and headers) accepted.
pub(super) const MAX_HEAD_BYTES: usize = 400 * 1024;
/// The most response headers (or trailers) accepted.
pub(super) const MAX_HEADERS: usize = 128;
/// The longest chunk-size line accepted in a chunked body.
pub(super) const MAX_CHUNK_LINE: usize = 1024;
/// Free space made in the read buffer before each read.
pub(super) const READ_RESERVE: usize = 16 * 1024;
/// Body data up to this size is copied behind the request head, so both go in one write.
pub(super) const COALESCE_BYTES: usize = 64 * 1024;

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum RequestFraming {
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
    pub(super) fn admit(&mut self, len: usize) -> Result<(), H1Error> {
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
    pub(super) fn put(&mut self, out: &mut BytesMut, data: &[u8]) -> Result<(), H1Error> {
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
    pub(super) fn finish(&mut self, out: &mut BytesMut) -> Result<(), H1Error> {
        match self {
            RequestFraming::Chunked => out.put_slice(b"0\r\n\r\n"),
            RequestFraming::Length(remaining) if *remaining > 0 => return Err(H1Error::BodyLength("shorter")),
            _ => {}
        }
        Ok(())
    }
}

/// Writes the request line and headers; returns how the body will be framed.
pub(super) fn encode_head(
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

pub(super) async fn next_frame<B>(body: &mut B) -> Result<Option<Frame<Bytes>>, H1Error>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await.transpose().map_err(H1Error::RequestBody)
}

/// Sends the rest of the request body, starting with `held` data. `Ok(false)` when the
/// upstream stopped reading it.
pub(super) async fn stream_body<B, W>(
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
pub(super) struct ResponseHead {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    /// The upstream's reason phrase when it is not the standard one, for the client to see.
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
}

/// Reads until a final (non-1xx, or 101) response head is complete; body bytes that came
/// with it stay in `buf`.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> Result<ResponseHead, H1Error> {
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
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
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
pub(super) fn response_framing(headers: &mut HeaderMap) -> Result<(BodyState, bool), H1Error> {
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
pub(super) fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Where reading the response body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyState {
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
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers,
}

/// The trailer fields of a chunked body's end (`section` ends with the empty line); `None`
/// when there are none or they do not parse (they are then dropped, the body is still whole).
pub(super) fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
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
