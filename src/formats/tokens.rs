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
    // Azure OpenAI's bodies are OpenAI's.
    let api = if api == Api::Azure { Api::Openai } else { api };
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
        // Not countTokens and the like: they bill nothing.
        (Api::Gemini, Operation::Chat | Operation::Embeddings) => count_gemini(encoding, &request)?,
        (Api::Bedrock, Operation::Chat | Operation::Embeddings) => count_bedrock(encoding, &request)?,
        _ => return None,
    };
    Some(count)
}

/// The text of a Gemini request: `contents[].parts[].text` (generate, count tokens), a
/// `content` (embedContent) or `requests[].content` (batchEmbedContents), the system
/// instruction, and the tools' declarations as JSON; function calls and responses as JSON.
fn count_gemini(encoding: Encoding, request: &Value) -> Option<u64> {
    let parts_of = |content: &Value| -> u64 {
        let parts = content.get("parts").and_then(Value::as_array);
        parts
            .into_iter()
            .flatten()
            .map(|part| match part.get("text").and_then(Value::as_str) {
                Some(text) => encoding.count(text),
                None => {
                    part.get("functionCall").or(part.get("functionResponse")).map_or(0, |v| count_value(encoding, v))
                }
            })
            .sum()
    };
    let mut total = 0;
    let mut found = false;
    if let Some(contents) = request.get("contents").and_then(Value::as_array) {
        // A content's role costs a few tokens, as a chat message's does.
        total += contents.iter().map(|c| parts_of(c) + 3).sum::<u64>();
        found = true;
    }
    if let Some(content) = request.get("content") {
        total += parts_of(content);
        found = true;
    }
    if let Some(requests) = request.get("requests").and_then(Value::as_array) {
        total += requests.iter().filter_map(|r| r.get("content")).map(parts_of).sum::<u64>();
        found = true;
    }
    let instruction = request.get("systemInstruction").or(request.get("system_instruction"));
    total += instruction.map_or(0, parts_of);
    total += request.get("tools").map_or(0, |t| encoding.count(&t.to_string()));
    found.then_some(total)
}

/// The text of a Bedrock request: Converse's `messages[].content[]` (text, tool uses and
/// results as JSON) and `system[].text`, or an Invoke body: Anthropic's Messages, Llama's
/// `prompt`, Titan's `inputText`.
fn count_bedrock(encoding: Encoding, request: &Value) -> Option<u64> {
    let blocks = |content: Option<&Value>| -> u64 {
        content
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|block| match block.get("text").and_then(Value::as_str) {
                Some(text) => encoding.count(text),
                None => block.get("toolUse").or(block.get("toolResult")).map_or(0, |v| count_value(encoding, v)),
            })
            .sum()
    };
    if request.get("anthropic_version").is_some() {
        let messages = request.get("messages").and_then(Value::as_array)?;
        let system = request.get("system").map_or(0, |s| count_value(encoding, s));
        return Some(count_chat_messages(encoding, messages) + system + count_tools(encoding, request));
    }
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let system = blocks(request.get("system"));
        let tools = request.get("toolConfig").map_or(0, |t| encoding.count(&t.to_string()));
        return Some(messages.iter().map(|m| blocks(m.get("content")) + 3).sum::<u64>() + system + tools);
    }
    let prompt = request.get("prompt").or(request.get("inputText")).and_then(Value::as_str)?;
    Some(encoding.count(prompt))
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

    #[test]
    fn gemini_bedrock_and_azure_requests_are_counted() {
        let e = Encoding::O200kBase;
        let hello = e.count("hello world");
        let gemini = br#"{"contents":[{"role":"user","parts":[{"text":"hello world"}]}],"systemInstruction":{"parts":[{"text":"hello world"}]}}"#;
        assert_eq!(estimate_input(Api::Gemini, &Operation::Chat, gemini, e), Some(2 * hello + 3));
        let embed = br#"{"content":{"parts":[{"text":"hello world"}]}}"#;
        assert_eq!(estimate_input(Api::Gemini, &Operation::Embeddings, embed, e), Some(hello));
        let converse =
            br#"{"messages":[{"role":"user","content":[{"text":"hello world"}]}],"system":[{"text":"hello world"}]}"#;
        assert_eq!(estimate_input(Api::Bedrock, &Operation::Chat, converse, e), Some(2 * hello + 3));
        let llama = br#"{"prompt":"hello world","max_gen_len":20}"#;
        assert_eq!(estimate_input(Api::Bedrock, &Operation::Chat, llama, e), Some(hello));
        let claude = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":9,"messages":[{"role":"user","content":"hello world"}]}"#;
        assert!(estimate_input(Api::Bedrock, &Operation::Chat, claude, e).unwrap() > hello);
        let azure = br#"{"messages":[{"role":"user","content":"hello world"}]}"#;
        assert_eq!(
            estimate_input(Api::Azure, &Operation::Chat, azure, e),
            estimate_input(Api::Openai, &Operation::Chat, azure, e)
        );
        assert_eq!(estimate_input(Api::Gemini, &Operation::Chat, b"{}", e), None);
        let count_tokens = Operation::Other("countTokens".into());
        assert_eq!(estimate_input(Api::Gemini, &count_tokens, gemini, e), None, "counting tokens bills none");
    }
}
