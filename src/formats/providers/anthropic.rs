//! Anthropic wire formats: the Messages API (JSON and event stream) and the legacy Text
//! Completions API (`/v1/complete`).
//!
//! Reads operation names, request facts, and the model, stop reason, usage, generated text
//! and error of a response. Anthropic counts cached input apart from `input_tokens`; the
//! [`Usage`] built here folds cache reads and writes into the input total exactly once.

use super::{
    count, error_message, non_empty, request_members, str_at, top_level, Generated, Operation, RequestFacts,
    ResponseFacts, Usage,
};
use crate::formats::sse;
use serde_json::{Map, Value};

/// The operation named by the last meaningful path segment.
pub(super) fn operation(segment: &str) -> Option<Operation> {
    match segment {
        "messages" => Some(Operation::Chat),
        "complete" => Some(Operation::TextCompletion),
        _ => None,
    }
}

/// Request facts of a Messages or legacy Complete body.
pub(super) fn parse_request(body: &[u8], names: &[&str]) -> RequestFacts {
    let (f, names_credential) =
        request_members(body, &["model", "stream", "max_tokens", "max_tokens_to_sample"], names);
    RequestFacts {
        names_credential,
        model: non_empty(f.get("model").and_then(Value::as_str)),
        stream: f.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: false,
        max_tokens: count(f.get("max_tokens")).or_else(|| count(f.get("max_tokens_to_sample"))),
    }
}

/// Top-level members read from a JSON response body.
const BODY_KEYS: &[&str] = &["type", "model", "content", "stop_reason", "usage", "error", "completion"];

/// Facts of a JSON response body: a message, a legacy completion, or an error.
pub(super) fn parse_body(body: &[u8], generates: bool) -> ResponseFacts {
    let f = top_level(body, BODY_KEYS);
    let mut facts = ResponseFacts { model: non_empty(str_at_map(&f, "model")), ..Default::default() };
    read_error(&f, &mut facts);
    let mut usage = RawUsage::default();
    if let Some(u) = f.get("usage") {
        usage.merge(u);
    }
    facts.usage = usage.finish();
    if generates {
        facts.finish_reason = non_empty(str_at_map(&f, "stop_reason"));
        let mut gen = Generated::default();
        for block in f.get("content").and_then(Value::as_array).into_iter().flatten() {
            match str_at(block, "type") {
                Some("text") => gen.push(str_at(block, "text").unwrap_or_default(), None),
                Some("thinking") => gen.push(str_at(block, "thinking").unwrap_or_default(), None),
                Some("tool_use" | "server_tool_use") => {
                    if let Some(input) = block.get("input") {
                        gen.push(&input.to_string(), None);
                    }
                }
                _ => {}
            }
        }
        gen.push(str_at_map(&f, "completion").unwrap_or_default(), None);
        facts.output_text = gen.text;
    }
    facts
}

/// Top-level members read from one stream event.
const EVENT_KEYS: &[&str] =
    &["type", "message", "content_block", "delta", "usage", "error", "completion", "stop_reason", "model"];

/// Facts of a Messages event stream (or a legacy `completion` event stream). Usage is
/// reported only once a `message_delta` carried the final output count: `message_start`
/// alone holds the input side and a placeholder output count, so a stream cut before its
/// end gives `usage: None`. Events that are not JSON objects are skipped.
pub(super) fn parse_stream(body: &[u8], generates: bool) -> ResponseFacts {
    let mut reader = StreamReader::new(generates);
    for ev in sse::events(body) {
        reader.event(ev.data.as_bytes(), ev.event, ev.end_offset);
    }
    reader.finish()
}

/// Reads a Messages stream event by event, wherever the events come from: SSE here, AWS
/// event-stream chunks on Bedrock's `invoke-with-response-stream` (`bedrock`).
pub(super) struct StreamReader {
    generates: bool,
    facts: ResponseFacts,
    gen: Generated,
    usage: RawUsage,
    final_usage: bool,
}

impl StreamReader {
    pub(super) fn new(generates: bool) -> Self {
        StreamReader {
            generates,
            facts: ResponseFacts::default(),
            gen: Generated::default(),
            usage: RawUsage::default(),
            final_usage: false,
        }
    }

    /// One event's JSON `data`, its SSE event name if any, and where it ends in the body.
    pub(super) fn event(&mut self, data: &[u8], name: Option<&str>, end_offset: usize) {
        let generates = self.generates;
        let (facts, gen, usage) = (&mut self.facts, &mut self.gen, &mut self.usage);
        let f = top_level(data, EVENT_KEYS);
        if f.is_empty() {
            return;
        }
        let end = Some(end_offset);
        read_error(&f, facts);
        match f.get("type").and_then(Value::as_str).or(name) {
            Some("message_start") => {
                if let Some(message) = f.get("message") {
                    if let Some(model) = non_empty(str_at(message, "model")) {
                        facts.model = Some(model);
                    }
                    if let Some(u) = message.get("usage") {
                        usage.merge(u);
                    }
                }
            }
            Some("content_block_start") if generates => {
                if let Some(block) = f.get("content_block") {
                    gen.push(str_at(block, "text").unwrap_or_default(), end);
                    gen.push(str_at(block, "thinking").unwrap_or_default(), end);
                }
            }
            Some("content_block_delta") if generates => {
                if let Some(delta) = f.get("delta") {
                    let piece = match str_at(delta, "type") {
                        Some("text_delta") => str_at(delta, "text"),
                        Some("input_json_delta") => str_at(delta, "partial_json"),
                        Some("thinking_delta") => str_at(delta, "thinking"),
                        _ => None, // signature_delta, citations_delta: no generated text
                    };
                    gen.push(piece.unwrap_or_default(), end);
                }
            }
            Some("message_delta") => {
                if generates {
                    let stop = f.get("delta").and_then(|d| str_at(d, "stop_reason"));
                    if let Some(stop) = non_empty(stop) {
                        facts.finish_reason = Some(stop);
                    }
                }
                if let Some(u) = f.get("usage") {
                    usage.merge(u);
                    self.final_usage |= count(u.get("output_tokens")).is_some();
                }
            }
            Some("completion") => {
                if let Some(model) = non_empty(str_at_map(&f, "model")) {
                    facts.model = Some(model);
                }
                if generates {
                    gen.push(str_at_map(&f, "completion").unwrap_or_default(), end);
                    if let Some(stop) = non_empty(str_at_map(&f, "stop_reason")) {
                        facts.finish_reason = Some(stop);
                    }
                }
            }
            _ => {} // ping, content_block_stop, message_stop, error (read above)
        }
    }

    pub(super) fn finish(mut self) -> ResponseFacts {
        if self.final_usage {
            self.facts.usage = self.usage.finish();
        }
        self.facts.output_text = self.gen.text;
        self.facts.first_content_end = self.gen.first_end;
        self.facts
    }
}

/// The message of an error body or `error` event (`{"type":"error","error":{…}}`).
fn read_error(f: &Map<String, Value>, facts: &mut ResponseFacts) {
    let error = f.get("error").and_then(error_message);
    let error = match error {
        None if str_at_map(f, "type") == Some("error") => Some("error".to_owned()),
        error => error,
    };
    if error.is_some() {
        facts.error = error;
    }
}

/// Anthropic's usage counts as reported; later reports override earlier ones field by
/// field, so a count repeated in `message_delta` replaces rather than adds.
#[derive(Default)]
struct RawUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

impl RawUsage {
    /// Takes every count present in a `usage` object.
    fn merge(&mut self, u: &Value) {
        let fields = [
            (&mut self.input, "input_tokens"),
            (&mut self.output, "output_tokens"),
            (&mut self.cache_read, "cache_read_input_tokens"),
            (&mut self.cache_creation, "cache_creation_input_tokens"),
        ];
        for (slot, key) in fields {
            if let Some(n) = count(u.get(key)) {
                *slot = Some(n);
            }
        }
    }

    /// The normalised usage, `None` unless an input or output count was reported.
    fn finish(&self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let input = self.input.unwrap_or(0);
        let cached = self.cache_read.unwrap_or(0).saturating_add(self.cache_creation.unwrap_or(0));
        Some(Usage {
            input_tokens: input.saturating_add(cached),
            output_tokens: self.output.unwrap_or(0),
            cache_read_input_tokens: self.cache_read,
            cache_creation_input_tokens: self.cache_creation,
            reasoning_tokens: None,
        })
    }
}

/// A string member of a map.
fn str_at_map<'m>(f: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    f.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, parse_response, Api};
    use super::*;

    fn messages(body: &str) -> ResponseFacts {
        parse_response(Api::Anthropic, &Operation::Chat, body.as_bytes(), false)
    }

    fn messages_stream(body: &str) -> ResponseFacts {
        parse_response(Api::Anthropic, &Operation::Chat, body.as_bytes(), true)
    }

    /// An event stream of named events with the given line ending.
    fn stream(events: &[(&str, &str)], eol: &str) -> String {
        events.iter().map(|(name, data)| format!("event: {name}{eol}data: {data}{eol}{eol}")).collect()
    }

    /// Offset just past the event that contains `marker`.
    fn end_after(body: &str, marker: &str, eol: &str) -> usize {
        let i = body.find(marker).expect("marker present");
        i + body[i..].find(&format!("{eol}{eol}")).expect("event terminated") + 2 * eol.len()
    }

    /// Every prefix of `body` parses without panicking, whatever the flags.
    fn all_prefixes_parse(body: &str) {
        let ops = [Operation::Chat, Operation::TextCompletion, Operation::Other("count_tokens".into())];
        for cut in 0..=body.len() {
            let bytes = &body.as_bytes()[..cut];
            for op in &ops {
                parse_request(Api::Anthropic, op, bytes);
                parse_response(Api::Anthropic, op, bytes, true);
                parse_response(Api::Anthropic, op, bytes, false);
            }
        }
    }

    fn usage(input: u64, output: u64, read: Option<u64>, creation: Option<u64>) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: read,
            cache_creation_input_tokens: creation,
            reasoning_tokens: None,
        })
    }

    const MESSAGE_START: &str = r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#;

    /// A streamed answer with thinking, text, pings and a comment.
    fn thinking_stream(message_delta: &str, eol: &str) -> String {
        let mut body = stream(&[("message_start", MESSAGE_START)], eol);
        body += &format!(": upstream keep-alive{eol}{eol}");
        body += &stream(
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                ),
                ("ping", r#"{"type": "ping"}"#),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user greets me."}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}"#,
                ),
                ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"!"}}"#,
                ),
                ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
                ("message_delta", message_delta),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
            eol,
        );
        body
    }

    #[test]
    fn request_facts() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"system":"Be brief.","messages":[{"role":"user","content":"Hello, Claude"}],"stream":true}"#;
        let facts = parse_request(Api::Anthropic, &Operation::Chat, body);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("claude-sonnet-4-5".into()),
                stream: true,
                include_usage: false,
                max_tokens: Some(1024),
                names_credential: Some(false),
            }
        );
        let body = br#"{"model":"claude-2.1","max_tokens_to_sample":256,"prompt":"\n\nHuman: Hi\n\nAssistant:"}"#;
        let facts = parse_request(Api::Anthropic, &Operation::TextCompletion, body);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("claude-2.1".into()),
                max_tokens: Some(256),
                names_credential: Some(false),
                ..Default::default()
            }
        );
        let body = br#"{"model":["x"],"stream":1,"max_tokens":"many"}"#;
        assert_eq!(
            parse_request(Api::Anthropic, &Operation::Chat, body),
            RequestFacts { names_credential: Some(false), ..RequestFacts::default() }
        );
        let body = br#"{"model":"claude-opus-4-1","max_tokens":32000,"messages":[{"role":"user","content":"cut he"#;
        let facts = parse_request(Api::Anthropic, &Operation::Chat, body);
        assert_eq!(
            facts,
            RequestFacts { model: Some("claude-opus-4-1".into()), max_tokens: Some(32000), ..Default::default() }
        );
    }

    #[test]
    fn message_with_text_tool_use_thinking_and_cache() {
        let body = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [
    {"type": "thinking", "thinking": "Need weather.", "signature": "EqQBCgIYAhIM"},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    {"type": "text", "text": "I'll check the weather."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 472,
    "cache_creation_input_tokens": 1200,
    "cache_read_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1200, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 89,
    "service_tier": "standard"
  }
}"#;
        let facts = messages(body);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("claude-sonnet-4-5-20250929".into()),
                finish_reason: Some("tool_use".into()),
                usage: usage(472 + 1200 + 3000, 89, Some(3000), Some(1200)),
                first_content_end: None,
                output_text: r#"Need weather.I'll check the weather.{"location":"San Francisco, CA","unit":"celsius"}"#
                    .into(),
                error: None,
            }
        );
        all_prefixes_parse(body);
    }

    #[test]
    fn usage_presence_rules() {
        let body = r#"{"type":"message","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":6,"cache_creation_input_tokens":null,"cache_read_input_tokens":null}}"#;
        assert_eq!(messages(body).usage, usage(12, 6, None, None));
        let body = r#"{"type":"message","content":[],"usage":{"cache_read_input_tokens":50}}"#;
        assert_eq!(messages(body).usage, None);
        let body = r#"{"type":"message","content":[],"usage":null}"#;
        assert_eq!(messages(body).usage, None);
        let body = r#"{"type":"message","content":[],"usage":{"output_tokens":3}}"#;
        assert_eq!(messages(body).usage, usage(0, 3, None, None));
    }

    #[test]
    fn stream_with_thinking_pings_and_cache_counted_once() {
        // message_delta repeats the cache counts: they must not be added twice.
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"output_tokens":15}}"#;
        let body = thinking_stream(delta, "\n");
        let facts = messages_stream(&body);
        assert_eq!(
            facts,
            ResponseFacts {
                model: Some("claude-sonnet-4-5-20250929".into()),
                finish_reason: Some("end_turn".into()),
                usage: usage(25 + 100 + 2048, 15, Some(2048), Some(100)),
                // The empty thinking block start is not content; the first thinking delta is.
                first_content_end: Some(end_after(&body, "The user greets me.", "\n")),
                output_text: "The user greets me.Hello!".into(),
                error: None,
            }
        );
        all_prefixes_parse(&body);
    }

    #[test]
    fn stream_message_delta_overrides() {
        // Only output in message_delta: input side from message_start.
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":42}}"#;
        let facts = messages_stream(&thinking_stream(delta, "\n"));
        assert_eq!(facts.usage, usage(25 + 100 + 2048, 42, Some(2048), Some(100)));
        assert_eq!(facts.finish_reason.as_deref(), Some("max_tokens"));
        // Input and cache fields in message_delta replace message_start's.
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":30,"cache_read_input_tokens":0,"output_tokens":7}}"#;
        let facts = messages_stream(&thinking_stream(delta, "\n"));
        assert_eq!(facts.usage, usage(30 + 100, 7, Some(0), Some(100)));
    }

    #[test]
    fn stream_crlf() {
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#;
        let body = thinking_stream(delta, "\r\n");
        let facts = messages_stream(&body);
        assert_eq!(facts.output_text, "The user greets me.Hello!");
        assert_eq!(facts.first_content_end, Some(end_after(&body, "The user greets me.", "\r\n")));
        assert_eq!(facts.usage, usage(2173, 15, Some(2048), Some(100)));
    }

    #[test]
    fn stream_cut_in_the_middle() {
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#;
        let full = thinking_stream(delta, "\n");
        let body = &full[..full.find(r#""text":"!""#).expect("present")];
        let facts = messages_stream(body);
        assert_eq!(facts.usage, None);
        assert_eq!(facts.finish_reason, None);
        assert_eq!(facts.output_text, "The user greets me.Hello");
        assert_eq!(facts.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn stream_tool_use_and_invalid_events() {
        let body = stream(
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San Fra"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"lost"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"ncisco, CA\"}"}}"#,
                ),
                ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
            "\n",
        );
        let facts = messages_stream(&body);
        assert_eq!(facts.output_text, r#"{"location": "San Francisco, CA"}"#);
        assert_eq!(facts.first_content_end, Some(end_after(&body, "San Fra", "\n")));
        assert_eq!(facts.finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(facts.usage, usage(472, 89, None, None));
        all_prefixes_parse(&body);
    }

    #[test]
    fn errors() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
        let facts = messages(body);
        assert_eq!(facts.error.as_deref(), Some("Overloaded"));
        assert_eq!(facts.usage, None);
        let body =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let facts = parse_response(Api::Anthropic, &Operation::Other("count_tokens".into()), body.as_bytes(), false);
        assert_eq!(facts.error.as_deref(), Some("max_tokens: Field required"));

        let mut body = stream(&[("message_start", MESSAGE_START)], "\n");
        body += &stream(
            &[
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Par"}}"#,
                ),
                ("error", r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#),
            ],
            "\n",
        );
        let facts = messages_stream(&body);
        assert_eq!(facts.error.as_deref(), Some("Overloaded"));
        assert_eq!(facts.output_text, "Par");
        assert_eq!(facts.usage, None);
        assert_eq!(messages_stream("event: error\ndata: {\"type\":\"error\"}\n\n").error.as_deref(), Some("error"));
    }

    #[test]
    fn legacy_complete() {
        let body = r#"{"type":"completion","id":"compl_01","completion":" Hello! How can I help?","stop_reason":"stop_sequence","model":"claude-2.1","stop":"\n\nHuman:","log_id":"compl_01"}"#;
        let facts = parse_response(Api::Anthropic, &Operation::TextCompletion, body.as_bytes(), false);
        assert_eq!(facts.output_text, " Hello! How can I help?");
        assert_eq!(facts.finish_reason.as_deref(), Some("stop_sequence"));
        assert_eq!(facts.model.as_deref(), Some("claude-2.1"));
        assert_eq!(facts.usage, None);

        let body = stream(
            &[
                (
                    "completion",
                    r#"{"type":"completion","completion":" Hello","stop_reason":null,"model":"claude-2.1"}"#,
                ),
                ("ping", r#"{"type":"ping"}"#),
                (
                    "completion",
                    r#"{"type":"completion","completion":"!","stop_reason":"stop_sequence","model":"claude-2.1"}"#,
                ),
            ],
            "\n",
        );
        let facts = parse_response(Api::Anthropic, &Operation::TextCompletion, body.as_bytes(), true);
        assert_eq!(facts.output_text, " Hello!");
        assert_eq!(facts.first_content_end, Some(end_after(&body, " Hello", "\n")));
        assert_eq!(facts.finish_reason.as_deref(), Some("stop_sequence"));
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            &b""[..],
            b"\xFF\xFE",
            b"event: message_start\ndata: {\"message\":7}\n\n",
            b"event: message_delta\ndata: {\"delta\":[],\"usage\":\"x\"}\n\n",
            b"event: content_block_delta\ndata: {\"delta\":{\"type\":5}}\n\n",
            b"data: {\"type\":\"content_block_start\",\"content_block\":null}\n\n",
            b"{\"content\":[1,{\"type\":\"tool_use\"},{\"type\":\"text\",\"text\":[]}],\"usage\":{\"input_tokens\":-1}}",
        ] {
            for sse in [true, false] {
                let facts = parse_response(Api::Anthropic, &Operation::Chat, body, sse);
                assert_eq!((facts.output_text.as_str(), facts.usage), ("", None));
            }
        }
    }
}
