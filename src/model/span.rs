//! The span and trace-summary model: plain serde types that are both the stored record and
//! the admin API's JSON (field names fixed by SPEC.md), so the wire schema reads in one file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ids::{SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// A call that went through the proxy.
    Llm,
    /// A span the application sent us over OTLP.
    App,
}

/// OpenTelemetry's kind of an ingested span (`kind` stays `app`; SPEC fixes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtelSpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A timed event an application recorded on an ingested span (an `exception`, a retry, ...),
/// its attributes as text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Ok,
    Cancelled,
    Error,
}

impl SpanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Ok => "ok",
            SpanStatus::Cancelled => "cancelled",
            SpanStatus::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The provider said how many tokens were used.
    Reported,
    /// tracegate counted the tokens itself.
    Estimated,
    /// Nobody knows: the fields are null, never a silent 0.
    Missing,
}

/// One recorded call (or one ingested application span).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    /// The OpenTelemetry kind of an ingested span; null for proxied calls and unspecified kinds.
    #[serde(default)]
    pub span_kind: Option<OtelSpanKind>,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub ttft_ms: Option<f64>,
    pub provider: Option<String>,
    pub operation: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status_code: Option<u16>,
    pub status: SpanStatus,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub stream: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub usage_source: UsageSource,
    /// Input tokens served from the provider's prompt cache (counted inside `input_tokens`).
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the provider's prompt cache (Anthropic; inside `input_tokens`).
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Reasoning tokens (counted inside `output_tokens`).
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    pub cost_usd: Option<f64>,
    pub team: Option<String>,
    pub user: Option<String>,
    /// Fingerprint (`sha256:` + 12 hex digits of its hash) of the team key used, never the key.
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    pub session: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub error: Option<String>,
    /// The events of an ingested span (bounded by `formats::otlp`); always present, `[]` for
    /// proxied calls.
    #[serde(default)]
    pub events: Vec<SpanEvent>,
    /// The tracegate instance that recorded the span (`[cluster] instance`); absent on one
    /// instance without `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Span {
    /// A span with these ids, kind and name and nothing else known yet: it starts at 0, lasts
    /// 0 ms, is `ok`, and has no route, model, tokens (`missing`), cost, tags, error or events.
    pub fn new(trace_id: TraceId, span_id: SpanId, kind: SpanKind, name: String) -> Span {
        Span {
            trace_id,
            span_id,
            parent_span_id: None,
            name,
            kind,
            span_kind: None,
            start_time_unix_nano: 0,
            duration_ms: 0.0,
            ttft_ms: None,
            provider: None,
            operation: None,
            method: None,
            path: None,
            status_code: None,
            status: SpanStatus::Ok,
            request_model: None,
            response_model: None,
            stream: false,
            input_tokens: None,
            output_tokens: None,
            usage_source: UsageSource::Missing,
            cache_read_input_tokens: None,
            cache_creation_input_tokens: None,
            reasoning_tokens: None,
            finish_reason: None,
            cost_usd: None,
            team: None,
            user: None,
            key_fingerprint: None,
            session: None,
            properties: BTreeMap::new(),
            error: None,
            events: Vec::new(),
            instance: None,
        }
    }

    pub fn end_time_unix_nano(&self) -> u64 {
        self.start_time_unix_nano.saturating_add((self.duration_ms * 1e6) as u64)
    }
}

/// The captured bodies of one span, stored apart from the span so listings never load them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanBodies {
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// True when a body was longer than `max_capture_bytes` and only its head and tail were kept.
    #[serde(default)]
    pub truncated: bool,
}

/// One line of the trace list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: TraceId,
    pub root_name: String,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub span_count: u64,
    /// Tokens of the trace's proxied calls (`llm` spans) only; see [`TraceSummary::add`].
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub status: SpanStatus,
    pub teams: Vec<String>,
    /// Users and sessions of the trace's spans, first seen first.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub sessions: Vec<String>,
    /// Models seen in the trace (response model, else request model).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub end_time_unix_nano: u64,
    /// Whether `root_name` comes from a span without a parent (else: the earliest span).
    #[serde(skip)]
    pub has_true_root: bool,
}

impl TraceSummary {
    pub fn new(span: &Span) -> Self {
        let mut summary = TraceSummary {
            trace_id: span.trace_id,
            root_name: span.name.clone(),
            start_time_unix_nano: span.start_time_unix_nano,
            duration_ms: 0.0,
            span_count: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: None,
            status: SpanStatus::Ok,
            teams: Vec::new(),
            users: Vec::new(),
            sessions: Vec::new(),
            models: Vec::new(),
            end_time_unix_nano: span.start_time_unix_nano,
            has_true_root: false,
        };
        summary.add(span);
        summary
    }

    /// Folds one more span of the same trace into the summary.
    pub fn add(&mut self, span: &Span) {
        let is_root = span.parent_span_id.is_none();
        let earlier = span.start_time_unix_nano < self.start_time_unix_nano;
        if (is_root && (!self.has_true_root || earlier)) || (!self.has_true_root && (earlier || self.span_count == 0)) {
            self.root_name = span.name.clone();
            self.has_true_root = is_root;
        }
        self.start_time_unix_nano = self.start_time_unix_nano.min(span.start_time_unix_nano);
        self.end_time_unix_nano = self.end_time_unix_nano.max(span.end_time_unix_nano());
        self.duration_ms = self.end_time_unix_nano.saturating_sub(self.start_time_unix_nano) as f64 / 1e6;
        self.span_count += 1;
        add_usage(span, &mut self.input_tokens, &mut self.output_tokens, &mut self.cost_usd);
        self.status = self.status.max(span.status);
        let model = span.response_model.as_ref().or(span.request_model.as_ref());
        for (list, value) in [
            (&mut self.teams, span.team.as_ref()),
            (&mut self.users, span.user.as_ref()),
            (&mut self.sessions, span.session.as_ref()),
            (&mut self.models, model),
        ] {
            if let Some(v) = value {
                if !list.contains(v) {
                    list.push(v.clone());
                }
            }
        }
    }
}

/// Adds a span's tokens and cost to a trace's or a session's totals. Only proxied calls' tokens
/// count: an app's GenAI span may describe the very call that also went through the proxy, and
/// its tokens would be counted twice. Cost is only ever on proxied calls.
fn add_usage(span: &Span, input_tokens: &mut u64, output_tokens: &mut u64, cost_usd: &mut Option<f64>) {
    if span.kind == SpanKind::Llm {
        *input_tokens = input_tokens.saturating_add(span.input_tokens.unwrap_or(0));
        *output_tokens = output_tokens.saturating_add(span.output_tokens.unwrap_or(0));
    }
    if let Some(cost) = span.cost_usd {
        *cost_usd = Some(cost_usd.unwrap_or(0.0) + cost);
    }
}

/// A session as `/api/sessions` lists it: totals over every stored span of the session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    pub session: String,
    /// The user and team of the session's latest span that names one.
    pub user: Option<String>,
    pub team: Option<String>,
    pub first_time_unix_nano: u64,
    pub last_time_unix_nano: u64,
    pub trace_count: u64,
    pub span_count: u64,
    /// Tokens of the session's proxied calls (`llm` spans), as in [`TraceSummary`].
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    /// Spans whose status is `error`.
    pub errors: u64,
}

impl SessionSummary {
    /// Folds a session's spans, in any order.
    pub fn of<'a>(session: &str, spans: impl IntoIterator<Item = &'a Span>) -> Option<SessionSummary> {
        let mut summary: Option<SessionSummary> = None;
        let mut traces = std::collections::HashSet::new();
        let mut latest_named = (0u64, 0u64);
        for span in spans {
            let s = summary.get_or_insert_with(|| SessionSummary {
                session: session.to_string(),
                user: None,
                team: None,
                first_time_unix_nano: u64::MAX,
                last_time_unix_nano: 0,
                trace_count: 0,
                span_count: 0,
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: None,
                errors: 0,
            });
            s.first_time_unix_nano = s.first_time_unix_nano.min(span.start_time_unix_nano);
            s.last_time_unix_nano = s.last_time_unix_nano.max(span.end_time_unix_nano());
            s.span_count += 1;
            if traces.insert(span.trace_id) {
                s.trace_count += 1;
            }
            add_usage(span, &mut s.input_tokens, &mut s.output_tokens, &mut s.cost_usd);
            s.errors += u64::from(span.status == SpanStatus::Error);
            for (slot, value, latest) in
                [(&mut s.user, &span.user, &mut latest_named.0), (&mut s.team, &span.team, &mut latest_named.1)]
            {
                if value.is_some() && (slot.is_none() || span.start_time_unix_nano >= *latest) {
                    *slot = value.clone();
                    *latest = span.start_time_unix_nano;
                }
            }
        }
        summary
    }
}

/// A span ready to be written, with its bodies when they are kept.
pub struct SpanWrite {
    pub span: Span,
    pub bodies: Option<SpanBodies>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: SpanKind, tokens: (u64, u64)) -> Span {
        Span {
            input_tokens: Some(tokens.0),
            output_tokens: Some(tokens.1),
            usage_source: UsageSource::Reported,
            ..Span::new(TraceId([1; 16]), SpanId([2; 8]), kind, "chat m".into())
        }
    }

    #[test]
    fn a_span_stored_before_span_kind_and_events_still_decodes() {
        let mut json = serde_json::to_value(span(SpanKind::App, (1, 2))).unwrap();
        assert_eq!((&json["span_kind"], &json["events"]), (&serde_json::Value::Null, &serde_json::json!([])));
        let object = json.as_object_mut().unwrap();
        object.remove("span_kind");
        object.remove("events");
        let old: Span = serde_json::from_value(json).unwrap();
        assert_eq!(old, span(SpanKind::App, (1, 2)));
    }

    #[test]
    fn trace_totals_count_the_tokens_of_proxied_calls_only() {
        let mut summary = TraceSummary::new(&span(SpanKind::App, (120, 30)));
        summary.add(&span(SpanKind::Llm, (12, 3)));
        assert_eq!((summary.span_count, summary.input_tokens, summary.output_tokens), (2, 12, 3));
    }
}
