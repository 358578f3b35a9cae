//! [`H1Body`]: a response body read straight from the upstream connection as the client's side
//! asks for it — content-length, chunked (with trailers) or until close — and the connection
//! handed back to the pool once the body ended cleanly.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::upstream::h1::codec::{parse_trailers, BodyState, Chunk, MAX_CHUNK_LINE, MAX_HEAD_BYTES, READ_RESERVE};
use crate::upstream::h1::error::{protocol, BodyError};
use crate::upstream::h1::pool::Pool;

/// The body of a response read by [`super::H1Upstream::send`], read straight from the connection.
pub struct H1Body {
    stream: Option<TcpStream>,
    /// Bytes read from the connection and not yet returned.
    buf: BytesMut,
    state: BodyState,
    /// The connection may carry another request once this body has ended.
    reusable: bool,
    pool: Option<Arc<Pool>>,
}

impl fmt::Debug for H1Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H1Body").field("state", &self.state).field("buffered", &self.buf.len()).finish()
    }
}

impl H1Body {
    pub(super) fn new(stream: TcpStream, buf: BytesMut, state: BodyState, reusable: bool, pool: Arc<Pool>) -> Self {
        H1Body { stream: Some(stream), buf, state, reusable, pool: Some(pool) }
    }

    /// Once the body has ended, hands a clean connection back to the pool.
    pub(super) fn release_if_done(&mut self) {
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
        if self.buf.is_empty() {
            // A stream waits between its chunks: it holds no read buffer while it does (the
            // chunks handed out keep their bytes alive only until they are sent).
            self.buf = BytesMut::new();
        }
        loop {
            ready!(stream.poll_read_ready(cx))?;
            if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
                self.buf.reserve(READ_RESERVE);
            }
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
