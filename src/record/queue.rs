//! The one door from the request path into recording: a bounded queue, and what goes through it.
//!
//! [`CallRecord`] is the raw facts of one finished call: [`CallInfo`] (what the request path
//! learned before the upstream answered), timings, status and the captured bodies. The proxy
//! hands it over with [`RecorderHandle::submit`], a `try_send` that never blocks: a full queue
//! (or too many captured bytes waiting) drops the record and counts it
//! (`tracegate_spans_dropped_total`). Admin (OTLP ingest) and the exporters (cursors) use the
//! same queue, and so do admin's deletes, so the recorder thread stays the store's only writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::config::Provider;
use crate::model::capture::Captured;
use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{SpanStatus, SpanWrite};
use crate::policy::budget::Reservation;
use crate::policy::teams::TeamKeyMatch;
use crate::record::metrics::Metrics;
use crate::store::{Position, Selection, Store, DELETE_BATCH};

/// Most captured bytes waiting in the queue; past it, new calls are dropped and counted.
const MAX_QUEUED_BYTES: usize = 64 << 20;

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

/// What the request path learned about a call before the upstream answered: who, where,
/// when, and on whose budget. Carried by the proxy's per-request context, then by the record.
#[derive(Debug)]
pub struct CallInfo {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub provider: Arc<Provider>,
    pub method: Method,
    /// The path sent upstream, without the query string (which may hold keys).
    pub path: String,
    pub start_time_unix_nano: u64,
    /// The caller's `x-tracegate-*` headers (removed from the upstream request); the recorder
    /// stores their values (team, user, properties) on the span.
    pub tracegate_headers: Vec<(HeaderName, HeaderValue)>,
    pub session: Option<HeaderValue>,
    /// The team key the caller presented, when it matched one.
    pub team_key: Option<TeamKeyMatch>,
    /// The call's claim on its team's budget, settled by the recorder.
    pub reservation: Option<Reservation>,
}

/// The raw facts of one finished call, as handed to the recorder.
#[derive(Debug)]
pub struct CallRecord {
    pub info: CallInfo,
    pub duration: Duration,
    pub status_code: Option<u16>,
    pub outcome: Outcome,
    pub request_body: Captured,
    pub response_body: Captured,
    pub response_is_sse: bool,
    pub response_encoding: Option<HeaderValue>,
    /// Input and output tokens the response headers reported (Bedrock Invoke's
    /// `x-amzn-bedrock-*-token-count`), used when the body names none.
    pub response_token_counts: Option<(u64, u64)>,
}

impl CallRecord {
    /// Bytes of body captured in this record (what it costs to keep it queued).
    pub fn captured_bytes(&self) -> usize {
        [&self.request_body, &self.response_body].iter().map(|c| c.head.len() + c.tail.len()).sum()
    }
}

/// What travels on the queue.
pub(super) enum Message {
    Call(Box<CallRecord>),
    /// Write everything queued before this message, flush, then answer.
    Flush(mpsc::Sender<()>),
    /// Spans an application sent us over OTLP: already built, only to be written.
    Ingested(Vec<SpanWrite>),
    /// An exporter delivered everything up to this segment.
    ExportCursor(&'static str, u64),
    /// Delete the spans at these positions (admin's `DELETE`), flush, then answer how many.
    Delete(Vec<Position>, mpsc::Sender<Result<usize, String>>),
}

/// The proxy's side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct RecorderHandle {
    tx: SyncSender<Message>,
    metrics: Arc<Metrics>,
    /// Captured bytes of the records waiting in the queue.
    queued_bytes: Arc<AtomicUsize>,
}

impl RecorderHandle {
    /// Queues a finished call; never blocks. A full queue drops the record and counts it.
    pub fn submit(&self, record: CallRecord) {
        let bytes = record.captured_bytes();
        if self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.metrics.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(Message::Call(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.metrics.spans_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues ingested application spans; false when the queue is full (they are dropped and counted).
    pub fn submit_ingested(&self, spans: Vec<SpanWrite>) -> bool {
        let n = spans.len() as u64;
        match self.tx.try_send(Message::Ingested(spans)) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.spans_dropped.fetch_add(n, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records an exporter's progress durably (through the one writer). Blocks if the queue is full.
    pub fn set_export_cursor(&self, exporter: &'static str, seq: u64) {
        let _ = self.tx.send(Message::ExportCursor(exporter, seq));
    }

    /// Counts a call of a `record = false` route in `tracegate_requests_total` (nothing else of
    /// it is kept). Called on the request path: one short lock, no queue.
    pub fn count_unrecorded(&self, provider: &str, team: Option<&str>, ok: bool) {
        let status = if ok { SpanStatus::Ok } else { SpanStatus::Error };
        self.metrics.observe_unrecorded(provider, team.unwrap_or_default(), status);
    }

    /// Has the recorder delete the spans at `positions` (a batch chosen by
    /// `Store::select`) and flush; answers how many it deleted. Blocks (a blocking-pool
    /// thread's call): waits for room in the queue, then for the recorder.
    pub fn delete(&self, positions: Vec<Position>) -> Result<usize, String> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Message::Delete(positions, tx)).map_err(|_| "the recorder has stopped".to_string())?;
        rx.recv().map_err(|_| "the recorder stopped before deleting".to_string())?
    }

    /// Deletes every span `selection` names that was committed when this began, a batch
    /// (`DELETE_BATCH` positions) at a time, so calls keep being recorded between batches;
    /// answers how many it deleted once they are durable. Blocks, like [`Self::delete`].
    pub fn delete_selected(&self, store: &Store, selection: &Selection) -> Result<u64, String> {
        let (mut cursor, mut deleted) = (store.delete_start(), 0u64);
        loop {
            let (positions, next) = store.select(selection, cursor, DELETE_BATCH).map_err(|e| e.to_string())?;
            if !positions.is_empty() {
                deleted += self.delete(positions)? as u64;
            }
            match next {
                Some(next) => cursor = next,
                None => return Ok(deleted),
            }
        }
    }

    /// Waits until everything queued so far is written and flushed (shutdown, tests).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// A new queue holding at most `capacity` messages: the handle, and the recorder's end with
/// the count of captured bytes waiting (the recorder subtracts what it takes).
pub(super) fn channel(capacity: usize, metrics: Arc<Metrics>) -> (RecorderHandle, Receiver<Message>, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (RecorderHandle { tx, metrics, queued_bytes: queued_bytes.clone() }, rx, queued_bytes)
}

/// A queue with no recorder behind it, for tests of the request path: they read what the
/// proxy hands over.
#[cfg(test)]
pub(crate) struct TestQueue(Receiver<Message>);

#[cfg(test)]
impl TestQueue {
    pub(crate) fn new() -> (RecorderHandle, TestQueue) {
        let (handle, rx, _) = channel(16, Arc::new(Metrics::default()));
        (handle, TestQueue(rx))
    }

    /// The next call record queued, if any.
    pub(crate) fn next_call(&self) -> Option<CallRecord> {
        match self.0.try_recv().ok()? {
            Message::Call(record) => Some(*record),
            _ => None,
        }
    }
}
