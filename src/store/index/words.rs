//! The word index behind `q`: which **blocks** of 256 consecutive spans hold each word of
//! their request or response bodies. A phrase query ANDs its words' blocks and reads only the
//! bodies of the blocks left, where the phrase itself is checked (`query.rs`).
//!
//! Blocks, not spans: a body holds hundreds of words, so span-level postings would cost more
//! than the bodies' own bytes; a block's set of words costs one bit per word. A run (at most
//! [`BLOCKS`] blocks) stores each word's blocks as a short list of block numbers, or as a
//! 256-bit bitmap when the word is common:
//!
//! - `W` ‖ run(8) ‖ chunk(4) → entries `term(8) n(1) blocks`, sorted by term: `n` block
//!   numbers (u8) when `n` < [`LIST_MAX`], else `n` = 255 and a 32-byte bitmap
//!
//! and the run's header (`run.rs`) keeps each chunk's first term and the first position of
//! each block. A word is a run of ASCII letters and digits and bytes ≥ 0x80 (UTF-8 text),
//! ASCII-lowercased, 2 to [`MAX_WORD`] bytes long (shorter and longer ones are not indexed, and
//! a query ignores them for narrowing). JSON escapes (`\n`, `\"`, `\u00e9`, ...) separate
//! words, so a body's raw JSON and the text it encodes give the same words.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::store::dedup::shared_ends;

/// Spans per block.
pub(crate) const BLOCK_SPANS: u32 = 256;
/// Blocks per run (a run's later spans, if a batch overfilled it, go to its last block).
pub(crate) const BLOCKS: usize = 256;
/// Longest word indexed, in bytes.
pub(crate) const MAX_WORD: usize = 32;
/// A word in fewer blocks than this is stored as a list of block numbers.
const LIST_MAX: usize = 32;
const BITMAP_TAG: u8 = 255;
/// Bytes after which a chunk is closed (like segments, under sled's blob path).
const CHUNK_BYTES: usize = 6 * 1024;

pub(crate) const WORD_CHUNK: u8 = b'W';

pub(crate) fn chunk_key(run: u64, chunk: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = WORD_CHUNK;
    key[1..9].copy_from_slice(&run.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The block of a memtable's `ordinal`-th span (a run's later spans, if a batch overfilled
/// it, go to its last block).
pub(crate) fn block_of(ordinal: u32) -> usize {
    ((ordinal / BLOCK_SPANS) as usize).min(BLOCKS - 1)
}

/// A set of blocks of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Blocks(pub(crate) [u64; 4]);

impl Blocks {
    pub(crate) const ALL: Blocks = Blocks([u64::MAX; 4]);

    pub(crate) fn insert(&mut self, block: usize) {
        self.0[block / 64] |= 1 << (block % 64);
    }

    pub(crate) fn contains(&self, block: usize) -> bool {
        self.0[block / 64] & (1 << (block % 64)) != 0
    }

    pub(crate) fn and(self, other: Blocks) -> Blocks {
        Blocks(std::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Block numbers, highest (newest) first.
    pub(crate) fn newest_first(self) -> impl Iterator<Item = usize> {
        (0..BLOCKS).rev().filter(move |b| self.contains(*b))
    }
}

/// Per byte: 0 when it separates words, else the byte ASCII-lowercased.
const WORD_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c >= 0x80 {
            table[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    table
};

/// Whether `b` is part of a word.
pub(crate) fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[usize::from(b)] != 0
}

/// Calls `f` with each indexable word of `text`, as it is there (`word_term` lowercases).
pub(crate) fn for_each_word(text: &[u8], mut f: impl FnMut(&[u8])) {
    let mut i = 0;
    while i < text.len() {
        if !is_word_byte(text[i]) {
            // A JSON escape is a separator as a whole: `\nHello` is the word `hello`. Only a
            // well-formed `\uXXXX` is six bytes: a malformed one (not JSON, but a body may be
            // anything) is two, like any escape, so no skip ever crosses a separator that
            // `RecentBodies` may start or end a scan at.
            i += match (text[i], text.get(i + 1)) {
                (b'\\', Some(b'u')) if text.get(i + 2..i + 6).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) => 6,
                (b'\\', Some(_)) => 2,
                _ => 1,
            };
            continue;
        }
        let start = i;
        while i < text.len() && is_word_byte(text[i]) {
            i += 1;
        }
        if (2..=MAX_WORD).contains(&(i - start)) {
            f(&text[start..i]);
        }
    }
}

/// Request bodies repeat one another (the same system prompt and tools in every call of an
/// app; every step of an agent loop resends the ones before): within a block, only the part of
/// a request that differs from a request already indexed in the block can add words to it.
/// The writer keeps the last few such requests of the current block.
#[derive(Default)]
pub(crate) struct RecentBodies {
    block: Option<(u64, usize)>,
    bodies: Vec<Vec<u8>>,
    next: usize,
}

/// Requests remembered per block, and the sizes worth comparing.
const RECENT_BODIES: usize = 4;
const RECENT_MIN: usize = 1024;
const RECENT_MAX: usize = 256 << 10;

impl RecentBodies {
    /// The part of `text` (a request of a span in `block`: memtable generation, block number)
    /// whose words the block may not hold yet: all of it, or the middle where it differs
    /// from a request indexed in the same block, widened to separators at which the word
    /// scan reads the same as over the whole text.
    pub(crate) fn new_part<'t>(&mut self, block: (u64, usize), text: &'t [u8]) -> &'t [u8] {
        if self.block != Some(block) {
            self.bodies.clear();
            (self.block, self.next) = (Some(block), 0);
        }
        if !(RECENT_MIN..=RECENT_MAX).contains(&text.len()) {
            return text;
        }
        let mut best = (0, 0);
        for body in &self.bodies {
            let (head, tail) = shared_ends(text, body);
            if head + tail > best.0 + best.1 {
                best = (head, tail);
            }
        }
        if best.0 + best.1 < text.len() {
            if self.bodies.len() < RECENT_BODIES {
                self.bodies.push(text.to_vec());
            } else {
                self.bodies[self.next] = text.to_vec();
            }
            self.next = (self.next + 1) % RECENT_BODIES;
        }
        if best == (0, 0) {
            return text;
        }
        &text[separator_before(text, best.0)..separator_after(text, text.len() - best.1)]
    }
}

/// A byte where the word scan starts afresh whatever came before it: one that separates
/// words and is not a backslash (so neither the start of an escape nor inside `\uXXXX`, whose
/// four bytes are hex digits: word bytes). As the second byte of a two-byte escape it is
/// passed over alike from either side.
fn is_resync(b: u8) -> bool {
    !is_word_byte(b) && b != b'\\'
}

/// The last resync byte at or before `at` (0 when none).
fn separator_before(text: &[u8], at: usize) -> usize {
    text[..at.min(text.len())].iter().rposition(|b| is_resync(*b)).unwrap_or(0)
}

/// The first resync byte at or after `at` (the end when none).
fn separator_after(text: &[u8], at: usize) -> usize {
    text[at..].iter().position(|b| is_resync(*b)).map_or(text.len(), |i| at + i)
}

/// The term of a word, ASCII-lowercased as it is hashed: eight bytes at a time, one multiply
/// each (most words are one step), so hashing a body costs about a cycle per byte. Word terms
/// live in their own chunks, apart from the other fields' terms (`terms.rs`).
pub(crate) fn word_term(word: &[u8]) -> u64 {
    let mut hash = 0x9e37_79b9_7f4a_7c15 ^ word.len() as u64;
    for chunk in word.chunks(8) {
        let v = chunk.iter().fold(0u64, |v, b| (v << 8) | u64::from(WORD_BYTES[usize::from(*b)]));
        hash = (hash ^ v).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash ^= hash >> 31;
    }
    hash ^ (hash >> 29)
}

/// The terms of a phrase's indexable words.
pub(crate) fn phrase_terms(phrase: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for_each_word(phrase.as_bytes(), |w| out.push(word_term(w)));
    out.sort_unstable();
    out.dedup();
    out
}

/// Terms are hashes already: the memtable's map uses them as they are.
#[derive(Default)]
pub(crate) struct TermHasher(u64);

impl Hasher for TermHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Slots of [`WordTable`]'s cache of the words already recorded in the current block.
const RECENT_SLOTS: usize = 8192;

/// The words of the memtable's spans: term → blocks, and where each block starts.
#[derive(Default)]
pub(crate) struct WordTable {
    pub(crate) words: HashMap<u64, Blocks, BuildHasherDefault<TermHasher>>,
    /// Words recorded in the current block, direct-mapped by hash (64 KB, cache-resident): a
    /// word a block repeats (an agent resends its whole conversation every step) is found
    /// here instead of in `words`, whose lookups miss the CPU's caches once it is large. Exact:
    /// a word is skipped only when its own term sits in its slot.
    recent: Vec<u64>,
    recent_block: Option<usize>,
    /// The first position of each block begun so far.
    pub(crate) block_starts: Vec<u64>,
    /// Each block's earliest and latest span start time, flattened (`min, max, min, max, ...`):
    /// a `from`/`to` query reads only the blocks overlapping its window.
    pub(crate) block_times: Vec<u64>,
}

impl WordTable {
    /// Adds one span's words (`terms`, any order, repeats allowed) as the memtable's
    /// `ordinal`-th span, at `position`, started at `start` (unix ns).
    pub(crate) fn add(&mut self, ordinal: u32, position: u64, start: u64, terms: &[u64]) {
        let block = block_of(ordinal);
        if self.block_starts.len() <= block {
            self.block_starts.push(position);
            self.block_times.extend([start, start]);
        }
        let times = &mut self.block_times[2 * block..2 * block + 2];
        (times[0], times[1]) = (times[0].min(start), times[1].max(start));
        if self.recent_block != Some(block) {
            self.recent.clear();
            self.recent.resize(RECENT_SLOTS, 0);
            self.recent_block = Some(block);
        }
        for &term in terms {
            let slot = &mut self.recent[(term as usize) % RECENT_SLOTS];
            if *slot == term && term != 0 {
                continue;
            }
            *slot = term;
            self.words.entry(term).or_default().insert(block);
        }
    }

    /// The blocks holding every one of `terms`.
    pub(crate) fn blocks_of(&self, terms: &[u64]) -> Blocks {
        terms.iter().fold(Blocks::ALL, |acc, t| acc.and(self.words.get(t).copied().unwrap_or_default()))
    }

    /// Encodes the table sorted by term, in chunks; returns the chunks and each one's first term.
    pub(crate) fn chunks(&self) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut words: Vec<(u64, Blocks)> = self.words.iter().map(|(t, b)| (*t, *b)).collect();
        words.sort_unstable_by_key(|(t, _)| *t);
        let (mut chunks, mut directory) = (Vec::new(), Vec::new());
        let mut chunk: Vec<u8> = Vec::new();
        for (term, blocks) in words {
            if chunk.is_empty() {
                directory.push(term);
            }
            chunk.extend_from_slice(&term.to_be_bytes());
            let n = blocks.len();
            if n < LIST_MAX {
                chunk.push(n as u8);
                chunk.extend(blocks.newest_first().map(|b| b as u8));
            } else {
                chunk.push(BITMAP_TAG);
                blocks.0.iter().for_each(|w| chunk.extend_from_slice(&w.to_be_bytes()));
            }
            if chunk.len() >= CHUNK_BYTES {
                chunks.push(std::mem::take(&mut chunk));
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        (chunks, directory)
    }
}

/// The blocks of `term` in an encoded chunk (empty when it is not there).
pub(crate) fn blocks_in(chunk: &[u8], term: u64) -> Blocks {
    let mut rest = chunk;
    while rest.len() >= 9 {
        let t = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let n = rest[8];
        let size = if n == BITMAP_TAG { 32 } else { usize::from(n) };
        let Some(payload) = rest.get(9..9 + size) else { break };
        if t == term {
            let mut blocks = Blocks::default();
            if n == BITMAP_TAG {
                for (i, w) in payload.chunks_exact(8).enumerate() {
                    blocks.0[i] = u64::from_be_bytes(w.try_into().expect("8 bytes"));
                }
            } else {
                payload.iter().for_each(|b| blocks.insert(usize::from(*b)));
            }
            return blocks;
        }
        if t > term {
            break;
        }
        rest = &rest[9 + size..];
    }
    Blocks::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(text: &[u8]) -> std::collections::HashSet<u64> {
        let mut out = std::collections::HashSet::new();
        for_each_word(text, |w| {
            out.insert(word_term(w));
        });
        out
    }

    /// Text of word bytes, separators and escapes in any mix, at least `RECENT_MIN` long.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            "[a-zA-Z0-9]{1,12}".prop_map(String::into_bytes),
            Just(b"\\".to_vec()),
            Just(b"\\\"".to_vec()),
            Just(b"\\n".to_vec()),
            Just(b"\\u00e9".to_vec()),
            Just(b"\\\\".to_vec()),
            "[ \",:{}\\[\\]]{1,2}".prop_map(String::into_bytes),
        ];
        prop::collection::vec(atom, 200..400).prop_map(|atoms| atoms.concat())
    }

    proptest! {
        /// Whatever two requests share, the words of the second's new part and of the first
        /// together hold every word of the second: skipping never loses a word.
        #[test]
        fn the_new_part_of_a_request_and_the_one_before_hold_all_its_words(
            first in jsonish(),
            cut in 0usize..1000,
            cut_len in 0usize..40,
            insert in "[a-z\\\\u0-9 \"]{0,30}",
        ) {
            let mut second = first.clone();
            let at = cut % second.len();
            let end = (at + cut_len).min(second.len());
            second.splice(at..end, insert.bytes());
            prop_assume!(second.len() >= RECENT_MIN && first.len() >= RECENT_MIN);
            let mut recent = RecentBodies::default();
            let whole = recent.new_part((0, 0), &first);
            prop_assert_eq!(whole, &first[..]);
            let part = recent.new_part((0, 0), &second);
            let mut found = terms(&first);
            found.extend(terms(part));
            prop_assert!(terms(&second).is_subset(&found));
        }
    }

    #[test]
    fn a_malformed_unicode_escape_before_a_shared_tail_does_not_hide_a_word() {
        // The second request ends its new part with `\u\` right before the tail it shares
        // with the first (`"cdqsyx…`). A six-byte skip of the malformed `\u\"cd` read the word
        // there as `qsyx…`, past the separator where the new part stops: a word of the second
        // request in neither the first nor its new part (found by the proptest below).
        let shared_head = "head words ".repeat(60);
        let shared_tail = format!("\"cdqsyx tail {}", "more words ".repeat(60));
        let first = format!("{shared_head}old\\{shared_tail}");
        let second = format!("{shared_head}new \\u\\{shared_tail}");
        let mut recent = RecentBodies::default();
        recent.new_part((0, 0), first.as_bytes());
        let part = recent.new_part((0, 0), second.as_bytes());
        let mut found = terms(first.as_bytes());
        found.extend(terms(part));
        assert!(terms(second.as_bytes()).is_subset(&found), "new part {:?}", String::from_utf8_lossy(part));
    }

    #[test]
    fn a_repeated_request_adds_only_its_changed_middle_and_a_new_block_starts_over() {
        let first = format!("{{\"system\":\"{}\",\"user\":\"hello there\"}}", "policy text ".repeat(200));
        let second = first.replace("hello there", "goodbye now");
        let mut recent = RecentBodies::default();
        assert_eq!(recent.new_part((0, 0), first.as_bytes()).len(), first.len());
        let part = std::str::from_utf8(recent.new_part((0, 0), second.as_bytes())).unwrap();
        assert!(part.len() < 20 && part.contains("goodbye now"), "{part:?}");
        assert_eq!(recent.new_part((0, 1), second.as_bytes()).len(), second.len());
    }

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text.as_bytes(), |w| out.push(String::from_utf8(w.to_ascii_lowercase()).unwrap()));
        out
    }

    #[test]
    fn words_are_lowercased_and_json_escapes_separate_them() {
        assert_eq!(
            words(r#"{"content":"Hi\nQuantum Marmalade\"x\u00e9tude, gpt-4o"}"#),
            ["content", "hi", "quantum", "marmalade", "tude", "gpt", "4o"]
        );
        assert_eq!(words("a bb ccc"), ["bb", "ccc"]);
        let long = "x".repeat(MAX_WORD + 1);
        assert_eq!(words(&format!("{long} ok café")), ["ok", "café"]);
        // Terms ignore ASCII case, and differ by every byte, past eight too.
        assert_eq!(word_term(b"Marmalade"), word_term(b"marmalade"));
        assert_ne!(word_term(b"marmalade"), word_term(b"marmalada"));
        assert_ne!(word_term(b"ab"), word_term(b"ba"));
        // Stored on disk: the function must never change.
        assert_eq!(word_term(b"quantum"), 0xad22_f7ea_7e3d_2763);
    }

    #[test]
    fn tables_round_trip_through_chunks_as_lists_and_bitmaps() {
        let mut table = WordTable::default();
        let (rare, common) = (word_term(b"rare"), word_term(b"the"));
        for ordinal in 0..(BLOCK_SPANS * 200) {
            let mut t = vec![common];
            if ordinal == 5 || ordinal == BLOCK_SPANS * 150 {
                t.push(rare);
            }
            // Many other words, so the table spans several chunks.
            t.push(word_term(format!("w{}", ordinal % 2000).as_bytes()));
            table.add(ordinal, u64::from(ordinal) << 4, u64::from(ordinal), &t);
        }
        assert_eq!(table.block_starts.len(), 200);
        assert_eq!(table.block_starts[1], u64::from(BLOCK_SPANS) << 4);
        assert_eq!(table.block_times[2..4], [u64::from(BLOCK_SPANS), u64::from(BLOCK_SPANS) * 2 - 1]);
        let (chunks, directory) = table.chunks();
        assert!(chunks.len() > 3);
        let find = |term: u64| {
            let i = directory.partition_point(|first| *first <= term).saturating_sub(1);
            blocks_in(&chunks[i], term)
        };
        assert_eq!(find(rare).newest_first().collect::<Vec<_>>(), [150, 0]);
        assert_eq!(find(common).newest_first().count(), 200);
        assert_eq!(find(common).and(find(rare)), find(rare));
        assert!(find(word_term(b"absent")).is_empty());
        assert_eq!(table.blocks_of(&[rare, common]), find(rare));
    }
}
