//! The admin listener: health, the trace and usage API, export and deletes, Prometheus
//! metrics, OTLP ingest and the web UI.
//!
//! Endpoints and JSON fields follow SPEC.md. Store reads run on tokio's blocking pool so a
//! long listing never stalls the runtime. When `[admin] token` is set, everything but
//! `/healthz` needs `Authorization: Bearer <token>`, compared in constant time.
//!
//! It reads the store — or, with `[cluster] postgres`, the shared store in PostgreSQL
//! (`cluster::postgres::read`), so every instance shows the calls of all — and hands what must
//! be written (ingested OTLP spans, deletes) to the recorder's queue: it imports `store`,
//! `record` (queue and metrics), `cluster` (the shared reads), `formats`, `config` and `model`;
//! never `proxy`, `upstream` or `export`. `usage_report` groups the ledger for `/api/usage`
//! and `tracegate usage`; `ui` serves the page; `filters` parses the finding filters of every
//! endpoint that takes them; `jsonl` streams `/api/export`; `delete` serves the `DELETE`s
//! (chosen here, written by the recorder).

mod delete;
pub mod filters;
pub mod jsonl;
pub mod ui;
pub mod usage_report;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

use crate::admin::usage_report::{self as usage, GroupBy};
use crate::cluster::postgres::read as shared;
use crate::formats::{otlp, percent};
use crate::model::ids::{SpanId, TraceId};
use crate::model::span::SpanBodies;
use crate::model::span::SpanWrite;
use crate::record::metrics::Metrics;
use crate::record::RecorderHandle;
use crate::store::Store;

/// Largest OTLP request accepted (after decompression too).
const MAX_INGEST_BYTES: usize = 16 << 20;

/// The body of every buffered answer.
pub type AdminBody = Full<Bytes>;
/// What the listener serves: a buffered answer, or an export's stream (`jsonl`).
pub type ServedBody = http_body_util::Either<AdminBody, jsonl::ExportBody>;

/// A buffered answer as served.
fn served(response: Response<AdminBody>) -> Response<ServedBody> {
    response.map(http_body_util::Either::Left)
}

/// State shared by admin requests.
pub struct Admin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Ingested spans go through the recorder, the store's one writer.
    recorder: RecorderHandle,
    /// SHA-256 of the admin token, when one is required.
    token_digest: Option<[u8; 32]>,
    /// `[cluster] postgres`: reads come from the shared store.
    shared: Option<deadpool_postgres::Pool>,
}

impl Admin {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, recorder: RecorderHandle, token: Option<&str>) -> Self {
        Admin {
            store,
            metrics,
            recorder,
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            shared: None,
        }
    }

    /// Reads from PostgreSQL, the calls of every instance, instead of the local store.
    pub fn reading_shared(mut self, pool: deadpool_postgres::Pool) -> Self {
        self.shared = Some(pool);
        self
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ServedBody>, Infallible> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if path == "/healthz" {
            return Ok(served(json_response(StatusCode::OK, &json!({"status": "ok"}))));
        }
        // OTLP ingest is a collector endpoint: apps send spans without the admin token (SPEC).
        if path == "/v1/traces" {
            return Ok(served(self.ingest(req).await));
        }
        // The UI's static files hold no data; every API call behind them checks the token.
        if let Some(asset) = ui::asset(&path) {
            return Ok(served(asset));
        }
        if path == "/ui/login" && req.method() == Method::POST {
            return Ok(served(self.login(req).await));
        }
        if !self.authorized(req.headers()) {
            let mut response =
                error(StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer <token>)");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(served(response));
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        if req.method() == Method::DELETE {
            let target = delete::Target {
                store: self.store.clone(),
                recorder: self.recorder.clone(),
                shared: self.shared.clone(),
            };
            return Ok(served(match segments.as_slice() {
                ["api", "traces", id] => delete::delete_trace(target, id, &query).await,
                ["api", "spans"] => delete::delete_spans(target, &query).await,
                _ => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "DELETE is for /api/traces/{trace_id} and /api/spans; everything else takes GET",
                ),
            }));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(served(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET (and DELETE of traces and spans) is supported here",
            )));
        }
        if segments.as_slice() == ["api", "export"] {
            return Ok(match &self.shared {
                Some(pool) => jsonl::export_shared(pool.clone(), &query),
                None => jsonl::export(self.store.clone(), &query),
            });
        }
        let response = match segments.as_slice() {
            ["metrics"] => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                r
            }
            ["api", "traces"] => self.list("/api/traces", &query).await,
            ["api", "sessions"] => self.list("/api/sessions", &query).await,
            ["api", "usage"] => self.usage(&query).await,
            ["api", "traces", id] => self.get_trace(id).await,
            ["api", "traces", id, "spans", span] => self.get_span(id, span).await,
            ["api", "spans"] => error(StatusCode::METHOD_NOT_ALLOWED, "/api/spans takes DELETE"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        };
        Ok(served(response))
    }

    /// `POST /v1/traces`: OTLP/HTTP ingest, protobuf or JSON, optionally gzip-compressed.
    async fn ingest(&self, req: Request<Incoming>) -> Response<AdminBody> {
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "OTLP ingest takes POST");
        }
        let content_type =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let json = content_type.starts_with("application/json");
        if !json
            && !content_type.starts_with("application/x-protobuf")
            && !content_type.starts_with("application/protobuf")
        {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "use application/x-protobuf or application/json");
        }
        let gzip =
            req.headers().get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = match Limited::new(req.into_body(), MAX_INGEST_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "OTLP request too large or cut short"),
        };
        let body = if gzip {
            let mut out = Vec::new();
            let reader = flate2::read::MultiGzDecoder::new(&body[..]);
            if std::io::Read::read_to_end(&mut std::io::Read::take(reader, MAX_INGEST_BYTES as u64), &mut out).is_err()
            {
                return error(StatusCode::BAD_REQUEST, "invalid gzip body");
            }
            Bytes::from(out)
        } else {
            body
        };
        let request: Result<ExportTraceServiceRequest, String> = if json {
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        } else {
            ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not an OTLP ExportTraceServiceRequest: {e}")),
        };
        let (spans, rejected) = otlp::from_otlp(request);
        let accepted = spans.len() as u64;
        let writes = spans.into_iter().map(|span| SpanWrite { span, bodies: None }).collect();
        if accepted > 0 && !self.recorder.submit_ingested(writes) {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "span queue full; retry later");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        self.metrics.spans_ingested.fetch_add(accepted, std::sync::atomic::Ordering::Relaxed);
        let response = ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: "spans with invalid trace or span ids were rejected".into(),
            }),
        };
        let (bytes, content_type) = if json {
            (serde_json::to_vec(&response).unwrap_or_default(), "application/json")
        } else {
            (response.encode_to_vec(), "application/x-protobuf")
        };
        let mut r = Response::new(Full::new(Bytes::from(bytes)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    }

    /// The admin token from `Authorization: Bearer` or the web UI's cookie, compared in
    /// constant time (as hashes, so the length does not leak either).
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        if self.token_digest.is_none() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let presented = bearer.map(str::to_string).or_else(|| ui::session_cookie(headers)).unwrap_or_default();
        self.token_matches(&presented)
    }

    fn token_matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.token_digest else { return true };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(digest.ct_eq(expected))
    }

    /// `POST /ui/login` with a form `token=...`: sets the UI's session cookie.
    async fn login(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "login form too large"),
        };
        let form = parse_query(&String::from_utf8_lossy(&body));
        let token = form.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str()).unwrap_or("");
        if self.token_digest.is_none() || !self.token_matches(token) {
            return error(StatusCode::UNAUTHORIZED, "wrong admin token");
        }
        ui::login_redirect(token)
    }

    /// `GET /api/traces` and `GET /api/sessions`: a page of traces or sessions with a span
    /// matching every filter, newest first.
    async fn list(&self, endpoint: &'static str, query: &str) -> Response<AdminBody> {
        let q = match filters::parse(parse_query(query), endpoint, true, &[]) {
            Ok((q, _)) => q,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        if let Some(pool) = &self.shared {
            let page = match endpoint {
                "/api/sessions" => shared::find_sessions(pool, &q).await.map(
                    |page| json!({ "sessions": page.sessions, "next_cursor": page.next_cursor.map(|c| c.encode()) }),
                ),
                _ => shared::find_traces(pool, &q)
                    .await
                    .map(|page| json!({ "traces": page.traces, "next_cursor": page.next_cursor.map(|c| c.encode()) })),
            };
            return match page {
                Ok(page) => json_response(StatusCode::OK, &page),
                Err(e) => shared_unavailable(&e),
            };
        }
        let store = self.store.clone();
        let page = tokio::task::spawn_blocking(move || match endpoint {
            "/api/sessions" => store
                .find_sessions(&q)
                .map(|page| json!({ "sessions": page.sessions, "next_cursor": page.next_cursor.map(|c| c.encode()) })),
            _ => store
                .find_traces(&q)
                .map(|page| json!({ "traces": page.traces, "next_cursor": page.next_cursor.map(|c| c.encode()) })),
        });
        match page.await {
            Ok(Ok(page)) => json_response(StatusCode::OK, &page),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// `from`/`to` are inclusive UTC days (default: the last 30 days up to today).
    async fn usage(&self, query: &str) -> Response<AdminBody> {
        let today = (crate::model::clock::unix_nanos() / 86_400_000_000_000) as i64;
        let (mut from, mut to, mut group_by) = (today - 29, today, vec![GroupBy::Team]);
        let (mut team, mut user) = (None, None);
        for (key, value) in parse_query(query) {
            match key.as_str() {
                // Only one team's or one user's rows (a user's page needs no other user's).
                "team" if !value.is_empty() => team = Some(value),
                "user" if !value.is_empty() => user = Some(value),
                "team" | "user" => {}
                "from" | "to" => match crate::model::clock::parse_day(&value) {
                    Some(day) if key == "from" => from = day,
                    Some(day) => to = day,
                    None => return error(StatusCode::BAD_REQUEST, &format!("{key} must be a day like 2026-11-24")),
                },
                "group_by" => match GroupBy::parse_list(&value) {
                    Ok(g) => group_by = g,
                    Err(e) => return error(StatusCode::BAD_REQUEST, &e),
                },
                other => return unknown_parameter("/api/usage", other, USAGE_PARAMETERS),
            }
        }
        if from > to || from < 0 {
            return error(StatusCode::BAD_REQUEST, "from must not be after to");
        }
        let (from, to) = (from as u32, to.min(u32::MAX as i64) as u32);
        let cells = match &self.shared {
            Some(pool) => match shared::ledger(pool, from, to).await {
                Ok(cells) => Ok(Ok(cells)),
                Err(e) => return shared_unavailable(&e),
            },
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.ledger(from, to)).await
            }
        };
        match cells {
            Ok(Ok(mut cells)) => {
                cells.retain(|(key, _)| {
                    team.as_ref().is_none_or(|t| *t == key.team) && user.as_ref().is_none_or(|u| *u == key.user)
                });
                json_response(StatusCode::OK, &usage::report(&cells, &group_by))
            }
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn get_trace(&self, id: &str) -> Response<AdminBody> {
        let Some(trace_id) = TraceId::from_hex(id) else {
            return error(StatusCode::BAD_REQUEST, "trace id must be 32 hex digits");
        };
        if let Some(pool) = &self.shared {
            return match shared::trace_spans(pool, &trace_id).await {
                Ok(spans) if spans.is_empty() => error(StatusCode::NOT_FOUND, "unknown trace"),
                Ok(spans) => json_response(StatusCode::OK, &json!({ "trace_id": trace_id, "spans": spans })),
                Err(e) => shared_unavailable(&e),
            };
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.trace_spans(&trace_id)).await {
            Ok(Ok(spans)) if spans.is_empty() => error(StatusCode::NOT_FOUND, "unknown trace"),
            Ok(Ok(spans)) => json_response(StatusCode::OK, &json!({ "trace_id": trace_id, "spans": spans })),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn get_span(&self, id: &str, span: &str) -> Response<AdminBody> {
        let (Some(trace_id), Some(span_id)) = (TraceId::from_hex(id), SpanId::from_hex(span)) else {
            return error(StatusCode::BAD_REQUEST, "ids must be 32 (trace) and 16 (span) hex digits");
        };
        if let Some(pool) = &self.shared {
            return match shared::span(pool, &trace_id, &span_id).await {
                Ok(Some((span, bodies))) => json_response(StatusCode::OK, &span_with_bodies(&span, bodies)),
                Ok(None) => error(StatusCode::NOT_FOUND, "unknown span"),
                Err(e) => shared_unavailable(&e),
            };
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.span(&trace_id, &span_id)).await {
            Ok(Ok(Some((span, bodies)))) => json_response(StatusCode::OK, &span_with_bodies(&span, bodies)),
            Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "unknown span"),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

/// A span's JSON plus `request_body` and `response_body` (parsed JSON when the body is JSON,
/// else the text as captured, e.g. a raw SSE stream).
fn span_with_bodies(span: &crate::model::span::Span, bodies: SpanBodies) -> Value {
    let mut value = serde_json::to_value(span).unwrap_or(Value::Null);
    let as_value = |text: Option<String>| match text {
        None => Value::Null,
        Some(t) => serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t)),
    };
    if let Value::Object(map) = &mut value {
        map.insert("request_body".into(), as_value(bodies.request_body));
        map.insert("response_body".into(), as_value(bodies.response_body));
        map.insert("bodies_truncated".into(), Value::Bool(bodies.truncated));
    }
    value
}

fn json_response(status: StatusCode, value: &Value) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 503 while the shared store cannot be read (the proxy goes on recording locally).
fn shared_unavailable(e: &shared::ReadError) -> Response<AdminBody> {
    tracing::warn!(error = %e, "admin read from PostgreSQL failed");
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json_response(status, &json!({ "error": { "message": message } }))
}

/// The query parameters `/api/usage` accepts.
const USAGE_PARAMETERS: &[&str] = &["from", "to", "group_by", "team", "user"];

/// 400 for a parameter an endpoint does not know: a filter that silently matched everything
/// would answer a question nobody asked.
fn unknown_parameter(endpoint: &str, name: &str, accepted: &[&str]) -> Response<AdminBody> {
    let message = format!("{endpoint} has no parameter {name:?}; it accepts {}", accepted.join(", "));
    error(StatusCode::BAD_REQUEST, &message)
}

/// `a=1&b=x%20y` → pairs, percent- and plus-decoded.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent::decode(k, true), percent::decode(v, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("team=a%20b&model=gpt-4o&x=1+2&bad=%zz&end=%4");
        assert_eq!(q[0], ("team".into(), "a b".into()));
        assert_eq!(q[2], ("x".into(), "1 2".into()));
        assert_eq!(q[3], ("bad".into(), "%zz".into()));
        assert_eq!(q[4], ("end".into(), "%4".into()));
    }
}
