//! `mock-llm`: an offline stand-in for the OpenAI, Anthropic, Gemini, Azure OpenAI and AWS
//! Bedrock HTTP APIs.
//!
//! It answers the common endpoints with replies shaped like the real providers' (close
//! enough that the official `openai`, `anthropic`, `google-genai` and `boto3` SDKs parse them
//! unchanged), so demos, integration tests and load benchmarks of the proxy need no network
//! and no API key.
//! Everything is deterministic: the reply is always the same sentence
//! ([`REPLY_TEXT`], one streamed chunk per word), token counts are computed from the
//! request (the rule is documented on `chat_prompt_tokens`), and embeddings are derived from
//! a hash of the input.
//!
//! Structured outputs: a chat `response_format` or a Responses API `text.format` of type
//! `json_schema` is answered with JSON that fits the schema (`schema_fit`: every property,
//! first `enum` / `anyOf` branch, `$ref`s followed, formats such as `date-time` or `uuid` as
//! valid examples; deterministic and bounded, recursive schemas included), and `json_object`
//! with a small object, so the SDKs' `chat.completions.parse` and `responses.parse` work
//! offline. The JSON streams piece by piece (a piece ends at its punctuation or before a space
//! in a string), one output token per piece. A format that is not an object, an unknown
//! format `type`, or a `schema` that is not an object gets a 400.
//!
//! Endpoints (all `POST` but the `GET`s):
//! - OpenAI: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`,
//!   `GET /v1/models`, `GET /v1/models/{id}` (Anthropic-shaped when the request carries
//!   `anthropic-version`).
//! - Anthropic: `/v1/messages`.
//! - Azure OpenAI (`azure`): `/openai/deployments/{deployment}/chat/completions`,
//!   `/completions`, `/embeddings` (with `?api-version=`; answers name the model
//!   deployed, `gpt-4o-mini-2024-07-18`), and the v1 API `/openai/v1/...`; content-filter results included.
//! - Gemini (`gemini`): `/v1beta/models/{model}:generateContent`, `:streamGenerateContent`
//!   (SSE with `?alt=sse`, else a streamed JSON array), `:countTokens`, `:embedContent`,
//!   `:batchEmbedContents`, the same under `/v1/models/`.
//! - Bedrock runtime (`bedrock`): `/model/{modelId}/converse`, `/converse-stream`, `/invoke`
//!   and `/invoke-with-response-stream` (percent-encoded model ids decoded; AWS event-stream
//!   frames; invoke bodies per model family: Anthropic, Meta Llama, Titan Text, Titan
//!   Embeddings).
//! - `GET /healthz`.
//!
//! Anything else gets a 404 in OpenAI's error shape; a body that is not a JSON object gets a
//! 400 in the endpoint's provider shape.
//!
//! Streams are real streaming bodies: each SSE event (event-stream frame, JSON array element)
//! is handed to the connection as it is produced, with the configured delay *between* events
//! (none before the first or after the last).
//!
//! Test hooks, read from request headers:
//! - `x-mock-status: <code>` (400..=599): answer that status with a provider-shaped error
//!   body (OpenAI `{"error":{...}}`, Anthropic `{"type":"error","error":{...}}` on
//!   `/v1/messages`, Google `{"error":{"code","message","status"}}` on Gemini paths, Bedrock
//!   `{"message"}` with `x-amzn-errortype` on `/model/...`) instead of a reply; on a stream
//!   too, as a plain HTTP error.
//! - `x-mock-chunks: <n>`: the reply has `n` words (the sentence repeats cyclically), so a
//!   test can ask for long streams (a structured-output reply keeps its JSON). `max_tokens`
//!   (and each provider's equivalent) still caps it.
//! - `x-mock-chunk-delay-ms: <n>`: the delay between streamed events for this request.
//!
//! Every response carries `x-mock-request-headers`, a compact JSON object (name → value,
//! repeated headers joined with `", "`) of the request headers whose names start with
//! `traceparent`, `tracestate`, `b3`, `x-b3-`, `authorization`, `x-api-key`, `x-tracegate-`,
//! `x-goog-api-key`, `api-key`, `x-amz-` or `host`, so a test can see exactly what reached the
//! upstream.
//!
//! One file per API: `chat`, `completions`, `embeddings`, `responses`, `messages`
//! (Anthropic), `models`, `gemini`, `azure` (its paths and filter results), `bedrock`;
//! `reply` holds what they share (the reply, the test hooks, token counts), `schema_fit` the
//! JSON value that fits a schema, and `body` the responses and paced streams. Of the rest of
//! the crate it imports only `formats` (Bedrock's event-stream frames, percent-decoding): it is
//! the upstream, not a part of the proxy.

pub(crate) mod azure;
pub(crate) mod bedrock;
pub(crate) mod body;
pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod embeddings;
pub(crate) mod gemini;
pub(crate) mod messages;
pub(crate) mod models;
pub(crate) mod reply;
pub(crate) mod responses;
pub(crate) mod schema_fit;

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::mock_llm::azure::{azure_path, has_api_version};
use crate::mock_llm::bedrock::{bedrock, bedrock_path};
use crate::mock_llm::body::{error_response, forced_error, json_response, MockBody};
use crate::mock_llm::chat::chat_completions;
use crate::mock_llm::completions::completions;
use crate::mock_llm::embeddings::embeddings;
use crate::mock_llm::gemini::{gemini, gemini_path};
use crate::mock_llm::messages::messages;
use crate::mock_llm::models::{get_model, list_models};
use crate::mock_llm::reply::{forced_status, Api, Opts};

/// The delay between streamed events that `tracegate mock-llm` uses when not told otherwise.
pub const DEFAULT_CHUNK_DELAY: Duration = Duration::from_millis(20);

pub use reply::REPLY_TEXT;

/// Request bodies larger than this are refused with 413.
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

/// Name prefixes of the request headers echoed back in `x-mock-request-headers`.
const ECHOED_HEADER_PREFIXES: [&str; 11] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-",
    "authorization",
    "x-api-key",
    "x-tracegate-",
    "x-goog-api-key",
    "api-key",
    "x-amz-",
    "host",
];

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

/// A `POST` endpoint, found from the request's path and query.
#[derive(Debug)]
enum Call {
    /// An OpenAI or Anthropic endpoint; `azure` when it came by an Azure OpenAI path.
    Plain {
        endpoint: Endpoint,
        azure: Option<AzureCall>,
    },
    Gemini {
        model: String,
        method: gemini::Method,
    },
    /// A Bedrock runtime path; `op` is `None` for an operation the mock does not know.
    Bedrock {
        model: String,
        op: Option<bedrock::Op>,
    },
}

#[derive(Debug)]
struct AzureCall {
    /// The deployment of `/openai/deployments/{deployment}/...` (answered as the model it runs, `azure::deployed_model`).
    deployment: Option<String>,
    /// A deployment path without an `api-version` query (answered with a 404).
    missing_api_version: bool,
}

impl Call {
    fn from_uri(path: &str, query: Option<&str>) -> Option<Call> {
        if let Some(endpoint) = Endpoint::from_path(path) {
            return Some(Call::Plain { endpoint, azure: None });
        }
        if let Some(azure) = azure_path(path) {
            let endpoint = Endpoint::from_path(&azure.openai_path).filter(|e| e.api() == Api::OpenAi)?;
            let missing_api_version = azure.deployment.is_some() && !has_api_version(query);
            let deployment = azure.deployment;
            return Some(Call::Plain { endpoint, azure: Some(AzureCall { deployment, missing_api_version }) });
        }
        if let Some((model, method)) = gemini_path(path, query) {
            return Some(Call::Gemini { model, method });
        }
        let (model, op) = bedrock_path(path)?;
        Some(Call::Bedrock { model, op })
    }

    fn api(&self) -> Api {
        match self {
            Call::Plain { endpoint, .. } => endpoint.api(),
            Call::Gemini { .. } => Api::Gemini,
            Call::Bedrock { .. } => Api::Bedrock,
        }
    }
}

async fn handle(req: Request<Incoming>, default_delay: Duration) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    tracing::debug!(method = %parts.method, uri = %parts.uri, "mock-llm request");
    let echoed = echoed_headers(&parts.headers);
    let mut response =
        route(&parts.method, parts.uri.path(), parts.uri.query(), &parts.headers, body, default_delay).await;
    if let Some(value) = echoed {
        response.headers_mut().insert("x-mock-request-headers", value);
    }
    response
}

async fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Incoming,
    default_delay: Duration,
) -> Response<MockBody> {
    if let Some(call) = Call::from_uri(path, query) {
        let api = call.api();
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
        if let Call::Plain { azure: Some(AzureCall { missing_api_version: true, .. }), .. } = &call {
            return error_response(api, StatusCode::NOT_FOUND, "Resource not found");
        }
        if let Some(status) = forced_status(headers) {
            return forced_error(api, status);
        }
        let mut req: Value = match serde_json::from_slice::<Value>(&bytes) {
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
        return match call {
            Call::Plain { endpoint, azure } => {
                // Azure answers with the model deployed, never the deployment's name.
                if azure.as_ref().is_some_and(|a| a.deployment.is_some())
                    && req.get("model").and_then(Value::as_str).is_none()
                {
                    let openai_path = match endpoint {
                        Endpoint::Completions => "/v1/completions",
                        Endpoint::Embeddings => "/v1/embeddings",
                        _ => "/v1/chat/completions",
                    };
                    req["model"] = Value::String(azure::deployed_model(openai_path).to_string());
                }
                let azure = azure.is_some();
                match endpoint {
                    Endpoint::Chat => chat_completions(&req, &opts, azure),
                    Endpoint::Completions => completions(&req, &opts, azure),
                    Endpoint::Embeddings => embeddings(&req),
                    Endpoint::Responses => responses::responses(&req, &opts),
                    Endpoint::Messages => messages(&req, &opts),
                }
            }
            Call::Gemini { model, method } => gemini(&model, &method, &req, &opts),
            Call::Bedrock { model, op: Some(op) } => bedrock(&model, op, &req, &opts),
            Call::Bedrock { op: None, .. } => {
                let msg = format!("mock-llm has no Bedrock operation {path}");
                error_response(api, StatusCode::NOT_FOUND, &msg)
            }
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

#[cfg(test)]
mod tests;
