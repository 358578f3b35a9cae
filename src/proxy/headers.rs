//! Header hygiene on the request path: what is removed before a request goes upstream (hop-by-hop
//! headers, `host`, the caller's trace headers, every `x-tracegate-*` header), what tracegate
//! adds to a response (the call's ids, a limited team's rate-limit headers), and the few facts
//! the phases read from headers without parsing a body. The names of tracegate's own headers
//! live in `formats::headers`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::formats::headers as tracegate;
use crate::model::ids::{SpanId, TraceId};
use crate::policy::budget::Remaining;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, `host`, the caller's trace headers (replaced by ours) and every
/// `x-tracegate-*` header, returning the latter for the recorder.
pub fn strip_request_headers(headers: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    headers.remove(B3);
    let mut removed = Vec::new();
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            n.starts_with(tracegate::PREFIX) || n.starts_with("x-b3-")
        })
        .cloned()
        .collect();
    for name in ours {
        let is_b3 = name.as_str().starts_with("x-b3-");
        // `remove` drops extra values of a repeated header; keep the first like every reader here.
        if let Some(value) = headers.remove(&name) {
            if !is_b3 {
                removed.push((name, value));
            }
        }
    }
    removed
}

/// Like [`strip_request_headers`], but the caller's trace headers stay as they came (a route
/// that records no span has no span of its own to propagate).
pub fn strip_request_headers_keeping_trace(headers: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let is_trace = |n: &HeaderName| n == TRACEPARENT || n == TRACESTATE || n == B3 || n.as_str().starts_with("x-b3-");
    let trace: Vec<(HeaderName, HeaderValue)> =
        headers.iter().filter(|(n, _)| is_trace(n)).map(|(n, v)| (n.clone(), v.clone())).collect();
    let removed = strip_request_headers(headers);
    for (name, value) in trace {
        headers.append(name, value);
    }
    removed
}

/// Removes the hop-by-hop headers and any header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // `keep-alive` and `close`, by far the commonest, are options rather than header names
        // to drop (`keep-alive` goes with the fixed list below), so they cost no allocation.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|line| line.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|name| !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close"))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Most messages carry none of these: one pass over the names instead of a lookup each.
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// `x-tracegate-trace-id` and `x-tracegate-span-id`, written without allocating.
pub fn insert_ids(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId) {
    let mut trace_hex = [0u8; 32];
    trace_id.write_hex(&mut trace_hex);
    let mut span_hex = [0u8; 16];
    span_id.write_hex(&mut span_hex);
    headers.insert(tracegate::TRACE_ID, HeaderValue::from_bytes(&trace_hex).expect("hex is a valid header value"));
    headers.insert(tracegate::SPAN_ID, HeaderValue::from_bytes(&span_hex).expect("hex is a valid header value"));
}

/// `{prefix}limit-requests`, `remaining-requests`, `limit-tokens`, `remaining-tokens`,
/// `reset-requests`, `reset-tokens`, and (tracegate's own) `x-tracegate-budget-remaining-usd`.
pub fn limit_headers(headers: &mut HeaderMap, left: &Remaining, prefix: &str) {
    let mut set = |name: &str, value: String| {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(format!("{prefix}{name}").as_bytes()), HeaderValue::from_str(&value))
        {
            headers.insert(name, value);
        }
    };
    if let Some((limit, remaining)) = left.requests {
        set("limit-requests", limit.to_string());
        set("remaining-requests", remaining.to_string());
        set("reset-requests", format!("{}s", left.window_reset_secs));
    }
    if let Some((limit, remaining)) = left.tokens {
        set("limit-tokens", limit.to_string());
        set("remaining-tokens", remaining.to_string());
        set("reset-tokens", format!("{}s", left.window_reset_secs));
    }
    if let Some(budget) = left.budget_usd {
        if let Ok(value) = HeaderValue::from_str(&format!("{budget:.6}")) {
            headers.insert(tracegate::BUDGET_REMAINING_USD, value);
        }
    }
}

/// Size of a header section as the limit counts it: names and values, plus ": " and CRLF each.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Bedrock InvokeModel's `x-amzn-bedrock-input-token-count` and `-output-token-count`.
pub fn bedrock_token_counts(headers: &HeaderMap) -> Option<(u64, u64)> {
    let count = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    Some((count("x-amzn-bedrock-input-token-count")?, count("x-amzn-bedrock-output-token-count")?))
}

/// True when the content type is `text/event-stream` (any parameters, any case).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let ct = ct.trim_start().as_bytes();
        ct.get(..17).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_hygiene() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.append("connection", HeaderValue::from_static("x-other-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-other-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("host", HeaderValue::from_static("evil.example"));
        h.insert("x-tracegate-team", HeaderValue::from_static("search"));
        h.insert("x-tracegate-property-env", HeaderValue::from_static("prod"));
        h.insert("x-b3-traceid", HeaderValue::from_static("abc"));
        h.insert("authorization", HeaderValue::from_static("Bearer sk"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let removed = strip_request_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["authorization", "content-type"]);
        assert_eq!(removed.len(), 2);
    }

    #[test]
    fn event_streams_are_recognised_by_content_type() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(" Text/Event-Stream; charset=utf-8"));
        assert!(is_event_stream(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_event_stream(&h));
    }
}
