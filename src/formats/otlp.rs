//! OpenTelemetry mapping, both ways, with the `opentelemetry-proto` crate's types.
//!
//! Out: a proxied call becomes a CLIENT span named `{operation} {model}` with the GenAI
//! semantic-convention attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.*`,
//! `gen_ai.response.finish_reasons`, `gen_ai.response.time_to_first_chunk`), `server.address`,
//! `error.type`, and tracegate's own `tracegate.*` (cost, team, user, session, usage source).
//! In: spans an application exports to `POST /v1/traces` become `kind = "app"` spans, so they
//! join the same trace tree as the proxied calls. What they carry is kept:
//! - OpenTelemetry's SpanKind in `span_kind` (`internal`, `server`, `client`, `producer`,
//!   `consumer`; null when unspecified), since SPEC fixes `kind`;
//! - every attribute as a text property: strings as they are, other scalars as they print,
//!   arrays and maps as JSON text (`["stop","a,b"]`), so no two values read the same;
//! - a GenAI span's semantic-convention attributes (`gen_ai.usage.*` with the older
//!   `prompt_tokens`/`completion_tokens`, `gen_ai.request.model`, `gen_ai.response.model`,
//!   `gen_ai.operation.name`, `gen_ai.provider.name` or the older `gen_ai.system`) also in the
//!   span's token, model, operation and provider fields, `usage_source = reported`. They are
//!   never priced and never reach the usage ledger or a trace's token totals: such a span may
//!   describe the very call that also went through the proxy, and would count it twice;
//! - span events in `events`, bounded ([`MAX_EVENTS`] per span, [`MAX_EVENT_ATTRIBUTES`] each,
//!   values cut to [`MAX_EVENT_TEXT`] bytes, [`MAX_EVENTS_TEXT`] in all; the number dropped in
//!   the property `tracegate.dropped_events`); the last `exception` event gives the span's
//!   `error` (`exception.type: exception.message`) when the status carried no message.
//!
//! Exported again, an `app` span keeps its kind and events; its properties go out as string
//! attributes.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::Event as OtlpEvent, span::SpanKind as OtlpKind, status::StatusCode, ResourceSpans, ScopeSpans, Status,
};

use crate::formats::providers::Api;
use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{OtelSpanKind, Span, SpanEvent, SpanKind, SpanStatus, UsageSource};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

fn int(key: &str, value: u64) -> KeyValue {
    kv(key, any_value::Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX)))
}

fn double(key: &str, value: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(value))
}

/// The GenAI provider name of the semantic conventions.
fn provider_name(span: &Span, api_hint: Option<&str>) -> String {
    match api_hint.and_then(Api::from_name) {
        Some(api) => api.genai_provider_name().into(),
        None => span.provider.clone().unwrap_or_default(),
    }
}

/// One tracegate span as an OTLP span. `upstream_host` fills `server.address`; `api` is the
/// provider's wire format (`openai`, `anthropic`, `gemini`, `azure`, `bedrock`), named in
/// `gen_ai.provider.name` as the conventions do (`gcp.gemini`, `azure.ai.openai`, `aws.bedrock`).
pub fn to_otlp(
    span: &Span,
    upstream_host: Option<(&str, Option<u16>)>,
    api: Option<&str>,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    let mut attributes = Vec::new();
    if span.kind == SpanKind::Llm {
        if let Some(op) = &span.operation {
            attributes.push(text("gen_ai.operation.name", op));
        }
        attributes.push(text("gen_ai.provider.name", &provider_name(span, api)));
        if let Some(m) = &span.request_model {
            attributes.push(text("gen_ai.request.model", m));
        }
        if let Some(m) = &span.response_model {
            attributes.push(text("gen_ai.response.model", m));
        }
        if let Some(n) = span.input_tokens {
            attributes.push(int("gen_ai.usage.input_tokens", n));
        }
        if let Some(n) = span.output_tokens {
            attributes.push(int("gen_ai.usage.output_tokens", n));
        }
        if let Some(n) = span.cache_read_input_tokens {
            attributes.push(int("gen_ai.usage.cache_read.input_tokens", n));
        }
        if let Some(n) = span.cache_creation_input_tokens {
            attributes.push(int("gen_ai.usage.cache_creation.input_tokens", n));
        }
        if let Some(n) = span.reasoning_tokens {
            attributes.push(int("gen_ai.usage.reasoning.output_tokens", n));
        }
        if let Some(reason) = &span.finish_reason {
            let values = vec![AnyValue { value: Some(any_value::Value::StringValue(reason.clone())) }];
            attributes.push(kv("gen_ai.response.finish_reasons", any_value::Value::ArrayValue(ArrayValue { values })));
        }
        if let Some(ttft) = span.ttft_ms {
            attributes.push(double("gen_ai.response.time_to_first_chunk", ttft / 1000.0));
        }
        if let Some((host, port)) = upstream_host {
            attributes.push(text("server.address", host));
            if let Some(port) = port {
                attributes.push(int("server.port", u64::from(port)));
            }
        }
        if let Some(code) = span.status_code {
            attributes.push(int("http.response.status_code", u64::from(code)));
        }
        if let Some(method) = &span.method {
            attributes.push(text("http.request.method", method));
        }
        attributes.push(text(
            "tracegate.usage_source",
            match span.usage_source {
                UsageSource::Reported => "reported",
                UsageSource::Estimated => "estimated",
                UsageSource::Missing => "missing",
            },
        ));
        attributes.push(kv("tracegate.stream", any_value::Value::BoolValue(span.stream)));
        if let Some(cost) = span.cost_usd {
            attributes.push(double("tracegate.cost_usd", cost));
        }
    }
    if span.status != SpanStatus::Ok {
        let error_type = match (span.status, span.status_code) {
            (SpanStatus::Cancelled, _) => "cancelled".to_string(),
            (_, Some(code)) if code >= 400 => code.to_string(),
            _ => "tracegate_error".to_string(),
        };
        attributes.push(text("error.type", &error_type));
    }
    for (key, value) in
        [("tracegate.team", &span.team), ("tracegate.user", &span.user), ("tracegate.session", &span.session)]
    {
        if let Some(v) = value {
            attributes.push(text(key, v));
        }
    }
    for (key, value) in &span.properties {
        let key = if span.kind == SpanKind::App { key.clone() } else { format!("tracegate.property.{key}") };
        attributes.push(text(&key, value));
    }
    let status = match span.status {
        SpanStatus::Ok => Status { code: StatusCode::Unset as i32, message: String::new() },
        _ => Status { code: StatusCode::Error as i32, message: span.error.clone().unwrap_or_default() },
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        parent_span_id: span.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: span.name.clone(),
        kind: match (span.kind, span.span_kind) {
            (SpanKind::Llm, _) => OtlpKind::Client,
            (SpanKind::App, kind) => otlp_kind(kind),
        } as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano(),
        attributes,
        events: span
            .events
            .iter()
            .map(|e| OtlpEvent {
                time_unix_nano: e.time_unix_nano,
                name: e.name.clone(),
                attributes: e.attributes.iter().map(|(k, v)| text(k, v)).collect(),
                ..Default::default()
            })
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

/// The OTLP kind an ingested span arrived with (`internal` when it had none).
fn otlp_kind(kind: Option<OtelSpanKind>) -> OtlpKind {
    match kind {
        None | Some(OtelSpanKind::Internal) => OtlpKind::Internal,
        Some(OtelSpanKind::Server) => OtlpKind::Server,
        Some(OtelSpanKind::Client) => OtlpKind::Client,
        Some(OtelSpanKind::Producer) => OtlpKind::Producer,
        Some(OtelSpanKind::Consumer) => OtlpKind::Consumer,
    }
}

/// A whole export request: one resource (`service.name`), one scope, the spans.
pub fn export_request(
    service_name: &str,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![text("service.name", service_name)], ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracegate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// At most this many events are kept per ingested span…
const MAX_EVENTS: usize = 32;
/// …with at most this many attributes each.
const MAX_EVENT_ATTRIBUTES: usize = 32;
/// An event attribute's text (a stack trace, say) is cut to this many bytes, its head kept.
const MAX_EVENT_TEXT: usize = 4096;
/// The text all kept events of one span may hold; an event that would go past it is dropped.
const MAX_EVENTS_TEXT: usize = 32 * 1024;

/// The spans of an ingested OTLP request, as `kind = "app"` spans. Spans with invalid ids are
/// skipped (and counted in the second value).
pub fn from_otlp(request: ExportTraceServiceRequest) -> (Vec<Span>, usize) {
    let mut spans = Vec::new();
    let mut rejected = 0;
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .map(value_text);
        for scope_spans in resource_spans.scope_spans {
            for s in scope_spans.spans {
                let (Ok(trace), Ok(span_id)) =
                    (<[u8; 16]>::try_from(s.trace_id.as_slice()), <[u8; 8]>::try_from(s.span_id.as_slice()))
                else {
                    rejected += 1;
                    continue;
                };
                if trace == [0; 16] || span_id == [0; 8] {
                    rejected += 1;
                    continue;
                }
                spans.push(app_span(s, TraceId(trace), SpanId(span_id), service.as_ref()));
            }
        }
    }
    (spans, rejected)
}

/// One ingested span with valid ids: its OpenTelemetry kind, attributes as properties, GenAI
/// model and usage, status (an `exception` event gives an error its message) and events.
fn app_span(
    s: opentelemetry_proto::tonic::trace::v1::Span,
    trace_id: TraceId,
    span_id: SpanId,
    service: Option<&String>,
) -> Span {
    let parent = <[u8; 8]>::try_from(s.parent_span_id.as_slice()).ok().filter(|p| *p != [0; 8]).map(SpanId);
    let mut properties = BTreeMap::new();
    if let Some(service) = service {
        properties.insert("service.name".to_string(), service.clone());
    }
    for a in &s.attributes {
        if let Some(v) = &a.value {
            properties.insert(a.key.clone(), value_text(v));
        }
    }
    let (events, dropped) = keep_events(&s.events, s.dropped_events_count);
    if dropped > 0 {
        properties.insert("tracegate.dropped_events".to_string(), dropped.to_string());
    }
    let failed = s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32);
    let status_message = s.status.as_ref().map(|st| st.message.as_str()).filter(|m| failed && !m.is_empty());
    let error = status_message
        .map(str::to_string)
        .or_else(|| exception_text(&s.events))
        .or_else(|| failed.then(|| "error".to_string()));
    let mut span = Span {
        parent_span_id: parent,
        span_kind: otel_kind(s.kind),
        start_time_unix_nano: s.start_time_unix_nano,
        duration_ms: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6,
        status: if failed { SpanStatus::Error } else { SpanStatus::Ok },
        properties,
        error,
        events,
        ..Span::new(trace_id, span_id, SpanKind::App, s.name)
    };
    read_gen_ai(&mut span, &s.attributes);
    span
}

/// OpenTelemetry's span kind; `None` for unspecified (and unknown) values.
fn otel_kind(kind: i32) -> Option<OtelSpanKind> {
    match OtlpKind::try_from(kind).ok()? {
        OtlpKind::Unspecified => None,
        OtlpKind::Internal => Some(OtelSpanKind::Internal),
        OtlpKind::Server => Some(OtelSpanKind::Server),
        OtlpKind::Client => Some(OtelSpanKind::Client),
        OtlpKind::Producer => Some(OtelSpanKind::Producer),
        OtlpKind::Consumer => Some(OtelSpanKind::Consumer),
    }
}

/// The events kept of an ingested span, in order, within [`MAX_EVENTS`] and
/// [`MAX_EVENTS_TEXT`] (attributes within [`MAX_EVENT_ATTRIBUTES`], each cut to
/// [`MAX_EVENT_TEXT`]), and how many were dropped (by the sender too).
fn keep_events(events: &[OtlpEvent], dropped_by_sender: u32) -> (Vec<SpanEvent>, u64) {
    let mut kept = Vec::new();
    let mut text = 0;
    for event in events {
        if kept.len() == MAX_EVENTS {
            break;
        }
        let name = cut(event.name.clone(), MAX_EVENT_TEXT);
        let mut size = name.len();
        let mut attributes = BTreeMap::new();
        for a in event.attributes.iter().take(MAX_EVENT_ATTRIBUTES) {
            let value = cut(a.value.as_ref().map(value_text).unwrap_or_default(), MAX_EVENT_TEXT);
            let key = cut(a.key.clone(), MAX_EVENT_TEXT);
            size += key.len() + value.len();
            attributes.insert(key, value);
        }
        if text + size > MAX_EVENTS_TEXT {
            break;
        }
        text += size;
        kept.push(SpanEvent { name, time_unix_nano: event.time_unix_nano, attributes });
    }
    let dropped = (events.len() - kept.len()) as u64 + u64::from(dropped_by_sender);
    (kept, dropped)
}

/// `exception.type: exception.message` of the span's last `exception` event (either alone when
/// the other is missing), cut to [`MAX_EVENT_TEXT`].
fn exception_text(events: &[OtlpEvent]) -> Option<String> {
    let event = events.iter().rev().find(|e| e.name == "exception")?;
    let attribute = |key: &str| {
        event
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(value_text)
            .filter(|t| !t.is_empty())
    };
    let text = match (attribute("exception.type"), attribute("exception.message")) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => "exception".to_string(),
    };
    Some(cut(text, MAX_EVENT_TEXT))
}

/// Fills an ingested span's operation, provider, models and usage from its GenAI
/// semantic-convention attributes (also the older `gen_ai.system`, `gen_ai.usage.prompt_tokens`
/// and `completion_tokens`). Usage found makes the span `reported`; it is never priced.
fn read_gen_ai(span: &mut Span, attributes: &[KeyValue]) {
    let (mut provider, mut system) = (None, None);
    let (mut input, mut prompt, mut output, mut completion) = (None, None, None, None);
    for a in attributes {
        let Some(value) = &a.value else { continue };
        match a.key.as_str() {
            "gen_ai.operation.name" => span.operation = name_of(value),
            "gen_ai.provider.name" => provider = name_of(value),
            "gen_ai.system" => system = name_of(value),
            "gen_ai.request.model" => span.request_model = name_of(value),
            "gen_ai.response.model" => span.response_model = name_of(value),
            "gen_ai.response.finish_reasons" => span.finish_reason = first_name(value),
            "gen_ai.usage.input_tokens" => input = count(value),
            "gen_ai.usage.prompt_tokens" => prompt = count(value),
            "gen_ai.usage.output_tokens" => output = count(value),
            "gen_ai.usage.completion_tokens" => completion = count(value),
            "gen_ai.usage.cache_read.input_tokens" => span.cache_read_input_tokens = count(value),
            "gen_ai.usage.cache_creation.input_tokens" => span.cache_creation_input_tokens = count(value),
            "gen_ai.usage.reasoning.output_tokens" => span.reasoning_tokens = count(value),
            _ => {}
        }
    }
    span.provider = provider.or(system);
    span.input_tokens = input.or(prompt);
    span.output_tokens = output.or(completion);
    if [span.input_tokens, span.output_tokens, span.cache_read_input_tokens, span.cache_creation_input_tokens]
        .iter()
        .chain([&span.reasoning_tokens])
        .any(Option::is_some)
    {
        span.usage_source = UsageSource::Reported;
    }
}

/// A non-empty string attribute.
fn name_of(value: &AnyValue) -> Option<String> {
    match &value.value {
        Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The first name of a string array (or a lone string).
fn first_name(value: &AnyValue) -> Option<String> {
    match &value.value {
        Some(any_value::Value::ArrayValue(a)) => a.values.first().and_then(name_of),
        _ => name_of(value),
    }
}

/// A token count: a non-negative integer, also as a whole double or as decimal text.
fn count(value: &AnyValue) -> Option<u64> {
    match &value.value {
        Some(any_value::Value::IntValue(i)) => u64::try_from(*i).ok(),
        Some(any_value::Value::DoubleValue(d)) if d.is_finite() && *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        Some(any_value::Value::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `text` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// An attribute value as text: a string as it is, other scalars as they print, arrays and
/// maps as JSON text (so `["stop","a,b"]` stays two values).
fn value_text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) => json(value).to_string(),
        // Nothing, or a string-table index (profiles only; a trace has no table to read it in).
        _ => String::new(),
    }
}

/// An attribute value as JSON: bytes as hex text, a non-finite double as its text.
fn json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or_else(|| J::String(d.to_string()), J::Number)
        }
        Some(any_value::Value::BytesValue(b)) => J::String(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => J::Array(a.values.iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(l)) => {
            J::Object(l.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(J::Null, json))).collect())
        }
        _ => J::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

    fn string(s: &str) -> AnyValue {
        AnyValue { value: Some(any_value::Value::StringValue(s.into())) }
    }

    fn array(values: Vec<AnyValue>) -> AnyValue {
        AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values })) }
    }

    fn otlp_span(
        kind: OtlpKind,
        attributes: Vec<KeyValue>,
        events: Vec<OtlpEvent>,
        status: Option<Status>,
    ) -> OtlpSpan {
        OtlpSpan {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            name: "step".into(),
            kind: kind as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000_000,
            attributes,
            events,
            status,
            ..Default::default()
        }
    }

    /// The one span of a request holding `span`.
    fn ingest(span: OtlpSpan) -> Span {
        let (mut spans, rejected) = from_otlp(export_request("app", vec![span]));
        assert_eq!((spans.len(), rejected), (1, 0));
        spans.remove(0)
    }

    fn event(name: &str, attributes: Vec<KeyValue>) -> OtlpEvent {
        OtlpEvent { time_unix_nano: 1_500, name: name.into(), attributes, ..Default::default() }
    }

    fn failed(message: &str) -> Option<Status> {
        Some(Status { code: StatusCode::Error as i32, message: message.into() })
    }

    #[test]
    fn the_otel_kind_is_kept_beside_kind_app() {
        for (otlp, kept) in [
            (OtlpKind::Unspecified, None),
            (OtlpKind::Internal, Some(OtelSpanKind::Internal)),
            (OtlpKind::Server, Some(OtelSpanKind::Server)),
            (OtlpKind::Client, Some(OtelSpanKind::Client)),
            (OtlpKind::Producer, Some(OtelSpanKind::Producer)),
            (OtlpKind::Consumer, Some(OtelSpanKind::Consumer)),
        ] {
            let span = ingest(otlp_span(otlp, vec![], vec![], None));
            assert_eq!((span.kind, span.span_kind), (SpanKind::App, kept), "{otlp:?}");
            let out = to_otlp(&span, None, None);
            let expected = if otlp == OtlpKind::Unspecified { OtlpKind::Internal } else { otlp };
            assert_eq!(out.kind, expected as i32, "exported again with its kind");
        }
        assert_eq!(otel_kind(99), None, "an unknown kind reads as unspecified");
        let json = serde_json::to_value(ingest(otlp_span(OtlpKind::Consumer, vec![], vec![], None))).unwrap();
        assert_eq!(json["span_kind"], "consumer");
    }

    #[test]
    fn genai_attributes_fill_model_and_reported_usage_unpriced() {
        let attributes = vec![
            text("gen_ai.operation.name", "chat"),
            text("gen_ai.provider.name", "openai"),
            text("gen_ai.system", "ignored-when-provider-name-is-set"),
            text("gen_ai.request.model", "gpt-4o-mini"),
            text("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
            int("gen_ai.usage.input_tokens", 120),
            int("gen_ai.usage.output_tokens", 30),
            int("gen_ai.usage.cache_read.input_tokens", 100),
            int("gen_ai.usage.cache_creation.input_tokens", 5),
            int("gen_ai.usage.reasoning.output_tokens", 10),
            kv(
                "gen_ai.response.finish_reasons",
                any_value::Value::ArrayValue(ArrayValue { values: vec![string("stop")] }),
            ),
        ];
        let span = ingest(otlp_span(OtlpKind::Client, attributes, vec![], None));
        assert_eq!(
            (span.input_tokens, span.output_tokens, span.usage_source),
            (Some(120), Some(30), UsageSource::Reported)
        );
        assert_eq!(
            (span.cache_read_input_tokens, span.cache_creation_input_tokens, span.reasoning_tokens),
            (Some(100), Some(5), Some(10))
        );
        assert_eq!(span.operation.as_deref(), Some("chat"));
        assert_eq!(span.provider.as_deref(), Some("openai"));
        assert_eq!(span.request_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(span.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(span.finish_reason.as_deref(), Some("stop"));
        assert_eq!(span.cost_usd, None);
        assert_eq!(span.properties["gen_ai.usage.input_tokens"], "120", "attributes stay properties");
        assert_eq!(span.properties["gen_ai.response.finish_reasons"], r#"["stop"]"#);
    }

    #[test]
    fn older_genai_names_and_odd_count_types_are_read() {
        let attributes = vec![
            text("gen_ai.system", "anthropic"),
            kv("gen_ai.usage.prompt_tokens", any_value::Value::StringValue("42".into())),
            kv("gen_ai.usage.completion_tokens", any_value::Value::DoubleValue(7.0)),
        ];
        let span = ingest(otlp_span(OtlpKind::Client, attributes, vec![], None));
        assert_eq!(
            (span.provider.as_deref(), span.input_tokens, span.output_tokens),
            (Some("anthropic"), Some(42), Some(7))
        );
        assert_eq!(span.usage_source, UsageSource::Reported);

        // The current names win over the older ones; nonsense counts are not counts.
        let attributes = vec![
            int("gen_ai.usage.prompt_tokens", 1),
            int("gen_ai.usage.input_tokens", 2),
            kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(-3)),
            kv("gen_ai.usage.reasoning.output_tokens", any_value::Value::DoubleValue(1.5)),
            kv("gen_ai.usage.cache_read.input_tokens", any_value::Value::StringValue("many".into())),
        ];
        let span = ingest(otlp_span(OtlpKind::Client, attributes, vec![], None));
        assert_eq!((span.input_tokens, span.output_tokens, span.reasoning_tokens), (Some(2), None, None));
        assert_eq!(span.cache_read_input_tokens, None);

        // No usage at all: still `missing`, never a silent 0.
        let span = ingest(otlp_span(OtlpKind::Internal, vec![text("gen_ai.request.model", "m")], vec![], None));
        assert_eq!((span.input_tokens, span.usage_source), (None, UsageSource::Missing));
    }

    #[test]
    fn arrays_and_maps_are_json_text_and_strings_stay_as_they_are() {
        let kvlist = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![
                    KeyValue { key: "k".into(), value: Some(string("v=1,x")), ..Default::default() },
                    KeyValue { key: "n".into(), value: None, ..Default::default() },
                ],
            })),
        };
        let cases = [
            (array(vec![string("stop"), string("a,b")]), r#"["stop","a,b"]"#),
            (array(vec![string("stop"), string("a"), string("b")]), r#"["stop","a","b"]"#),
            (array(vec![]), "[]"),
            (array(vec![array(vec![string("x")]), kvlist.clone()]), r#"[["x"],{"k":"v=1,x","n":null}]"#),
            (
                array(vec![
                    AnyValue { value: Some(any_value::Value::IntValue(-1)) },
                    AnyValue { value: Some(any_value::Value::DoubleValue(f64::NAN)) },
                    AnyValue { value: Some(any_value::Value::BytesValue(vec![0xab, 0x01])) },
                    AnyValue { value: None },
                ]),
                r#"[-1,"NaN","ab01",null]"#,
            ),
            (kvlist, r#"{"k":"v=1,x","n":null}"#),
            (string("[stop,a,b]"), "[stop,a,b]"),
            (string("with \"quotes\""), "with \"quotes\""),
            (AnyValue { value: Some(any_value::Value::DoubleValue(0.5)) }, "0.5"),
            (AnyValue { value: Some(any_value::Value::BoolValue(true)) }, "true"),
        ];
        for (value, expected) in cases {
            assert_eq!(value_text(&value), expected);
        }
    }

    #[test]
    fn events_are_kept_and_an_exception_names_the_error() {
        let exception = |kind: &str, message: &str| {
            event("exception", vec![text("exception.type", kind), text("exception.message", message)])
        };
        let events = vec![event("retry", vec![int("attempt", 2)]), exception("ValueError", "no such city")];
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], events.clone(), failed("")));
        assert_eq!((span.status, span.error.as_deref()), (SpanStatus::Error, Some("ValueError: no such city")));
        assert_eq!(span.events.len(), 2);
        assert_eq!(span.events[0].name, "retry");
        assert_eq!(span.events[0].time_unix_nano, 1_500);
        assert_eq!(span.events[0].attributes["attempt"], "2");
        assert!(!span.properties.contains_key("tracegate.dropped_events"));

        // The status's own message wins; the last exception is the one that ended the span.
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], events.clone(), failed("city lookup failed")));
        assert_eq!(span.error.as_deref(), Some("city lookup failed"));
        let two = vec![exception("A", "first"), exception("B", "second")];
        assert_eq!(ingest(otlp_span(OtlpKind::Internal, vec![], two, failed(""))).error.as_deref(), Some("B: second"));
        let bare = vec![event("exception", vec![text("exception.message", "only a message")])];
        assert_eq!(ingest(otlp_span(OtlpKind::Internal, vec![], bare, None)).error.as_deref(), Some("only a message"));

        // An exception on a span the app left unset is shown; the status stays as the app said.
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], events, None));
        assert_eq!((span.status, span.error.as_deref()), (SpanStatus::Ok, Some("ValueError: no such city")));
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], vec![], failed("")));
        assert_eq!(span.error.as_deref(), Some("error"));
        assert_eq!(ingest(otlp_span(OtlpKind::Internal, vec![], vec![], None)).error, None);

        // Exported again with its events.
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], vec![event("retry", vec![int("attempt", 2)])], None));
        let out = to_otlp(&span, None, None);
        assert_eq!((out.events.len(), out.events[0].name.as_str()), (1, "retry"));
        assert_eq!(out.events[0].attributes[0].key, "attempt");
    }

    #[test]
    fn events_are_bounded() {
        let many: Vec<OtlpEvent> = (0..40).map(|i| event(&format!("e{i}"), vec![])).collect();
        let mut s = otlp_span(OtlpKind::Internal, vec![], many, None);
        s.dropped_events_count = 3;
        let span = ingest(s);
        assert_eq!(span.events.len(), MAX_EVENTS);
        assert_eq!(span.events[31].name, "e31");
        assert_eq!(span.properties["tracegate.dropped_events"], "11", "8 cut here, 3 by the sender");

        let attributes: Vec<KeyValue> = (0..40).map(|i| int(&format!("a{i:02}"), i)).collect();
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], vec![event("wide", attributes)], None));
        assert_eq!(span.events[0].attributes.len(), MAX_EVENT_ATTRIBUTES);

        let long = "é".repeat(10_000);
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], vec![event("long", vec![text("x", &long)])], None));
        let kept = &span.events[0].attributes["x"];
        assert!(kept.len() <= MAX_EVENT_TEXT && kept.ends_with('…') && kept.starts_with("éé"), "{}", kept.len());

        let big: Vec<OtlpEvent> = (0..20).map(|_| event("stack", vec![text("x", &long)])).collect();
        let span = ingest(otlp_span(OtlpKind::Internal, vec![], big, None));
        let total: usize = span.events.iter().flat_map(|e| e.attributes.values()).map(String::len).sum();
        assert!(total <= MAX_EVENTS_TEXT && span.events.len() < 20, "{} events, {total} bytes", span.events.len());
        assert_eq!(span.properties["tracegate.dropped_events"], (20 - span.events.len()).to_string());
    }
}
