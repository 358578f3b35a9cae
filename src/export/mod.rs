//! Export to existing tracing engines: OTLP/HTTP (Jaeger v2, Tempo, any OpenTelemetry
//! collector) and Zipkin v2.
//!
//! The store is the exporter's queue. Each exporter keeps a durable cursor — the last span
//! segment it delivered — and sends the segments after it, oldest first, in batches of whole
//! segments. The cursor moves only after the collector accepted a batch, and it is written by
//! the recorder thread (the one sled writer), so a restart or a collector outage resumes where
//! delivery stopped: nothing is lost, and nothing that was acknowledged is sent again.
//!
//! Retries: 429, 502, 503, 504 and connection errors are retried with exponential backoff
//! (honouring `Retry-After`); any other answer is a permanent failure for that batch, counted
//! in `tracegate_export_failed_spans_total` and logged, and delivery moves on.
//!
//! It imports `store` (reads), `record` (the queue, for cursors; the metrics), `upstream` (the
//! pooled HTTPS client), `formats` (OTLP, Zipkin), `config` and `model`; never `proxy` or `admin`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::config::{Config, ExportConfig, Provider};
use crate::formats::{otlp, zipkin};
use crate::model::span::Span;
use crate::record::metrics::{ExportCounters, Metrics};
use crate::record::RecorderHandle;
use crate::store::Store;
use crate::upstream;

/// Spans gathered into one export request (whole segments, so it may be a little more).
const MAX_BATCH_SPANS: usize = 1024;
/// How often an idle exporter looks for new spans.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most often the backlog gauge is recounted from the store while delivering.
const BACKLOG_RECOUNT: Duration = Duration::from_secs(2);

type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    OtlpProtobuf,
    OtlpJson,
    Zipkin,
}

/// What the exporters know about each provider, for `server.address` and the provider name.
#[derive(Clone)]
struct ProviderInfo {
    host: String,
    port: Option<u16>,
    api: &'static str,
}

struct Exporter {
    name: &'static str,
    endpoint: Uri,
    format: Format,
    settings: ExportConfig,
    providers: Arc<HashMap<String, ProviderInfo>>,
    store: Arc<Store>,
    recorder: RecorderHandle,
    counters: Arc<ExportCounters>,
    client: ExportClient,
}

/// Starts one task per configured exporter.
pub fn start(config: &Config, store: Arc<Store>, recorder: RecorderHandle, metrics: &Metrics) -> Vec<JoinHandle<()>> {
    let providers: HashMap<String, ProviderInfo> = config.providers.iter().map(|p| (p.name.clone(), info(p))).collect();
    let providers = Arc::new(providers);
    let mut targets = Vec::new();
    if let Some(endpoint) = &config.export.otlp_endpoint {
        let format = if config.export.otlp_json { Format::OtlpJson } else { Format::OtlpProtobuf };
        targets.push(("otlp", endpoint.clone(), format));
    }
    if let Some(endpoint) = &config.export.zipkin_endpoint {
        targets.push(("zipkin", endpoint.clone(), Format::Zipkin));
    }
    let tls = upstream::tls_config(&upstream::root_store(), &[]);
    targets
        .into_iter()
        .map(|(name, endpoint, format)| {
            let exporter = Exporter {
                name,
                endpoint,
                format,
                settings: config.export.clone(),
                providers: providers.clone(),
                store: store.clone(),
                recorder: recorder.clone(),
                counters: metrics.exporter(name),
                client: upstream::build_client(Duration::from_secs(10), tls.clone()),
            };
            tokio::spawn(exporter.run())
        })
        .collect()
}

fn info(p: &Provider) -> ProviderInfo {
    ProviderInfo {
        host: p.upstream.authority.host().to_string(),
        port: p.upstream.authority.port_u16(),
        api: p.api.as_str(),
    }
}

/// How one delivery attempt ended.
enum Attempt {
    Delivered,
    Retry(Option<Duration>),
    Failed(String),
}

impl Exporter {
    async fn run(self) {
        let mut cursor = match self.blocking(move |store, name| store.export_cursor(name)).await {
            Some(c) => c,
            None => return,
        };
        tracing::info!(exporter = self.name, endpoint = %self.endpoint, cursor, "exporter started");
        let mut last_backlog_count = tokio::time::Instant::now() - BACKLOG_RECOUNT;
        loop {
            let batch = self.blocking(move |store, _| store.span_segments_after(cursor, MAX_BATCH_SPANS)).await;
            let Some(batch) = batch.filter(|b| !b.is_empty()) else {
                // Nothing after the cursor: the backlog is empty, no need to count it.
                self.counters.backlog_spans.store(0, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            };
            let last_seq = batch.last().map(|(seq, _)| *seq).unwrap_or(cursor);
            let spans: Vec<Span> = batch.into_iter().flat_map(|(_, spans)| spans).collect();
            let mut n = spans.len() as u64;
            if n == 0 {
                // Segments whose spans were all deleted: nothing to send, only the cursor moves.
                cursor = last_seq;
                let recorder = self.recorder.clone();
                let name = self.name;
                let _ = tokio::task::spawn_blocking(move || recorder.set_export_cursor(name, last_seq)).await;
                continue;
            }
            let mut body = self.encode(&spans);
            let mut backoff = FIRST_BACKOFF;
            loop {
                match self.send(body.clone()).await {
                    Attempt::Delivered => {
                        self.counters.sent_spans.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    Attempt::Failed(why) => {
                        self.counters.failed_spans.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(exporter = self.name, spans = n, error = %why, "export rejected; these spans are not retried");
                        break;
                    }
                    Attempt::Retry(retry_after) => {
                        self.counters.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.update_backlog(cursor).await;
                        let wait = retry_after.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or(backoff);
                        tracing::warn!(
                            exporter = self.name,
                            wait_ms = wait.as_millis() as u64,
                            "export will be retried"
                        );
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        // Spans deleted while the collector was away are not sent after all.
                        let again =
                            self.blocking(move |store, _| store.span_segments_after(cursor, MAX_BATCH_SPANS)).await;
                        if let Some(again) = again {
                            let spans: Vec<Span> = again
                                .into_iter()
                                .take_while(|(seq, _)| *seq <= last_seq)
                                .flat_map(|(_, s)| s)
                                .collect();
                            if spans.is_empty() {
                                break;
                            }
                            n = spans.len() as u64;
                            body = self.encode(&spans);
                        }
                    }
                }
            }
            cursor = last_seq;
            let recorder = self.recorder.clone();
            let name = self.name;
            let _ = tokio::task::spawn_blocking(move || recorder.set_export_cursor(name, last_seq)).await;
            // Counting the backlog reads every pending segment; while catching up after an
            // outage, do it at most every BACKLOG_RECOUNT and subtract what was sent in between.
            if last_backlog_count.elapsed() >= BACKLOG_RECOUNT {
                self.update_backlog(cursor).await;
                last_backlog_count = tokio::time::Instant::now();
            } else {
                let backlog = &self.counters.backlog_spans;
                let _ = backlog.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |b| Some(b.saturating_sub(n)),
                );
            }
        }
    }

    /// Runs a store read on the blocking pool; `None` (logged) when it failed.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store, &'static str) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        let name = self.name;
        match tokio::task::spawn_blocking(move || read(&store, name)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::error!(exporter = self.name, error = %e, "exporter cannot read the store");
                tokio::time::sleep(POLL_INTERVAL).await;
                None
            }
            Err(_) => None,
        }
    }

    async fn update_backlog(&self, cursor: u64) {
        if let Some(backlog) = self.blocking(move |store, _| store.spans_after(cursor, 10_000)).await {
            self.counters.backlog_spans.store(backlog, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn encode(&self, spans: &[Span]) -> Bytes {
        let raw = match self.format {
            Format::Zipkin => zipkin::encode(spans, &self.settings.service_name),
            Format::OtlpProtobuf | Format::OtlpJson => {
                let otlp_spans = spans
                    .iter()
                    .map(|s| {
                        let info = s.provider.as_ref().and_then(|p| self.providers.get(p));
                        otlp::to_otlp(s, info.map(|i| (i.host.as_str(), i.port)), info.map(|i| i.api))
                    })
                    .collect();
                let request = otlp::export_request(&self.settings.service_name, otlp_spans);
                if self.format == Format::OtlpJson {
                    serde_json::to_vec(&request).expect("OTLP requests serialize")
                } else {
                    request.encode_to_vec()
                }
            }
        };
        if self.settings.gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&raw).expect("writing to memory");
            Bytes::from(encoder.finish().expect("writing to memory"))
        } else {
            Bytes::from(raw)
        }
    }

    async fn send(&self, body: Bytes) -> Attempt {
        let content_type = match self.format {
            Format::OtlpProtobuf => "application/x-protobuf",
            Format::OtlpJson | Format::Zipkin => "application/json",
        };
        let mut request = Request::builder().method(Method::POST).uri(self.endpoint.clone());
        let headers = request.headers_mut().expect("a fresh builder has headers");
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.settings.gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &self.settings.headers {
            headers.insert(name.clone(), value.clone());
        }
        let request = request.body(Full::new(body)).expect("a valid request");
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(exporter = self.name, error = %e, "collector unreachable");
                return Attempt::Retry(None);
            }
            Err(_) => return Attempt::Retry(None),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match status {
            s if s.is_success() => Attempt::Delivered,
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Attempt::Retry(retry_after),
            s => Attempt::Failed(format!("{s}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]))),
        }
    }
}
