//! The mock's responses: provider-shaped errors, JSON, and streams (SSE, AWS event-stream,
//! Gemini's JSON array) paced frame by frame ([`MockBody`], with the configured delay between
//! frames).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde_json::{json, Value};
use tokio::time::{Instant, Sleep};

use crate::mock_llm::reply::Api;

/// The chunks of one OpenAI stream (chat or legacy completions): each event wraps its
/// `choices` in the stream's envelope; with `with_usage` every chunk has `usage`, null but on
/// the usage chunk, as OpenAI sends it.
pub(super) fn openai_chunk(
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    with_usage: bool,
) -> impl Fn(Value, Option<&Value>) -> Bytes {
    move |choices, usage| {
        let mut v = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if with_usage {
            v["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        sse_data(&v)
    }
}

/// The answer to `x-mock-status`.
pub(super) fn forced_error(api: Api, status: StatusCode) -> Response<MockBody> {
    let msg = format!("mock error: status {} requested with x-mock-status", status.as_u16());
    error_response(api, status, &msg)
}

/// An error in the provider's own JSON shape.
pub(super) fn error_response(api: Api, status: StatusCode, message: &str) -> Response<MockBody> {
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
        Api::Gemini => {
            let name = match status.as_u16() {
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                409 => "ABORTED",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                501 => "UNIMPLEMENTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                500..=599 => "INTERNAL",
                _ => "INVALID_ARGUMENT",
            };
            json!({"error": {"code": status.as_u16(), "message": message, "status": name}})
        }
        Api::Bedrock => {
            let mut response = json_response(status, &json!({"message": message}));
            response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static(bedrock_error_type(status)));
            return response;
        }
    };
    json_response(status, &body)
}

/// The exception Bedrock names (in `x-amzn-errortype`) for an error status.
pub(super) fn bedrock_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UnrecognizedClientException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 | 504 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        500..=599 => "InternalServerException",
        _ => "ValidationException",
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let bytes = serde_json::to_vec(body).expect("serializing a JSON value cannot fail");
    let mut response = Response::new(MockBody::Full(Some(Bytes::from(bytes))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `text/event-stream` response whose `total` events come from `event(0..total)`, with
/// `delay` between consecutive events.
pub(super) fn sse_response(
    total: usize,
    delay: Duration,
    event: impl FnMut(usize) -> Bytes + Send + 'static,
) -> Response<MockBody> {
    let mut response = paced_response(total, delay, "text/event-stream", event);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A `content_type` response whose `total` body frames come from `frame(0..total)`, with
/// `delay` between consecutive frames (SSE events, AWS event-stream frames, or the elements
/// of Gemini's streamed JSON array).
pub(super) fn paced_response(
    total: usize,
    delay: Duration,
    content_type: &'static str,
    frame: impl FnMut(usize) -> Bytes + Send + 'static,
) -> Response<MockBody> {
    let frames: Box<dyn Iterator<Item = Bytes> + Send> = Box::new((0..total).map(frame));
    let mut response =
        Response::new(MockBody::Paced(Box::new(Paced { frames: frames.peekable(), delay, sleep: None })));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `data: {json}\n\n`.
pub(super) fn sse_data(value: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).expect("serializing a JSON value cannot fail");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `event: {name}\ndata: {json}\n\n`.
pub(super) fn sse_event(name: &str, value: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut buf, value).expect("serializing a JSON value cannot fail");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

pub(super) fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// The mock's response body: a complete buffer, or SSE events produced one at a time.
pub(super) enum MockBody {
    Full(Option<Bytes>),
    Paced(Box<Paced>),
}

/// Yields frames lazily, sleeping `delay` between two frames. Each frame is handed to
/// hyper on its own, so it reaches the socket before the next one is even built.
pub(super) struct Paced {
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
