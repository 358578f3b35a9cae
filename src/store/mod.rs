//! The span store: an embedded sled database laid out for cheap batched writes. Only the
//! recorder writes it (`writer`); admin, the exporters and the CLI read it (`reader`). It
//! imports only `model`: it knows spans and bodies, not how they were made.
//!
//! sled copies a leaf node and logs it on every insert, so a write costs per insert and per
//! byte. The recorder therefore writes each batch of spans as a few **segment values** (the
//! spans, and their bodies) and one **index run** for the whole batch, all in one tree:
//!
//! - `S` ‖ seq(8)                 → span segment: spans (JSON) of one batch, ≤ ~6 KB
//! - `B` ‖ seq(8)                 → body segment: the same spans' bodies, in the same order; since
//!   store format 6 a 25-byte reference to it in a body file (`body_log`), or the segment itself
//!   once a delete rewrote it
//! - `I` ‖ seq(8)                 → index run: the batch's commit record (see `layout::Run`)
//! - `X`/`Y` ‖ run(8) ...          → search-index runs (see `index/`): postings by trace, team, ...
//! - `L` ‖ day(4) ‖ team 0 user 0 provider 0 model → usage ledger counters (see `ledger.rs`)
//! - `M` format / merged_through   → the layout version; the last seq merged into the ledger
//! - `M` export_cursor:{name}     → the last span segment an exporter delivered
//!
//! Integers are big-endian, so segments are in write order. Traces and listings are found
//! through the search index (`index/`, `query.rs`): its memtable costs no sled write per span,
//! and a run is written once per 65,536 spans. Trace summaries are folded from the trace's
//! spans when read; listings never read bodies. Only the recorder thread
//! writes (sled 0.34 must not see concurrent flushes); the admin API reads concurrently.
//!
//! A batch's segments are written first and its index run last, as plain inserts (a sled batch
//! writes sled's log buffer out each time). The run is the batch's commit record: it also holds
//! the batch's usage-ledger deltas, which a merge folds into the `L` cells in the same atomic
//! sled batch that moves the run's entries into the pages. sled recovers a prefix of its log
//! after a crash, so segments past the last run belong to a batch cut short: they are removed at
//! open, and the ledger (cells + unmerged runs) always equals the stored spans.
//!
//! Segments are stored compressed (an lz4 block behind a tag byte, see `segment_codec`): fewer
//! bytes for sled to log and to copy on leaf splits, which were most of a write's cost, and
//! ~4× less disk. A segment is closed once its compressed size nears ~6 KB, planned from the
//! previous segment's ratio. Format 2 (before compression) differs only there and reads as is.
//!
//! Raw span segment: `count: u32`, then per span `trace_id(16) span_id(8) start_ns(8) len: u32 json`.
//! Raw body segment: `count: u32`, then per span `flags: u8 request_len: u32 request response_len:
//! u32 response` (raw bytes; flags: 1 = bodies kept, 2 = truncated, 4 = the request field is a
//! piece list, 8 = a base later records may borrow from: see `dedup`, store format 5). Index run and page: a
//! sequence of `trace_id(16) seq(8) i(2)` entries. A deleted span's record is a tombstone
//! (zero ids, start 0, an empty JSON) and its body record is emptied (flags 0): counts and
//! order stay, so positions stay valid; every reader skips tombstones (see `delete.rs`).
//!
//! Files: `layout` (keys and value encodings), `segment_codec` (compression of a segment), `body_log` (body segments in files),
//! `writer` (batches, merges, retention), `reader` (traces, spans, segments for exporters),
//! `delete` (tombstones), `dedup` (requests stored as pieces of earlier ones), `ledger` (the usage ledger's keys and counters), `error`.

pub(crate) mod body_log;
pub(crate) mod dedup;
pub(crate) mod delete;
pub mod error;
pub(crate) mod fields;
pub(crate) mod index;
pub(crate) mod layout;
pub(crate) mod ledger;
pub(crate) mod query;
pub(crate) mod reader;
pub(crate) mod segment_codec;
pub(crate) mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::store::layout::*;
use crate::store::segment_codec::SegmentCompressor;

pub use delete::{Position, Selection, DELETE_BATCH};
pub use error::StoreError;
pub(crate) use query::summarize;
pub use query::{Cursor, SessionPage, TracePage, TraceQuery};

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// The body files `B` values refer to (`<path>/bodies`).
    bodies: body_log::BodyLog,
    next_seq: AtomicU64,
    /// Commit records not yet merged into the ledger.
    unmerged_runs: AtomicUsize,
    /// Held (write) while commit records are merged into the ledger cells, (read) while the
    /// ledger is read: reading records and cells on either side of a merge would count its
    /// deltas twice, or not at all.
    merging: RwLock<()>,
    /// The one writer's state: held for the whole of a batch.
    writer: std::sync::Mutex<Writer>,
    /// The last seq whose batch is committed (its run written): what exporters may read.
    committed_seq: AtomicU64,
    /// Postings of every committed span by trace, team, user, model, ... (see `index`).
    index: index::SearchIndex,
}

/// What [`Store::write_batch`] keeps from one batch to the next.
struct Writer {
    /// Seqs of a failed batch whose segments could not all be taken back: nothing may be
    /// committed above them (open only removes segments past the last commit) until they are.
    untaken: Option<std::ops::Range<u64>>,
    /// Raw bytes after which a segment is closed: [`SEGMENT_TARGET_BYTES`] times the
    /// compression ratio of the last segment written.
    raw_target: usize,
    /// The segment being filled; its buffers are reused for every segment, so a batch
    /// allocates nothing per segment but sled's own copies.
    segment: SegmentWriter,
    compressor: SegmentCompressor,
    /// Each recent trace's or session's last request, for storing the next one as pieces.
    bases: dedup::Bases,
    /// Body segments whose span segments retention removed while they held bases: seqs
    /// `from..=to`, and the cutoff of the pass that found them (`None`: found at open, not yet
    /// seen by a pass). Removed once the cutoff has moved [`dedup::WINDOW_NANOS`] past it.
    orphans: Vec<(u64, u64, Option<u64>)>,
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
        let db = sled::Config::new().path(path).flush_every_ms(None).cache_capacity(16 << 20).open()?;
        let tree = db.open_tree("spans")?;
        let bodies = body_log::BodyLog::open(&path.join("bodies"))?;
        let format = tree.get(FORMAT_KEY)?.map(|v| v.to_vec());
        let next_seq = match tree.scan_prefix([SPAN_SEGMENT]).next_back() {
            Some(entry) => seq_of(&entry?.0) + 1,
            None => 1,
        };
        let store = Store {
            db,
            tree,
            bodies,
            next_seq: AtomicU64::new(next_seq),
            unmerged_runs: AtomicUsize::new(0),
            merging: RwLock::new(()),
            writer: std::sync::Mutex::new(Writer {
                untaken: None,
                raw_target: SEGMENT_TARGET_BYTES,
                segment: SegmentWriter::new(),
                compressor: SegmentCompressor::default(),
                bases: dedup::Bases::default(),
                orphans: Vec::new(),
            }),
            committed_seq: AtomicU64::new(0),
            index: index::SearchIndex::new(),
        };
        match format.as_deref() {
            None => {
                store.tree.insert(FORMAT_KEY, &[FORMAT_VERSION])?;
            }
            Some([FORMAT_VERSION]) => {}
            Some([FORMAT4 | FORMAT5]) => {
                store.tree.insert(FORMAT_KEY, &[FORMAT_VERSION])?;
            }
            // From now on segments may be compressed (which a format-2 reader cannot read), and
            // the search index replaces the trace index.
            Some([FORMAT2 | FORMAT3]) => store.drop_format3_trace_index()?,
            Some([1]) => store.convert_format1()?,
            Some(v) => {
                return Err(StoreError::Format(format!(
                    "{} holds store format {v:?}, this tracegate reads format {FORMAT_VERSION}",
                    path.display(),
                )))
            }
        }
        let mut unmerged_runs = 0;
        let mut committed_through = match store.tree.get(MERGED_THROUGH_KEY)? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        for entry in store.tree.scan_prefix([INDEX_RUN]) {
            let run = entry?.1;
            let run = Run::decode(&run)?;
            unmerged_runs += 1;
            committed_through = committed_through.max(run.last_seq);
        }
        store.unmerged_runs.store(unmerged_runs, Ordering::Relaxed);
        // Never hand out a seq at or below one already committed (retention may have deleted
        // every segment) or written (a torn batch's segments, removed below).
        store.next_seq.fetch_max(committed_through + 1, Ordering::Relaxed);
        store.committed_seq.store(committed_through, Ordering::Release);
        store.remove_uncommitted(committed_through)?;
        store.recover_body_files()?;
        store.find_orphans()?;
        store.index.load(store.segments())?;
        Ok(store)
    }

    /// Removes segments written after the last commit record: a batch a crash cut short (its
    /// spans were never counted in the ledger nor indexed).
    fn remove_uncommitted(&self, committed_through: u64) -> Result<(), StoreError> {
        let mut removed = 0;
        for kind in [SPAN_SEGMENT, BODY_SEGMENT] {
            let range = segment_key(kind, committed_through.saturating_add(1))..segment_key(kind, u64::MAX);
            for entry in self.tree.range(range) {
                self.tree.remove(entry?.0)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::warn!(segments = removed, "removed the segments of a write that a crash cut short");
            self.flush()?;
        }
        Ok(())
    }

    /// Cuts the body files back to the last record a `B` value refers to (see `body_log`).
    fn recover_body_files(&self) -> Result<(), StoreError> {
        self.bodies.recover(body_log::first_body_ref(self.tree.scan_prefix([BODY_SEGMENT]).values().rev())?)
    }

    /// Where segments are read from: sled and the body files.
    pub(crate) fn segments(&self) -> Segments<'_> {
        Segments { tree: &self.tree, bodies: &self.bodies }
    }

    /// Body segments left by retention below the first span segment (they hold bases, see
    /// `Store::delete_older_than`): removed by a later retention pass, counted from the first.
    fn find_orphans(&self) -> Result<(), StoreError> {
        let first_span = match self.tree.scan_prefix([SPAN_SEGMENT]).next() {
            Some(entry) => seq_of(&entry?.0),
            None => u64::MAX,
        };
        let mut keys = self.tree.range(segment_key(BODY_SEGMENT, 0)..segment_key(BODY_SEGMENT, first_span)).keys();
        let Some(first) = keys.next().transpose()? else { return Ok(()) };
        let last = match keys.next_back().transpose()? {
            Some(key) => seq_of(&key),
            None => seq_of(&first),
        };
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.orphans.push((seq_of(&first), last, None));
        Ok(())
    }

    /// Format 3 (and 2) kept a trace index in bucket pages: remove them; the search index is
    /// built from the segments when the store opens.
    fn drop_format3_trace_index(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.tree.scan_prefix([FORMAT3_INDEX_PAGE]).keys() {
            batch.remove(key?);
        }
        batch.insert(FORMAT_KEY, &[FORMAT_VERSION]);
        self.tree.apply_batch(batch)?;
        self.flush()?;
        tracing::info!("span store moved to format {FORMAT_VERSION}: the search index replaces the trace index");
        Ok(())
    }

    /// Format 1 kept one index key per span and no commit records: drop the keys, and count
    /// every segment as committed (format 1 had no torn-batch repair beyond its own index).
    fn convert_format1(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.tree.scan_prefix([FORMAT1_TRACE_INDEX]).keys() {
            batch.remove(key?);
        }
        batch.remove(FORMAT1_INDEXED_THROUGH_KEY);
        let last_seq = self.next_seq.load(Ordering::Relaxed).saturating_sub(1);
        batch.insert(MERGED_THROUGH_KEY, &last_seq.to_be_bytes());
        batch.insert(FORMAT_KEY, &[FORMAT_VERSION]);
        self.tree.apply_batch(batch)?;
        self.flush()?;
        tracing::info!("span store converted to format {FORMAT_VERSION}");
        Ok(())
    }

    /// Makes everything written so far durable: the body files first, so no durable
    /// reference names bytes that are not.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.bodies.sync()?;
        self.db.flush()?;
        Ok(())
    }

    /// Bytes of the stored body segments (compressed; in a body file or inline in sled): what
    /// the bodies still stored cost on disk before the files' and sled's own overhead (for
    /// benches and diagnostics).
    pub fn body_bytes(&self) -> usize {
        let values = self.tree.scan_prefix([BODY_SEGMENT]).filter_map(|e| e.ok());
        values.map(|(_, v)| body_log::BodyRef::decode(&v).map_or(v.len(), |r| r.len as usize)).sum()
    }

    /// Bytes of the body files on disk (retention frees them a whole file at a time).
    pub fn body_file_bytes(&self) -> u64 {
        self.bodies.file_bytes_on_disk()
    }

    /// Number of spans stored, deleted ones not (walks the segments; for tests and diagnostics).
    pub fn span_count(&self) -> usize {
        let segments = self.tree.scan_prefix([SPAN_SEGMENT]).filter_map(|e| e.ok());
        let counts = segments.filter_map(|(_, segment)| live_spans(&RawSegment::of(segment).ok()?).ok());
        counts.map(|n| n as usize).sum()
    }
}

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod tests;
