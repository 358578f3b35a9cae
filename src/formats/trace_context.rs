//! Trace-context headers: reading the caller's trace and writing our own.
//!
//! tracegate records every proxied call as a span. When the caller is itself
//! traced, that span should join the caller's trace as a child of the caller's
//! span instead of starting a trace of its own. Callers say which trace they
//! belong to with one of a few header conventions, and this module understands
//! them:
//!
//! * W3C Trace Context (`traceparent` + `tracestate`), the standard one;
//! * Zipkin B3, either as the single `b3` header or as the `X-B3-*` set;
//! * tracegate's own `x-tracegate-session`, which lets callers with no tracer
//!   at all group their calls into one trace by naming a session.
//!
//! [`extract`] turns request headers into a [`CallerContext`]. Anything
//! malformed is ignored, as the specifications ask, so a bad header never
//! fails a request: it merely starts a new trace. In the other direction,
//! [`traceparent_value`] and [`b3_value`] format the headers sent upstream.
//!
//! This code runs on every proxied request, so it works on raw header bytes,
//! uses no regular expressions and only allocates for the values it returns.

use std::fmt;

use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use crate::formats::headers::SESSION as SESSION_HEADER;
use crate::model::ids::{all_zero, decode_hex, encode_hex, lower_hex_digit, SpanId, TraceId};

/// W3C `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// W3C `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";
/// Zipkin single-header B3 name.
pub const B3: &str = "b3";
/// Zipkin multi-header B3: trace id.
pub const X_B3_TRACE_ID: &str = "x-b3-traceid";
/// Zipkin multi-header B3: span id.
pub const X_B3_SPAN_ID: &str = "x-b3-spanid";
/// Zipkin multi-header B3: parent span id (not read here; listed for callers that strip B3 headers).
pub const X_B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
/// Zipkin multi-header B3: sampling decision.
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
/// Zipkin multi-header B3: debug flag.
pub const X_B3_FLAGS: &str = "x-b3-flags";

/// Length of a version-00 `traceparent` value.
const TRACEPARENT_LEN: usize = 55;
/// Most list members a `tracestate` may carry.
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// The `sampled` bit of the W3C trace flags.
const FLAG_SAMPLED: u8 = 0x01;
/// The `random` bit of the W3C trace flags (Level 2): the trace id's right 7 bytes are random.
const FLAG_RANDOM: u8 = 0x02;
/// Prefix hashed in front of a session name by [`TraceId::from_session`].
const SESSION_HASH_PREFIX: &[u8] = b"tracegate-session\0";

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

impl TraceId {
    /// The trace id for a named session: the first 16 bytes of
    /// SHA-256(`"tracegate-session\0"` + `session`). The same session name
    /// always gives the same trace, on any instance. The name is hashed as
    /// given; [`extract`] trims it first.
    pub fn from_session(session: &str) -> Self {
        let digest = Sha256::new().chain_update(SESSION_HASH_PREFIX).chain_update(session.as_bytes()).finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        if all_zero(&id) {
            // Astronomically unlikely, but an all-zero id is invalid everywhere.
            id[15] = 1;
        }
        Self(id)
    }

    /// A B3 trace id: 32 lowercase hex digits, or 16 that are left-padded with zeros to 128 bits.
    fn from_b3_hex(s: &[u8]) -> Option<Self> {
        if s.len() == 16 {
            let low = decode_hex::<8>(s, lower_hex_digit).filter(|b| !all_zero(b))?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(Self(id))
        } else {
            Self::from_lower_hex(s)
        }
    }
}

// ---------------------------------------------------------------------------
// What the caller sent
// ---------------------------------------------------------------------------

/// Which convention the caller's trace context arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent` (and `tracestate`).
    W3c,
    /// Zipkin single `b3` header.
    B3Single,
    /// Zipkin `X-B3-TraceId` / `X-B3-SpanId` headers.
    B3Multi,
    /// `x-tracegate-session`: no caller span, the trace id is derived from the session name.
    Session,
}

/// The trace the caller's request belongs to, as read by [`extract`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerContext {
    /// The trace to join.
    pub trace_id: TraceId,
    /// The caller's span, which becomes the parent of ours; `None` for [`Propagation::Session`].
    pub parent_span_id: Option<SpanId>,
    /// The caller's sampling decision (W3C flag bit 0, B3 sampled/debug); `true` when unspecified.
    pub sampled: bool,
    /// W3C only: the caller's `random` flag (bit 1), kept on the way upstream as Level 2 asks:
    /// we join the caller's trace, so its id stays as random as the caller made it.
    pub random: bool,
    /// W3C only: the validated `tracestate`, all header lines joined with `,`, to pass on upstream.
    /// `None` if absent, empty or invalid.
    pub tracestate: Option<HeaderValue>,
    /// Where the context came from.
    pub propagation: Propagation,
}

impl CallerContext {
    /// The `traceparent` to send upstream for our span `span_id`, keeping the caller's trace and sampling decision.
    pub fn traceparent_for(&self, span_id: SpanId) -> HeaderValue {
        traceparent_with_flags(self.trace_id, span_id, self.flags())
    }

    /// The W3C trace flags to send upstream: the caller's sampled and random bits.
    pub fn flags(&self) -> u8 {
        (u8::from(self.sampled) * FLAG_SAMPLED) | (u8::from(self.random) * FLAG_RANDOM)
    }
}

/// Reads the caller's trace context from request headers.
///
/// Order of precedence: a valid `traceparent` (W3C), then a valid single `b3`,
/// then valid `X-B3-TraceId` + `X-B3-SpanId`, then a non-empty (trimmed)
/// `x-tracegate-session`. An invalid source is ignored and the next one tried.
/// `None` means nothing valid was sent and the caller's call starts a new trace.
///
/// `tracestate` is only read alongside a valid `traceparent`. A header that
/// must be unique (`traceparent`, `b3`, `X-B3-TraceId`, `X-B3-SpanId`) is
/// treated as invalid when it appears on more than one line.
pub fn extract(headers: &HeaderMap) -> Option<CallerContext> {
    extract_w3c(headers)
        .or_else(|| extract_b3_single(headers))
        .or_else(|| extract_b3_multi(headers))
        .or_else(|| extract_session(headers))
}

/// The header's value if it appears exactly once.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).into_iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn extract_w3c(headers: &HeaderMap) -> Option<CallerContext> {
    let parent = parse_traceparent(single_header(headers, TRACEPARENT)?.as_bytes()).ok()?;
    Some(CallerContext {
        trace_id: parent.trace_id,
        parent_span_id: Some(parent.parent_id),
        sampled: parent.sampled(),
        random: parent.flags & FLAG_RANDOM != 0,
        tracestate: tracestate_value(headers),
        propagation: Propagation::W3c,
    })
}

fn extract_b3_single(headers: &HeaderMap) -> Option<CallerContext> {
    let b3 = parse_b3_single(single_header(headers, B3)?.as_bytes())?;
    Some(CallerContext {
        trace_id: b3.trace_id,
        parent_span_id: Some(b3.span_id),
        sampled: b3.sampled(),
        random: false,
        tracestate: None,
        propagation: Propagation::B3Single,
    })
}

fn extract_b3_multi(headers: &HeaderMap) -> Option<CallerContext> {
    let trace = single_header(headers, X_B3_TRACE_ID)?;
    let span = single_header(headers, X_B3_SPAN_ID)?;
    let trace_id = TraceId::from_b3_hex(trim_ows(trace.as_bytes()))?;
    let span_id = SpanId::from_lower_hex(trim_ows(span.as_bytes()))?;

    // Debug implies an accept decision. An unrecognised X-B3-Sampled is ignored (so: sampled).
    let debug = headers.get(X_B3_FLAGS).is_some_and(|v| trim_ows(v.as_bytes()) == b"1");
    let denied = headers.get(X_B3_SAMPLED).is_some_and(|v| {
        let v = trim_ows(v.as_bytes());
        v == b"0" || v.eq_ignore_ascii_case(b"false")
    });

    Some(CallerContext {
        trace_id,
        parent_span_id: Some(span_id),
        sampled: debug || !denied,
        random: false,
        tracestate: None,
        propagation: Propagation::B3Multi,
    })
}

fn extract_session(headers: &HeaderMap) -> Option<CallerContext> {
    let raw = headers.get(SESSION_HEADER)?;
    let session = std::str::from_utf8(raw.as_bytes()).ok()?.trim();
    if session.is_empty() {
        return None;
    }
    Some(CallerContext {
        trace_id: TraceId::from_session(session),
        parent_span_id: None,
        sampled: true,
        // Derived from the session's name, not drawn at random.
        random: false,
        tracestate: None,
        propagation: Propagation::Session,
    })
}

// ---------------------------------------------------------------------------
// W3C traceparent
// ---------------------------------------------------------------------------

/// A parsed W3C `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    /// The format version (never `0xff`).
    pub version: u8,
    /// The trace id.
    pub trace_id: TraceId,
    /// The caller's span id.
    pub parent_id: SpanId,
    /// Trace flags. All bits for version 00; only the sampled bit for later versions.
    pub flags: u8,
}

impl Traceparent {
    /// Whether the caller sampled this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Why a `traceparent` value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceparentError {
    /// A byte outside printable ASCII.
    NonAscii,
    /// Shorter than 55 characters, or a version-00 value that is not exactly 55.
    Length,
    /// The version is not two lowercase hex digits, or is `ff`.
    Version,
    /// A `-` is missing where one is required.
    Separator,
    /// The trace id, parent id or flags are not lowercase hex.
    Hex,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
}

impl fmt::Display for TraceparentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NonAscii => "traceparent contains a non-printable or non-ASCII byte",
            Self::Length => "traceparent has the wrong length",
            Self::Version => "traceparent has an invalid version",
            Self::Separator => "traceparent is missing a '-' separator",
            Self::Hex => "traceparent field is not lowercase hex",
            Self::ZeroTraceId => "traceparent trace-id is all zeros",
            Self::ZeroParentId => "traceparent parent-id is all zeros",
        })
    }
}

impl std::error::Error for TraceparentError {}

/// Parses one `traceparent` header value (W3C Trace Context).
///
/// Surrounding spaces and tabs are ignored. Version `00` must be exactly
/// `00-<32 hex>-<16 hex>-<2 hex>`. A later version (anything but `ff`) is read
/// by its first 55 characters as if it were `00`; anything after them must
/// start with `-` and is ignored, and only the sampled flag is kept. Hex must
/// be lowercase and neither id may be all zeros.
pub fn parse_traceparent(value: &[u8]) -> Result<Traceparent, TraceparentError> {
    use TraceparentError as E;

    let v = trim_ows(value);
    if !v.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        return Err(E::NonAscii);
    }
    if v.len() < TRACEPARENT_LEN {
        return Err(E::Length);
    }
    let [version] = decode_hex::<1>(&v[0..2], lower_hex_digit).ok_or(E::Version)?;
    if version == 0xff {
        return Err(E::Version);
    }
    if version == 0 && v.len() != TRACEPARENT_LEN {
        return Err(E::Length);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(E::Separator);
    }
    // Only later versions may have more fields, and those begin with '-'.
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return Err(E::Separator);
    }

    let trace_id = decode_hex::<16>(&v[3..35], lower_hex_digit).ok_or(E::Hex)?;
    let parent_id = decode_hex::<8>(&v[36..52], lower_hex_digit).ok_or(E::Hex)?;
    let [flags] = decode_hex::<1>(&v[53..55], lower_hex_digit).ok_or(E::Hex)?;
    if all_zero(&trace_id) {
        return Err(E::ZeroTraceId);
    }
    if all_zero(&parent_id) {
        return Err(E::ZeroParentId);
    }

    Ok(Traceparent {
        version,
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        flags: if version == 0 { flags } else { flags & (FLAG_SAMPLED | FLAG_RANDOM) },
    })
}

/// `00-{trace}-{span}-{01|00}`, a `traceparent` with only the sampled flag.
pub fn traceparent_value(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    traceparent_with_flags(trace_id, span_id, u8::from(sampled) * FLAG_SAMPLED)
}

/// The W3C flags of a trace tracegate starts itself: sampled, and random (its ids are drawn
/// at random).
pub const NEW_TRACE_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// `00-{trace}-{span}-{flags}`, the `traceparent` to send upstream.
///
/// Formatted on the stack; the only allocation is the `HeaderValue` itself.
pub fn traceparent_with_flags(trace_id: TraceId, span_id: SpanId, flags: u8) -> HeaderValue {
    let mut buf = [0u8; TRACEPARENT_LEN];
    buf[0..3].copy_from_slice(b"00-");
    encode_hex(&trace_id.0, &mut buf[3..35]);
    buf[35] = b'-';
    encode_hex(&span_id.0, &mut buf[36..52]);
    buf[52] = b'-';
    encode_hex(&[flags], &mut buf[53..55]);
    HeaderValue::from_bytes(&buf).expect("traceparent is printable ASCII")
}

// ---------------------------------------------------------------------------
// W3C tracestate
// ---------------------------------------------------------------------------

/// The caller's `tracestate` to pass on: every header line, trimmed, joined with `,`, if the
/// whole list is valid and has at least one member. A key that comes again is a member the
/// list may not hold twice: the later one is dropped and the rest passed on (the W3C test
/// suite accepts dropping it or keeping both; a malformed member, or more than 32, still
/// discards the whole list, as the suite's strict tests expect).
///
/// A single line that needs no trimming and lost nothing is returned as is (a cheap clone).
/// Only meaningful next to a valid `traceparent`; [`extract`] takes care of that.
pub fn tracestate_value(headers: &HeaderMap) -> Option<HeaderValue> {
    let lines = headers.get_all(TRACESTATE);
    let (members, dropped) = tracestate_members(lines.iter().map(HeaderValue::as_bytes))?;
    if !dropped {
        let mut non_empty = lines.iter().filter(|v| !trim_ows(v.as_bytes()).is_empty());
        let first = non_empty.next()?;
        if non_empty.next().is_none() && trim_ows(first.as_bytes()).len() == first.len() {
            return Some(first.clone());
        }
    }
    // Something dropped: the members kept. Else the lines as sent (OWS inside a line kept).
    let parts: Vec<&[u8]> = if dropped {
        members
    } else {
        lines.iter().map(|v| trim_ows(v.as_bytes())).filter(|t| !t.is_empty()).collect()
    };
    let combined = parts.join(&b',');
    HeaderValue::from_bytes(&combined).ok()
}

/// Whether the `tracestate` header lines, taken together as one list, would be passed on:
/// every member well formed, at least one, at most 32 distinct keys.
pub fn tracestate_is_valid<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> bool {
    tracestate_members(lines).is_some()
}

/// The members of the list in order, a repeated key's later members left out, and whether any
/// was; `None` when a member is malformed, there are none, or more than 32 keys.
fn tracestate_members<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<(Vec<&'a [u8]>, bool)> {
    let mut keys: [&[u8]; TRACESTATE_MAX_MEMBERS] = [&[]; TRACESTATE_MAX_MEMBERS];
    let mut members = Vec::new();
    let mut dropped = false;
    for line in lines {
        for member in line.split(|&b| b == b',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            let eq = member.iter().position(|&b| b == b'=')?;
            let (key, value) = (&member[..eq], &member[eq + 1..]);
            if !tracestate_key_is_valid(key) || !tracestate_value_is_valid(value) {
                return None;
            }
            if keys[..members.len()].contains(&key) {
                dropped = true;
                continue;
            }
            if members.len() == TRACESTATE_MAX_MEMBERS {
                return None;
            }
            keys[members.len()] = key;
            members.push(member);
        }
    }
    (!members.is_empty()).then_some((members, dropped))
}

/// `(lcalpha / DIGIT) 0*255 keychar`, keychar = `lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`
/// (the current grammar; the older `tenant@system` keys are a part of it).
fn tracestate_key_is_valid(key: &[u8]) -> bool {
    matches!(key.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && key.len() <= 256
        && key.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

/// 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a space.
fn tracestate_value_is_valid(value: &[u8]) -> bool {
    matches!(value.last(), Some(&last) if last != b' ')
        && value.len() <= 256
        && value.iter().all(|&b| matches!(b, 0x20..=0x7e) && b != b',' && b != b'=')
}

// ---------------------------------------------------------------------------
// Zipkin B3
// ---------------------------------------------------------------------------

/// A B3 sampling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Sampling {
    /// `0`: not sampled.
    Deny,
    /// `1`: sampled.
    Accept,
    /// `d`: debug, which implies sampled.
    Debug,
}

/// A parsed single-header `b3` value that carries ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3Single {
    /// The trace id (a 64-bit id is left-padded with zeros).
    pub trace_id: TraceId,
    /// The caller's span id.
    pub span_id: SpanId,
    /// The sampling state, if given.
    pub sampling: Option<B3Sampling>,
    /// The caller's parent span id, if given.
    pub parent_span_id: Option<SpanId>,
}

impl B3Single {
    /// Sampled unless the caller explicitly said `0`.
    pub fn sampled(&self) -> bool {
        self.sampling != Some(B3Sampling::Deny)
    }
}

/// Parses a single-header `b3` value: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`.
///
/// The trace id is 16 or 32 lowercase hex digits, span ids 16, sampling one of
/// `0`, `1`, `d`. Ids may not be all zeros. A value with no ids (a lone `0`,
/// `1` or `d`) gives `None`, like any malformed value, since it carries no
/// trace to join.
pub fn parse_b3_single(value: &[u8]) -> Option<B3Single> {
    let mut fields = trim_ows(value).split(|&b| b == b'-');
    let trace_id = TraceId::from_b3_hex(fields.next()?)?;
    let span_id = SpanId::from_lower_hex(fields.next()?)?;
    let sampling = match fields.next() {
        None => None,
        Some(b"0") => Some(B3Sampling::Deny),
        Some(b"1") => Some(B3Sampling::Accept),
        Some(b"d") => Some(B3Sampling::Debug),
        Some(_) => return None,
    };
    let parent_span_id = match fields.next() {
        None => None,
        Some(field) => Some(SpanId::from_lower_hex(field)?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(B3Single { trace_id, span_id, sampling, parent_span_id })
}

/// Single-header B3 `{trace}-{span}-{1|0}`.
pub fn b3_value(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 2];
    encode_hex(&trace_id.0, &mut buf[0..32]);
    buf[32] = b'-';
    encode_hex(&span_id.0, &mut buf[33..49]);
    buf[49] = b'-';
    buf[50] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&buf).expect("b3 is printable ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// The W3C test suite's ids.
    const TP: &str = "00-12345678901234567890123456789012-1234567890123456-00";

    fn trace() -> TraceId {
        TraceId::from_hex(TRACE).unwrap()
    }

    fn span() -> SpanId {
        SpanId::from_hex(SPAN).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn tp(s: &str) -> Result<Traceparent, TraceparentError> {
        parse_traceparent(s.as_bytes())
    }

    fn state_valid(lines: &[&str]) -> bool {
        tracestate_is_valid(lines.iter().map(|l| l.as_bytes()))
    }

    /// The tracestate `extract` passes on next to a valid traceparent.
    fn passed_state(lines: &[&str]) -> Option<String> {
        let mut pairs = vec![("traceparent", TP)];
        pairs.extend(lines.iter().map(|l| ("tracestate", *l)));
        let ctx = extract(&headers(&pairs)).unwrap();
        assert_eq!(ctx.propagation, Propagation::W3c);
        ctx.tracestate.map(|v| v.to_str().unwrap().to_owned())
    }

    // ---- ids ----

    #[test]
    fn trace_id_hex_round_trip() {
        let id = trace();
        assert_eq!(id.to_hex(), TRACE);
        assert_eq!(id.0[0], 0x4b);
        assert_eq!(id.0[15], 0x36);
        let mut buf = [0u8; 32];
        id.write_hex(&mut buf);
        assert_eq!(&buf, TRACE.as_bytes());
    }

    #[test]
    fn span_id_hex_round_trip() {
        let id = span();
        assert_eq!(id.to_hex(), SPAN);
        assert_eq!(id.0, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        let mut buf = [0u8; 16];
        id.write_hex(&mut buf);
        assert_eq!(&buf, SPAN.as_bytes());
    }

    #[test]
    fn from_hex_accepts_uppercase_and_prints_lowercase() {
        let upper = TraceId::from_hex(&TRACE.to_uppercase()).unwrap();
        assert_eq!(upper, trace());
        assert_eq!(upper.to_hex(), TRACE);
        assert_eq!(SpanId::from_hex("00F067AA0BA902B7"), Some(span()));
        assert_eq!(SpanId::from_hex("00F067aa0BA902b7"), Some(span()));
    }

    #[test]
    fn from_hex_rejects_zero_wrong_length_and_non_hex() {
        assert_eq!(TraceId::from_hex(&"0".repeat(32)), None);
        assert_eq!(SpanId::from_hex(&"0".repeat(16)), None);
        assert_eq!(TraceId::from_hex(&TRACE[..31]), None);
        assert_eq!(TraceId::from_hex(&format!("{TRACE}0")), None);
        assert_eq!(TraceId::from_hex(""), None);
        assert_eq!(SpanId::from_hex(&SPAN[..15]), None);
        assert_eq!(SpanId::from_hex(TRACE), None);
        assert_eq!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473g"), None);
        assert_eq!(SpanId::from_hex("00f067aa0ba902b-"), None);
        assert_eq!(SpanId::from_hex(" 0f067aa0ba902b7"), None);
        assert_eq!(SpanId::from_hex("00f067aa0ba902é"), None);
    }

    #[test]
    fn display_and_debug_are_lowercase_hex() {
        assert_eq!(trace().to_string(), TRACE);
        assert_eq!(format!("{:?}", trace()), TRACE);
        assert_eq!(format!("{}", span()), SPAN);
        assert_eq!(format!("{:?}", span()), SPAN);
        assert_eq!(format!("{:>18}", span()), format!("  {SPAN}"));
        assert_eq!(format!("{:?}", Some(span())), format!("Some({SPAN})"));
    }

    #[test]
    fn from_str_parses_and_reports_errors() {
        assert_eq!(TRACE.parse::<TraceId>(), Ok(trace()));
        assert_eq!(SPAN.parse::<SpanId>(), Ok(span()));
        let err = "nope".parse::<TraceId>().unwrap_err();
        assert_eq!(err.to_string(), "expected 32 hex digits, not all zero");
        assert!("0000000000000000".parse::<SpanId>().is_err());
    }

    #[test]
    fn random_ids_are_non_zero_and_distinct() {
        let traces: Vec<TraceId> = (0..100).map(|_| TraceId::random()).collect();
        let spans: Vec<SpanId> = (0..100).map(|_| SpanId::random()).collect();
        assert!(traces.iter().all(|t| !all_zero(&t.0)));
        assert!(spans.iter().all(|s| !all_zero(&s.0)));
        let unique: std::collections::HashSet<_> = traces.iter().collect();
        assert_eq!(unique.len(), traces.len());
        for id in &traces {
            let hex = id.to_hex();
            assert_eq!(hex.len(), 32);
            assert_eq!(TraceId::from_hex(&hex), Some(*id));
        }
        for id in &spans {
            assert_eq!(SpanId::from_hex(&id.to_hex()), Some(*id));
        }
    }

    #[test]
    fn ids_order_by_bytes() {
        let low = TraceId::from_hex("00000000000000000000000000000001").unwrap();
        let high = TraceId::from_hex("10000000000000000000000000000000").unwrap();
        assert!(low < high);
    }

    #[test]
    fn session_trace_id_is_deterministic() {
        let a = TraceId::from_session("checkout-flow-42");
        assert_eq!(a, TraceId::from_session("checkout-flow-42"));
        assert_ne!(a, TraceId::from_session("checkout-flow-43"));
        assert_ne!(a, TraceId::from_session(""));
        assert!(!all_zero(&a.0));

        let digest = Sha256::digest(b"tracegate-session\0checkout-flow-42");
        assert_eq!(&a.0[..], &digest[..16]);
    }

    #[test]
    fn session_hash_is_prefixed() {
        // Without the prefix the id would simply be SHA-256 of the name.
        let plain = Sha256::digest(b"abc");
        assert_ne!(&TraceId::from_session("abc").0[..], &plain[..16]);
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&trace()).unwrap();
        assert_eq!(json, format!("\"{TRACE}\""));
        assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), trace());

        let json = serde_json::to_string(&span()).unwrap();
        assert_eq!(json, format!("\"{SPAN}\""));
        assert_eq!(serde_json::from_str::<SpanId>(&json).unwrap(), span());
    }

    #[test]
    fn serde_accepts_uppercase_and_rejects_invalid() {
        let upper = format!("\"{}\"", TRACE.to_uppercase());
        assert_eq!(serde_json::from_str::<TraceId>(&upper).unwrap(), trace());
        assert!(serde_json::from_str::<TraceId>(&format!("\"{}\"", "0".repeat(32))).is_err());
        assert!(serde_json::from_str::<TraceId>("\"abc\"").is_err());
        assert!(serde_json::from_str::<TraceId>("42").is_err());
        assert!(serde_json::from_str::<SpanId>(&format!("\"{TRACE}\"")).is_err());
    }

    #[test]
    fn serde_inside_a_struct() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Row {
            trace_id: TraceId,
            span_id: Option<SpanId>,
        }
        let row = Row { trace_id: trace(), span_id: Some(span()) };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, format!(r#"{{"trace_id":"{TRACE}","span_id":"{SPAN}"}}"#));
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
        let owned: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::from_value::<Row>(owned).unwrap(), row);
    }

    // ---- traceparent parsing ----

    #[test]
    fn traceparent_spec_example() {
        let parsed = tp(SPEC_EXAMPLE).unwrap();
        assert_eq!(parsed.version, 0);
        assert_eq!(parsed.trace_id, trace());
        assert_eq!(parsed.parent_id, span());
        assert_eq!(parsed.flags, 1);
        assert!(parsed.sampled());
    }

    #[test]
    fn traceparent_not_sampled() {
        let parsed = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(parsed.flags, 0);
        assert!(!parsed.sampled());
    }

    #[test]
    fn traceparent_version_00_keeps_all_flags() {
        let parsed = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap();
        assert_eq!(parsed.flags, 0x03);
        assert!(parsed.sampled());
        let parsed = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").unwrap();
        assert_eq!(parsed.flags, 0x02);
        assert!(!parsed.sampled());
    }

    #[test]
    fn traceparent_version_ff_is_invalid() {
        assert_eq!(tp("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), Err(TraceparentError::Version));
        assert_eq!(
            tp("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"),
            Err(TraceparentError::Version)
        );
    }

    #[test]
    fn traceparent_uppercase_hex_is_invalid() {
        use TraceparentError::{Hex, Version};
        assert_eq!(tp("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), Err(Hex));
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"), Err(Hex));
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A"), Err(Hex));
        assert_eq!(tp("CC-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), Err(Version));
    }

    #[test]
    fn traceparent_zero_ids_are_invalid() {
        assert_eq!(tp("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), Err(TraceparentError::ZeroTraceId));
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), Err(TraceparentError::ZeroParentId));
    }

    #[test]
    fn traceparent_wrong_lengths_are_invalid() {
        use TraceparentError::{Length, Separator};
        // Too short overall.
        assert_eq!(tp(""), Err(Length));
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"), Err(Length));
        assert_eq!(tp("0-12345678901234567890123456789012-1234567890123456-01"), Err(Length));
        assert_eq!(tp("00-1234567890123456789012345678901-1234567890123456-01"), Err(Length));
        assert_eq!(tp("00-12345678901234567890123456789012-123456789012345-01"), Err(Length));
        // Version 00 must be exactly 55 long.
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01."), Err(Length));
        assert_eq!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001"), Err(Length));
        assert_eq!(tp("000-12345678901234567890123456789012-1234567890123456-01"), Err(Length));
        assert_eq!(tp("00-123456789012345678901234567890123-1234567890123456-01"), Err(Length));
        assert_eq!(tp("00-12345678901234567890123456789012-12345678901234567-01"), Err(Length));
        assert_eq!(tp("0000-12345678901234567890123456789012-1234567890123456-01"), Err(Length));
        // Under a future version the same mistakes put a separator in the wrong place.
        assert_eq!(tp("cc-123456789012345678901234567890123-1234567890123456-01"), Err(Separator));
        assert_eq!(tp("cc-12345678901234567890123456789012-12345678901234567-01"), Err(Separator));
        assert_eq!(tp("cc1-2345678901234567890123456789012-1234567890123456-01"), Err(Separator));
    }

    #[test]
    fn traceparent_version_00_with_future_fields_is_invalid() {
        assert_eq!(
            tp("00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like"),
            Err(TraceparentError::Length)
        );
    }

    #[test]
    fn traceparent_future_version_is_parsed_as_00() {
        let parsed = tp("cc-12345678901234567890123456789012-1234567890123456-01").unwrap();
        assert_eq!(parsed.version, 0xcc);
        assert_eq!(parsed.trace_id.to_hex(), "12345678901234567890123456789012");
        assert_eq!(parsed.parent_id.to_hex(), "1234567890123456");
        assert!(parsed.sampled());
    }

    #[test]
    fn traceparent_future_version_with_extra_fields() {
        let parsed =
            tp("ab-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like").unwrap();
        assert_eq!(parsed.version, 0xab);
        assert_eq!(parsed.trace_id, trace());
        assert_eq!(parsed.parent_id, span());
        assert!(parsed.sampled());
        assert!(tp("cc-12345678901234567890123456789012-1234567890123456-01-").is_ok());
        assert!(tp("01-12345678901234567890123456789012-1234567890123456-00-x").is_ok());
    }

    #[test]
    fn traceparent_future_version_needs_dash_after_flags() {
        assert_eq!(
            tp("cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like"),
            Err(TraceparentError::Separator)
        );
        assert_eq!(tp("cc-12345678901234567890123456789012-1234567890123456-010"), Err(TraceparentError::Separator));
    }

    #[test]
    fn traceparent_future_version_keeps_only_the_known_flags() {
        let parsed = tp("cc-12345678901234567890123456789012-1234567890123456-ff").unwrap();
        assert_eq!(parsed.flags, 0x03, "sampled and random");
        let parsed = tp("cc-12345678901234567890123456789012-1234567890123456-fc").unwrap();
        assert_eq!(parsed.flags, 0x00);
        assert!(!parsed.sampled());
    }

    #[test]
    fn the_random_flag_is_kept_upstream_and_set_on_new_traces() {
        let mut headers = HeaderMap::new();
        headers
            .insert(TRACEPARENT, HeaderValue::from_static("00-12345678901234567890123456789012-1234567890123456-02"));
        let caller = extract(&headers).unwrap();
        assert_eq!((caller.sampled, caller.random, caller.flags()), (false, true, 0x02));
        let sent = caller.traceparent_for(SpanId::random());
        assert!(sent.to_str().unwrap().ends_with("-02"), "{sent:?}");
        assert_eq!(NEW_TRACE_FLAGS, 0x03);
    }

    #[test]
    fn traceparent_future_version_still_validates_fields() {
        use TraceparentError::{Hex, ZeroParentId, ZeroTraceId};
        assert_eq!(tp("cc-00000000000000000000000000000000-1234567890123456-01"), Err(ZeroTraceId));
        assert_eq!(tp("cc-12345678901234567890123456789012-0000000000000000-01"), Err(ZeroParentId));
        assert_eq!(tp("cc-1234567890123456789012345678901X-1234567890123456-01-x"), Err(Hex));
    }

    #[test]
    fn traceparent_illegal_characters() {
        use TraceparentError::{Hex, Version};
        assert_eq!(tp(".0-12345678901234567890123456789012-1234567890123456-01"), Err(Version));
        assert_eq!(tp("0.-12345678901234567890123456789012-1234567890123456-01"), Err(Version));
        assert_eq!(tp("00-.2345678901234567890123456789012-1234567890123456-01"), Err(Hex));
        assert_eq!(tp("00-1234567890123456789012345678901.-1234567890123456-01"), Err(Hex));
        assert_eq!(tp("00-12345678901234567890123456789012-.234567890123456-01"), Err(Hex));
        assert_eq!(tp("00-12345678901234567890123456789012-123456789012345.-01"), Err(Hex));
        assert_eq!(tp("00-12345678901234567890123456789012-1234567890123456-.0"), Err(Hex));
        assert_eq!(tp("00-12345678901234567890123456789012-1234567890123456-0."), Err(Hex));
    }

    #[test]
    fn traceparent_wrong_separators() {
        use TraceparentError::Separator;
        assert_eq!(tp("00_12345678901234567890123456789012-1234567890123456-01"), Err(Separator));
        assert_eq!(tp("00-12345678901234567890123456789012_1234567890123456-01"), Err(Separator));
        assert_eq!(tp("00-12345678901234567890123456789012-1234567890123456_01"), Err(Separator));
    }

    #[test]
    fn traceparent_ows_is_trimmed() {
        for value in [
            " 00-12345678901234567890123456789012-1234567890123456-01",
            "\t00-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-1234567890123456-01 ",
            "00-12345678901234567890123456789012-1234567890123456-01\t",
            "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        ] {
            let parsed = tp(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(parsed.trace_id.to_hex(), "12345678901234567890123456789012");
        }
        // Only spaces and tabs are OWS.
        assert!(tp("\n00-12345678901234567890123456789012-1234567890123456-01").is_err());
    }

    #[test]
    fn traceparent_non_ascii_is_invalid() {
        let mut bytes = b"cc-12345678901234567890123456789012-1234567890123456-01-".to_vec();
        bytes.extend_from_slice("futür".as_bytes());
        assert_eq!(parse_traceparent(&bytes), Err(TraceparentError::NonAscii));
        let mut bytes = b"cc-12345678901234567890123456789012-1234567890123456-01-x".to_vec();
        bytes.push(0xff);
        assert_eq!(parse_traceparent(&bytes), Err(TraceparentError::NonAscii));
        let mut bytes = SPEC_EXAMPLE.as_bytes().to_vec();
        bytes[10] = 0xc3;
        assert_eq!(parse_traceparent(&bytes), Err(TraceparentError::NonAscii));
    }

    #[test]
    fn traceparent_error_messages() {
        assert_eq!(TraceparentError::Version.to_string(), "traceparent has an invalid version");
        let err: Box<dyn std::error::Error> = Box::new(TraceparentError::Length);
        assert!(err.to_string().contains("length"));
    }

    // ---- traceparent formatting ----

    #[test]
    fn traceparent_value_formats_spec_example() {
        assert_eq!(traceparent_value(trace(), span(), true), SPEC_EXAMPLE);
        assert_eq!(
            traceparent_value(trace(), span(), false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn traceparent_value_round_trips() {
        for sampled in [true, false] {
            for _ in 0..50 {
                let (t, s) = (TraceId::random(), SpanId::random());
                let value = traceparent_value(t, s, sampled);
                let parsed = parse_traceparent(value.as_bytes()).unwrap();
                assert_eq!(parsed, Traceparent { version: 0, trace_id: t, parent_id: s, flags: u8::from(sampled) });
            }
        }
    }

    #[test]
    fn caller_context_traceparent_for_keeps_trace_and_sampling() {
        let ctx =
            extract(&headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")])).unwrap();
        let ours = SpanId::from_hex("1111111111111111").unwrap();
        assert_eq!(ctx.traceparent_for(ours), "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00");
    }

    // ---- tracestate ----

    #[test]
    fn tracestate_single_line_passes_through_unchanged() {
        assert_eq!(
            passed_state(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(passed_state(&["foo=1,bar=2"]).as_deref(), Some("foo=1,bar=2"));
    }

    #[test]
    fn tracestate_multiple_lines_are_combined_in_order() {
        assert_eq!(
            passed_state(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).as_deref(),
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
        );
    }

    #[test]
    fn tracestate_lines_are_trimmed_and_empty_lines_skipped() {
        assert_eq!(passed_state(&[" foo=1\t"]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["foo=1", ""]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["", "foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["foo=1 ", " \t", "\tbar=2"]).as_deref(), Some("foo=1,bar=2"));
    }

    #[test]
    fn tracestate_empty_is_not_passed_on() {
        assert_eq!(passed_state(&[""]), None);
        assert_eq!(passed_state(&[" , ,\t"]), None);
        assert_eq!(passed_state(&[]), None);
    }

    #[test]
    fn tracestate_ows_and_empty_members() {
        assert!(state_valid(&["foo=1 \t , \t bar=2, \t baz=3"]));
        assert!(state_valid(&["foo=1\t \t,\t \tbar=2,\t \tbaz=3"]));
        assert!(state_valid(&[" foo=1", "\tfoo2=1", "foo3=1 ", "foo4=1\t", "\t foo5=1 \t"]));
        assert!(state_valid(&["foo=1,,bar=2", ",baz=1,", "  ,  "]));
        // OWS inside a member after trimming is passed on verbatim.
        assert_eq!(passed_state(&["foo=1 \t , \t bar=2"]).as_deref(), Some("foo=1 \t , \t bar=2"));
    }

    #[test]
    fn tracestate_member_limit() {
        let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let thirty_two = members[..32].join(",");
        let thirty_three = members.join(",");
        assert!(state_valid(&[&thirty_two]));
        assert!(!state_valid(&[&thirty_three]));
        assert_eq!(passed_state(&[&thirty_three]), None);

        // Across lines, as in the W3C test suite.
        let lines = |n: usize| -> Vec<String> { members[..n].chunks(10).map(|c| c.join(",")).collect() };
        let ok = lines(32);
        let too_many = lines(33);
        let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert_eq!(passed_state(&ok).as_deref(), Some(thirty_two.as_str()));
        assert_eq!(passed_state(&too_many), None);

        // Empty members do not count.
        let with_gaps = format!("{thirty_two},, ,");
        assert!(state_valid(&[&with_gaps]));
    }

    #[test]
    fn tracestate_duplicate_keys_keep_the_first_and_the_other_vendors() {
        assert_eq!(passed_state(&["foo=1,foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["foo=1,foo=2"]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["foo=1", "foo=2"]).as_deref(), Some("foo=1"));
        assert_eq!(passed_state(&["a@b=1,c=2,a@b=3"]).as_deref(), Some("a@b=1,c=2"));
        assert_eq!(passed_state(&["rojo=1 ,congo=2", " rojo=3"]).as_deref(), Some("rojo=1,congo=2"));
        // Same tenant at another system, or a tenant named like a simple key, is a different key.
        assert_eq!(passed_state(&["foo=1,foo@bar=1,foo@baz=1"]).as_deref(), Some("foo=1,foo@bar=1,foo@baz=1"));
        // 33 members of which one repeats a key: 32 distinct ones are passed on.
        let members: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
        let with_repeat = format!("{},bar01=99", members.join(","));
        assert_eq!(passed_state(&[&with_repeat]), Some(members.join(",")));
    }

    #[test]
    fn tracestate_keys_with_at_signs_follow_the_current_grammar() {
        assert!(state_valid(&["fw529a3039@dt=ZmY0ZmYyZTYyNjQwZjk1MA"]));
        assert!(state_valid(&["1tenant@vendor=x"]));
        assert!(state_valid(&["0@a=x"]));
        assert!(state_valid(&["t_-*/@s9_-*/=x"]));
        // `@` is a key character like the others after the first (W3C test suite, level 2).
        assert!(state_valid(&["tenant@1vendor=x"]));
        assert_eq!(passed_state(&["foo@=1,bar=2"]).as_deref(), Some("foo@=1,bar=2"));
        assert_eq!(passed_state(&["foo@@bar=1,bar=2"]).as_deref(), Some("foo@@bar=1,bar=2"));
        assert_eq!(passed_state(&["foo@bar@baz=1,bar=2"]).as_deref(), Some("foo@bar@baz=1,bar=2"));
        // A key still starts with a lowercase letter or a digit.
        assert_eq!(passed_state(&["@foo=1,bar=2"]), None);
        assert!(!state_valid(&["_tenant@vendor=1"]));
        assert!(!state_valid(&["Tenant@vendor=1"]));
    }

    #[test]
    fn tracestate_key_length_limits() {
        let z = |n| "z".repeat(n);
        assert!(state_valid(&["foo=1", &format!("{}=1", z(256))]));
        assert!(!state_valid(&["foo=1", &format!("{}=1", z(257))]));
        let key = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
        assert!(state_valid(&["foo=1", &key]));
        assert!(state_valid(&["foo=1", &format!("{}@v=1", "t".repeat(242))]));
        assert!(state_valid(&["foo=1", &format!("t@{}=1", "v".repeat(15))]));
        assert!(!state_valid(&["foo=1", &format!("{}@v=1", "t".repeat(255))]), "257 characters in all");
    }

    #[test]
    fn tracestate_illegal_keys() {
        // A leading digit is allowed since the grammar's revision (`(lcalpha / DIGIT) 0*255 keychar`).
        assert!(state_valid(&["1foo=1"]));
        for bad in ["foo =1", "FOO=1", "foo.bar=1", "_foo=1", "=1", "fOo=1", "foo", "@foo=1"] {
            assert!(!state_valid(&[bad]), "{bad:?} should be invalid");
        }
        // One bad member discards the whole list.
        assert_eq!(passed_state(&["foo=1", "FOO=1"]), None);
    }

    #[test]
    fn tracestate_values() {
        assert!(!state_valid(&["foo=bar=baz"]));
        assert!(!state_valid(&["foo=,bar=3"]));
        assert!(!state_valid(&["foo="]));
        assert!(!state_valid(&["foo= "]));
        assert!(!state_valid(&["foo=a\u{7f}b"]));
        assert!(state_valid(&["foo= x"]));
        assert!(state_valid(&["foo=a b"]));
        assert!(state_valid(&[&format!("foo={}", "v".repeat(256))]));
        assert!(!state_valid(&[&format!("foo={}", "v".repeat(257))]));
        assert!(!tracestate_is_valid([b"foo=caf\xc3\xa9".as_slice()]));
        assert!(!tracestate_is_valid([b"foo=a\x01b".as_slice()]));
    }

    #[test]
    fn tracestate_all_allowed_characters() {
        let key: String = ('a'..='z').chain('0'..='9').chain("_-*/".chars()).collect();
        let value: String = (0x20u8..=0x7e).filter(|&b| b != b',' && b != b'=').map(char::from).collect();
        let simple = format!("{key}={value}");
        assert_eq!(passed_state(&[&simple]), Some(simple.clone()));
        let tenant = format!("{key}@a-z0-9_-*/={value}");
        assert_eq!(passed_state(&[&tenant]), Some(tenant.clone()));
    }

    #[test]
    fn tracestate_is_ignored_without_valid_traceparent() {
        assert!(extract(&headers(&[("tracestate", "foo=1")])).is_none());
        let ctx = extract(&headers(&[
            ("traceparent", "00-00000000000000000000000000000000-1234567890123456-01"),
            ("tracestate", "foo=1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]))
        .unwrap();
        assert_eq!(ctx.propagation, Propagation::B3Single);
        assert_eq!(ctx.tracestate, None);
    }

    #[test]
    fn invalid_tracestate_keeps_the_traceparent() {
        let ctx = extract(&headers(&[("traceparent", SPEC_EXAMPLE), ("tracestate", "foo=1,FOO=2")])).unwrap();
        assert_eq!(ctx.propagation, Propagation::W3c);
        assert_eq!(ctx.trace_id, trace());
        assert_eq!(ctx.tracestate, None);
    }

    // ---- B3 single ----

    #[test]
    fn b3_single_all_fields() {
        let b3 = parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        assert_eq!(b3.trace_id.to_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(b3.span_id.to_hex(), "e457b5a2e4d86bd1");
        assert_eq!(b3.sampling, Some(B3Sampling::Accept));
        assert_eq!(b3.parent_span_id.map(|s| s.to_hex()).as_deref(), Some("05e3ac9a4f6e3b90"));
        assert!(b3.sampled());
    }

    #[test]
    fn b3_single_ids_only_defaults_to_sampled() {
        let b3 = parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(b3.sampling, None);
        assert_eq!(b3.parent_span_id, None);
        assert!(b3.sampled());
    }

    #[test]
    fn b3_single_sampling_states() {
        let parse =
            |s: &str| parse_b3_single(format!("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-{s}").as_bytes());
        assert_eq!(parse("0").unwrap().sampling, Some(B3Sampling::Deny));
        assert!(!parse("0").unwrap().sampled());
        assert!(parse("1").unwrap().sampled());
        assert_eq!(parse("d").unwrap().sampling, Some(B3Sampling::Debug));
        assert!(parse("d").unwrap().sampled());
        for bad in ["", "2", "D", "true", "01", "x"] {
            assert_eq!(parse(bad), None, "sampling {bad:?}");
        }
    }

    #[test]
    fn b3_single_64_bit_trace_id_is_left_padded() {
        let b3 = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7-1").unwrap();
        assert_eq!(b3.trace_id.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(b3.span_id, span());
    }

    #[test]
    fn b3_single_lone_sampling_carries_no_context() {
        for lone in ["0", "1", "d"] {
            assert_eq!(parse_b3_single(lone.as_bytes()), None);
            assert!(extract(&headers(&[("b3", lone)])).is_none());
        }
    }

    #[test]
    fn b3_single_invalid_values() {
        for bad in [
            "",
            "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-E457B5A2E4D86BD1-1",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "0000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-0000000000000000",
            "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd",
            "80f198ee56343ba8-64fe8b2a57d3eff7e-e457b5a2e4d86bd1",
            "a3ce929d0e0e473-00f067aa0ba902b7",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7--1",
        ] {
            assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn b3_single_ows_is_trimmed() {
        assert!(parse_b3_single(b" \ta3ce929d0e0e4736-00f067aa0ba902b7-1 ").is_some());
    }

    #[test]
    fn b3_value_formats_and_round_trips() {
        assert_eq!(b3_value(trace(), span(), true), format!("{TRACE}-{SPAN}-1"));
        assert_eq!(b3_value(trace(), span(), false), format!("{TRACE}-{SPAN}-0"));
        for sampled in [true, false] {
            let (t, s) = (TraceId::random(), SpanId::random());
            let parsed = parse_b3_single(b3_value(t, s, sampled).as_bytes()).unwrap();
            assert_eq!((parsed.trace_id, parsed.span_id, parsed.sampled()), (t, s, sampled));
        }
    }

    // ---- B3 multi ----

    #[test]
    fn b3_multi_valid() {
        let ctx = extract(&headers(&[
            ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("X-B3-SpanId", "e457b5a2e4d86bd1"),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "1"),
        ]))
        .unwrap();
        assert_eq!(ctx.propagation, Propagation::B3Multi);
        assert_eq!(ctx.trace_id.to_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(ctx.parent_span_id.unwrap().to_hex(), "e457b5a2e4d86bd1");
        assert!(ctx.sampled);
        assert_eq!(ctx.tracestate, None);
    }

    #[test]
    fn b3_multi_64_bit_trace_id() {
        let ctx = extract(&headers(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN)])).unwrap();
        assert_eq!(ctx.trace_id.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert!(ctx.sampled);
    }

    #[test]
    fn b3_multi_sampling() {
        let sampled = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)];
            pairs.extend_from_slice(extra);
            extract(&headers(&pairs)).unwrap().sampled
        };
        assert!(sampled(&[]));
        assert!(sampled(&[("x-b3-sampled", "1")]));
        assert!(sampled(&[("x-b3-sampled", "true")]));
        assert!(!sampled(&[("x-b3-sampled", "0")]));
        assert!(!sampled(&[("x-b3-sampled", "false")]));
        assert!(sampled(&[("x-b3-flags", "1")]));
        assert!(sampled(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]));
        assert!(!sampled(&[("x-b3-flags", "0"), ("x-b3-sampled", "0")]));
        // An unrecognised sampling value is ignored rather than dropping the context.
        assert!(sampled(&[("x-b3-sampled", "maybe")]));
    }

    #[test]
    fn b3_multi_invalid() {
        for pairs in [
            vec![("x-b3-traceid", TRACE)],
            vec![("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", "4BF92F3577B34DA6A3CE929D0E0E4736"), ("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", TRACE), ("x-b3-spanid", "00F067AA0BA902B7")],
            vec![("x-b3-traceid", "00000000000000000000000000000000"), ("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", "0000000000000000"), ("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", TRACE), ("x-b3-spanid", "0000000000000000")],
            vec![("x-b3-traceid", &TRACE[..20]), ("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", TRACE), ("x-b3-spanid", TRACE)],
            vec![("x-b3-traceid", TRACE), ("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)],
        ] {
            assert!(extract(&headers(&pairs)).is_none(), "{pairs:?}");
        }
    }

    // ---- session ----

    #[test]
    fn session_context() {
        let ctx = extract(&headers(&[("x-tracegate-session", "  chat-7 \t")])).unwrap();
        assert_eq!(ctx.propagation, Propagation::Session);
        assert_eq!(ctx.trace_id, TraceId::from_session("chat-7"));
        assert_eq!(ctx.parent_span_id, None);
        assert!(ctx.sampled);
        assert_eq!(ctx.tracestate, None);
        let again = extract(&headers(&[("X-Tracegate-Session", "chat-7")])).unwrap();
        assert_eq!(again.trace_id, ctx.trace_id);
    }

    #[test]
    fn empty_session_is_ignored() {
        assert!(extract(&headers(&[("x-tracegate-session", "")])).is_none());
        assert!(extract(&headers(&[("x-tracegate-session", " \t ")])).is_none());
    }

    #[test]
    fn utf8_session_is_accepted() {
        let mut map = HeaderMap::new();
        map.insert("x-tracegate-session", HeaderValue::from_bytes("sesión".as_bytes()).unwrap());
        assert_eq!(extract(&map).unwrap().trace_id, TraceId::from_session("sesión"));
        map.insert("x-tracegate-session", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(extract(&map).is_none());
    }

    // ---- precedence ----

    const B3_SINGLE: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0";
    const B3_TRACE: &str = "11111111111111111111111111111111";

    #[test]
    fn nothing_sent_means_no_context() {
        assert!(extract(&HeaderMap::new()).is_none());
        assert!(extract(&headers(&[("content-type", "application/json")])).is_none());
    }

    #[test]
    fn w3c_wins_over_everything() {
        let ctx = extract(&headers(&[
            ("x-tracegate-session", "s"),
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", SPAN),
            ("b3", B3_SINGLE),
            ("traceparent", SPEC_EXAMPLE),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(ctx.propagation, Propagation::W3c);
        assert_eq!(ctx.trace_id, trace());
        assert_eq!(ctx.parent_span_id, Some(span()));
        assert!(ctx.sampled);
        assert_eq!(ctx.tracestate.unwrap(), "rojo=00f067aa0ba902b7");
    }

    #[test]
    fn invalid_traceparent_falls_through_to_b3() {
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let ctx = extract(&headers(&[("traceparent", bad), ("b3", B3_SINGLE)])).unwrap();
            assert_eq!(ctx.propagation, Propagation::B3Single, "{bad:?}");
            assert_eq!(ctx.trace_id.to_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
            assert_eq!(ctx.parent_span_id.unwrap().to_hex(), "e457b5a2e4d86bd1");
            assert!(!ctx.sampled);
        }
    }

    #[test]
    fn duplicate_traceparent_is_invalid() {
        let map = headers(&[
            ("traceparent", "00-12345678901234567890123456789011-1234567890123456-01"),
            ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01"),
        ]);
        assert!(extract(&map).is_none());
        let map = headers(&[("traceparent", SPEC_EXAMPLE), ("traceparent", SPEC_EXAMPLE), ("b3", B3_SINGLE)]);
        assert_eq!(extract(&map).unwrap().propagation, Propagation::B3Single);
    }

    #[test]
    fn b3_single_wins_over_multi_and_session() {
        let ctx = extract(&headers(&[
            ("x-tracegate-session", "s"),
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", SPAN),
            ("b3", B3_SINGLE),
        ]))
        .unwrap();
        assert_eq!(ctx.propagation, Propagation::B3Single);
    }

    #[test]
    fn invalid_b3_single_falls_through_to_multi() {
        for bad in ["1", "d", "nonsense", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x"] {
            let ctx = extract(&headers(&[
                ("b3", bad),
                ("x-b3-traceid", B3_TRACE),
                ("x-b3-spanid", SPAN),
                ("x-tracegate-session", "s"),
            ]))
            .unwrap();
            assert_eq!(ctx.propagation, Propagation::B3Multi, "{bad:?}");
            assert_eq!(ctx.trace_id.to_hex(), B3_TRACE);
        }
    }

    #[test]
    fn invalid_everything_falls_through_to_session() {
        let ctx = extract(&headers(&[
            ("traceparent", "00-00000000000000000000000000000000-1234567890123456-01"),
            ("tracestate", "foo=1"),
            ("b3", "0"),
            ("x-b3-traceid", B3_TRACE),
            ("x-tracegate-session", "fallback"),
        ]))
        .unwrap();
        assert_eq!(ctx.propagation, Propagation::Session);
        assert_eq!(ctx.trace_id, TraceId::from_session("fallback"));
        assert_eq!(ctx.tracestate, None);
    }

    #[test]
    fn header_names_are_case_insensitive() {
        for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
            let ctx = extract(&headers(&[(name, SPEC_EXAMPLE), ("TraceState", "foo=1")])).unwrap();
            assert_eq!(ctx.propagation, Propagation::W3c);
            assert_eq!(ctx.tracestate.unwrap(), "foo=1");
        }
        assert_eq!(extract(&headers(&[("B3", B3_SINGLE)])).unwrap().propagation, Propagation::B3Single);
        // Wrong names are not the header.
        assert!(extract(&headers(&[("trace-parent", SPEC_EXAMPLE)])).is_none());
        assert!(extract(&headers(&[("trace.parent", SPEC_EXAMPLE)])).is_none());
    }

    #[test]
    fn trim_ows_helper() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b\t"), b"a b");
        assert_eq!(trim_ows(b"\na\r"), b"\na\r");
    }
}
