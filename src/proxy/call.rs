//! What the request path knows about one call, and how it hands that off.
//!
//! [`CallContext`] is the per-request context the proxy fills in as the request passes its
//! phases (route, trace context, upstream). When the call ends — the response body finished,
//! the upstream failed, or the client went away — the context becomes a [`CallRecord`] of raw
//! facts (ids, timings, captured bytes) and goes to the recorder with a non-blocking
//! `try_send`. Nothing here parses bodies: turning bytes into tokens and models is the
//! recorder's job, off the request path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method};

use crate::proxy::body_tee::RequestShared;
use crate::policy::budget::Reservation;
use crate::model::capture::{Capture, Captured};
use crate::config::Provider;
use crate::record::RecorderHandle;
use crate::policy::teams::TeamKeyMatch;
use crate::formats::trace_context::{SpanId, TraceId};

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The response was delivered to the client in full.
    Completed,
    /// The client went away before the response was complete.
    Cancelled,
    /// The proxy could not complete the call (upstream unreachable, timed out, body error).
    Failed(String),
}

/// The raw facts of one finished call, as handed to the recorder.
#[derive(Debug)]
pub struct CallRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub provider: Arc<Provider>,
    pub method: Method,
    /// The path sent upstream, without the query string (which may hold keys).
    pub path: String,
    pub start_time_unix_nano: u64,
    pub duration: Duration,
    pub status_code: Option<u16>,
    pub outcome: Outcome,
    pub request_body: Captured,
    pub response_body: Captured,
    pub response_is_sse: bool,
    pub response_encoding: Option<HeaderValue>,
    /// The caller's `x-tracegate-*` headers (removed from the upstream request).
    pub tracegate_headers: Vec<(HeaderName, HeaderValue)>,
    pub session: Option<HeaderValue>,
    /// The team key the caller presented, when it matched one.
    pub team_key: Option<TeamKeyMatch>,
    /// The call's claim on its team's budget, settled by the recorder.
    pub reservation: Option<Reservation>,
}

impl CallRecord {
    /// Bytes of body captured in this record (what it costs to keep it queued).
    pub fn captured_bytes(&self) -> usize {
        [&self.request_body, &self.response_body].iter().map(|c| c.head.len() + c.tail.len()).sum()
    }
}

/// Per-request context carried through the proxy's phases.
pub struct CallContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub provider: Arc<Provider>,
    pub method: Method,
    pub path: String,
    pub started: Instant,
    pub start_time_unix_nano: u64,
    pub tracegate_headers: Vec<(HeaderName, HeaderValue)>,
    pub session: Option<HeaderValue>,
    pub team_key: Option<TeamKeyMatch>,
    pub reservation: Option<Reservation>,
    /// Filled by the request body tee while the body streams upstream.
    pub request: Arc<RequestShared>,
    pub recorder: RecorderHandle,
}

/// The response side of a call, known once the upstream answered.
pub struct ResponseFacts {
    pub status_code: Option<u16>,
    pub capture: Option<Capture>,
    pub is_sse: bool,
    pub encoding: Option<HeaderValue>,
}

impl ResponseFacts {
    pub fn none() -> Self {
        ResponseFacts { status_code: None, capture: None, is_sse: false, encoding: None }
    }
}

impl CallContext {
    /// Microseconds since the call began, saturating (used to stamp chunk arrivals).
    pub fn elapsed_us(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_micros()).unwrap_or(u32::MAX)
    }

    /// Ends the call and hands it to the recorder without waiting.
    pub fn finish(self, response: ResponseFacts, outcome: Outcome) {
        let duration = self.started.elapsed();
        // The upstream connection may still hold the request body: take what arrived so far.
        let request_body = self.request.take_capture().finish();
        let record = CallRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            provider: self.provider,
            method: self.method,
            path: self.path,
            start_time_unix_nano: self.start_time_unix_nano,
            duration,
            status_code: response.status_code,
            outcome,
            request_body,
            response_body: response.capture.map(Capture::finish).unwrap_or_default(),
            response_is_sse: response.is_sse,
            response_encoding: response.encoding,
            tracegate_headers: self.tracegate_headers,
            session: self.session,
            team_key: self.team_key,
            reservation: self.reservation,
        };
        self.recorder.submit(record);
    }
}

/// Records the call as cancelled if the request future is dropped before a response exists
/// (the client hung up while we waited for the upstream).
pub struct PendingCall(Option<CallContext>);

impl PendingCall {
    pub fn new(call: CallContext) -> Self {
        PendingCall(Some(call))
    }

    pub fn get(&self) -> &CallContext {
        self.0.as_ref().expect("pending call already taken")
    }

    pub fn get_mut(&mut self) -> &mut CallContext {
        self.0.as_mut().expect("pending call already taken")
    }

    /// Takes the context out; the caller now owns finishing it.
    pub fn take(mut self) -> CallContext {
        self.0.take().expect("pending call already taken")
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.finish(ResponseFacts::none(), Outcome::Cancelled);
        }
    }
}
