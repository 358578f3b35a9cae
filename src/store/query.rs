//! Finding traces: `/api/traces`' filters over the search index, newest first, a page at a
//! time, however old the matches are.
//!
//! A trace is listed when one of its spans matches every filter (span-level AND). It is listed
//! once, at the position of its newest matching span; pages are cut by position, so a cursor
//! (the last listed position) continues strictly below it: no trace twice, none skipped, and
//! calls arriving meanwhile land above the cursor (seen by starting again from the top).
//!
//! Per index source (the memtable, then each run, newest first; runs outside `from`/`to` are
//! skipped by their time range) the query walks the postings of its most selective filter and
//! checks every other filter on the span itself, so a hash collision or a filter without an
//! index (`from`, `to`, exact duration and cost) never gives a wrong answer.

use std::collections::HashSet;

use crate::model::ids::TraceId;
use crate::model::span::{Span, SpanStatus, TraceSummary};
use crate::store::index;
use crate::store::index::terms::{self, Field};
use crate::store::layout::{decode, SpanSegment};
use crate::store::reader::SegmentCache;
use crate::store::{Store, StoreError};

/// The filters of a trace listing; every one optional, all combined with AND.
#[derive(Debug, Default, Clone, PartialEq)]
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
    /// Continue below this position (the previous page's `next_cursor`).
    pub cursor: Option<u64>,
    pub limit: usize,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct TracePage {
    pub traces: Vec<TraceSummary>,
    /// Where the next page starts; `None` when this page holds the last match.
    pub next_cursor: Option<u64>,
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

    /// Whether `span` matches every filter (the cursor aside).
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

impl Store {
    /// One page of traces matching `query`, newest first.
    pub fn find_traces(&self, query: &TraceQuery) -> Result<TracePage, StoreError> {
        let limit = query.limit.max(1);
        let groups = query.term_groups();
        let everything: Vec<u64> = ALL_STATUSES.iter().map(|s| terms::status_term(*s)).collect();
        let (from, to) = (query.from_unix_nano.unwrap_or(0), query.to_unix_nano.unwrap_or(u64::MAX));
        let mut page: Vec<(u64, TraceSummary)> = Vec::new();
        let mut seen: HashSet<TraceId> = HashSet::new();
        let mut cache = SegmentCache::default();
        'sources: for source in self.index.sources() {
            if !source.overlaps(from, to) || query.cursor.is_some_and(|c| source.first_position() >= c) {
                continue;
            }
            let driving = match groups.iter().min_by_key(|g| self.index.estimate(&source, g)) {
                Some(group) => group.as_slice(),
                None => everything.as_slice(),
            };
            for position in self.index.positions(&self.tree, &source, driving)? {
                if query.cursor.is_some_and(|c| position >= c) {
                    continue;
                }
                let Some(span) = self.span_at(&mut cache, position)? else { continue };
                if !query.matches(&span) || !seen.insert(span.trace_id) {
                    continue;
                }
                let mut spans = Vec::new();
                let mut newest_match = position;
                self.for_each_span(&span.trace_id, &mut cache, |s, seq, i| {
                    let s: Span = decode(s.json)?;
                    if query.matches(&s) {
                        newest_match = newest_match.max(index::position(seq, i as u16));
                    }
                    spans.push(s);
                    Ok(true)
                })?;
                // Listed at its newest match: above the cursor, on an earlier page.
                if newest_match != position {
                    continue;
                }
                spans.sort_by_key(|s| s.start_time_unix_nano);
                let Some(summary) = summarize(&spans) else { continue };
                page.push((position, summary));
                if page.len() > limit {
                    break 'sources;
                }
            }
        }
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|(p, _)| *p)
        } else {
            None
        };
        Ok(TracePage { traces: page.into_iter().map(|(_, s)| s).collect(), next_cursor })
    }

    /// The span at `position`, or `None` when its segment is gone (retention).
    fn span_at(&self, cache: &mut SegmentCache, position: u64) -> Result<Option<Span>, StoreError> {
        let Some(segment) = cache.get(&self.tree, index::seq_of_position(position))? else { return Ok(None) };
        match SpanSegment::new(segment)?.nth(usize::from(index::index_of_position(position))) {
            Some(span) => Ok(Some(decode(span?.json)?)),
            None => Err(StoreError::Corrupt("index points past the end of its segment".into())),
        }
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
