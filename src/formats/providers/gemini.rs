//! Google's Gemini API (`generateContent`, `streamGenerateContent`, `countTokens`,
//! `embedContent`, `batchEmbedContents`): what its paths and bodies say.
//!
//! The model is in the path (`/v1beta/models/{model}:{method}`), not the body. A response is
//! `{"candidates":[{"content":{"parts":[{"text"}...]},"finishReason"}],"usageMetadata",
//! "modelVersion"}`; a stream sends the same shape per chunk, as SSE (`?alt=sse`) or as the
//! elements of one JSON array. `usageMetadata` counts once, in its own fields:
//! `promptTokenCount` already includes `cachedContentTokenCount`; `thoughtsTokenCount` is
//! output not included in `candidatesTokenCount` (so output = candidates + thoughts, with
//! thoughts as `reasoning_tokens`); `toolUsePromptTokenCount` is input beside the prompt. Each
//! stream chunk repeats the running totals: the last one holding `candidatesTokenCount` wins.
//! Errors: `{"error":{"code","message","status"}}`.

use serde_json::Value;

use super::{
    count, non_empty, request_members, str_at, top_level, Generated, Operation, RequestFacts, ResponseFacts, Usage,
};
use crate::formats::sse;

/// The model and method of a Gemini path: `…/models/gemini-2.5-flash:generateContent` →
/// (`gemini-2.5-flash`, `generateContent`). A query string is ignored; a tuned model's
/// `tunedModels/...` works the same way.
pub fn model_and_method(path: &str) -> Option<(&str, &str)> {
    let path = path.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    let (model, method) = last.split_once(':')?;
    (!model.is_empty() && !method.is_empty()).then_some((model, method))
}

/// The operation of a Gemini method.
pub fn operation(method: &str) -> Operation {
    match method {
        "generateContent" | "streamGenerateContent" => Operation::Chat,
        "embedContent" | "batchEmbedContents" => Operation::Embeddings,
        other => Operation::Other(other.to_string()),
    }
}

/// The output limit of a request (`generationConfig.maxOutputTokens`); the model and
/// streaming are the path's.
pub(super) fn parse_request(body: &[u8], names: &[&str]) -> RequestFacts {
    let (f, names_credential) = request_members(body, &["generationConfig", "generation_config"], names);
    // google-genai writes some members snake_case: accept both spellings.
    let config = f.get("generationConfig").or(f.get("generation_config"));
    let max_tokens = config.and_then(|c| count(c.get("maxOutputTokens").or(c.get("max_output_tokens"))));
    RequestFacts { max_tokens, names_credential, ..RequestFacts::default() }
}

const KEYS: &[&str] = &["candidates", "usageMetadata", "modelVersion", "error"];

/// Facts of a non-streamed response body.
pub fn parse_body(body: &[u8], generates: bool) -> ResponseFacts {
    let mut reader = Reader { whole: true, ..Reader::default() };
    reader.chunk(&Value::Object(top_level(body, KEYS)), None, generates);
    reader.finish()
}

/// Facts of an SSE stream (`?alt=sse`): each `data:` a response chunk.
pub fn parse_sse(body: &[u8], generates: bool) -> ResponseFacts {
    let mut reader = Reader::default();
    for ev in sse::events(body) {
        let chunk = Value::Object(top_level(ev.data.as_bytes(), KEYS));
        reader.chunk(&chunk, Some(ev.end_offset), generates);
    }
    reader.finish()
}

/// Facts of a stream sent as one JSON array (`streamGenerateContent` without `alt=sse`):
/// each top-level element a chunk, read as it closes, so a stream cut short keeps what
/// arrived whole.
pub fn parse_array_stream(body: &[u8], generates: bool) -> ResponseFacts {
    let mut reader = Reader::default();
    let mut at = body.iter().position(|b| *b == b'[').map_or(body.len(), |i| i + 1);
    while let Some(start) = body[at..].iter().position(|b| *b == b'{').map(|i| at + i) {
        let Some(object) = super::balanced_object(&body[start..]) else { break };
        let end = start + object.len();
        reader.chunk(&Value::Object(top_level(object, KEYS)), Some(end), generates);
        at = end;
    }
    reader.finish()
}

/// What the chunks of one response said so far.
#[derive(Default)]
struct Reader {
    /// A whole body, not a stream: its usage stands even without an output count (a prompt
    /// blocked before any output).
    whole: bool,
    facts: ResponseFacts,
    generated: Generated,
    usage: Option<Usage>,
}

impl Reader {
    fn chunk(&mut self, chunk: &Value, end: Option<usize>, generates: bool) {
        if let Some(error) = chunk.get("error") {
            self.facts.error = super::error_message(error);
        }
        if let Some(model) = non_empty(str_at(chunk, "modelVersion")) {
            self.facts.model = Some(model);
        }
        if let Some((usage, has_output)) = chunk.get("usageMetadata").and_then(usage_of) {
            // A stream's early chunks count the prompt alone: only an output count is final.
            if has_output || self.whole {
                self.usage = Some(usage);
            }
        }
        let candidate = chunk.get("candidates").and_then(|c| c.get(0));
        let Some(candidate) = candidate.filter(|_| generates) else { return };
        if let Some(reason) = non_empty(str_at(candidate, "finishReason")) {
            self.facts.finish_reason = Some(reason);
        }
        let parts = candidate.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            self.generated.push(str_at(part, "text").unwrap_or_default(), end);
            if let Some(call) = part.get("functionCall") {
                self.generated.push(&call.get("args").map(Value::to_string).unwrap_or_default(), end);
            }
        }
    }

    fn finish(mut self) -> ResponseFacts {
        self.facts.usage = self.usage;
        self.facts.output_text = self.generated.text;
        self.facts.first_content_end = self.generated.first_end;
        self.facts
    }
}

/// A `usageMetadata` object as [`Usage`], and whether it counts the output side.
fn usage_of(meta: &Value) -> Option<(Usage, bool)> {
    let prompt = count(meta.get("promptTokenCount"))?;
    let candidates = count(meta.get("candidatesTokenCount"));
    let thoughts = count(meta.get("thoughtsTokenCount"));
    let tool_prompt = count(meta.get("toolUsePromptTokenCount")).unwrap_or(0);
    let usage = Usage {
        input_tokens: prompt.saturating_add(tool_prompt),
        output_tokens: candidates.unwrap_or(0).saturating_add(thoughts.unwrap_or(0)),
        cache_read_input_tokens: count(meta.get("cachedContentTokenCount")),
        cache_creation_input_tokens: None,
        reasoning_tokens: thoughts,
    };
    Some((usage, candidates.is_some() || thoughts.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello"},{"text":" there"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":7,"thoughtsTokenCount":30,"cachedContentTokenCount":100,"totalTokenCount":157},"modelVersion":"gemini-2.5-flash"}"#;

    #[test]
    fn paths_name_the_model_and_method() {
        assert_eq!(
            model_and_method("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(("gemini-2.5-flash", "generateContent"))
        );
        assert_eq!(
            model_and_method("/gemini/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse"),
            Some(("gemini-2.0-flash", "streamGenerateContent"))
        );
        assert_eq!(model_and_method("/v1beta/models"), None);
        assert_eq!(operation("embedContent"), Operation::Embeddings);
        assert_eq!(operation("countTokens"), Operation::Other("countTokens".into()));
    }

    #[test]
    fn thoughts_are_output_and_reasoning_and_cached_content_stays_inside_input() {
        // The peers' defects: thoughts left out of cost (langfuse #16321), cache counted twice.
        let facts = parse_body(ANSWER.as_bytes(), true);
        let usage = facts.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (120, 37));
        assert_eq!((usage.reasoning_tokens, usage.cache_read_input_tokens), (Some(30), Some(100)));
        assert_eq!(facts.output_text, "Hello there");
        assert_eq!(facts.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(facts.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn streams_as_sse_and_as_a_json_array_agree() {
        let chunks = [
            r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":9},"modelVersion":"gemini-2.5-flash"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"totalTokenCount":11},"modelVersion":"gemini-2.5-flash"}"#,
        ];
        let sse: String = chunks.iter().map(|c| format!("data: {c}\r\n\r\n")).collect();
        let array = format!("[{}\r\n,\r\n{}]", chunks[0], chunks[1]);
        let (a, b) = (parse_sse(sse.as_bytes(), true), parse_array_stream(array.as_bytes(), true));
        for facts in [&a, &b] {
            assert_eq!(facts.output_text, "Hello");
            assert_eq!(facts.usage.as_ref().map(|u| (u.input_tokens, u.output_tokens)), Some((9, 2)));
            assert!(facts.first_content_end.is_some());
        }
        // Cut inside the second element: the first one's text is kept, and the prompt-only
        // count of the first chunk is not taken for the call's usage.
        let cut = parse_array_stream(&array.as_bytes()[..array.len() - 40], true);
        assert_eq!(cut.output_text, "Hel");
        assert_eq!(cut.usage, None);
    }

    #[test]
    fn errors_in_googles_shape() {
        let body = br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(parse_body(body, true).error.as_deref(), Some("API key not valid."));
        for junk in [&b""[..], b"[", b"not json", b"{\"candidates\":7}"] {
            let _ = (parse_body(junk, true), parse_array_stream(junk, true), parse_sse(junk, true));
        }
    }
}
