//! Writing the store — the recorder thread's side only: a batch's segments then its commit
//! record (with its ledger deltas), then its spans into the search index; merges of commit
//! records into the ledger cells, retention, and exporter cursors.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::model::span::SpanWrite;
use crate::store::body_log::first_body_ref;
use crate::store::dedup;
use crate::store::index;
use crate::store::layout::*;
use crate::store::ledger::{LedgerKey, LedgerRow};
use crate::store::{Store, StoreError};

impl Store {
    /// Writes a batch of spans (and their bodies): its segments, then its commit record (see
    /// `layout::Run`), then indexes its spans (in memory; a run to sled once the memtable is
    /// full); when enough records have piled up, merges them into the ledger. Plain inserts, not
    /// a sled batch: sled writes its log buffer out for every batch, which at hundreds of
    /// batches a second cost ~15% of the proxy's CPU.
    pub fn write_batch(&self, writes: &[SpanWrite]) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = &mut *writer;
        // Empty unless the last batch failed or panicked halfway (a poisoned lock is taken back).
        writer.segment.clear();
        if let Some(seqs) = writer.untaken.clone() {
            self.remove_segments(seqs)?;
            writer.untaken = None;
        }
        if writes.is_empty() {
            return Ok(());
        }
        let first_seq = self.next_seq.load(Ordering::Relaxed);
        let mut seq = first_seq;
        let mut positions = Vec::with_capacity(writes.len());
        let mut ledger: HashMap<Vec<u8>, LedgerRow> = HashMap::new();
        let mut written = Ok(());
        for (i, write) in writes.iter().enumerate() {
            let segment = &mut writer.segment;
            positions.push(index::position(seq, segment.count as u16));
            segment.push(write, seq, &mut writer.bases);
            if let Some(key) = LedgerKey::of(&write.span) {
                ledger.entry(key.encode(LEDGER)).or_default().add(&LedgerRow::of(&write.span));
            }
            let last = i + 1 == writes.len();
            if last || segment.is_full(writer.raw_target) {
                // Claim the seq before writing: a failed batch must not reuse it.
                self.next_seq.store(seq + 1, Ordering::Relaxed);
                let result = segment.write(self.segments(), seq, &mut writer.compressor);
                seq += 1;
                match result {
                    Ok((raw, stored)) => {
                        // Aim the next segment's raw size at SEGMENT_TARGET_BYTES once compressed.
                        let ratio = raw as f64 / stored.max(1) as f64;
                        writer.raw_target =
                            (SEGMENT_TARGET_BYTES as f64 * ratio.clamp(1.0, MAX_EXPECTED_RATIO)) as usize;
                    }
                    Err(e) => {
                        // The segment's leftovers are cleared when the next batch starts.
                        written = Err(e);
                        break;
                    }
                }
            }
        }
        let written = written.and_then(|()| {
            let run = Run::encode(seq - 1, &ledger);
            Ok(self.tree.insert(segment_key(INDEX_RUN, first_seq), run).map(drop)?)
        });
        if let Err(e) = written {
            // Not committed: take back what was written, so no span is listed but unaccounted.
            if self.remove_segments(first_seq..seq).is_err() {
                writer.untaken = Some(first_seq..seq);
            }
            return Err(e);
        }
        self.committed_seq.store(seq - 1, Ordering::Release);
        self.index.add(positions.into_iter().zip(writes).map(|(position, w)| {
            let bodies = w.bodies.as_ref();
            let request = bodies.and_then(|b| b.request_body.as_deref()).unwrap_or("");
            let response = bodies.and_then(|b| b.response_body.as_deref()).unwrap_or("");
            index::Indexed { position, span: &w.span, bodies: [request.as_bytes(), response.as_bytes()] }
        }));
        if self.index.is_full() {
            // Derived data: a failed flush is retried with the next batch (or rebuilt at open).
            if let Err(e) = self.index.flush(&self.tree) {
                tracing::error!(error = %e, "writing a search-index run failed; retried with the next batch");
            }
        }
        if self.unmerged_runs.fetch_add(1, Ordering::Relaxed) + 1 >= RUNS_BEFORE_MERGE {
            // The batch is committed whatever happens here; a failed merge is retried next batch.
            if let Err(e) = self.merge_runs() {
                tracing::error!(error = %e, "merging commit records into the ledger failed; retried with the next batch");
            }
        }
        Ok(())
    }

    pub(super) fn remove_segments(&self, seqs: std::ops::Range<u64>) -> Result<(), StoreError> {
        for seq in seqs {
            self.tree.remove(segment_key(BODY_SEGMENT, seq))?;
            self.tree.remove(segment_key(SPAN_SEGMENT, seq))?;
        }
        Ok(())
    }

    /// Folds every commit record's ledger deltas into the ledger cells and removes the records,
    /// in one atomic sled batch.
    pub(super) fn merge_runs(&self) -> Result<(), StoreError> {
        let _merging = self.merging.write().unwrap_or_else(|p| p.into_inner());
        let mut ledger: HashMap<Vec<u8>, LedgerRow> = HashMap::new();
        let mut runs = Vec::new();
        let mut merged_through = match self.tree.get(MERGED_THROUGH_KEY)? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        for entry in self.tree.scan_prefix([INDEX_RUN]) {
            let (key, value) = entry?;
            let run = Run::decode(&value)?;
            for (key, delta) in run.ledger_deltas()? {
                ledger.entry(key.to_vec()).or_default().add(&delta);
            }
            merged_through = merged_through.max(run.last_seq);
            runs.push(key);
        }
        if runs.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, mut row) in ledger {
            if let Some(existing) = self.tree.get(&key)? {
                row.add(&decode::<LedgerRow>(&existing)?);
            }
            batch.insert(key, serde_json::to_vec(&row).expect("ledger rows serialize"));
        }
        for key in runs {
            batch.remove(key);
        }
        batch.insert(MERGED_THROUGH_KEY, &merged_through.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.unmerged_runs.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the oldest span segments (their spans and bodies) whose spans all started before
    /// `cutoff_unix_nano`; stops at the first segment holding a newer span, then drops the
    /// search-index runs of what was deleted (postings of deleted spans in a run that also
    /// holds kept ones are skipped when read). Returns how many spans were deleted. The usage ledger keeps
    /// its daily totals.
    ///
    /// A body segment holding bases (`dedup::BASE`) outlives its span segment: it is removed
    /// by the first pass whose cutoff is [`dedup::WINDOW_NANOS`] past the one that removed its
    /// spans, when every later call borrowing its text is past retention too.
    pub fn delete_older_than(&self, cutoff_unix_nano: u64) -> Result<usize, StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut deleted = 0;
        let mut first_kept = None;
        let mut orphaned: Option<(u64, u64)> = None;
        for entry in self.tree.scan_prefix([SPAN_SEGMENT]) {
            let (key, segment) = entry?;
            let segment = RawSegment::of(segment)?;
            let seq = seq_of(&key);
            let mut spans = 0;
            let mut all_old = true;
            for span in SpanSegment::new(&segment)? {
                let span = span?;
                if span.start_time_unix_nano >= cutoff_unix_nano {
                    all_old = false;
                    break;
                }
                // A tombstone (start 0) is old: a segment of them goes with the next old one.
                spans += usize::from(!span.is_tombstone());
            }
            if !all_old {
                first_kept = Some(seq);
                break;
            }
            // Plain removes, bodies first (a span left without its bodies is harmless and is
            // deleted next time): a sled batch per segment rolls sled's log buffer twice.
            // Unreadable bodies (a body file damaged or lost) lend nothing: removed with the spans.
            let holds_bases = match unless_damaged(self.segments().get(BODY_SEGMENT, seq))?.flatten() {
                Some(bodies) => records(&bodies)?.iter().any(|(flags, _, _)| flags & dedup::BASE != 0),
                None => false,
            };
            match holds_bases {
                true => orphaned = Some(orphaned.map_or((seq, seq), |(from, _)| (from, seq))),
                false => self.tree.remove(segment_key(BODY_SEGMENT, seq)).map(drop)?,
            }
            self.tree.remove(segment_key(SPAN_SEGMENT, seq))?;
            deleted += spans;
        }
        if deleted > 0 {
            self.index.drop_runs_before(&self.tree, first_kept.unwrap_or(u64::MAX))?;
        }
        for orphan in writer.orphans.iter_mut() {
            orphan.2.get_or_insert(cutoff_unix_nano);
        }
        if let Some((from, to)) = orphaned {
            writer.orphans.push((from, to, Some(cutoff_unix_nano)));
        }
        let mut kept = Vec::new();
        for (from, to, at) in std::mem::take(&mut writer.orphans) {
            if at.unwrap_or(cutoff_unix_nano).saturating_add(dedup::WINDOW_NANOS) > cutoff_unix_nano {
                kept.push((from, to, at));
                continue;
            }
            for key in self.tree.range(segment_key(BODY_SEGMENT, from)..=segment_key(BODY_SEGMENT, to)).keys() {
                self.tree.remove(key?)?;
            }
        }
        writer.orphans = kept;
        self.free_body_files()?;
        Ok(deleted)
    }

    /// Removes the body files no remaining `B` value refers to: those below the first one
    /// referred to (segments are removed oldest first, so the files before it are unused).
    fn free_body_files(&self) -> Result<(), StoreError> {
        let first = first_body_ref(self.tree.scan_prefix([BODY_SEGMENT]).values())?;
        let freed = self.bodies.remove_files_before(first.map_or(u64::MAX, |r| r.file))?;
        if freed > 0 {
            tracing::info!(bytes = freed, "retention removed body files");
        }
        Ok(())
    }

    /// Moves an exporter's cursor (called by the recorder thread, the one writer).
    pub fn set_export_cursor(&self, exporter: &str, seq: u64) -> Result<(), StoreError> {
        self.tree.insert(export_cursor_key(exporter), &seq.to_be_bytes())?;
        Ok(())
    }
}
