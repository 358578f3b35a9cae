//! The recorder thread: drains the queue, turns each call into a span (`span_builder`), settles
//! its budget reservation, updates the metrics, and writes batches to the store — the store's
//! only writer. Also applies retention, and writes what admin and the exporters hand it
//! (ingested spans, exporter cursors, deletes), flushing at most every [`FLUSH_INTERVAL`].

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::model::span::SpanWrite;
use crate::record::metrics::Metrics;
use crate::record::queue::{self, CallRecord, Message, RecorderHandle};
use crate::record::settings::RecorderSettings;
use crate::record::span_builder;
use crate::store::Store;

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

/// Starts the recorder thread. It stops when every handle is dropped, after writing what is queued.
pub fn start(
    settings: RecorderSettings,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    capacity: usize,
) -> (RecorderHandle, JoinHandle<()>) {
    let (handle, rx, queued_bytes) = queue::channel(capacity, metrics.clone());
    let recorder = Recorder { settings, metrics, queued_bytes };
    let join = std::thread::Builder::new()
        .name("tracegate-recorder".into())
        .spawn(move || run(rx, recorder, store))
        .expect("spawn recorder thread");
    (handle, join)
}

/// A batch of positions to delete, and where to answer how many were.
type Delete = (Vec<crate::store::Position>, DeleteAnswer);
type DeleteAnswer = mpsc::Sender<Result<usize, String>>;

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
    let mut deletes: Vec<Delete> = Vec::new();
    let mut answers: Vec<(DeleteAnswer, Result<usize, String>)> = Vec::new();
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
                Ok(message) => accept(message, &recorder, &mut batch, &mut waiters, &mut cursors, &mut deletes),
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
                        accept(message, &recorder, &mut batch, &mut waiters, &mut cursors, &mut deletes);
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
        for (positions, answer) in deletes.drain(..) {
            let deleted = store.delete_positions(&positions).map_err(|e| {
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "deleting spans failed");
                e.to_string()
            });
            answers.push((answer, deleted));
            dirty_since.get_or_insert_with(Instant::now);
        }
        let flush_due = dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL);
        if flush_due || !waiters.is_empty() || !answers.is_empty() || disconnected {
            let flushed = store.flush();
            if let Err(e) = &flushed {
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "span store flush failed");
            }
            dirty_since = None;
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
            // A delete is answered once it is durable.
            for (answer, deleted) in answers.drain(..) {
                let deleted = match &flushed {
                    Ok(()) => deleted,
                    Err(e) => Err(format!("flushing the delete failed: {e}")),
                };
                let _ = answer.send(deleted);
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
    deletes: &mut Vec<Delete>,
) {
    match message {
        Message::Call(mut record) => {
            recorder.queued_bytes.fetch_sub(record.captured_bytes(), Ordering::Relaxed);
            let mut write = match guarded_build(&mut record, &recorder.settings) {
                Ok(write) => write,
                Err(panic) => {
                    // A body no parser expected must not stop recording: keep what is known, and
                    // leave the reservation unsettled so the team is charged its estimate.
                    recorder.metrics.recorder_panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        trace_id = %record.info.trace_id,
                        span_id = %record.info.span_id,
                        panic = %panic,
                        "building a span panicked; the call is recorded as an error span"
                    );
                    record.info.reservation = None;
                    span_builder::unreadable_span(&mut record, &recorder.settings, &panic)
                }
            };
            if let Some(reservation) = record.info.reservation.take() {
                let span = &write.span;
                let tokens = span.input_tokens.unwrap_or(0).saturating_add(span.output_tokens.unwrap_or(0));
                reservation.settle(span.cost_usd.unwrap_or(0.0), tokens);
            }
            recorder.metrics.observe_call(&write.span);
            write.span.instance.clone_from(&recorder.settings.instance);
            batch.push(write);
        }
        Message::Flush(waiter) => waiters.push(waiter),
        Message::Ingested(mut spans) => {
            for write in &mut spans {
                write.span.instance.clone_from(&recorder.settings.instance);
            }
            batch.extend(spans)
        }
        Message::ExportCursor(exporter, seq) => cursors.push((exporter, seq)),
        Message::Delete(positions, answer) => deletes.push((positions, answer)),
    }
}

/// Builds the call's span, catching a panic: the panic's message instead of the span.
fn guarded_build(record: &mut CallRecord, settings: &RecorderSettings) -> Result<SpanWrite, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| span_builder::build_span(record, settings))).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
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
