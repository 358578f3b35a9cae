//! The recorder: turns finished calls into spans and writes them, off the request path.
//!
//! The proxy hands each [`CallRecord`] to a bounded queue with `try_send`; when the queue is
//! full the record is dropped and counted (`tracegate_spans_dropped_total`), so recording never
//! blocks a request. One thread drains the queue: it decodes the captured bodies, reads model,
//! usage and finish reason with the wire-format parsers, prices the call, updates the metrics,
//! and writes spans to sled in batches, flushing at most every [`FLUSH_INTERVAL`].

pub mod metrics;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proxy::call::{CallRecord, Outcome};
use crate::model::capture::Captured;
use crate::config::{Config, Price};
use crate::record::metrics::Metrics;
use crate::model::pricing::{self, BilledTokens};
use crate::formats::providers::{self, Operation};
use crate::model::span::{Span, SpanBodies, SpanKind, SpanStatus, UsageSource};
use crate::store::{SpanWrite, Store};
use crate::formats::tokens::{self, Encoding};

/// Longest time a written span waits before it is flushed to disk.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How often old spans are deleted (also once at start).
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// How long the recorder naps between batches while spans keep arriving.
const BUSY_NAP: Duration = Duration::from_millis(2);
/// Most spans written in one sled batch.
const MAX_BATCH: usize = 512;
/// Most body bytes gathered into one batch.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most captured bytes waiting in the queue; past it, new calls are dropped and counted.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Decompressed bodies are cut at this size (a capture is bounded; its expansion must be too).
const MAX_DECODED_BYTES: u64 = 16 << 20;

enum Message {
    Call(Box<CallRecord>),
    /// Write everything queued before this message, flush, then answer.
    Flush(mpsc::Sender<()>),
    /// Spans an application sent us over OTLP: already built, only to be written.
    Ingested(Vec<SpanWrite>),
    /// An exporter delivered everything up to this segment.
    ExportCursor(&'static str, u64),
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

    /// Waits until everything queued so far is written and flushed (shutdown, tests).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// The recorder's settings, taken from the config.
#[derive(Clone)]
pub struct RecorderSettings {
    pub capture_bodies: bool,
    /// Stored bodies are cut to this size (a decompressed body can exceed its capture).
    pub max_capture_bytes: usize,
    pub pricing: BTreeMap<String, Price>,
    /// Encoding for token estimates of models outside OpenAI's families.
    pub default_encoding: Encoding,
    /// Spans older than this many days are deleted (0 keeps everything).
    pub retention_days: u32,
}

impl RecorderSettings {
    pub fn from_config(config: &Config) -> Self {
        RecorderSettings {
            capture_bodies: config.storage.capture_bodies,
            max_capture_bytes: config.storage.max_capture_bytes,
            pricing: config.pricing.clone(),
            default_encoding: config.default_encoding,
            retention_days: config.storage.retention_days,
        }
    }
}

/// Starts the recorder thread. It stops when every handle is dropped, after writing what is queued.
pub fn start(
    settings: RecorderSettings,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    capacity: usize,
) -> (RecorderHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder { settings, metrics: metrics.clone(), queued_bytes: queued_bytes.clone() };
    let join = std::thread::Builder::new()
        .name("tracegate-recorder".into())
        .spawn(move || run(rx, recorder, store))
        .expect("spawn recorder thread");
    (RecorderHandle { tx, metrics, queued_bytes }, join)
}

/// The recorder thread's state.
struct Recorder {
    settings: RecorderSettings,
    metrics: Arc<Metrics>,
    queued_bytes: Arc<AtomicUsize>,
}

fn run(rx: Receiver<Message>, recorder: Recorder, store: Arc<Store>) {
    let metrics = &recorder.metrics;
    let mut batch: Vec<SpanWrite> = Vec::with_capacity(MAX_BATCH);
    let mut waiters: Vec<mpsc::Sender<()>> = Vec::new();
    let mut cursors: Vec<(&'static str, u64)> = Vec::new();
    let mut dirty_since: Option<Instant> = None;
    let mut busy = false;
    let mut next_retention = Instant::now();
    loop {
        if recorder.settings.retention_days > 0 && Instant::now() >= next_retention {
            apply_retention(&store, &recorder);
            next_retention = Instant::now() + RETENTION_INTERVAL;
        }
        let mut disconnected = false;
        if busy {
            // Under load, nap instead of parking on the queue: senders then never pay for a
            // wake-up, and each batch gathers more spans.
            std::thread::sleep(BUSY_NAP);
        } else {
            let timeout = match dirty_since {
                Some(t) => FLUSH_INTERVAL.saturating_sub(t.elapsed()),
                None if recorder.settings.retention_days > 0 => {
                    next_retention.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
                }
                None => RETENTION_INTERVAL,
            };
            match rx.recv_timeout(timeout) {
                Ok(message) => accept(message, &recorder, &mut batch, &mut waiters, &mut cursors),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
        }
        // Drain whatever else is already queued, a batch at a time.
        busy = false;
        // Body bytes in the batch, kept as it grows (not re-summed for every message).
        let mut body_bytes = batch_bytes(&batch);
        loop {
            while batch.len() < MAX_BATCH && body_bytes < MAX_BATCH_BYTES {
                let before = batch.len();
                match rx.try_recv() {
                    Ok(message) => {
                        accept(message, &recorder, &mut batch, &mut waiters, &mut cursors);
                        body_bytes += batch_bytes(&batch[before..]);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            busy = true;
            write(&store, metrics, &mut batch);
            body_bytes = 0;
            dirty_since.get_or_insert_with(Instant::now);
        }
        for (exporter, seq) in cursors.drain(..) {
            if let Err(e) = store.set_export_cursor(exporter, seq) {
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, exporter, "cannot save the export cursor");
            }
            dirty_since.get_or_insert_with(Instant::now);
        }
        let flush_due = dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL);
        if flush_due || !waiters.is_empty() || disconnected {
            if let Err(e) = store.flush() {
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "span store flush failed");
            }
            dirty_since = None;
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        if disconnected {
            return;
        }
    }
}

fn accept(
    message: Message,
    recorder: &Recorder,
    batch: &mut Vec<SpanWrite>,
    waiters: &mut Vec<mpsc::Sender<()>>,
    cursors: &mut Vec<(&'static str, u64)>,
) {
    match message {
        Message::Call(mut record) => {
            recorder.queued_bytes.fetch_sub(record.captured_bytes(), Ordering::Relaxed);
            let write = build_span(&record, &recorder.settings);
            if let Some(reservation) = record.reservation.take() {
                let span = &write.span;
                let tokens = span.input_tokens.unwrap_or(0) + span.output_tokens.unwrap_or(0);
                reservation.settle(span.cost_usd.unwrap_or(0.0), tokens);
            }
            recorder.metrics.observe_call(&write.span);
            batch.push(write);
        }
        Message::Flush(waiter) => waiters.push(waiter),
        Message::Ingested(spans) => batch.extend(spans),
        Message::ExportCursor(exporter, seq) => cursors.push((exporter, seq)),
    }
}

/// Body bytes held by a batch.
fn batch_bytes(batch: &[SpanWrite]) -> usize {
    batch
        .iter()
        .filter_map(|w| w.bodies.as_ref())
        .map(|b| b.request_body.as_ref().map_or(0, String::len) + b.response_body.as_ref().map_or(0, String::len))
        .sum()
}

/// Deletes spans (and bodies) older than the retention period; the ledger keeps its totals.
fn apply_retention(store: &Store, recorder: &Recorder) {
    let keep = u64::from(recorder.settings.retention_days) * 86_400 * 1_000_000_000;
    let cutoff = crate::model::clock::unix_nanos().saturating_sub(keep);
    match store.delete_older_than(cutoff) {
        Ok(0) => {}
        Ok(n) => tracing::info!(spans = n, days = recorder.settings.retention_days, "retention deleted old spans"),
        Err(e) => {
            recorder.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "retention failed");
        }
    }
}

fn write(store: &Store, metrics: &Metrics, batch: &mut Vec<SpanWrite>) {
    match store.write_batch(batch) {
        Ok(()) => {
            metrics.spans_recorded.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, spans = batch.len(), "span store write failed; spans lost");
        }
    }
    batch.clear();
}

/// Builds the span (and its kept bodies) for one finished call.
pub fn build_span(record: &CallRecord, settings: &RecorderSettings) -> SpanWrite {
    let api = record.provider.api;
    let operation = providers::operation_for(api, &record.path);

    let request_bytes = record.request_body.joined(TRUNCATION_MARK.as_bytes());
    let request = providers::parse_request(api, &operation, &request_bytes);
    let response_bytes =
        decoded_response(&record.response_body, record.response_encoding.as_ref(), record.response_is_sse);
    let response = providers::parse_response(api, &operation, &response_bytes, record.response_is_sse);

    let ttft_ms = if record.response_is_sse && record.response_encoding.is_none() {
        response.first_content_end.and_then(|offset| {
            record
                .response_body
                .marks
                .iter()
                .find(|m| m.end_offset as usize >= offset)
                .map(|m| f64::from(m.elapsed_us) / 1000.0)
        })
    } else {
        None
    };

    let (status, error) = match &record.outcome {
        Outcome::Cancelled => {
            (SpanStatus::Cancelled, Some("client disconnected before the response was complete".to_string()))
        }
        Outcome::Failed(message) => (SpanStatus::Error, Some(message.clone())),
        Outcome::Completed => match record.status_code {
            Some(code) if code >= 400 => (
                SpanStatus::Error,
                Some(response.error.clone().unwrap_or_else(|| format!("upstream answered HTTP {code}"))),
            ),
            _ => match &response.error {
                Some(message) => (SpanStatus::Error, Some(message.clone())),
                None => (SpanStatus::Ok, None),
            },
        },
    };

    let model = response.model.clone().or_else(|| request.model.clone());
    let name = match request.model.as_ref().or(model.as_ref()) {
        Some(m) => format!("{} {m}", operation.as_str()),
        None => operation.as_str().to_string(),
    };

    let (input_tokens, output_tokens, usage_source, cache_read, cache_write, reasoning) = match &response.usage {
        Some(u) => (
            Some(u.input_tokens),
            Some(u.output_tokens),
            UsageSource::Reported,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
            u.reasoning_tokens,
        ),
        None => match estimate_usage(record, &operation, &request_bytes, &response, model.as_deref(), settings) {
            Some((input, output)) => (Some(input), Some(output), UsageSource::Estimated, None, None, None),
            None => (None, None, UsageSource::Missing, None, None, None),
        },
    };
    let cost_usd = match (&model, input_tokens, output_tokens) {
        (Some(m), Some(input), Some(output)) => pricing::price_for(&settings.pricing, m).map(|price| {
            pricing::cost_usd(
                price,
                BilledTokens {
                    input_tokens: input,
                    output_tokens: output,
                    cache_read_input_tokens: cache_read.unwrap_or(0),
                    cache_creation_input_tokens: cache_write.unwrap_or(0),
                },
            )
        }),
        _ => None,
    };

    let mut team = None;
    let mut user = None;
    let mut omit_bodies = false;
    let mut properties = BTreeMap::new();
    for (name, value) in &record.tracegate_headers {
        let Ok(value) = value.to_str() else { continue };
        match name.as_str() {
            "x-tracegate-team" if !value.is_empty() => team = Some(value.to_string()),
            "x-tracegate-user" if !value.is_empty() => user = Some(value.to_string()),
            "x-tracegate-omit-bodies" => omit_bodies = value.trim().eq_ignore_ascii_case("true"),
            other => {
                if let Some(prop) = other.strip_prefix("x-tracegate-property-") {
                    if !prop.is_empty() {
                        properties.insert(prop.to_string(), value.to_string());
                    }
                }
            }
        }
    }
    if let Some(matched) = &record.team_key {
        team = Some(matched.team.clone());
    }
    let session =
        record.session.as_ref().and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());

    let span = Span {
        trace_id: record.trace_id,
        span_id: record.span_id,
        parent_span_id: record.parent_span_id,
        name,
        kind: SpanKind::Llm,
        start_time_unix_nano: record.start_time_unix_nano,
        duration_ms: record.duration.as_secs_f64() * 1000.0,
        ttft_ms,
        provider: Some(record.provider.name.clone()),
        operation: Some(operation.as_str().to_string()),
        method: Some(record.method.as_str().to_string()),
        path: Some(record.path.clone()),
        status_code: record.status_code,
        status,
        request_model: request.model,
        response_model: response.model,
        stream: request.stream || record.response_is_sse,
        input_tokens,
        output_tokens,
        usage_source,
        cache_read_input_tokens: cache_read,
        cache_creation_input_tokens: cache_write,
        reasoning_tokens: reasoning,
        finish_reason: response.finish_reason,
        cost_usd,
        team,
        user,
        key_fingerprint: record.team_key.as_ref().map(|m| m.fingerprint.clone()),
        session,
        properties,
        error,
    };

    let bodies = (settings.capture_bodies && !omit_bodies).then(|| {
        let request_bytes = redact_credentials(&request_bytes);
        let (request_body, request_cut) = stored_text(&request_bytes, settings.max_capture_bytes);
        let (response_body, response_cut) = stored_text(&response_bytes, settings.max_capture_bytes);
        SpanBodies {
            request_body,
            response_body,
            truncated: request_cut
                || response_cut
                || record.request_body.truncated()
                || record.response_body.truncated(),
        }
    });
    SpanWrite { span, bodies }
}

/// Counts tokens for a call whose provider reported none: the request's input and the output
/// text that reached the client. Only calls the provider answered with success (completed, cut
/// or cancelled mid-stream) are estimated; a refused or failed call bills nothing we can know.
fn estimate_usage(
    record: &CallRecord,
    operation: &Operation,
    request_bytes: &[u8],
    response: &providers::ResponseFacts,
    model: Option<&str>,
    settings: &RecorderSettings,
) -> Option<(u64, u64)> {
    let answered = record.status_code.is_some_and(|code| (200..300).contains(&code));
    if !answered || record.request_body.truncated() {
        return None;
    }
    let encoding = tokens::encoding_for_model(model.unwrap_or(""), settings.default_encoding);
    let input = tokens::estimate_input(record.provider.api, operation, request_bytes, encoding)?;
    let output = match operation {
        Operation::Embeddings => 0,
        _ => encoding.count(&response.output_text),
    };
    Some((input, output))
}

/// The response body as the client's SDK saw it after content decoding (gzip, deflate, br).
fn decoded_response(body: &Captured, encoding: Option<&http::HeaderValue>, is_sse: bool) -> Bytes {
    let separator: &[u8] = if is_sse { b"\n\n" } else { b"\n" };
    let Some(encoding) = encoding.and_then(|e| e.to_str().ok()).map(|e| e.trim().to_ascii_lowercase()) else {
        return body.joined(separator);
    };
    // A truncated compressed body decodes only as far as its head reaches.
    let compressed = &body.head[..];
    let mut out = Vec::new();
    let result = match encoding.as_str() {
        "gzip" | "x-gzip" => {
            flate2::read::MultiGzDecoder::new(compressed).take(MAX_DECODED_BYTES).read_to_end(&mut out)
        }
        "deflate" => flate2::read::ZlibDecoder::new(compressed).take(MAX_DECODED_BYTES).read_to_end(&mut out),
        "br" => brotli_decompressor::Decompressor::new(compressed, 4096).take(MAX_DECODED_BYTES).read_to_end(&mut out),
        "identity" | "" => return body.joined(separator),
        _ => return Bytes::new(),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, encoding, "response body decoded partially");
    }
    Bytes::from(out)
}

/// JSON member names whose values are credentials, never stored.
const CREDENTIAL_FIELDS: [&str; 10] = [
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "authorization",
    "password",
    "secret",
    "client_secret",
    "access_token",
    "refresh_token",
];

/// A request body with the values of credential-named JSON members (at any depth) replaced by
/// `"[redacted]"`. Bodies without such a name are returned as they are, unparsed.
fn redact_credentials(body: &Bytes) -> Bytes {
    // A quoted, case-insensitive name anywhere in the body; no copy, no allocation.
    // One pass over the quotes; only a quote is compared against the names.
    let mentions = body.iter().enumerate().filter(|(_, b)| **b == b'"').any(|(at, _)| {
        let after = &body[at + 1..];
        CREDENTIAL_FIELDS.iter().any(|name| {
            after.len() > name.len()
                && after[name.len()] == b'"'
                && after[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        })
    });
    if !mentions {
        return body.clone();
    }
    fn scrub(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if CREDENTIAL_FIELDS.contains(&key.to_ascii_lowercase().as_str()) {
                        *v = serde_json::Value::String("[redacted]".into());
                    } else {
                        scrub(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            scrub(&mut value);
            Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
        }
        // Not JSON (or cut short) yet it names a credential: keep nothing rather than leak it.
        Err(_) => Bytes::from_static(b"[body withheld: it names a credential and could not be redacted]"),
    }
}

/// Text to store for a body (`None` when empty), cut to `limit` bytes — its head and its last
/// quarter — and whether it was cut.
fn stored_text(bytes: &[u8], limit: usize) -> (Option<String>, bool) {
    if bytes.is_empty() {
        return (None, false);
    }
    if bytes.len() <= limit {
        return (Some(String::from_utf8_lossy(bytes).into_owned()), false);
    }
    let tail = limit / 4;
    let mut text = String::from_utf8_lossy(&bytes[..limit - tail]).into_owned();
    text.push_str(TRUNCATION_MARK);
    text.push_str(&String::from_utf8_lossy(&bytes[bytes.len() - tail..]));
    (Some(text), true)
}

/// Placed where a stored body was cut.
const TRUNCATION_MARK: &str = "\n…[truncated by tracegate]…\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_bodies_are_redacted() {
        let body = Bytes::from_static(br#"{"model":"m","api_key":"sk-123","extra":{"Authorization":"Bearer x","list":[{"password":"p"}]},"max_tokens":5}"#);
        let out = String::from_utf8(redact_credentials(&body).to_vec()).unwrap();
        assert!(!out.contains("sk-123") && !out.contains("Bearer x") && !out.contains("\"p\""), "{out}");
        assert!(out.contains("\"max_tokens\":5"));
        let plain = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        assert_eq!(redact_credentials(&plain), plain, "untouched when no credential is named");
        let cut = Bytes::from_static(br#"{"api_key":"sk-1"#);
        assert!(!String::from_utf8_lossy(&redact_credentials(&cut)).contains("sk-1"));
    }
}
