//! Removing deleted spans' postings (see `store/delete.rs`): from the memtable in memory, and
//! from the run chunks that hold them, each chunk read once and rewritten without them.
//!
//! A chunk only loses entries, so it stays sorted and within the term range its run's directory
//! gives it: the directory, the Bloom filter and the run's header are left as they were (a
//! filter that still admits a deleted trace costs a chunk read, never a wrong answer). Only
//! the one writer calls this, so no run is written or dropped meanwhile.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{run, seq_of_position, terms, SearchIndex};
use crate::model::span::Span;
use crate::store::error::StoreError;

/// Term → the positions whose posting under it goes.
type Gone = HashMap<u64, HashSet<u64>>;

impl SearchIndex {
    /// Removes every posting of `spans` (each with its position).
    pub(crate) fn erase(&self, tree: &sled::Tree, spans: &[(u64, Span)]) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        let mut in_memtable: Gone = HashMap::new();
        let mut in_runs: Vec<(Arc<run::RunMeta>, Gone)> = Vec::new();
        {
            let state = self.read();
            let memtable_from = (state.memtable.spans > 0).then_some(state.memtable.first_seq);
            for (position, span) in spans {
                let seq = seq_of_position(*position);
                let postings = if memtable_from.is_some_and(|first| seq >= first) {
                    &mut in_memtable
                } else if let Some(run) = state.runs.iter().find(|r| r.first_seq <= seq && seq <= r.id) {
                    match in_runs.iter().position(|(r, _)| r.id == run.id) {
                        Some(i) => &mut in_runs[i].1,
                        None => {
                            in_runs.push((run.clone(), HashMap::new()));
                            &mut in_runs.last_mut().expect("just pushed").1
                        }
                    }
                } else {
                    continue; // indexed nowhere (its run dropped by retention)
                };
                for term in terms::terms_of(span) {
                    postings.entry(term).or_default().insert(*position);
                }
            }
        }
        if !in_memtable.is_empty() {
            let mut state = self.write();
            let postings = &mut state.memtable.postings;
            for (term, gone) in &in_memtable {
                if let Some(list) = postings.get_mut(term) {
                    list.retain(|p| !gone.contains(p));
                    if list.is_empty() {
                        postings.remove(term);
                    }
                }
            }
        }
        for (run, gone) in in_runs {
            let chunks: BTreeSet<u32> = gone.keys().flat_map(|term| run.chunks_of(*term)).collect();
            for chunk in chunks {
                let key = run::chunk_key(run.id, chunk);
                let Some(bytes) = tree.get(key)? else { continue };
                let kept: Vec<u8> = bytes
                    .chunks_exact(run::ENTRY_BYTES)
                    .filter(|e| {
                        let term = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
                        let position = u64::from_be_bytes(e[8..].try_into().expect("8 bytes"));
                        !gone.get(&term).is_some_and(|g| g.contains(&position))
                    })
                    .flatten()
                    .copied()
                    .collect();
                if kept.len() != bytes.len() {
                    tree.insert(key, kept)?;
                }
            }
        }
        Ok(())
    }
}
