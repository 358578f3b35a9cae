//! Zipkin v2 JSON encoding of spans (`POST /api/v2/spans`), for Zipkin and Jaeger's Zipkin
//! receiver. Tags carry the same GenAI and tracegate attributes as the OTLP export, as strings.

use serde_json::{json, Map, Value};

use crate::model::span::{Span, SpanKind, SpanStatus};

/// A batch of spans as a Zipkin v2 JSON array.
pub fn encode(spans: &[Span], service_name: &str) -> Vec<u8> {
    let list: Vec<Value> = spans.iter().map(|s| span(s, service_name)).collect();
    serde_json::to_vec(&list).expect("zipkin spans serialize")
}

fn span(s: &Span, service_name: &str) -> Value {
    let mut tags = Map::new();
    let mut tag = |key: &str, value: String| {
        tags.insert(key.to_string(), Value::String(value));
    };
    if let Some(op) = &s.operation {
        tag("gen_ai.operation.name", op.clone());
    }
    if let Some(p) = &s.provider {
        tag("tracegate.provider", p.clone());
    }
    if let Some(m) = &s.request_model {
        tag("gen_ai.request.model", m.clone());
    }
    if let Some(m) = &s.response_model {
        tag("gen_ai.response.model", m.clone());
    }
    if let Some(n) = s.input_tokens {
        tag("gen_ai.usage.input_tokens", n.to_string());
    }
    if let Some(n) = s.output_tokens {
        tag("gen_ai.usage.output_tokens", n.to_string());
    }
    if let Some(t) = s.ttft_ms {
        tag("gen_ai.response.time_to_first_chunk", (t / 1000.0).to_string());
    }
    if let Some(c) = s.cost_usd {
        tag("tracegate.cost_usd", c.to_string());
    }
    if let Some(code) = s.status_code {
        tag("http.status_code", code.to_string());
    }
    for (key, value) in [("tracegate.team", &s.team), ("tracegate.user", &s.user), ("tracegate.session", &s.session)] {
        if let Some(v) = value {
            tag(key, v.clone());
        }
    }
    if s.status != SpanStatus::Ok {
        tag("error", s.error.clone().unwrap_or_else(|| s.status.as_str().to_string()));
    }
    for (key, value) in &s.properties {
        tag(key, value.clone());
    }
    let mut out = json!({
        "traceId": s.trace_id.to_hex(),
        "id": s.span_id.to_hex(),
        "name": s.name,
        "timestamp": s.start_time_unix_nano / 1000,
        "duration": ((s.duration_ms * 1000.0).round() as u64).max(1),
        "localEndpoint": {"serviceName": service_name},
        "tags": tags,
    });
    if let Some(parent) = s.parent_span_id {
        out["parentId"] = Value::String(parent.to_hex());
    }
    if s.kind == SpanKind::Llm {
        out["kind"] = Value::String("CLIENT".into());
        if let Some(p) = &s.provider {
            out["remoteEndpoint"] = json!({"serviceName": p});
        }
    }
    out
}
