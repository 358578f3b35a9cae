//! The span store: an embedded sled database.
//!
//! Trees and keys (all integers big-endian so byte order is time order):
//! - `spans`:  trace_id(16) ‖ start_ns(8) ‖ span_id(8) → Span JSON. A trace's spans are one
//!   contiguous, start-ordered key range.
//! - `bodies`: trace_id(16) ‖ span_id(8) → SpanBodies JSON, kept apart so listings never read them.
//! - `traces`: trace_id(16) → TraceSummary JSON, folded forward as spans arrive.
//! - `traces_by_time`: start_ns(8) ‖ trace_id(16) → (), the newest-first listing index.
//!
//! Only the recorder thread writes (one writer: sled 0.34 must not see concurrent flushes);
//! the admin API reads concurrently.

use std::collections::HashMap;
use std::path::Path;

use crate::span::{Span, SpanBodies, SpanStatus, TraceSummary};
use crate::trace_context::{SpanId, TraceId};

/// How many `traces_by_time` entries a filtered listing scans at most before it stops.
const MAX_LISTING_SCAN: usize = 100_000;

pub struct Store {
    db: sled::Db,
    spans: sled::Tree,
    bodies: sled::Tree,
    traces: sled::Tree,
    traces_by_time: sled::Tree,
}

#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "store: {e}"),
            StoreError::Corrupt(m) => write!(f, "store: corrupt record: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

/// A span ready to be written, with its bodies when they are kept.
pub struct SpanWrite {
    pub span: Span,
    pub bodies: Option<SpanBodies>,
}

/// Filters of the trace listing.
#[derive(Debug, Default, Clone)]
pub struct TraceFilter {
    pub team: Option<String>,
    pub model: Option<String>,
    pub status: Option<SpanStatus>,
    /// Only traces that started at or after this time.
    pub since_unix_nano: Option<u64>,
    /// Only traces that started before this time.
    pub until_unix_nano: Option<u64>,
}

impl TraceFilter {
    fn matches(&self, s: &TraceSummary) -> bool {
        self.team.as_ref().is_none_or(|t| s.teams.contains(t))
            && self.model.as_ref().is_none_or(|m| s.models.iter().any(|x| x == m))
            && self.status.is_none_or(|st| s.status == st)
            && self.since_unix_nano.is_none_or(|t| s.start_time_unix_nano >= t)
            && self.until_unix_nano.is_none_or(|t| s.start_time_unix_nano < t)
    }
}

fn span_key(trace_id: &TraceId, start: u64, span_id: &SpanId) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&trace_id.0);
    key[16..24].copy_from_slice(&start.to_be_bytes());
    key[24..].copy_from_slice(&span_id.0);
    key
}

fn body_key(trace_id: &TraceId, span_id: &SpanId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&trace_id.0);
    key[16..].copy_from_slice(&span_id.0);
    key
}

fn time_key(start: u64, trace_id: &TraceId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&start.to_be_bytes());
    key[8..].copy_from_slice(&trace_id.0);
    key
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("span types always serialize")
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
            }
        }
        // The recorder flushes explicitly; sled's own periodic flusher stays off (one flusher only).
        let db = sled::Config::new().path(path).flush_every_ms(None).cache_capacity(64 << 20).open()?;
        Ok(Store {
            spans: db.open_tree("spans")?,
            bodies: db.open_tree("bodies")?,
            traces: db.open_tree("traces")?,
            traces_by_time: db.open_tree("traces_by_time")?,
            db,
        })
    }

    /// Writes a batch of spans, their bodies, and the updated trace summaries.
    pub fn write_batch(&self, writes: &[SpanWrite]) -> Result<(), StoreError> {
        let mut spans = sled::Batch::default();
        let mut bodies = sled::Batch::default();
        let mut by_time = sled::Batch::default();
        let mut summaries: HashMap<TraceId, (Option<u64>, TraceSummary)> = HashMap::new();
        for w in writes {
            let s = &w.span;
            spans.insert(&span_key(&s.trace_id, s.start_time_unix_nano, &s.span_id), encode(s));
            if let Some(b) = &w.bodies {
                bodies.insert(&body_key(&s.trace_id, &s.span_id), encode(b));
            }
            match summaries.get_mut(&s.trace_id) {
                Some((_, summary)) => summary.add(s),
                None => {
                    let entry = match self.traces.get(s.trace_id.0)? {
                        Some(bytes) => {
                            let mut summary: TraceSummary = decode(&bytes)?;
                            let old_start = summary.start_time_unix_nano;
                            summary.add(s);
                            (Some(old_start), summary)
                        }
                        None => (None, TraceSummary::new(s)),
                    };
                    summaries.insert(s.trace_id, entry);
                }
            }
        }
        let mut traces = sled::Batch::default();
        for (trace_id, (old_start, summary)) in &summaries {
            if *old_start != Some(summary.start_time_unix_nano) {
                if let Some(old) = old_start {
                    by_time.remove(&time_key(*old, trace_id));
                }
                by_time.insert(&time_key(summary.start_time_unix_nano, trace_id), &[]);
            }
            traces.insert(&trace_id.0, encode(summary));
        }
        // Bodies and spans first, summaries last: a summary never points at a span not yet written.
        self.bodies.apply_batch(bodies)?;
        self.spans.apply_batch(spans)?;
        self.traces.apply_batch(traces)?;
        self.traces_by_time.apply_batch(by_time)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Newest traces first, filtered, at most `limit`.
    pub fn list_traces(&self, filter: &TraceFilter, limit: usize) -> Result<Vec<TraceSummary>, StoreError> {
        let mut out = Vec::new();
        for entry in self.traces_by_time.iter().rev().take(MAX_LISTING_SCAN) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            if key.len() != 24 {
                continue;
            }
            let mut start = [0u8; 8];
            start.copy_from_slice(&key[..8]);
            if filter.since_unix_nano.is_some_and(|t| u64::from_be_bytes(start) < t) {
                break;
            }
            if let Some(bytes) = self.traces.get(&key[8..])? {
                let summary: TraceSummary = decode(&bytes)?;
                if filter.matches(&summary) {
                    out.push(summary);
                }
            }
        }
        Ok(out)
    }

    pub fn trace_summary(&self, trace_id: &TraceId) -> Result<Option<TraceSummary>, StoreError> {
        self.traces.get(trace_id.0)?.map(|b| decode(&b)).transpose()
    }

    /// Every span of a trace, ordered by start time.
    pub fn trace_spans(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        self.spans.scan_prefix(trace_id.0).map(|entry| decode(&entry?.1)).collect()
    }

    /// One span and its captured bodies.
    pub fn span(&self, trace_id: &TraceId, span_id: &SpanId) -> Result<Option<(Span, SpanBodies)>, StoreError> {
        for entry in self.spans.scan_prefix(trace_id.0) {
            let (key, value) = entry?;
            if key.len() == 32 && key[24..] == span_id.0 {
                let span: Span = decode(&value)?;
                let bodies = match self.bodies.get(body_key(trace_id, span_id))? {
                    Some(b) => decode(&b)?,
                    None => SpanBodies::default(),
                };
                return Ok(Some((span, bodies)));
            }
        }
        Ok(None)
    }

    /// Number of spans stored (walks the tree; for tests and diagnostics).
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }
}
