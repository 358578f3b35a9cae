//! The common shape of an OpenAI chat completion (and of a streamed chunk), read into
//! borrowed typed structs instead of `serde_json::Value`s.
//!
//! Building `Value`s allocates for every key, string and object of `choices` and `usage`;
//! reading into these structs borrows the strings from the body and allocates almost
//! nothing. They only accept the plain shape: a string or null where text is expected,
//! non-negative integers as counts, no duplicate keys, and none of the members that need the
//! lenient readers' judgement (an error, Responses API fields, content parts). Anything else
//! makes [`read`] return `None`, and the caller falls back to the lenient reader in
//! `openai.rs`, so the facts are the same either way (the tests here check that).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::{Generated, ResponseFacts, Usage};

/// A chat completion or chunk in its plain shape.
#[derive(Deserialize)]
pub(super) struct Completion<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "choices_sized_for_one")]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    object: Option<Text<'a>>,
    // Present (and not null), these need the lenient reader.
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, rename = "type")]
    kind: Option<IgnoredAny>,
    #[serde(default)]
    message: Option<IgnoredAny>,
    #[serde(default)]
    output: Option<IgnoredAny>,
    #[serde(default)]
    status: Option<IgnoredAny>,
    #[serde(default)]
    incomplete_details: Option<IgnoredAny>,
    #[serde(default)]
    response: Option<IgnoredAny>,
    #[serde(default)]
    delta: Option<IgnoredAny>,
}

/// A JSON string, borrowed from the body unless it holds escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The string of an optional text, `""` when absent.
fn text<'t>(t: &'t Option<Text<'_>>) -> &'t str {
    t.as_ref().map_or("", |t| &t.0)
}

#[derive(Deserialize)]
struct Choice<'a> {
    /// Absent, or an index of 0: the choice whose finish reason is the call's.
    #[serde(default = "absent_is_first", rename = "index", deserialize_with = "index_is_zero")]
    first: bool,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
    #[serde(borrow, default)]
    delta: Option<Message<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

/// Reads `choices` into a vector sized for one choice. serde's own reader starts at four,
/// and four choices (~1.4 KB) are a large request for glibc's malloc, which first
/// consolidates every free small chunk of the arena: that was ~6% of the recorder's time.
fn choices_sized_for_one<'de: 'a, 'a, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<Choice<'a>>>, D::Error> {
    struct Choices<'a>(std::marker::PhantomData<Choice<'a>>);
    impl<'de: 'a, 'a> serde::de::Visitor<'de> for Choices<'a> {
        type Value = Option<Vec<Choice<'a>>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of choices or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            de.deserialize_seq(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut choices = Vec::with_capacity(1);
            while let Some(choice) = seq.next_element()? {
                choices.push(choice);
            }
            Ok(Some(choices))
        }
    }
    de.deserialize_option(Choices(std::marker::PhantomData))
}

fn absent_is_first() -> bool {
    true
}

fn index_is_zero<'de, D: Deserializer<'de>>(de: D) -> Result<bool, D::Error> {
    Ok(Option::<u64>::deserialize(de)? == Some(0))
}

/// A message or a stream delta.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// The body or event data as a plain completion; `None` for anything the lenient reader
/// must judge (including anything but a single JSON object).
pub(super) fn read(json: &[u8]) -> Option<Completion<'_>> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None; // a derived struct would also accept an array
    }
    let parsed: Completion = serde_json::from_slice(json).ok()?;
    let plain = parsed.error.is_none()
        && parsed.kind.is_none()
        && parsed.message.is_none()
        && parsed.output.is_none()
        && parsed.status.is_none()
        && parsed.incomplete_details.is_none()
        && parsed.response.is_none()
        && parsed.delta.is_none()
        && text(&parsed.object) != "error";
    plain.then_some(parsed)
}

impl Completion<'_> {
    /// Model and usage, over what earlier events said.
    pub(super) fn read_common(&self, facts: &mut ResponseFacts) {
        if !text(&self.model).is_empty() {
            facts.model = Some(text(&self.model).to_owned());
        }
        if let Some(usage) = self.usage.as_ref().and_then(RawUsage::usage) {
            facts.usage = Some(usage);
        }
    }

    /// The first choice's finish reason.
    pub(super) fn read_finish(&self, facts: &mut ResponseFacts) {
        let first = self.choices.iter().flatten().find(|c| c.first);
        if let Some(finish) = first.map(|c| text(&c.finish_reason)).filter(|f| !f.is_empty()) {
            facts.finish_reason = Some(finish.to_owned());
        }
    }

    /// Every choice's generated text in a response body: its message, then its legacy `text`.
    pub(super) fn read_body_text(&self, gen: &mut Generated) {
        for choice in self.choices.iter().flatten() {
            if let Some(message) = &choice.message {
                message.read_text(gen, None);
            }
            gen.push(text(&choice.text), None);
        }
    }

    /// Every choice's generated text in a stream chunk: its delta, then its legacy `text`.
    pub(super) fn read_chunk_text(&self, gen: &mut Generated, end: Option<usize>) {
        for choice in self.choices.iter().flatten() {
            if let Some(delta) = &choice.delta {
                delta.read_text(gen, end);
            }
            gen.push(text(&choice.text), end);
        }
    }
}

impl Message<'_> {
    fn read_text(&self, gen: &mut Generated, end: Option<usize>) {
        gen.push(text(&self.content), end);
        gen.push(text(&self.refusal), end);
        let reasoning = [text(&self.reasoning_content), text(&self.reasoning)].into_iter().find(|r| !r.is_empty());
        gen.push(reasoning.unwrap_or_default(), end);
        for call in self.tool_calls.iter().flatten() {
            gen.push(call.function.as_ref().map_or("", |f| text(&f.arguments)), end);
        }
        gen.push(self.function_call.as_ref().map_or("", |f| text(&f.arguments)), end);
    }
}

impl RawUsage {
    fn usage(&self) -> Option<Usage> {
        let input = self.prompt_tokens.or(self.input_tokens);
        let output = self.completion_tokens.or(self.output_tokens);
        if input.is_none() && output.is_none() {
            return None;
        }
        let cached = |d: &Option<Details>| d.as_ref().and_then(|d| d.cached_tokens);
        let reasoning = |d: &Option<Details>| d.as_ref().and_then(|d| d.reasoning_tokens);
        Some(Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            cache_read_input_tokens: cached(&self.prompt_tokens_details).or(cached(&self.input_tokens_details)),
            cache_creation_input_tokens: None,
            reasoning_tokens: reasoning(&self.completion_tokens_details).or(reasoning(&self.output_tokens_details)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::openai::{parse_body_leniently, parse_stream_with};
    use super::*;
    use serde_json::{json, Value};

    const PLAIN_BODY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"\n","refusal":null,"reasoning_content":"think","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}],"function_call":{"arguments":"x"}},"logprobs":null,"finish_reason":"stop","text":"legacy"}],"usage":{"prompt_tokens":27,"completion_tokens":17,"total_tokens":44,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":5}},"system_fingerprint":"fp"}"#;

    const PLAIN_CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"He","reasoning":"r","tool_calls":[{"index":0,"function":{"arguments":"{"}}]},"finish_reason":null,"text":"t"}],"usage":{"input_tokens":4,"output_tokens":2,"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":0}}}"#;

    /// Paths (object keys, or array indexes as digits) to values worth varying.
    const PATHS: &[&[&str]] = &[
        &["model"],
        &["object"],
        &["choices"],
        &["choices", "0"],
        &["choices", "0", "index"],
        &["choices", "0", "finish_reason"],
        &["choices", "0", "message"],
        &["choices", "0", "delta"],
        &["choices", "0", "text"],
        &["choices", "0", "message", "content"],
        &["choices", "0", "message", "refusal"],
        &["choices", "0", "message", "reasoning_content"],
        &["choices", "0", "message", "tool_calls"],
        &["choices", "0", "message", "tool_calls", "0", "function"],
        &["choices", "0", "message", "tool_calls", "0", "function", "arguments"],
        &["choices", "0", "message", "function_call"],
        &["choices", "0", "delta", "content"],
        &["choices", "0", "delta", "reasoning"],
        &["choices", "0", "delta", "tool_calls", "0", "function", "arguments"],
        &["usage"],
        &["usage", "prompt_tokens"],
        &["usage", "input_tokens"],
        &["usage", "completion_tokens"],
        &["usage", "output_tokens"],
        &["usage", "prompt_tokens_details"],
        &["usage", "prompt_tokens_details", "cached_tokens"],
        &["usage", "input_tokens_details", "cached_tokens"],
        &["usage", "completion_tokens_details", "reasoning_tokens"],
        &["usage", "output_tokens_details"],
        &["error"],
        &["type"],
        &["status"],
        &["output"],
        &["incomplete_details"],
        &["message"],
        &["response"],
        &["delta"],
    ];

    fn alternatives() -> Vec<Value> {
        vec![
            Value::Null,
            json!(0),
            json!(1),
            json!(-1),
            json!(2.5),
            json!(1e300),
            json!(""),
            json!("x"),
            json!("error"),
            json!("response.completed"),
            json!("a\"b\n\u{e9}"),
            json!(true),
            json!([]),
            json!({}),
            json!([{"text": "part"}]),
            json!({"arguments": "{}", "message": "m", "reason": "length"}),
            json!([{"function": {"arguments": "a"}, "index": 0, "delta": {"content": "d"}, "message": {"content": "c"}}]),
        ]
    }

    /// Sets `path` in `value`, creating objects on the way (arrays are indexed if long enough).
    fn set(value: &mut Value, path: &[&str], new: Value) {
        let Some((last, parents)) = path.split_last() else { return };
        let mut at = value;
        for key in parents {
            at = match at {
                Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                },
                Value::Object(map) => map.entry(key.to_string()).or_insert_with(|| json!({})),
                _ => return,
            };
        }
        match at {
            Value::Object(map) => {
                map.insert(last.to_string(), new);
            }
            Value::Array(items) => {
                if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *item = new;
                }
            }
            _ => {}
        }
    }

    /// Both readers agree on `json` as a body and as a one-chunk stream; returns whether the
    /// typed reader took it.
    fn agree(json: &str) -> bool {
        for generates in [true, false] {
            assert_eq!(
                super::super::openai::parse_body(json.as_bytes(), generates),
                parse_body_leniently(json.as_bytes(), generates),
                "body {json}"
            );
            for event in ["", "event: message\n", "event: response.output_text.delta\n"] {
                let stream = format!("{event}data: {json}\n\ndata: [DONE]\n\n");
                assert_eq!(
                    parse_stream_with(stream.as_bytes(), generates, true),
                    parse_stream_with(stream.as_bytes(), generates, false),
                    "stream {stream}"
                );
            }
        }
        read(json.as_bytes()).is_some()
    }

    #[test]
    fn the_plain_shapes_are_read_typed_with_the_same_facts() {
        assert!(agree(PLAIN_BODY));
        assert!(agree(PLAIN_CHUNK));
        let facts = super::super::openai::parse_body(PLAIN_BODY.as_bytes(), true);
        assert_eq!(facts.output_text, "Hi \"there\"\nthink{\"a\":1}xlegacy");
        assert_eq!(facts.usage.unwrap().cache_read_input_tokens, Some(3));
    }

    #[test]
    fn every_single_change_of_type_or_value_gives_the_same_facts() {
        let mut typed = 0;
        let mut total = 0;
        for base in [PLAIN_BODY, PLAIN_CHUNK] {
            let base: Value = serde_json::from_str(base).unwrap();
            for path in PATHS {
                for new in alternatives() {
                    let mut body = base.clone();
                    set(&mut body, path, new);
                    total += 1;
                    typed += usize::from(agree(&body.to_string()));
                }
            }
        }
        // Both readers were exercised: many variants stay plain, many do not.
        assert!(typed > total / 8 && typed < total * 7 / 8, "{typed} of {total} read typed");
    }

    #[test]
    fn random_combinations_give_the_same_facts() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alternatives = alternatives();
        for _ in 0..3000 {
            let base = if rng.bool() { PLAIN_BODY } else { PLAIN_CHUNK };
            let mut body: Value = serde_json::from_str(base).unwrap();
            for _ in 0..rng.usize(1..5) {
                let path = PATHS[rng.usize(..PATHS.len())];
                set(&mut body, path, alternatives[rng.usize(..alternatives.len())].clone());
            }
            agree(&body.to_string());
        }
    }

    #[test]
    fn odd_json_gives_the_same_facts() {
        for json in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"choices":[{"index":0,"finish_reason":"stop","finish_reason":"length"}]}"#,
            r#"{"model":"a"} trailing"#,
            r#"{"model":"a""#,
            r#"["model","a"]"#,
            r#"  {"model" : "a" , "usage" : {"prompt_tokens" : 1}}  "#,
            r#"{"mod\u0065l":"escaped key"}"#,
            r#"{"choices":[{"index":1,"finish_reason":"x"},{"finish_reason":"y"}]}"#,
            r#"{"choices":[{"index":null,"finish_reason":"x"}]}"#,
            "",
            "null",
        ] {
            agree(json);
        }
    }
}
