//! What the request path knows about one call while it is in flight, and how it hands it off.
//!
//! [`CallContext`] is the per-request context the phases fill in: the [`CallInfo`] the record
//! will carry (ids, provider, path, team, reservation), when the call started, and the
//! [`RequestShared`] state that the request body tee fills as the body streams upstream. When
//! the call ends — the response body finished, the upstream failed, or the client went away —
//! [`CallContext::finish`] turns it into a [`CallRecord`] and queues it without waiting.
//! Nothing here parses bodies: that is the recorder's job, off the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderValue;

use crate::model::capture::Capture;
use crate::record::queue::{CallInfo, CallRecord, Outcome, RecorderHandle};

/// What the request side of a call shares with the call: the capture, and whether the
/// client broke off its upload (so a failed call is blamed on the client, not the upstream).
#[derive(Debug)]
pub struct RequestShared {
    pub capture: Mutex<Capture>,
    pub client_aborted: AtomicBool,
    /// The body went past `server.max_request_bytes` and was cut off.
    pub too_large: AtomicBool,
}

impl RequestShared {
    pub fn new(capture: Capture) -> Arc<Self> {
        Arc::new(RequestShared {
            capture: Mutex::new(capture),
            client_aborted: AtomicBool::new(false),
            too_large: AtomicBool::new(false),
        })
    }

    pub fn client_aborted(&self) -> bool {
        self.client_aborted.load(Ordering::Relaxed)
    }

    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    /// Takes the capture out (leaving an empty one).
    pub fn take_capture(&self) -> Capture {
        let mut guard = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, Capture::new(0, None))
    }
}

/// Per-request context carried through the proxy's phases.
pub struct CallContext {
    pub info: CallInfo,
    pub started: Instant,
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
    /// Token counts from the response headers (Bedrock Invoke).
    pub token_counts: Option<(u64, u64)>,
}

impl ResponseFacts {
    pub fn none() -> Self {
        ResponseFacts { status_code: None, capture: None, is_sse: false, encoding: None, token_counts: None }
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
            info: self.info,
            duration,
            status_code: response.status_code,
            outcome,
            request_body,
            response_body: response.capture.map(Capture::finish).unwrap_or_default(),
            response_is_sse: response.is_sse,
            response_encoding: response.encoding,
            response_token_counts: response.token_counts,
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
