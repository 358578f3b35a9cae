//! Prometheus metrics, rendered in the text exposition format on the admin listener.
//!
//! The request path only touches plain atomics (a dropped-span counter). Everything labelled
//! by provider, model and team is updated by the recorder thread after a span is built, so the
//! mutex around the labelled series is never contended by requests.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::span::{Span, SpanStatus};

/// Histogram bucket bounds in seconds, sized for LLM calls (tens of ms to minutes).
const SECONDS_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Default)]
pub struct Metrics {
    pub spans_recorded: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub store_errors: AtomicU64,
    /// Calls whose span building panicked (recorded as errors without bodies).
    pub recorder_panics: AtomicU64,
    pub spans_ingested: AtomicU64,
    labelled: Mutex<Labelled>,
    exporters: Mutex<BTreeMap<&'static str, std::sync::Arc<ExportCounters>>>,
    /// `[cluster]`: the PostgreSQL sync and the Redis limits (shown once a cluster is set).
    pub cluster: std::sync::Arc<ClusterCounters>,
}

/// Counters of the cluster's sync to PostgreSQL and of its Redis limits.
#[derive(Default)]
pub struct ClusterCounters {
    /// Set when `[cluster]` is configured: the series below are shown.
    pub enabled: std::sync::atomic::AtomicBool,
    pub backlog_spans: AtomicU64,
    pub synced_spans: AtomicU64,
    pub sync_errors: AtomicU64,
    /// Shared deletions (asked of any instance) applied to this instance's local store.
    pub deletions_applied: AtomicU64,
    /// Shared with the Redis limits (`policy::shared_limits`), which count their own failures.
    pub redis_errors: std::sync::Arc<AtomicU64>,
}

/// Delivery counters of one exporter (`otlp`, `zipkin`).
#[derive(Default)]
pub struct ExportCounters {
    pub sent_spans: AtomicU64,
    pub failed_spans: AtomicU64,
    pub retries: AtomicU64,
    pub backlog_spans: AtomicU64,
}

type Labels = Vec<(&'static str, String)>;

/// Distinct (provider, model, team) label sets kept before new ones are folded into `other`.
const MAX_LABEL_COMBINATIONS: usize = 1000;
const OVERFLOW_LABEL: &str = "other";

/// Every labelled series, one entry per (provider, model, team), keyed by those three joined
/// with NUL so that a call's entry is found without building owned label vectors.
#[derive(Default)]
struct Labelled {
    series: BTreeMap<String, Series>,
}

/// The counters and histograms of one (provider, model, team).
#[derive(Default)]
struct Series {
    provider: String,
    model: String,
    team: String,
    /// Calls by span status (`ok`, `error`, `cancelled`).
    requests: BTreeMap<&'static str, u64>,
    duration: Histogram,
    ttft: Option<Histogram>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cost_usd: Option<f64>,
}

impl Series {
    fn labels(&self) -> Labels {
        vec![("provider", self.provider.clone()), ("model", self.model.clone()), ("team", self.team.clone())]
    }
}

fn series_key(provider: &str, model: &str, team: &str) -> String {
    let mut key = String::with_capacity(provider.len() + model.len() + team.len() + 2);
    for (i, part) in [provider, model, team].into_iter().enumerate() {
        if i > 0 {
            key.push('\0');
        }
        key.push_str(part);
    }
    key
}

#[derive(Clone, Default)]
struct Histogram {
    counts: [u64; SECONDS_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (i, bound) in SECONDS_BUCKETS.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

impl Metrics {
    /// The counters of an exporter (created on first use).
    pub fn exporter(&self, name: &'static str) -> std::sync::Arc<ExportCounters> {
        self.exporters.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_default().clone()
    }

    /// The cluster's counters, shown from now on.
    pub fn cluster_counters(&self) -> std::sync::Arc<ClusterCounters> {
        self.cluster.enabled.store(true, Ordering::Relaxed);
        self.cluster.clone()
    }

    /// Counts one recorded proxied call in the labelled series.
    pub fn observe_call(&self, span: &Span) {
        let provider = span.provider.as_deref().unwrap_or_default();
        let model = span.response_model.as_deref().or(span.request_model.as_deref()).unwrap_or_default();
        let team = span.team.as_deref().unwrap_or_default();
        self.with_series(provider, model, team, |series| Self::add_call(series, span));
    }

    /// Counts a call of a `record = false` route: its request alone (no body is read, so no
    /// model, tokens or duration), by the status of its answer.
    pub fn observe_unrecorded(&self, provider: &str, team: &str, status: SpanStatus) {
        self.with_series(provider, "", team, |series| *series.requests.entry(status.as_str()).or_default() += 1);
    }

    /// Runs `f` on the series of (provider, model, team), created on first use.
    fn with_series(&self, provider: &str, model: &str, team: &str, f: impl FnOnce(&mut Series)) {
        let mut key = series_key(provider, model, team);
        let mut l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        // Model and team names come from clients: past a bound, new ones share one series.
        let (model, team) = if l.series.contains_key(&key) || l.series.len() < MAX_LABEL_COMBINATIONS {
            (model, team)
        } else {
            key = series_key(provider, OVERFLOW_LABEL, OVERFLOW_LABEL);
            (OVERFLOW_LABEL, OVERFLOW_LABEL)
        };
        let series = match l.series.get_mut(&key) {
            Some(series) => series,
            None => l.series.entry(key).or_insert_with(|| Series {
                provider: provider.to_string(),
                model: model.to_string(),
                team: team.to_string(),
                ..Series::default()
            }),
        };
        f(series);
    }

    fn add_call(series: &mut Series, span: &Span) {
        *series.requests.entry(span.status.as_str()).or_default() += 1;
        series.duration.observe(span.duration_ms / 1000.0);
        if let Some(ttft) = span.ttft_ms {
            series.ttft.get_or_insert_with(Histogram::default).observe(ttft / 1000.0);
        }
        for (total, value) in
            [(&mut series.input_tokens, span.input_tokens), (&mut series.output_tokens, span.output_tokens)]
        {
            if let Some(n) = value {
                let total = total.get_or_insert(0);
                *total = total.saturating_add(n);
            }
        }
        if let Some(cost) = span.cost_usd {
            *series.cost_usd.get_or_insert(0.0) += cost;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        counter(
            &mut out,
            "tracegate_spans_recorded_total",
            "Spans written to the store.",
            self.spans_recorded.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "tracegate_spans_dropped_total",
            "Spans dropped because the recorder queue was full (or the recorder had stopped).",
            self.spans_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "tracegate_store_errors_total",
            "Failed writes to the span store.",
            self.store_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "tracegate_recorder_panics_total",
            "Calls whose span building panicked; each is recorded as an error span without bodies.",
            self.recorder_panics.load(Ordering::Relaxed),
        );

        counter(
            &mut out,
            "tracegate_spans_ingested_total",
            "Application spans received on POST /v1/traces.",
            self.spans_ingested.load(Ordering::Relaxed),
        );
        if self.cluster.enabled.load(Ordering::Relaxed) {
            let c = &self.cluster;
            header(
                &mut out,
                "tracegate_cluster_backlog_spans",
                "gauge",
                "Spans stored here and not yet in PostgreSQL.",
            );
            let _ = writeln!(out, "tracegate_cluster_backlog_spans {}", c.backlog_spans.load(Ordering::Relaxed));
            for (metric, help, value) in [
                ("tracegate_cluster_synced_spans_total", "Spans this instance wrote to PostgreSQL.", &c.synced_spans),
                ("tracegate_cluster_sync_errors_total", "Failed attempts to ship spans to PostgreSQL.", &c.sync_errors),
                (
                    "tracegate_cluster_deletions_applied_total",
                    "Deletes asked of any instance that this instance applied to its local store.",
                    &c.deletions_applied,
                ),
                ("tracegate_redis_errors_total", "Failed Redis operations of the shared limits.", &*c.redis_errors),
            ] {
                counter(&mut out, metric, help, value.load(Ordering::Relaxed));
            }
        }
        {
            let exporters = self.exporters.lock().unwrap_or_else(|p| p.into_inner());
            for (metric, kind, help, get) in [
                ("tracegate_export_sent_spans_total", "counter", "Spans delivered by an exporter.", 0),
                (
                    "tracegate_export_failed_spans_total",
                    "counter",
                    "Spans an exporter gave up on (non-retryable answer).",
                    1,
                ),
                (
                    "tracegate_export_retries_total",
                    "counter",
                    "Export attempts retried after 429/502/503/504 or a connection error.",
                    2,
                ),
                ("tracegate_export_backlog_spans", "gauge", "Stored spans an exporter has not delivered yet.", 3),
            ] {
                header(&mut out, metric, kind, help);
                for (name, c) in exporters.iter() {
                    let value =
                        [&c.sent_spans, &c.failed_spans, &c.retries, &c.backlog_spans][get].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{metric}{{exporter=\"{name}\"}} {value}");
                }
            }
        }
        let l = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        let labelled: Vec<(Labels, &Series)> = l.series.values().map(|s| (s.labels(), s)).collect();
        header(&mut out, "tracegate_requests_total", "counter", "Proxied calls by provider, model, team and status.");
        for (labels, series) in &labelled {
            for (status, v) in &series.requests {
                let mut with_status = labels.clone();
                with_status.push(("status", status.to_string()));
                let _ = writeln!(out, "tracegate_requests_total{} {v}", render_labels(&with_status, None));
            }
        }
        let durations: Vec<(&Labels, &Histogram)> = labelled.iter().map(|(l, s)| (l, &s.duration)).collect();
        histogram(&mut out, "tracegate_request_duration_seconds", "Duration of proxied calls.", &durations);
        let ttft: Vec<(&Labels, &Histogram)> =
            labelled.iter().filter_map(|(l, s)| s.ttft.as_ref().map(|h| (l, h))).collect();
        histogram(&mut out, "tracegate_ttft_seconds", "Time to first token of streamed calls.", &ttft);
        header(
            &mut out,
            "tracegate_tokens_total",
            "counter",
            "Tokens by provider, model, team and type (input/output).",
        );
        for (labels, series) in &labelled {
            for (kind, total) in [("input", series.input_tokens), ("output", series.output_tokens)] {
                if let Some(v) = total {
                    let mut with_type = labels.clone();
                    with_type.push(("type", kind.to_string()));
                    let _ = writeln!(out, "tracegate_tokens_total{} {v}", render_labels(&with_type, None));
                }
            }
        }
        header(&mut out, "tracegate_cost_usd_total", "counter", "Cost in USD by provider, model and team.");
        for (labels, series) in &labelled {
            if let Some(v) = series.cost_usd {
                let _ = writeln!(out, "tracegate_cost_usd_total{} {v}", render_labels(labels, None));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, series: &[(&Labels, &Histogram)]) {
    header(out, name, "histogram", help);
    for (labels, h) in series {
        for (bound, count) in SECONDS_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{} {count}", render_labels(labels, Some(&bound.to_string())));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", render_labels(labels, Some("+Inf")), h.count);
        let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", render_labels(labels, None), h.count);
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut out = String::from("{");
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let labels: Labels = vec![("model", "a\"b\\c\nd".to_string())];
        assert_eq!(render_labels(&labels, Some("0.5")), "{model=\"a\\\"b\\\\c\\nd\",le=\"0.5\"}");
    }

    #[test]
    fn client_chosen_labels_are_bounded() {
        let metrics = Metrics::default();
        let mut span: Span = serde_json::from_value(serde_json::json!({
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "parent_span_id": null,
            "name": "chat", "kind": "llm", "start_time_unix_nano": 1, "duration_ms": 1.0, "ttft_ms": null,
            "provider": "openai", "operation": "chat", "method": "POST", "path": "/v1/chat/completions",
            "status_code": 200, "status": "ok", "request_model": "m", "response_model": null, "stream": false,
            "input_tokens": 1, "output_tokens": 1, "usage_source": "reported", "cost_usd": null,
            "team": null, "user": null, "session": null, "error": null
        }))
        .unwrap();
        for i in 0..(MAX_LABEL_COMBINATIONS + 50) {
            span.request_model = Some(format!("model-{i}"));
            metrics.observe_call(&span);
        }
        let text = metrics.render();
        let series = text.lines().filter(|l| l.starts_with("tracegate_requests_total{")).count();
        assert_eq!(series, MAX_LABEL_COMBINATIONS + 1);
        assert!(text
            .contains("tracegate_requests_total{provider=\"openai\",model=\"other\",team=\"other\",status=\"ok\"} 50"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.02);
        h.observe(3.0);
        assert_eq!(h.counts[1], 0);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[SECONDS_BUCKETS.len() - 1], 2);
        assert_eq!(h.count, 2);
    }
}
