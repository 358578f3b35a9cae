//! Writing the store — the recorder thread's side only: a batch's segments then its commit
//! record (the index run with its ledger deltas), merges of runs into bucket pages and ledger
//! cells, retention, and exporter cursors.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::model::span::SpanWrite;
use crate::store::layout::*;
use crate::store::ledger::{LedgerKey, LedgerRow};
use crate::store::{Store, StoreError};

impl Store {
    /// Writes a batch of spans (and their bodies): its segments, then its index run, which
    /// commits the batch (see `layout::Run`); when the runs have grown enough, merges them into the
    /// index pages and the ledger. Plain inserts, not a sled batch: sled writes its log buffer
    /// out for every batch, which at hundreds of batches a second cost ~15% of the proxy's CPU.
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
        let mut entries = Vec::with_capacity(writes.len() * INDEX_ENTRY_BYTES);
        let mut ledger: HashMap<Vec<u8>, LedgerRow> = HashMap::new();
        let mut written = Ok(());
        for (i, write) in writes.iter().enumerate() {
            let segment = &mut writer.segment;
            IndexEntry { trace_id: write.span.trace_id, seq, index: segment.count as u16 }.encode(&mut entries);
            segment.push(write);
            if let Some(key) = LedgerKey::of(&write.span) {
                ledger.entry(key.encode(LEDGER)).or_default().add(&LedgerRow::of(&write.span));
            }
            let last = i + 1 == writes.len();
            if last || segment.len() >= writer.raw_target || segment.count == u32::from(u16::MAX) {
                // Claim the seq before writing: a failed batch must not reuse it.
                self.next_seq.store(seq + 1, Ordering::Relaxed);
                let result = segment.write(&self.tree, seq, &mut writer.compressor);
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
            let run = Run::encode(seq - 1, &entries, &ledger);
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
        let run_len = entries.len() / INDEX_ENTRY_BYTES;
        if self.run_entries.fetch_add(run_len, Ordering::Relaxed) + run_len >= RUN_ENTRIES_BEFORE_MERGE {
            // The batch is committed whatever happens here; a failed merge is retried next batch.
            if let Err(e) = self.merge_runs() {
                tracing::error!(error = %e, "merging the index runs failed; retried with the next batch");
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

    /// Moves every index run's entries into the bucket pages and its ledger deltas into the
    /// ledger, in one atomic sled batch.
    pub(super) fn merge_runs(&self) -> Result<(), StoreError> {
        let _merging = self.merging.write().unwrap_or_else(|p| p.into_inner());
        let mut entries = Vec::new();
        let mut ledger: HashMap<Vec<u8>, LedgerRow> = HashMap::new();
        let mut runs = Vec::new();
        let mut merged_through = match self.tree.get(MERGED_THROUGH_KEY)? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        for entry in self.tree.scan_prefix([INDEX_RUN]) {
            let (key, value) = entry?;
            let run = Run::decode(&value)?;
            entries.extend(IndexEntry::all(run.entries));
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
        self.add_to_pages(&mut batch, entries)?;
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
        self.run_entries.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Appends `entries` to their buckets' last pages (starting new pages when full), in `batch`.
    pub(super) fn add_to_pages(&self, batch: &mut sled::Batch, mut entries: Vec<IndexEntry>) -> Result<(), StoreError> {
        entries.sort_by_key(|e| bucket_of(&e.trace_id));
        for group in entries.chunk_by(|a, b| bucket_of(&a.trace_id) == bucket_of(&b.trace_id)) {
            let bucket = bucket_of(&group[0].trace_id);
            let (mut page_no, mut page) = match self.tree.scan_prefix([INDEX_PAGE, bucket]).next_back() {
                Some(last) => {
                    let (key, value) = last?;
                    (seq_of(&key[1..]), value.to_vec())
                }
                None => (0, Vec::new()),
            };
            for entry in group {
                if page.len() + INDEX_ENTRY_BYTES > INDEX_PAGE_BYTES {
                    batch.insert(&index_page_key(bucket, page_no), std::mem::take(&mut page));
                    page_no += 1;
                }
                entry.encode(&mut page);
            }
            batch.insert(&index_page_key(bucket, page_no), page);
        }
        Ok(())
    }

    /// Deletes the oldest span segments (their spans and bodies) whose spans all started before
    /// `cutoff_unix_nano`; stops at the first segment holding a newer span, then drops the index
    /// entries of what was deleted. Returns how many spans were deleted. The usage ledger keeps
    /// its daily totals.
    pub fn delete_older_than(&self, cutoff_unix_nano: u64) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut first_kept = None;
        for entry in self.tree.scan_prefix([SPAN_SEGMENT]) {
            let (key, segment) = entry?;
            let segment = RawSegment::of(segment)?;
            let seq = seq_of(&key);
            let mut spans = 0;
            let mut all_old = true;
            for span in SpanSegment::new(&segment)? {
                if span?.start_time_unix_nano >= cutoff_unix_nano {
                    all_old = false;
                    break;
                }
                spans += 1;
            }
            if !all_old {
                first_kept = Some(seq);
                break;
            }
            // Plain removes, bodies first (a span left without its bodies is harmless and is
            // deleted next time): a sled batch per segment rolls sled's log buffer twice.
            self.tree.remove(segment_key(BODY_SEGMENT, seq))?;
            self.tree.remove(segment_key(SPAN_SEGMENT, seq))?;
            deleted += spans;
        }
        if deleted > 0 {
            self.drop_index_before(first_kept.unwrap_or(u64::MAX))?;
        }
        Ok(deleted)
    }

    /// Removes index entries of segments before `seq` (deleted by retention) from runs and pages.
    pub(super) fn drop_index_before(&self, seq: u64) -> Result<(), StoreError> {
        self.merge_runs()?;
        for bucket in 0..INDEX_BUCKETS {
            let mut kept = Vec::new();
            let mut batch = sled::Batch::default();
            for entry in self.tree.scan_prefix([INDEX_PAGE, bucket]) {
                let (key, page) = entry?;
                kept.extend(IndexEntry::all(&page).filter(|e| e.seq >= seq));
                batch.remove(key);
            }
            for (page_no, entries) in kept.chunks(INDEX_PAGE_BYTES / INDEX_ENTRY_BYTES).enumerate() {
                let mut page = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
                entries.iter().for_each(|e| e.encode(&mut page));
                batch.insert(&index_page_key(bucket, page_no as u64), page);
            }
            // Renumbering pages moves entries to lower keys: a lookup scanning the bucket
            // meanwhile would step over them.
            let _merging = self.merging.write().unwrap_or_else(|p| p.into_inner());
            self.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Moves an exporter's cursor (called by the recorder thread, the one writer).
    pub fn set_export_cursor(&self, exporter: &str, seq: u64) -> Result<(), StoreError> {
        self.tree.insert(export_cursor_key(exporter), &seq.to_be_bytes())?;
        Ok(())
    }
}
