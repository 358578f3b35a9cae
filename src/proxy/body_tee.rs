//! Body wrappers that let bytes pass untouched while keeping a bounded copy.
//!
//! [`RequestTee`] wraps the client's request body on its way upstream. [`ResponseTee`] wraps
//! the upstream's response body on its way to the client: every frame is returned to hyper the
//! moment the upstream yields it (nothing is buffered or delayed), a copy goes into the
//! capture, and the call is finished exactly once — at end of stream, on an upstream body
//! error, or on drop before the end (the client disconnected: `cancelled`). Dropping the
//! response body also drops the upstream body, which cancels the upstream request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::model::capture::Capture;
use crate::proxy::call::{CallContext, RequestShared, ResponseFacts};
use crate::proxy::usage_injection::UsageStripper;
use crate::record::queue::Outcome;
use crate::upstream::{BodyError, UpstreamBody};

/// The client's request body, copied into a shared capture as it streams upstream.
pub struct RequestTee {
    inner: Incoming,
    /// Body bytes read ahead by [`RequestTee::read_ahead`], returned before anything else.
    ahead: Option<Bytes>,
    /// A non-data frame (trailers) met while reading ahead, returned after `ahead`.
    held: Option<Frame<Bytes>>,
    shared: Arc<RequestShared>,
    started: Instant,
    /// Bytes received so far, and the most allowed.
    received: u64,
    limit: u64,
}

/// The request body went past `server.max_request_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

impl RequestTee {
    pub fn new(inner: Incoming, shared: Arc<RequestShared>, started: Instant, limit: u64) -> Self {
        RequestTee { inner, ahead: None, held: None, shared, started, received: 0, limit }
    }

    /// Counts a data frame against the limit; an error once the body is too large.
    fn admit(&mut self, frame: &Frame<Bytes>) -> Result<(), BodyError> {
        self.received += frame.data_ref().map_or(0, |d| d.len() as u64);
        if self.received > self.limit {
            self.shared.too_large.store(true, Ordering::Relaxed);
            return Err(Box::new(BodyTooLarge(self.limit)));
        }
        Ok(())
    }

    /// Reads body frames before the upstream is contacted, until the body ends or `limit`
    /// bytes are in. With a small limit this is just the first frame, so that even a call
    /// whose upstream cannot be reached records what was asked (model, stream flag); a JSON
    /// request of an SDK arrives with its headers, so this waits for nothing in practice.
    pub async fn read_ahead(&mut self, limit: usize) -> Result<(), BodyError> {
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0;
        while total < limit.max(1) && !self.inner.is_end_stream() {
            match http_body_util::BodyExt::frame(&mut self.inner).await.transpose() {
                Ok(Some(frame)) => {
                    self.admit(&frame)?;
                    self.record(&frame);
                    match frame.into_data() {
                        Ok(data) => {
                            total += data.len();
                            parts.push(data);
                        }
                        Err(other) => {
                            self.held = Some(other);
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.shared.client_aborted.store(true, Ordering::Relaxed);
                    return Err(Box::new(e));
                }
            }
        }
        self.ahead = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(parts.concat().into()),
        };
        Ok(())
    }

    /// The bytes read ahead, and whether they are the whole body.
    pub fn read_ahead_bytes(&self) -> (&[u8], bool) {
        (self.ahead.as_deref().unwrap_or_default(), self.inner.is_end_stream() && self.held.is_none())
    }

    /// Replaces the bytes read ahead (used to rewrite a whole, read-ahead body).
    pub fn replace_read_ahead(&mut self, body: Bytes) {
        self.ahead = Some(body);
    }

    fn record(&self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            let elapsed = u32::try_from(self.started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.shared.capture.lock().unwrap_or_else(|p| p.into_inner()).push(data, elapsed);
        }
    }
}

impl Body for RequestTee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.ahead.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(frame) = self.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                if let Err(too_large) = self.admit(&frame) {
                    return Poll::Ready(Some(Err(too_large)));
                }
                self.record(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                self.shared.client_aborted.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(len) = self.ahead.as_ref().map(|d| d.len() as u64) {
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + len);
            }
            hint.set_lower(hint.lower() + len);
        }
        hint
    }
}

/// The upstream's response body on its way to the client; owns the call until it ends.
pub struct ResponseTee {
    inner: UpstreamBody,
    call: Option<CallContext>,
    capture: Option<Capture>,
    status_code: u16,
    is_sse: bool,
    encoding: Option<http::HeaderValue>,
    /// Bedrock Invoke's `x-amzn-bedrock-{input,output}-token-count` headers.
    token_counts: Option<(u64, u64)>,
    idle_timeout: Duration,
    /// Armed the first time the upstream makes us wait; reset by every frame.
    idle: Option<Pin<Box<Sleep>>>,
    /// Undoes an injected `include_usage` in what the client receives.
    stripper: Option<UsageStripper>,
    /// The upstream's body failed: the error, held back until [`CUT_DELAY`] has passed.
    cut: Option<(BodyError, Pin<Box<Sleep>>)>,
}

/// How long an upstream body error is held back before the client's response is cut. hyper's
/// server drops what it has buffered and not yet written when a body fails; a body that
/// answers `Pending` first lets it write out every frame already relayed (the frames that came
/// in the same read as the upstream's end).
const CUT_DELAY: Duration = Duration::from_millis(20);

/// The upstream went quiet for longer than the provider's idle timeout.
#[derive(Debug)]
struct IdleTimeout(Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream sent nothing for {} s (idle timeout)", self.0.as_secs_f64())
    }
}

impl std::error::Error for IdleTimeout {}

impl ResponseTee {
    pub fn new(
        inner: UpstreamBody,
        call: CallContext,
        capture: Capture,
        status_code: u16,
        is_sse: bool,
        encoding: Option<http::HeaderValue>,
    ) -> Self {
        let idle_timeout = call.info.provider.idle_timeout;
        ResponseTee {
            inner,
            call: Some(call),
            capture: Some(capture),
            status_code,
            is_sse,
            encoding,
            token_counts: None,
            idle_timeout,
            idle: None,
            stripper: None,
            cut: None,
        }
    }

    /// The token counts the response's headers reported (Bedrock Invoke).
    pub fn with_token_counts(mut self, counts: Option<(u64, u64)>) -> Self {
        self.token_counts = counts;
        self
    }

    /// Strips what an injected `include_usage` adds to the stream before the client sees it.
    pub fn strip_injected_usage(mut self) -> Self {
        self.stripper = Some(UsageStripper::default());
        self
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(call) = self.call.take() {
            let facts = ResponseFacts {
                status_code: Some(self.status_code),
                capture: self.capture.take(),
                is_sse: self.is_sse,
                encoding: self.encoding.take(),
                token_counts: self.token_counts,
            };
            call.finish(facts, outcome);
        }
    }
}

impl Body for ResponseTee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some((_, delay)) = &mut this.cut {
            ready!(delay.as_mut().poll(cx));
            return Poll::Ready(this.cut.take().map(|(error, _)| Err(error)));
        }
        loop {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let Poll::Ready(frame) = polled else {
                let timeout = this.idle_timeout;
                let idle = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    let error = IdleTimeout(timeout);
                    this.finish(Outcome::Failed(error.to_string()));
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                return Poll::Pending;
            };
            if let Some(idle) = &mut this.idle {
                idle.as_mut().reset(tokio::time::Instant::now() + this.idle_timeout);
            }
            return match frame {
                Some(Ok(frame)) => {
                    if let (Some(data), Some(call), Some(capture)) = (frame.data_ref(), &this.call, &mut this.capture) {
                        capture.push(data, call.elapsed_us());
                    }
                    let at_end = this.inner.is_end_stream();
                    let frame = match (&mut this.stripper, frame.into_data()) {
                        (Some(stripper), Ok(data)) => {
                            let mut out = stripper.push(&data);
                            if at_end {
                                out = [out, stripper.finish()].concat().into();
                            }
                            if out.is_empty() && !at_end {
                                continue; // the chunk held only what the injection added
                            }
                            Frame::data(out)
                        }
                        (_, Ok(data)) => Frame::data(data),
                        (_, Err(other)) => other,
                    };
                    if at_end {
                        this.finish(Outcome::Completed);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(err)) => {
                    this.finish(Outcome::Failed(format!("upstream body error: {err}")));
                    // Everything relayed so far reaches the client first; then it is cut.
                    let mut delay = Box::pin(tokio::time::sleep(CUT_DELAY));
                    if delay.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(err)));
                    }
                    this.cut = Some((err, delay));
                    Poll::Pending
                }
                None => {
                    this.finish(Outcome::Completed);
                    match this.stripper.as_mut().map(UsageStripper::finish).filter(|rest| !rest.is_empty()) {
                        Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                        None => Poll::Ready(None),
                    }
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut.is_none() && self.inner.is_end_stream() && self.stripper.as_ref().is_none_or(UsageStripper::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        if self.stripper.is_some() {
            return SizeHint::default(); // the stripped length is not known ahead
        }
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for ResponseTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseTee").field("status_code", &self.status_code).field("is_sse", &self.is_sse).finish()
    }
}

impl Drop for ResponseTee {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled: it still completed.
        let outcome = if self.inner.is_end_stream() { Outcome::Completed } else { Outcome::Cancelled };
        self.finish(outcome);
    }
}
