//! [`Proxy`], the service every proxied request goes through, and the phases of one call in
//! the order [`Proxy::handle`] passes them. Each phase is a method of its own over the request
//! and the per-request context, so it can be read and tested alone. A phase that refuses or fails answers early: `Err(response)` in the provider's error
//! shape. Before the call opens (admit, route, trace context) a refusal leaves no span; once it
//! is open every outcome is recorded — a dropped [`PendingCall`] records a cancel.
//!
//! 1. **admit** — refuse CONNECT, absolute-form targets, oversized headers, unsafe paths;
//! 2. **route** — the configured provider by path prefix (404 when none), the upstream URI;
//! 3. **trace_context** — the caller's trace (W3C, B3, session) or a new one; a new span id;
//!    then the call opens: team key matched, `x-tracegate-*` headers taken off the request;
//! 4. **read_ahead** — the body's first bytes (all of it for a limited team or an injection);
//! 5. **team** — a client-signed SigV4 request refused (Bedrock); a team key required or swapped
//!    for the provider's key; the team's budget;
//! 6. **upstream_request** — `traceparent` (and `b3`) to the upstream, the upstream URI (a
//!    `?key=` team key taken out), an injected `include_usage`, a SigV4 signature (Bedrock, team
//!    key);
//! 7. **send** — through the provider's client within its response timeout;
//! 8. **respond** — status and headers relayed with the call's ids, the body through a
//!    [`ResponseTee`] that finishes the call when the body ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::RedisUnavailable;
use crate::config::{Config, Provider};
use crate::formats::headers as tracegate;
use crate::formats::providers::{self, Api, Operation};
use crate::formats::trace_context::{self, Propagation};
use crate::model::capture::Capture;
use crate::model::clock::unix_nanos;
use crate::model::ids::{SpanId, TraceId};
use crate::model::pricing::{BilledTokens, PriceBook};
use crate::policy::budget::{Budgets, Estimate, Remaining, Reservation, DEFAULT_MAX_OUTPUT_TOKENS};
use crate::policy::shared_limits::{Shared, SharedLimits};
use crate::policy::teams::{query_without_key, swap_in_provider_key, KeyCarrier, TeamDirectory, TeamKeyMatch};
use crate::proxy::body_tee::{RequestTee, ResponseTee};
use crate::proxy::call::{CallContext, PendingCall, RequestShared, ResponseFacts};
use crate::proxy::errors::ProxyError;
use crate::proxy::headers::{self, B3, TRACEPARENT, TRACESTATE};
use crate::proxy::routing::Router;
use crate::proxy::sigv4;
use crate::proxy::usage_injection;
use crate::record::queue::{CallInfo, Outcome, RecorderHandle};
use crate::upstream::h1::{H1Error, H1Upstream};
use crate::upstream::{build_client, root_store, tls_config, UpstreamBody};

/// hyper's pooled client, carrying request bodies through the tee.
type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    RequestTee,
>;

/// What the proxy answers with: a relayed upstream body or a small body of its own.
/// What the proxy answers with: a recorded call's tee, tracegate's own answer, or an unrecorded
/// route's upstream body as it comes.
pub type ProxyBody = Either<ResponseTee, Either<Full<Bytes>, UpstreamBody>>;

/// How long a client may take to start sending its request body.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `[cluster] redis`: limits shared by every instance.
    shared_limits: Option<Arc<SharedLimits>>,
    pricing: PriceBook,
}

impl Proxy {
    pub fn new(config: &Config, recorder: RecorderHandle, budgets: Arc<Budgets>) -> Self {
        let roots = root_store();
        let mut keys: Vec<(Duration, &[rustls::pki_types::CertificateDer<'static>])> = Vec::new();
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
            shared_limits: None,
            pricing: config.pricing.clone(),
        }
    }

    /// Budgets and rate limits checked in Redis, shared with the other instances.
    pub fn with_shared_limits(mut self, limits: Arc<SharedLimits>) -> Self {
        self.shared_limits = Some(limits);
        self
    }

    /// Handles one request; never fails (errors become provider-shaped responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let start_time_unix_nano = unix_nanos();
        Ok(self.run(req, started, start_time_unix_nano).await.unwrap_or_else(|early| *early))
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

/// How much of a request body phase 4 reads before the upstream is contacted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ReadAhead {
    /// The first frame: enough to record what was asked.
    First,
    /// Up to `usage_injection::MAX_REWRITE_BYTES`: a budget estimate or a usage injection.
    Bounded,
    /// All of it: a body tracegate signs.
    All,
}

/// How a provider's upstream is reached.
enum UpstreamRoute {
    /// hyper's pooled client (HTTPS: ALPN picks HTTP/2 or HTTP/1.1); an index into `clients`.
    Pooled(usize),
    /// The lean HTTP/1.1 client of a plain `http://` upstream.
    Direct(H1Upstream),
}

/// An answer given before the upstream's: a refusal or a failure, already recorded if the
/// call was open. Boxed: the phases' `Ok` values stay small, and early answers are rare.
pub type Early = Box<Response<ProxyBody>>;

/// Where a routed call goes.
#[derive(Debug)]
pub struct Routed {
    pub provider: Arc<Provider>,
    /// `{upstream}{base_path}{path}?{query}`.
    pub uri: Uri,
    /// The path sent upstream, without the query (what the span keeps).
    pub path: String,
}

/// The trace a call joins, and what is propagated upstream.
#[derive(Debug)]
pub struct CallTrace {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The W3C trace flags sent upstream (sampled, random).
    pub flags: u8,
    pub tracestate: Option<HeaderValue>,
    /// How the caller sent its context (`None`: a new trace).
    pub propagation: Option<Propagation>,
}

/// Who a call is accounted to, as far as the proxy must know before the upstream answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeamOf {
    /// The team's index in the config, by team key or `x-tracegate-team`.
    pub index: Option<usize>,
    /// The team has a budget or rate limit.
    pub limited: bool,
}

impl Proxy {
    /// The phases in order; `Err` is an early answer.
    async fn run(
        &self,
        req: Request<Incoming>,
        started: Instant,
        start_time_unix_nano: u64,
    ) -> Result<Response<ProxyBody>, Early> {
        self.admit(&req)?;
        let routed = self.route(&req)?;
        if !routed.provider.record {
            return self.forward_unrecorded(req, routed, started).await;
        }
        let (mut parts, body) = req.into_parts();
        let trace = Self::trace_context(&parts.headers);
        let (mut pending, mut body) = self.open_call(&mut parts, body, &routed, &trace, started, start_time_unix_nano);
        let team = self.team_of(&pending.get().info);
        let inject = routed.provider.inject_stream_usage
            && parts.method == Method::POST
            // `/chat/completions` and legacy `/completions` both end so.
            && routed.path.ends_with("/completions");
        // A Bedrock call made with a team key is signed here, and the signature covers the body.
        let sign = routed.provider.aws.is_some() && pending.get().info.team_key.is_some();
        let declared_length = headers::content_length(&parts.headers);
        let read = match (sign, team.limited || inject) {
            (true, _) => ReadAhead::All,
            (false, true) => ReadAhead::Bounded,
            (false, false) => ReadAhead::First,
        };
        pending = self.read_ahead(pending, &mut body, declared_length, read).await?;
        let (ahead, whole) = body.read_ahead_bytes();
        let (pending, remaining) = self.team(pending, &mut parts, team, (ahead, whole), declared_length).await?;
        let key_in_query = pending.get().info.team_key.as_ref().is_some_and(|m| m.carrier == KeyCarrier::Query);
        let uri = if key_in_query { without_query_key(routed.uri) } else { routed.uri };
        let rewritten = self.upstream_request(&mut parts, uri, &trace, inject.then_some((ahead, whole)));
        let injected = rewritten.is_some();
        if sign {
            let signed = match &rewritten {
                Some(bytes) => sigv4::sign_request(&mut parts, bytes, routed.provider.aws.as_ref().expect("sign")),
                None if whole => sigv4::sign_request(&mut parts, ahead, routed.provider.aws.as_ref().expect("sign")),
                None => Err("the request body did not arrive whole".to_string()),
            };
            if let Err(why) = signed {
                let error =
                    ProxyError::upstream_unreachable(&routed.provider.name, &format!("SigV4 signing failed: {why}"));
                return Err(fail(pending.take(), error, routed.provider.api));
            }
        }
        if let Some(body_bytes) = rewritten {
            body.replace_read_ahead(body_bytes);
        }
        let (call, upstream) = self.send(pending, Request::from_parts(parts, body)).await?;
        Ok(self.respond(call, upstream, remaining.as_ref(), injected))
    }

    /// A `record = false` route: forwarded like any call — team key swapped (or the call
    /// signed), tracegate's `x-tracegate-*` headers taken off, the body's size limit kept — but
    /// with no span: the caller's trace headers pass unchanged, nothing is captured, no budget
    /// or rate limit is reserved (no spend would be known to settle it), no ledger row is
    /// written. Only `tracegate_requests_total` counts it, by the status of its answer.
    async fn forward_unrecorded(
        &self,
        req: Request<Incoming>,
        routed: Routed,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Early> {
        let provider = routed.provider;
        let api = provider.api;
        let (mut parts, body) = req.into_parts();
        let query = if api == Api::Gemini { parts.uri.query() } else { None };
        let team_key = self.teams.authenticate(&parts.headers, query);
        let tags = headers::strip_request_headers_keeping_trace(&mut parts.headers);
        let team = self.team_index(team_key.as_ref(), &tags);
        let count = |ok: bool| {
            self.recorder.count_unrecorded(&provider.name, team.map(|i| self.team_names[i].as_str()), ok);
        };
        let refuse = |error: ProxyError| {
            count(false);
            Err(own_response(error, api))
        };
        if api == Api::Bedrock && sigv4::is_client_signed(&parts.headers, parts.uri.query()) {
            return refuse(ProxyError::client_signed_sigv4(&provider.name));
        }
        if self.require_team_key && team_key.is_none() {
            return refuse(ProxyError::team_key_required());
        }
        if let Some(matched) = &team_key {
            if !swap_in_provider_key(&mut parts.headers, matched, &provider) {
                return refuse(ProxyError::provider_key_missing(&provider.name));
            }
        }
        let declared_length = headers::content_length(&parts.headers);
        if declared_length.is_some_and(|len| len > self.max_request_bytes) {
            return refuse(ProxyError::body_too_large(self.max_request_bytes));
        }
        let key_in_query = team_key.as_ref().is_some_and(|m| m.carrier == KeyCarrier::Query);
        parts.uri = if key_in_query { without_query_key(routed.uri) } else { routed.uri };
        parts.version = Version::HTTP_11;
        // A capture of zero bytes: the tee only enforces the size limit.
        let shared = RequestShared::new(Capture::new(0, Some(0)));
        let mut body = RequestTee::new(body, shared.clone(), started, self.max_request_bytes);
        if let (Some(aws), true) = (provider.aws.as_ref(), team_key.is_some()) {
            let limit = usize::try_from(self.max_request_bytes).unwrap_or(usize::MAX).saturating_add(1);
            match tokio::time::timeout(REQUEST_BODY_TIMEOUT, body.read_ahead(limit)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) if shared.too_large() => return refuse(ProxyError::body_too_large(self.max_request_bytes)),
                _ => return refuse(ProxyError::request_body_incomplete()),
            }
            let signed = match body.read_ahead_bytes() {
                (bytes, true) => sigv4::sign_request(&mut parts, bytes, aws),
                _ => Err("the request body did not arrive whole".to_string()),
            };
            if let Err(why) = signed {
                return refuse(ProxyError::upstream_unreachable(
                    &provider.name,
                    &format!("SigV4 signing failed: {why}"),
                ));
            }
        }
        let upstream = match self.exchange(&provider, Request::from_parts(parts, body)).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) if shared.too_large() => return refuse(ProxyError::body_too_large(self.max_request_bytes)),
            Ok(Err(_)) if shared.client_aborted() => return refuse(ProxyError::request_body_incomplete()),
            Ok(Err(error)) => return refuse(error),
            Err(_) => {
                return refuse(ProxyError::upstream_timeout(
                    &provider.name,
                    "no response headers within the response timeout",
                ))
            }
        };
        let (mut parts, body) = upstream.into_parts();
        count(parts.status.as_u16() < 400);
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, Either::Right(Either::Right(body))))
    }

    /// Phase 1: refuse what tracegate never forwards — `CONNECT`, absolute-form targets (the
    /// client must not choose where we go), header sections over `server.max_header_bytes`,
    /// paths with dot segments or encoded slashes.
    pub fn admit<B>(&self, req: &Request<B>) -> Result<(), Early> {
        if req.method() == Method::CONNECT {
            return Err(own_response(ProxyError::connect_method(), Api::Openai));
        }
        if req.version() < Version::HTTP_2 && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
            return Err(own_response(ProxyError::absolute_form(), Api::Openai));
        }
        if headers::header_bytes(req.headers()) > self.max_header_bytes {
            let api = self.router.route(req.uri().path()).map_or(Api::Openai, |r| r.provider.api);
            return Err(own_response(ProxyError::headers_too_large(self.max_header_bytes), api));
        }
        if has_dot_segment_or_encoded_slash(req.uri().path()) {
            return Err(own_response(ProxyError::unsafe_path(), Api::Openai));
        }
        Ok(())
    }

    /// Phase 2: the provider whose prefix the path starts with (or `default_provider`), and the
    /// upstream URI built from the provider's configured scheme and authority only.
    pub fn route<B>(&self, req: &Request<B>) -> Result<Routed, Early> {
        let path = req.uri().path();
        let Some(route) = self.router.route(path) else {
            tracing::debug!(path, "no route");
            return Err(own_response(ProxyError::no_route(path, &self.router.prefixes()), Api::Openai));
        };
        let provider = route.provider.clone();
        let uri = upstream_uri(&provider, route.upstream_path, req.uri().query())
            .map_err(|e| own_response(e, provider.api))?;
        let path = if route.upstream_path.is_empty() { "/".to_string() } else { route.upstream_path.to_string() };
        Ok(Routed { provider, uri, path })
    }

    /// Phase 3: the caller's trace context (W3C, then B3, then a session) or a new trace, and a
    /// new span id for this call.
    pub fn trace_context(headers: &HeaderMap) -> CallTrace {
        let span_id = SpanId::random();
        match trace_context::extract(headers) {
            Some(c) => CallTrace {
                trace_id: c.trace_id,
                span_id,
                parent_span_id: c.parent_span_id,
                flags: c.flags(),
                tracestate: c.tracestate,
                propagation: Some(c.propagation),
            },
            None => CallTrace {
                trace_id: TraceId::random(),
                span_id,
                parent_span_id: None,
                flags: trace_context::NEW_TRACE_FLAGS,
                tracestate: None,
                propagation: None,
            },
        }
    }

    /// The call opens: the team key is matched, the hop-by-hop, trace and `x-tracegate-*`
    /// headers come off the request (the latter kept for the span), and the body is wrapped in
    /// a tee that copies it into a bounded capture. From here on the call is recorded.
    fn open_call(
        &self,
        parts: &mut Parts,
        body: Incoming,
        routed: &Routed,
        trace: &CallTrace,
        started: Instant,
        start_time_unix_nano: u64,
    ) -> (PendingCall, RequestTee) {
        // Only Gemini takes a key in the query (`?key=`); elsewhere a `key` parameter is the app's.
        let query = if routed.provider.api == Api::Gemini { parts.uri.query() } else { None };
        let team_key = self.teams.authenticate(&parts.headers, query);
        let tracegate_headers = headers::strip_request_headers(&mut parts.headers);
        let session =
            tracegate_headers.iter().find(|(name, _)| name.as_str() == tracegate::SESSION).map(|(_, v)| v.clone());
        let capture = Capture::new(self.max_capture_bytes, headers::content_length(&parts.headers));
        let request = RequestShared::new(capture);
        let body = RequestTee::new(body, request.clone(), started, self.max_request_bytes);
        let info = CallInfo {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
            provider: routed.provider.clone(),
            method: parts.method.clone(),
            path: routed.path.clone(),
            start_time_unix_nano,
            tracegate_headers,
            session,
            team_key,
            reservation: None,
        };
        let call = CallContext { info, started, request, recorder: self.recorder.clone() };
        (PendingCall::new(call), body)
    }

    /// The team a call is accounted to: its team key's, else the one `x-tracegate-team` names.
    pub fn team_of(&self, info: &CallInfo) -> TeamOf {
        let index = self.team_index(info.team_key.as_ref(), &info.tracegate_headers);
        TeamOf { index, limited: index.is_some_and(|i| self.budgets.is_limited(i)) }
    }

    /// The team's index in the config: the team key's, else the one `x-tracegate-team` (among
    /// the headers taken off the request) names.
    fn team_index(&self, team_key: Option<&TeamKeyMatch>, tags: &[(HeaderName, HeaderValue)]) -> Option<usize> {
        match team_key {
            Some(m) => Some(m.team_index),
            None => tags
                .iter()
                .find(|(name, _)| name.as_str() == tracegate::TEAM)
                .and_then(|(_, v)| v.to_str().ok())
                .and_then(|team| self.team_names.iter().position(|n| n == team)),
        }
    }

    /// Phase 4: reads the body's first bytes before the upstream is contacted — one frame, so
    /// that even a call whose upstream cannot be reached records what was asked; the whole body
    /// up to a bound for a limited team's estimate or a usage injection; all of it (up to
    /// `max_request_bytes`) for a body tracegate signs.
    async fn read_ahead(
        &self,
        pending: PendingCall,
        body: &mut RequestTee,
        declared_length: Option<u64>,
        read: ReadAhead,
    ) -> Result<PendingCall, Early> {
        let api = pending.get().info.provider.api;
        if declared_length.is_some_and(|len| len > self.max_request_bytes) {
            return Err(fail(pending.take(), ProxyError::body_too_large(self.max_request_bytes), api));
        }
        let limit = match read {
            ReadAhead::First => 1,
            ReadAhead::Bounded => usage_injection::MAX_REWRITE_BYTES,
            ReadAhead::All => usize::try_from(self.max_request_bytes).unwrap_or(usize::MAX).saturating_add(1),
        };
        match tokio::time::timeout(REQUEST_BODY_TIMEOUT, body.read_ahead(limit)).await {
            Ok(Ok(())) => Ok(pending),
            Ok(Err(_)) if pending.get().request.too_large() => {
                Err(fail(pending.take(), ProxyError::body_too_large(self.max_request_bytes), api))
            }
            // The client broke off before sending its body: dropping `pending` records a cancel.
            Ok(Err(_)) => Err(own_response(ProxyError::request_body_incomplete(), api)),
            // The client stalled: tell it, and record why.
            Err(_) => Err(fail(pending.take(), ProxyError::request_body_incomplete(), api)),
        }
    }

    /// Phase 5: a team key when `require_team_key` asks for one; a team key swapped for the
    /// provider's own; the team's budget and rate limits (a reservation of a deliberately high
    /// estimate, settled by the recorder). `Ok` carries what the team has left, for the
    /// `x-tracegate-ratelimit-*` headers of the answer.
    pub async fn team(
        &self,
        mut pending: PendingCall,
        parts: &mut Parts,
        team: TeamOf,
        ahead: (&[u8], bool),
        declared_length: Option<u64>,
    ) -> Result<(PendingCall, Option<Remaining>), Early> {
        let provider = pending.get().info.provider.clone();
        if provider.api == Api::Bedrock && sigv4::is_client_signed(&parts.headers, parts.uri.query()) {
            return Err(fail(pending.take(), ProxyError::client_signed_sigv4(&provider.name), provider.api));
        }
        let headers = &mut parts.headers;
        if self.require_team_key && pending.get().info.team_key.is_none() {
            return Err(fail(pending.take(), ProxyError::team_key_required(), provider.api));
        }
        if let Some(matched) = &pending.get().info.team_key {
            if !swap_in_provider_key(headers, matched, &provider) {
                return Err(fail(pending.take(), ProxyError::provider_key_missing(&provider.name), provider.api));
            }
        }
        let (Some(index), true) = (team.index, team.limited) else { return Ok((pending, None)) };
        let estimate = self.estimate(&provider, &pending.get().info.path, ahead, declared_length);
        let now = unix_nanos() / 1_000_000_000;
        let admitted = match &self.shared_limits {
            Some(shared) => match shared.admit(index, estimate, now).await {
                Shared::Admitted(claim, left) => Ok((Reservation::shared(claim), left)),
                Shared::Refused(refused) => Err(refused),
                Shared::Unavailable if shared.mode == RedisUnavailable::Refuse => {
                    let message = format!(
                        "tracegate: the shared limits of team {:?} cannot be checked (Redis is unreachable)",
                        self.team_names[index]
                    );
                    return Err(fail(pending.take(), ProxyError::limited(message, 1), provider.api));
                }
                // `local`: this instance enforces the limits alone while Redis is away.
                Shared::Unavailable => self.budgets.admit(index, estimate, now),
            },
            None => self.budgets.admit(index, estimate, now),
        };
        match admitted {
            Ok((reservation, left)) => {
                pending.get_mut().info.reservation = Some(reservation);
                Ok((pending, Some(left)))
            }
            Err(refused) => {
                let message = refused.reason.message(&self.team_names[index]);
                let mut response =
                    fail(pending.take(), ProxyError::limited(message, refused.retry_after_secs), provider.api);
                headers::limit_headers(response.headers_mut(), &refused.remaining, "x-ratelimit-");
                Err(response)
            }
        }
    }

    /// A deliberately high estimate of what a call will use, reserved against its team's
    /// budget: input ≈ body bytes / 3, output = `max_tokens` or a default, at the model's price.
    /// The only place the request path reads a body: the first bytes, for a limited team.
    fn estimate(&self, provider: &Provider, path: &str, ahead: (&[u8], bool), declared: Option<u64>) -> Estimate {
        let operation = providers::operation_for(provider.api, path);
        let (ahead, whole) = ahead;
        let facts = providers::parse_call_request(provider.api, &operation, path, ahead, false);
        let body_len = if whole { ahead.len() as u64 } else { declared.unwrap_or(ahead.len() as u64) };
        let input = body_len / 3 + 1;
        // `max_tokens` is the caller's number: a huge one must make the estimate huge, not wrap.
        let output = match operation {
            Operation::Embeddings => 0,
            _ => facts.max_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        };
        let cost_usd = facts
            .model
            .as_deref()
            .and_then(|m| {
                self.pricing
                    .cost_usd(m, BilledTokens { input_tokens: input, output_tokens: output, ..Default::default() })
            })
            .unwrap_or(0.0);
        Estimate { cost_usd, tokens: input.saturating_add(output), bounded: facts.max_tokens.is_some() }
    }

    /// Phase 6: the request as the upstream gets it — the upstream URI, HTTP/1.1 semantics
    /// (the client picks the wire version), `traceparent` with this call's span as parent,
    /// the caller's `tracestate`, `b3` for a B3 caller. With `inject` (the whole body read
    /// ahead), an OpenAI stream that did not ask for usage is rewritten to ask: the new body
    /// is returned.
    pub fn upstream_request(
        &self,
        parts: &mut Parts,
        uri: Uri,
        trace: &CallTrace,
        inject: Option<(&[u8], bool)>,
    ) -> Option<Bytes> {
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        headers.insert(TRACEPARENT, trace_context::traceparent_with_flags(trace.trace_id, trace.span_id, trace.flags));
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
        if matches!(trace.propagation, Some(Propagation::B3Single | Propagation::B3Multi)) {
            headers.insert(B3, trace_context::b3_value(trace.trace_id, trace.span_id, trace.flags & 1 != 0));
        }
        let (ahead, true) = inject? else { return None };
        let rewritten = usage_injection::inject(ahead)?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
        Some(rewritten)
    }

    /// Phase 7: the exchange with the upstream, until its response head arrives or the
    /// provider's response timeout passes. A failure is blamed where it belongs: a body over
    /// the limit (413), a client that broke off its upload (cancelled), else the upstream
    /// (502, or 504 on a timeout).
    async fn send(
        &self,
        pending: PendingCall,
        request: Request<RequestTee>,
    ) -> Result<(CallContext, Response<UpstreamBody>), Early> {
        let provider = pending.get().info.provider.clone();
        let result = self.exchange(&provider, request).await;
        let call = pending.take();
        match result {
            Ok(Ok(response)) => Ok((call, response)),
            Ok(Err(_)) if call.request.too_large() => {
                Err(fail(call, ProxyError::body_too_large(self.max_request_bytes), provider.api))
            }
            Ok(Err(_)) if call.request.client_aborted() => {
                // The client broke off its upload; the upstream is not to blame.
                call.finish(ResponseFacts::none(), Outcome::Cancelled);
                Err(own_response(ProxyError::request_body_incomplete(), provider.api))
            }
            Ok(Err(error)) => {
                tracing::warn!(provider = %provider.name, error = %error, "upstream request failed");
                Err(fail(call, error, provider.api))
            }
            Err(_elapsed) => {
                let error =
                    ProxyError::upstream_timeout(&provider.name, "no response headers within the response timeout");
                tracing::warn!(provider = %provider.name, "upstream response timeout");
                Err(fail(call, error, provider.api))
            }
        }
    }

    /// The request through the provider's client until the upstream's response head arrives
    /// (`Err(Elapsed)` once the provider's response timeout passes); a failure classified.
    async fn exchange(
        &self,
        provider: &Arc<Provider>,
        request: Request<RequestTee>,
    ) -> Result<Result<Response<UpstreamBody>, ProxyError>, tokio::time::error::Elapsed> {
        let exchange = async {
            match self.route_for(provider) {
                UpstreamRoute::Pooled(index) => match self.clients[*index].request(request).await {
                    Ok(response) => Ok(response.map(UpstreamBody::Left)),
                    Err(err) => Err(classify_client_error(provider, &err)),
                },
                UpstreamRoute::Direct(upstream) => match upstream.send(request).await {
                    Ok(response) => Ok(response.map(UpstreamBody::Right)),
                    Err(err) => Err(classify_h1_error(provider, &err)),
                },
            }
        };
        tokio::time::timeout(provider.response_timeout, exchange).await
    }

    /// Phase 8: the upstream's status and headers (hop-by-hop removed) with the call's ids and,
    /// for a limited team, `x-tracegate-ratelimit-*`; the body streams through a
    /// [`ResponseTee`], which owns the call from here and finishes it when the body ends.
    fn respond(
        &self,
        call: CallContext,
        upstream: Response<UpstreamBody>,
        remaining: Option<&Remaining>,
        injected: bool,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = upstream.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let is_sse = headers::is_event_stream(&parts.headers);
        let encoding = parts.headers.get(header::CONTENT_ENCODING).cloned();
        let capture = Capture::new(self.max_capture_bytes, headers::content_length(&parts.headers));
        headers::insert_ids(&mut parts.headers, call.info.trace_id, call.info.span_id);
        parts.version = Version::HTTP_11;
        if let Some(left) = remaining {
            // The provider's own x-ratelimit-* headers stay as they are; ours are prefixed.
            headers::limit_headers(&mut parts.headers, left, tracegate::RATELIMIT_PREFIX);
        }
        let status = parts.status.as_u16();
        let token_counts =
            (call.info.provider.api == Api::Bedrock).then(|| headers::bedrock_token_counts(&parts.headers));
        let mut body =
            ResponseTee::new(body, call, capture, status, is_sse, encoding).with_token_counts(token_counts.flatten());
        if injected && is_sse && parts.status.is_success() {
            // The client must not see what asking for usage added (and its length changes).
            parts.headers.remove(header::CONTENT_LENGTH);
            body = body.strip_injected_usage();
        }
        Response::from_parts(parts, Either::Left(body))
    }
}

/// Records a failed call and answers the client with a provider-shaped error.
fn fail(call: CallContext, error: ProxyError, api: Api) -> Early {
    let (trace_id, span_id) = (call.info.trace_id, call.info.span_id);
    let facts = ResponseFacts { status_code: Some(error.status.as_u16()), ..ResponseFacts::none() };
    call.finish(facts, Outcome::Failed(error.message.clone()));
    let mut response = own_response(error, api);
    headers::insert_ids(response.headers_mut(), trace_id, span_id);
    response
}

/// An error tracegate answers itself, in the provider's error shape.
fn own_response(error: ProxyError, api: Api) -> Early {
    Box::new(error.to_response(api).map(|body| Either::Right(Either::Left(body))))
}

/// The upstream URI without its `key` query parameters (a Gemini team key that came there).
fn without_query_key(uri: Uri) -> Uri {
    let Some(query) = uri.query() else { return uri };
    let path_and_query = match query_without_key(query) {
        Some(kept) => format!("{}?{kept}", uri.path()),
        None => uri.path().to_string(),
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).unwrap_or(uri)
        }
        Err(_) => uri,
    }
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
    use crate::config::Config;
    use crate::policy::budget::Budgets;
    use crate::record::queue::TestQueue;

    const PROVIDERS: &str = "[[providers]]\nname='openai'\nprefix='/openai'\nupstream='http://127.0.0.1:9/base'\napi='openai'\napi_key='sk-provider'\n";

    fn proxy(extra: &str) -> (Proxy, TestQueue) {
        let config = Config::from_toml(&format!("{extra}\n{PROVIDERS}"), &|_| None).unwrap();
        let (recorder, queue) = TestQueue::new();
        let budgets = Budgets::new(&config.teams, unix_nanos() / 1_000_000_000, |_, _, _| (0.0, 0.0));
        (Proxy::new(&config, recorder, budgets), queue)
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn error_code(response: &Early) -> (u16, String) {
        let code = response.headers().get(tracegate::ERROR).map(|v| v.to_str().unwrap().to_string());
        (response.status().as_u16(), code.unwrap_or_default())
    }

    /// A request head carrying `headers`.
    fn parts_with(headers: HeaderMap) -> Parts {
        let (mut parts, ()) = request("POST", "/openai/v1/chat/completions", &[]).into_parts();
        parts.headers = headers;
        parts
    }

    /// An open call of `proxy` for `headers` (as the phases before `team` leave it).
    fn open(proxy: &Proxy, headers: &mut HeaderMap) -> PendingCall {
        let routed = proxy.route(&request("POST", "/openai/v1/chat/completions", &[])).unwrap();
        let trace = Proxy::trace_context(headers);
        let team_key = proxy.teams.authenticate(headers, None);
        let info = CallInfo {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: None,
            provider: routed.provider.clone(),
            method: Method::POST,
            path: routed.path.clone(),
            start_time_unix_nano: unix_nanos(),
            tracegate_headers: headers::strip_request_headers(headers),
            session: None,
            team_key,
            reservation: None,
        };
        let request = RequestShared::new(Capture::new(1024, None));
        PendingCall::new(CallContext { info, started: Instant::now(), request, recorder: proxy.recorder.clone() })
    }

    #[test]
    fn admit_refuses_what_is_never_forwarded() {
        let (proxy, _) = proxy("[server]\nmax_header_bytes = 1024");
        assert!(proxy.admit(&request("POST", "/openai/v1/chat/completions", &[])).is_ok());
        let refused = |req: Request<()>| error_code(&proxy.admit(&req).unwrap_err());
        assert_eq!(refused(request("CONNECT", "evil.example:443", &[])).0, 405);
        assert_eq!(refused(request("GET", "http://evil.example/openai/v1/models", &[])).0, 400);
        assert_eq!(refused(request("GET", "/openai/../admin", &[])).0, 400);
        let big = "x".repeat(2000);
        assert_eq!(refused(request("GET", "/openai/v1/models", &[("x-big", &big)])).0, 431);
    }

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
    fn route_goes_only_where_the_config_says() {
        let (proxy, _) = proxy("");
        let routed = proxy.route(&request("POST", "/openai/v1/chat/completions?api-version=1", &[])).unwrap();
        assert_eq!(routed.provider.name, "openai");
        assert_eq!(routed.uri.to_string(), "http://127.0.0.1:9/base/v1/chat/completions?api-version=1");
        assert_eq!(routed.path, "/v1/chat/completions", "the span keeps the path, never the query");
        let missing = proxy.route(&request("POST", "/other/v1/chat/completions", &[])).unwrap_err();
        assert_eq!(error_code(&missing), (404, "no_route".to_string()));
    }

    #[test]
    fn trace_context_joins_the_callers_trace_or_starts_one() {
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let joined = Proxy::trace_context(&headers);
        assert_eq!(joined.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(joined.parent_span_id.map(|s| s.to_hex()).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(Some(joined.span_id), joined.parent_span_id, "the call is a new span under the caller's");
        assert_eq!(joined.propagation, Some(Propagation::W3c));
        let fresh = Proxy::trace_context(&HeaderMap::new());
        assert_eq!((fresh.parent_span_id, fresh.propagation), (None, None));
        assert_ne!(fresh.trace_id, joined.trace_id);
    }

    #[tokio::test]
    async fn team_refuses_a_call_without_a_required_key_and_records_it() {
        let (proxy, queue) = proxy("[server]\nrequire_team_key = true\n[[teams]]\nname='search'\nkeys=['tk-search']");
        let mut headers = HeaderMap::new();
        let pending = open(&proxy, &mut headers);
        let team = proxy.team_of(&pending.get().info);
        let mut parts = parts_with(headers);
        let Err(refused) = proxy.team(pending, &mut parts, team, (b"{}", true), Some(2)).await else {
            panic!("a call without a team key must be refused")
        };
        assert_eq!(error_code(&refused).0, 401);
        let record = queue.next_call().expect("the refused call is recorded");
        assert_eq!((record.status_code, matches!(record.outcome, Outcome::Failed(_))), (Some(401), true));
    }

    #[tokio::test]
    async fn team_swaps_the_team_key_and_holds_the_rate_limit() {
        let (proxy, queue) = proxy("[[teams]]\nname='search'\nkeys=['tk-search']\nrequests_per_minute=1");
        let call = async |queue: &TestQueue| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tk-search"));
            let pending = open(&proxy, &mut headers);
            let team = proxy.team_of(&pending.get().info);
            assert_eq!(team, TeamOf { index: Some(0), limited: true });
            let body = br#"{"model":"gpt-4o-mini","max_tokens":5}"#;
            let mut parts = parts_with(headers);
            let result = proxy.team(pending, &mut parts, team, (body, true), None).await;
            let _ = queue.next_call();
            (result.map(|(_pending, left)| left), parts.headers)
        };
        let (first, headers) = call(&queue).await;
        let left = first.expect("the first call fits the limit").expect("a limited team is told what is left");
        assert_eq!(left.requests, Some((1, 0)));
        assert_eq!(headers[header::AUTHORIZATION], "Bearer sk-provider", "the team key never goes upstream");
        let (second, _) = call(&queue).await;
        let refused = second.expect_err("the second call in the minute is refused");
        assert_eq!(error_code(&refused), (429, "rate_limited".to_string()));
        assert_eq!(refused.headers()["x-ratelimit-limit-requests"], "1");
    }

    #[test]
    fn upstream_request_propagates_our_span_and_rewrites_only_when_injecting() {
        let (proxy, _) = proxy("");
        let mut caller = HeaderMap::new();
        caller.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"));
        let trace = Proxy::trace_context(&caller);
        let (mut parts, ()) = request("POST", "/openai/v1/chat/completions", &[]).into_parts();
        let uri: Uri = "http://127.0.0.1:9/base/v1/chat/completions".parse().unwrap();
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        assert!(proxy.upstream_request(&mut parts, uri.clone(), &trace, None).is_none());
        assert_eq!(parts.uri, uri);
        let traceparent = parts.headers[TRACEPARENT].to_str().unwrap().to_string();
        assert_eq!(traceparent, format!("00-{}-{}-01", trace.trace_id.to_hex(), trace.span_id.to_hex()));
        assert!(parts.headers.contains_key(B3), "a B3 caller's upstream gets b3 too");
        let rewritten = proxy.upstream_request(&mut parts, uri, &trace, Some((body, true))).expect("injected");
        assert!(String::from_utf8_lossy(&rewritten).contains("include_usage"));
        assert_eq!(parts.headers[header::CONTENT_LENGTH], rewritten.len().to_string().as_str());
    }
}
