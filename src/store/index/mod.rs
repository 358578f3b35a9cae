//! The search index: every span's position (segment seq, place in the segment) under each term
//! it can be found by (`terms`), newest first, so a page of `/api/traces` reads only the
//! postings and spans it returns, however old its matches are.
//!
//! Shaped like a small LSM tree, all of it derived from the span segments:
//! - the **memtable** holds the postings of the spans written since the last run, in memory
//!   (a hash map from term to positions). Adding a batch costs a few hash-map pushes per span,
//!   on the recorder thread, with no write to sled.
//! - a **run** (`run.rs`) is the memtable written out once it holds [`RUN_SPANS`] spans: its
//!   postings sorted by term in ~6 KB chunks, and a header kept in memory (seq and time ranges,
//!   each chunk's first term, a Bloom filter of its traces). A term costs one binary search and
//!   one chunk read per run; a trace, one chunk read in each of the few runs its filter admits.
//!
//! Nothing here is a commit record: after a crash, or for a store written before the index
//! existed, [`SearchIndex::open`] re-reads the spans past the last run. Retention drops runs
//! whose segments are all gone; positions of deleted segments are skipped when read.

mod erase;
pub(crate) mod run;
pub(crate) mod terms;
pub(crate) mod words;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use crate::model::ids::TraceId;
use crate::model::span::Span;
use crate::store::error::StoreError;
use crate::store::layout::SPAN_SEGMENT;
use crate::store::layout::{
    decode, raw_bodies_at, resolved, segment_key, seq_of, RawSegment, Segments, SpanSegment, BODY_SEGMENT,
};
use run::RunMeta;
use terms::Field;
use words::{Blocks, WordTable};

/// Spans per run: a run's header stays ~100 KB in memory, its postings ~1.5 MB on disk.
pub const RUN_SPANS: u32 = 65_536;

/// A span's place: its segment's seq and its index in the segment, as one sortable number.
pub(crate) fn position(seq: u64, index: u16) -> u64 {
    (seq << 16) | u64::from(index)
}

pub(crate) fn seq_of_position(position: u64) -> u64 {
    position >> 16
}

pub(crate) fn index_of_position(position: u64) -> u16 {
    (position & 0xffff) as u16
}

#[derive(Default)]
struct Memtable {
    /// term → positions, oldest first.
    postings: HashMap<u64, Vec<u64>>,
    /// The trace and session terms among `postings`' keys (for the run's Bloom filter).
    keyed: Vec<u64>,
    /// The words of the spans' bodies, by block.
    words: WordTable,
    spans: u32,
    /// Counts memtables (a block of this one is not a block of the one before).
    generation: u64,
    first_seq: u64,
    last_seq: u64,
    min_start: u64,
    max_start: u64,
}

impl Memtable {
    /// The empty memtable that replaces this one.
    fn next(&self) -> Memtable {
        Memtable { generation: self.generation + 1, ..Memtable::default() }
    }
}

/// A committed span to index, with its bodies (empty when not kept).
pub(crate) struct Indexed<'a> {
    pub(crate) position: u64,
    pub(crate) span: &'a Span,
    pub(crate) bodies: [&'a [u8]; 2],
}

#[derive(Default)]
struct State {
    memtable: Memtable,
    /// Oldest first.
    runs: Vec<Arc<RunMeta>>,
}

impl State {
    /// When the memtable that began at `first_seq` was written out as a run since a query took
    /// its sources: `Some` of that run (`Some(None)` if retention dropped it too). A query reads
    /// the memtable and this check under one lock, so a flush between taking the sources and
    /// reading them hides nothing.
    fn flushed(&self, first_seq: u64) -> Option<Option<Source>> {
        if self.memtable.spans > 0 && self.memtable.first_seq == first_seq {
            return None;
        }
        Some(self.runs.iter().find(|r| r.first_seq == first_seq).map(|run| Source::Run(run.clone())))
    }
}

/// Where the positions of one part of the store come from, for a query walking newest first.
pub(crate) enum Source {
    Memtable { min_start: u64, max_start: u64, first_seq: u64 },
    Run(Arc<RunMeta>),
}

impl Source {
    /// Whether any span here started in `[from, to)`.
    pub(crate) fn overlaps(&self, from: u64, to: u64) -> bool {
        let (min, max) = match self {
            Source::Memtable { min_start, max_start, .. } => (*min_start, *max_start),
            Source::Run(run) => (run.min_start, run.max_start),
        };
        max >= from && min < to
    }

    /// The lowest position here.
    pub(crate) fn first_position(&self) -> u64 {
        match self {
            Source::Memtable { first_seq, .. } => position(*first_seq, 0),
            Source::Run(run) => position(run.first_seq, 0),
        }
    }
}

pub(crate) struct SearchIndex {
    state: RwLock<State>,
    /// The writer's recent requests of the current block (see `words::RecentBodies`).
    recent_bodies: std::sync::Mutex<words::RecentBodies>,
    /// Spans a memtable holds before it is written out ([`RUN_SPANS`]; tests set less).
    run_spans: AtomicU32,
}

impl SearchIndex {
    pub(crate) fn new() -> SearchIndex {
        SearchIndex {
            state: RwLock::new(State::default()),
            recent_bodies: Default::default(),
            run_spans: AtomicU32::new(RUN_SPANS),
        }
    }

    /// Loads the runs' headers and re-reads the committed spans written after the last run
    /// (all of them for a store written before the index existed, with progress in the log).
    pub(crate) fn load(&self, from: Segments) -> Result<(), StoreError> {
        let tree = from.tree;
        let mut runs = Vec::new();
        let mut stale = Vec::new();
        for entry in tree.scan_prefix([run::RUN_META]) {
            let (key, meta) = entry?;
            match RunMeta::is_current(&meta) {
                true => runs.push(Arc::new(RunMeta::decode(&meta)?)),
                false => stale.push(seq_of(&key)),
            }
        }
        if !stale.is_empty() {
            // Written by an older tracegate: rebuilt from the segments, like a missing index.
            tracing::info!(runs = stale.len(), "search index: rebuilding runs of an older index version");
            runs.clear();
            for prefix in [run::RUN_META, run::RUN_CHUNK, words::WORD_CHUNK] {
                for key in tree.scan_prefix([prefix]).keys() {
                    tree.remove(key?)?;
                }
            }
        }
        let indexed_through = runs.last().map(|r| r.id).unwrap_or(0);
        let mut state = self.write();
        *state = State { memtable: state.memtable.next(), runs };
        drop(state);
        let range = segment_key(SPAN_SEGMENT, indexed_through.saturating_add(1))..segment_key(SPAN_SEGMENT, u64::MAX);
        let mut replayed = 0u64;
        for entry in tree.range(range) {
            let (key, segment) = entry?;
            let seq = seq_of(&key);
            let segment = RawSegment::of(segment)?;
            let bodies = from.get(BODY_SEGMENT, seq)?;
            let mut spans = Vec::new();
            for (i, span) in SpanSegment::new(&segment)?.enumerate() {
                let span = span?;
                if span.is_tombstone() {
                    continue;
                }
                let (request, response) = match &bodies {
                    Some(b) => resolved(from, raw_bodies_at(b, i)?)?
                        .map_or((Cow::Borrowed(&[][..]), &[][..]), |(_, q, r)| (q, r)),
                    None => (Cow::Borrowed(&[][..]), &[][..]),
                };
                spans.push((position(seq, i as u16), decode::<Span>(span.json)?, request, response));
            }
            replayed += spans.len() as u64;
            self.add(spans.iter().map(|(position, span, request, response)| Indexed {
                position: *position,
                span,
                bodies: [request, response],
            }));
            if self.is_full() {
                self.flush(tree)?;
                tracing::info!(
                    spans = replayed,
                    "search index: indexing spans stored before it, or since its last run"
                );
            }
        }
        if replayed > 0 {
            tracing::info!(spans = replayed, "search index: spans past its last run re-read");
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the memtable should be written out as a run.
    pub(crate) fn is_full(&self) -> bool {
        self.read().memtable.spans >= self.run_spans.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn set_run_spans(&self, spans: u32) {
        self.run_spans.store(spans, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        self.read().runs.len()
    }

    /// Indexes committed spans (in position order). Their terms and words are found before the
    /// lock is taken; under it, each costs a few hash-map updates.
    pub(crate) fn add<'a>(&self, spans: impl IntoIterator<Item = Indexed<'a>>) {
        let mut word_terms: Vec<u64> = Vec::new();
        // Only the writer adds, so the memtable's count cannot move before the write lock.
        let (generation, mut ordinal) = {
            let state = self.read();
            (state.memtable.generation, state.memtable.spans)
        };
        let mut recent = self.recent_bodies.lock().unwrap_or_else(|p| p.into_inner());
        let spans: Vec<(u64, &Span, Vec<u64>, std::ops::Range<usize>)> = spans
            .into_iter()
            .map(|s| {
                let start = word_terms.len();
                let block = words::block_of(ordinal);
                ordinal += 1;
                let [request, response] = s.bodies;
                let request = recent.new_part((generation, block), request);
                for body in [request, response] {
                    words::for_each_word(body, |w| word_terms.push(words::word_term(w)));
                }
                (s.position, s.span, terms::terms_of(s.span), start..word_terms.len())
            })
            .collect();
        let mut state = self.write();
        let m = &mut state.memtable;
        for (position, span, terms, words) in spans {
            let seq = seq_of_position(position);
            if m.spans == 0 {
                (m.first_seq, m.min_start, m.max_start) = (seq, span.start_time_unix_nano, span.start_time_unix_nano);
            }
            m.words.add(m.spans, position, span.start_time_unix_nano, &word_terms[words]);
            m.spans += 1;
            m.last_seq = seq;
            m.min_start = m.min_start.min(span.start_time_unix_nano);
            m.max_start = m.max_start.max(span.start_time_unix_nano);
            let trace = terms::trace_term(&span.trace_id);
            let session = span.session.as_ref().map(|s| terms::term(Field::Session, s.as_bytes()));
            for term in terms {
                let list = m.postings.entry(term).or_default();
                if list.is_empty() && (term == trace || Some(term) == session) {
                    m.keyed.push(term);
                }
                list.push(position);
            }
        }
    }

    /// Writes the memtable out as a run (atomically), then empties it. Only the one writer
    /// calls this; queries go on meanwhile.
    pub(crate) fn flush(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let (meta, chunks, word_chunks) = {
            let state = self.read();
            let m = &state.memtable;
            if m.spans == 0 {
                return Ok(());
            }
            let mut entries: Vec<(u64, u64)> = Vec::with_capacity(m.postings.values().map(Vec::len).sum());
            for (term, positions) in &m.postings {
                entries.extend(positions.iter().rev().map(|p| (*term, *p)));
            }
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let (chunks, directory) = run::chunks(&entries);
            let (word_chunks, word_directory) = m.words.chunks();
            let meta = RunMeta {
                id: m.last_seq,
                first_seq: m.first_seq,
                min_start: m.min_start,
                max_start: m.max_start,
                spans: m.spans,
                directory,
                bloom: run::bloom_of(&m.keyed),
                word_directory,
                block_starts: m.words.block_starts.clone(),
                block_times: m.words.block_times.clone(),
            };
            (meta, chunks, word_chunks)
        };
        let mut batch = sled::Batch::default();
        for (i, chunk) in chunks.into_iter().enumerate() {
            batch.insert(&run::chunk_key(meta.id, i as u32), chunk);
        }
        for (i, chunk) in word_chunks.into_iter().enumerate() {
            batch.insert(&words::chunk_key(meta.id, i as u32), chunk);
        }
        batch.insert(&run::meta_key(meta.id), meta.encode());
        tree.apply_batch(batch)?;
        let mut state = self.write();
        state.runs.push(Arc::new(meta));
        state.memtable = state.memtable.next();
        Ok(())
    }

    /// Drops the runs whose spans are all in segments before `seq` (deleted by retention).
    pub(crate) fn drop_runs_before(&self, tree: &sled::Tree, seq: u64) -> Result<(), StoreError> {
        let gone: Vec<Arc<RunMeta>> = self.read().runs.iter().filter(|r| r.id < seq).cloned().collect();
        for meta in &gone {
            // The header first: a run without it is never read, and its chunks are removed below
            // (or, after a crash, they are only dead bytes).
            tree.remove(run::meta_key(meta.id))?;
            self.write().runs.retain(|r| r.id != meta.id);
            for chunk in 0..meta.directory.len() as u32 {
                tree.remove(run::chunk_key(meta.id, chunk))?;
            }
            for chunk in 0..meta.word_directory.len() as u32 {
                tree.remove(words::chunk_key(meta.id, chunk))?;
            }
        }
        Ok(())
    }

    /// The parts of the index, newest first.
    pub(crate) fn sources(&self) -> Vec<Source> {
        let state = self.read();
        let m = &state.memtable;
        let mut sources = Vec::with_capacity(state.runs.len() + 1);
        if m.spans > 0 {
            sources.push(Source::Memtable { min_start: m.min_start, max_start: m.max_start, first_seq: m.first_seq });
        }
        sources.extend(state.runs.iter().rev().map(|r| Source::Run(r.clone())));
        sources
    }

    /// About how many positions the terms have in `source` (for choosing which to walk).
    pub(crate) fn estimate(&self, source: &Source, terms: &[u64]) -> usize {
        match source {
            Source::Memtable { first_seq, .. } => {
                let state = self.read();
                if let Some(flushed) = state.flushed(*first_seq) {
                    drop(state);
                    return flushed.map_or(0, |run| self.estimate(&run, terms));
                }
                terms.iter().map(|t| state.memtable.postings.get(t).map_or(0, Vec::len)).sum()
            }
            Source::Run(run) => terms.iter().map(|t| run.chunks_of(*t).len() * run::CHUNK_ENTRIES).sum(),
        }
    }

    /// The positions in `source` of any of `terms`, newest first.
    pub(crate) fn positions(&self, tree: &sled::Tree, source: &Source, terms: &[u64]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        match source {
            Source::Memtable { first_seq, .. } => {
                let state = self.read();
                if let Some(flushed) = state.flushed(*first_seq) {
                    drop(state);
                    return flushed.map_or(Ok(Vec::new()), |run| self.positions(tree, &run, terms));
                }
                for term in terms {
                    if let Some(list) = state.memtable.postings.get(term) {
                        out.extend(list.iter().rev());
                    }
                }
            }
            Source::Run(run) => {
                for term in terms {
                    for chunk in run.chunks_of(*term) {
                        if let Some(bytes) = tree.get(run::chunk_key(run.id, chunk))? {
                            out.extend(run::positions_in(&bytes, *term));
                        }
                    }
                }
            }
        }
        if terms.len() > 1 {
            out.sort_unstable_by(|a, b| b.cmp(a));
            out.dedup();
        }
        Ok(out)
    }

    /// Every position of the trace's spans, newest first.
    pub(crate) fn trace_positions(&self, tree: &sled::Tree, trace_id: &TraceId) -> Result<Vec<u64>, StoreError> {
        self.keyed_positions(tree, terms::trace_term(trace_id))
    }

    /// Every position of the session's spans, newest first.
    pub(crate) fn session_positions(&self, tree: &sled::Tree, session: &str) -> Result<Vec<u64>, StoreError> {
        self.keyed_positions(tree, terms::term(Field::Session, session.as_bytes()))
    }

    /// Every position of a trace or session term, reading only the runs whose Bloom filter
    /// admits it.
    fn keyed_positions(&self, tree: &sled::Tree, term: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for source in self.sources() {
            if let Source::Run(run) = &source {
                if !run.may_hold(term) {
                    continue;
                }
            }
            out.extend(self.positions(tree, &source, &[term])?);
        }
        Ok(out)
    }

    /// The stretches of positions `[start, end)` in `source` whose blocks hold every one of
    /// `words` (word terms) and have spans that started in `[from, to)`, newest first: where
    /// a match may be.
    pub(crate) fn block_ranges(
        &self,
        tree: &sled::Tree,
        source: &Source,
        words: &[u64],
        (from, to): (u64, u64),
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let (blocks, starts, times, end) = match source {
            Source::Memtable { first_seq, .. } => {
                let state = self.read();
                if let Some(flushed) = state.flushed(*first_seq) {
                    drop(state);
                    return flushed.map_or(Ok(Vec::new()), |run| self.block_ranges(tree, &run, words, (from, to)));
                }
                let m = &state.memtable;
                let end = position(m.last_seq + 1, 0);
                (m.words.blocks_of(words), m.words.block_starts.clone(), m.words.block_times.clone(), end)
            }
            Source::Run(run) => {
                let mut blocks = Blocks::ALL;
                for word in words {
                    let Some(chunk) = run.word_chunk_of(*word) else { return Ok(Vec::new()) };
                    let Some(bytes) = tree.get(words::chunk_key(run.id, chunk))? else { return Ok(Vec::new()) };
                    blocks = blocks.and(words::blocks_in(&bytes, *word));
                    if blocks.is_empty() {
                        return Ok(Vec::new());
                    }
                }
                (blocks, run.block_starts.clone(), run.block_times.clone(), position(run.id + 1, 0))
            }
        };
        let in_window = |b: usize| times.get(2 * b..2 * b + 2).is_none_or(|t| t[1] >= from && t[0] < to);
        Ok(blocks
            .newest_first()
            .filter(|b| in_window(*b))
            .filter_map(|b| Some((*starts.get(b)?, starts.get(b + 1).copied().unwrap_or(end))))
            .collect())
    }
}
