//! The span store: an embedded sled database laid out for cheap batched writes.
//!
//! sled copies a leaf node on every insert, so the cost of a write grows with the number of
//! inserts and the size of the values in the leaf. The recorder therefore writes each batch
//! of spans as **one segment value** plus one tiny index key per span, in a single atomic
//! `apply_batch` on one tree:
//!
//! - `S` ‖ seq(8)                       → segment: the batch's spans (JSON) and bodies
//! - `T` ‖ trace_id(16) ‖ seq(8) ‖ i(4) → () : span `i` of segment `seq` belongs to the trace
//!
//! Integers are big-endian, so segments are in write order and a trace's index keys are one
//! contiguous range. Trace summaries are folded from the trace's spans when read; the listing
//! walks segments newest first (so it is ordered by each trace's latest activity). Only the
//! recorder thread writes (sled 0.34 must not see concurrent flushes); the admin API reads
//! concurrently.
//!
//! Segment encoding: `count: u32`, then per span `trace_id(16) span_id(8) start_ns(8)
//! span_len: u32 span_json bodies_len: u32 bodies_json` (bodies_len 0 = no bodies kept).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::span::{Span, SpanBodies, SpanStatus, TraceSummary};
use crate::trace_context::{SpanId, TraceId};

/// How many segments a listing walks at most before it stops looking for more matches.
const MAX_SEGMENTS_SCANNED: usize = 20_000;
/// A segment is closed once its encoding passes this size (a batch may then span several).
const SEGMENT_TARGET_BYTES: usize = 256 * 1024;

const SEGMENT_PREFIX: u8 = b'S';
const TRACE_INDEX_PREFIX: u8 = b'T';

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    next_seq: AtomicU64,
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

fn segment_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = SEGMENT_PREFIX;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn trace_prefix(trace_id: &TraceId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = TRACE_INDEX_PREFIX;
    key[1..].copy_from_slice(&trace_id.0);
    key
}

fn trace_index_key(trace_id: &TraceId, seq: u64, index: u32) -> [u8; 29] {
    let mut key = [0u8; 29];
    key[..17].copy_from_slice(&trace_prefix(trace_id));
    key[17..25].copy_from_slice(&seq.to_be_bytes());
    key[25..].copy_from_slice(&index.to_be_bytes());
    key
}

/// One span inside a segment, borrowed from the segment's bytes.
struct RecordRef<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    span_json: &'a [u8],
    bodies_json: &'a [u8],
}

/// Walks the records of an encoded segment.
struct SegmentReader<'a> {
    bytes: &'a [u8],
    remaining: u32,
}

impl<'a> SegmentReader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, StoreError> {
        let (count, rest) = take_u32(bytes)?;
        Ok(SegmentReader { bytes: rest, remaining: count })
    }
}

impl<'a> Iterator for SegmentReader<'a> {
    type Item = Result<RecordRef<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let parse = |bytes: &'a [u8]| -> Result<(RecordRef<'a>, &'a [u8]), StoreError> {
            if bytes.len() < 32 {
                return Err(StoreError::Corrupt("segment record header cut short".into()));
            }
            let mut trace = [0u8; 16];
            trace.copy_from_slice(&bytes[..16]);
            let mut span = [0u8; 8];
            span.copy_from_slice(&bytes[16..24]);
            let (span_json, rest) = take_slice(&bytes[32..])?;
            let (bodies_json, rest) = take_slice(rest)?;
            Ok((RecordRef { trace_id: TraceId(trace), span_id: SpanId(span), span_json, bodies_json }, rest))
        };
        match parse(self.bytes) {
            Ok((record, rest)) => {
                self.bytes = rest;
                Some(Ok(record))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    if bytes.len() < 4 {
        return Err(StoreError::Corrupt("length cut short".into()));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&bytes[..4]);
    Ok((u32::from_be_bytes(n), &bytes[4..]))
}

fn take_slice(bytes: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let (len, rest) = take_u32(bytes)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(StoreError::Corrupt("record cut short".into()));
    }
    Ok(rest.split_at(len))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Builds segment values.
struct SegmentWriter {
    bytes: Vec<u8>,
    count: u32,
}

impl SegmentWriter {
    fn new() -> Self {
        SegmentWriter { bytes: vec![0; 4], count: 0 }
    }

    fn push(&mut self, write: &SpanWrite) {
        let span = &write.span;
        self.bytes.extend_from_slice(&span.trace_id.0);
        self.bytes.extend_from_slice(&span.span_id.0);
        self.bytes.extend_from_slice(&span.start_time_unix_nano.to_be_bytes());
        Self::push_json(&mut self.bytes, span);
        match &write.bodies {
            Some(bodies) => Self::push_json(&mut self.bytes, bodies),
            None => self.bytes.extend_from_slice(&0u32.to_be_bytes()),
        }
        self.count += 1;
    }

    fn push_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, value).expect("span types always serialize");
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes[..4].copy_from_slice(&self.count.to_be_bytes());
        self.bytes
    }
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
        let tree = db.open_tree("spans_v1")?;
        let next_seq = match tree.scan_prefix([SEGMENT_PREFIX]).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&key[1..9]);
                u64::from_be_bytes(seq) + 1
            }
            None => 1,
        };
        Ok(Store { db, tree, next_seq: AtomicU64::new(next_seq) })
    }

    /// Writes a batch of spans (and their bodies) atomically.
    pub fn write_batch(&self, writes: &[SpanWrite]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut segment = SegmentWriter::new();
        let mut seq = self.next_seq.load(Ordering::Relaxed);
        for write in writes {
            batch.insert(&trace_index_key(&write.span.trace_id, seq, segment.count), &[]);
            segment.push(write);
            if segment.bytes.len() >= SEGMENT_TARGET_BYTES {
                batch.insert(&segment_key(seq), std::mem::replace(&mut segment, SegmentWriter::new()).finish());
                seq += 1;
            }
        }
        if segment.count > 0 {
            batch.insert(&segment_key(seq), segment.finish());
            seq += 1;
        }
        self.tree.apply_batch(batch)?;
        self.next_seq.store(seq, Ordering::Relaxed);
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Traces by latest activity, newest first, filtered, at most `limit`.
    pub fn list_traces(&self, filter: &TraceFilter, limit: usize) -> Result<Vec<TraceSummary>, StoreError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cache = SegmentCache::default();
        for entry in self.tree.scan_prefix([SEGMENT_PREFIX]).rev().take(MAX_SEGMENTS_SCANNED) {
            let (_, segment) = entry?;
            let mut traces = Vec::new();
            for record in SegmentReader::new(&segment)? {
                traces.push(record?.trace_id);
            }
            for trace_id in traces.into_iter().rev() {
                if !seen.insert(trace_id) {
                    continue;
                }
                let spans = self.spans_of(&trace_id, &mut cache)?;
                if let Some(summary) = summarize(&spans) {
                    if filter.matches(&summary) {
                        out.push(summary);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn trace_summary(&self, trace_id: &TraceId) -> Result<Option<TraceSummary>, StoreError> {
        Ok(summarize(&self.trace_spans(trace_id)?))
    }

    /// Every span of a trace, ordered by start time.
    pub fn trace_spans(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        self.spans_of(trace_id, &mut SegmentCache::default())
    }

    fn spans_of(&self, trace_id: &TraceId, cache: &mut SegmentCache) -> Result<Vec<Span>, StoreError> {
        let mut spans = Vec::new();
        self.for_each_record(trace_id, cache, |record| {
            spans.push(decode::<Span>(record.span_json)?);
            Ok(true)
        })?;
        spans.sort_by(|a, b| a.start_time_unix_nano.cmp(&b.start_time_unix_nano).then(a.span_id.cmp(&b.span_id)));
        Ok(spans)
    }

    /// Calls `visit` with each record of the trace until it returns false.
    fn for_each_record(
        &self,
        trace_id: &TraceId,
        cache: &mut SegmentCache,
        mut visit: impl FnMut(&RecordRef<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for entry in self.tree.scan_prefix(trace_prefix(trace_id)) {
            let (key, _) = entry?;
            if key.len() != 29 {
                continue;
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&key[17..25]);
            let mut index = [0u8; 4];
            index.copy_from_slice(&key[25..29]);
            let Some(segment) = cache.get(&self.tree, u64::from_be_bytes(seq))? else { continue };
            let Some(record) = SegmentReader::new(segment)?.nth(u32::from_be_bytes(index) as usize) else {
                return Err(StoreError::Corrupt("index points past the end of its segment".into()));
            };
            let record = record?;
            if record.trace_id != *trace_id {
                return Err(StoreError::Corrupt("index points at another trace's span".into()));
            }
            if !visit(&record)? {
                break;
            }
        }
        Ok(())
    }

    /// One span and its captured bodies.
    pub fn span(&self, trace_id: &TraceId, span_id: &SpanId) -> Result<Option<(Span, SpanBodies)>, StoreError> {
        let mut found = None;
        self.for_each_record(trace_id, &mut SegmentCache::default(), |record| {
            if record.span_id != *span_id {
                return Ok(true);
            }
            let bodies =
                if record.bodies_json.is_empty() { SpanBodies::default() } else { decode(record.bodies_json)? };
            found = Some((decode(record.span_json)?, bodies));
            Ok(false)
        })?;
        Ok(found)
    }

    /// Number of spans stored (walks the index; for tests and diagnostics).
    pub fn span_count(&self) -> usize {
        self.tree.scan_prefix([TRACE_INDEX_PREFIX]).count()
    }
}

/// Segments read during one query, so a trace spread over a few segments reads each once.
#[derive(Default)]
struct SegmentCache(HashMap<u64, Option<sled::IVec>>);

impl SegmentCache {
    fn get(&mut self, tree: &sled::Tree, seq: u64) -> Result<Option<&[u8]>, StoreError> {
        if !self.0.contains_key(&seq) {
            if self.0.len() > 256 {
                self.0.clear();
            }
            self.0.insert(seq, tree.get(segment_key(seq))?);
        }
        Ok(self.0.get(&seq).and_then(|v| v.as_deref()))
    }
}

/// Folds a trace's spans (start-ordered) into its summary.
fn summarize(spans: &[Span]) -> Option<TraceSummary> {
    let (first, rest) = spans.split_first()?;
    let mut summary = TraceSummary::new(first);
    for span in rest {
        summary.add(span);
    }
    Some(summary)
}
