//! Provider wire formats: what a recorded call was, and what its bodies say.
//!
//! The recorder hands captured request and response bodies to [`parse_request`] and
//! [`parse_response`] after the bytes went to the client. Both only read: they never fail
//! and never panic, whatever the bytes (truncated, not UTF-8, not JSON, unexpected types),
//! and return whatever facts could be found. OpenAI's formats (Chat Completions, legacy
//! Completions, Embeddings, Responses; also OpenAI-compatible servers) live in [`openai`],
//! Anthropic's (Messages, legacy Complete) in [`anthropic`]; this module dispatches and
//! holds the lenient JSON helpers all use. [`gemini`] reads Google's Gemini API, [`bedrock`] AWS
//! Bedrock's Converse and InvokeModel (whose bodies are the model family's own: Anthropic,
//! Llama, Titan). Azure OpenAI speaks OpenAI's formats; only its paths differ (the deployment
//! names the model). Gemini and Bedrock name the model in the path, so [`path_facts`] reads
//! what a path says before any body is parsed.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
mod openai_typed;

use serde_json::Value;

use crate::formats::json_skim::{skim, top_level, Skimmed};
use crate::formats::percent;

/// Wire format spoken by an upstream, as named in the config (`"openai"`, `"anthropic"`,
/// `"gemini"`, `"azure"`, `"bedrock"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI and any OpenAI-compatible server.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (`generativelanguage.googleapis.com`).
    Gemini,
    /// Azure OpenAI: OpenAI's bodies under deployment paths (or Azure's v1 API).
    Azure,
    /// AWS Bedrock runtime: Converse and InvokeModel, streams as AWS event-stream frames.
    Bedrock,
}

impl Api {
    /// The config name of the wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::Azure => "azure",
            Api::Bedrock => "bedrock",
        }
    }

    /// The wire format of a config name.
    pub fn from_name(name: &str) -> Option<Api> {
        [Api::Openai, Api::Anthropic, Api::Gemini, Api::Azure, Api::Bedrock].into_iter().find(|a| a.as_str() == name)
    }

    /// The provider's name in OpenTelemetry's GenAI conventions (`gen_ai.provider.name`).
    pub fn genai_provider_name(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gcp.gemini",
            Api::Azure => "azure.ai.openai",
            Api::Bedrock => "aws.bedrock",
        }
    }
}

/// What kind of call a request is, as recorded in a span's `operation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Chat Completions, Responses, Anthropic Messages.
    Chat,
    /// Legacy text completions (OpenAI `/v1/completions`, Anthropic `/v1/complete`).
    TextCompletion,
    /// Embeddings.
    Embeddings,
    /// Anything else, named by the last meaningful path segment (`models`, `count_tokens`).
    Other(String),
}

impl Operation {
    /// The span's `operation` value: `chat`, `text_completion`, `embeddings` or the
    /// [`Operation::Other`] name.
    pub fn as_str(&self) -> &str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Other(name) => name,
        }
    }

    /// Whether responses to this operation carry generated text worth collecting.
    fn generates(&self) -> bool {
        matches!(self, Operation::Chat | Operation::TextCompletion)
    }
}

/// The operation for an upstream path (the part after the provider prefix; a query string
/// or fragment is ignored).
///
/// OpenAI: `…/chat/completions` → Chat, `…/completions` → TextCompletion, `…/embeddings` →
/// Embeddings, `…/responses` and `…/responses/{id}` → Chat. Anthropic: `…/messages` → Chat,
/// `…/complete` → TextCompletion. A missing `/v1`, other prefixes (Azure's
/// `/openai/deployments/{name}/…`), empty segments and trailing slashes are tolerated. The
/// operation is decided by the last *meaningful* segment, one made only of ASCII letters,
/// `_` and `-` (ids and versions contain digits), so `/v1/models/gpt-4o` → `Other("models")`
/// and `/v1/messages/count_tokens` → `Other("count_tokens")`. A path with no meaningful
/// segment gives `Other` of its last segment, or `Other("unknown")` when it has none.
pub fn operation_for(api: Api, path: &str) -> Operation {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    match api {
        Api::Gemini => {
            if let Some((_, method)) = gemini::model_and_method(path) {
                return gemini::operation(method);
            }
        }
        Api::Bedrock => {
            if let Some((model, action)) = bedrock::model_and_action(path) {
                return bedrock::operation(&model, action);
            }
        }
        _ => {}
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let meaningful =
        segments.iter().rposition(|s| s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-'));
    let Some(i) = meaningful else {
        return Operation::Other(segments.last().copied().unwrap_or("unknown").to_owned());
    };
    let previous = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
    let op = match api {
        Api::Openai | Api::Azure => openai::operation(segments[i], previous),
        Api::Anthropic => anthropic::operation(segments[i]),
        Api::Gemini | Api::Bedrock => None,
    };
    op.unwrap_or_else(|| Operation::Other(segments[i].to_owned()))
}

/// What a request's path says, before its body is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PathFacts {
    /// The model the path names: Gemini's `models/{model}:…`, Bedrock's `/model/{id}/…`
    /// (percent-decoded), Azure's `/deployments/{deployment}/…`.
    pub model: Option<String>,
    /// The path asks for a stream (`:streamGenerateContent`, `/converse-stream`,
    /// `/invoke-with-response-stream`).
    pub stream: bool,
}

/// The model and streaming a path names (nothing for OpenAI and Anthropic, whose bodies say).
pub fn path_facts(api: Api, path: &str) -> PathFacts {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    match api {
        Api::Gemini => match gemini::model_and_method(path) {
            Some((model, method)) => {
                PathFacts { model: non_empty(Some(model)), stream: method == "streamGenerateContent" }
            }
            None => PathFacts::default(),
        },
        Api::Bedrock => match bedrock::model_and_action(path) {
            Some((model, action)) => PathFacts { stream: action.ends_with("-stream"), model: Some(model) },
            None => PathFacts::default(),
        },
        Api::Azure => {
            let deployment = path.split_once("/deployments/").and_then(|(_, rest)| rest.split('/').next());
            PathFacts { model: non_empty(deployment).map(|d| percent::decode(&d, false)), stream: false }
        }
        Api::Openai | Api::Anthropic => PathFacts::default(),
    }
}

/// Facts read from a request body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestFacts {
    /// The requested model.
    pub model: Option<String>,
    /// Whether a streamed response was asked for (`"stream": true`).
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: the stream ends with a usage chunk.
    pub include_usage: bool,
    /// The output limit: `max_tokens`, else `max_completion_tokens`, else
    /// `max_output_tokens` (Anthropic legacy: `max_tokens_to_sample`).
    pub max_tokens: Option<u64>,
    /// Whether a string of the body (a member name, at any depth, or a value) is one of
    /// [`CREDENTIAL_FIELDS`]; `None` when the body is not one whole JSON object, or when the
    /// reader was not asked to look. Read in the same pass as the rest, so the recorder's
    /// redaction need not scan the body again.
    pub names_credential: Option<bool>,
}

/// JSON member names whose values are credentials, never stored (compared without regard to
/// ASCII case).
pub const CREDENTIAL_FIELDS: [&str; 10] = [
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "authorization",
    "password",
    "secret",
    "client_secret",
    "access_token",
    "refresh_token",
];

/// The top-level members named in `keys` of a request body, and whether a string of it is one
/// of `names`.
fn request_members(body: &[u8], keys: &[&str], names: &[&str]) -> (serde_json::Map<String, Value>, Option<bool>) {
    let Skimmed { members, named } = skim(body, keys, names);
    (members, named)
}

/// Reads model, streaming and output limit from a request body, and whether it names a
/// credential ([`CREDENTIAL_FIELDS`]). A body that is not a JSON object gives the defaults; a
/// truncated one gives the fields that precede the cut. For [`Operation::Embeddings`] only
/// the model is read.
pub fn parse_request(api: Api, op: &Operation, body: &[u8]) -> RequestFacts {
    parse_request_naming(api, op, body, &CREDENTIAL_FIELDS)
}

/// [`parse_request`], with `names_credential` answering for `names`.
fn parse_request_naming(api: Api, op: &Operation, body: &[u8], names: &[&str]) -> RequestFacts {
    match api {
        Api::Openai | Api::Azure => openai::parse_request(op, body, names),
        Api::Anthropic => anthropic::parse_request(body, names),
        Api::Gemini => gemini::parse_request(body, names),
        Api::Bedrock => bedrock::parse_request(body, names),
    }
}

/// A call's request facts: the body's, with the model and streaming its path names (the path
/// wins for the model: Gemini and Bedrock bodies carry none, Azure's deployment is what the
/// caller asked for). Credential names are looked for only when `credentials` asks (the
/// recorder's redaction needs them; the request path's budget estimate does not): otherwise no
/// string is compared and `names_credential` is `None`, unknown.
pub fn parse_call_request(api: Api, op: &Operation, path: &str, body: &[u8], credentials: bool) -> RequestFacts {
    let names: &[&str] = if credentials { &CREDENTIAL_FIELDS } else { &[] };
    let mut facts = parse_request_naming(api, op, body, names);
    if !credentials {
        facts.names_credential = None;
    }
    let from_path = path_facts(api, path);
    if from_path.model.is_some() {
        facts.model = from_path.model;
    }
    facts.stream |= from_path.stream;
    facts
}

/// Token counts reported by the provider, normalised across formats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// All input tokens including cached ones: OpenAI `prompt_tokens` / `input_tokens`;
    /// Anthropic `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`.
    pub input_tokens: u64,
    /// OpenAI `completion_tokens` / `output_tokens` (reasoning included); Anthropic
    /// `output_tokens`.
    pub output_tokens: u64,
    /// Input tokens served from the prompt cache (already part of `input_tokens`).
    pub cache_read_input_tokens: Option<u64>,
    /// Anthropic only: input tokens written to the prompt cache (part of `input_tokens`).
    pub cache_creation_input_tokens: Option<u64>,
    /// OpenAI only: reasoning tokens (already part of `output_tokens`).
    pub reasoning_tokens: Option<u64>,
}

/// Facts read from a response body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseFacts {
    /// The model that answered, as the provider reported it.
    pub model: Option<String>,
    /// OpenAI `choices[0].finish_reason`; Responses API `incomplete_details.reason`, else
    /// `status`; Anthropic `stop_reason`.
    pub finish_reason: Option<String>,
    /// Provider-reported usage; `None` when the response carried none (or, for a stream,
    /// not the final count).
    pub usage: Option<Usage>,
    /// Event streams only: `end_offset` of the first event carrying generated content
    /// (non-empty text, tool-call arguments, refusal, or reasoning/thinking delta).
    pub first_content_end: Option<usize>,
    /// The generated text that reached the client, concatenated: content, tool-call
    /// arguments, refusals and reasoning/thinking text. Meant for token estimation.
    pub output_text: String,
    /// The provider's error message, from an error body or an error event.
    pub error: Option<String>,
}

/// Reads model, finish reason, usage, generated text and error from a (decompressed)
/// response body. `sse` says whether the content type was `text/event-stream`; a body
/// whose first non-blank byte is `{` is read as JSON and one that starts with an SSE field
/// (`data:`, `event:`, `:`, `id:`, `retry:`) as an event stream, whatever `sse` says.
/// Generated text is only collected for [`Operation::Chat`] and
/// [`Operation::TextCompletion`].
pub fn parse_response(api: Api, op: &Operation, body: &[u8], sse: bool) -> ResponseFacts {
    let generates = op.generates();
    if api == Api::Bedrock {
        // Bedrock's streams are binary event-stream frames, never SSE.
        return bedrock::parse_response(body, generates);
    }
    if api == Api::Gemini && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        // `streamGenerateContent` without `alt=sse`: one JSON array, element by element.
        return gemini::parse_array_stream(body, generates);
    }
    let sse = looks_like_sse(body).unwrap_or(sse);
    match (api, sse) {
        (Api::Openai | Api::Azure, true) => openai::parse_stream(body, generates),
        (Api::Openai | Api::Azure, false) => openai::parse_body(body, generates),
        (Api::Anthropic, true) => anthropic::parse_stream(body, generates),
        (Api::Anthropic, false) => anthropic::parse_body(body, generates),
        (Api::Gemini, true) => gemini::parse_sse(body, generates),
        (Api::Gemini, false) => gemini::parse_body(body, generates),
        (Api::Bedrock, _) => unreachable!("Bedrock answered above"),
    }
}

/// The usage of a JSON answer longer than its capture, from the capture's tail: the last
/// `"usage": {...}` object there (where OpenAI and Anthropic put it, after the content), read
/// as if it were the whole body. `None` when the tail holds no complete usage object.
pub fn usage_in_tail(api: Api, op: &Operation, tail: &[u8]) -> Option<Usage> {
    let name: &[u8] = match api {
        Api::Gemini => b"\"usageMetadata\"",
        _ => b"\"usage\"",
    };
    let key = memchr::memmem::rfind(tail, name)?;
    let rest = &tail[key + name.len()..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest[colon..].strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let object = balanced_object(&rest[start..])?;
    let mut body = Vec::with_capacity(object.len() + 20);
    body.push(b'{');
    body.extend_from_slice(name);
    body.push(b':');
    body.extend_from_slice(object);
    body.push(b'}');
    parse_response(api, op, &body, false).usage
}

/// The JSON object at the start of `bytes` (`{` … its matching `}`), strings and escapes
/// respected; `None` when it does not close.
fn balanced_object(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &b) in bytes.iter().enumerate() {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'{') => depth += 1,
            (false, b'}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(&bytes[..=at]);
                }
            }
            (false, _) => {}
        }
    }
    None
}

/// `Some(true)` for a body that starts like an event stream, `Some(false)` for one that
/// starts like a JSON object, `None` when it is unclear.
fn looks_like_sse(body: &[u8]) -> Option<bool> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let body = &body[start..];
    if body.starts_with(b"{") {
        return Some(false);
    }
    let sse = [&b"data:"[..], b"event:", b":", b"id:", b"retry:"];
    sse.iter().any(|p| body.starts_with(p)).then_some(true)
}

/// Generated text collected while reading a response, and where it first appeared.
#[derive(Default)]
struct Generated {
    text: String,
    first_end: Option<usize>,
}

impl Generated {
    /// Appends a piece of generated text seen in the event ending at `event_end` (`None`
    /// outside event streams). Empty pieces are not content.
    fn push(&mut self, piece: &str, event_end: Option<usize>) {
        if piece.is_empty() {
            return;
        }
        self.text.push_str(piece);
        if self.first_end.is_none() {
            self.first_end = event_end;
        }
    }

    /// Appends a string value, or the `text` of each part of an array of content parts.
    fn push_value(&mut self, value: Option<&Value>, event_end: Option<usize>) {
        match value {
            Some(Value::String(s)) => self.push(s, event_end),
            Some(Value::Array(parts)) => {
                for part in parts {
                    self.push(str_at(part, "text").unwrap_or_default(), event_end);
                }
            }
            _ => {}
        }
    }
}

/// A string member of `value`, if it is an object holding a string there.
fn str_at<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// A non-empty string, owned.
fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A token count: a non-negative integer (a non-negative float is truncated).
fn count(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

/// The message of an error value: a string, or an object's `message` (else its `type`,
/// else `code`, else its JSON). Null, booleans and empty strings are no error.
fn error_message(value: &Value) -> Option<String> {
    match value {
        Value::Null | Value::Bool(_) => None,
        Value::String(s) => non_empty(Some(s)),
        Value::Object(_) => non_empty(str_at(value, "message"))
            .or_else(|| non_empty(str_at(value, "type")))
            .or_else(|| non_empty(str_at(value, "code")))
            .or_else(|| Some(value.to_string())),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_config_names() {
        assert_eq!(serde_json::from_str::<Api>("\"openai\"").unwrap(), Api::Openai);
        assert_eq!(serde_json::from_str::<Api>("\"anthropic\"").unwrap(), Api::Anthropic);
        assert_eq!(serde_json::to_string(&Api::Anthropic).unwrap(), "\"anthropic\"");
        assert!(serde_json::from_str::<Api>("\"OpenAI\"").is_err());
        for api in [Api::Openai, Api::Anthropic, Api::Gemini, Api::Azure, Api::Bedrock] {
            let name = serde_json::to_string(&api).unwrap();
            assert_eq!(name, format!("\"{}\"", api.as_str()));
            assert_eq!(Api::from_name(api.as_str()), Some(api));
        }
        assert_eq!(Api::Bedrock.genai_provider_name(), "aws.bedrock");
    }

    #[test]
    fn operation_names() {
        assert_eq!(Operation::Chat.as_str(), "chat");
        assert_eq!(Operation::TextCompletion.as_str(), "text_completion");
        assert_eq!(Operation::Embeddings.as_str(), "embeddings");
        assert_eq!(Operation::Other("models".into()).as_str(), "models");
    }

    #[test]
    fn openai_operations() {
        let cases = [
            ("/v1/chat/completions", Operation::Chat),
            ("/v1/chat/completions/", Operation::Chat),
            ("/chat/completions", Operation::Chat),
            ("chat/completions?foo=bar", Operation::Chat),
            ("/v1//chat//completions", Operation::Chat),
            ("/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21", Operation::Chat),
            ("/v1/chat/completions/chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", Operation::Chat),
            ("/v1/completions", Operation::TextCompletion),
            ("/completions/", Operation::TextCompletion),
            ("/v1/embeddings", Operation::Embeddings),
            ("/embeddings?x=1", Operation::Embeddings),
            ("/v1/responses", Operation::Chat),
            ("/v1/responses/resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", Operation::Chat),
            ("/v1/responses/resp_67cc/input_items", Operation::Other("input_items".into())),
            ("/v1/responses/input_tokens", Operation::Other("input_tokens".into())),
            ("/v1/models", Operation::Other("models".into())),
            ("/v1/models/gpt-4o-mini", Operation::Other("models".into())),
            ("/v1/audio/transcriptions", Operation::Other("transcriptions".into())),
            ("/v1/files/file-abc123/content", Operation::Other("content".into())),
            ("/v1", Operation::Other("v1".into())),
            ("/", Operation::Other("unknown".into())),
            ("", Operation::Other("unknown".into())),
        ];
        for (path, want) in cases {
            assert_eq!(operation_for(Api::Openai, path), want, "{path}");
        }
    }

    #[test]
    fn anthropic_operations() {
        let cases = [
            ("/v1/messages", Operation::Chat),
            ("/v1/messages/", Operation::Chat),
            ("/messages?beta=true", Operation::Chat),
            ("/v1/complete", Operation::TextCompletion),
            ("/v1/messages/count_tokens", Operation::Other("count_tokens".into())),
            ("/v1/messages/batches", Operation::Other("batches".into())),
            ("/v1/messages/batches/msgbatch_013Zva2CMHLNnXjNJJKqJ2EF/results", Operation::Other("results".into())),
            ("/v1/models/claude-sonnet-4-5-20250929", Operation::Other("models".into())),
            ("/v1/chat/completions", Operation::Other("completions".into())),
        ];
        for (path, want) in cases {
            assert_eq!(operation_for(Api::Anthropic, path), want, "{path}");
        }
    }

    #[test]
    fn paths_name_the_model_for_gemini_bedrock_and_azure() {
        let facts = path_facts(Api::Gemini, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
        assert_eq!(facts, PathFacts { model: Some("gemini-2.5-flash".into()), stream: true });
        assert_eq!(operation_for(Api::Gemini, "/v1beta/models/gemini-2.5-flash:countTokens").as_str(), "countTokens");
        assert_eq!(operation_for(Api::Gemini, "/v1/models/gemini-embedding-001:embedContent"), Operation::Embeddings);
        let facts = path_facts(
            Api::Bedrock,
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke-with-response-stream",
        );
        assert_eq!(
            facts,
            PathFacts { model: Some("us.anthropic.claude-haiku-4-5-20251001-v1:0".into()), stream: true }
        );
        assert_eq!(operation_for(Api::Bedrock, "/model/meta.llama3-2-1b-instruct-v1%3A0/converse"), Operation::Chat);
        assert_eq!(operation_for(Api::Bedrock, "/model/amazon.titan-embed-text-v2%3A0/invoke"), Operation::Embeddings);
        let facts = path_facts(Api::Azure, "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21");
        assert_eq!(facts.model.as_deref(), Some("gpt4o-prod"));
        assert_eq!(operation_for(Api::Azure, "/openai/deployments/gpt4o-prod/embeddings"), Operation::Embeddings);
        assert_eq!(
            path_facts(Api::Azure, "/openai/v1/chat/completions").model,
            None,
            "the v1 API's model is the body's"
        );
        assert_eq!(path_facts(Api::Openai, "/v1/models/gpt-4o:x"), PathFacts::default());
        // The path's model wins over the body's (Azure: the deployment is what was asked for).
        let request = parse_call_request(
            Api::Azure,
            &Operation::Chat,
            "/openai/deployments/prod/chat/completions",
            br#"{"model":"gpt-4o-mini","stream":true}"#,
            true,
        );
        assert_eq!((request.model.as_deref(), request.stream), (Some("prod"), true));
        // Credential names are looked for only when asked; unasked, the answer is unknown.
        let body = br#"{"model":"m","password":"p"}"#;
        let asked =
            |credentials| parse_call_request(Api::Openai, &Operation::Chat, "/v1/chat/completions", body, credentials);
        assert_eq!((asked(true).names_credential, asked(false).names_credential), (Some(true), None));
        assert_eq!(asked(false).model.as_deref(), Some("m"));
    }

    #[test]
    fn gemini_array_streams_and_bedrock_frames_are_told_from_their_bodies() {
        let array = br#"[{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}]"#;
        let facts = parse_response(Api::Gemini, &Operation::Chat, array, false);
        assert_eq!((facts.output_text.as_str(), facts.usage.map(|u| u.output_tokens)), ("Hi", Some(1)));
        let frames = crate::formats::eventstream::encode_event("contentBlockDelta", r#"{"delta":{"text":"Hi"}}"#);
        let facts = parse_response(Api::Bedrock, &Operation::Chat, &frames, false);
        assert_eq!(facts.output_text, "Hi");
        let tail = br#"...","finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9}}"#;
        assert_eq!(usage_in_tail(Api::Gemini, &Operation::Chat, tail).map(|u| u.output_tokens), Some(9));
    }

    #[test]
    fn counts_are_lenient() {
        assert_eq!(count(Some(&json!(12))), Some(12));
        assert_eq!(count(Some(&json!(12.9))), Some(12));
        assert_eq!(count(Some(&json!(-1))), None);
        assert_eq!(count(Some(&json!(-1.5))), None);
        assert_eq!(count(Some(&json!("12"))), None);
        assert_eq!(count(Some(&json!(null))), None);
        assert_eq!(count(Some(&json!(1e300))), Some(u64::MAX));
        assert_eq!(count(None), None);
    }

    #[test]
    fn error_messages() {
        assert_eq!(error_message(&json!({"message":"bad","type":"x"})).as_deref(), Some("bad"));
        assert_eq!(error_message(&json!({"type":"overloaded_error"})).as_deref(), Some("overloaded_error"));
        assert_eq!(error_message(&json!({"code":"rate_limit"})).as_deref(), Some("rate_limit"));
        assert_eq!(error_message(&json!({"param":null})).as_deref(), Some("{\"param\":null}"));
        assert_eq!(error_message(&json!("plain")).as_deref(), Some("plain"));
        assert_eq!(error_message(&json!(500)).as_deref(), Some("500"));
        assert_eq!(error_message(&json!(null)), None);
        assert_eq!(error_message(&json!("")), None);
    }

    #[test]
    fn sse_sniffing() {
        assert_eq!(looks_like_sse(b"  \n{\"a\":1}"), Some(false));
        assert_eq!(looks_like_sse(b"data: {}\n\n"), Some(true));
        assert_eq!(looks_like_sse(b"\r\nevent: ping\n"), Some(true));
        assert_eq!(looks_like_sse(b": comment\n"), Some(true));
        assert_eq!(looks_like_sse(b"<html>"), None);
        assert_eq!(looks_like_sse(b""), None);
        // An event stream served without its content type is still read as one.
        let body = b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let facts = parse_response(Api::Openai, &Operation::Chat, body, false);
        assert_eq!(facts.output_text, "hi");
        assert_eq!(facts.first_content_end, Some(body.len() - 14));
        // And a JSON error body on a stream request is read as JSON.
        let body = br#"{"error":{"message":"Invalid model","type":"invalid_request_error"}}"#;
        let facts = parse_response(Api::Openai, &Operation::Chat, body, true);
        assert_eq!(facts.error.as_deref(), Some("Invalid model"));
    }

    #[test]
    fn non_generating_operations_collect_no_text() {
        let body =
            br#"{"object":"list","data":[{"id":"x","content":"text"}],"choices":[{"message":{"content":"nope"}}]}"#;
        let facts = parse_response(Api::Openai, &Operation::Other("messages".into()), body, false);
        assert_eq!(facts, ResponseFacts::default());
        let body = br#"{"input_tokens":2095}"#;
        let facts = parse_response(Api::Anthropic, &Operation::Other("count_tokens".into()), body, false);
        assert_eq!(facts, ResponseFacts::default());
    }

    #[test]
    fn generated_text_collection() {
        let mut g = Generated::default();
        g.push("", Some(5));
        assert_eq!(g.first_end, None);
        g.push("a", Some(9));
        g.push_value(Some(&json!([{"type":"text","text":"b"},{"type":"image_url"},7])), Some(12));
        g.push_value(Some(&json!(null)), Some(13));
        assert_eq!((g.text.as_str(), g.first_end), ("ab", Some(9)));
    }
}
