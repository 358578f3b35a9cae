//! What every mock endpoint shares: the reply sentence and how long a reply is, the per-request
//! test hooks (`x-mock-chunks`, `x-mock-chunk-delay-ms`, `x-mock-status`), and the mock's
//! deterministic token counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

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

/// How long the reply is and whether `max_tokens` cut it short.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reply {
    pub(super) words: usize,
    pub(super) truncated: bool,
}

impl Reply {
    pub(super) fn plan(max_tokens: Option<u64>, opts: &Opts) -> Reply {
        let wanted = opts.chunks.unwrap_or(REPLY_PIECES.len());
        match max_tokens {
            Some(max) if max < wanted as u64 => Reply { words: max as usize, truncated: true },
            _ => Reply { words: wanted, truncated: false },
        }
    }

    /// The full reply text: the concatenation of all streamed pieces.
    pub(super) fn text(self) -> String {
        if self.words == REPLY_PIECES.len() {
            return REPLY_TEXT.to_owned();
        }
        (0..self.words).map(piece).collect()
    }
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
