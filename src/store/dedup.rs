//! Request text stored once: an agent loop resends its whole conversation every step, so a
//! request of a trace (or session) is mostly an earlier request of the same trace with a few
//! new messages in the middle. Such a request is stored as **pieces**: references to text
//! already stored, and only its new bytes as a literal.
//!
//! The writer keeps, per trace or session, the last request it stored (its text and where each
//! of its bytes lives: [`Bases`]). A new request sharing at least [`MIN_SHARED`] bytes of head
//! and tail with it is stored as `head refs ‖ literal ‖ tail refs`. References always point at
//! a record's **own literal** (a plain record's whole request, or a piece record's one literal
//! piece), never at another piece list, so a read resolves each reference with one lookup:
//! reading a request costs one body segment per piece, and a request has at most
//! [`MAX_PIECES`] (past that, or once the text referred to is older than [`WINDOW_NANOS`], the
//! request is stored whole and becomes the next base).
//!
//! This file is the pieces' logic (no sled): choosing them and their encoding. Reading a
//! request back (`layout::resolve`) and copying borrowed text in (`layout::materialized`) are
//! with the other segment encodings in `layout.rs`.
//!
//! Record flags (beside `layout`'s kept/truncated): [`PIECES`] — the request field holds a
//! piece list; [`BASE`] — the record's literal may be referred to by later records. What that
//! costs elsewhere:
//! - **Deletes** (`delete.rs`): before a base record is emptied, the records of its trace or
//!   session that refer to it get the bytes they borrowed copied in (a [`MATERIALIZED`] piece,
//!   which is not a literal others may refer to); the writer's bases are forgotten.
//! - **Retention** (`writer.rs`): a body segment holding a base outlives its span segment by
//!   [`WINDOW_NANOS`] (every record referring to it started at most that long after it, so
//!   is past retention by then); other body segments go with their spans.
//!
//! Encoding of a piece list: `count: u16`, then per piece a tag and its fields (integers
//! big-endian): `0` own literal `len: u32 bytes`; `1` reference `seq: u64 index: u16 offset:
//! u32 len: u32` (into the literal of the record at `seq`/`index`); `2` materialized literal
//! `len: u32 bytes`.

use std::collections::{HashMap, VecDeque};

use crate::model::span::Span;
use crate::store::error::StoreError;
use crate::store::fields::{put_slice, take_slice};

/// The request field holds a piece list.
pub(super) const PIECES: u8 = 4;
/// The record's literal may be referred to by later records (its segment outlives its spans).
pub(super) const BASE: u8 = 8;

/// Fewest shared bytes (head + tail) worth a piece list; also the shortest request kept as a base.
pub(super) const MIN_SHARED: usize = 256;
/// Most pieces in one request.
pub(super) const MAX_PIECES: usize = 64;
/// How much later than the text it refers to a request may start: also how long a base's body
/// segment outlives its spans under retention.
pub(super) const WINDOW_NANOS: u64 = 3_600 * 1_000_000_000;
/// Bytes of request text the writer keeps as bases, and how many traces or sessions.
const BASES_BYTES: usize = 16 << 20;
const BASES_ENTRIES: usize = 4_096;

const OWN: u8 = 0;
const REF: u8 = 1;
const MATERIALIZED: u8 = 2;

/// A range of a record's own literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    pub(super) seq: u64,
    pub(super) index: u16,
    pub(super) offset: u32,
    pub(super) len: u32,
}

impl Ref {
    /// The bytes this reference names in `literal`, its base's own literal.
    pub(crate) fn within<'l>(&self, literal: &'l [u8]) -> Result<&'l [u8], StoreError> {
        let start = self.offset as usize;
        literal
            .get(start..start + self.len as usize)
            .ok_or_else(|| StoreError::Corrupt("a piece refers past its base's text".into()))
    }
}

/// One piece of a stored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Own(&'a [u8]),
    Ref(Ref),
    Materialized(&'a [u8]),
}

pub(super) fn encode(pieces: &[Piece<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(&(pieces.len() as u16).to_be_bytes());
    for piece in pieces {
        match piece {
            Piece::Own(bytes) | Piece::Materialized(bytes) => {
                out.push(if matches!(piece, Piece::Own(_)) { OWN } else { MATERIALIZED });
                put_slice(out, bytes);
            }
            Piece::Ref(r) => {
                out.push(REF);
                out.extend_from_slice(&r.seq.to_be_bytes());
                out.extend_from_slice(&r.index.to_be_bytes());
                out.extend_from_slice(&r.offset.to_be_bytes());
                out.extend_from_slice(&r.len.to_be_bytes());
            }
        }
    }
}

pub(super) fn decode(mut bytes: &[u8]) -> Result<Vec<Piece<'_>>, StoreError> {
    let cut = || StoreError::Corrupt("piece list cut short".into());
    let count = u16::from_be_bytes(bytes.get(..2).ok_or_else(cut)?.try_into().expect("2 bytes"));
    bytes = &bytes[2..];
    let mut pieces = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&tag, rest) = bytes.split_first().ok_or_else(cut)?;
        match tag {
            OWN | MATERIALIZED => {
                let (literal, after) = take_slice(rest)?;
                pieces.push(if tag == OWN { Piece::Own(literal) } else { Piece::Materialized(literal) });
                bytes = after;
            }
            REF => {
                let fields = rest.get(..18).ok_or_else(cut)?;
                pieces.push(Piece::Ref(Ref {
                    seq: u64::from_be_bytes(fields[..8].try_into().expect("8 bytes")),
                    index: u16::from_be_bytes(fields[8..10].try_into().expect("2 bytes")),
                    offset: u32::from_be_bytes(fields[10..14].try_into().expect("4 bytes")),
                    len: u32::from_be_bytes(fields[14..18].try_into().expect("4 bytes")),
                }));
                bytes = &rest[18..];
            }
            other => return Err(StoreError::Corrupt(format!("unknown piece tag {other}"))),
        }
    }
    Ok(pieces)
}

/// A record's own literal: what references into it index.
pub(super) fn own_literal(flags: u8, request: &[u8]) -> Result<&[u8], StoreError> {
    if flags & PIECES == 0 {
        return Ok(request);
    }
    Ok(decode(request)?
        .into_iter()
        .find_map(|p| match p {
            Piece::Own(bytes) => Some(bytes),
            _ => None,
        })
        .unwrap_or(&[]))
}

/// What a trace or session's last request is keyed by: its session, else its trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Session(String),
    Trace([u8; 16]),
}

impl Key {
    fn of(span: &Span) -> Key {
        match &span.session {
            Some(session) => Key::Session(session.clone()),
            None => Key::Trace(span.trace_id.0),
        }
    }
}

/// The last request stored for a trace or session: its text, and where each byte lives.
struct Base {
    text: Vec<u8>,
    /// Consecutive ranges of own literals covering `text`.
    map: Vec<Ref>,
    /// The earliest start among the records `map` refers to.
    oldest_start: u64,
    stamp: u64,
}

/// The writer's bases, bounded in bytes and entries (the oldest forgotten first).
#[derive(Default)]
pub(super) struct Bases {
    entries: HashMap<Key, Base>,
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    stamp: u64,
}

/// How a request is to be stored: whole (`pieces` none) or as pieces; `base`: remembered as
/// a base, so flagged [`BASE`].
pub(super) struct Stored<'a> {
    pub(super) pieces: Option<Vec<Piece<'a>>>,
    pub(super) base: bool,
}

impl Bases {
    /// Forgets every base (after a delete: a base may refer to deleted text).
    pub(super) fn clear(&mut self) {
        *self = Bases::default();
    }

    /// How to store `request` of `span` at `seq`/`index`; remembers it as its trace's or
    /// session's base when it is worth one. A span whose trace tracegate made up (no parent,
    /// no session) starts a base only when it can be found again: never, so none is kept.
    pub(super) fn store<'a>(&mut self, span: &Span, seq: u64, index: u16, request: &'a [u8]) -> Stored<'a> {
        if request.len() < MIN_SHARED {
            return Stored { pieces: None, base: false };
        }
        let key = Key::of(span);
        let start = span.start_time_unix_nano;
        let mut stored = Stored { pieces: None, base: true };
        let mut map = vec![Ref { seq, index, offset: 0, len: request.len() as u32 }];
        let mut oldest_start = start;
        if let Some(base) = self.entries.get(&key).filter(|b| start.saturating_sub(b.oldest_start) <= WINDOW_NANOS) {
            let (head, tail) = shared_ends(request, &base.text);
            if head + tail >= MIN_SHARED {
                let mut refs = slice(&base.map, 0, head);
                let tail_refs = slice(&base.map, base.text.len() - tail, base.text.len());
                if refs.len() + tail_refs.len() < MAX_PIECES {
                    let middle = &request[head..request.len() - tail];
                    if !middle.is_empty() {
                        refs.push(Ref { seq, index, offset: 0, len: middle.len() as u32 });
                    }
                    refs.extend(tail_refs);
                    // The one range of this record's own is its middle; the rest refer back.
                    let own = |r: &Ref| (r.seq, r.index) == (seq, index);
                    let pieces = refs.iter().map(|r| if own(r) { Piece::Own(middle) } else { Piece::Ref(*r) });
                    stored.pieces = Some(pieces.collect());
                    oldest_start = base.oldest_start.min(start);
                    map = refs;
                }
            }
        }
        if span.session.is_none() && span.parent_span_id.is_none() {
            // Nothing later can name this trace: no use keeping its text.
            return Stored { base: false, ..stored };
        }
        self.stamp += 1;
        let base = Base { text: request.to_vec(), map, oldest_start, stamp: self.stamp };
        self.bytes += base.text.len();
        if let Some(old) = self.entries.insert(key.clone(), base) {
            self.bytes -= old.text.len();
        }
        self.order.push_back((key, self.stamp));
        while self.bytes > BASES_BYTES || self.entries.len() > BASES_ENTRIES || self.order.len() > 2 * BASES_ENTRIES {
            let Some((key, stamp)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|b| b.stamp == stamp) {
                let old = self.entries.remove(&key).expect("present");
                self.bytes -= old.text.len();
            }
        }
        stored
    }
}

/// The bytes `a` shares with `b` at its head and, in what is left after it, at its tail
/// (`head + tail` never exceeds either length). The head is compared eight bytes at a time.
pub(crate) fn shared_ends(a: &[u8], b: &[u8]) -> (usize, usize) {
    let n = a.len().min(b.len());
    let mut head = 0;
    while head + 8 <= n && a[head..head + 8] == b[head..head + 8] {
        head += 8;
    }
    while head < n && a[head] == b[head] {
        head += 1;
    }
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    (head, tail)
}

/// The references covering bytes `from..to` of a base whose bytes `map` covers in order.
fn slice(map: &[Ref], from: usize, to: usize) -> Vec<Ref> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for r in map {
        let (start, end) = (at, at + r.len as usize);
        at = end;
        let (lo, hi) = (start.max(from), end.min(to));
        if lo < hi {
            out.push(Ref { offset: r.offset + (lo - start) as u32, len: (hi - lo) as u32, ..*r });
        }
        if at >= to {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip_through_their_encoding() {
        let r = Ref { seq: 7, index: 3, offset: 10, len: 20 };
        let pieces = [Piece::Ref(r), Piece::Own(b"new text"), Piece::Materialized(b"copied"), Piece::Ref(r)];
        let mut out = Vec::new();
        encode(&pieces, &mut out);
        assert_eq!(decode(&out).unwrap(), pieces);
        assert!(decode(&out[..out.len() - 1]).is_err());
    }

    #[test]
    fn slice_cuts_the_map_at_any_byte() {
        let map = [Ref { seq: 1, index: 0, offset: 0, len: 10 }, Ref { seq: 2, index: 4, offset: 5, len: 10 }];
        assert_eq!(slice(&map, 0, 4), vec![Ref { len: 4, ..map[0] }]);
        assert_eq!(slice(&map, 8, 13), vec![Ref { offset: 8, len: 2, ..map[0] }, Ref { offset: 5, len: 3, ..map[1] }]);
        assert_eq!(slice(&map, 15, 20), vec![Ref { offset: 10, len: 5, ..map[1] }]);
        assert!(slice(&map, 20, 20).is_empty());
    }

    #[test]
    fn common_ends_are_measured_exactly() {
        assert_eq!(shared_ends(b"abcdefghijXY", b"abcdefghijXZ"), (11, 0));
        assert_eq!(shared_ends(b"abc", b"abc"), (3, 0));
        assert_eq!(shared_ends(b"xxtail", b"yyytail"), (0, 4));
        assert_eq!(shared_ends(b"head-new-tail", b"head-old-tail"), (5, 5));
    }
}
