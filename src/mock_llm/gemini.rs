//! Google's Gemini API (`/v1beta/models/{model}:{method}`, and the same under `/v1/`):
//! `generateContent`, `streamGenerateContent` (SSE with `?alt=sse`, else a JSON array streamed
//! element by element), `countTokens`, `embedContent` and `batchEmbedContents`.
//!
//! Prompt tokens are the words of the text of `contents[].parts[]` and of `systemInstruction`
//! (no per-message overhead); the reply is the mock's sentence, one word per streamed chunk,
//! cut by `generationConfig.maxOutputTokens` (`finishReason: "MAX_TOKENS"`). A
//! `generationConfig.thinkingConfig` with a non-zero `thinkingBudget` or `includeThoughts`
//! adds [`THOUGHT_TOKENS`] thinking tokens (fewer if the budget is smaller) as
//! `thoughtsTokenCount`, counted in `totalTokenCount`; with `includeThoughts` the JSON answer
//! also has a thought part (`"thought": true`) before the text. Request fields are read by
//! either spelling, `camelCase` or `snake_case`, as Google's API reads them.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{error_response, json_response, paced_response, MockBody};
use crate::mock_llm::embeddings::{embedding_vector, fnv1a};
use crate::mock_llm::reply::{next_id, Api, Opts, Reply};

/// The thinking tokens a request that asks for thinking is charged.
const THOUGHT_TOKENS: u64 = 8;
/// The thought summary of a request with `includeThoughts`.
const THOUGHT_TEXT: &str = "The user wants the mock reply.";
/// Embedding size when the request does not ask for `outputDimensionality`.
const DEFAULT_DIMS: usize = 8;
const MAX_DIMS: usize = 4096;

/// A request field by its JSON name (`camelCase`) or its proto name (`snake_case`): Google's
/// JSON parser takes both, and the SDKs send either (google-genai 3.x writes
/// `thinkingConfig: {"thinking_budget", "include_thoughts"}`).
fn field<'a>(value: &'a Value, camel: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| {
        let mut snake = String::with_capacity(camel.len() + 4);
        for c in camel.chars() {
            if c.is_ascii_uppercase() {
                snake.push('_');
                snake.push(c.to_ascii_lowercase());
            } else {
                snake.push(c);
            }
        }
        value.get(&snake)
    })
}

/// The `generationConfig.{name}` of a request.
fn generation_config<'a>(req: &'a Value, name: &str) -> Option<&'a Value> {
    field(field(req, "generationConfig")?, name)
}

/// A Gemini model method (the part of the path after the `:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Generate,
    /// `streamGenerateContent`; `sse` when the query has `alt=sse`.
    Stream {
        sse: bool,
    },
    CountTokens,
    Embed,
    BatchEmbed,
    Unknown(String),
}

/// The model and method of a Gemini path (`/v1beta/models/{model}:{method}` or
/// `/v1/models/...`), or `None` when it is not one.
pub(super) fn gemini_path(path: &str, query: Option<&str>) -> Option<(String, Method)> {
    let rest = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    let sse = query.unwrap_or("").split('&').any(|p| p == "alt=sse");
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => Method::Stream { sse },
        "countTokens" => Method::CountTokens,
        "embedContent" => Method::Embed,
        "batchEmbedContents" => Method::BatchEmbed,
        other => Method::Unknown(other.to_owned()),
    };
    Some((crate::formats::percent::decode(model, false), method))
}

/// Answers a Gemini method on `model`.
pub(super) fn gemini(model: &str, method: &Method, req: &Value, opts: &Opts) -> Response<MockBody> {
    match method {
        Method::Generate => generate(model, req, opts, None),
        Method::Stream { sse } => generate(model, req, opts, Some(*sse)),
        Method::CountTokens => {
            // Either the contents themselves, or a whole `generateContentRequest`.
            let inner = field(req, "generateContentRequest").unwrap_or(req);
            json_response(StatusCode::OK, &json!({"totalTokens": prompt_tokens(inner)}))
        }
        Method::Embed => match embedding(req) {
            Ok(values) => json_response(StatusCode::OK, &json!({"embedding": {"values": values}})),
            Err(msg) => error_response(Api::Gemini, StatusCode::BAD_REQUEST, &msg),
        },
        Method::BatchEmbed => {
            let Some(Value::Array(requests)) = req.get("requests") else {
                return error_response(
                    Api::Gemini,
                    StatusCode::BAD_REQUEST,
                    "* BatchEmbedContentsRequest.requests: requests is not specified",
                );
            };
            let mut embeddings = Vec::with_capacity(requests.len());
            for request in requests {
                match embedding(request) {
                    Ok(values) => embeddings.push(json!({"values": values})),
                    Err(msg) => return error_response(Api::Gemini, StatusCode::BAD_REQUEST, &msg),
                }
            }
            json_response(StatusCode::OK, &json!({"embeddings": embeddings}))
        }
        Method::Unknown(name) => {
            let msg = format!("Method not found: models/{model}:{name}");
            error_response(Api::Gemini, StatusCode::NOT_FOUND, &msg)
        }
    }
}

/// Words of the text in a Gemini value: a string's words; an array's elements; an object's
/// `text` string and its `parts`.
fn gemini_words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(gemini_words).sum(),
        Value::Object(obj) => {
            obj.get("text").and_then(Value::as_str).map_or(0, |t| t.split_whitespace().count() as u64)
                + obj.get("parts").map_or(0, gemini_words)
        }
        _ => 0,
    }
}

/// The prompt tokens of a generate request: words of `contents` and `systemInstruction`.
pub(super) fn prompt_tokens(req: &Value) -> u64 {
    req.get("contents").map_or(0, gemini_words) + field(req, "systemInstruction").map_or(0, gemini_words)
}

/// The thinking tokens a request asks for, and whether it wants the thoughts shown.
fn thinking(req: &Value) -> (u64, bool) {
    let Some(config) = generation_config(req, "thinkingConfig") else {
        return (0, false);
    };
    let include = field(config, "includeThoughts").and_then(Value::as_bool).unwrap_or(false);
    let tokens = match field(config, "thinkingBudget").and_then(Value::as_i64) {
        Some(0) => 0,
        Some(budget) if budget > 0 => THOUGHT_TOKENS.min(budget as u64),
        Some(_) => THOUGHT_TOKENS, // -1: dynamic thinking
        None => 0,
    };
    (if include && tokens == 0 { THOUGHT_TOKENS } else { tokens }, include)
}

fn generate(model: &str, req: &Value, opts: &Opts, stream: Option<bool>) -> Response<MockBody> {
    if req.get("contents").is_none() {
        return error_response(
            Api::Gemini,
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let prompt = prompt_tokens(req);
    let (thoughts, include_thoughts) = thinking(req);
    let reply = Reply::plan(generation_config(req, "maxOutputTokens").and_then(Value::as_u64), opts);
    let finish_reason = if reply.truncated { "MAX_TOKENS" } else { "STOP" };
    let output = reply.words as u64;
    let mut usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
    });
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    let response_id = format!("mock-{}", next_id());
    let model = model.to_owned();

    let Some(sse) = stream else {
        let mut parts = vec![json!({"text": reply.text()})];
        if include_thoughts {
            parts.insert(0, json!({"text": THOUGHT_TEXT, "thought": true}));
        }
        return json_response(
            StatusCode::OK,
            &json!({
                "candidates": [{
                    "content": {"parts": parts, "role": "model"},
                    "finishReason": finish_reason,
                    "index": 0,
                }],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id,
            }),
        );
    };

    // One chunk per word (one empty chunk for an empty reply); the last has the finish reason
    // and the full usage, the earlier ones the prompt's count only.
    let total = reply.words.max(1);
    let chunk = move |k: usize| {
        let last = k + 1 == total;
        let text = if reply.words == 0 { "" } else { reply.piece(k) };
        let mut candidate = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if last {
            candidate["finishReason"] = json!(finish_reason);
        }
        let usage = if last { usage.clone() } else { json!({"promptTokenCount": prompt, "totalTokenCount": prompt}) };
        let value = json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id,
        });
        let json = serde_json::to_vec(&value).expect("serializing a JSON value cannot fail");
        let mut buf = Vec::with_capacity(json.len() + 8);
        if sse {
            buf.extend_from_slice(b"data: ");
            buf.extend_from_slice(&json);
            buf.extend_from_slice(b"\r\n\r\n");
        } else {
            buf.extend_from_slice(if k == 0 { b"[" } else { b",\r\n" as &[u8] });
            buf.extend_from_slice(&json);
            if last {
                buf.push(b']');
            }
        }
        Bytes::from(buf)
    };
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    paced_response(total, opts.delay, content_type, chunk)
}

/// The values of one `embedContent` request's embedding: from a hash of its text (the
/// words of `content.parts[].text`, joined by a space), `outputDimensionality` long.
fn embedding(req: &Value) -> Result<Vec<Value>, String> {
    let Some(content) = req.get("content") else {
        return Err("* EmbedContentRequest.content: content is not specified".to_owned());
    };
    let texts: Vec<&str> = match content.get("parts") {
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => Vec::new(),
    };
    if texts.is_empty() {
        return Err("* EmbedContentRequest.content.parts: contents must not be empty".to_owned());
    }
    let dims = field(req, "outputDimensionality")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_DIMS, |d| (d as usize).clamp(1, MAX_DIMS));
    let vector = embedding_vector(fnv1a(texts.join(" ").as_bytes()), dims);
    Ok(vector.iter().map(|&x| json!(f64::from(x))).collect())
}
