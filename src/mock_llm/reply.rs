//! What every mock endpoint shares: the reply sentence and how long a reply is, the JSON reply
//! of a structured-output request (`response_format` / `text.format`) and its pieces, the
//! per-request test hooks (`x-mock-chunks`, `x-mock-chunk-delay-ms`, `x-mock-status`), and the
//! mock's deterministic token counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::schema_fit;

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

/// Upper bound for `x-mock-chunks`, so a typo cannot make a stream effectively endless.
const MAX_CHUNKS: usize = 1_000_000;

/// Which provider's conventions (error shape) an endpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Api {
    OpenAi,
    Anthropic,
    /// Google's Gemini API: `{"error":{"code","message","status"}}`.
    Gemini,
    /// AWS Bedrock runtime: `{"message"}` with the error's name in `x-amzn-errortype`.
    Bedrock,
}

/// Per-request knobs taken from the test-hook headers.
pub(super) struct Opts {
    pub(super) delay: Duration,
    pub(super) chunks: Option<usize>,
}

impl Opts {
    pub(super) fn from_headers(headers: &HeaderMap, default_delay: Duration) -> Opts {
        let delay = header_u64(headers, "x-mock-chunk-delay-ms").map(Duration::from_millis).unwrap_or(default_delay);
        let chunks =
            header_u64(headers, "x-mock-chunks").map(|n| usize::try_from(n).unwrap_or(MAX_CHUNKS).min(MAX_CHUNKS));
        Opts { delay, chunks }
    }
}

pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The `x-mock-status` hook: an error status to answer with, if one was asked for.
pub(super) fn forced_status(headers: &HeaderMap) -> Option<StatusCode> {
    let code = u16::try_from(header_u64(headers, "x-mock-status")?).ok()?;
    StatusCode::from_u16(code).ok().filter(|s| s.is_client_error() || s.is_server_error())
}

/// How long the reply is and whether `max_tokens` cut it short; for a structured-output
/// request, the pieces of its JSON text.
#[derive(Clone, Debug)]
pub(super) struct Reply {
    pub(super) words: usize,
    pub(super) truncated: bool,
    /// The JSON text's pieces (see [`json_pieces`]), or `None` for the sentence.
    json: Option<Vec<String>>,
}

impl Reply {
    pub(super) fn plan(max_tokens: Option<u64>, opts: &Opts) -> Reply {
        let wanted = opts.chunks.unwrap_or(REPLY_PIECES.len());
        match max_tokens {
            Some(max) if max < wanted as u64 => Reply { words: max as usize, truncated: true, json: None },
            _ => Reply { words: wanted, truncated: false, json: None },
        }
    }

    /// The reply to a request whose format asks for JSON: `format`'s answer (see
    /// [`structured_text`]) when it has one, else [`Reply::plan`]. A structured reply ignores
    /// `x-mock-chunks`; `max_tokens` still cuts it, like the real API (the text is then not
    /// complete JSON).
    pub(super) fn for_format(text: Option<String>, max_tokens: Option<u64>, opts: &Opts) -> Reply {
        let Some(text) = text else {
            return Reply::plan(max_tokens, opts);
        };
        let mut pieces = json_pieces(&text);
        let truncated = max_tokens.is_some_and(|max| max < pieces.len() as u64);
        if truncated {
            pieces.truncate(max_tokens.unwrap_or(0) as usize);
        }
        Reply { words: pieces.len(), truncated, json: Some(pieces) }
    }

    /// The full reply text: the concatenation of all streamed pieces.
    pub(super) fn text(&self) -> String {
        match &self.json {
            Some(pieces) => pieces.concat(),
            None if self.words == REPLY_PIECES.len() => REPLY_TEXT.to_owned(),
            None => (0..self.words).map(piece).collect(),
        }
    }

    /// The `i`-th streamed piece of this reply.
    pub(super) fn piece(&self, i: usize) -> &str {
        match &self.json {
            Some(pieces) => pieces.get(i).map_or("", String::as_str),
            None => piece(i),
        }
    }
}

/// The JSON text a request's output format asks for, read from `format` (chat's
/// `response_format`, or the Responses API's `text.format`, named `param` in errors):
/// `Ok(None)` for plain text (no format, or `{"type": "text"}`); a small object for
/// `{"type": "json_object"}`; for `{"type": "json_schema"}` a value that fits the schema
/// ([`schema_fit::fit`]; chat nests `name`, `schema` and `strict` under `json_schema`, the
/// Responses API has them on the format itself; no `schema` at all is answered like
/// `json_object`). `Err` (a 400) for a format that is not an object, an unknown `type`, or a
/// `schema` that is neither an object nor a boolean; any schema object is answered.
pub(super) fn structured_text(format: Option<&Value>, param: &str) -> Result<Option<String>, String> {
    let format = match format {
        None | Some(Value::Null) => return Ok(None),
        Some(format @ Value::Object(_)) => format,
        Some(_) => return Err(format!("Invalid type for '{param}': expected an object.")),
    };
    let answer = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => json!({"reply": REPLY_TEXT}),
        Some("json_schema") => {
            let holder = match format.get("json_schema") {
                Some(inner @ Value::Object(_)) => inner,
                Some(_) => return Err(format!("Invalid type for '{param}.json_schema': expected an object.")),
                None if param == "response_format" => {
                    return Err(format!("Missing required parameter: '{param}.json_schema'."));
                }
                None => format,
            };
            match holder.get("schema") {
                None => json!({"reply": REPLY_TEXT}),
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema_fit::fit(schema),
                Some(_) => return Err(format!("Invalid schema for '{param}': a JSON Schema must be an object.")),
            }
        }
        Some(other) => {
            return Err(format!(
                "Invalid value for '{param}.type': '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."
            ));
        }
        None => return Err(format!("Missing required parameter: '{param}.type'.")),
    };
    Ok(Some(serde_json::to_string(&answer).expect("serializing a JSON value cannot fail")))
}

/// A compact JSON text cut into the pieces a stream emits, one output "token" each: a piece
/// ends after `{`, `[`, `,` and `:`, and before `}` and `]`; inside a string a piece ends
/// before each space (like the sentence's words). The pieces concatenate to `text`.
pub(super) fn json_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                ' ' if !current.is_empty() => pieces.push(std::mem::take(&mut current)),
                _ => {}
            }
            current.push(c);
            continue;
        }
        match c {
            '}' | ']' if !current.is_empty() => {
                pieces.push(std::mem::take(&mut current));
                current.push(c);
            }
            '{' | '[' | ',' | ':' => {
                current.push(c);
                pieces.push(std::mem::take(&mut current));
            }
            '"' => {
                in_string = true;
                current.push(c);
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// The `i`-th streamed piece of the reply; the sentence repeats for long replies.
pub(super) fn piece(i: usize) -> &'static str {
    match i {
        0 => REPLY_PIECES[0],
        i if i % REPLY_PIECES.len() == 0 => " This",
        i => REPLY_PIECES[i % REPLY_PIECES.len()],
    }
}

/// Number of whitespace-separated words in the text of a message `content` (or any value
/// holding text): a string counts its words; an array sums its elements; an object counts
/// its `"text"` string, or else recurses into its `"content"` (e.g. tool results).
pub(super) fn text_words(value: &Value) -> u64 {
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
pub(super) fn chat_prompt_tokens(messages: Option<&Value>, extra_words: u64) -> u64 {
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
pub(super) fn input_tokens(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(input_tokens).sum(),
        _ => 0,
    }
}

pub(super) fn next_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn model_of(req: &Value) -> String {
    req.get("model").and_then(Value::as_str).unwrap_or("mock-model").to_owned()
}

pub(super) fn is_stream(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// The first of `keys` present as a non-negative integer.
pub(super) fn max_tokens(req: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| req.get(*k).and_then(Value::as_u64))
}

pub(super) fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}
