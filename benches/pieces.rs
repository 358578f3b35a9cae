//! Request/recording hot pieces, each beside a naive baseline written here that computes the
//! same result (checked with `assert_eq!` once before timing):
//!
//! 1. trace headers: `parse_traceparent`, `parse_b3_single`, `extract` (W3C traceparent +
//!    tracestate, and single-header B3) and `traceparent_value`, against `String` splitting,
//!    `from_str_radix` and `format!` + `HeaderValue::from_str`;
//! 2. SSE scan: `sse::events` over a ~60-event OpenAI `chat.completion.chunk` stream, against
//!    `String::from_utf8` + `split("\n\n")` + lines collected into `Vec<String>`;
//! 3. usage extraction: `providers::parse_response` of a JSON chat completion and of that
//!    stream, against a full `serde_json::Value` parse (of the body or of every data line)
//!    and pointer lookups;
//! 4. span encoding: `serde_json::to_vec(&span)` as the store writes it, against
//!    `serde_json::to_value` then `to_string_pretty`;
//! 5. request facts of a 12 KB agent step (system prompt, tools, tool-call rounds; the model
//!    after the messages, as the OpenAI SDK sends it): `providers::parse_request`, which skims
//!    (`formats::json_skim`), against a full `serde_json::Value` parse.
//!
//! Run: `cargo bench --bench pieces` (about a minute; 2 s of measurement per function).

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::Duration;

#[path = "common/agent_step.rs"]
mod agent_step;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tracegate::formats::providers::{
    parse_request, parse_response, Api, Operation, RequestFacts, ResponseFacts, Usage,
};
use tracegate::formats::sse;
use tracegate::formats::trace_context::{
    extract, parse_b3_single, parse_traceparent, traceparent_value, B3Sampling, B3Single, CallerContext, Propagation,
    Traceparent,
};
use tracegate::model::ids::{SpanId, TraceId};
use tracegate::model::span::{Span, SpanKind, SpanStatus, UsageSource};

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
const B3_SINGLE: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";

const MODEL: &str = "gpt-4o-mini-2024-07-18";
const ANSWER: &str = "Distributed tracing follows one request through every service it touches, recording \
how long each step took and how the steps nest. For calls to a language model that means latency, time to \
first token, input and output tokens and cost for every call, grouped under the trace the application already \
propagates, so a slow or expensive answer can be traced back to the user action that asked for it and to the \
prompt that was sent.";
/// Content chunks in the stream; with the role, finish, usage and `[DONE]` events, 60 events.
const CONTENT_CHUNKS: usize = 56;

/// The headers an OpenAI SDK sends, plus the given trace headers.
fn request_headers(trace_headers: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in [
        ("host", "localhost:4000"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.4"),
        ("authorization", "Bearer sk-proj-bench0000000000000000000000000000"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.4"),
        ("x-stainless-runtime", "CPython"),
        ("content-length", "231"),
    ]
    .into_iter()
    .chain(trace_headers.iter().copied())
    {
        map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    map
}

/// A non-streamed chat completion as OpenAI returns it.
fn chat_completion_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "chatcmpl-AXbench0001",
        "object": "chat.completion",
        "created": 1732406400,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 412,
            "completion_tokens": 78,
            "total_tokens": 490,
            "prompt_tokens_details": {"cached_tokens": 128, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_0705bf87c0"
    }))
    .unwrap()
}

/// The words the stream's content chunks carry, each with its trailing space.
fn stream_pieces() -> Vec<&'static str> {
    let pieces: Vec<&str> = ANSWER.split_inclusive(' ').take(CONTENT_CHUNKS).collect();
    assert_eq!(pieces.len(), CONTENT_CHUNKS, "ANSWER has too few words");
    pieces
}

/// A streamed chat completion with `stream_options.include_usage`: role chunk, one chunk
/// per word, finish chunk, usage chunk and `[DONE]` (60 events).
fn chat_completion_stream() -> Vec<u8> {
    let chunk = |choices: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-AXbench0001\",\"object\":\"chat.completion.chunk\",\"created\":1732406400,\
             \"model\":\"{MODEL}\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0705bf87c0\",\
             \"choices\":[{choices}],\"usage\":{usage}}}\n\n"
        )
    };
    let choice = |delta: &str, finish: &str| {
        format!("{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}")
    };
    let mut out = chunk(&choice(r#"{"role":"assistant","content":"","refusal":null}"#, "null"), "null");
    for piece in stream_pieces() {
        let delta = format!("{{\"content\":{}}}", serde_json::to_string(piece).unwrap());
        out.push_str(&chunk(&choice(&delta, "null"), "null"));
    }
    out.push_str(&chunk(&choice("{}", "\"stop\""), "null"));
    out.push_str(&chunk(
        "",
        r#"{"prompt_tokens":412,"completion_tokens":56,"total_tokens":468,"prompt_tokens_details":{"cached_tokens":128,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A finished streamed call as the recorder stores it.
fn recorded_span() -> Span {
    Span {
        trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        span_id: SpanId::from_hex("53995c3f42cd8ad8").unwrap(),
        parent_span_id: SpanId::from_hex("00f067aa0ba902b7"),
        name: "chat gpt-4o-mini".into(),
        kind: SpanKind::Llm,
        span_kind: None,
        start_time_unix_nano: 1_732_406_400_123_456_789,
        duration_ms: 1843.217,
        ttft_ms: Some(212.904),
        provider: Some("openai".into()),
        operation: Some("chat".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        status_code: Some(200),
        status: SpanStatus::Ok,
        request_model: Some("gpt-4o-mini".into()),
        response_model: Some(MODEL.into()),
        stream: true,
        input_tokens: Some(412),
        output_tokens: Some(56),
        usage_source: UsageSource::Reported,
        cache_read_input_tokens: Some(128),
        cache_creation_input_tokens: None,
        reasoning_tokens: Some(0),
        finish_reason: Some("stop".into()),
        cost_usd: Some(0.0000954),
        team: Some("search".into()),
        user: Some("alice@example.com".into()),
        key_fingerprint: Some("sha256:3f9a0c41d2e7".into()),
        session: None,
        properties: BTreeMap::from([
            ("feature".to_owned(), "answer-summary".to_owned()),
            ("env".to_owned(), "staging".to_owned()),
        ]),
        error: None,
        events: Vec::new(),
        instance: None,
    }
}

// ---------------------------------------------------------------------------
// Naive baselines
// ---------------------------------------------------------------------------

/// Lowercase hex of exactly `len` digits.
fn naive_is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// `traceparent` by splitting into `String`s and `from_str_radix` (version 00 only).
fn naive_parse_traceparent(value: &[u8]) -> Option<Traceparent> {
    let text = String::from_utf8(value.to_vec()).ok()?;
    let parts: Vec<String> = text.trim().split('-').map(String::from).collect();
    if parts.len() != 4 {
        return None;
    }
    let lengths = [2, 32, 16, 2];
    if !parts.iter().zip(lengths).all(|(part, len)| naive_is_lower_hex(part, len)) {
        return None;
    }
    let version = u8::from_str_radix(&parts[0], 16).ok()?;
    let trace_id = u128::from_str_radix(&parts[1], 16).ok()?;
    let parent_id = u64::from_str_radix(&parts[2], 16).ok()?;
    let flags = u8::from_str_radix(&parts[3], 16).ok()?;
    if version != 0 || trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(Traceparent {
        version,
        trace_id: TraceId(trace_id.to_be_bytes()),
        parent_id: SpanId(parent_id.to_be_bytes()),
        flags,
    })
}

/// Single-header `b3` by splitting into `String`s and `from_str_radix`.
fn naive_parse_b3_single(value: &[u8]) -> Option<B3Single> {
    let text = String::from_utf8(value.to_vec()).ok()?;
    let parts: Vec<String> = text.trim().split('-').map(String::from).collect();
    if !(2..=4).contains(&parts.len()) {
        return None;
    }
    let trace_hex = &parts[0];
    if !(naive_is_lower_hex(trace_hex, 16) || naive_is_lower_hex(trace_hex, 32)) {
        return None;
    }
    let span_id = |hex: &str| {
        let id = u64::from_str_radix(hex, 16).ok().filter(|&id| naive_is_lower_hex(hex, 16) && id != 0)?;
        Some(SpanId(id.to_be_bytes()))
    };
    let trace_id = u128::from_str_radix(trace_hex, 16).ok().filter(|&id| id != 0)?;
    let sampling = match parts.get(2).map(String::as_str) {
        None => None,
        Some("0") => Some(B3Sampling::Deny),
        Some("1") => Some(B3Sampling::Accept),
        Some("d") => Some(B3Sampling::Debug),
        Some(_) => return None,
    };
    let parent_span_id = match parts.get(3) {
        None => None,
        Some(hex) => Some(span_id(hex)?),
    };
    Some(B3Single { trace_id: TraceId(trace_id.to_be_bytes()), span_id: span_id(&parts[1])?, sampling, parent_span_id })
}

/// `tracestate`: every line as a `String`, members split out, validated with a `HashSet` of
/// keys, then the trimmed lines joined with `,`.
fn naive_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let lines: Vec<String> = headers
        .get_all("tracestate")
        .iter()
        .map(|v| v.to_str().map(|s| s.trim().to_string()))
        .collect::<Result<_, _>>()
        .ok()?;
    let members: Vec<String> =
        lines.iter().flat_map(|l| l.split(',')).map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
    let mut keys = HashSet::new();
    for member in &members {
        let (key, value) = member.split_once('=')?;
        let key_ok = key.len() <= 256
            && key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*/@".contains(c));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && !value.ends_with(' ')
            && value.chars().all(|c| (' '..='~').contains(&c) && c != ',' && c != '=');
        if !key_ok || !value_ok || !keys.insert(key.to_string()) {
            return None;
        }
    }
    if keys.is_empty() || keys.len() > 32 {
        return None;
    }
    let joined = lines.into_iter().filter(|l| !l.is_empty()).collect::<Vec<_>>().join(",");
    HeaderValue::from_str(&joined).ok()
}

/// `extract` for W3C and single-header B3 (the conventions benchmarked here).
fn naive_extract(headers: &HeaderMap) -> Option<CallerContext> {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
    if let Some(parent) = header_text("traceparent").and_then(|tp| naive_parse_traceparent(tp.as_bytes())) {
        return Some(CallerContext {
            trace_id: parent.trace_id,
            parent_span_id: Some(parent.parent_id),
            sampled: parent.flags & 1 == 1,
            random: parent.flags & 2 == 2,
            tracestate: naive_tracestate(headers),
            propagation: Propagation::W3c,
        });
    }
    let b3 = naive_parse_b3_single(header_text("b3")?.as_bytes())?;
    Some(CallerContext {
        trace_id: b3.trace_id,
        parent_span_id: Some(b3.span_id),
        sampled: b3.sampling != Some(B3Sampling::Deny),
        random: false,
        tracestate: None,
        propagation: Propagation::B3Single,
    })
}

/// `traceparent` via `format!` and `HeaderValue::from_str`.
fn naive_traceparent_value(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let value = format!(
        "00-{:032x}-{:016x}-{}",
        u128::from_be_bytes(trace_id.0),
        u64::from_be_bytes(span_id.0),
        if sampled { "01" } else { "00" }
    );
    HeaderValue::from_str(&value).unwrap()
}

/// One event as the naive scanner returns it.
#[derive(Debug, PartialEq)]
struct NaiveEvent {
    event: Option<String>,
    data: String,
    end_offset: usize,
}

/// SSE by `String::from_utf8` + `split("\n\n")`, each block's lines collected into a
/// `Vec<String>` (`\n` line endings only).
fn naive_sse_events(buf: &[u8]) -> Vec<NaiveEvent> {
    let Ok(text) = String::from_utf8(buf.to_vec()) else {
        return Vec::new();
    };
    let blocks: Vec<&str> = text.split("\n\n").collect();
    let complete = blocks.len() - 1; // the last block is not terminated by a blank line
    let mut events = Vec::new();
    let mut end_offset = 0;
    for block in &blocks[..complete] {
        end_offset += block.len() + 2;
        let lines: Vec<String> = block.split('\n').map(String::from).collect();
        let mut event = None;
        let mut data: Vec<String> = Vec::new();
        for line in &lines {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "data" => data.push(value),
                "event" => event = Some(value).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        if !data.is_empty() {
            events.push(NaiveEvent { event, data: data.join("\n"), end_offset });
        }
    }
    events
}

fn naive_str(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from)
}

/// OpenAI usage by pointer lookups; `None` when it is absent or null.
fn naive_usage(value: &Value) -> Option<Usage> {
    let usage = value.pointer("/usage").filter(|u| u.is_object())?;
    let count = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64);
    Some(Usage {
        input_tokens: count("/prompt_tokens")?,
        output_tokens: count("/completion_tokens")?,
        cache_read_input_tokens: count("/prompt_tokens_details/cached_tokens"),
        cache_creation_input_tokens: None,
        reasoning_tokens: count("/completion_tokens_details/reasoning_tokens"),
    })
}

/// A chat completion body parsed whole into a `Value`, then read by pointers.
fn naive_parse_chat_body(body: &[u8]) -> ResponseFacts {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ResponseFacts {
        model: naive_str(&value, "/model"),
        finish_reason: naive_str(&value, "/choices/0/finish_reason"),
        usage: naive_usage(&value),
        first_content_end: None,
        output_text: naive_str(&value, "/choices/0/message/content").unwrap_or_default(),
        error: None,
    }
}

/// A chat completion stream: the naive SSE scan, then every data line parsed whole into a
/// `Value` and read by pointers.
fn naive_parse_chat_stream(body: &[u8]) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    for event in naive_sse_events(body) {
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            continue; // `[DONE]`
        };
        if let Some(model) = naive_str(&value, "/model") {
            facts.model = Some(model);
        }
        if let Some(finish) = naive_str(&value, "/choices/0/finish_reason") {
            facts.finish_reason = Some(finish);
        }
        if let Some(usage) = naive_usage(&value) {
            facts.usage = Some(usage);
        }
        if let Some(content) = naive_str(&value, "/choices/0/delta/content") {
            facts.output_text.push_str(&content);
            facts.first_content_end.get_or_insert(event.end_offset);
        }
    }
    facts
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

fn trace_headers(c: &mut Criterion) {
    let traceparent = TRACEPARENT.as_bytes();
    assert_eq!(naive_parse_traceparent(traceparent), Some(parse_traceparent(traceparent).unwrap()));
    let mut group = c.benchmark_group("traceparent parse");
    group.bench_function("tracegate", |b| b.iter(|| parse_traceparent(black_box(traceparent))));
    group.bench_function("naive", |b| b.iter(|| naive_parse_traceparent(black_box(traceparent))));
    group.finish();

    let b3 = B3_SINGLE.as_bytes();
    assert_eq!(naive_parse_b3_single(b3), Some(parse_b3_single(b3).unwrap()));
    let mut group = c.benchmark_group("b3 single parse");
    group.bench_function("tracegate", |b| b.iter(|| parse_b3_single(black_box(b3))));
    group.bench_function("naive", |b| b.iter(|| naive_parse_b3_single(black_box(b3))));
    group.finish();

    for (name, headers) in [
        ("extract w3c+tracestate", request_headers(&[("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)])),
        ("extract b3 single", request_headers(&[("b3", B3_SINGLE)])),
    ] {
        let expected = extract(&headers).unwrap();
        assert_eq!(naive_extract(&headers).as_ref(), Some(&expected));
        let mut group = c.benchmark_group(name);
        group.bench_function("tracegate", |b| b.iter(|| extract(black_box(&headers))));
        group.bench_function("naive", |b| b.iter(|| naive_extract(black_box(&headers))));
        group.finish();
    }

    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    for sampled in [true, false] {
        assert_eq!(naive_traceparent_value(trace_id, span_id, sampled), traceparent_value(trace_id, span_id, sampled));
    }
    assert_eq!(traceparent_value(trace_id, span_id, true), TRACEPARENT);
    let mut group = c.benchmark_group("traceparent format");
    group.bench_function("tracegate", |b| {
        b.iter(|| traceparent_value(black_box(trace_id), black_box(span_id), black_box(true)))
    });
    group.bench_function("naive", |b| {
        b.iter(|| naive_traceparent_value(black_box(trace_id), black_box(span_id), black_box(true)))
    });
    group.finish();
}

fn sse_scan(c: &mut Criterion) {
    let stream = chat_completion_stream();
    let ours: Vec<NaiveEvent> = sse::events(&stream)
        .map(|e| NaiveEvent { event: e.event.map(String::from), data: e.data.into_owned(), end_offset: e.end_offset })
        .collect();
    assert_eq!(ours.len(), 60);
    assert_eq!(naive_sse_events(&stream), ours);

    let mut group = c.benchmark_group("sse scan (60 events)");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("tracegate", |b| b.iter(|| sse::events(black_box(&stream)).collect::<Vec<_>>()));
    group.bench_function("naive", |b| b.iter(|| naive_sse_events(black_box(&stream))));
    group.finish();
}

/// A usage-extraction case: name, input, whether it is SSE, and the naive extractor.
type UsageCase<'a> = (&'a str, &'a [u8], bool, fn(&[u8]) -> ResponseFacts);

fn usage_extraction(c: &mut Criterion) {
    let body = chat_completion_body();
    let stream = chat_completion_stream();
    let cases: [UsageCase; 2] = [
        ("parse_response json", &body, false, naive_parse_chat_body),
        ("parse_response sse (60 events)", &stream, true, naive_parse_chat_stream),
    ];
    for (name, input, is_sse, naive) in cases {
        let ours = parse_response(Api::Openai, &Operation::Chat, input, is_sse);
        assert!(ours.usage.is_some() && ours.model.is_some() && !ours.output_text.is_empty());
        assert_eq!(naive(input), ours);

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function("tracegate", |b| {
            b.iter(|| parse_response(Api::Openai, &Operation::Chat, black_box(input), is_sse))
        });
        group.bench_function("naive", |b| b.iter(|| naive(black_box(input))));
        group.finish();
    }
}

fn naive_parse_request(body: &[u8]) -> RequestFacts {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return RequestFacts::default() };
    RequestFacts {
        model: v["model"].as_str().map(str::to_owned),
        stream: v["stream"].as_bool().unwrap_or(false),
        include_usage: v["stream_options"]["include_usage"].as_bool().unwrap_or(false),
        max_tokens: ["max_tokens", "max_completion_tokens", "max_output_tokens"].iter().find_map(|k| v[k].as_u64()),
        names_credential: Some(false),
    }
}

fn request_facts(c: &mut Criterion) {
    let body = agent_step::body(MODEL);
    let ours = parse_request(Api::Openai, &Operation::Chat, &body);
    assert!(ours.model.is_some() && ours.stream && ours.include_usage);
    assert_eq!(naive_parse_request(&body), ours);

    let mut group = c.benchmark_group(format!("parse_request agent step ({} bytes)", body.len()));
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("tracegate", |b| b.iter(|| parse_request(Api::Openai, &Operation::Chat, black_box(&body))));
    group.bench_function("naive", |b| b.iter(|| naive_parse_request(black_box(&body))));
    group.finish();
}

fn span_encoding(c: &mut Criterion) {
    let span = recorded_span();
    let compact = serde_json::to_vec(&span).unwrap();
    let pretty = serde_json::to_string_pretty(&serde_json::to_value(&span).unwrap()).unwrap();
    // Same JSON document; and the stored form reads back as the span.
    assert_eq!(serde_json::from_slice::<Value>(&compact).unwrap(), serde_json::from_str::<Value>(&pretty).unwrap());
    assert_eq!(serde_json::from_slice::<Span>(&compact).unwrap().span_id, span.span_id);

    let mut group = c.benchmark_group("span encode");
    group.bench_function("tracegate", |b| b.iter(|| serde_json::to_vec(black_box(&span)).unwrap()));
    group.bench_function("naive", |b| {
        b.iter(|| serde_json::to_string_pretty(&serde_json::to_value(black_box(&span)).unwrap()).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = pieces;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = trace_headers, sse_scan, usage_extraction, request_facts, span_encoding
}
criterion_main!(pieces);
