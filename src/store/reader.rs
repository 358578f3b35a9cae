//! Reading the store, concurrently with its one writer: trace listings (summaries folded from
//! spans), one trace, one span with its bodies, span segments after an exporter's cursor, and
//! the usage ledger (merged cells plus unmerged runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{Span, SpanBodies};
use crate::store::index;
use crate::store::layout::*;
use crate::store::ledger::{LedgerKey, LedgerRow};
use crate::store::{Store, StoreError};

impl Store {
    /// Span segments after `cursor` (in write order), whole segments, until at least
    /// `max_spans` spans are gathered (or none are left).
    pub fn span_segments_after(&self, cursor: u64, max_spans: usize) -> Result<Vec<(u64, Vec<Span>)>, StoreError> {
        let mut out = Vec::new();
        let mut total = 0;
        let committed = self.committed_seq.load(Ordering::Acquire);
        let range = segment_key(SPAN_SEGMENT, cursor.saturating_add(1))..=segment_key(SPAN_SEGMENT, committed);
        for entry in self.tree.range(range) {
            let (key, segment) = entry?;
            let segment = RawSegment::of(segment)?;
            let mut spans = Vec::new();
            for span in SpanSegment::new(&segment)? {
                let span = span?;
                if !span.is_tombstone() {
                    spans.push(decode::<Span>(span.json)?);
                }
            }
            total += spans.len();
            out.push((seq_of(&key), spans));
            if total >= max_spans {
                break;
            }
        }
        Ok(out)
    }

    /// Like [`Store::span_segments_after`], each span with its captured bodies (empty when
    /// none were kept): what the cluster sync ships to PostgreSQL.
    #[allow(clippy::type_complexity)]
    pub fn segments_with_bodies_after(
        &self,
        cursor: u64,
        max_spans: usize,
    ) -> Result<Vec<(u64, Vec<(Span, SpanBodies)>)>, StoreError> {
        let mut out = Vec::new();
        let mut total = 0;
        let committed = self.committed_seq.load(Ordering::Acquire);
        let range = segment_key(SPAN_SEGMENT, cursor.saturating_add(1))..=segment_key(SPAN_SEGMENT, committed);
        for entry in self.tree.range(range) {
            let (key, segment) = entry?;
            let seq = seq_of(&key);
            let segment = RawSegment::of(segment)?;
            let bodies = self.segments().get(BODY_SEGMENT, seq)?;
            let mut spans = Vec::new();
            for (index, span) in SpanSegment::new(&segment)?.enumerate() {
                let span = span?;
                if span.is_tombstone() {
                    continue;
                }
                let kept = match &bodies {
                    Some(b) => bodies_at(self.segments(), b, index)?,
                    None => SpanBodies::default(),
                };
                spans.push((decode::<Span>(span.json)?, kept));
            }
            total += spans.len();
            out.push((seq, spans));
            if total >= max_spans {
                break;
            }
        }
        Ok(out)
    }

    /// Spans in the segments after `cursor` (counted up to `limit` segments; deleted ones not).
    pub fn spans_after(&self, cursor: u64, limit: usize) -> Result<u64, StoreError> {
        let range = segment_key(SPAN_SEGMENT, cursor.saturating_add(1))..segment_key(SPAN_SEGMENT, u64::MAX);
        let mut total = 0u64;
        for entry in self.tree.range(range).take(limit) {
            let segment = RawSegment::of(entry?.1)?;
            total += live_spans(&segment)?;
        }
        Ok(total)
    }

    /// An exporter's durable cursor: the last segment it delivered (0 = none).
    pub fn export_cursor(&self, exporter: &str) -> Result<u64, StoreError> {
        Ok(match self.tree.get(export_cursor_key(exporter))? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Ledger cells of days `from..=to` (days since 1970-01-01, UTC).
    pub fn ledger(&self, from_day: u32, to_day: u32) -> Result<Vec<(LedgerKey, LedgerRow)>, StoreError> {
        let start = [&[LEDGER][..], &from_day.to_be_bytes()].concat();
        let end = [&[LEDGER][..], &to_day.saturating_add(1).to_be_bytes()].concat();
        // Merged cells, plus the deltas of runs not merged yet (no merge in between).
        let _merging = self.merging.read().unwrap_or_else(|p| p.into_inner());
        let mut cells: BTreeMap<Vec<u8>, LedgerRow> = BTreeMap::new();
        for run in self.tree.scan_prefix([INDEX_RUN]) {
            let run = run?.1;
            for (key, delta) in Run::decode(&run)?.ledger_deltas()? {
                if (start.as_slice()..end.as_slice()).contains(&key) {
                    cells.entry(key.to_vec()).or_default().add(&delta);
                }
            }
        }
        for entry in self.tree.range(start.clone()..end.clone()) {
            let (key, value) = entry?;
            cells.entry(key.to_vec()).or_default().add(&decode::<LedgerRow>(&value)?);
        }
        cells
            .into_iter()
            .map(|(key, row)| {
                let key = LedgerKey::decode(&key).ok_or_else(|| StoreError::Corrupt("ledger key".into()))?;
                Ok((key, row))
            })
            .collect()
    }

    /// Every span of a trace, ordered by start time.
    pub fn trace_spans(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        self.spans_of(trace_id, &mut SegmentCache::default())
    }

    pub(super) fn spans_of(&self, trace_id: &TraceId, cache: &mut SegmentCache) -> Result<Vec<Span>, StoreError> {
        let mut spans = Vec::new();
        self.for_each_span(trace_id, cache, |span, _, _| {
            spans.push(decode::<Span>(span.json)?);
            Ok(true)
        })?;
        spans.sort_by(|a, b| a.start_time_unix_nano.cmp(&b.start_time_unix_nano).then(a.span_id.cmp(&b.span_id)));
        Ok(spans)
    }

    /// Calls `visit(span, seq, index)` with each span of the trace until it returns false.
    pub(super) fn for_each_span(
        &self,
        trace_id: &TraceId,
        cache: &mut SegmentCache,
        mut visit: impl FnMut(&SpanRef<'_>, u64, usize) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut positions = self.index.trace_positions(&self.tree, trace_id)?;
        positions.sort_unstable();
        positions.dedup();
        for position in positions {
            let seq = index::seq_of_position(position);
            // A segment deleted by retention may still have entries until its index is pruned.
            let Some(segment) = cache.get(self.segments(), seq)? else { continue };
            let index = usize::from(index::index_of_position(position));
            let Some(span) = SpanSegment::new(segment)?.nth(index) else {
                return Err(StoreError::Corrupt("index points past the end of its segment".into()));
            };
            let span = span?;
            if span.trace_id != *trace_id || span.is_tombstone() {
                continue; // another trace whose id hashes to the same term, or a deleted span
            }
            if !visit(&span, seq, index)? {
                break;
            }
        }
        Ok(())
    }

    /// One span and its captured bodies.
    pub fn span(&self, trace_id: &TraceId, span_id: &SpanId) -> Result<Option<(Span, SpanBodies)>, StoreError> {
        let mut found = None;
        self.for_each_span(trace_id, &mut SegmentCache::default(), |span, seq, index| {
            if span.span_id != *span_id {
                return Ok(true);
            }
            found = Some((decode::<Span>(span.json)?, seq, index));
            Ok(false)
        })?;
        let Some((span, seq, index)) = found else { return Ok(None) };
        let bodies = match self.segments().get(BODY_SEGMENT, seq)? {
            Some(segment) => bodies_at(self.segments(), &segment, index)?,
            None => SpanBodies::default(),
        };
        Ok(Some((span, bodies)))
    }
}

/// Segments (span or body segments) read during one query, so a trace spread over a few
/// segments reads each once.
pub(crate) struct SegmentCache {
    kind: u8,
    segments: HashMap<u64, Option<RawSegment>>,
}

impl Default for SegmentCache {
    /// A cache of span segments.
    fn default() -> Self {
        SegmentCache { kind: SPAN_SEGMENT, segments: HashMap::new() }
    }
}

impl SegmentCache {
    /// A cache of body segments.
    pub(super) fn bodies() -> Self {
        SegmentCache { kind: BODY_SEGMENT, segments: HashMap::new() }
    }

    pub(super) fn get(&mut self, from: Segments, seq: u64) -> Result<Option<&[u8]>, StoreError> {
        if !self.segments.contains_key(&seq) {
            if self.segments.len() > 256 {
                self.segments.clear();
            }
            let segment = from.get(self.kind, seq)?;
            self.segments.insert(seq, segment);
        }
        Ok(self.segments.get(&seq).and_then(|v| v.as_deref()))
    }

    /// (A cache of body segments.) The raw bodies of the span at `position`; `None` when they
    /// were not kept or their segment is gone.
    pub(crate) fn raw_bodies(&mut self, from: Segments, position: u64) -> Result<Option<Bodies<'_>>, StoreError> {
        let Some(segment) = self.get(from, index::seq_of_position(position))? else { return Ok(None) };
        resolved(from, raw_bodies_at(segment, usize::from(index::index_of_position(position)))?)
    }
}

impl Store {
    /// Calls `emit(span, bodies)` with each span matching `query` and its captured bodies,
    /// newest first, until `emit` returns false: what `/api/export` streams. Bodies are read
    /// through the walk's own cache of body segments (bounded, and shared with `q`'s checks).
    pub fn for_each_match_with_bodies(
        &self,
        query: &crate::store::TraceQuery,
        mut emit: impl FnMut(Span, SpanBodies) -> bool,
    ) -> Result<(), StoreError> {
        self.for_each_match(query, |walk, position, span| {
            let bodies = span_bodies(walk.bodies.raw_bodies(self.segments(), position)?);
            Ok(emit(span, bodies))
        })
    }
}
