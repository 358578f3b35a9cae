//! A flushed index run: the postings of a stretch of consecutive segments, sorted, in chunks.
//!
//! - `X` ‖ run(8) ‖ chunk(4) → up to [`CHUNK_ENTRIES`] entries `term(8) position(8)`, sorted by
//!   term, then position descending (newest first)
//! - `Y` ‖ run(8)            → the run's [`RunMeta`]: its seq and start-time ranges, the first
//!   term of each chunk (to find a term's chunks without reading the others), and a Bloom
//!   filter of its traces and sessions (whose spans are looked up in the few runs that hold them)
//!
//! A run is named by its last seq, so runs sort oldest first. Chunks stay under ~6 KB like
//! segments, out of sled's blob path.

use crate::store::error::StoreError;

pub(crate) const RUN_CHUNK: u8 = b'X';
pub(crate) const RUN_META: u8 = b'Y';
/// Bytes of one posting: term, position.
pub(crate) const ENTRY_BYTES: usize = 16;
pub(crate) const CHUNK_ENTRIES: usize = 384;
/// 2: the Bloom filter holds session terms too; 4: the word index and block times
/// (`words.rs`); 5: word terms hashed by `words::word_term`. Runs of an older version are
/// rebuilt at open.
const META_VERSION: u8 = 5;
/// Bloom filter bits per trace, and probes per lookup: ~1% false positives.
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u64 = 6;

pub(crate) fn chunk_key(run: u64, chunk: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = RUN_CHUNK;
    key[1..9].copy_from_slice(&run.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

pub(crate) fn meta_key(run: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = RUN_META;
    key[1..].copy_from_slice(&run.to_be_bytes());
    key
}

/// What is kept in memory of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunMeta {
    /// The run's name: its last seq.
    pub(crate) id: u64,
    pub(crate) first_seq: u64,
    pub(crate) min_start: u64,
    pub(crate) max_start: u64,
    pub(crate) spans: u32,
    /// The first term of each chunk.
    pub(crate) directory: Vec<u64>,
    pub(crate) bloom: Vec<u64>,
    /// The first term of each word chunk (`words.rs`).
    pub(crate) word_directory: Vec<u64>,
    /// The first position of each block of the word index.
    pub(crate) block_starts: Vec<u64>,
    /// Each block's earliest and latest start time, flattened.
    pub(crate) block_times: Vec<u64>,
}

impl RunMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let lists = [&self.directory, &self.bloom, &self.word_directory, &self.block_starts, &self.block_times];
        let mut out = Vec::with_capacity(56 + 8 * lists.iter().map(|l| l.len()).sum::<usize>());
        out.push(META_VERSION);
        for n in [self.id, self.first_seq, self.min_start, self.max_start] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.spans.to_be_bytes());
        for list in lists {
            out.extend_from_slice(&(list.len() as u32).to_be_bytes());
            list.iter().for_each(|n| out.extend_from_slice(&n.to_be_bytes()));
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<RunMeta, StoreError> {
        let bad = || StoreError::Corrupt("index run header".into());
        let mut rest = bytes.strip_prefix(&[META_VERSION]).ok_or_else(bad)?;
        let head = take_u64s(&mut rest, 4).ok_or_else(bad)?;
        let spans = take_u32(&mut rest).ok_or_else(bad)?;
        let mut list = || {
            let n = take_u32(&mut rest).ok_or_else(bad)? as usize;
            take_u64s(&mut rest, n).ok_or_else(bad)
        };
        let (directory, bloom, word_directory) = (list()?, list()?, list()?);
        let (block_starts, block_times) = (list()?, list()?);
        Ok(RunMeta {
            id: head[0],
            first_seq: head[1],
            min_start: head[2],
            max_start: head[3],
            spans,
            directory,
            bloom,
            word_directory,
            block_starts,
            block_times,
        })
    }

    /// The chunks that may hold `term`: from the last chunk starting below it through the last
    /// chunk starting at it.
    pub(crate) fn chunks_of(&self, term: u64) -> std::ops::Range<u32> {
        let below = self.directory.partition_point(|first| *first < term);
        let through = self.directory.partition_point(|first| *first <= term);
        let start = below.saturating_sub(1);
        // A term starting no chunk lies inside the chunk before it (if anywhere).
        start as u32..through.max(start + 1).min(self.directory.len()) as u32
    }

    /// The word chunk that may hold `term` (the last one starting at or below it).
    pub(crate) fn word_chunk_of(&self, term: u64) -> Option<u32> {
        let through = self.word_directory.partition_point(|first| *first <= term);
        through.checked_sub(1).map(|c| c as u32)
    }

    /// Whether a header was written by this version (else the run is rebuilt).
    pub(crate) fn is_current(bytes: &[u8]) -> bool {
        bytes.first() == Some(&META_VERSION)
    }

    /// Whether the run may hold spans of the trace or session whose term is `term` (false:
    /// surely not).
    pub(crate) fn may_hold(&self, term: u64) -> bool {
        bloom_contains(&self.bloom, term)
    }
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let bytes = rest.get(..4)?;
    *rest = &rest[4..];
    Some(u32::from_be_bytes(bytes.try_into().expect("4 bytes")))
}

fn take_u64s(rest: &mut &[u8], n: usize) -> Option<Vec<u64>> {
    let bytes = rest.get(..n.checked_mul(8)?)?;
    *rest = &rest[n * 8..];
    Some(bytes.chunks_exact(8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// A Bloom filter over `keys` (terms are hashes already: probes are derived from them).
pub(crate) fn bloom_of(keys: &[u64]) -> Vec<u64> {
    let words = (keys.len() * BLOOM_BITS_PER_KEY).div_ceil(64).max(1);
    let mut bits = vec![0u64; words];
    for key in keys {
        for bit in probes(*key, words) {
            bits[bit / 64] |= 1 << (bit % 64);
        }
    }
    bits
}

fn bloom_contains(bits: &[u64], key: u64) -> bool {
    !bits.is_empty() && probes(key, bits.len()).all(|bit| bits[bit / 64] & (1 << (bit % 64)) != 0)
}

fn probes(key: u64, words: usize) -> impl Iterator<Item = usize> {
    let m = words as u64 * 64;
    let (h1, h2) = (key, key.rotate_left(32) | 1);
    (0..BLOOM_PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
}

/// Encodes sorted `(term, position)` entries into chunks; returns the chunks and the directory.
pub(crate) fn chunks(entries: &[(u64, u64)]) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut chunks = Vec::with_capacity(entries.len().div_ceil(CHUNK_ENTRIES));
    let mut directory = Vec::with_capacity(chunks.capacity());
    for group in entries.chunks(CHUNK_ENTRIES) {
        directory.push(group[0].0);
        let mut chunk = Vec::with_capacity(group.len() * ENTRY_BYTES);
        for (term, position) in group {
            chunk.extend_from_slice(&term.to_be_bytes());
            chunk.extend_from_slice(&position.to_be_bytes());
        }
        chunks.push(chunk);
    }
    (chunks, directory)
}

/// The positions of `term` in one chunk, newest first.
pub(crate) fn positions_in(chunk: &[u8], term: u64) -> impl Iterator<Item = u64> + '_ {
    chunk.chunks_exact(ENTRY_BYTES).filter_map(move |e| {
        let t = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
        (t == term).then(|| u64::from_be_bytes(e[8..].try_into().expect("8 bytes")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_finds_a_terms_chunks() {
        let mut entries: Vec<(u64, u64)> = (0..1000u64).map(|i| (i / 10, 5000 - i)).collect();
        entries.extend((0..2000u64).map(|i| (500, 9000 - i)));
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let (chunks, directory) = chunks(&entries);
        let meta = RunMeta {
            id: 9,
            first_seq: 1,
            min_start: 2,
            max_start: 3,
            spans: 3000,
            directory,
            bloom: bloom_of(&[1, 2, 3]),
            word_directory: vec![4, 8],
            block_starts: vec![1 << 16, 2 << 16],
            block_times: vec![5, 6, 7, 8],
        };
        assert_eq!(RunMeta::decode(&meta.encode()).unwrap(), meta);
        assert!(RunMeta::decode(&meta.encode()[..20]).is_err());
        for term in [0u64, 5, 38, 99, 500, 77_777] {
            let expected: Vec<u64> = entries.iter().filter(|e| e.0 == term).map(|e| e.1).collect();
            let found: Vec<u64> = meta
                .chunks_of(term)
                .flat_map(|c| positions_in(&chunks[c as usize], term).collect::<Vec<_>>())
                .collect();
            assert_eq!(found, expected, "term {term}");
        }
    }

    #[test]
    fn the_bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let keys: Vec<u64> = (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let bits = bloom_of(&keys);
        assert!(keys.iter().all(|k| bloom_contains(&bits, *k)));
        let false_positives = (0..10_000u64)
            .filter(|i| bloom_contains(&bits, (i + 1_000_000).wrapping_mul(0xff51_afd7_ed55_8ccd)))
            .count();
        assert!(false_positives < 300, "{false_positives} of 10,000");
        assert!(!bloom_contains(&[], 1));
    }
}
