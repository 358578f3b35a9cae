//! The admin API's reads from PostgreSQL, for an instance with `[cluster] postgres`: the same
//! answers as the local store's (`store::query`, `store::reader`), over the calls of every
//! instance.
//!
//! Every "Finding calls" filter is a `WHERE` clause over indexed columns (`q` over the bodies,
//! as a case-insensitive regular expression with word boundaries where the phrase starts or
//! ends with a word character — what the local word index matches — helped by `pg_trgm`). A
//! listing is grouped by trace (or session) at its newest matching span, newest first; its
//! cursor is the local one's shape, `below` being that newest start time and `horizon` the
//! newest start time seen when the first page was read, so calls arriving between pages
//! neither repeat nor hide a listed trace. Summaries are folded from the stored spans with the
//! same code as the local store's.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{SessionSummary, Span, SpanBodies, TraceSummary};
use crate::store::ledger::{LedgerKey, LedgerRow};
use crate::store::{Cursor, SessionPage, TracePage, TraceQuery};

pub(super) type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// A read that failed: PostgreSQL unreachable or an unexpected answer.
#[derive(Debug)]
pub struct ReadError(pub String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the shared store (PostgreSQL) could not be read: {}", self.0)
    }
}

pub(super) fn err(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `s` as a PostgreSQL regular expression matching it literally.
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `q` phrase as the regular expression(s) a body must match: as typed and as it reads
/// inside a JSON string, word-bounded where it starts or ends with a letter or digit.
fn phrase_patterns(phrase: &str) -> Vec<String> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let (start, end) =
        (if word(phrase.chars().next()) { "\\m" } else { "" }, if word(phrase.chars().last()) { "\\M" } else { "" });
    let escaped = serde_json::to_string(phrase).unwrap_or_default();
    // Strip exactly one quote each side: a phrase ending in `"` ends in `\"` once escaped.
    let in_json = escaped.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(&escaped).to_string();
    let mut out = vec![format!("{start}{}{end}", regex_literal(phrase))];
    if in_json != phrase {
        out.push(format!("{start}{}{end}", regex_literal(&in_json)));
    }
    out
}

/// The `WHERE` conditions of `q`'s filters over `tracegate_spans s`, appending their values.
pub(super) fn conditions(q: &TraceQuery, params: &mut Params) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |params: &mut Params, sql: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        out.push(sql.replace('?', &format!("${}", params.len())));
    };
    for (column, value) in
        [("s.team", &q.team), ("s.\"user\"", &q.user), ("s.provider", &q.provider), ("s.session", &q.session)]
    {
        if let Some(v) = value {
            push(params, &format!("{column} = ?"), Box::new(v.clone()));
        }
    }
    if let Some(model) = &q.model {
        // The model that answered or the one asked for.
        push(params, "(s.model = ? OR s.request_model = ?)", Box::new(model.clone()));
    }
    if let Some(status) = q.status {
        let name = serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        push(params, "s.status = ?", Box::new(name));
    }
    if !q.properties.is_empty() {
        let wanted: serde_json::Map<String, serde_json::Value> =
            q.properties.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        push(params, "s.properties @> ?", Box::new(serde_json::Value::Object(wanted)));
    }
    if let Some(from) = q.from_unix_nano {
        push(params, "s.start_ns >= ?", Box::new(i64_of(from)));
    }
    if let Some(to) = q.to_unix_nano {
        push(params, "s.start_ns < ?", Box::new(i64_of(to)));
    }
    if let Some(d) = q.min_duration_ms {
        push(params, "s.duration_ms >= ?", Box::new(d));
    }
    if let Some(c) = q.min_cost_usd {
        push(params, "s.cost_usd >= ?", Box::new(c));
    }
    if let Some(text) = q.text.as_ref().filter(|t| !t.is_empty()) {
        let mut any = Vec::new();
        for pattern in phrase_patterns(text) {
            params.push(Box::new(pattern));
            let n = params.len();
            any.push(format!("b.request_body ~* ${n} OR b.response_body ~* ${n}"));
        }
        out.push(format!(
            "EXISTS (SELECT 1 FROM tracegate_bodies b WHERE b.trace_id = s.trace_id AND b.span_id = s.span_id \
             AND b.day = s.day AND ({}))",
            any.join(" OR ")
        ));
    }
    out
}

pub(super) fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
}

fn decode_span(json: &str) -> Result<Span, ReadError> {
    serde_json::from_str(json).map_err(err)
}

/// Groups (`group` a column) with a span matching `q`, newest match first, one page: each
/// group's key and newest matching start; and the horizon used.
async fn page_of_groups(pool: &Pool, q: &TraceQuery, group: &str) -> Result<(Vec<(String, i64)>, i64), ReadError> {
    let client = pool.get().await.map_err(err)?;
    let horizon = match q.cursor {
        Some(c) => i64_of(c.horizon),
        None => client
            .query_one("SELECT coalesce(max(start_ns), 0) FROM tracegate_spans", &[])
            .await
            .map_err(err)?
            .get::<_, i64>(0),
    };
    let mut params: Params = Vec::new();
    let mut wheres = conditions(q, &mut params);
    params.push(Box::new(horizon));
    wheres.push(format!("s.start_ns <= ${}", params.len()));
    if group == "session" {
        wheres.push("s.session IS NOT NULL".into());
    }
    let below = q.cursor.map_or(i64::MAX, |c| i64_of(c.below));
    params.push(Box::new(below));
    let below_n = params.len();
    params.push(Box::new(q.limit.max(1) as i64 + 1));
    let limit_n = params.len();
    let sql = format!(
        "SELECT g, newest FROM (SELECT s.{group} AS g, max(s.start_ns) AS newest FROM tracegate_spans s WHERE {} GROUP BY s.{group}) m \
         WHERE newest < ${below_n} ORDER BY newest DESC, g DESC LIMIT ${limit_n}",
        wheres.join(" AND ")
    );
    let rows = client.query(&sql, &refs(&params)).await.map_err(err)?;
    Ok((rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect(), horizon))
}

/// Every stored span of the listed groups, by group.
async fn spans_of(pool: &Pool, column: &str, keys: &[String]) -> Result<BTreeMap<String, Vec<Span>>, ReadError> {
    let client = pool.get().await.map_err(err)?;
    let sql = format!("SELECT {column}, span FROM tracegate_spans WHERE {column} = ANY($1) ORDER BY start_ns");
    let rows = client.query(&sql, &[&keys]).await.map_err(err)?;
    let mut out: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for row in rows {
        out.entry(row.get(0)).or_default().push(decode_span(&row.get::<_, String>(1))?);
    }
    Ok(out)
}

/// The page's cursor: below its last group's newest start, when more follow.
fn next_cursor(groups: &mut Vec<(String, i64)>, limit: usize, horizon: i64) -> Option<Cursor> {
    if groups.len() <= limit.max(1) {
        return None;
    }
    groups.truncate(limit.max(1));
    groups.last().map(|(_, newest)| Cursor { below: *newest as u64, horizon: horizon as u64 })
}

/// `GET /api/traces` over PostgreSQL.
pub async fn find_traces(pool: &Pool, q: &TraceQuery) -> Result<TracePage, ReadError> {
    let (mut groups, horizon) = page_of_groups(pool, q, "trace_id").await?;
    let next_cursor = next_cursor(&mut groups, q.limit, horizon);
    let keys: Vec<String> = groups.iter().map(|(k, _)| k.clone()).collect();
    let mut spans = spans_of(pool, "trace_id", &keys).await?;
    let traces = keys
        .iter()
        .filter_map(|k| spans.remove(k))
        .filter_map(|spans| crate::store::summarize(&spans))
        .collect::<Vec<TraceSummary>>();
    Ok(TracePage { traces, next_cursor })
}

/// `GET /api/sessions` over PostgreSQL.
pub async fn find_sessions(pool: &Pool, q: &TraceQuery) -> Result<SessionPage, ReadError> {
    let (mut groups, horizon) = page_of_groups(pool, q, "session").await?;
    let next_cursor = next_cursor(&mut groups, q.limit, horizon);
    let keys: Vec<String> = groups.iter().map(|(k, _)| k.clone()).collect();
    let spans = spans_of(pool, "session", &keys).await?;
    let sessions = keys.iter().filter_map(|k| spans.get(k).and_then(|s| SessionSummary::of(k, s))).collect::<Vec<_>>();
    Ok(SessionPage { sessions, next_cursor })
}

/// `GET /api/traces/{id}`: the trace's spans by start time.
pub async fn trace_spans(pool: &Pool, trace_id: &TraceId) -> Result<Vec<Span>, ReadError> {
    let client = pool.get().await.map_err(err)?;
    let rows = client
        .query("SELECT span FROM tracegate_spans WHERE trace_id = $1 ORDER BY start_ns, span_id", &[&trace_id.to_hex()])
        .await
        .map_err(err)?;
    rows.iter().map(|r| decode_span(&r.get::<_, String>(0))).collect()
}

/// `GET /api/traces/{id}/spans/{span}`: one span and its bodies.
pub async fn span(pool: &Pool, trace_id: &TraceId, span_id: &SpanId) -> Result<Option<(Span, SpanBodies)>, ReadError> {
    let client = pool.get().await.map_err(err)?;
    let row = client
        .query_opt(
            "SELECT s.span, b.request_body, b.response_body, coalesce(b.truncated, false) FROM tracegate_spans s
             LEFT JOIN tracegate_bodies b ON b.trace_id = s.trace_id AND b.span_id = s.span_id AND b.day = s.day
             WHERE s.trace_id = $1 AND s.span_id = $2 LIMIT 1",
            &[&trace_id.to_hex(), &span_id.to_hex()],
        )
        .await
        .map_err(err)?;
    let Some(row) = row else { return Ok(None) };
    let bodies = SpanBodies { request_body: row.get(1), response_body: row.get(2), truncated: row.get(3) };
    Ok(Some((decode_span(&row.get::<_, String>(0))?, bodies)))
}

/// The shared ledger's cells of days `from..=to` (days since 1970-01-01).
pub async fn ledger(pool: &Pool, from: u32, to: u32) -> Result<Vec<(LedgerKey, LedgerRow)>, ReadError> {
    let client = pool.get().await.map_err(err)?;
    let rows = client
        .query(
            "SELECT (day - date '1970-01-01')::int, team, \"user\", provider, model, requests, input_tokens,
                    output_tokens, cost_usd, errors
             FROM tracegate_ledger WHERE day BETWEEN date '1970-01-01' + $1::int AND date '1970-01-01' + $2::int",
            &[&(from.min(i32::MAX as u32) as i32), &(to.min(i32::MAX as u32) as i32)],
        )
        .await
        .map_err(err)?;
    Ok(rows
        .iter()
        .map(|r| {
            let count = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
            (
                LedgerKey {
                    day: r.get::<_, i32>(0).max(0) as u32,
                    team: r.get(1),
                    user: r.get(2),
                    provider: r.get(3),
                    model: r.get(4),
                },
                LedgerRow {
                    requests: count(5),
                    input_tokens: count(6),
                    output_tokens: count(7),
                    cost_usd: r.get(8),
                    errors: count(9),
                },
            )
        })
        .collect())
}

/// Where an export continues: below this (start, span id).
pub type ExportMark = (i64, String);

/// `GET /api/export`: one page of the spans matching `q` with their bodies, newest first,
/// below `after`; and where the next page starts (`None` after the last).
pub async fn export_page(
    pool: &Pool,
    q: &TraceQuery,
    after: Option<&ExportMark>,
    page: usize,
) -> Result<(Vec<(Span, SpanBodies)>, Option<ExportMark>), ReadError> {
    let client = pool.get().await.map_err(err)?;
    let mut params: Params = Vec::new();
    let mut wheres = conditions(q, &mut params);
    if let Some((start, id)) = after {
        params.push(Box::new(*start));
        let a = params.len();
        params.push(Box::new(id.clone()));
        let b = params.len();
        wheres.push(format!("(s.start_ns, s.span_id) < (${a}, ${b})"));
    }
    params.push(Box::new(page as i64));
    let limit = params.len();
    let where_sql = if wheres.is_empty() { "true".to_string() } else { wheres.join(" AND ") };
    let sql = format!(
        "SELECT s.span, b.request_body, b.response_body, coalesce(b.truncated, false), s.start_ns, s.span_id
         FROM tracegate_spans s
         LEFT JOIN tracegate_bodies b ON b.trace_id = s.trace_id AND b.span_id = s.span_id AND b.day = s.day
         WHERE {where_sql} ORDER BY s.start_ns DESC, s.span_id DESC LIMIT ${limit}"
    );
    let rows = client.query(&sql, &refs(&params)).await.map_err(err)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let span = decode_span(&row.get::<_, String>(0))?;
        out.push((span, SpanBodies { request_body: row.get(1), response_body: row.get(2), truncated: row.get(3) }));
    }
    let next = (rows.len() >= page).then(|| rows.last().map(|r| (r.get(4), r.get(5)))).flatten();
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_become_literal_word_bounded_patterns() {
        assert_eq!(phrase_patterns("refund"), vec!["\\mrefund\\M".to_string()]);
        assert_eq!(phrase_patterns("a.b (c)"), vec!["\\ma\\.b \\(c\\)".to_string()]);
    }

    /// A phrase ending in `"` lost its escaped quote's last character in the body pattern (CI
    /// failure of stop 25: the JSON quotes were trimmed greedily).
    #[test]
    fn a_phrase_ending_in_a_quote_keeps_it_in_the_json_pattern() {
        assert_eq!(
            phrase_patterns("say \"hi\""),
            vec!["\\msay \"hi\"".to_string(), "\\msay \\\\\"hi\\\\\"".to_string()]
        );
    }
}
