//! The AWS Bedrock runtime: `POST /model/{modelId}/converse`, `/converse-stream`, `/invoke`
//! and `/invoke-with-response-stream`. The model id arrives percent-encoded (`%3A` for the
//! `:` of `...-v1:0`, `%2F` for the `/` of an ARN) and is decoded.
//!
//! Converse takes `messages`, `system` and `inferenceConfig.maxTokens`, and streams AWS
//! event-stream frames: `messageStart`, a `contentBlockDelta` per word, `contentBlockStop`,
//! `messageStop`, `metadata` (usage and latency). Invoke speaks the model family's own body,
//! told by the model id (an `anthropic.`, `meta.`, `amazon.titan-text` or
//! `amazon.titan-embed` model, region prefixes such as `us.` and ARNs included; else by the
//! body's keys): Anthropic Messages (the `messages` module's message and events), Llama's
//! `prompt` / `generation`, Titan Text's `inputText` / `results`, Titan Embeddings'
//! `inputText` / `embedding`. An invoke answer carries the `x-amzn-bedrock-*-token-count` and
//! `-invocation-latency` headers; its stream is `chunk` frames whose payload is
//! `{"bytes": base64 of the family's chunk JSON}`, the last chunk carrying
//! `amazon-bedrock-invocationMetrics`. Latencies are nominal: the chunk delay times the
//! words, at least 1 ms.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::formats::eventstream::encode_event;
use crate::mock_llm::body::{error_response, json_response, paced_response, MockBody};
use crate::mock_llm::embeddings::{embedding_vector, fnv1a};
use crate::mock_llm::messages::AnthropicReply;
use crate::mock_llm::reply::{chat_prompt_tokens, piece, text_words, Api, Opts, Reply};

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// Titan embedding size when the request does not ask for `dimensions`.
const DEFAULT_DIMS: usize = 8;
const MAX_DIMS: usize = 4096;

/// A Bedrock runtime operation (the path's last segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
}

/// The decoded model id and operation of a Bedrock path (`/model/{modelId}/{op}`), or `None`
/// when it is not one. The id is everything between `/model/` and the last `/`, so an ARN
/// whose `/` was not encoded is read whole too.
pub(super) fn bedrock_path(path: &str) -> Option<(String, Option<Op>)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, op) = rest.rsplit_once('/')?;
    if id.is_empty() {
        return None;
    }
    let op = match op {
        "converse" => Some(Op::Converse),
        "converse-stream" => Some(Op::ConverseStream),
        "invoke" => Some(Op::Invoke),
        "invoke-with-response-stream" => Some(Op::InvokeStream),
        _ => None,
    };
    Some((crate::formats::percent::decode(id, false), op))
}

/// Answers a Bedrock operation on `model_id`.
pub(super) fn bedrock(model_id: &str, op: Op, req: &Value, opts: &Opts) -> Response<MockBody> {
    match op {
        Op::Converse | Op::ConverseStream => converse(req, opts, op == Op::ConverseStream),
        Op::Invoke | Op::InvokeStream => invoke(model_id, req, opts, op == Op::InvokeStream),
    }
}

fn validation(message: &str) -> Response<MockBody> {
    error_response(Api::Bedrock, StatusCode::BAD_REQUEST, message)
}

/// The nominal latency of a reply of `words` words, in ms.
fn latency_ms(opts: &Opts, words: usize) -> u64 {
    (opts.delay.as_millis() as u64).saturating_mul(words as u64).max(1)
}

/// One AWS event-stream frame of JSON.
fn frame(event_type: &str, value: &Value) -> Bytes {
    Bytes::from(encode_event(event_type, &value.to_string()))
}

fn converse(req: &Value, opts: &Opts, stream: bool) -> Response<MockBody> {
    let Some(messages @ Value::Array(_)) = req.get("messages") else {
        return validation("The model returned the following errors: messages: field required");
    };
    let system_words = req.get("system").map_or(0, text_words);
    let input = chat_prompt_tokens(Some(messages), system_words);
    let reply = Reply::plan(req.pointer("/inferenceConfig/maxTokens").and_then(Value::as_u64), opts);
    let stop_reason = if reply.truncated { "max_tokens" } else { "end_turn" };
    let output = reply.words as u64;
    let usage = json!({"inputTokens": input, "outputTokens": output, "totalTokens": input + output});
    let latency = latency_ms(opts, reply.words);

    if !stream {
        return json_response(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": [{"text": reply.text()}]}},
                "stopReason": stop_reason,
                "usage": usage,
                "metrics": {"latencyMs": latency},
            }),
        );
    }

    // Frames: messageStart, one contentBlockDelta per word, contentBlockStop, messageStop,
    // metadata.
    let words = reply.words;
    paced_response(words + 4, opts.delay, EVENT_STREAM, move |k| match k {
        0 => frame("messageStart", &json!({"role": "assistant"})),
        k if k <= words => {
            frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": reply.piece(k - 1)}}))
        }
        k if k == words + 1 => frame("contentBlockStop", &json!({"contentBlockIndex": 0})),
        k if k == words + 2 => frame("messageStop", &json!({"stopReason": stop_reason})),
        _ => frame("metadata", &json!({"usage": usage, "metrics": {"latencyMs": latency}})),
    })
}

/// The model families `invoke` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    Anthropic,
    Meta,
    TitanText,
    TitanEmbed,
}

/// The family of `model_id` (its last `/` segment, past any region prefix such as `us.`), or
/// else of the body's keys.
pub(super) fn family(model_id: &str, req: &Value) -> Option<Family> {
    let base = model_id.rsplit('/').next().unwrap_or(model_id);
    let is = |vendor: &str| base.starts_with(vendor) || base.contains(&format!(".{vendor}"));
    if is("anthropic.") {
        return Some(Family::Anthropic);
    }
    if is("meta.") {
        return Some(Family::Meta);
    }
    if is("amazon.titan-embed") {
        return Some(Family::TitanEmbed);
    }
    if is("amazon.titan-text") || is("amazon.titan-tg") {
        return Some(Family::TitanText);
    }
    if req.get("anthropic_version").is_some() || req.get("messages").is_some() {
        Some(Family::Anthropic)
    } else if req.get("prompt").is_some() {
        Some(Family::Meta)
    } else if req.get("textGenerationConfig").is_some() {
        Some(Family::TitanText)
    } else if req.get("inputText").is_some() {
        Some(Family::TitanEmbed)
    } else {
        None
    }
}

/// One invoke answer: the whole body, or the chunk JSONs of its stream, with its token counts.
struct Invoked {
    input: u64,
    output: u64,
    latency: u64,
    body: Value,
    /// The stream's chunks (an embeddings model has none).
    chunks: Option<Box<dyn Fn(usize) -> Value + Send>>,
    chunk_count: usize,
}

fn words_of(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn invoke(model_id: &str, req: &Value, opts: &Opts, stream: bool) -> Response<MockBody> {
    let invoked = match family(model_id, req) {
        Some(Family::Anthropic) => {
            for key in ["anthropic_version", "max_tokens", "messages"] {
                if req.get(key).is_none() {
                    return validation(&format!("Malformed input request: #: required key [{key}] not found"));
                }
            }
            let answer = AnthropicReply::plan(req, model_id.to_owned(), opts, false);
            let (input, words) = (answer.input_tokens, answer.reply.words);
            Invoked {
                input,
                output: words as u64,
                latency: latency_ms(opts, words),
                body: answer.message(),
                chunk_count: answer.event_count(),
                chunks: Some(Box::new(move |k| answer.event(k).1)),
            }
        }
        Some(Family::Meta) => {
            let Some(prompt) = req.get("prompt").and_then(Value::as_str) else {
                return validation("Malformed input request: #: required key [prompt] not found");
            };
            let input = words_of(prompt);
            let reply = Reply::plan(req.get("max_gen_len").and_then(Value::as_u64), opts);
            let stop_reason = if reply.truncated { "length" } else { "stop" };
            let words = reply.words;
            let body = json!({
                "generation": reply.text(),
                "prompt_token_count": input,
                "generation_token_count": words,
                "stop_reason": stop_reason,
            });
            let count = words.max(1);
            Invoked {
                input,
                output: words as u64,
                latency: latency_ms(opts, words),
                body,
                chunk_count: count,
                chunks: Some(Box::new(move |k| {
                    let last = k + 1 == count;
                    json!({
                        "generation": if words == 0 { "" } else { piece(k) },
                        "prompt_token_count": if k == 0 { json!(input) } else { Value::Null },
                        "generation_token_count": if words == 0 { 0 } else { k + 1 },
                        "stop_reason": if last { json!(stop_reason) } else { Value::Null },
                    })
                })),
            }
        }
        Some(Family::TitanText) => {
            let Some(text) = req.get("inputText").and_then(Value::as_str) else {
                return validation("Malformed input request: #: required key [inputText] not found");
            };
            let input = words_of(text);
            let max = req.pointer("/textGenerationConfig/maxTokenCount").and_then(Value::as_u64);
            let reply = Reply::plan(max, opts);
            let reason = if reply.truncated { "LENGTH" } else { "FINISH" };
            let words = reply.words;
            let body = json!({
                "inputTextTokenCount": input,
                "results": [{"tokenCount": words, "outputText": reply.text(), "completionReason": reason}],
            });
            let count = words.max(1);
            Invoked {
                input,
                output: words as u64,
                latency: latency_ms(opts, words),
                body,
                chunk_count: count,
                chunks: Some(Box::new(move |k| {
                    let last = k + 1 == count;
                    let mut chunk = json!({
                        "outputText": if words == 0 { "" } else { piece(k) },
                        "index": 0,
                        "totalOutputTextTokenCount": if words == 0 { 0 } else { k + 1 },
                        "completionReason": if last { json!(reason) } else { Value::Null },
                    });
                    if k == 0 {
                        chunk["inputTextTokenCount"] = json!(input);
                    }
                    chunk
                })),
            }
        }
        Some(Family::TitanEmbed) => {
            let Some(text) = req.get("inputText").and_then(Value::as_str) else {
                return validation("Malformed input request: #: required key [inputText] not found");
            };
            let dims =
                req.get("dimensions").and_then(Value::as_u64).map_or(DEFAULT_DIMS, |d| (d as usize).clamp(1, MAX_DIMS));
            let vector: Vec<Value> =
                embedding_vector(fnv1a(text.as_bytes()), dims).iter().map(|&x| json!(f64::from(x))).collect();
            let input = words_of(text);
            Invoked {
                input,
                output: 0,
                latency: 1,
                body: json!({"embedding": vector, "inputTextTokenCount": input}),
                chunks: None,
                chunk_count: 0,
            }
        }
        None => {
            let msg = format!("mock-llm does not know the model family of '{model_id}'");
            return validation(&msg);
        }
    };

    if !stream {
        let mut response = json_response(StatusCode::OK, &invoked.body);
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-amzn-bedrock-input-token-count", invoked.input),
            ("x-amzn-bedrock-output-token-count", invoked.output),
            ("x-amzn-bedrock-invocation-latency", invoked.latency),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
        return response;
    }

    let Some(chunks) = invoked.chunks else {
        return validation("The model is unsupported for streaming");
    };
    let count = invoked.chunk_count;
    let metrics = json!({
        "inputTokenCount": invoked.input,
        "outputTokenCount": invoked.output,
        "invocationLatency": invoked.latency,
        "firstByteLatency": 1,
    });
    let mut response = paced_response(count, opts.delay, EVENT_STREAM, move |k| {
        let mut chunk = chunks(k);
        if k + 1 == count {
            chunk["amazon-bedrock-invocationMetrics"] = metrics.clone();
        }
        let bytes = base64::engine::general_purpose::STANDARD.encode(chunk.to_string());
        frame("chunk", &json!({"bytes": bytes}))
    });
    response.headers_mut().insert("x-amzn-bedrock-content-type", HeaderValue::from_static("application/json"));
    response
}
