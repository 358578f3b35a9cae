//! Finding calls: the filters of `/api/traces`, `/api/sessions`, `/api/export` and deletes
//! over the search index, newest first, a page at a time, however old the matches are.
//!
//! [`Store::for_each_match`] walks the spans matching every filter (span-level AND), newest
//! first. Per index source (the memtable, then each run, newest first; runs outside `from`/`to`
//! are skipped by their time range) it walks the postings of the most selective filter and
//! checks every other filter on the span itself (and `q` on its bodies), so a hash collision or
//! a filter without an index (`from`, `to`, exact duration and cost) never gives a wrong answer.
//!
//! A trace (or session) is listed once, at the position of its newest matching span; pages are
//! cut by position, so a cursor continues strictly below the last listed position. The cursor
//! also carries the first page's **horizon** (the first position not yet committed then):
//! newest matches are taken below it, so a call that arrives between pages and joins a trace
//! not listed yet neither lifts that trace above the cursor (a gap) nor lists it twice. Calls
//! past the horizon are seen by starting again from the top.

use std::collections::HashSet;

use crate::model::ids::TraceId;
use std::sync::atomic::Ordering;

use crate::model::span::{SessionSummary, Span, SpanStatus, TraceSummary};
use crate::store::fields::take_u32;
use crate::store::index;
use crate::store::index::terms::{self, Field};
use crate::store::index::words;
use crate::store::layout::{decode, SpanSegment};
use crate::store::reader::SegmentCache;
use crate::store::{Store, StoreError};

/// The filters of a trace listing; every one optional, all combined with AND. As JSON (the
/// cluster's shared deletions carry one) without the cursor and the limit.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TraceQuery {
    pub team: Option<String>,
    pub user: Option<String>,
    /// The request or the response model.
    pub model: Option<String>,
    pub provider: Option<String>,
    pub status: Option<SpanStatus>,
    pub session: Option<String>,
    /// `property.<name>=<value>` filters.
    pub properties: Vec<(String, String)>,
    /// Spans that started at or after this time.
    pub from_unix_nano: Option<u64>,
    /// Spans that started before this time.
    pub to_unix_nano: Option<u64>,
    pub min_duration_ms: Option<f64>,
    pub min_cost_usd: Option<f64>,
    /// A phrase in the request or response body (ASCII case-insensitive).
    pub text: Option<String>,
    /// Continue below this position (the previous page's `next_cursor`).
    #[serde(skip)]
    pub cursor: Option<Cursor>,
    #[serde(skip)]
    pub limit: usize,
}

/// Where a listing continues: below `below`, judging newest matches below `horizon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub below: u64,
    pub horizon: u64,
}

impl Cursor {
    /// `next_cursor` as the API shows it: two hex numbers.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}", self.below, self.horizon)
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let (below, horizon) = text.split_once('-')?;
        Some(Cursor { below: u64::from_str_radix(below, 16).ok()?, horizon: u64::from_str_radix(horizon, 16).ok()? })
    }
}

/// One page of a trace listing.
#[derive(Debug, Default)]
pub struct TracePage {
    pub traces: Vec<TraceSummary>,
    /// Where the next page starts; `None` when this page holds the last match.
    pub next_cursor: Option<Cursor>,
}

/// One page of a session listing.
#[derive(Debug, Default)]
pub struct SessionPage {
    pub sessions: Vec<SessionSummary>,
    pub next_cursor: Option<Cursor>,
}

impl TraceQuery {
    /// The filters the index can answer, as groups of terms: a span matches a group when it
    /// has any of its terms, and the query when it matches every group.
    fn term_groups(&self) -> Vec<Vec<u64>> {
        let mut groups = Vec::new();
        for (field, value) in [
            (Field::Team, &self.team),
            (Field::User, &self.user),
            (Field::Model, &self.model),
            (Field::Provider, &self.provider),
            (Field::Session, &self.session),
        ] {
            if let Some(v) = value {
                groups.push(vec![terms::term(field, v.as_bytes())]);
            }
        }
        if let Some(status) = self.status {
            groups.push(vec![terms::status_term(status)]);
        }
        for (name, value) in &self.properties {
            groups.push(vec![terms::property_term(name, value)]);
        }
        if let Some(ms) = self.min_duration_ms {
            groups.push(terms::buckets_from(Field::DurationBucket, terms::duration_bucket(ms)));
        }
        if let Some(usd) = self.min_cost_usd {
            groups.push(terms::buckets_from(Field::CostBucket, terms::cost_bucket(usd)));
        }
        groups
    }

    /// Whether `span` matches every filter but `text` (and the cursor).
    pub fn matches(&self, span: &Span) -> bool {
        let eq = |filter: &Option<String>, value: &Option<String>| filter.is_none() || filter == value;
        eq(&self.team, &span.team)
            && eq(&self.user, &span.user)
            && eq(&self.provider, &span.provider)
            && eq(&self.session, &span.session)
            && (self.model.is_none() || self.model == span.request_model || self.model == span.response_model)
            && self.status.is_none_or(|s| s == span.status)
            && self.properties.iter().all(|(n, v)| span.properties.get(n) == Some(v))
            && self.from_unix_nano.is_none_or(|t| span.start_time_unix_nano >= t)
            && self.to_unix_nano.is_none_or(|t| span.start_time_unix_nano < t)
            && self.min_duration_ms.is_none_or(|ms| span.duration_ms >= ms)
            && self.min_cost_usd.is_none_or(|usd| span.cost_usd.is_some_and(|c| c >= usd))
    }
}

/// Every status: with no filter that has postings, a source's spans are walked through these.
const ALL_STATUSES: [SpanStatus; 3] = [SpanStatus::Ok, SpanStatus::Error, SpanStatus::Cancelled];

/// A filter's postings are intersected with the candidates when it has at most this many times
/// as many postings as there are candidates.
const INTERSECT_RATIO: usize = 64;

/// What one walk reads more than once: span segments, body segments, the text to find.
pub(crate) struct Walk {
    pub(crate) spans: SegmentCache,
    pub(crate) bodies: SegmentCache,
    text: Option<Needle>,
    horizon: u64,
}

impl Store {
    /// Calls `visit(walk, position, span)` with each span matching `query`, newest first,
    /// below its cursor, until `visit` returns false. The horizon of a first page is the first
    /// position not committed when the walk starts.
    pub(crate) fn for_each_match(
        &self,
        query: &TraceQuery,
        mut visit: impl FnMut(&mut Walk, u64, Span) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let groups = query.term_groups();
        let everything: Vec<u64> = ALL_STATUSES.iter().map(|s| terms::status_term(*s)).collect();
        let (from, to) = (query.from_unix_nano.unwrap_or(0), query.to_unix_nano.unwrap_or(u64::MAX));
        let horizon = match query.cursor {
            Some(c) => c.horizon,
            None => index::position(self.committed_seq.load(Ordering::Acquire) + 1, 0),
        };
        let below = query.cursor.map_or(horizon, |c| c.below.min(horizon));
        let words = query.text.as_deref().map(words::phrase_terms).unwrap_or_default();
        let mut walk = Walk {
            spans: SegmentCache::default(),
            bodies: SegmentCache::bodies(),
            text: query.text.as_deref().map(Needle::new),
            horizon,
        };
        for source in self.index.sources() {
            if !source.overlaps(from, to) || source.first_position() >= below {
                continue;
            }
            // The filters by how many postings they have here, fewest first.
            let mut estimates: Vec<(usize, usize)> =
                groups.iter().enumerate().map(|(i, g)| (self.index.estimate(&source, g), i)).collect();
            estimates.sort_unstable();
            let driving = estimates.first().copied();
            let (mut positions, used) = if words.is_empty() && from == 0 && to == u64::MAX {
                let group = driving.map_or(everything.as_slice(), |(_, i)| groups[i].as_slice());
                (self.index.positions(&self.tree, &source, group)?, driving.map(|(_, i)| i))
            } else {
                // A phrase or a time window: only the blocks holding all of the phrase's words
                // and overlapping the window, through the cheaper of their spans and the most
                // selective filter's postings.
                let ranges = self.index.block_ranges(&self.tree, &source, &words, (from, to))?;
                match driving {
                    _ if ranges.is_empty() => continue,
                    Some((n, i)) if n < ranges.len() * words::BLOCK_SPANS as usize => {
                        let mut positions = self.index.positions(&self.tree, &source, &groups[i])?;
                        positions.retain(|p| in_ranges(&ranges, *p));
                        (positions, Some(i))
                    }
                    _ => (self.positions_in(&mut walk.spans, &ranges, below)?, None),
                }
            };
            // Narrowed by the other filters' postings where reading them costs less than reading
            // the spans they would rule out (a chunk read holds 384 postings; a span read, one).
            for &(n, i) in &estimates {
                if positions.is_empty() || n > positions.len().saturating_mul(INTERSECT_RATIO) {
                    break;
                }
                if Some(i) == used {
                    continue;
                }
                let mut other = self.index.positions(&self.tree, &source, &groups[i])?;
                other.sort_unstable();
                positions.retain(|p| other.binary_search(p).is_ok());
            }
            for position in positions {
                if position >= below {
                    continue;
                }
                let Some(span) = self.span_at(&mut walk.spans, position)? else { continue };
                if !self.matches_fully(&mut walk, query, position, &span)? {
                    continue;
                }
                if !visit(&mut walk, position, span)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether the span at `position` matches every filter, `text` included.
    fn matches_fully(
        &self,
        walk: &mut Walk,
        query: &TraceQuery,
        position: u64,
        span: &Span,
    ) -> Result<bool, StoreError> {
        if !query.matches(span) {
            return Ok(false);
        }
        let Some(needle) = &walk.text else { return Ok(true) };
        Ok(match walk.bodies.raw_bodies(self.segments(), position)? {
            Some((_, request, response)) => needle.found_in(&request) || needle.found_in(response),
            None => false,
        })
    }

    /// The spans at `positions` that `member` admits (a term's postings may hold another
    /// trace's or session's spans, whose hash collides), in position order, and the newest
    /// position below the walk's horizon of one that matches `query`.
    fn gather(
        &self,
        walk: &mut Walk,
        query: &TraceQuery,
        mut positions: Vec<u64>,
        member: impl Fn(&Span) -> bool,
    ) -> Result<(Vec<Span>, Option<u64>), StoreError> {
        positions.sort_unstable();
        positions.dedup();
        let (mut spans, mut newest) = (Vec::new(), None);
        for position in positions {
            let Some(span) = self.span_at(&mut walk.spans, position)? else { continue };
            if !member(&span) {
                continue;
            }
            if position < walk.horizon && self.matches_fully(walk, query, position, &span)? {
                newest = Some(position);
            }
            spans.push(span);
        }
        Ok((spans, newest))
    }

    /// One page of traces matching `query`, newest first.
    pub fn find_traces(&self, query: &TraceQuery) -> Result<TracePage, StoreError> {
        let limit = query.limit.max(1);
        let mut page: Vec<(u64, TraceSummary)> = Vec::new();
        let mut seen: HashSet<TraceId> = HashSet::new();
        let mut horizon = 0;
        self.for_each_match(query, |walk, position, span| {
            horizon = walk.horizon;
            if !seen.insert(span.trace_id) {
                return Ok(true);
            }
            let positions = self.index.trace_positions(&self.tree, &span.trace_id)?;
            let (mut spans, newest) = self.gather(walk, query, positions, |s| s.trace_id == span.trace_id)?;
            // Listed at its newest match: above the cursor, on an earlier page.
            if newest != Some(position) {
                return Ok(true);
            }
            spans.sort_by_key(|s| s.start_time_unix_nano);
            if let Some(summary) = summarize(&spans) {
                page.push((position, summary));
            }
            Ok(page.len() <= limit)
        })?;
        let next_cursor = cut(&mut page, limit, horizon);
        Ok(TracePage { traces: page.into_iter().map(|(_, s)| s).collect(), next_cursor })
    }

    /// One page of sessions with a span matching `query`, newest first; each with its totals
    /// over all of its stored spans.
    pub fn find_sessions(&self, query: &TraceQuery) -> Result<SessionPage, StoreError> {
        let limit = query.limit.max(1);
        let mut page: Vec<(u64, SessionSummary)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut horizon = 0;
        self.for_each_match(query, |walk, position, span| {
            horizon = walk.horizon;
            let Some(session) = span.session else { return Ok(true) };
            if seen.contains(&session) {
                return Ok(true);
            }
            let positions = self.index.session_positions(&self.tree, &session)?;
            let (spans, newest) = self.gather(walk, query, positions, |s| s.session.as_ref() == Some(&session))?;
            if newest == Some(position) {
                if let Some(summary) = SessionSummary::of(&session, &spans) {
                    page.push((position, summary));
                }
            }
            seen.insert(session);
            Ok(page.len() <= limit)
        })?;
        let next_cursor = cut(&mut page, limit, horizon);
        Ok(SessionPage { sessions: page.into_iter().map(|(_, s)| s).collect(), next_cursor })
    }

    /// Every position in `ranges` (newest first, as [`index::SearchIndex::block_ranges`] gives
    /// them) below `below`, newest first.
    fn positions_in(
        &self,
        cache: &mut SegmentCache,
        ranges: &[(u64, u64)],
        below: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for &(start, end) in ranges {
            let end = end.min(below);
            if start >= end {
                continue;
            }
            for seq in (index::seq_of_position(start)..=index::seq_of_position(end - 1)).rev() {
                let Some(segment) = cache.get(self.segments(), seq)? else { continue };
                let count = take_u32(segment)?.0.min(u32::from(u16::MAX)) as u16;
                let positions = (0..count).rev().map(|i| index::position(seq, i));
                out.extend(positions.filter(|p| (start..end).contains(p)));
            }
        }
        Ok(out)
    }

    /// The span at `position`, or `None` when its segment is gone (retention).
    fn span_at(&self, cache: &mut SegmentCache, position: u64) -> Result<Option<Span>, StoreError> {
        let Some(segment) = cache.get(self.segments(), index::seq_of_position(position))? else { return Ok(None) };
        match SpanSegment::new(segment)?.nth(usize::from(index::index_of_position(position))) {
            Some(span) => {
                let span = span?;
                // A deleted span (see `delete.rs`).
                if span.is_tombstone() {
                    return Ok(None);
                }
                Ok(Some(decode(span.json)?))
            }
            None => Err(StoreError::Corrupt("index points past the end of its segment".into())),
        }
    }
}

/// Whether `position` lies in one of `ranges` (disjoint, newest first).
fn in_ranges(ranges: &[(u64, u64)], position: u64) -> bool {
    let i = ranges.partition_point(|(start, _)| *start > position);
    ranges.get(i).is_some_and(|(start, end)| (*start..*end).contains(&position))
}

/// Cuts a page gathered one past `limit` back to `limit`; the cursor after it, if more follow.
fn cut<T>(page: &mut Vec<(u64, T)>, limit: usize, horizon: u64) -> Option<Cursor> {
    if page.len() <= limit {
        return None;
    }
    page.truncate(limit);
    page.last().map(|(below, _)| Cursor { below: *below, horizon })
}

/// A phrase to find in bodies: ASCII case-insensitively, as typed or as it reads inside a
/// JSON string (quotes, backslashes and control characters escaped), and as whole words: a
/// phrase that starts (ends) with a letter or digit must not start (end) inside a word, as in
/// search engines (`marmalade` finds `Marmalade,` but not `marmalades`). This is what the word
/// index can narrow; a JSON escape (`\n`) before the phrase counts as a word boundary.
struct Needle {
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// Whether the phrase starts and ends with a word byte (so the match must be bounded there).
    bounded: (bool, bool),
}

impl Needle {
    fn new(text: &str) -> Needle {
        let lower = text.to_ascii_lowercase();
        let json = serde_json::to_string(&lower).unwrap_or_default();
        let json = json.get(1..json.len().saturating_sub(1)).unwrap_or("").to_string();
        let mut finders = vec![memchr::memmem::Finder::new(lower.as_bytes()).into_owned()];
        if json != lower {
            finders.push(memchr::memmem::Finder::new(json.as_bytes()).into_owned());
        }
        let bytes = lower.as_bytes();
        let bounded = (
            bytes.first().is_some_and(|b| words::is_word_byte(*b)),
            bytes.last().is_some_and(|b| words::is_word_byte(*b)),
        );
        Needle { finders, bounded }
    }

    fn found_in(&self, body: &[u8]) -> bool {
        if body.is_empty() {
            return false;
        }
        let lower = body.to_ascii_lowercase();
        self.finders.iter().any(|finder| {
            let n = finder.needle().len();
            finder.find_iter(&lower).any(|at| {
                (!self.bounded.0 || word_starts_at(&lower, at))
                    && (!self.bounded.1 || !lower.get(at + n).is_some_and(|b| words::is_word_byte(*b)))
            })
        })
    }
}

/// Whether no word runs into `at` from before it (a JSON escape such as `\n` ends one).
fn word_starts_at(body: &[u8], at: usize) -> bool {
    let before = &body[..at];
    match before {
        [] => true,
        [.., b'\\', b'n' | b't' | b'r' | b'b' | b'f' | b'/' | b'"' | b'\\'] => true,
        [.., b'\\', b'u', a, b, c, d] if [a, b, c, d].iter().all(|h| h.is_ascii_hexdigit()) => true,
        [.., last] => !words::is_word_byte(*last),
    }
}

/// Folds a trace's spans (start-ordered) into its summary.
pub(crate) fn summarize(spans: &[Span]) -> Option<TraceSummary> {
    let (first, rest) = spans.split_first()?;
    let mut summary = TraceSummary::new(first);
    for span in rest {
        summary.add(span);
    }
    Some(summary)
}
