//! `mock-llm`: an offline stand-in for the OpenAI and Anthropic HTTP APIs.
//!
//! It answers the common endpoints with replies shaped like the real providers' (close
//! enough that the official `openai` and `anthropic` SDKs parse them unchanged), so demos,
//! integration tests and load benchmarks of the proxy need no network and no API key.
//! Everything is deterministic: the reply is always the same sentence
//! ([`REPLY_TEXT`], one streamed chunk per word), token counts are computed from the
//! request (the rule is documented on `chat_prompt_tokens`), and embeddings are derived from
//! a hash of the input.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
//! `POST /v1/responses`, `POST /v1/messages` (Anthropic), `GET /v1/models`,
//! `GET /v1/models/{id}` (Anthropic-shaped when the request carries `anthropic-version`) and
//! `GET /healthz`. Anything else gets a 404 in OpenAI's error shape; a body that is not a
//! JSON object gets a 400 in the endpoint's provider shape.
//!
//! Streams are real streaming bodies: each SSE event is handed to the connection as it is
//! produced, with the configured delay *between* events (none before the first or after the
//! last).
//!
//! Test hooks, read from request headers:
//! - `x-mock-status: <code>` (400..=599): answer that status with a provider-shaped error
//!   body (OpenAI `{"error":{...}}`, or Anthropic `{"type":"error","error":{...}}` on
//!   `/v1/messages`) instead of a reply.
//! - `x-mock-chunks: <n>`: the reply has `n` words (the sentence repeats cyclically), so a
//!   test can ask for long streams. `max_tokens` still caps it.
//! - `x-mock-chunk-delay-ms: <n>`: the delay between streamed events for this request.
//!
//! Every response carries `x-mock-request-headers`, a compact JSON object (name → value,
//! repeated headers joined with `", "`) of the request headers whose names start with
//! `traceparent`, `tracestate`, `b3`, `x-b3-`, `authorization`, `x-api-key` or
//! `x-tracegate-`, so a test can see exactly what reached the upstream.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// The delay between streamed events that `tracegate mock-llm` uses when not told otherwise.
pub const DEFAULT_CHUNK_DELAY: Duration = Duration::from_millis(20);

/// The mock's reply. Streams emit it word by word; each word after the first keeps its
/// leading space, so the streamed pieces concatenate to exactly this text.
pub const REPLY_TEXT: &str = "This is a mock reply from tracegate mock-llm, the offline fake upstream.";

/// [`REPLY_TEXT`] as the pieces a stream emits: one piece is one output "token".
const REPLY_PIECES: [&str; 12] = [
    "This",
    " is",
    " a",
    " mock",
    " reply",
    " from",
    " tracegate",
    " mock-llm,",
    " the",
    " offline",
    " fake",
    " upstream.",
];

/// Request bodies larger than this are refused with 413.
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Upper bound for `x-mock-chunks`, so a typo cannot make a stream effectively endless.
const MAX_CHUNKS: usize = 1_000_000;
/// Upper bound for the embedding `dimensions` parameter.
const MAX_EMBEDDING_DIMS: usize = 4096;
/// Embedding size when the request does not ask for `dimensions`.
const DEFAULT_EMBEDDING_DIMS: usize = 8;

/// Name prefixes of the request headers echoed back in `x-mock-request-headers`.
const ECHOED_HEADER_PREFIXES: [&str; 7] =
    ["traceparent", "tracestate", "b3", "x-b3-", "authorization", "x-api-key", "x-tracegate-"];

/// Model ids listed by `GET /v1/models`.
const MODEL_IDS: [&str; 6] =
    ["mock-model", "gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "claude-sonnet-4-5"];

/// Settings of a mock server.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Pause between two streamed events (the `x-mock-chunk-delay-ms` header overrides it
    /// per request). Zero streams everything at once.
    pub chunk_delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig { chunk_delay: DEFAULT_CHUNK_DELAY }
    }
}

/// Serves the mock on an already-bound listener until this future is dropped (or its task
/// aborted), which also ends every connection it accepted.
///
/// Each connection speaks HTTP/1.1 (keep-alive) or cleartext HTTP/2 (prior knowledge),
/// detected per connection. Failed accepts (e.g. out of file descriptors) are logged and
/// retried, so in practice this only returns by being dropped.
pub async fn serve(listener: TcpListener, config: MockConfig) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let delay = config.chunk_delay;
    // Connections live in a JoinSet owned by this future: dropping it aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Streams write small frames; don't let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    let builder = builder.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| async move {
                            Ok::<_, Infallible>(handle(req, delay).await)
                        });
                        if let Err(err) =
                            builder.serve_connection(TokioIo::new(stream), service).await
                        {
                            tracing::debug!(error = %err, "mock-llm connection closed with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "mock-llm accept failed");
                    if !matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        // Likely resource exhaustion: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Routing and per-request options
// ---------------------------------------------------------------------------------------

/// Which provider's conventions (error shape) an endpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// The JSON endpoints, all `POST`.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            _ => return None,
        })
    }

    fn api(self) -> Api {
        match self {
            Endpoint::Messages => Api::Anthropic,
            _ => Api::OpenAi,
        }
    }
}

/// Per-request knobs taken from the test-hook headers.
struct Opts {
    delay: Duration,
    chunks: Option<usize>,
}

impl Opts {
    fn from_headers(headers: &HeaderMap, default_delay: Duration) -> Opts {
        let delay = header_u64(headers, "x-mock-chunk-delay-ms").map(Duration::from_millis).unwrap_or(default_delay);
        let chunks =
            header_u64(headers, "x-mock-chunks").map(|n| usize::try_from(n).unwrap_or(MAX_CHUNKS).min(MAX_CHUNKS));
        Opts { delay, chunks }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The `x-mock-status` hook: an error status to answer with, if one was asked for.
fn forced_status(headers: &HeaderMap) -> Option<StatusCode> {
    let code = u16::try_from(header_u64(headers, "x-mock-status")?).ok()?;
    StatusCode::from_u16(code).ok().filter(|s| s.is_client_error() || s.is_server_error())
}

async fn handle(req: Request<Incoming>, default_delay: Duration) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let echoed = echoed_headers(&parts.headers);
    let mut response = route(&parts.method, parts.uri.path(), &parts.headers, body, default_delay).await;
    if let Some(value) = echoed {
        response.headers_mut().insert("x-mock-request-headers", value);
    }
    response
}

async fn route(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Incoming,
    default_delay: Duration,
) -> Response<MockBody> {
    if let Some(endpoint) = Endpoint::from_path(path) {
        let api = endpoint.api();
        if method != Method::POST {
            return error_response(api, StatusCode::METHOD_NOT_ALLOWED, "use POST on this endpoint");
        }
        // Read the body before anything else so keep-alive connections stay reusable.
        let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return error_response(api, StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            }
            Err(_) => {
                return error_response(api, StatusCode::BAD_REQUEST, "could not read request body");
            }
        };
        if let Some(status) = forced_status(headers) {
            return forced_error(api, status);
        }
        let req: Value = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return error_response(api, StatusCode::BAD_REQUEST, "request body must be a JSON object");
            }
            Err(err) => {
                let msg = format!("could not parse the JSON body of your request: {err}");
                return error_response(api, StatusCode::BAD_REQUEST, &msg);
            }
        };
        let opts = Opts::from_headers(headers, default_delay);
        return match endpoint {
            Endpoint::Chat => chat_completions(&req, &opts),
            Endpoint::Completions => completions(&req, &opts),
            Endpoint::Embeddings => embeddings(&req),
            Endpoint::Responses => responses(&req, &opts),
            Endpoint::Messages => messages(&req, &opts),
        };
    }

    let anthropic_client = headers.contains_key("anthropic-version");
    let api = if anthropic_client { Api::Anthropic } else { Api::OpenAi };
    match (method, path) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/v1/models") => match forced_status(headers) {
            Some(status) => forced_error(api, status),
            None => list_models(anthropic_client),
        },
        (&Method::GET, p) if p.starts_with("/v1/models/") => match forced_status(headers) {
            Some(status) => forced_error(api, status),
            None => get_model(&p["/v1/models/".len()..], anthropic_client),
        },
        _ => {
            let msg = format!("mock-llm has no route for {method} {path}");
            error_response(Api::OpenAi, StatusCode::NOT_FOUND, &msg)
        }
    }
}

/// The `x-mock-request-headers` value: selected request headers as a compact JSON object.
fn echoed_headers(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut seen = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if !ECHOED_HEADER_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        match seen.get_mut(name) {
            Some(Value::String(previous)) => {
                previous.push_str(", ");
                previous.push_str(&value);
            }
            _ => {
                seen.insert(name.to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    let text = serde_json::to_string(&Value::Object(seen)).ok()?;
    HeaderValue::from_str(&text).ok()
}

// ---------------------------------------------------------------------------------------
// Shared reply planning, token counting and small helpers
// ---------------------------------------------------------------------------------------

/// How long the reply is and whether `max_tokens` cut it short.
#[derive(Clone, Copy, Debug)]
struct Reply {
    words: usize,
    truncated: bool,
}

impl Reply {
    fn plan(max_tokens: Option<u64>, opts: &Opts) -> Reply {
        let wanted = opts.chunks.unwrap_or(REPLY_PIECES.len());
        match max_tokens {
            Some(max) if max < wanted as u64 => Reply { words: max as usize, truncated: true },
            _ => Reply { words: wanted, truncated: false },
        }
    }

    /// The full reply text: the concatenation of all streamed pieces.
    fn text(self) -> String {
        if self.words == REPLY_PIECES.len() {
            return REPLY_TEXT.to_owned();
        }
        (0..self.words).map(piece).collect()
    }
}

/// The `i`-th streamed piece of the reply; the sentence repeats for long replies.
fn piece(i: usize) -> &'static str {
    match i {
        0 => REPLY_PIECES[0],
        i if i % REPLY_PIECES.len() == 0 => " This",
        i => REPLY_PIECES[i % REPLY_PIECES.len()],
    }
}

/// Number of whitespace-separated words in the text of a message `content` (or any value
/// holding text): a string counts its words; an array sums its elements; an object counts
/// its `"text"` string, or else recurses into its `"content"` (e.g. tool results).
fn text_words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(text_words).sum(),
        Value::Object(obj) => match (obj.get("text"), obj.get("content")) {
            (Some(Value::String(text)), _) => text.split_whitespace().count() as u64,
            (_, Some(content)) => text_words(content),
            _ => 0,
        },
        _ => 0,
    }
}

/// The mock's deterministic prompt-token count for a list of chat messages (OpenAI chat,
/// Anthropic messages, Responses input items): for every message the words of its content
/// ([`text_words`]) plus 3, plus 3 for the whole conversation — the same per-message and
/// reply-priming overhead OpenAI documents for its chat format. `extra_words` covers text
/// outside the list (Anthropic `system`, Responses `instructions`).
fn chat_prompt_tokens(messages: Option<&Value>, extra_words: u64) -> u64 {
    let per_message: u64 = match messages {
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| match m {
                // Responses API input items and chat messages carry their text in "content".
                Value::Object(obj) => obj.get("content").map_or(0, text_words) + 3,
                other => text_words(other) + 3,
            })
            .sum(),
        Some(Value::String(s)) => s.split_whitespace().count() as u64 + 3,
        _ => 0,
    };
    per_message + extra_words + 3
}

/// Legacy completions / embeddings input size: words of strings, length of token arrays.
fn input_tokens(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(input_tokens).sum(),
        _ => 0,
    }
}

fn next_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn model_of(req: &Value) -> String {
    req.get("model").and_then(Value::as_str).unwrap_or("mock-model").to_owned()
}

fn is_stream(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// The first of `keys` present as a non-negative integer.
fn max_tokens(req: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| req.get(*k).and_then(Value::as_u64))
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false)
}

fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
fn chat_completions(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let prompt_tokens = chat_prompt_tokens(req.get("messages"), 0);
    let reply = Reply::plan(max_tokens(req, &["max_completion_tokens", "max_tokens"]), opts);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let usage = openai_usage(prompt_tokens, reply.words as u64);
    let id = format!("chatcmpl-mock-{}", next_id());
    let created = unix_now();

    if !is_stream(req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": usage,
                "system_fingerprint": "fp_mock",
            }),
        );
    }

    // Events: role chunk, one chunk per word, finish chunk, [usage chunk], [DONE].
    let with_usage = include_usage(req);
    let n = reply.words;
    let total = n + 3 + usize::from(with_usage);
    let chunk = move |choices: Value, usage: Option<&Value>| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if with_usage {
            v["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        sse_data(&v)
    };
    let choice = |delta: Value, finish: Option<&str>| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    sse_response(total, opts.delay, move |k| match k {
        0 => chunk(choice(json!({"role": "assistant", "content": "", "refusal": null}), None), None),
        k if k <= n => chunk(choice(json!({"content": piece(k - 1)}), None), None),
        k if k == n + 1 => chunk(choice(json!({}), Some(finish_reason)), None),
        k if k == n + 2 && with_usage => chunk(json!([]), Some(&usage)),
        _ => sse_done(),
    })
}

/// `POST /v1/completions` (the legacy text completions API).
fn completions(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let prompt_tokens = req.get("prompt").map_or(0, input_tokens);
    let reply = Reply::plan(max_tokens(req, &["max_tokens"]), opts);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": reply.words,
        "total_tokens": prompt_tokens + reply.words as u64,
    });
    let id = format!("cmpl-mock-{}", next_id());
    let created = unix_now();

    if !is_stream(req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{
                    "text": reply.text(),
                    "index": 0,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": usage,
                "system_fingerprint": "fp_mock",
            }),
        );
    }

    // Events: one chunk per word, finish chunk, [usage chunk], [DONE].
    let with_usage = include_usage(req);
    let n = reply.words;
    let total = n + 2 + usize::from(with_usage);
    let chunk = move |choices: Value, usage: Option<&Value>| {
        let mut v = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if with_usage {
            v["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        sse_data(&v)
    };
    let choice = |text: &str, finish: Option<&str>| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
    sse_response(total, opts.delay, move |k| match k {
        k if k < n => chunk(choice(piece(k), None), None),
        k if k == n => chunk(choice("", Some(finish_reason)), None),
        k if k == n + 1 && with_usage => chunk(json!([]), Some(&usage)),
        _ => sse_done(),
    })
}

/// One embedding input: a text or a token array.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

/// Splits the `input` of an embeddings request into its items, as the real API does.
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, &'static str> {
    const SHAPE: &str = "'input' must be a string, an array of strings, or an array of token arrays";
    match input {
        Some(Value::String(s)) => Ok(vec![EmbeddingInput::Text(s)]),
        Some(Value::Array(items)) if items.is_empty() => Err("'input' must not be empty"),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => Ok(vec![EmbeddingInput::Tokens(items)]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(EmbeddingInput::Text(s)),
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => Ok(EmbeddingInput::Tokens(tokens)),
                _ => Err(SHAPE),
            })
            .collect(),
        Some(_) => Err(SHAPE),
        None => Err("missing required parameter: 'input'"),
    }
}

/// `POST /v1/embeddings`.
fn embeddings(req: &Value) -> Response<MockBody> {
    let inputs = match embedding_inputs(req.get("input")) {
        Ok(inputs) => inputs,
        Err(msg) => return error_response(Api::OpenAi, StatusCode::BAD_REQUEST, msg),
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_EMBEDDING_DIMS, |d| (d as usize).clamp(1, MAX_EMBEDDING_DIMS));
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");

    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let seed = match input {
                EmbeddingInput::Text(text) => {
                    prompt_tokens += text.split_whitespace().count() as u64;
                    fnv1a(text.as_bytes())
                }
                EmbeddingInput::Tokens(tokens) => {
                    prompt_tokens += tokens.len() as u64;
                    let ids: Vec<u8> = tokens.iter().flat_map(|t| t.as_i64().unwrap_or(0).to_le_bytes()).collect();
                    fnv1a(&ids)
                }
            };
            let vector = embedding_vector(seed, dims);
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64_encode(&raw))
            } else {
                Value::Array(vector.iter().map(|&x| json!(f64::from(x))).collect())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();

    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model_of(req),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

/// A deterministic, roughly unit-length vector derived from `seed`. Components are
/// multiples of 1/1024, so they print exactly and survive the f32 base64 round trip.
fn embedding_vector(seed: u64, dims: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dims as u64)
        .map(|j| {
            let bits = splitmix64(seed ^ j.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (bits >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    raw.iter().map(|x| ((x / norm) * 1024.0).round() as f32 / 1024.0).collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard base64 (RFC 4648 alphabet, with `=` padding).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/responses` (the OpenAI Responses API).
fn responses(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let instructions = req.get("instructions").cloned().unwrap_or(Value::Null);
    let input_tokens = chat_prompt_tokens(req.get("input"), text_words(&instructions));
    let max_output = req.get("max_output_tokens").and_then(Value::as_u64);
    let reply = Reply::plan(max_output, opts);
    let output_tokens = reply.words as u64;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let n = next_id();
    let resp_id = format!("resp_mock_{n}");
    let item_id = format!("msg_mock_{n}");
    let final_status = if reply.truncated { "incomplete" } else { "completed" };
    let text = reply.text();
    let message_item = |status: &str, content: Value| {
        json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let text_part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let final_item = message_item(final_status, json!([text_part(&text)]));
    // The whole response object; fields beyond the brief's list keep SDK models complete.
    let response_object = |status: &str, output: Value, usage: Value| {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": unix_now(),
            "status": status,
            "error": null,
            "incomplete_details": if reply.truncated && status == "incomplete" {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "instructions": instructions,
            "max_output_tokens": max_output,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    };

    if !is_stream(req) {
        let body = response_object(final_status, json!([final_item]), usage);
        return json_response(StatusCode::OK, &body);
    }

    // Precompute the bulky events; the per-word deltas are built lazily.
    let created = response_object("in_progress", json!([]), Value::Null);
    let completed = response_object(final_status, json!([final_item.clone()]), usage);
    let item_added = message_item("in_progress", json!([]));
    let empty_part = text_part("");
    let full_part = text_part(&text);
    let last_type = if reply.truncated { "response.incomplete" } else { "response.completed" };
    let words = reply.words;
    // Events: created, in_progress, output_item.added, content_part.added, one delta per
    // word, output_text.done, content_part.done, output_item.done, completed.
    let total = words + 8;
    sse_response(total, opts.delay, move |k| {
        let seq = k;
        let (kind, event) = match k {
            0 => ("response.created", json!({"response": created})),
            1 => ("response.in_progress", json!({"response": created})),
            2 => ("response.output_item.added", json!({"output_index": 0, "item": item_added})),
            3 => (
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": empty_part}),
            ),
            k if k < 4 + words => (
                "response.output_text.delta",
                json!({
                    "item_id": item_id, "output_index": 0, "content_index": 0,
                    "delta": piece(k - 4), "logprobs": [],
                }),
            ),
            k if k == 4 + words => (
                "response.output_text.done",
                json!({
                    "item_id": item_id, "output_index": 0, "content_index": 0,
                    "text": text, "logprobs": [],
                }),
            ),
            k if k == 5 + words => (
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": full_part}),
            ),
            k if k == 6 + words => ("response.output_item.done", json!({"output_index": 0, "item": final_item})),
            _ => (last_type, json!({"response": completed})),
        };
        let mut event = event;
        event["type"] = Value::from(kind);
        event["sequence_number"] = Value::from(seq);
        sse_event(kind, &event)
    })
}

/// `POST /v1/messages` (Anthropic Messages API).
fn messages(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let system_words = req.get("system").map_or(0, text_words);
    let input_tokens = chat_prompt_tokens(req.get("messages"), system_words);
    let reply = Reply::plan(max_tokens(req, &["max_tokens"]), opts);
    let stop_reason = if reply.truncated { "max_tokens" } else { "end_turn" };
    let id = format!("msg_mock_{}", next_id());
    let usage = |output_tokens: u64| {
        json!({
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        })
    };

    if !is_stream(req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply.text()}],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": usage(reply.words as u64),
            }),
        );
    }

    let start = json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(1),
        },
    });
    let words = reply.words;
    // Events: message_start, content_block_start, ping, one delta per word,
    // content_block_stop, message_delta, message_stop.
    let total = words + 6;
    sse_response(total, opts.delay, move |k| match k {
        0 => sse_event("message_start", &start),
        1 => sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        2 => sse_event("ping", &json!({"type": "ping"})),
        k if k < 3 + words => sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece(k - 3)}}),
        ),
        k if k == 3 + words => sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
        k if k == 4 + words => sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": words},
            }),
        ),
        _ => sse_event("message_stop", &json!({"type": "message_stop"})),
    })
}

/// `GET /v1/models`, in Anthropic's shape when the caller is an Anthropic client.
fn list_models(anthropic: bool) -> Response<MockBody> {
    let data: Vec<Value> = MODEL_IDS.iter().map(|id| model_object(id, anthropic)).collect();
    let body = if anthropic {
        json!({
            "data": data,
            "has_more": false,
            "first_id": MODEL_IDS.first(),
            "last_id": MODEL_IDS.last(),
        })
    } else {
        json!({"object": "list", "data": data})
    };
    json_response(StatusCode::OK, &body)
}

/// `GET /v1/models/{id}`: any id exists.
fn get_model(id: &str, anthropic: bool) -> Response<MockBody> {
    json_response(StatusCode::OK, &model_object(id, anthropic))
}

fn model_object(id: &str, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"})
    } else {
        json!({"id": id, "object": "model", "created": 1_735_689_600u64, "owned_by": "tracegate-mock"})
    }
}

// ---------------------------------------------------------------------------------------
// Errors and response builders
// ---------------------------------------------------------------------------------------

/// The answer to `x-mock-status`.
fn forced_error(api: Api, status: StatusCode) -> Response<MockBody> {
    let msg = format!("mock error: status {} requested with x-mock-status", status.as_u16());
    error_response(api, status, &msg)
}

/// An error in the provider's own JSON shape.
fn error_response(api: Api, status: StatusCode, message: &str) -> Response<MockBody> {
    let body = match api {
        Api::OpenAi => {
            let (kind, code) = match status.as_u16() {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => ("permission_error", Some("permission_denied")),
                404 => ("invalid_request_error", Some("not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                500..=599 => ("server_error", None),
                _ => ("invalid_request_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Api::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let bytes = serde_json::to_vec(body).expect("serializing a JSON value cannot fail");
    let mut response = Response::new(MockBody::Full(Some(Bytes::from(bytes))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `text/event-stream` response whose `total` events come from `event(0..total)`, with
/// `delay` between consecutive events.
fn sse_response(
    total: usize,
    delay: Duration,
    event: impl FnMut(usize) -> Bytes + Send + 'static,
) -> Response<MockBody> {
    let frames: Box<dyn Iterator<Item = Bytes> + Send> = Box::new((0..total).map(event));
    let mut response =
        Response::new(MockBody::Paced(Box::new(Paced { frames: frames.peekable(), delay, sleep: None })));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `data: {json}\n\n`.
fn sse_data(value: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).expect("serializing a JSON value cannot fail");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `event: {name}\ndata: {json}\n\n`.
fn sse_event(name: &str, value: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut buf, value).expect("serializing a JSON value cannot fail");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

// ---------------------------------------------------------------------------------------
// Response body
// ---------------------------------------------------------------------------------------

/// The mock's response body: a complete buffer, or SSE events produced one at a time.
enum MockBody {
    Full(Option<Bytes>),
    Paced(Box<Paced>),
}

/// Yields frames lazily, sleeping `delay` between two frames. Each frame is handed to
/// hyper on its own, so it reaches the socket before the next one is even built.
struct Paced {
    frames: std::iter::Peekable<Box<dyn Iterator<Item = Bytes> + Send>>,
    delay: Duration,
    /// Armed after a frame when another one follows and `delay` is non-zero.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced(paced) => {
                if let Some(sleep) = paced.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                let Some(frame) = paced.frames.next() else {
                    return Poll::Ready(None);
                };
                if !paced.delay.is_zero() && paced.frames.peek().is_some() {
                    let deadline = Instant::now() + paced.delay;
                    match paced.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => paced.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                } else {
                    paced.sleep = None;
                }
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Paced(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::net::SocketAddr;
    use std::time::Instant as StdInstant;
    use tokio::net::TcpStream;

    /// Starts a mock on an ephemeral loopback port; it lives as long as the test's runtime.
    async fn start(delay_ms: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = MockConfig { chunk_delay: Duration::from_millis(delay_ms) };
        tokio::spawn(serve(listener, config));
        addr
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        /// Data frames with the time they arrived, measured from sending the request.
        frames: Vec<(Duration, Bytes)>,
    }

    impl Reply {
        fn body(&self) -> String {
            let bytes: Vec<u8> = self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
            String::from_utf8(bytes).unwrap()
        }

        fn json(&self) -> Value {
            serde_json::from_str(&self.body()).unwrap()
        }

        /// SSE events as (event name, data) pairs.
        fn events(&self) -> Vec<(Option<String>, String)> {
            let body = self.body();
            assert!(body.ends_with("\n\n"), "stream must end with a complete event");
            body.split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|event| {
                    let mut name = None;
                    let mut data = String::new();
                    for line in event.lines() {
                        if let Some(n) = line.strip_prefix("event: ") {
                            name = Some(n.to_owned());
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            data = d.to_owned();
                        } else {
                            panic!("unexpected SSE line {line:?}");
                        }
                    }
                    (name, data)
                })
                .collect()
        }

        fn data_json(&self) -> Vec<Value> {
            self.events()
                .into_iter()
                .filter(|(_, d)| d != "[DONE]")
                .map(|(_, d)| serde_json::from_str(&d).unwrap())
                .collect()
        }
    }

    async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut builder = Request::builder().method(method).uri(path).header("host", addr.to_string());
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let started = StdInstant::now();
        let response = sender.send_request(request).await.unwrap();
        let (parts, mut incoming) = response.into_parts();
        let mut frames = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                frames.push((started.elapsed(), data));
            }
        }
        Reply { status: parts.status, headers: parts.headers, frames }
    }

    async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
        send(addr, "POST", path, &[], &body.to_string()).await
    }

    const HELLO: &str = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to me"}]"#;

    #[tokio::test]
    async fn chat_non_stream_has_openai_shape_and_usage() {
        let addr = start(0).await;
        let messages: Value = serde_json::from_str(HELLO).unwrap();
        let r = post(addr, "/v1/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages})).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], "application/json");
        let v = r.json();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
        let choice = &v["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], REPLY_TEXT);
        assert_eq!(choice["message"]["refusal"], Value::Null);
        assert_eq!(choice["finish_reason"], "stop");
        // (2 words + 3) + (4 words + 3) + 3
        assert_eq!(v["usage"]["prompt_tokens"], 15);
        assert_eq!(v["usage"]["completion_tokens"], 12);
        assert_eq!(v["usage"]["total_tokens"], 27);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);
        assert_eq!(v["system_fingerprint"], "fp_mock");
    }

    #[tokio::test]
    async fn chat_max_tokens_cuts_the_reply_with_length() {
        let addr = start(0).await;
        let r = post(addr, "/v1/chat/completions", json!({"model": "m", "messages": [], "max_tokens": 3})).await;
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], "This is a");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }

    #[tokio::test]
    async fn chat_stream_without_include_usage_has_no_usage() {
        let addr = start(0).await;
        let r = post(addr, "/v1/chat/completions", json!({"model": "m", "messages": [], "stream": true})).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], "text/event-stream");
        assert_eq!(r.headers["cache-control"], "no-cache");
        let events = r.events();
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks = r.data_json();
        assert_eq!(chunks.len(), 12 + 2);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
        let text: String =
            chunks[1..13].iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()).collect();
        assert_eq!(text, REPLY_TEXT);
        let last = &chunks[13]["choices"][0];
        assert_eq!(last["delta"], json!({}));
        assert_eq!(last["finish_reason"], "stop");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    }

    #[tokio::test]
    async fn chat_stream_with_include_usage_ends_with_usage_chunk_and_done() {
        let addr = start(0).await;
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "one two three"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_completion_tokens": 5,
        });
        let r = post(addr, "/v1/chat/completions", body).await;
        let events = r.events();
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks = r.data_json();
        assert_eq!(chunks.len(), 1 + 5 + 1 + 1);
        for chunk in &chunks[..chunks.len() - 1] {
            assert_eq!(chunk["usage"], Value::Null);
            assert!(chunk.get("usage").is_some());
        }
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 3 + 3 + 3);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 14);
    }

    #[tokio::test]
    async fn stream_chunks_are_spread_over_time() {
        let addr = start(0).await;
        let headers = [("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "50")];
        let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
        let r = send(addr, "POST", "/v1/chat/completions", &headers, &body).await;
        // role + 5 words + finish + [DONE] = 8 events, 7 gaps of 50 ms = 350 ms.
        assert_eq!(r.events().len(), 8);
        let first = r.frames.first().unwrap().0;
        let last = r.frames.last().unwrap().0;
        assert!(last >= Duration::from_millis(300), "stream took only {last:?}");
        assert!(last - first >= Duration::from_millis(200), "first {first:?}, last {last:?}");
        assert!(r.frames.len() >= 3, "events arrived in only {} frames", r.frames.len());
    }

    #[tokio::test]
    async fn config_delay_applies_and_zero_header_overrides_it() {
        let addr = start(40).await;
        let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
        let slow = send(addr, "POST", "/v1/chat/completions", &[("x-mock-chunks", "4")], &body).await;
        assert!(slow.frames.last().unwrap().0 >= Duration::from_millis(150));
        let fast = send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("x-mock-chunks", "200"), ("x-mock-chunk-delay-ms", "0")],
            &body,
        )
        .await;
        assert_eq!(fast.data_json().len(), 202);
        assert!(fast.frames.last().unwrap().0 < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn anthropic_stream_has_the_event_order_and_final_usage() {
        let addr = start(0).await;
        let body = json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 1024,
            "system": "be nice",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
            "stream": true,
        });
        let r = post(addr, "/v1/messages", body).await;
        assert_eq!(r.headers["content-type"], "text/event-stream");
        let events = r.events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(std::iter::repeat_n("content_block_delta", 12));
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
        let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        for ((name, _), d) in events.iter().zip(&data) {
            assert_eq!(d["type"], name.as_deref().unwrap());
        }
        let start_msg = &data[0]["message"];
        assert!(start_msg["id"].as_str().unwrap().starts_with("msg_mock_"));
        assert_eq!(start_msg["content"], json!([]));
        // 2 system words + (2 words + 3) + 3
        assert_eq!(start_msg["usage"]["input_tokens"], 10);
        assert_eq!(start_msg["usage"]["output_tokens"], 1);
        let text: String = data[3..15]
            .iter()
            .map(|d| {
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, REPLY_TEXT);
        assert_eq!(data[16]["delta"]["stop_reason"], "end_turn");
        assert_eq!(data[16]["usage"]["output_tokens"], 12);
    }

    #[tokio::test]
    async fn anthropic_non_stream_and_max_tokens() {
        let addr = start(0).await;
        let body = json!({"model": "claude", "max_tokens": 2, "messages": [{"role": "user", "content": "hey"}]});
        let v = post(addr, "/v1/messages", body).await.json();
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["content"], json!([{"type": "text", "text": "This is"}]));
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["stop_sequence"], Value::Null);
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 7, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        );
    }

    fn decode_f32s(b64: &str) -> Vec<f32> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut bytes = Vec::new();
        for c in b64.bytes().filter(|&c| c != b'=') {
            bits = (bits << 6) | alphabet.iter().position(|&a| a == c).unwrap() as u32;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                bytes.push((bits >> nbits) as u8);
            }
        }
        bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[tokio::test]
    async fn embeddings_floats_and_base64_agree() {
        let addr = start(0).await;
        let floats = post(addr, "/v1/embeddings", json!({"model": "e", "input": ["hello world", "bye"]})).await.json();
        assert_eq!(floats["object"], "list");
        assert_eq!(floats["model"], "e");
        assert_eq!(floats["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        assert_eq!(floats["data"].as_array().unwrap().len(), 2);
        assert_eq!(floats["data"][1]["index"], 1);
        assert_eq!(floats["data"][0]["object"], "embedding");
        let first: Vec<f32> =
            floats["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(first.len(), 8);
        let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 0.01, "norm {norm}");

        let b64 =
            post(addr, "/v1/embeddings", json!({"model": "e", "input": "hello world", "encoding_format": "base64"}))
                .await
                .json();
        let encoded = b64["data"][0]["embedding"].as_str().unwrap();
        assert_eq!(encoded.len(), 44); // 32 bytes
        assert_eq!(decode_f32s(encoded), first, "same input, same vector");

        let tokens = post(addr, "/v1/embeddings", json!({"input": [[1, 2, 3], [4]], "dimensions": 3})).await.json();
        assert_eq!(tokens["usage"]["prompt_tokens"], 4);
        assert_eq!(tokens["data"][1]["embedding"].as_array().unwrap().len(), 3);

        let bad = post(addr, "/v1/embeddings", json!({"model": "e"})).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[tokio::test]
    async fn responses_non_stream_shape() {
        let addr = start(0).await;
        let v = post(
            addr,
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "tell me a joke", "instructions": "be funny"}),
        )
        .await
        .json();
        assert!(v["id"].as_str().unwrap().starts_with("resp_mock_"));
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        let item = &v["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["role"], "assistant");
        assert_eq!(item["content"][0], json!({"type": "output_text", "text": REPLY_TEXT, "annotations": []}));
        // 2 instruction words + (4 words + 3) + 3
        assert_eq!(v["usage"]["input_tokens"], 12);
        assert_eq!(v["usage"]["output_tokens"], 12);
        assert_eq!(v["usage"]["total_tokens"], 24);
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    }

    #[tokio::test]
    async fn responses_stream_ends_with_completed_and_usage() {
        let addr = start(0).await;
        let body = json!({"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a b"}]}], "stream": true});
        let r = post(addr, "/v1/responses", body).await;
        let events = r.events();
        let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        for (i, ((name, _), d)) in events.iter().zip(&data).enumerate() {
            assert_eq!(d["type"], name.as_deref().unwrap());
            assert_eq!(d["sequence_number"], i);
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            names[..4],
            ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
        );
        assert!(names[4..16].iter().all(|n| *n == "response.output_text.delta"));
        assert_eq!(
            names[16..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let deltas: String = data[4..16].iter().map(|d| d["delta"].as_str().unwrap().to_owned()).collect();
        assert_eq!(deltas, REPLY_TEXT);
        assert_eq!(data[0]["response"]["status"], "in_progress");
        let done = &data.last().unwrap()["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], REPLY_TEXT);
        assert_eq!(done["usage"]["input_tokens"], 2 + 3 + 3);
        assert_eq!(done["usage"]["output_tokens"], 12);
    }

    #[tokio::test]
    async fn legacy_completions_plain_and_stream() {
        let addr = start(0).await;
        let v = post(addr, "/v1/completions", json!({"model": "i", "prompt": "once upon a time", "max_tokens": 4}))
            .await
            .json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "This is a mock");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"], json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}));

        let body = json!({"model": "i", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
        let r = post(addr, "/v1/completions", body).await;
        assert_eq!(r.events().last().unwrap().1, "[DONE]");
        let chunks = r.data_json();
        assert_eq!(chunks.len(), 12 + 2);
        let text: String = chunks[..12].iter().map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned()).collect();
        assert_eq!(text, REPLY_TEXT);
        assert_eq!(chunks[12]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[13]["usage"]["completion_tokens"], 12);
    }

    #[tokio::test]
    async fn x_mock_status_gives_provider_shaped_errors() {
        let addr = start(0).await;
        let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
        let r = send(addr, "POST", "/v1/chat/completions", &[("x-mock-status", "429")], &body).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers["content-type"], "application/json");
        let e = r.json();
        assert_eq!(e["error"]["type"], "requests");
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["param"], Value::Null);
        assert!(e["error"]["message"].as_str().unwrap().contains("429"));

        let r = send(addr, "POST", "/v1/messages", &[("x-mock-status", "529")], "{}").await;
        assert_eq!(r.status.as_u16(), 529);
        assert_eq!(r.json()["type"], "error");
        assert_eq!(r.json()["error"]["type"], "overloaded_error");

        let r = send(addr, "POST", "/v1/embeddings", &[("x-mock-status", "500")], "{}").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.json()["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn unknown_paths_and_bad_json_are_errors() {
        let addr = start(0).await;
        let r = send(addr, "POST", "/v2/nothing", &[], "{}").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.json()["error"]["message"].is_string());
        let r = send(addr, "POST", "/v1/chat/completions", &[], "{not json").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        let r = send(addr, "POST", "/v1/messages", &[], "[1]").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert_eq!(r.json()["type"], "error");
        let r = send(addr, "GET", "/v1/chat/completions", &[], "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn request_headers_are_echoed() {
        let addr = start(0).await;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = [
            ("traceparent", tp),
            ("tracestate", "a=1"),
            ("authorization", "Bearer sk-test"),
            ("x-tracegate-team", "search"),
            ("x-b3-traceid", "abc"),
            ("x-other", "not echoed"),
        ];
        let body = json!({"model": "m", "messages": []}).to_string();
        let r = send(addr, "POST", "/v1/chat/completions", &headers, &body).await;
        let echoed: Value = serde_json::from_str(r.headers["x-mock-request-headers"].to_str().unwrap()).unwrap();
        assert_eq!(
            echoed,
            json!({
                "traceparent": tp,
                "tracestate": "a=1",
                "authorization": "Bearer sk-test",
                "x-tracegate-team": "search",
                "x-b3-traceid": "abc",
            })
        );
        // Present on errors and streams too, empty when nothing matched.
        let r = send(addr, "GET", "/nope", &[("x-api-key", "k")], "").await;
        assert_eq!(r.headers["x-mock-request-headers"], r#"{"x-api-key":"k"}"#);
        let r = send(addr, "GET", "/healthz", &[], "").await;
        assert_eq!(r.headers["x-mock-request-headers"], "{}");
        assert_eq!(r.json(), json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn models_list_in_both_shapes() {
        let addr = start(0).await;
        let v = send(addr, "GET", "/v1/models", &[], "").await.json();
        assert_eq!(v["object"], "list");
        assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-4o-mini" && m["object"] == "model"));
        let v = send(addr, "GET", "/v1/models", &[("anthropic-version", "2023-06-01")], "").await.json();
        assert_eq!(v["has_more"], false);
        assert_eq!(v["data"][0]["type"], "model");
        let v = send(addr, "GET", "/v1/models/gpt-4o", &[], "").await.json();
        assert_eq!(v["id"], "gpt-4o");
    }

    #[tokio::test]
    async fn keep_alive_and_h2c() {
        let addr = start(0).await;
        // Several requests over one HTTP/1.1 connection.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let req = Request::post("/v1/chat/completions")
                .header("host", "mock")
                .body(Full::new(Bytes::from(r#"{"model":"m","messages":[],"stream":true}"#)))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.ends_with(b"data: [DONE]\n\n"));
        }
        // Cleartext HTTP/2 with prior knowledge.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::post(format!("http://{addr}/v1/messages"))
            .body(Full::new(Bytes::from(r#"{"model":"c","max_tokens":100,"messages":[]}"#)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["content"][0]["text"], REPLY_TEXT);
    }

    #[tokio::test]
    async fn dropping_serve_closes_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, MockConfig { chunk_delay: Duration::from_millis(200) }));
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::post("/v1/chat/completions")
            .header("host", "mock")
            .header("x-mock-chunks", "100")
            .body(Full::new(Bytes::from(r#"{"model":"m","messages":[],"stream":true}"#)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let mut body = resp.into_body();
        assert!(body.frame().await.is_some());
        server.abort();
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(rest.is_ok(), "stream kept going after the server was dropped");
    }
}
