//! OpenAI wire formats, as spoken by OpenAI and OpenAI-compatible servers (vLLM, Azure…).
//!
//! Covers Chat Completions, legacy Completions, Embeddings and the Responses API, each as
//! a JSON body or an event stream: operation names, request facts, and the model, finish
//! reason, usage, generated text and error of a response.

use super::openai_typed;
use super::{
    count, error_message, non_empty, request_members, str_at, top_level, Generated, Operation, RequestFacts,
    ResponseFacts, Usage,
};
use crate::formats::sse;
use serde_json::{Map, Value};

/// The operation named by the last meaningful path segment and the segment before it.
pub(super) fn operation(segment: &str, previous: Option<&str>) -> Option<Operation> {
    match segment {
        "completions" if previous == Some("chat") => Some(Operation::Chat),
        "completions" => Some(Operation::TextCompletion),
        "responses" => Some(Operation::Chat),
        "embeddings" => Some(Operation::Embeddings),
        _ => None,
    }
}

/// Output-limit fields, in order of precedence.
const MAX_TOKENS_KEYS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Request facts of a Chat Completions, Completions, Responses or Embeddings body.
pub(super) fn parse_request(op: &Operation, body: &[u8], names: &[&str]) -> RequestFacts {
    let keys: &[&str] = match op {
        Operation::Embeddings => &["model"],
        _ => &["model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens"],
    };
    let (f, names_credential) = request_members(body, keys, names);
    RequestFacts {
        names_credential,
        model: non_empty(f.get("model").and_then(Value::as_str)),
        stream: f.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: f
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_tokens: MAX_TOKENS_KEYS.iter().find_map(|k| count(f.get(*k))),
    }
}

/// Top-level members read from a JSON response body.
const BODY_KEYS: &[&str] =
    &["model", "choices", "output", "status", "incomplete_details", "usage", "error", "object", "message"];

/// Facts of a JSON response body: a chat completion, text completion, embedding list,
/// Responses API response, or an error.
pub(super) fn parse_body(body: &[u8], generates: bool) -> ResponseFacts {
    if let Some(completion) = openai_typed::read(body) {
        let mut facts = ResponseFacts::default();
        completion.read_common(&mut facts);
        if generates {
            completion.read_finish(&mut facts);
            let mut gen = Generated::default();
            completion.read_body_text(&mut gen);
            facts.output_text = gen.text;
        }
        return facts;
    }
    parse_body_leniently(body, generates)
}

/// [`parse_body`] for any shape, through `Value`s.
pub(super) fn parse_body_leniently(body: &[u8], generates: bool) -> ResponseFacts {
    let f = top_level(body, BODY_KEYS);
    let mut facts = ResponseFacts::default();
    read_common(&f, &mut facts);
    if generates {
        read_finish(&f, &mut facts);
        let mut gen = Generated::default();
        read_body_text(&f, &mut gen);
        facts.output_text = gen.text;
    }
    facts
}

/// Top-level members read from one stream event.
const EVENT_KEYS: &[&str] = &["type", "model", "choices", "usage", "error", "object", "message", "delta", "response"];

/// Responses API events whose `delta` is generated text.
const TEXT_DELTA_EVENTS: [&str; 6] = [
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
];

/// Facts of an event stream: Chat Completions / Completions chunks ending in
/// `data: [DONE]`, or Responses API events. Events that are not JSON objects are skipped.
pub(super) fn parse_stream(body: &[u8], generates: bool) -> ResponseFacts {
    parse_stream_with(body, generates, true)
}

/// [`parse_stream`]; plain chunks are read typed when `typed`, else through `Value`s.
pub(super) fn parse_stream_with(body: &[u8], generates: bool, typed: bool) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    let mut gen = Generated::default();
    for ev in sse::events(body) {
        let data = ev.data.trim();
        if data == "[DONE]" {
            continue;
        }
        let end = Some(ev.end_offset);
        if typed && !ev.event.is_some_and(|e| e.starts_with("response.")) {
            if let Some(chunk) = openai_typed::read(data.as_bytes()) {
                chunk.read_common(&mut facts);
                if generates {
                    chunk.read_finish(&mut facts);
                    chunk.read_chunk_text(&mut gen, end);
                }
                continue;
            }
        }
        let f = top_level(data.as_bytes(), EVENT_KEYS);
        if f.is_empty() {
            continue;
        }
        read_common(&f, &mut facts);
        match f.get("type").and_then(Value::as_str).or(ev.event) {
            // Responses API: the response object travels in lifecycle events.
            Some(kind) if kind.starts_with("response.") => {
                if let Some(Value::Object(response)) = f.get("response") {
                    read_common(response, &mut facts);
                    let terminal = ["response.completed", "response.incomplete", "response.failed"];
                    if generates && terminal.contains(&kind) {
                        read_finish(response, &mut facts);
                    }
                }
                if generates && TEXT_DELTA_EVENTS.contains(&kind) {
                    gen.push(str_at_map(&f, "delta").unwrap_or_default(), end);
                }
            }
            // Chat Completions and Completions chunks.
            _ if generates => {
                read_finish(&f, &mut facts);
                for choice in f.get("choices").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(delta) = choice.get("delta") {
                        read_message_text(delta, &mut gen, end);
                    }
                    gen.push(str_at(choice, "text").unwrap_or_default(), end);
                }
            }
            _ => {}
        }
    }
    facts.output_text = gen.text;
    facts.first_content_end = gen.first_end;
    facts
}

/// Model, usage and error, wherever an object carries them. Later values override
/// earlier ones, so a stream ends with the last reported usage (vLLM reports a cumulative
/// usage on every chunk).
fn read_common(f: &Map<String, Value>, facts: &mut ResponseFacts) {
    if let Some(model) = non_empty(str_at_map(f, "model")) {
        facts.model = Some(model);
    }
    if let Some(usage) = f.get("usage").and_then(usage) {
        facts.usage = Some(usage);
    }
    let is_error = |key: &str| str_at_map(f, key) == Some("error");
    let error = match f.get("error").and_then(error_message) {
        // vLLM: {"object":"error","message":…}; Responses stream: {"type":"error","message":…}
        None if is_error("object") || is_error("type") => non_empty(str_at_map(f, "message"))
            .or_else(|| non_empty(str_at_map(f, "code")))
            .or_else(|| Some("error".to_owned())),
        error => error,
    };
    if error.is_some() {
        facts.error = error;
    }
}

/// The finish reason: `choices[0].finish_reason`, else (Responses API)
/// `incomplete_details.reason`, else `status`.
fn read_finish(f: &Map<String, Value>, facts: &mut ResponseFacts) {
    let first_choice = f
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("index").is_none_or(|i| i.as_u64() == Some(0)));
    let finish = first_choice
        .and_then(|c| str_at(c, "finish_reason"))
        .or_else(|| f.get("incomplete_details").and_then(|d| str_at(d, "reason")))
        .or_else(|| str_at_map(f, "status"));
    if let Some(finish) = non_empty(finish) {
        facts.finish_reason = Some(finish);
    }
}

/// Generated text of a JSON body: every choice's message (or legacy `text`), or the
/// Responses API output items.
fn read_body_text(f: &Map<String, Value>, gen: &mut Generated) {
    for choice in f.get("choices").and_then(Value::as_array).into_iter().flatten() {
        if let Some(message) = choice.get("message") {
            read_message_text(message, gen, None);
        }
        gen.push(str_at(choice, "text").unwrap_or_default(), None);
    }
    for item in f.get("output").and_then(Value::as_array).into_iter().flatten() {
        let parts = |key| item.get(key).and_then(Value::as_array).into_iter().flatten();
        match str_at(item, "type") {
            Some("message") => {
                for part in parts("content") {
                    gen.push(str_at(part, "text").unwrap_or_default(), None);
                    gen.push(str_at(part, "refusal").unwrap_or_default(), None);
                }
            }
            Some("function_call") => gen.push(str_at(item, "arguments").unwrap_or_default(), None),
            Some("custom_tool_call") => gen.push(str_at(item, "input").unwrap_or_default(), None),
            Some("reasoning") => {
                for part in parts("summary").chain(parts("content")) {
                    gen.push(str_at(part, "text").unwrap_or_default(), None);
                }
            }
            _ => {}
        }
    }
}

/// Generated text of a chat message or stream delta: content, refusal, reasoning
/// (`reasoning_content` or `reasoning`, from compatible servers), tool-call and legacy
/// function-call arguments.
fn read_message_text(message: &Value, gen: &mut Generated, end: Option<usize>) {
    gen.push_value(message.get("content"), end);
    gen.push(str_at(message, "refusal").unwrap_or_default(), end);
    let reasoning = non_empty(str_at(message, "reasoning_content")).or_else(|| non_empty(str_at(message, "reasoning")));
    gen.push(reasoning.as_deref().unwrap_or_default(), end);
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call.get("function").and_then(|f| str_at(f, "arguments"));
        gen.push(arguments.unwrap_or_default(), end);
    }
    let arguments = message.get("function_call").and_then(|f| str_at(f, "arguments"));
    gen.push(arguments.unwrap_or_default(), end);
}

/// Usage in Chat Completions (`prompt_tokens`…) or Responses (`input_tokens`…) naming;
/// `None` unless an input or output count is present.
fn usage(u: &Value) -> Option<Usage> {
    let input = count(u.get("prompt_tokens")).or_else(|| count(u.get("input_tokens")));
    let output = count(u.get("completion_tokens")).or_else(|| count(u.get("output_tokens")));
    if input.is_none() && output.is_none() {
        return None;
    }
    let detail = |names: [&str; 2], field: &str| names.iter().find_map(|n| count(u.get(*n).and_then(|d| d.get(field))));
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        cache_read_input_tokens: detail(["prompt_tokens_details", "input_tokens_details"], "cached_tokens"),
        cache_creation_input_tokens: None,
        reasoning_tokens: detail(["completion_tokens_details", "output_tokens_details"], "reasoning_tokens"),
    })
}

/// A string member of a map.
fn str_at_map<'m>(f: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    f.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, parse_response, Api};
    use super::*;

    fn chat(body: &str) -> ResponseFacts {
        parse_response(Api::Openai, &Operation::Chat, body.as_bytes(), false)
    }

    fn chat_stream(body: &str) -> ResponseFacts {
        parse_response(Api::Openai, &Operation::Chat, body.as_bytes(), true)
    }

    /// An event stream of `data:` events with the given line ending.
    fn stream(datas: &[&str], eol: &str) -> String {
        datas.iter().map(|d| format!("data: {d}{eol}{eol}")).collect()
    }

    /// Offset just past the event that contains `marker`.
    fn end_after(body: &str, marker: &str, eol: &str) -> usize {
        let i = body.find(marker).expect("marker present");
        i + body[i..].find(&format!("{eol}{eol}")).expect("event terminated") + 2 * eol.len()
    }

    /// Every prefix of `body` parses without panicking, whatever the flags.
    fn all_prefixes_parse(body: &str) {
        let ops = [Operation::Chat, Operation::TextCompletion, Operation::Embeddings, Operation::Other("x".into())];
        for cut in 0..=body.len() {
            let bytes = &body.as_bytes()[..cut];
            for op in &ops {
                parse_request(Api::Openai, op, bytes);
                parse_response(Api::Openai, op, bytes, true);
                parse_response(Api::Openai, op, bytes, false);
            }
        }
    }

    fn usage(input: u64, output: u64, cached: Option<u64>, reasoning: Option<u64>) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cached,
            cache_creation_input_tokens: None,
            reasoning_tokens: reasoning,
        })
    }

    const CHAT_STREAM: [&str; 6] = [
        r#"{"id":"chatcmpl-AXb1","object":"chat.completion.chunk","created":1732400000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-AXb1","object":"chat.completion.chunk","created":1732400000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-AXb1","object":"chat.completion.chunk","created":1732400000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[{"index":0,"delta":{"content":" there!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-AXb1","object":"chat.completion.chunk","created":1732400000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"chatcmpl-AXb1","object":"chat.completion.chunk","created":1732400000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":3,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "[DONE]",
    ];

    #[test]
    fn request_chat_stream_with_usage() {
        let body = br#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":256,"temperature":0.2}"#;
        let facts = parse_request(Api::Openai, &Operation::Chat, body);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("gpt-4o-mini".into()),
                stream: true,
                include_usage: true,
                max_tokens: Some(256),
                names_credential: Some(false),
            }
        );
    }

    #[test]
    fn request_limits_and_defaults() {
        let body = br#"{"model":"o3-mini","messages":[],"max_completion_tokens":4000,"reasoning_effort":"low"}"#;
        let facts = parse_request(Api::Openai, &Operation::Chat, body);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("o3-mini".into()),
                max_tokens: Some(4000),
                names_credential: Some(false),
                ..Default::default()
            }
        );

        let body = br#"{"model":"gpt-4.1","input":"Tell me a joke","stream":true,"max_output_tokens":500}"#;
        let facts = parse_request(Api::Openai, &Operation::Chat, body);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("gpt-4.1".into()),
                stream: true,
                include_usage: false,
                max_tokens: Some(500),
                names_credential: Some(false),
            }
        );

        let body = br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"stream":false}"#;
        let facts = parse_request(Api::Openai, &Operation::TextCompletion, body);
        assert_eq!(facts.max_tokens, Some(7));
        assert!(!facts.stream);
    }

    #[test]
    fn request_embeddings_string_or_array_input() {
        for body in [
            &br#"{"input":"The food was delicious","model":"text-embedding-3-small","encoding_format":"float"}"#[..],
            br#"{"input":["a","b",[1,2,3]],"model":"text-embedding-3-small","stream":true,"max_tokens":3}"#,
        ] {
            let facts = parse_request(Api::Openai, &Operation::Embeddings, body);
            assert_eq!(
                facts,
                RequestFacts {
                    model: Some("text-embedding-3-small".into()),
                    names_credential: Some(false),
                    ..Default::default()
                }
            );
        }
    }

    #[test]
    fn request_wrong_types_invalid_and_truncated() {
        let body = br#"{"model":5,"stream":"yes","stream_options":[true],"max_tokens":-3,"max_completion_tokens":"9"}"#;
        assert_eq!(
            parse_request(Api::Openai, &Operation::Chat, body),
            RequestFacts { names_credential: Some(false), ..RequestFacts::default() }
        );
        for body in [&b""[..], b"not json", b"[]", b"\xFF\xFE\x00", b"{\"model\":"] {
            assert_eq!(parse_request(Api::Openai, &Operation::Chat, body), RequestFacts::default());
        }
        let body =
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"very long text that got cu"#;
        let facts = parse_request(Api::Openai, &Operation::Chat, body);
        assert_eq!(facts, RequestFacts { model: Some("gpt-4o".into()), stream: true, ..Default::default() });
    }

    #[test]
    fn chat_non_stream_with_tool_calls_and_cache() {
        let body = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
          {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
          {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;
        let facts = chat(body);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("gpt-4o-2024-08-06".into()),
                finish_reason: Some("tool_calls".into()),
                usage: usage(1117, 46, Some(1024), Some(0)),
                first_content_end: None,
                output_text: "Let me check.{\"location\":\"Paris\"}{}".into(),
                error: None,
            }
        );
        all_prefixes_parse(body);
    }

    #[test]
    fn chat_non_stream_refusal_reasoning_and_content_parts() {
        let body = r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"},{"index":1,"message":{"content":[{"type":"text","text":"part"}]},"finish_reason":"length"}],"usage":{"prompt_tokens":10,"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":4}}}"#;
        let facts = chat(body);
        assert_eq!(facts.output_text, "I can't help with that.part");
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        assert_eq!(facts.usage, usage(10, 9, None, Some(4)));

        let body = r#"{"model":"deepseek-reasoner","choices":[{"index":0,"message":{"content":"42","reasoning_content":"Think.","reasoning":"Think."},"finish_reason":"stop"}]}"#;
        let facts = chat(body);
        assert_eq!(facts.output_text, "42Think.");
        assert_eq!(facts.usage, None);
    }

    #[test]
    fn usage_presence_rules() {
        let facts = chat(r#"{"model":"m","choices":[],"usage":null}"#);
        assert_eq!(facts.usage, None);
        let facts = chat(r#"{"model":"m","choices":[],"usage":{}}"#);
        assert_eq!(facts.usage, None);
        let facts = chat(
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":null,"completion_tokens":null,"total_tokens":0}}"#,
        );
        assert_eq!(facts.usage, None);
        let facts = chat(
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":null,"prompt_tokens_details":null}}"#,
        );
        assert_eq!(facts.usage, usage(7, 0, None, None));
        let facts = chat(r#"{"model":"m","choices":[],"usage":"lots"}"#);
        assert_eq!(facts.usage, None);
    }

    #[test]
    fn chat_stream_with_include_usage() {
        let body = stream(&CHAT_STREAM, "\n");
        let facts = chat_stream(&body);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("gpt-4o-mini-2024-07-18".into()),
                finish_reason: Some("stop".into()),
                usage: usage(19, 3, Some(0), Some(0)),
                // The role-only first chunk (content "") is not content.
                first_content_end: Some(end_after(&body, "\"Hello\"", "\n")),
                output_text: "Hello there!".into(),
                error: None,
            }
        );
        all_prefixes_parse(&body);
    }

    #[test]
    fn chat_stream_crlf_comments_and_invalid_events() {
        let mut body = String::from(": keep-alive\r\n\r\n");
        body += &stream(&CHAT_STREAM[..1], "\r\n");
        body += "data: {\"choices\":[{\"delta\":{\"content\":\"lost\"}}\r\n\r\n"; // invalid JSON
        body += "data: \"just a string\"\r\n\r\n";
        body += &stream(&CHAT_STREAM[1..], "\r\n");
        let facts = chat_stream(&body);
        assert_eq!(facts.output_text, "Hello there!");
        assert_eq!(facts.first_content_end, Some(end_after(&body, "\"Hello\"", "\r\n")));
        assert_eq!(facts.usage, usage(19, 3, Some(0), Some(0)));
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn chat_stream_multi_line_data() {
        // A compatible server that pretty-prints its chunks over several data lines.
        let body = "data: {\"model\":\"llama-3\",\ndata:  \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\ndata: \"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let facts = chat_stream(body);
        assert_eq!(facts.model.as_deref(), Some("llama-3"));
        assert_eq!(facts.output_text, "Hi");
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        assert_eq!(facts.first_content_end, Some(body.len() - "data: [DONE]\n\n".len()));
    }

    #[test]
    fn chat_stream_cut_in_the_middle() {
        let full = stream(&CHAT_STREAM, "\n");
        let cut_at = full.find(" there!").expect("present");
        let body = &full[..cut_at];
        let facts = chat_stream(body);
        assert_eq!(facts.usage, None);
        assert_eq!(facts.finish_reason, None);
        assert_eq!(facts.output_text, "Hello");
        assert_eq!(facts.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        // A complete last line without the blank line is not an event yet.
        let body = format!("{}{}\n", stream(&CHAT_STREAM[..2], "\n"), &stream(&CHAT_STREAM[2..3], "\n").trim_end());
        assert_eq!(chat_stream(&body).output_text, "Hello");
    }

    #[test]
    fn chat_stream_tool_calls() {
        let body = stream(
            &[
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"location"}}]},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
                "[DONE]",
            ],
            "\n",
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.output_text, r#"{"location":"Paris"}"#);
        assert_eq!(facts.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(facts.first_content_end, Some(end_after(&body, r#""arguments":"{\"""#, "\n")));
        assert_eq!(facts.usage, None);
        all_prefixes_parse(&body);
    }

    #[test]
    fn vllm_cumulative_usage_on_every_chunk() {
        let body = stream(
            &[
                r#"{"id":"cmpl-9","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":25,"total_tokens":25,"completion_tokens":0}}"#,
                r#"{"id":"cmpl-9","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":"One"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":25,"total_tokens":26,"completion_tokens":1}}"#,
                r#"{"id":"cmpl-9","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":" two"},"logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":25,"total_tokens":27,"completion_tokens":2}}"#,
                r#"{"id":"cmpl-9","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[],"usage":null}"#,
                "[DONE]",
            ],
            "\n",
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.usage, usage(25, 2, None, None));
        assert_eq!(facts.finish_reason.as_deref(), Some("length"));
        assert_eq!(facts.output_text, "One two");
    }

    #[test]
    fn vllm_reasoning_counts_as_first_content() {
        let body = stream(
            &[
                r#"{"model":"Qwen/QwQ-32B","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                r#"{"model":"Qwen/QwQ-32B","choices":[{"index":0,"delta":{"reasoning_content":"Hmm"}}]}"#,
                r#"{"model":"Qwen/QwQ-32B","choices":[{"index":0,"delta":{"content":"Yes"},"finish_reason":"stop"}]}"#,
            ],
            "\n",
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.first_content_end, Some(end_after(&body, "Hmm", "\n")));
        assert_eq!(facts.output_text, "HmmYes");
    }

    #[test]
    fn azure_prompt_filter_chunk_and_n_choices() {
        let body = stream(
            &[
                r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
                r#"{"choices":[{"index":1,"delta":{"content":"B"},"finish_reason":"length"},{"index":0,"delta":{"content":"A"},"finish_reason":null}],"model":"gpt-4o-2024-05-13","object":"chat.completion.chunk"}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","content_filter_results":{}}],"model":"gpt-4o-2024-05-13","object":"chat.completion.chunk"}"#,
                "[DONE]",
            ],
            "\n",
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.model.as_deref(), Some("gpt-4o-2024-05-13"));
        assert_eq!(facts.output_text, "BA");
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn azure_streams_open_with_a_content_filter_chunk_of_no_choices() {
        // Azure OpenAI's first chunk carries `prompt_filter_results` and `choices: []` (a
        // parser indexing choices[0] breaks on it); content-filter results ride along later.
        let chunks = [
            r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
            r#"{"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"created":1,"id":"c1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk"}"#,
            r#"{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"delta":{"content":"Hi"},"finish_reason":null,"index":0}],"created":1,"id":"c1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk"}"#,
            r#"{"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0}],"created":1,"id":"c1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}"#,
        ];
        let body = stream(&chunks, "\n");
        let facts = chat_stream(&body);
        assert_eq!(facts.output_text, "Hi");
        assert_eq!(
            facts.model.as_deref(),
            Some("gpt-4o-2024-11-20"),
            "the empty model of the filter chunk is not the model"
        );
        assert_eq!(facts.first_content_end, Some(end_after(&body, "\"Hi\"", "\n")), "TTFT from the first content");
        assert_eq!(facts.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((8, 1)));
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn chat_stream_error_mid_stream() {
        let body = stream(
            &[
                CHAT_STREAM[0],
                CHAT_STREAM[1],
                r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
            ],
            "\n",
        );
        let facts = chat_stream(&body);
        assert_eq!(
            facts.error.as_deref(),
            Some("The server had an error while processing your request. Sorry about that!")
        );
        assert_eq!(facts.output_text, "Hello");
        assert_eq!(facts.usage, None);
        // Some servers name the event.
        let body = "event: error\ndata: {\"object\":\"error\",\"message\":\"boom\",\"type\":\"InternalServerError\",\"code\":500}\n\n";
        assert_eq!(chat_stream(body).error.as_deref(), Some("boom"));
    }

    #[test]
    fn error_bodies() {
        let body = r#"{
    "error": {
        "message": "Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }
}"#;
        let facts = chat(body);
        assert!(facts.error.as_deref().is_some_and(|e| e.starts_with("Incorrect API key provided")));
        assert_eq!(facts.usage, None);
        let vllm = r#"{"object":"error","message":"The model `gpt-5` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
        assert_eq!(chat(vllm).error.as_deref(), Some("The model `gpt-5` does not exist."));
        assert_eq!(chat(r#"{"error":"Rate limit reached"}"#).error.as_deref(), Some("Rate limit reached"));
        let facts = parse_response(Api::Openai, &Operation::Embeddings, br#"{"error":{"message":"too long"}}"#, false);
        assert_eq!(facts.error.as_deref(), Some("too long"));
        assert_eq!(chat("<html>502 Bad Gateway</html>"), ResponseFacts::default());
    }

    #[test]
    fn legacy_completions() {
        let body = r#"{"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb","choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        let facts = parse_response(Api::Openai, &Operation::TextCompletion, body.as_bytes(), false);
        assert_eq!(facts.output_text, "\n\nThis is indeed a test");
        assert_eq!(facts.finish_reason.as_deref(), Some("length"));
        assert_eq!(facts.usage, usage(5, 7, None, None));

        let body = stream(
            &[
                r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
                r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
                r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":" is","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct"}"#,
                "[DONE]",
            ],
            "\n",
        );
        let facts = parse_response(Api::Openai, &Operation::TextCompletion, body.as_bytes(), true);
        assert_eq!(facts.output_text, "This is");
        assert_eq!(facts.first_content_end, Some(end_after(&body, "\"This\"", "\n")));
        assert_eq!(facts.finish_reason.as_deref(), Some("length"));
        all_prefixes_parse(&body);
    }

    #[test]
    fn embeddings() {
        let body = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[-0.006929283,-0.005336422,0.00045,-0.0076]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        let facts = parse_response(Api::Openai, &Operation::Embeddings, body.as_bytes(), false);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("text-embedding-3-small".into()),
                usage: usage(5, 0, None, None),
                ..Default::default()
            }
        );
        all_prefixes_parse(body);
    }

    const RESPONSE_BODY: &str = r#"{
  "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
  "object": "response",
  "created_at": 1741476777,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4o-2024-08-06",
  "output": [
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Looking up."}]},
    {
      "type": "message",
      "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
      "status": "completed",
      "role": "assistant",
      "content": [{"type": "output_text", "text": "The image depicts a scenic landscape.", "annotations": []}]
    },
    {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}", "status": "completed"},
    {"type": "web_search_call", "id": "ws_1", "status": "completed"}
  ],
  "parallel_tool_calls": true,
  "usage": {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 128},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 380
  }
}"#;

    #[test]
    fn responses_non_stream() {
        let facts = chat(RESPONSE_BODY);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("gpt-4o-2024-08-06".into()),
                finish_reason: Some("completed".into()),
                usage: usage(328, 52, Some(128), Some(10)),
                first_content_end: None,
                output_text: "Looking up.The image depicts a scenic landscape.{\"city\":\"Oslo\"}".into(),
                error: None,
            }
        );
        all_prefixes_parse(RESPONSE_BODY);
    }

    #[test]
    fn responses_incomplete_and_failed() {
        let body = r#"{"id":"resp_1","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"o4-mini-2025-04-16","output":[{"type":"message","content":[{"type":"output_text","text":"Partial"},{"type":"refusal","refusal":"No."}]}],"usage":{"input_tokens":20,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":16}}}"#;
        let facts = chat(body);
        assert_eq!(facts.finish_reason.as_deref(), Some("max_output_tokens"));
        assert_eq!(facts.output_text, "PartialNo.");
        assert_eq!(facts.usage, usage(20, 16, None, Some(16)));
        let body = r#"{"id":"resp_2","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"incomplete_details":null,"model":"gpt-4.1","output":[],"usage":null}"#;
        let facts = chat(body);
        assert_eq!(facts.finish_reason.as_deref(), Some("failed"));
        assert_eq!(facts.error.as_deref(), Some("The model failed to generate a response."));
    }

    fn responses_event(kind: &str, data: &str) -> String {
        format!("event: {kind}\ndata: {data}\n\n")
    }

    #[test]
    fn responses_stream() {
        let created = r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#;
        let completed = r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response","status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there","annotations":[]}]}],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}}}"#;
        let mut body = String::new();
        body += &responses_event("response.created", created);
        body += &responses_event("response.in_progress", &created.replace("response.created", "response.in_progress"));
        body += &responses_event(
            "response.output_item.added",
            r#"{"type":"response.output_item.added","output_index":0,"item":{"id":"msg_1","status":"in_progress","type":"message","role":"assistant","content":[]}}"#,
        );
        body += &responses_event(
            "response.content_part.added",
            r#"{"type":"response.content_part.added","item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#,
        );
        body += &responses_event(
            "response.reasoning_summary_text.delta",
            r#"{"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":0,"delta":"Plan. "}"#,
        );
        body += &responses_event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#,
        );
        body += &responses_event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":" there"}"#,
        );
        body += &responses_event(
            "response.function_call_arguments.delta",
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{}"}"#,
        );
        body += &responses_event(
            "response.output_text.done",
            r#"{"type":"response.output_text.done","item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there"}"#,
        );
        body += &responses_event("response.completed", completed);
        let facts = chat_stream(&body);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("gpt-4.1-2025-04-14".into()),
                finish_reason: Some("completed".into()),
                usage: usage(37, 11, Some(0), Some(0)),
                first_content_end: Some(end_after(&body, "Plan. ", "\n")),
                output_text: "Plan. Hi there{}".into(),
                error: None,
            }
        );
        all_prefixes_parse(&body);

        // Cut before the end: what arrived, no usage, no finish.
        let cut = &body[..body.find("response.completed").expect("present")];
        let facts = chat_stream(cut);
        assert_eq!(facts.model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!((facts.usage, facts.finish_reason), (None, None));
        assert_eq!(facts.output_text, "Plan. Hi there{}");
    }

    #[test]
    fn responses_stream_errors() {
        let mut body = responses_event(
            "response.created",
            r#"{"type":"response.created","response":{"status":"in_progress","model":"gpt-4.1"}}"#,
        );
        body += &responses_event(
            "error",
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1}"#,
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.error.as_deref(), Some("Something went wrong"));
        assert_eq!(facts.finish_reason, None);

        let body = responses_event(
            "response.failed",
            r#"{"type":"response.failed","response":{"status":"failed","model":"gpt-4.1","error":{"code":"server_error","message":"Internal failure"},"usage":{"input_tokens":5,"output_tokens":0}}}"#,
        );
        let facts = chat_stream(&body);
        assert_eq!(facts.error.as_deref(), Some("Internal failure"));
        assert_eq!(facts.finish_reason.as_deref(), Some("failed"));
        assert_eq!(facts.usage, usage(5, 0, None, None));

        let body = responses_event(
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"content_filter"},"model":"gpt-4.1"}}"#,
        );
        assert_eq!(chat_stream(&body).finish_reason.as_deref(), Some("content_filter"));
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            &b""[..],
            b"\xFF\xFE\xFD",
            b"data: \xFF\n\n",
            b"data: {\"choices\":5,\"usage\":[1],\"model\":{}}\n\n",
            b"data: {\"choices\":[5,null,{\"delta\":7,\"text\":1}],\"type\":3}\n\n",
            b"event: response.output_text.delta\ndata: {\"delta\":5}\n\n",
            b"data: {\"type\":\"response.completed\",\"response\":[1]}\n\n",
            b"{\"choices\":[{\"message\":{\"tool_calls\":[1,{\"function\":2}]}}],\"output\":[3,{\"type\":\"message\",\"content\":7}]}",
        ] {
            for op in [Operation::Chat, Operation::Embeddings] {
                for sse in [true, false] {
                    let facts = parse_response(Api::Openai, &op, body, sse);
                    assert_eq!(facts.output_text, "");
                }
            }
        }
    }
}
