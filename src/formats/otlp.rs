//! OpenTelemetry mapping, both ways, with the `opentelemetry-proto` crate's types.
//!
//! Out: a proxied call becomes a CLIENT span named `{operation} {model}` with the GenAI
//! semantic-convention attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.*`,
//! `gen_ai.response.finish_reasons`, `gen_ai.response.time_to_first_chunk`), `server.address`,
//! `error.type`, and tracegate's own `tracegate.*` (cost, team, user, session, usage source).
//! In: spans an application exports to `POST /v1/traces` become `kind = "app"` spans, their
//! attributes kept as string properties, so they join the same trace tree as the proxied calls.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind as OtlpKind, status::StatusCode, ResourceSpans, ScopeSpans, Status,
};

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{Span, SpanKind, SpanStatus, UsageSource};

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
    match api_hint {
        Some("anthropic") => "anthropic".into(),
        Some("openai") => "openai".into(),
        _ => span.provider.clone().unwrap_or_default(),
    }
}

/// One tracegate span as an OTLP span. `upstream_host` fills `server.address`; `api` is the
/// provider's wire format (`openai`/`anthropic`), used for `gen_ai.provider.name`.
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
        kind: if span.kind == SpanKind::Llm { OtlpKind::Client as i32 } else { OtlpKind::Internal as i32 },
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano(),
        attributes,
        status: Some(status),
        ..Default::default()
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
                let parent = <[u8; 8]>::try_from(s.parent_span_id.as_slice()).ok().filter(|p| *p != [0; 8]).map(SpanId);
                let mut properties = BTreeMap::new();
                if let Some(service) = &service {
                    properties.insert("service.name".to_string(), service.clone());
                }
                for a in &s.attributes {
                    if let Some(v) = &a.value {
                        properties.insert(a.key.clone(), value_text(v));
                    }
                }
                let code = s.status.as_ref().map(|st| st.code).unwrap_or(0);
                let (status, error) = if code == StatusCode::Error as i32 {
                    (
                        SpanStatus::Error,
                        Some(
                            s.status
                                .as_ref()
                                .map(|st| st.message.clone())
                                .filter(|m| !m.is_empty())
                                .unwrap_or_else(|| "error".into()),
                        ),
                    )
                } else {
                    (SpanStatus::Ok, None)
                };
                spans.push(Span {
                    parent_span_id: parent,
                    start_time_unix_nano: s.start_time_unix_nano,
                    duration_ms: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6,
                    status,
                    properties,
                    error,
                    ..Span::new(TraceId(trace), SpanId(span_id), SpanKind::App, s.name)
                });
            }
        }
    }
    (spans, rejected)
}

/// An attribute value as text (arrays and maps as JSON-ish text).
fn value_text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            format!("[{}]", a.values.iter().map(value_text).collect::<Vec<_>>().join(","))
        }
        Some(any_value::Value::KvlistValue(l)) => format!(
            "{{{}}}",
            l.values
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(value_text).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        _ => String::new(),
    }
}
