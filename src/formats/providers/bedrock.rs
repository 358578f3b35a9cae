//! AWS Bedrock runtime's Converse API (`/model/{modelId}/converse`, `/converse-stream`): what
//! its paths and bodies say. Groundwork of issue 19: read here, dispatched from `providers`
//! once `api = "bedrock"` is routed.
//!
//! The model is in the path, URL-encoded when it is an ARN or an inference profile
//! (`arn%3Aaws%3Abedrock%3A...%2F...`). A Converse answer is `{"output":{"message":{"content":
//! [{"text"}|{"toolUse"}|{"reasoningContent"}...]}},"stopReason","usage","metrics"}`; a
//! ConverseStream is AWS event-stream frames (`formats::eventstream`) named by their
//! `:event-type`: `messageStart`, `contentBlockStart`, `contentBlockDelta`, `contentBlockStop`,
//! `messageStop`, `metadata` (usage), or an `exception`. Usage is counted once: Bedrock's
//! `inputTokens` leaves out the prompt-cache tokens (`cacheReadInputTokens`,
//! `cacheWriteInputTokens`, counted beside it in `totalTokens`), so input is their sum — the
//! peers' defects were leaving them out or adding them twice (Portkey #1210, LiteLLM #9812).

use serde_json::Value;

use super::{count, non_empty, str_at, top_level, Generated, Operation, ResponseFacts, Usage};
use crate::formats::{eventstream, percent};

/// The model id and action of a Bedrock runtime path, the id percent-decoded:
/// `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse` →
/// (`anthropic.claude-3-haiku-20240307-v1:0`, `converse`).
pub fn model_and_action(path: &str) -> Option<(String, &str)> {
    let path = path.split(['?', '#']).next()?;
    let (_, after) = path.split_once("/model/")?;
    let (model, action) = after.rsplit_once('/')?;
    (!model.is_empty() && !action.is_empty()).then(|| (percent::decode(model, false), action))
}

/// The operation of an action: every one of them generates (Converse, Invoke, and their
/// streams).
pub fn operation(action: &str) -> Operation {
    match action {
        "converse" | "converse-stream" | "invoke" | "invoke-with-response-stream" => Operation::Chat,
        other => Operation::Other(other.to_string()),
    }
}

/// Facts of a Converse answer (or of Bedrock's error body, `{"message": ...}`).
pub fn parse_converse(body: &[u8], generates: bool) -> ResponseFacts {
    let f = top_level(body, &["output", "stopReason", "usage", "message"]);
    let mut facts = ResponseFacts { usage: f.get("usage").and_then(usage_of), ..Default::default() };
    if f.get("output").is_none() {
        facts.error = non_empty(f.get("message").and_then(Value::as_str));
    }
    if generates {
        facts.finish_reason = non_empty(f.get("stopReason").and_then(Value::as_str));
        let mut generated = Generated::default();
        let content = f.get("output").and_then(|o| o.get("message")).and_then(|m| m.get("content"));
        for block in content.and_then(Value::as_array).into_iter().flatten() {
            generated.push(str_at(block, "text").unwrap_or_default(), None);
            if let Some(input) = block.get("toolUse").and_then(|t| t.get("input")) {
                generated.push(&input.to_string(), None);
            }
            let reasoning = block.get("reasoningContent").and_then(|r| r.get("reasoningText"));
            generated.push(reasoning.and_then(|r| str_at(r, "text")).unwrap_or_default(), None);
        }
        facts.output_text = generated.text;
    }
    facts
}

/// Facts of a ConverseStream body (event-stream frames). A frame that fails its checks is
/// named in `error` (the client received the same bytes); the frames around it still count.
pub fn parse_converse_stream(body: &[u8], generates: bool) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    let mut generated = Generated::default();
    let mut offset = 0;
    for frame in eventstream::frames(body) {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                facts.error.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        // Where this frame ends in the body: its payload's end plus the message CRC.
        let payload_end = frame.payload.as_ptr() as usize + frame.payload.len() - body.as_ptr() as usize;
        offset = offset.max(payload_end + 4);
        let end = Some(offset);
        let payload: Value = serde_json::from_slice(frame.payload).unwrap_or(Value::Null);
        if frame.header(":message-type") == Some("exception") {
            let kind = frame.header(":exception-type").unwrap_or("exception");
            let message = str_at(&payload, "message").unwrap_or_default();
            facts.error = Some(format!("{kind}: {message}").trim_end_matches(": ").to_string());
            continue;
        }
        match frame.header(":event-type") {
            Some("contentBlockDelta") if generates => {
                let delta = payload.get("delta");
                let text = delta.and_then(|d| str_at(d, "text"));
                let tool = delta.and_then(|d| d.get("toolUse")).and_then(|t| str_at(t, "input"));
                let reasoning = delta.and_then(|d| d.get("reasoningContent")).and_then(|r| str_at(r, "text"));
                for piece in [text, tool, reasoning].into_iter().flatten() {
                    generated.push(piece, end);
                }
            }
            Some("messageStop") if generates => facts.finish_reason = non_empty(str_at(&payload, "stopReason")),
            Some("metadata") => facts.usage = payload.get("usage").and_then(usage_of),
            _ => {}
        }
    }
    facts.output_text = generated.text;
    facts.first_content_end = generated.first_end;
    facts
}

/// Converse `usage` as [`Usage`]: input is `inputTokens` plus the cache's reads and writes.
fn usage_of(usage: &Value) -> Option<Usage> {
    let input = count(usage.get("inputTokens"))?;
    let output = count(usage.get("outputTokens"))?;
    let read = count(usage.get("cacheReadInputTokens"));
    let write = count(usage.get("cacheWriteInputTokens"));
    Some(Usage {
        input_tokens: input.saturating_add(read.unwrap_or(0)).saturating_add(write.unwrap_or(0)),
        output_tokens: output,
        cache_read_input_tokens: read,
        cache_creation_input_tokens: write,
        reasoning_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::eventstream::{encode_event as event, encode_frame};

    #[test]
    fn paths_name_the_model_percent_decoded() {
        assert_eq!(
            model_and_action("/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
            Some(("anthropic.claude-3-haiku-20240307-v1:0".to_string(), "converse"))
        );
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.meta.llama3-2-1b-instruct-v1%3A0/converse-stream";
        let (model, action) = model_and_action(arn).unwrap();
        assert_eq!(model, "arn:aws:bedrock:us-east-1:123:inference-profile/us.meta.llama3-2-1b-instruct-v1:0");
        assert_eq!(operation(action), Operation::Chat);
        assert_eq!(model_and_action("/model/x"), None);
    }

    #[test]
    fn cache_tokens_are_inside_input_once() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"},{"toolUse":{"toolUseId":"t1","name":"f","input":{"a":1}}}]}},"stopReason":"tool_use","usage":{"inputTokens":20,"outputTokens":5,"totalTokens":1525,"cacheReadInputTokens":1000,"cacheWriteInputTokens":500},"metrics":{"latencyMs":300}}"#;
        let facts = parse_converse(body, true);
        let usage = facts.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (1520, 5), "totalTokens 1525 = input + output");
        assert_eq!((usage.cache_read_input_tokens, usage.cache_creation_input_tokens), (Some(1000), Some(500)));
        assert_eq!(facts.output_text, r#"Hi{"a":1}"#);
        assert_eq!(facts.finish_reason.as_deref(), Some("tool_use"));
        let error = parse_converse(br#"{"message":"The security token included in the request is invalid."}"#, true);
        assert_eq!(error.error.as_deref(), Some("The security token included in the request is invalid."));
    }

    #[test]
    fn a_converse_stream_gives_text_usage_and_the_first_content() {
        let frames = [
            event("messageStart", r#"{"role":"assistant"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hel"}}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"lo"}}"#),
            event("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            event("messageStop", r#"{"stopReason":"end_turn"}"#),
            event(
                "metadata",
                r#"{"usage":{"inputTokens":9,"outputTokens":2,"totalTokens":11},"metrics":{"latencyMs":90}}"#,
            ),
        ];
        let body = frames.concat();
        let facts = parse_converse_stream(&body, true);
        assert_eq!(facts.output_text, "Hello");
        assert_eq!(facts.first_content_end, Some(frames[0].len() + frames[1].len()));
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 2)));
        assert_eq!(facts.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(facts.error, None);
    }

    #[test]
    fn a_corrupt_frame_or_an_exception_is_named_in_the_error() {
        let mut corrupt = event("contentBlockDelta", r#"{"delta":{"text":"lost"}}"#);
        let at = corrupt.len() - 8;
        corrupt[at] ^= 1;
        let body = [corrupt, event("metadata", r#"{"usage":{"inputTokens":1,"outputTokens":1}}"#)].concat();
        let facts = parse_converse_stream(&body, true);
        assert_eq!(facts.error.as_deref(), Some("event-stream frame with a wrong message CRC"));
        assert!(facts.usage.is_some(), "the frames after it still count");

        let exception = encode_frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests"}"#,
        );
        let facts = parse_converse_stream(&exception, true);
        assert_eq!(facts.error.as_deref(), Some("throttlingException: Too many requests"));
    }
}
