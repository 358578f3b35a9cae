//! Property tests of the parsers that see untrusted input: trace headers, SSE, wire-format
//! bodies, config text, the usage stripper and the body capture. Each runs proptest's default
//! 256 cases: bad input must never panic, and each parser keeps its stated invariant.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use tracegate::formats::providers::{self, Api, Operation};
use tracegate::formats::trace_context;
use tracegate::model::capture::Capture;
use tracegate::model::ids::{SpanId, TraceId};
use tracegate::proxy::usage_injection::UsageStripper;

proptest! {
    #[test]
    fn trace_headers_never_panic(traceparent in any::<Vec<u8>>(), b3 in ".{0,80}", tracestate in ".{0,300}") {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&traceparent) {
            headers.insert("traceparent", v);
        }
        if let Ok(v) = HeaderValue::from_str(&b3) {
            headers.insert("b3", v);
        }
        if let Ok(v) = HeaderValue::from_str(&tracestate) {
            headers.insert("tracestate", v);
        }
        let _ = trace_context::extract(&headers);
        let _ = trace_context::parse_traceparent(&traceparent);
    }

    #[test]
    fn traceparent_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), sampled in any::<bool>()) {
        prop_assume!(trace != [0; 16] && span != [0; 8]);
        let value = trace_context::traceparent_value(TraceId(trace), SpanId(span), sampled);
        let parsed = trace_context::parse_traceparent(value.as_bytes()).unwrap();
        prop_assert_eq!(parsed.trace_id, TraceId(trace));
        prop_assert_eq!(parsed.parent_id, SpanId(span));
        prop_assert_eq!(parsed.flags & 1 == 1, sampled);
    }

    #[test]
    fn sse_scanner_recovers_every_event(datas in proptest::collection::vec("[a-zA-Z0-9 {}:\",]{0,40}", 0..20), crlf in any::<bool>()) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let stream: String = datas.iter().map(|d| format!("data: {d}{eol}{eol}")).collect();
        let got: Vec<String> = tracegate::formats::sse::events(stream.as_bytes()).map(|e| e.data.into_owned()).collect();
        prop_assert_eq!(got, datas);
    }

    #[test]
    fn wire_format_parsers_never_panic(body in any::<Vec<u8>>(), sse in any::<bool>(), anthropic in any::<bool>()) {
        let api = if anthropic { Api::Anthropic } else { Api::Openai };
        for op in [Operation::Chat, Operation::TextCompletion, Operation::Embeddings] {
            let _ = providers::parse_request(api, &op, &body);
            let _ = providers::parse_response(api, &op, &body, sse);
        }
        let _ = tracegate::formats::tokens::estimate_input(api, &Operation::Chat, &body, tracegate::formats::tokens::Encoding::Cl100kBase);
    }

    #[test]
    fn config_parser_never_panics(text in ".{0,400}") {
        let _ = tracegate::config::Config::from_toml(&text, &|_| None);
    }

    #[test]
    fn usage_stripper_output_does_not_depend_on_chunking(
        events in proptest::collection::vec(0u8..3, 1..12),
        cuts in proptest::collection::vec(1usize..50, 1..10),
    ) {
        let stream: String = events
            .iter()
            .map(|k| match k {
                0 => "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n",
                1 => "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
                _ => ": keep-alive\n\n",
            })
            .collect();
        let whole = {
            let mut s = UsageStripper::default();
            [s.push(stream.as_bytes()), s.finish()].concat()
        };
        let mut s = UsageStripper::default();
        let mut pieces = Vec::new();
        let mut rest = stream.as_bytes();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at((*cut).min(rest.len()));
            pieces.extend_from_slice(&s.push(a));
            rest = b;
        }
        pieces.extend_from_slice(&s.finish());
        prop_assert_eq!(&pieces, &whole);
        prop_assert!(!String::from_utf8_lossy(&whole).contains("\"usage\""));
    }

    #[test]
    fn capture_keeps_the_head_and_the_tail(body in any::<Vec<u8>>(), limit in 0usize..600, cuts in proptest::collection::vec(1usize..97, 1..8)) {
        let mut capture = Capture::new(limit, None);
        let mut rest = &body[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at((*cut).min(rest.len()));
            capture.push(a, 0);
            rest = b;
        }
        let done = capture.finish();
        prop_assert_eq!(done.total_len, body.len() as u64);
        prop_assert!(done.head.len() + done.tail.len() <= limit);
        prop_assert!(body.starts_with(&done.head));
        prop_assert!(body.ends_with(&done.tail));
        if body.len() <= limit {
            prop_assert_eq!(done.joined(b""), Bytes::from(body.clone()));
        }
    }
}
