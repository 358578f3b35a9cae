//! Token estimation for calls whose provider reported no usage.
//!
//! Counts use OpenAI's BPE encodings through tiktoken-rs: `o200k_base` for the gpt-4o, 4.1,
//! 4.5, 5 and o-series families, `cl100k_base` for gpt-4, gpt-3.5 and the text-embedding
//! models, and a configurable default for every other model (Anthropic, local models), whose
//! real tokenizers are not public — such counts are labelled `estimated`, never `reported`.
//!
//! The encodings load once, lazily, on the recorder thread the first time an estimate is
//! needed, so start-up stays fast and the request path never tokenizes anything.
//!
//! Input is counted from the request body: chat messages with OpenAI's per-message overhead
//! (3 tokens per message, 1 per `name`, 3 to prime the reply — the rule of OpenAI's cookbook),
//! tool and function definitions, legacy prompts, embedding inputs (strings or token arrays),
//! Responses API input and instructions, Anthropic system prompts and messages.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::formats::providers::{Api, Operation};

/// An OpenAI BPE encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Encoding {
    #[serde(rename = "o200k_base")]
    O200kBase,
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The loaded encoder (parsed on first use, then shared).
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text` (special-token text counts as ordinary text, as providers bill it).
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }
}

/// OpenAI's per-message overhead in chat formatting (cookbook rule for current models).
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
const REPLY_PRIMING_TOKENS: u64 = 3;

/// The encoding for `model`; `default` for models outside OpenAI's known families.
pub fn encoding_for_model(model: &str, default: Encoding) -> Encoding {
    // Routers prefix models with their vendor ("openai/gpt-4o"): the last segment names it.
    let name = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
    const O200K: [&str; 9] = ["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss"];
    const CL100K: [&str; 6] =
        ["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002", "davinci-002"];
    if O200K.iter().any(|p| name.starts_with(p)) {
        Encoding::O200kBase
    } else if CL100K.iter().any(|p| name.starts_with(p)) || name.starts_with("babbage-002") {
        Encoding::Cl100kBase
    } else {
        default
    }
}

/// Tokens of a list of chat messages, with OpenAI's formatting overhead.
pub fn count_chat_messages(encoding: Encoding, messages: &[Value]) -> u64 {
    let mut total = REPLY_PRIMING_TOKENS;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        let Some(fields) = message.as_object() else { continue };
        for (key, value) in fields {
            total += count_value(encoding, value);
            if key == "name" {
                total += TOKENS_PER_NAME;
            }
        }
    }
    total
}

/// Tokens of the text inside a JSON value: strings as text; content parts by their text;
/// tool calls by function name and arguments; other structures by their JSON text.
fn count_value(encoding: Encoding, value: &Value) -> u64 {
    match value {
        Value::String(s) => encoding.count(s),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::Array(items) => items.iter().map(|item| count_part(encoding, item)).sum(),
        Value::Object(_) => encoding.count(&value.to_string()),
    }
}

/// One element of a content array or tool-call list.
fn count_part(encoding: Encoding, part: &Value) -> u64 {
    if let Some(text) = part.get("text").and_then(Value::as_str) {
        return encoding.count(text);
    }
    if let Some(function) = part.get("function") {
        let name = function.get("name").and_then(Value::as_str).unwrap_or("");
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("");
        return encoding.count(name) + encoding.count(arguments);
    }
    match part {
        Value::String(s) => encoding.count(s),
        // Images, audio and files are billed by the provider's own rules; not estimated here.
        _ if part.get("image_url").is_some() || part.get("source").is_some() => 0,
        other => encoding.count(&other.to_string()),
    }
}

/// Tool and function definitions, as the JSON text the model is shown (an approximation: the
/// providers render them in their own hidden format).
fn count_tools(encoding: Encoding, request: &Value) -> u64 {
    ["tools", "functions"]
        .iter()
        .filter_map(|key| request.get(*key))
        .filter(|v| !v.is_null())
        .map(|v| encoding.count(&v.to_string()))
        .sum()
}

/// An input given as a string, a list of strings, a token array, or a list of token arrays.
fn count_input(encoding: Encoding, input: &Value) -> u64 {
    match input {
        Value::String(s) => encoding.count(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(|item| count_input(encoding, item)).sum(),
        _ => 0,
    }
}

/// Estimated input tokens of a request body, or `None` when the body is not a request this
/// module understands (or was cut short by the capture limit).
pub fn estimate_input(api: Api, operation: &Operation, request: &[u8], encoding: Encoding) -> Option<u64> {
    let request: Value = serde_json::from_slice(request).ok()?;
    let count = match (api, operation) {
        (Api::Openai, Operation::Embeddings) => count_input(encoding, request.get("input")?),
        (Api::Openai, Operation::TextCompletion) => count_input(encoding, request.get("prompt")?),
        (Api::Openai, Operation::Chat) => {
            if let Some(messages) = request.get("messages").and_then(Value::as_array) {
                count_chat_messages(encoding, messages) + count_tools(encoding, &request)
            } else {
                // Responses API: `input` is a string or a list of messages/items.
                let input = request.get("input")?;
                let instructions = request.get("instructions").and_then(Value::as_str).map_or(0, |s| encoding.count(s));
                let body = match input {
                    Value::Array(items) => count_chat_messages(encoding, items),
                    other => count_input(encoding, other),
                };
                body + instructions + count_tools(encoding, &request)
            }
        }
        (Api::Anthropic, Operation::Chat) => {
            let messages = request.get("messages").and_then(Value::as_array)?;
            let system = request.get("system").map_or(0, |s| count_value(encoding, s));
            count_chat_messages(encoding, messages) + system + count_tools(encoding, &request)
        }
        (Api::Anthropic, Operation::TextCompletion) => count_input(encoding, request.get("prompt")?),
        _ => return None,
    };
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_families_pick_their_encoding() {
        let d = Encoding::Cl100kBase;
        for m in
            ["gpt-4o-mini-2024-07-18", "gpt-4.1-nano", "gpt-5", "o3-mini", "o1", "openai/gpt-4o", "chatgpt-4o-latest"]
        {
            assert_eq!(encoding_for_model(m, d), Encoding::O200kBase, "{m}");
        }
        for m in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo-0125", "text-embedding-3-small", "text-embedding-ada-002"] {
            assert_eq!(encoding_for_model(m, Encoding::O200kBase), Encoding::Cl100kBase, "{m}");
        }
        assert_eq!(encoding_for_model("claude-3-5-haiku", Encoding::O200kBase), Encoding::O200kBase);
        assert_eq!(encoding_for_model("llama3.1:8b", Encoding::Cl100kBase), Encoding::Cl100kBase);
    }

    #[test]
    fn known_counts() {
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
        assert_eq!(Encoding::O200kBase.count(""), 0);
        // Special-token text is ordinary text for billing purposes.
        assert!(Encoding::Cl100kBase.count("<|endoftext|>") > 1);
    }

    #[test]
    fn embedding_inputs_of_every_shape() {
        let e = Encoding::Cl100kBase;
        let body = |input: &str| format!(r#"{{"model":"text-embedding-3-small","input":{input}}}"#);
        let count = |b: String| estimate_input(Api::Openai, &Operation::Embeddings, b.as_bytes(), e).unwrap();
        assert_eq!(count(body(r#""hello world""#)), 2);
        assert_eq!(count(body(r#"["hello world","hello"]"#)), 3);
        assert_eq!(count(body("[1,2,3]")), 3);
        assert_eq!(count(body("[[1,2],[3]]")), 3);
    }

    #[test]
    fn chat_overhead_and_tools() {
        let e = Encoding::O200kBase;
        let plain = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#;
        let n = estimate_input(Api::Openai, &Operation::Chat, plain, e).unwrap();
        assert_eq!(n, 3 + e.count("user") + e.count("hello world") + 3);
        let with_tools = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
        assert!(estimate_input(Api::Openai, &Operation::Chat, with_tools, e).unwrap() > n + 5);
        assert!(estimate_input(Api::Openai, &Operation::Chat, b"{\"model\":", e).is_none());
    }
}
