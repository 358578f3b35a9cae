//! The request path: every proxied call passes these phases in order.
//!
//! 1. **admit** — refuse CONNECT and absolute-form targets (we never go where a client says);
//! 2. **route** — pick the configured provider by path prefix (404 when none);
//! 3. **trace** — read the caller's trace context, mint this call's span id;
//! 4. **upstream request** — strip hop-by-hop and `x-tracegate-*` headers, set `traceparent`,
//!    stream the body through a [`RequestTee`];
//! 5. **response** — relay status and headers, add `x-tracegate-trace-id`/`-span-id`, stream the
//!    body through a [`ResponseTee`] that finishes the call when the body ends.
//!
//! Nothing on this path parses a body, counts tokens or touches the store; it only forwards
//! and copies bytes into a bounded capture (see ARCHITECTURE.md, "invariants").

pub mod body_tee;
pub mod call;
pub mod errors;
pub mod routing;
pub mod usage_injection;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::proxy::body_tee::{RequestShared, RequestTee, ResponseTee};
use crate::policy::budget::{Budgets, Estimate, Remaining, DEFAULT_MAX_OUTPUT_TOKENS};
use crate::proxy::call::{CallContext, Outcome, PendingCall, ResponseFacts};
use crate::model::capture::Capture;
use crate::model::clock::unix_nanos;
use crate::config::{Config, Provider};
use crate::proxy::errors::ProxyError;
use crate::model::pricing::{self, BilledTokens};
use crate::formats::providers::Api;
use crate::formats::providers::{self, Operation};
use crate::record::RecorderHandle;
use crate::proxy::routing::Router;
use crate::policy::teams::{swap_in_provider_key, TeamDirectory};
use crate::formats::trace_context::{self, Propagation, SpanId, TraceId};
use crate::upstream::{build_client, root_store, tls_config, UpstreamBody, UpstreamClient};
use crate::upstream::h1::{H1Error, H1Upstream};

/// What the proxy answers with: a relayed upstream body or a small body of its own.
pub type ProxyBody = Either<ResponseTee, Full<Bytes>>;

const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-tracegate-trace-id");
const SPAN_ID_HEADER: HeaderName = HeaderName::from_static("x-tracegate-span-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const SESSION_HEADER: &str = "x-tracegate-session";
const TEAM_HEADER: &str = "x-tracegate-team";
const TRACEGATE_HEADER_PREFIX: &str = "x-tracegate-";

/// How long a client may take to start sending its request body.
const REQUEST_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus `host`,
/// which the client sets from the upstream URL.
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

/// The proxy service shared by every connection.
pub struct Proxy {
    router: Router,
    /// One pooled hyper client per distinct (connect timeout, private CA) of the HTTPS providers.
    clients: Vec<UpstreamClient>,
    /// How each provider's upstream is reached.
    client_of: Vec<(Arc<Provider>, UpstreamRoute)>,
    recorder: RecorderHandle,
    max_capture_bytes: usize,
    max_request_bytes: u64,
    max_header_bytes: usize,
    teams: TeamDirectory,
    team_names: Vec<String>,
    require_team_key: bool,
    budgets: Arc<Budgets>,
    pricing: std::collections::BTreeMap<String, crate::config::Price>,
}

impl Proxy {
    pub fn new(config: &Config, recorder: RecorderHandle, budgets: Arc<Budgets>) -> Self {
        let roots = root_store();
        let mut keys: Vec<(std::time::Duration, &[rustls::pki_types::CertificateDer<'static>])> = Vec::new();
        let mut clients = Vec::new();
        let mut client_of = Vec::new();
        for provider in &config.providers {
            if provider.upstream.scheme == http::uri::Scheme::HTTP {
                let route = UpstreamRoute::Direct(H1Upstream::new(&provider.upstream, provider.connect_timeout));
                client_of.push((provider.clone(), route));
                continue;
            }
            let key = (provider.connect_timeout, provider.ca_certs.as_slice());
            let index = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    clients.push(build_client(provider.connect_timeout, tls_config(&roots, &provider.ca_certs)));
                    clients.len() - 1
                }
            };
            client_of.push((provider.clone(), UpstreamRoute::Pooled(index)));
        }
        Proxy {
            router: Router::new(config),
            clients,
            client_of,
            recorder,
            max_capture_bytes: config.storage.max_capture_bytes,
            max_request_bytes: config.server.max_request_bytes,
            max_header_bytes: config.server.max_header_bytes,
            teams: TeamDirectory::new(&config.teams),
            team_names: config.teams.iter().map(|t| t.name.clone()).collect(),
            require_team_key: config.server.require_team_key,
            budgets,
            pricing: config.pricing.clone(),
        }
    }

    /// Handles one request; never fails (errors become provider-shaped responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let start_time_unix_nano = unix_nanos();

        // Phase 1: admit.
        if req.method() == Method::CONNECT {
            return Ok(own_response(ProxyError::connect_method(), Api::Openai));
        }
        if req.version() < Version::HTTP_2 && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
            return Ok(own_response(ProxyError::absolute_form(), Api::Openai));
        }

        if header_bytes(req.headers()) > self.max_header_bytes {
            let api = self.router.route(req.uri().path()).map_or(Api::Openai, |r| r.provider.api);
            return Ok(own_response(ProxyError::headers_too_large(self.max_header_bytes), api));
        }
        let path = req.uri().path();
        if has_dot_segment_or_encoded_slash(path) {
            return Ok(own_response(ProxyError::unsafe_path(), Api::Openai));
        }

        // Phase 2: route.
        let Some(route) = self.router.route(path) else {
            tracing::debug!(path, "no route");
            return Ok(own_response(ProxyError::no_route(path), Api::Openai));
        };
        let provider = route.provider.clone();
        let upstream_uri = match upstream_uri(&provider, route.upstream_path, req.uri().query()) {
            Ok(uri) => uri,
            Err(e) => return Ok(own_response(e, provider.api)),
        };
        let upstream_path =
            if route.upstream_path.is_empty() { "/".to_string() } else { route.upstream_path.to_string() };

        // Phase 3: trace context.
        let (mut parts, body) = req.into_parts();
        let caller = trace_context::extract(&parts.headers);
        let span_id = SpanId::random();
        let (trace_id, parent_span_id, sampled, tracestate, propagation) = match caller {
            Some(c) => (c.trace_id, c.parent_span_id, c.sampled, c.tracestate, Some(c.propagation)),
            None => (TraceId::random(), None, true, None, None),
        };

        // Phase 4: identify the team, then build the upstream request.
        let team_key = self.teams.authenticate(&parts.headers);
        let tracegate_headers = strip_request_headers(&mut parts.headers);
        let team_index = match &team_key {
            Some(m) => Some(m.team_index),
            None => tracegate_headers
                .iter()
                .find(|(name, _)| name.as_str() == TEAM_HEADER)
                .and_then(|(_, v)| v.to_str().ok())
                .and_then(|team| self.team_names.iter().position(|n| n == team)),
        };
        let limited = team_index.is_some_and(|i| self.budgets.is_limited(i));
        let session =
            tracegate_headers.iter().find(|(name, _)| name.as_str() == SESSION_HEADER).map(|(_, value)| value.clone());
        parts.headers.insert(TRACEPARENT, trace_context::traceparent_value(trace_id, span_id, sampled));
        if let Some(state) = tracestate {
            parts.headers.insert(TRACESTATE, state);
        }
        if matches!(propagation, Some(Propagation::B3Single | Propagation::B3Multi)) {
            parts.headers.insert(B3, trace_context::b3_value(trace_id, span_id, sampled));
        }
        let size_hint = content_length(&parts.headers);
        let request_shared = RequestShared::new(Capture::new(self.max_capture_bytes, size_hint));
        let method = parts.method.clone();
        parts.uri = upstream_uri;
        parts.version = Version::HTTP_11;
        let mut body = RequestTee::new(body, request_shared.clone(), started, self.max_request_bytes);

        let mut pending = PendingCall::new(CallContext {
            trace_id,
            span_id,
            parent_span_id,
            provider: provider.clone(),
            method,
            path: upstream_path,
            started,
            start_time_unix_nano,
            tracegate_headers,
            session,
            team_key,
            reservation: None,
            request: request_shared,
            recorder: self.recorder.clone(),
        });

        let may_inject = provider.inject_stream_usage
            && parts.method == Method::POST
            // `/chat/completions` and legacy `/completions` both end so.
            && pending.get().path.ends_with("/completions");
        let read_ahead_limit = if may_inject || limited { usage_injection::MAX_REWRITE_BYTES } else { 1 };
        if size_hint.is_some_and(|len| len > self.max_request_bytes) {
            return Ok(fail(pending.take(), ProxyError::body_too_large(self.max_request_bytes), provider.api));
        }
        match tokio::time::timeout(REQUEST_BODY_TIMEOUT, body.read_ahead(read_ahead_limit)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) if pending.get().request.too_large() => {
                return Ok(fail(pending.take(), ProxyError::body_too_large(self.max_request_bytes), provider.api));
            }
            // The client broke off before sending its body: dropping `pending` records a cancel.
            Ok(Err(_)) => return Ok(own_response(ProxyError::request_body_incomplete(), provider.api)),
            // The client stalled: tell it, and record why.
            Err(_) => return Ok(fail(pending.take(), ProxyError::request_body_incomplete(), provider.api)),
        }
        if self.require_team_key && pending.get().team_key.is_none() {
            return Ok(fail(pending.take(), ProxyError::team_key_required(), provider.api));
        }
        if let Some(matched) = &pending.get().team_key {
            if !swap_in_provider_key(&mut parts.headers, matched, &provider) {
                return Ok(fail(pending.take(), ProxyError::provider_key_missing(&provider.name), provider.api));
            }
        }
        let mut remaining = None;
        if let (Some(team), true) = (team_index, limited) {
            let estimate = self.estimate(&provider, &pending.get().path, &body, size_hint);
            match self.budgets.admit(team, estimate, unix_nanos() / 1_000_000_000) {
                Ok((reservation, left)) => {
                    pending.get_mut().reservation = Some(reservation);
                    remaining = Some(left);
                }
                Err(refused) => {
                    let message = refused.reason.message(&self.team_names[team]);
                    let mut response =
                        fail(pending.take(), ProxyError::limited(message, refused.retry_after_secs), provider.api);
                    limit_headers(response.headers_mut(), &refused.remaining, "x-ratelimit-");
                    return Ok(response);
                }
            }
        }
        let mut injected = false;
        if may_inject {
            if let (ahead, true) = body.read_ahead_bytes() {
                if let Some(rewritten) = usage_injection::inject(ahead) {
                    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                    body.replace_read_ahead(rewritten);
                    injected = true;
                }
            }
        }
        let upstream_req = Request::from_parts(parts, body);
        let exchange = async {
            match self.route_for(&provider) {
                UpstreamRoute::Pooled(index) => match self.clients[*index].request(upstream_req).await {
                    Ok(response) => Ok(response.map(UpstreamBody::Left)),
                    Err(err) => Err(classify_client_error(&provider, &err)),
                },
                UpstreamRoute::Direct(upstream) => match upstream.send(upstream_req).await {
                    Ok(response) => Ok(response.map(UpstreamBody::Right)),
                    Err(err) => Err(classify_h1_error(&provider, &err)),
                },
            }
        };
        let result = tokio::time::timeout(provider.response_timeout, exchange).await;

        // Phase 5: response.
        let call = pending.take();
        let upstream_response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(_)) if call.request.too_large() => {
                return Ok(fail(call, ProxyError::body_too_large(self.max_request_bytes), provider.api));
            }
            Ok(Err(_)) if call.request.client_aborted() => {
                // The client broke off its upload; the upstream is not to blame.
                call.finish(ResponseFacts::none(), Outcome::Cancelled);
                return Ok(own_response(ProxyError::request_body_incomplete(), provider.api));
            }
            Ok(Err(error)) => {
                tracing::warn!(provider = %provider.name, error = %error, "upstream request failed");
                return Ok(fail(call, error, provider.api));
            }
            Err(_elapsed) => {
                let error =
                    ProxyError::upstream_timeout(&provider.name, "no response headers within the response timeout");
                tracing::warn!(provider = %provider.name, "upstream response timeout");
                return Ok(fail(call, error, provider.api));
            }
        };

        let (mut parts, body) = upstream_response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let is_sse = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            let ct = ct.trim_start().as_bytes();
            ct.get(..17).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"text/event-stream"))
        });
        let encoding = parts.headers.get(header::CONTENT_ENCODING).cloned();
        let capture = Capture::new(self.max_capture_bytes, content_length(&parts.headers));
        insert_ids(&mut parts.headers, trace_id, span_id);
        parts.version = Version::HTTP_11;
        let status = parts.status.as_u16();
        if let Some(left) = &remaining {
            // The provider's own x-ratelimit-* headers stay as they are; ours are prefixed.
            limit_headers(&mut parts.headers, left, "x-tracegate-ratelimit-");
        }
        let mut body = ResponseTee::new(body, call, capture, status, is_sse, encoding);
        if injected && is_sse && parts.status.is_success() {
            // The client must not see what asking for usage added (and its length changes).
            parts.headers.remove(header::CONTENT_LENGTH);
            body = body.strip_injected_usage();
        }
        Ok(Response::from_parts(parts, Either::Left(body)))
    }
}

impl Proxy {
    /// A deliberately high estimate of what a call will use, reserved against its team's
    /// budget: input ≈ body bytes / 3, output = `max_tokens` or a default, at the model's price.
    fn estimate(&self, provider: &Provider, path: &str, body: &RequestTee, content_length: Option<u64>) -> Estimate {
        let operation = providers::operation_for(provider.api, path);
        let (ahead, whole) = body.read_ahead_bytes();
        let facts = providers::parse_request(provider.api, &operation, ahead);
        let body_len = if whole { ahead.len() as u64 } else { content_length.unwrap_or(ahead.len() as u64) };
        let input = body_len / 3 + 1;
        let output = match operation {
            Operation::Embeddings => 0,
            _ => facts.max_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        };
        let cost_usd = facts
            .model
            .as_deref()
            .and_then(|m| pricing::price_for(&self.pricing, m))
            .map(|price| {
                pricing::cost_usd(
                    price,
                    BilledTokens { input_tokens: input, output_tokens: output, ..Default::default() },
                )
            })
            .unwrap_or(0.0);
        Estimate { cost_usd, tokens: input + output }
    }

    fn route_for(&self, provider: &Arc<Provider>) -> &UpstreamRoute {
        let (_, route) = self
            .client_of
            .iter()
            .find(|(p, _)| Arc::ptr_eq(p, provider))
            .expect("a client exists for every configured provider");
        route
    }
}

/// How a provider's upstream is reached.
enum UpstreamRoute {
    /// hyper's pooled client (HTTPS: ALPN picks HTTP/2 or HTTP/1.1); an index into `clients`.
    Pooled(usize),
    /// The lean HTTP/1.1 client of a plain `http://` upstream.
    Direct(H1Upstream),
}

/// `{prefix}limit-requests`, `remaining-requests`, `limit-tokens`, `remaining-tokens`,
/// `reset-requests`, and (tracegate's own) `x-tracegate-budget-remaining-usd`.
fn limit_headers(headers: &mut HeaderMap, left: &Remaining, prefix: &str) {
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
            headers.insert(HeaderName::from_static("x-tracegate-budget-remaining-usd"), value);
        }
    }
}

/// Records a failed call and answers the client with a provider-shaped error.
fn fail(call: CallContext, error: ProxyError, api: Api) -> Response<ProxyBody> {
    let (trace_id, span_id) = (call.trace_id, call.span_id);
    let facts = ResponseFacts { status_code: Some(error.status.as_u16()), ..ResponseFacts::none() };
    call.finish(facts, Outcome::Failed(error.message.clone()));
    let mut response = own_response(error, api);
    insert_ids(response.headers_mut(), trace_id, span_id);
    response
}

fn own_response(error: ProxyError, api: Api) -> Response<ProxyBody> {
    error.to_response(api).map(Either::Right)
}

fn insert_ids(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId) {
    let mut trace_hex = [0u8; 32];
    trace_id.write_hex(&mut trace_hex);
    let mut span_hex = [0u8; 16];
    span_id.write_hex(&mut span_hex);
    headers.insert(TRACE_ID_HEADER, HeaderValue::from_bytes(&trace_hex).expect("hex is a valid header value"));
    headers.insert(SPAN_ID_HEADER, HeaderValue::from_bytes(&span_hex).expect("hex is a valid header value"));
}

/// `{upstream}{base_path}{path}?{query}`.
fn upstream_uri(provider: &Provider, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let up = &provider.upstream;
    let path = if path.is_empty() && up.base_path.is_empty() { "/" } else { path };
    let mut path_and_query = String::with_capacity(up.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    path_and_query.push_str(&up.base_path);
    path_and_query.push_str(path);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ProxyError::upstream_unreachable(&provider.name, &format!("invalid upstream path: {e}")))
}

/// Removes hop-by-hop headers, `host`, the caller's trace headers (replaced by ours) and every
/// `x-tracegate-*` header, returning the latter for the recorder.
fn strip_request_headers(headers: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
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
            n.starts_with(TRACEGATE_HEADER_PREFIX) || n.starts_with("x-b3-")
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

/// Removes the hop-by-hop headers and any header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// True for paths with `.`/`..` segments (also percent-encoded) or encoded slashes, which
/// could climb out of an upstream's base path or route differently upstream than here.
fn has_dot_segment_or_encoded_slash(path: &str) -> bool {
    if !path.contains('.') && !path.contains('%') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return true;
    }
    lower.split('/').any(|segment| {
        let decoded = segment.replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// Size of a header section as the limit counts it: names and values, plus ": " and CRLF each.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// 502 for refused, unresolvable or failing upstreams, 504 when connecting timed out.
fn classify_h1_error(provider: &Provider, err: &H1Error) -> ProxyError {
    match err {
        H1Error::ConnectTimeout => ProxyError::upstream_timeout(&provider.name, "connect timeout"),
        H1Error::Connect(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ProxyError::upstream_timeout(&provider.name, "connect timeout")
        }
        H1Error::Connect(io) => ProxyError::upstream_unreachable(&provider.name, &io.to_string()),
        other => ProxyError::upstream_unreachable(&provider.name, &other.to_string()),
    }
}

/// 502 for refused/unresolvable upstreams, 504 when connecting timed out.
fn classify_client_error(provider: &Provider, err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    let mut detail = err.to_string();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::upstream_timeout(&provider.name, "connect timeout");
            }
        }
        detail = e.to_string();
        source = e.source();
    }
    if err.is_connect() {
        ProxyError::upstream_unreachable(&provider.name, &detail)
    } else {
        ProxyError::upstream_unreachable(&provider.name, &format!("connection failed: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_recognised() {
        for bad in ["/openai/../x", "/openai/./v1", "/openai/%2e%2E/x", "/openai/v1%2Fchat", "/a/..", "/a%5cb"] {
            assert!(has_dot_segment_or_encoded_slash(bad), "{bad}");
        }
        for good in ["/openai/v1/chat/completions", "/openai/v1/models/gpt-4.1", "/a/.../b", "/a%20b"] {
            assert!(!has_dot_segment_or_encoded_slash(good), "{good}");
        }
    }

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
}
