//! Deleting spans — a trace, or every span matching filters (a user's or a team's calls, a time
//! range) — for mistakes and for a user's right to erasure. The usage ledger keeps its totals.
//!
//! Segments are positioned: the search index names a span by its segment's seq and its place in
//! the segment (`index::position`), and so do cursors. A deleted span is therefore not cut out
//! of its segment but replaced by a **tombstone** ([`TOMBSTONE`]: zero ids, start 0, an empty
//! JSON), keeping the segment's count and order, so every other position stays valid. Its
//! body record is emptied (flags 0, no bytes) in the body segment, written first: after a crash
//! a span is either whole, without bodies, or gone. Every reader skips tombstones (trace reads,
//! the query walk, exporters, the index rebuild at open, `span_count`); retention deletes a
//! segment of tombstones like any old segment. The deleted spans' postings are removed from
//! the memtable and from the run chunks that held them (`index::erase`); a posting left behind
//! (a crash between the two) points at a tombstone, which readers skip. The word index behind
//! `q` (`index/words.rs`) says only which blocks of 256 spans hold a word's hash: it is left
//! as is (a block that held a deleted body's word costs a read of bodies that no longer hold
//! it, never a match), until retention drops the run.
//!
//! Choosing what to delete is a read ([`Store::select`], [`Store::count_selected`]) and runs
//! on any thread; applying it ([`Store::delete_positions`]) is a write, done by the recorder
//! thread (the store's one writer, so no flush runs concurrently with another) in batches of at
//! most [`DELETE_BATCH`] positions: a delete of a whole team runs in bounded memory, and the
//! recorder writes the calls arriving meanwhile between batches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::model::ids::TraceId;
use crate::model::span::Span;
use crate::store::body_log::BodyRef;
use crate::store::dedup;
use crate::store::index;
use crate::store::layout::*;
use crate::store::reader::SegmentCache;
use crate::store::{Cursor, Store, StoreError, TraceQuery};

/// Most positions deleted by one [`Store::delete_positions`]: bounds the time the recorder
/// spends on one batch (a few segments and run chunks rewritten) and what a delete holds.
pub const DELETE_BATCH: usize = 1024;

/// What a delete removes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every span of one trace.
    Trace(TraceId),
    /// Every span matching the filters (cursor and limit ignored).
    Matching(Box<TraceQuery>),
}

/// A span's position, as the store's index names it (see `index::position`).
pub type Position = u64;

impl Store {
    /// Where a delete starts: below the first position not committed yet, so calls written
    /// while it runs are not deleted.
    pub fn delete_start(&self) -> Cursor {
        let horizon = index::position(self.committed_seq.load(Ordering::Acquire) + 1, 0);
        Cursor { below: horizon, horizon }
    }

    /// Up to `max` positions of selected spans below `cursor`, newest first, and the cursor
    /// after them when more may follow.
    pub fn select(
        &self,
        selection: &Selection,
        cursor: Cursor,
        max: usize,
    ) -> Result<(Vec<Position>, Option<Cursor>), StoreError> {
        let max = max.max(1);
        let mut positions = Vec::new();
        match selection {
            Selection::Matching(query) => {
                let query = TraceQuery { cursor: Some(cursor), ..(**query).clone() };
                self.for_each_match(&query, |_, position, _| {
                    positions.push(position);
                    Ok(positions.len() < max)
                })?;
            }
            Selection::Trace(trace_id) => {
                self.for_each_span(trace_id, &mut SegmentCache::default(), |_, seq, index| {
                    let position = index::position(seq, index as u16);
                    if position < cursor.below.min(cursor.horizon) {
                        positions.push(position);
                    }
                    Ok(true)
                })?;
                positions.sort_unstable_by(|a, b| b.cmp(a));
                positions.truncate(max);
            }
        }
        let next = (positions.len() == max).then(|| Cursor { below: positions[max - 1], horizon: cursor.horizon });
        Ok((positions, next))
    }

    /// How many spans a delete of `selection` would remove now.
    pub fn count_selected(&self, selection: &Selection) -> Result<u64, StoreError> {
        let mut count = 0u64;
        match selection {
            Selection::Matching(query) => {
                let query = TraceQuery { cursor: Some(self.delete_start()), ..(**query).clone() };
                self.for_each_match(&query, |_, _, _| {
                    count += 1;
                    Ok(true)
                })?;
            }
            Selection::Trace(trace_id) => self.for_each_span(trace_id, &mut SegmentCache::default(), |_, _, _| {
                count += 1;
                Ok(true)
            })?,
        }
        Ok(count)
    }

    /// Deletes the spans at `positions` (at most [`DELETE_BATCH`] at a time is the intent):
    /// each becomes a tombstone, its bodies are emptied and its postings removed. Positions
    /// already deleted, or whose segment retention removed, are skipped. Returns how many spans
    /// were deleted. The recorder thread's side (it holds the one writer's lock); the caller
    /// flushes.
    pub fn delete_positions(&self, positions: &[Position]) -> Result<usize, StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for position in positions {
            let seq = index::seq_of_position(*position);
            by_seq.entry(seq).or_default().push(usize::from(index::index_of_position(*position)));
        }
        // Records of later calls that borrow text from a deleted base get it copied in first
        // (a crash in between leaves them whole and the base still there: nothing lost).
        // Body records rewritten into sled, erased from their files once that is durable.
        let mut superseded = Vec::new();
        self.materialize_borrowers(&by_seq, &mut writer.compressor, &mut superseded)?;
        writer.bases.clear();
        let mut erased: Vec<(Position, Span)> = Vec::new();
        for (seq, indices) in by_seq {
            let Some(stored) = self.tree.get(segment_key(SPAN_SEGMENT, seq))? else { continue };
            let raw = RawSegment::of(stored)?;
            let records = SpanSegment::encoded(&raw)?;
            let mut spans = Vec::with_capacity(raw.len());
            spans.extend_from_slice(&raw[..4]);
            let mut hit = Vec::new();
            for (i, record) in records.enumerate() {
                let (record, encoded) = record?;
                if indices.contains(&i) && !record.is_tombstone() {
                    erased.push((index::position(seq, i as u16), decode::<Span>(record.json)?));
                    hit.push(i);
                    spans.extend_from_slice(&TOMBSTONE);
                } else {
                    spans.extend_from_slice(encoded);
                }
            }
            if hit.is_empty() {
                continue;
            }
            // Bodies first: a crash between the two inserts leaves a span without its bodies
            // (deleted again by the next try), never bodies without their span.
            if let Some(stored) = self.tree.get(segment_key(BODY_SEGMENT, seq))? {
                let in_file = BodyRef::decode(&stored);
                match unless_damaged(self.segments().raw(stored))? {
                    Some(bodies) => {
                        let bodies = without_bodies(&bodies, &hit)?;
                        self.tree.insert(segment_key(BODY_SEGMENT, seq), writer.compressor.encode(&bodies))?;
                    }
                    // A damaged body record: nothing of it can be kept or read.
                    None => self.tree.remove(segment_key(BODY_SEGMENT, seq)).map(drop)?,
                }
                superseded.extend(in_file);
            }
            self.tree.insert(segment_key(SPAN_SEGMENT, seq), writer.compressor.encode(&spans))?;
        }
        // The deleted text leaves the body files once the segments that replace their records
        // are durable (a crash before leaves the old references, still whole).
        if !superseded.is_empty() {
            self.flush()?;
            for old in &superseded {
                self.bodies.erase(old)?;
            }
        }
        // Derived data: a posting left behind points at a tombstone, which every reader skips.
        if let Err(e) = self.index.erase(&self.tree, &erased) {
            tracing::error!(error = %e, "removing deleted spans' postings failed; they point at tombstones");
        }
        Ok(erased.len())
    }

    /// Copies into each record that refers to a base about to be deleted (a span at one of
    /// `by_seq`'s positions whose record is flagged `dedup::BASE`) the text it borrows from it.
    /// Such records are the base's later calls of the same session (else trace): found through
    /// the index, never by a scan.
    fn materialize_borrowers(
        &self,
        by_seq: &BTreeMap<u64, Vec<usize>>,
        compressor: &mut crate::store::segment_codec::SegmentCompressor,
        superseded: &mut Vec<BodyRef>,
    ) -> Result<(), StoreError> {
        let mut owners: HashMap<(u64, u16), Vec<u8>> = HashMap::new();
        let mut candidates: BTreeMap<u64, HashSet<usize>> = BTreeMap::new();
        for (seq, indices) in by_seq {
            // Unreadable bodies (a damaged body record) lend no text: nothing to copy from them.
            let Some(bodies) = unless_damaged(self.segments().get(BODY_SEGMENT, *seq))?.flatten() else { continue };
            let records = records(&bodies)?;
            let bases: Vec<usize> =
                indices.iter().copied().filter(|i| records.get(*i).is_some_and(|r| r.0 & dedup::BASE != 0)).collect();
            if bases.is_empty() {
                continue;
            }
            let Some(spans) = self.tree.get(segment_key(SPAN_SEGMENT, *seq))? else { continue };
            let spans = RawSegment::of(spans)?;
            for (i, span) in SpanSegment::new(&spans)?.enumerate() {
                let span = span?;
                if !bases.contains(&i) || span.is_tombstone() {
                    continue;
                }
                let (flags, request, _) = records[i];
                owners.insert((*seq, i as u16), dedup::own_literal(flags, request)?.to_vec());
                let span = decode::<Span>(span.json)?;
                let later = match &span.session {
                    Some(session) => self.index.session_positions(&self.tree, session)?,
                    None => self.index.trace_positions(&self.tree, &span.trace_id)?,
                };
                for position in later.into_iter().filter(|p| *p > index::position(*seq, i as u16)) {
                    let (seq, i) = (index::seq_of_position(position), usize::from(index::index_of_position(position)));
                    if !by_seq.get(&seq).is_some_and(|deleted| deleted.contains(&i)) {
                        candidates.entry(seq).or_default().insert(i);
                    }
                }
            }
        }
        for (seq, indices) in candidates {
            let Some(stored) = self.tree.get(segment_key(BODY_SEGMENT, seq))? else { continue };
            let in_file = BodyRef::decode(&stored);
            let Some(bodies) = unless_damaged(self.segments().raw(stored))? else { continue };
            if let Some(rewritten) = materialized(&bodies, &indices, &owners)? {
                self.tree.insert(segment_key(BODY_SEGMENT, seq), compressor.encode(&rewritten))?;
                superseded.extend(in_file);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "delete_tests.rs"]
mod tests;
