//! AWS Bedrock runtime: the Converse API (`/model/{modelId}/converse`, `/converse-stream`) and
//! InvokeModel (`/invoke`, `/invoke-with-response-stream`), what their paths and bodies say.
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
//!
//! InvokeModel's bodies are the model family's own: Anthropic Messages (read by `anthropic`),
//! Meta Llama (`generation`, `prompt_token_count`, `generation_token_count`), Amazon Titan
//! (`results[].outputText`, `inputTextTokenCount`, `tokenCount`; embeddings' `embedding`).
//! Its stream is event-stream frames of `:event-type` `chunk`, each payload `{"bytes":
//! base64}` of the family's own chunk JSON; the last carries
//! `amazon-bedrock-invocationMetrics` (input and output counts). A non-streamed answer has the
//! counts in `x-amzn-bedrock-input-token-count` / `-output-token-count` headers too, which the
//! recorder uses when the body names none. Which of the four a body is, is told from the body
//! (frames or JSON, and which members), not from the path.

use base64::Engine as _;
use serde_json::Value;

use super::anthropic::StreamReader;
use super::{
    anthropic, count, non_empty, request_members, str_at, top_level, Generated, Operation, RequestFacts, ResponseFacts,
    Usage,
};
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

/// The operation of an action on a model: Converse and Invoke (and their streams) generate,
/// but an embedding model invoked (`amazon.titan-embed-…`, `cohere.embed-…`) embeds.
pub fn operation(model: &str, action: &str) -> Operation {
    match action {
        "invoke" if model.contains(".embed") || model.contains("-embed") => Operation::Embeddings,
        "converse" | "converse-stream" | "invoke" | "invoke-with-response-stream" => Operation::Chat,
        other => Operation::Other(other.to_string()),
    }
}

/// The output limit of a Converse (`inferenceConfig.maxTokens`) or Invoke body (Anthropic's
/// `max_tokens`, Llama's `max_gen_len`, Titan's `textGenerationConfig.maxTokenCount`); the
/// model and streaming are the path's.
pub(super) fn parse_request(body: &[u8], names: &[&str]) -> RequestFacts {
    let (f, names_credential) =
        request_members(body, &["inferenceConfig", "max_tokens", "max_gen_len", "textGenerationConfig"], names);
    let max_tokens = f
        .get("inferenceConfig")
        .and_then(|c| count(c.get("maxTokens")))
        .or_else(|| count(f.get("max_tokens")))
        .or_else(|| count(f.get("max_gen_len")))
        .or_else(|| f.get("textGenerationConfig").and_then(|c| count(c.get("maxTokenCount"))));
    RequestFacts { max_tokens, names_credential, ..RequestFacts::default() }
}

/// Facts of any Bedrock answer: event-stream frames (ConverseStream or an Invoke stream), a
/// Converse answer, an Invoke answer of a known family, or an error body.
pub fn parse_response(body: &[u8], generates: bool) -> ResponseFacts {
    if eventstream::starts_with_frame(body) {
        return parse_stream(body, generates);
    }
    let f = top_level(body, &["output", "generation", "results", "embedding", "inputTextTokenCount"]);
    if f.contains_key("output") {
        parse_converse(body, generates)
    } else if f.contains_key("generation") || f.contains_key("results") || f.contains_key("inputTextTokenCount") {
        parse_invoke_family(body, generates)
    } else {
        let mut facts = anthropic::parse_body(body, generates);
        if facts.error.is_none() && facts.usage.is_none() && facts.model.is_none() {
            // Neither a message nor a family we know: Bedrock's own error shape, if it is one.
            let f = top_level(body, &["message", "Message"]);
            facts.error = non_empty(f.get("message").or(f.get("Message")).and_then(Value::as_str));
        }
        facts
    }
}

/// Facts of a Llama or Titan Invoke answer (text or embeddings).
fn parse_invoke_family(body: &[u8], generates: bool) -> ResponseFacts {
    let f = top_level(
        body,
        &[
            "generation",
            "prompt_token_count",
            "generation_token_count",
            "stop_reason",
            "results",
            "inputTextTokenCount",
        ],
    );
    let mut facts = ResponseFacts::default();
    let mut generated = Generated::default();
    if f.contains_key("generation") {
        let (input, output) = (count(f.get("prompt_token_count")), count(f.get("generation_token_count")));
        facts.usage = input.zip(output).map(|(i, o)| plain_usage(i, o));
        generated.push(f.get("generation").and_then(Value::as_str).unwrap_or_default(), None);
        facts.finish_reason = non_empty(f.get("stop_reason").and_then(Value::as_str));
    } else {
        let results = f.get("results").and_then(Value::as_array);
        let output = results.map(|r| r.iter().filter_map(|r| count(r.get("tokenCount"))).sum::<u64>());
        facts.usage = count(f.get("inputTextTokenCount")).map(|i| plain_usage(i, output.unwrap_or(0)));
        for result in results.into_iter().flatten() {
            generated.push(str_at(result, "outputText").unwrap_or_default(), None);
            if let Some(reason) = non_empty(str_at(result, "completionReason")) {
                facts.finish_reason = Some(reason);
            }
        }
    }
    if generates {
        facts.output_text = generated.text;
    } else {
        facts.finish_reason = None;
    }
    facts
}

fn plain_usage(input: u64, output: u64) -> Usage {
    Usage { input_tokens: input, output_tokens: output, ..Usage::default() }
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

/// Facts of a ConverseStream or InvokeModelWithResponseStream body (event-stream frames). A
/// frame that fails its checks is named in `error` (the client received the same bytes); the
/// frames around it still count.
pub fn parse_stream(body: &[u8], generates: bool) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    let mut generated = Generated::default();
    let mut invoke = InvokeStream::new(generates);
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
            Some("chunk") => invoke.chunk(&payload, offset),
            _ => {}
        }
    }
    if invoke.chunks > 0 {
        return invoke.finish(facts.error);
    }
    facts.output_text = generated.text;
    facts.first_content_end = generated.first_end;
    facts
}

/// The chunks of an InvokeModelWithResponseStream: each `{"bytes": base64}` decoded to the
/// family's chunk JSON. Anthropic's are Messages stream events; Llama's carry `generation`,
/// Titan's `outputText`. The last chunk's `amazon-bedrock-invocationMetrics` counts the call.
struct InvokeStream {
    chunks: usize,
    anthropic: StreamReader,
    anthropic_seen: bool,
    generated: Generated,
    finish_reason: Option<String>,
    metrics: Option<Usage>,
    generates: bool,
}

impl InvokeStream {
    fn new(generates: bool) -> Self {
        InvokeStream {
            chunks: 0,
            anthropic: StreamReader::new(generates),
            anthropic_seen: false,
            generated: Generated::default(),
            finish_reason: None,
            metrics: None,
            generates,
        }
    }

    fn chunk(&mut self, payload: &Value, end: usize) {
        self.chunks += 1;
        let Some(encoded) = str_at(payload, "bytes") else { return };
        let Ok(json) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return };
        let chunk: Value = serde_json::from_slice(&json).unwrap_or(Value::Null);
        if let Some(m) = chunk.get("amazon-bedrock-invocationMetrics") {
            if let (Some(input), Some(output)) = (count(m.get("inputTokenCount")), count(m.get("outputTokenCount"))) {
                let read = count(m.get("cacheReadInputTokenCount"));
                let write = count(m.get("cacheWriteInputTokenCount"));
                self.metrics = Some(Usage {
                    input_tokens: input.saturating_add(read.unwrap_or(0)).saturating_add(write.unwrap_or(0)),
                    output_tokens: output,
                    cache_read_input_tokens: read,
                    cache_creation_input_tokens: write,
                    reasoning_tokens: None,
                });
            }
        }
        if str_at(&chunk, "type").is_some() {
            self.anthropic_seen = true;
            self.anthropic.event(&json, None, end);
            return;
        }
        if !self.generates {
            return;
        }
        for key in ["generation", "outputText"] {
            self.generated.push(str_at(&chunk, key).unwrap_or_default(), Some(end));
        }
        for key in ["stop_reason", "completionReason"] {
            if let Some(reason) = non_empty(str_at(&chunk, key)) {
                self.finish_reason = Some(reason);
            }
        }
    }

    fn finish(self, frame_error: Option<String>) -> ResponseFacts {
        let mut facts = if self.anthropic_seen {
            self.anthropic.finish()
        } else {
            ResponseFacts {
                finish_reason: self.finish_reason,
                output_text: self.generated.text,
                first_content_end: self.generated.first_end,
                ..ResponseFacts::default()
            }
        };
        // The event-level counts (Anthropic's, with its cache fields) over the metrics.
        if facts.usage.is_none() {
            facts.usage = self.metrics;
        }
        if frame_error.is_some() {
            facts.error = frame_error;
        }
        facts
    }
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
        assert_eq!(operation(&model, action), Operation::Chat);
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
        let facts = parse_stream(&body, true);
        assert_eq!(facts.output_text, "Hello");
        assert_eq!(facts.first_content_end, Some(frames[0].len() + frames[1].len()));
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 2)));
        assert_eq!(facts.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(facts.error, None);
    }

    #[test]
    fn invoke_bodies_of_each_family_give_their_usage_and_text() {
        let claude = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":3}}"#;
        let facts = parse_response(claude, true);
        assert_eq!(facts.usage.as_ref().map(|u| (u.input_tokens, u.output_tokens)), Some((100, 3)));
        assert_eq!(facts.output_text, "Hi");
        let llama =
            br#"{"generation":"Hello there","prompt_token_count":12,"generation_token_count":4,"stop_reason":"stop"}"#;
        let facts = parse_response(llama, true);
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((12, 4)));
        assert_eq!((facts.output_text.as_str(), facts.finish_reason.as_deref()), ("Hello there", Some("stop")));
        let titan = br#"{"inputTextTokenCount":7,"results":[{"tokenCount":5,"outputText":"Bonjour","completionReason":"FINISH"}]}"#;
        let facts = parse_response(titan, true);
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((7, 5)));
        assert_eq!(facts.output_text, "Bonjour");
        let embedding = br#"{"embedding":[0.1,0.2],"inputTextTokenCount":6}"#;
        let facts = parse_response(embedding, false);
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((6, 0)));
        let error = parse_response(br#"{"message":"Malformed input request"}"#, true);
        assert_eq!(error.error.as_deref(), Some("Malformed input request"));
        // A family this module does not know: no usage from the body (the headers count it).
        assert_eq!(parse_response(br#"{"outputs":[{"text":"x"}]}"#, true).usage, None);
    }

    #[test]
    fn an_invoke_stream_decodes_its_chunks_and_counts_once() {
        let b64 = |json: &str| base64::engine::general_purpose::STANDARD.encode(json);
        let chunk = |json: &str| event("chunk", &format!(r#"{{"bytes":"{}"}}"#, b64(json)));
        let frames = [
            chunk(
                r#"{"type":"message_start","message":{"model":"claude-haiku-4-5-20251001","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            ),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#),
            chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#),
            chunk(
                r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9,"outputTokenCount":2,"invocationLatency":90,"firstByteLatency":20}}"#,
            ),
        ];
        let body = frames.concat();
        let facts = parse_response(&body, true);
        assert_eq!(facts.output_text, "Hello");
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 2)));
        assert_eq!(facts.first_content_end, Some(frames[0].len() + frames[1].len()));
        assert_eq!(facts.model.as_deref(), Some("claude-haiku-4-5-20251001"));

        let llama = [
            chunk(r#"{"generation":"Hi","prompt_token_count":5,"generation_token_count":1,"stop_reason":null}"#),
            chunk(r#"{"generation":" you","prompt_token_count":null,"generation_token_count":2,"stop_reason":"stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":5,"outputTokenCount":2}}"#),
        ]
        .concat();
        let facts = parse_response(&llama, true);
        assert_eq!((facts.output_text.as_str(), facts.finish_reason.as_deref()), ("Hi you", Some("stop")));
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((5, 2)));
    }

    #[test]
    fn a_corrupt_frame_or_an_exception_is_named_in_the_error() {
        let mut corrupt = event("contentBlockDelta", r#"{"delta":{"text":"lost"}}"#);
        let at = corrupt.len() - 8;
        corrupt[at] ^= 1;
        let body = [corrupt, event("metadata", r#"{"usage":{"inputTokens":1,"outputTokens":1}}"#)].concat();
        let facts = parse_stream(&body, true);
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
        let facts = parse_stream(&exception, true);
        assert_eq!(facts.error.as_deref(), Some("throttlingException: Too many requests"));
    }
}
