//! The store's on-disk layout: key prefixes and the encodings of span segments, body
//! segments, index runs and pages (see the folder's doc for the map). Pure byte work over
//! values sled hands back; nothing here touches sled beyond its value type.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{SpanBodies, SpanWrite};
use crate::store::body_log::{BodyLog, BodyRef};
use crate::store::dedup::{self, Bases};
use crate::store::error::StoreError;
use crate::store::fields::{put_slice, put_written, take_slice, take_u32};
use crate::store::ledger::LedgerRow;
use crate::store::segment_codec::{self, SegmentCompressor};

/// A segment is closed once its encoding passes this size (a batch may then span several).
/// sled splits a leaf at 17 entries and stores a leaf above ~128 KB (its segment size / 4) as a
/// blob whose memory its cache does not count: with 128 KB segments the proxy's RSS grew with
/// everything written (~300 MB after 1 M spans). At ~6 KB a full leaf stays under that bound.
pub(super) const SEGMENT_TARGET_BYTES: usize = 6 * 1024;
/// The largest compression ratio a segment's raw size is planned on (spans of one batch
/// compress ~4–5×): bounds a segment after a run of very compressible ones.
pub(super) const MAX_EXPECTED_RATIO: f64 = 5.0;
/// Raw bytes of bodies after which a segment is closed whatever its spans: a body read
/// decompresses its whole body segment, so one stays this small (~20 agent steps).
pub(super) const MAX_BODY_SEGMENT_BYTES: usize = 256 << 10;

pub(super) const SPAN_SEGMENT: u8 = b'S';
pub(super) const BODY_SEGMENT: u8 = b'B';
pub(super) const INDEX_RUN: u8 = b'I';
/// Format 3's trace index pages (removed at open: the search index replaced them).
pub(super) const FORMAT3_INDEX_PAGE: u8 = b'J';
pub(super) const LEDGER: u8 = b'L';
pub(super) const FORMAT_KEY: &[u8] = b"Mformat";
/// The last segment seq whose batch's commit record has been merged into the ledger.
pub(super) const MERGED_THROUGH_KEY: &[u8] = b"Mmerged_through";
/// The layout this code reads and writes (6: a `B` value may be a reference into a body file,
/// see `body_log`, which a format-5 reader cannot read; 5: requests may be stored as pieces of
/// earlier ones, which a format-4 reader cannot read). Formats 2 and 3 differ only in their trace index
/// (format 2 also in raw segments, which still read): it is dropped and the search index built
/// at open. Format 1 (an index key per span) likewise. Another value refuses to open.
pub(super) const FORMAT_VERSION: u8 = 6;
/// Format 5 is format 6 with every body segment inside sled: it reads unchanged.
pub(super) const FORMAT5: u8 = 5;
/// Format 4 is format 5 without request pieces (`dedup`): it reads unchanged.
pub(super) const FORMAT4: u8 = 4;
/// Format 2 is format 3 without compressed segments: it reads unchanged (see `segment_codec`).
pub(super) const FORMAT2: u8 = 2;
pub(super) const FORMAT3: u8 = 3;
/// Format 1's per-span index keys: `T` ‖ trace_id(16) ‖ seq(8) ‖ i(4).
pub(super) const FORMAT1_TRACE_INDEX: u8 = b'T';
pub(super) const FORMAT1_INDEXED_THROUGH_KEY: &[u8] = b"Mindexed_through";

/// Bytes of one entry of a format-3 commit record (`trace_id(16) seq(8) i(2)`); today's
/// records hold none, older ones are read past.
pub(super) const FORMAT3_ENTRY_BYTES: usize = 26;
/// Commit records merged into the ledger at a time: bounds what a ledger read folds in.
pub const RUNS_BEFORE_MERGE: usize = 64;

pub(super) const BODIES_KEPT: u8 = 1;
pub(super) const BODIES_TRUNCATED: u8 = 2;
pub(super) fn segment_key(kind: u8, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn seq_of(key: &[u8]) -> u64 {
    key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

pub(super) fn export_cursor_key(exporter: &str) -> Vec<u8> {
    [b"Mexport_cursor:".as_slice(), exporter.as_bytes()].concat()
}

/// A commit record (`I` key, "index run" in format 3): one per written batch. It names the
/// batch's last segment and holds its usage-ledger deltas, and is written after the batch's
/// segments: segments without a record after them are a batch cut short by a crash.
///
/// Encoding: `last_seq(8) entry_count: u32 entries`, then per ledger delta
/// `key_len: u32 key row_len: u32 row(JSON)`. Today's records have no entries; format 3's
/// carried the batch's trace-index entries, which are skipped.
pub(super) struct Run<'a> {
    pub(super) last_seq: u64,
    pub(super) ledger: &'a [u8],
}

impl<'a> Run<'a> {
    pub(super) fn encode(last_seq: u64, ledger: &HashMap<Vec<u8>, LedgerRow>) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + ledger.len() * 96);
        out.extend_from_slice(&last_seq.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for (key, row) in ledger {
            let row = serde_json::to_vec(row).expect("ledger rows serialize");
            put_slice(&mut out, key);
            put_slice(&mut out, &row);
        }
        out
    }

    pub(super) fn decode(bytes: &'a [u8]) -> Result<Run<'a>, StoreError> {
        let cut = || StoreError::Corrupt("index run cut short".into());
        let last_seq = u64::from_be_bytes(bytes.get(..8).ok_or_else(cut)?.try_into().expect("8 bytes"));
        let (count, rest) = take_u32(&bytes[8..])?;
        let entries_len = count as usize * FORMAT3_ENTRY_BYTES;
        rest.get(..entries_len).ok_or_else(cut)?;
        Ok(Run { last_seq, ledger: &rest[entries_len..] })
    }

    /// The run's ledger deltas: encoded ledger key → counters.
    pub(super) fn ledger_deltas(&self) -> Result<Vec<(&'a [u8], LedgerRow)>, StoreError> {
        let mut deltas = Vec::new();
        let mut rest = self.ledger;
        while !rest.is_empty() {
            let (key, after_key) = take_slice(rest)?;
            let (row, after_row) = take_slice(after_key)?;
            deltas.push((key, decode::<LedgerRow>(row)?));
            rest = after_row;
        }
        Ok(deltas)
    }
}

/// One span inside a span segment, borrowed from the segment's bytes.
pub(super) struct SpanRef<'a> {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) start_time_unix_nano: u64,
    pub(super) json: &'a [u8],
}

/// Walks the records of an encoded segment (a count, then the records back to back): each as
/// `parse` reads it, with the bytes that encode it. Stops after the first error. Span segments
/// and body segments are both read with it.
pub(super) struct Records<'a, T> {
    bytes: &'a [u8],
    remaining: u32,
    parse: ParseRecord<'a, T>,
}

/// Reads one record from the front of the bytes: the record and the bytes after it.
type ParseRecord<'a, T> = fn(&'a [u8]) -> Result<(T, &'a [u8]), StoreError>;

impl<'a, T> Records<'a, T> {
    fn new(segment: &'a [u8], parse: ParseRecord<'a, T>) -> Result<Self, StoreError> {
        let (count, rest) = take_u32(segment)?;
        Ok(Records { bytes: rest, remaining: count, parse })
    }
}

impl<'a, T> Iterator for Records<'a, T> {
    /// A record and the bytes that encode it.
    type Item = Result<(T, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match (self.parse)(self.bytes) {
            Ok((record, rest)) => {
                let encoded = &self.bytes[..self.bytes.len() - rest.len()];
                self.bytes = rest;
                Some(Ok((record, encoded)))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

/// Walks the spans of an encoded span segment.
pub(super) struct SpanSegment<'a>(Records<'a, SpanRef<'a>>);

impl<'a> SpanSegment<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self, StoreError> {
        Ok(SpanSegment(Self::encoded(bytes)?))
    }

    /// The spans, each with the bytes that encode it (to copy a record as it is).
    pub(super) fn encoded(bytes: &'a [u8]) -> Result<Records<'a, SpanRef<'a>>, StoreError> {
        Records::new(bytes, Self::parse)
    }

    fn parse(bytes: &'a [u8]) -> Result<(SpanRef<'a>, &'a [u8]), StoreError> {
        if bytes.len() < 32 {
            return Err(StoreError::Corrupt("span record header cut short".into()));
        }
        let trace_id = TraceId(bytes[..16].try_into().expect("16 bytes"));
        let span_id = SpanId(bytes[16..24].try_into().expect("8 bytes"));
        let start_time_unix_nano = u64::from_be_bytes(bytes[24..32].try_into().expect("8 bytes"));
        let (json, rest) = take_slice(&bytes[32..])?;
        Ok((SpanRef { trace_id, span_id, start_time_unix_nano, json }, rest))
    }
}

impl<'a> Iterator for SpanSegment<'a> {
    type Item = Result<SpanRef<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|record| record.map(|(span, _)| span))
    }
}

/// Where segments are read from: sled, and the body files its `B` values may refer to.
#[derive(Clone, Copy)]
pub(crate) struct Segments<'a> {
    pub(crate) tree: &'a sled::Tree,
    pub(crate) bodies: &'a BodyLog,
}

impl Segments<'_> {
    /// Segment `seq` of `kind` (span or body segment), raw; `None` when there is none.
    pub(super) fn get(&self, kind: u8, seq: u64) -> Result<Option<RawSegment>, StoreError> {
        match self.tree.get(segment_key(kind, seq))? {
            Some(value) => Ok(Some(self.raw(value)?)),
            None => Ok(None),
        }
    }

    /// The raw segment behind a stored value (read from its body file when it refers to one).
    pub(super) fn raw(&self, value: sled::IVec) -> Result<RawSegment, StoreError> {
        match BodyRef::decode(&value) {
            Some(body_ref) => {
                let stored = self.bodies.read(&body_ref)?;
                match segment_codec::decode(&stored).map_err(StoreError::Corrupt)? {
                    Cow::Borrowed(_) => Ok(RawSegment::Decompressed(stored)),
                    Cow::Owned(raw) => Ok(RawSegment::Decompressed(raw)),
                }
            }
            None => RawSegment::of(value),
        }
    }
}

/// A read's answer, `None` when what it read is damaged (a body record whose CRC fails, a body
/// file gone): for the writer's passes, to which unreadable bodies lend nothing.
pub(super) fn unless_damaged<T>(read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::Corrupt(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bodies of span `index` in an encoded body segment (pieces of its request read from `segments`).
pub(super) fn bodies_at(segments: Segments, segment: &[u8], index: usize) -> Result<SpanBodies, StoreError> {
    Ok(span_bodies(resolved(segments, raw_bodies_at(segment, index)?)?))
}

/// A body record as text (none when the bodies were not kept).
pub(super) fn span_bodies(raw: Option<Bodies<'_>>) -> SpanBodies {
    let Some((flags, request, response)) = raw else { return SpanBodies::default() };
    let text = |b: &[u8]| (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned());
    SpanBodies { request_body: text(&request), response_body: text(response), truncated: flags & BODIES_TRUNCATED != 0 }
}

/// A span's body record as stored: flags, request field (the text, or its pieces), response.
pub(crate) type RawBodies<'a> = (u8, &'a [u8], &'a [u8]);
/// A span's bodies as text: flags, request, response.
pub(crate) type Bodies<'a> = (u8, std::borrow::Cow<'a, [u8]>, &'a [u8]);

/// A stored record with its request's pieces put together (an empty request when text it
/// refers to is gone, see `dedup::resolve`).
pub(crate) fn resolved<'a>(segments: Segments, raw: Option<RawBodies<'a>>) -> Result<Option<Bodies<'a>>, StoreError> {
    let Some((flags, request, response)) = raw else { return Ok(None) };
    let request = resolve(segments, flags, request)?.unwrap_or_default();
    Ok(Some((flags, request, response)))
}

/// The raw request and response bodies of span `index` (with its flags), `None` when the
/// span's bodies were not kept.
pub(crate) fn raw_bodies_at(segment: &[u8], index: usize) -> Result<Option<RawBodies<'_>>, StoreError> {
    let Some(record) = body_records(segment)?.nth(index) else {
        return Err(StoreError::Corrupt("body segment shorter than its span segment".into()));
    };
    let ((flags, request, response), _) = record?;
    Ok((flags & BODIES_KEPT != 0).then_some((flags, request, response)))
}

/// Walks the records of a raw body segment: each as stored (flags, request field, response),
/// with its encoded bytes.
pub(super) fn body_records(segment: &[u8]) -> Result<Records<'_, RawBodies<'_>>, StoreError> {
    Records::new(segment, parse_body_record)
}

fn parse_body_record(bytes: &[u8]) -> Result<(RawBodies<'_>, &[u8]), StoreError> {
    let (&flags, after_flags) =
        bytes.split_first().ok_or_else(|| StoreError::Corrupt("body record cut short".into()))?;
    let (request, after_request) = take_slice(after_flags)?;
    let (response, rest) = take_slice(after_request)?;
    Ok(((flags, request, response), rest))
}

/// A segment's raw bytes: the stored value itself, or its decompressed form.
pub(super) enum RawSegment {
    Stored(sled::IVec),
    Decompressed(Vec<u8>),
}

impl RawSegment {
    pub(super) fn of(stored: sled::IVec) -> Result<RawSegment, StoreError> {
        match segment_codec::decode(&stored).map_err(StoreError::Corrupt)? {
            std::borrow::Cow::Borrowed(_) => Ok(RawSegment::Stored(stored)),
            std::borrow::Cow::Owned(raw) => Ok(RawSegment::Decompressed(raw)),
        }
    }
}

impl std::ops::Deref for RawSegment {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            RawSegment::Stored(v) => v,
            RawSegment::Decompressed(v) => v,
        }
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Builds one span segment and its body segment.
pub(super) struct SegmentWriter {
    pub(super) spans: Vec<u8>,
    pub(super) bodies: Vec<u8>,
    pub(super) count: u32,
    pub(super) any_bodies: bool,
}

impl SegmentWriter {
    pub(super) fn new() -> Self {
        SegmentWriter { spans: vec![0; 4], bodies: vec![0; 4], count: 0, any_bodies: false }
    }

    /// Whether the segment is full: its spans near [`SEGMENT_TARGET_BYTES`] once compressed
    /// (`raw_target`), or its bodies at [`MAX_BODY_SEGMENT_BYTES`]. Bodies go to a body file,
    /// so they no longer close the span segment early.
    pub(super) fn is_full(&self, raw_target: usize) -> bool {
        self.spans.len() >= raw_target
            || self.bodies.len() >= MAX_BODY_SEGMENT_BYTES
            || self.count == u32::from(u16::MAX)
    }

    /// Appends a span and its bodies as record `count` of segment `seq`; its request is stored
    /// as pieces of earlier ones when `bases` finds them (see `dedup`).
    pub(super) fn push(&mut self, write: &SpanWrite, seq: u64, bases: &mut Bases) {
        let span = &write.span;
        self.spans.extend_from_slice(&span.trace_id.0);
        self.spans.extend_from_slice(&span.span_id.0);
        self.spans.extend_from_slice(&span.start_time_unix_nano.to_be_bytes());
        put_written(&mut self.spans, |out| serde_json::to_writer(out, span).expect("span types always serialize"));

        let (flags, request, response) = match &write.bodies {
            Some(b) => (
                BODIES_KEPT | if b.truncated { BODIES_TRUNCATED } else { 0 },
                b.request_body.as_deref().unwrap_or(""),
                b.response_body.as_deref().unwrap_or(""),
            ),
            None => (0, "", ""),
        };
        self.any_bodies |= flags & BODIES_KEPT != 0;
        let stored = match flags & BODIES_KEPT {
            0 => dedup::Stored { pieces: None, base: false },
            _ => bases.store(span, seq, self.count as u16, request.as_bytes()),
        };
        let flags = flags | if stored.base { dedup::BASE } else { 0 };
        match &stored.pieces {
            Some(pieces) => {
                self.bodies.push(flags | dedup::PIECES);
                put_written(&mut self.bodies, |out| dedup::encode(pieces, out));
            }
            None => {
                self.bodies.push(flags);
                put_slice(&mut self.bodies, request.as_bytes());
            }
        }
        put_slice(&mut self.bodies, response.as_bytes());
        self.count += 1;
    }

    /// Compresses the segment and its bodies (when any were kept), appends the bodies to a
    /// body file and inserts their reference and the spans under `seq` (bodies first), and
    /// empties the writer for the next segment. Returns the span segment's bytes before and
    /// after compression.
    pub(super) fn write(
        &mut self,
        segments: Segments,
        seq: u64,
        compressor: &mut SegmentCompressor,
    ) -> Result<(usize, usize), StoreError> {
        let count = self.count.to_be_bytes();
        self.spans[..4].copy_from_slice(&count);
        self.bodies[..4].copy_from_slice(&count);
        if self.any_bodies {
            let body_ref = segments.bodies.append(seq, compressor.encode(&self.bodies))?;
            segments.tree.insert(segment_key(BODY_SEGMENT, seq), &body_ref.encode())?;
        }
        let raw_bytes = self.spans.len();
        let stored = compressor.encode(&self.spans);
        let stored_bytes = stored.len();
        segments.tree.insert(segment_key(SPAN_SEGMENT, seq), stored)?;
        self.clear();
        Ok((raw_bytes, stored_bytes))
    }

    /// Empties the writer, keeping its buffers unless a huge body grew them.
    pub(super) fn clear(&mut self) {
        for buffer in [&mut self.spans, &mut self.bodies] {
            buffer.truncate(4);
            buffer.shrink_to(segment_codec::KEPT_BUFFER_BYTES);
        }
        self.count = 0;
        self.any_bodies = false;
    }
}

/// A deleted span's record in its span segment: zero ids, start 0, an empty JSON. It keeps the
/// segment's count and order, so every other span keeps its position (see `delete.rs`).
pub(super) const TOMBSTONE: [u8; 36] = [0; 36];

impl SpanRef<'_> {
    /// Whether this record is a deleted span's tombstone (readers skip it).
    pub(super) fn is_tombstone(&self) -> bool {
        self.json.is_empty()
    }
}

/// A body segment with the records at `indices` emptied (flags 0, no bytes): what is left of
/// deleted spans' bodies. The count and every other record are kept.
pub(super) fn without_bodies(segment: &[u8], indices: &[usize]) -> Result<Vec<u8>, StoreError> {
    let records = body_records(segment)?;
    let mut out = Vec::with_capacity(segment.len());
    out.extend_from_slice(&segment[..4]);
    for (i, record) in records.enumerate() {
        let (_, encoded) = record?;
        match indices.contains(&i) {
            true => out.extend_from_slice(&[0; 9]),
            false => out.extend_from_slice(encoded),
        }
    }
    Ok(out)
}

/// The spans of a span segment that are not tombstones.
pub(super) fn live_spans(segment: &[u8]) -> Result<u64, StoreError> {
    let mut live = 0;
    for span in SpanSegment::new(segment)? {
        live += u64::from(!span?.is_tombstone());
    }
    Ok(live)
}

/// The request text of a record: the stored bytes themselves, or its pieces put together (the
/// segments they refer to read from `from`). `None` when text it refers to is gone (only a
/// record already past retention can meet that): its request then reads as not kept.
pub(crate) fn resolve<'a>(from: Segments, flags: u8, request: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>, StoreError> {
    if flags & dedup::PIECES == 0 {
        return Ok(Some(Cow::Borrowed(request)));
    }
    let pieces = dedup::decode(request)?;
    let mut text = Vec::new();
    let mut segments: HashMap<u64, Option<RawSegment>> = HashMap::new();
    for piece in pieces {
        match piece {
            dedup::Piece::Own(bytes) | dedup::Piece::Materialized(bytes) => text.extend_from_slice(bytes),
            dedup::Piece::Ref(r) => {
                let segment = match segments.entry(r.seq) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(from.get(BODY_SEGMENT, r.seq)?),
                };
                let Some(segment) = segment else { return Ok(None) };
                let Some((base_flags, base_request, _)) = raw_bodies_at(segment, usize::from(r.index))? else {
                    return Ok(None);
                };
                text.extend_from_slice(r.within(dedup::own_literal(base_flags, base_request)?)?);
            }
        }
    }
    Ok(Some(Cow::Owned(text)))
}

/// Every record of a raw body segment: flags, request field, response.
pub(super) fn records(segment: &[u8]) -> Result<Vec<RawBodies<'_>>, StoreError> {
    body_records(segment)?.map(|record| record.map(|(record, _)| record)).collect()
}

/// A body segment whose records at `indices` have every reference into one of `owners` (a
/// base's position → its own literal) replaced by the bytes it names; `None` when no record
/// refers to them.
pub(super) fn materialized(
    segment: &[u8],
    indices: &HashSet<usize>,
    owners: &HashMap<(u64, u16), Vec<u8>>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let records = body_records(segment)?;
    let mut out = Vec::with_capacity(segment.len());
    out.extend_from_slice(&segment[..4]);
    let mut changed = false;
    for (i, record) in records.enumerate() {
        let ((flags, request, response), encoded) = record?;
        let copied = match indices.contains(&i) && flags & dedup::PIECES != 0 {
            true => with_borrowed_text(request, owners)?,
            false => None,
        };
        match copied {
            Some(pieces) => {
                changed = true;
                out.push(flags);
                put_slice(&mut out, &pieces);
                put_slice(&mut out, response);
            }
            None => out.extend_from_slice(encoded),
        }
    }
    Ok(changed.then_some(out))
}

/// A piece list with every reference into one of `owners` replaced by the bytes it names,
/// encoded; `None` when none refers to them.
fn with_borrowed_text(request: &[u8], owners: &HashMap<(u64, u16), Vec<u8>>) -> Result<Option<Vec<u8>>, StoreError> {
    let mut copied = false;
    let mut pieces = dedup::decode(request)?;
    for piece in &mut pieces {
        if let dedup::Piece::Ref(r) = *piece {
            if let Some(literal) = owners.get(&(r.seq, r.index)) {
                *piece = dedup::Piece::Materialized(r.within(literal)?);
                copied = true;
            }
        }
    }
    if !copied {
        return Ok(None);
    }
    let mut encoded = Vec::new();
    dedup::encode(&pieces, &mut encoded);
    Ok(Some(encoded))
}
