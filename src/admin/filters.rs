//! The filters of "Finding calls" (SPEC) as query parameters, shared by `/api/traces`,
//! `/api/sessions`, `/api/export` and `DELETE /api/spans`: one parser, one set of names and
//! error messages, so every endpoint filters the same way.

use crate::model::span::SpanStatus;
use crate::store::{Cursor, TraceQuery};

/// Default and maximum `limit` of a listing.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// The filter parameters every finding endpoint takes.
pub const FILTERS: &[&str] = &[
    "team",
    "user",
    "model",
    "provider",
    "status",
    "session",
    "property.<name>",
    "from",
    "to",
    "q",
    "min_duration_ms",
    "min_cost_usd",
];

/// A listing's paging parameters.
pub const PAGING: &[&str] = &["limit", "cursor"];

/// Parses `pairs` into a query. Parameters named in `extra` are handed back for the endpoint
/// to read; `limit` and `cursor` are read when `paging` is set. Anything else is an error
/// naming what the endpoint accepts: a filter that silently matched everything would answer a
/// question nobody asked.
pub fn parse(
    pairs: Vec<(String, String)>,
    endpoint: &str,
    paging: bool,
    extra: &[&str],
) -> Result<(TraceQuery, Vec<(String, String)>), String> {
    let mut q = TraceQuery { limit: DEFAULT_LIMIT, ..TraceQuery::default() };
    let mut extras = Vec::new();
    for (key, value) in pairs {
        if extra.contains(&key.as_str()) {
            extras.push((key, value));
            continue;
        }
        // An empty filter filters nothing.
        if value.is_empty() && (FILTERS.contains(&key.as_str()) || key.starts_with("property.") || key == "cursor") {
            continue;
        }
        let text = |field: &mut Option<String>| *field = Some(value.clone());
        match key.as_str() {
            "limit" if paging => match value.parse::<usize>() {
                Ok(n) if n > 0 => q.limit = n.min(MAX_LIMIT),
                _ => return Err(format!("limit must be a positive integer (at most {MAX_LIMIT})")),
            },
            "cursor" if paging => match Cursor::parse(&value) {
                Some(c) => q.cursor = Some(c),
                None => return Err("cursor must be a next_cursor this API returned".into()),
            },
            "team" => text(&mut q.team),
            "user" => text(&mut q.user),
            "model" => text(&mut q.model),
            "provider" => text(&mut q.provider),
            "session" => text(&mut q.session),
            "q" => text(&mut q.text),
            "status" => {
                q.status = Some(match value.as_str() {
                    "ok" => SpanStatus::Ok,
                    "error" => SpanStatus::Error,
                    "cancelled" => SpanStatus::Cancelled,
                    _ => return Err("status must be ok, error or cancelled".into()),
                })
            }
            "from" | "to" => match crate::model::clock::parse_time(&value) {
                Some(t) if key == "from" => q.from_unix_nano = Some(t),
                Some(t) => q.to_unix_nano = Some(t),
                None => {
                    return Err(format!(
                        "{key} must be an RFC 3339 time (2026-12-05T10:00:00Z), a day, or unix milliseconds"
                    ))
                }
            },
            "min_duration_ms" | "min_cost_usd" => match value.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 && key == "min_duration_ms" => q.min_duration_ms = Some(n),
                Ok(n) if n.is_finite() && n >= 0.0 => q.min_cost_usd = Some(n),
                _ => return Err(format!("{key} must be a non-negative number")),
            },
            name if name.starts_with("property.") && name.len() > "property.".len() => {
                q.properties.push((name["property.".len()..].to_string(), value));
            }
            other => {
                let mut accepted: Vec<&str> = FILTERS.to_vec();
                if paging {
                    accepted.extend(PAGING);
                }
                accepted.extend(extra);
                return Err(format!("{endpoint} has no parameter {other:?}; it accepts {}", accepted.join(", ")));
            }
        }
    }
    Ok((q, extras))
}

/// Whether the query filters anything at all (deletes refuse a query that does not).
pub fn filters_anything(q: &TraceQuery) -> bool {
    let unfiltered = TraceQuery { limit: q.limit, cursor: q.cursor, ..TraceQuery::default() };
    *q != unfiltered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_filter_and_the_cursor_parse() {
        let (q, extras) = parse(
            pairs(&[
                ("team", "a"),
                ("q", "Hello World"),
                ("property.env", "prod"),
                ("status", "error"),
                ("from", "1700000000000"),
                ("limit", "5000"),
                ("cursor", "ff-100"),
                ("dry_run", "true"),
            ]),
            "/api/x",
            true,
            &["dry_run"],
        )
        .unwrap();
        assert_eq!(q.team.as_deref(), Some("a"));
        assert_eq!(q.text.as_deref(), Some("Hello World"));
        assert_eq!(q.properties, vec![("env".to_string(), "prod".to_string())]);
        assert_eq!(q.from_unix_nano, Some(1_700_000_000_000_000_000));
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.cursor, Some(Cursor { below: 0xff, horizon: 0x100 }));
        assert_eq!(extras, pairs(&[("dry_run", "true")]));
        assert!(filters_anything(&q));
    }

    #[test]
    fn unknown_parameters_and_paging_outside_listings_are_refused() {
        let err = parse(pairs(&[("teem", "a")]), "/api/traces", true, &[]).unwrap_err();
        assert!(err.contains("\"teem\"") && err.contains("cursor"), "{err}");
        let err = parse(pairs(&[("limit", "5")]), "/api/spans", false, &["dry_run"]).unwrap_err();
        assert!(err.contains("dry_run") && !err.contains("cursor"), "{err}");
        let (q, _) = parse(pairs(&[("team", ""), ("cursor", "")]), "/api/traces", true, &[]).unwrap();
        assert!(!filters_anything(&q));
    }
}
