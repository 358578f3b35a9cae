//! Building a span from a finished call's raw facts: decoding the captured bodies, reading
//! model, usage, finish reason and errors through `formats`, finding the first content token's
//! arrival, estimating missing tokens, pricing, and redacting credentials from stored bodies.
//! Runs on the recorder thread only; a pure function of the record and the settings.

use std::io::Read;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;

use crate::formats::headers::{self, Tags};
use crate::formats::providers::{self, Operation, CREDENTIAL_FIELDS};
use crate::formats::tokens;
use crate::model::capture::Captured;
use crate::model::pricing::BilledTokens;
use crate::model::span::{Span, SpanBodies, SpanKind, SpanStatus, SpanWrite, UsageSource};
use crate::record::queue::{CallRecord, Outcome};
use crate::record::settings::RecorderSettings;

/// Decompressed bodies are cut at this size (a capture is bounded; its expansion must be too).
const MAX_DECODED_BYTES: u64 = 16 << 20;

/// Builds the span (and its kept bodies) for one finished call. The kept bodies take the
/// record's captured bytes as their text when nothing else holds them (no copy of a 12 KB
/// agent step): once this returns, the record's captures may be empty.
pub fn build_span(record: &mut CallRecord, settings: &RecorderSettings) -> SpanWrite {
    let info = &record.info;
    let api = info.provider.api;
    let operation = providers::operation_for(api, &info.path);

    let request_bytes = record.request_body.joined(TRUNCATION_MARK.as_bytes());
    let request = providers::parse_call_request(api, &operation, &info.path, &request_bytes, true);
    let response_bytes =
        decoded_response(&record.response_body, record.response_encoding.as_ref(), record.response_is_sse);
    let mut response = providers::parse_response(api, &operation, &response_bytes, record.response_is_sse);
    if response.usage.is_none() && record.response_body.truncated() && record.response_encoding.is_none() {
        // A JSON answer longer than its capture: the head alone is not JSON, but the usage
        // sits at the end, in the tail the capture keeps.
        response.usage = providers::usage_in_tail(api, &operation, &record.response_body.tail);
    }
    if response.usage.is_none() {
        // Bedrock Invoke's headers count what the body of an unknown model family does not.
        if let Some((input, output)) = record.response_token_counts {
            response.usage =
                Some(providers::Usage { input_tokens: input, output_tokens: output, ..Default::default() });
        }
    }

    // Streams: SSE, and Gemini's JSON arrays and Bedrock's event-stream frames, which the
    // request's path says are streams.
    let streamed = record.response_is_sse || request.stream;
    let ttft_ms = if streamed && record.response_encoding.is_none() {
        response.first_content_end.and_then(|offset| {
            record
                .response_body
                .marks
                .iter()
                .find(|m| m.end_offset as usize >= offset)
                .map(|m| f64::from(m.elapsed_us) / 1000.0)
        })
    } else {
        None
    };

    let (status, error) = match &record.outcome {
        Outcome::Cancelled => {
            (SpanStatus::Cancelled, Some("client disconnected before the response was complete".to_string()))
        }
        Outcome::Failed(message) => (SpanStatus::Error, Some(message.clone())),
        Outcome::Completed => match record.status_code {
            Some(code) if code >= 400 => (
                SpanStatus::Error,
                Some(response.error.clone().unwrap_or_else(|| format!("upstream answered HTTP {code}"))),
            ),
            _ => match &response.error {
                Some(message) => (SpanStatus::Error, Some(message.clone())),
                None => (SpanStatus::Ok, None),
            },
        },
    };

    // The model a call is priced and counted as: the one that answered, except on Bedrock,
    // which bills by the id asked for (an inference profile costs more than the bare model
    // its answer names).
    let model = match api {
        providers::Api::Bedrock => request.model.clone().or_else(|| response.model.clone()),
        _ => response.model.clone().or_else(|| request.model.clone()),
    };
    let name = match request.model.as_ref().or(model.as_ref()) {
        Some(m) => format!("{} {m}", operation.as_str()),
        None => operation.as_str().to_string(),
    };

    let (input_tokens, output_tokens, usage_source, cache_read, cache_write, reasoning) = match &response.usage {
        Some(u) => (
            Some(u.input_tokens),
            Some(u.output_tokens),
            UsageSource::Reported,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
            u.reasoning_tokens,
        ),
        None => match estimate_usage(
            record,
            &operation,
            &request_bytes,
            &response_bytes,
            &response,
            model.as_deref(),
            settings,
        ) {
            Some((input, output)) => (Some(input), Some(output), UsageSource::Estimated, None, None, None),
            None => (None, None, UsageSource::Missing, None, None, None),
        },
    };
    let cost_usd = match (input_tokens, output_tokens) {
        (Some(input), Some(output)) => {
            let billed = BilledTokens {
                input_tokens: input,
                output_tokens: output,
                cache_read_input_tokens: cache_read.unwrap_or(0),
                cache_creation_input_tokens: cache_write.unwrap_or(0),
                reasoning_tokens: reasoning.unwrap_or(0),
            };
            // A Bedrock id the catalog cannot name (an application inference profile's ARN)
            // is priced as the model that answered.
            [model.as_deref(), response.model.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|m| settings.pricing.cost_usd(m, billed))
        }
        _ => None,
    };

    let (base, omit_bodies) = call_span(record, &operation, name);
    let names_credential = request.names_credential;
    let span = Span {
        ttft_ms,
        status,
        request_model: request.model,
        response_model: response.model,
        stream: request.stream || record.response_is_sse,
        input_tokens,
        output_tokens,
        usage_source,
        cache_read_input_tokens: cache_read,
        cache_creation_input_tokens: cache_write,
        reasoning_tokens: reasoning,
        finish_reason: response.finish_reason,
        cost_usd,
        error,
        ..base
    };

    let bodies = match settings.capture_bodies && !omit_bodies {
        true => Some(kept_bodies(record, request_bytes, names_credential, response_bytes, settings)),
        false => None,
    };
    SpanWrite { span, bodies }
}

/// The bodies as stored: credentials redacted from the request, each cut to the capture limit.
/// Takes the callers' copies of the bodies, and the record's own handles on them go too, so a
/// body kept whole is usually the only holder of its buffer and becomes the stored text without
/// a copy (a 12 KB agent step). Called after every parse, so a panic before it (the recorder's
/// fallback span) still finds the record's bodies.
fn kept_bodies(
    record: &mut CallRecord,
    request: Bytes,
    names_credential: Option<bool>,
    response: Bytes,
    settings: &RecorderSettings,
) -> SpanBodies {
    let truncated = record.request_body.truncated() || record.response_body.truncated();
    let request = redact_credentials(request, names_credential);
    for capture in [&mut record.request_body, &mut record.response_body] {
        capture.head = Bytes::new();
        capture.tail = Bytes::new();
    }
    let (request_body, request_cut) = stored_text_owned(request, settings.max_capture_bytes);
    let (response_body, response_cut) = stored_text_owned(response, settings.max_capture_bytes);
    SpanBodies { request_body, response_body, truncated: request_cut || response_cut || truncated }
}

/// The span of a call whose span building panicked (a body no parser expected): its ids,
/// route, timing and status, marked as an error that says so; no model, tokens or cost. The
/// bodies are kept when decoding and redacting them still works (the panic was elsewhere, in
/// token counting say); if that panics too, the span is kept without them.
pub fn unreadable_span(record: &mut CallRecord, settings: &RecorderSettings, panic: &str) -> SpanWrite {
    let operation = providers::operation_for(record.info.provider.api, &record.info.path);
    let (base, omit_bodies) = call_span(record, &operation, operation.as_str().to_string());
    let bodies = (settings.capture_bodies && !omit_bodies)
        .then(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let request = record.request_body.joined(TRUNCATION_MARK.as_bytes());
                let response =
                    decoded_response(&record.response_body, record.response_encoding.as_ref(), record.response_is_sse);
                kept_bodies(record, request, None, response, settings)
            }))
            .ok()
        })
        .flatten();
    let span = Span {
        status: SpanStatus::Error,
        stream: record.response_is_sse,
        error: Some(format!("tracegate could not read this call (recorder panic: {panic})")),
        ..base
    };
    SpanWrite { span, bodies }
}

/// The part of a call's span that needs no body: ids, name, timing, route, status code and
/// who it belongs to (a team key's team over `x-tracegate-team`), with whether the caller
/// asked to omit bodies. The rest is `Span::new`'s: ok, nothing measured.
fn call_span(record: &CallRecord, operation: &Operation, name: String) -> (Span, bool) {
    let info = &record.info;
    let Tags { mut team, user, omit_bodies, properties } = headers::read_tags(&info.tracegate_headers);
    if let Some(matched) = &info.team_key {
        team = Some(matched.team.clone());
    }
    let session =
        info.session.as_ref().and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let span = Span {
        parent_span_id: info.parent_span_id,
        start_time_unix_nano: info.start_time_unix_nano,
        duration_ms: record.duration.as_secs_f64() * 1000.0,
        provider: Some(info.provider.name.clone()),
        operation: Some(operation.as_str().to_string()),
        method: Some(info.method.as_str().to_string()),
        path: Some(info.path.clone()),
        status_code: record.status_code,
        team,
        user,
        key_fingerprint: info.team_key.as_ref().map(|m| m.fingerprint.clone()),
        session,
        properties,
        ..Span::new(info.trace_id, info.span_id, SpanKind::Llm, name)
    };
    (span, omit_bodies)
}

/// Counts tokens for a call whose provider reported none: the request's input and the output
/// text that reached the client. Only calls the provider answered with success (completed, cut
/// or cancelled mid-stream) are estimated; a refused or failed call bills nothing we can know.
fn estimate_usage(
    record: &CallRecord,
    operation: &Operation,
    request_bytes: &[u8],
    response_bytes: &[u8],
    response: &providers::ResponseFacts,
    model: Option<&str>,
    settings: &RecorderSettings,
) -> Option<(u64, u64)> {
    let answered = record.status_code.is_some_and(|code| (200..300).contains(&code));
    if !answered || record.request_body.truncated() {
        return None;
    }
    let encoding = tokens::encoding_for_model(model.unwrap_or(""), settings.default_encoding);
    let input = tokens::estimate_input(record.info.provider.api, operation, request_bytes, encoding)?;
    let output = match operation {
        Operation::Embeddings => 0,
        _ if record.response_body.truncated() => {
            estimate_cut_output(&record.response_body, response_bytes, &response.output_text, encoding)
        }
        _ => encoding.count(&response.output_text),
    };
    Some((input, output))
}

/// Output tokens of an answer longer than its capture: what the kept head and tail hold (their
/// generated text, or the decoded response as text when none could be read, as from a cut JSON
/// body), scaled to the whole body's length — the middle is assumed as dense as the ends. Never
/// 0 for a long answer that reached the client.
fn estimate_cut_output(body: &Captured, decoded: &[u8], output_text: &str, encoding: tokens::Encoding) -> u64 {
    let kept = (body.head.len() + body.tail.len()) as u64;
    let counted = match output_text {
        "" => encoding.count(&String::from_utf8_lossy(decoded)),
        text => encoding.count(text),
    };
    u64::try_from(u128::from(counted) * u128::from(body.total_len) / u128::from(kept.max(1))).unwrap_or(u64::MAX)
}

/// The response body as the client's SDK saw it after content decoding (gzip, deflate, br).
fn decoded_response(body: &Captured, encoding: Option<&http::HeaderValue>, is_sse: bool) -> Bytes {
    let separator: &[u8] = if is_sse { b"\n\n" } else { b"\n" };
    let Some(encoding) = encoding.and_then(|e| e.to_str().ok()).map(|e| e.trim().to_ascii_lowercase()) else {
        return body.joined(separator);
    };
    // A truncated compressed body decodes only as far as its head reaches.
    let compressed = &body.head[..];
    let mut out = Vec::new();
    let result = match encoding.as_str() {
        "gzip" | "x-gzip" => {
            flate2::read::MultiGzDecoder::new(compressed).take(MAX_DECODED_BYTES).read_to_end(&mut out)
        }
        "deflate" => flate2::read::ZlibDecoder::new(compressed).take(MAX_DECODED_BYTES).read_to_end(&mut out),
        "br" => brotli_decompressor::Decompressor::new(compressed, 4096).take(MAX_DECODED_BYTES).read_to_end(&mut out),
        "identity" | "" => return body.joined(separator),
        _ => return Bytes::new(),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, encoding, "response body decoded partially");
    }
    Bytes::from(out)
}

/// A request body with the values of credential-named JSON members (at any depth) replaced by
/// `"[redacted]"`. Bodies without such a name are returned as they are, unparsed. `named` is
/// what reading the request's facts found (`RequestFacts::names_credential`): whether a
/// string of the whole JSON body is such a name; when that is unknown (not one whole object),
/// the body is scanned for one here.
fn redact_credentials(body: Bytes, named: Option<bool>) -> Bytes {
    if named == Some(false) {
        return body;
    }
    // A quoted, case-insensitive name anywhere in the body; no copy, no allocation.
    // One pass over the quotes (found with memchr's vectorised search; agent bodies are tens
    // of KB); only a quote is compared against the names.
    // Most quotes open a name no credential name starts like: one table lookup skips them.
    const FIRSTS: [bool; 256] = {
        let mut table = [false; 256];
        let mut i = 0;
        while i < CREDENTIAL_FIELDS.len() {
            let first = CREDENTIAL_FIELDS[i].as_bytes()[0];
            table[first.to_ascii_lowercase() as usize] = true;
            table[first.to_ascii_uppercase() as usize] = true;
            i += 1;
        }
        table
    };
    let mentions = named == Some(true)
        || memchr::memchr_iter(b'"', &body).any(|at| {
            let after = &body[at + 1..];
            after.first().is_some_and(|b| FIRSTS[usize::from(*b)])
                && CREDENTIAL_FIELDS.iter().any(|name| {
                    after.len() > name.len()
                        && after[name.len()] == b'"'
                        && after[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                })
        });
    if !mentions {
        return body;
    }
    fn scrub(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if CREDENTIAL_FIELDS.contains(&key.to_ascii_lowercase().as_str()) {
                        *v = serde_json::Value::String("[redacted]".into());
                    } else {
                        scrub(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(mut value) => {
            scrub(&mut value);
            Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
        }
        // Not JSON (or cut short) yet it names a credential: keep nothing rather than leak it.
        Err(_) => Bytes::from_static(b"[body withheld: it names a credential and could not be redacted]"),
    }
}

/// Text to store for a body (`None` when empty), cut to `limit` bytes — its head and its last
/// quarter — and whether it was cut.
fn stored_text(bytes: &[u8], limit: usize) -> (Option<String>, bool) {
    if bytes.is_empty() {
        return (None, false);
    }
    if bytes.len() <= limit {
        return (Some(text_of(bytes)), false);
    }
    let tail = limit / 4;
    let mut text = text_of(&bytes[..limit - tail]);
    text.push_str(TRUNCATION_MARK);
    text.push_str(&text_of(&bytes[bytes.len() - tail..]));
    (Some(text), true)
}

/// [`stored_text`] of a body this code may own: a body within the limit becomes the text in
/// place when nothing else holds its buffer (`Vec::from(Bytes)` reuses a unique buffer).
fn stored_text_owned(bytes: Bytes, limit: usize) -> (Option<String>, bool) {
    if bytes.is_empty() || bytes.len() > limit {
        return stored_text(&bytes, limit);
    }
    let text = match String::from_utf8(Vec::from(bytes)) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    (Some(text), false)
}

/// `bytes` as text, invalid sequences replaced by U+FFFD. Bodies are nearly always valid UTF-8
/// (mostly ASCII): `str::from_utf8`'s word-at-a-time check decides that faster than the lossy
/// decoder, which only runs when it fails.
fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Placed where a stored body was cut.
const TRUNCATION_MARK: &str = "\n…[truncated by tracegate]…\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::capture::Capture;
    use crate::model::ids::{SpanId, TraceId};
    use crate::record::queue::CallInfo;

    #[test]
    fn stored_text_keeps_valid_utf8_and_replaces_invalid_bytes() {
        assert_eq!(stored_text("héllo \"json\"".as_bytes(), 100), (Some("héllo \"json\"".to_string()), false));
        assert_eq!(stored_text(b"ok \xff\xfe end", 100), (Some("ok \u{fffd}\u{fffd} end".to_string()), false));
        let (cut, truncated) = stored_text(&[b'a'; 200], 100);
        assert!(truncated && cut.unwrap().contains(TRUNCATION_MARK));
    }

    /// A finished call of `provider` (0: openai, 1: anthropic, the built-in routes) whose
    /// response body is `response`, captured with a 64 KiB limit.
    fn call(provider: usize, path: &str, request: &str, response: &[u8], sse: bool) -> CallRecord {
        let config = Config::from_toml("", &|_| None).unwrap();
        let capture = |body: &[u8], limit| {
            let mut c = Capture::new(limit, None);
            for chunk in body.chunks(16 * 1024) {
                c.push(chunk, 1000);
            }
            c.finish()
        };
        CallRecord {
            info: CallInfo {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                parent_span_id: None,
                provider: config.providers[provider].clone(),
                method: http::Method::POST,
                path: path.into(),
                start_time_unix_nano: 1,
                tracegate_headers: Vec::new(),
                session: None,
                team_key: None,
                reservation: None,
            },
            duration: std::time::Duration::from_millis(5),
            status_code: Some(200),
            outcome: Outcome::Completed,
            request_body: capture(request.as_bytes(), 1 << 20),
            response_body: capture(response, 64 * 1024),
            response_is_sse: sse,
            response_encoding: None,
            response_token_counts: None,
        }
    }

    fn settings() -> RecorderSettings {
        RecorderSettings::from_config(&Config::from_toml("", &|_| None).unwrap())
    }

    /// A long answer: `n` words of text.
    fn long_text(n: usize) -> String {
        "word ".repeat(n)
    }

    #[test]
    fn usage_at_the_end_of_a_json_answer_longer_than_the_capture_is_read_from_its_tail() {
        let openai = format!(
            r#"{{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":31,"completion_tokens":200000,"total_tokens":200031}}}}"#,
            long_text(200_000)
        );
        let request = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"write"}]}"#;
        let span =
            build_span(&mut call(0, "/v1/chat/completions", request, openai.as_bytes(), false), &settings()).span;
        assert_eq!(
            (span.usage_source, span.input_tokens, span.output_tokens),
            (UsageSource::Reported, Some(31), Some(200_000))
        );
        let anthropic = format!(
            r#"{{"id":"m","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"{}"}}],"stop_reason":"end_turn","usage":{{"input_tokens":12,"output_tokens":200000}}}}"#,
            long_text(200_000)
        );
        let request =
            r#"{"model":"claude-sonnet-4-5","max_tokens":300000,"messages":[{"role":"user","content":"write"}]}"#;
        let span = build_span(&mut call(1, "/v1/messages", request, anthropic.as_bytes(), false), &settings()).span;
        assert_eq!(
            (span.usage_source, span.input_tokens, span.output_tokens),
            (UsageSource::Reported, Some(12), Some(200_000))
        );
    }

    #[test]
    fn usage_at_the_end_of_a_stream_longer_than_the_capture_is_read_from_its_tail() {
        let mut openai = String::new();
        for _ in 0..20_000 {
            openai.push_str("data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"}}]}\n\n");
        }
        openai.push_str("data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":20000,\"total_tokens\":20031}}\n\ndata: [DONE]\n\n");
        let request = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"write"}]}"#;
        let span = build_span(&mut call(0, "/v1/chat/completions", request, openai.as_bytes(), true), &settings()).span;
        assert_eq!(
            (span.usage_source, span.input_tokens, span.output_tokens),
            (UsageSource::Reported, Some(31), Some(20_000))
        );
        let mut anthropic = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n");
        for _ in 0..20_000 {
            anthropic.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" word\"}}\n\n");
        }
        anthropic.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":20000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let request = r#"{"model":"claude-sonnet-4-5","max_tokens":30000,"stream":true,"messages":[{"role":"user","content":"write"}]}"#;
        let span = build_span(&mut call(1, "/v1/messages", request, anthropic.as_bytes(), true), &settings()).span;
        assert_eq!(
            (span.usage_source, span.input_tokens, span.output_tokens),
            (UsageSource::Reported, Some(12), Some(20_000))
        );
    }

    #[test]
    fn a_long_answer_without_usage_is_never_estimated_as_no_output() {
        let answer = format!(
            r#"{{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}]}}"#,
            long_text(100_000)
        );
        let request = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"write"}]}"#;
        let span =
            build_span(&mut call(0, "/v1/chat/completions", request, answer.as_bytes(), false), &settings()).span;
        assert_eq!(span.usage_source, UsageSource::Estimated);
        let output = span.output_tokens.unwrap();
        assert!((80_000..=120_000).contains(&output), "100,000 words estimated as {output} tokens");
    }

    #[test]
    fn credentials_in_bodies_are_redacted() {
        // Redacted alike whether the request's reading found the name (one pass) or the body
        // is scanned here (`None`: not one whole object), for every wire format.
        let redact = |body: &Bytes| {
            let op = Operation::Chat;
            let outs: Vec<Bytes> =
                [providers::Api::Openai, providers::Api::Anthropic, providers::Api::Gemini, providers::Api::Bedrock]
                    .into_iter()
                    .map(|api| providers::parse_request(api, &op, body).names_credential)
                    .chain([None])
                    .map(|named| redact_credentials(body.clone(), named))
                    .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{outs:?}");
            outs[0].clone()
        };
        let body = Bytes::from_static(br#"{"model":"m","api_key":"sk-123","extra":{"Authorization":"Bearer x","list":[{"password":"p"}]},"max_tokens":5}"#);
        let out = String::from_utf8(redact(&body).to_vec()).unwrap();
        assert!(!out.contains("sk-123") && !out.contains("Bearer x") && !out.contains("\"p\""), "{out}");
        assert!(out.contains("\"max_tokens\":5"));
        let plain = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        assert_eq!(redact(&plain), plain, "untouched when no credential is named");
        let nested = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"x":{"client_SECRET":"cs-9"}}]}"#,
        );
        assert!(!String::from_utf8_lossy(&redact(&nested)).contains("cs-9"));
        let cut = Bytes::from_static(br#"{"api_key":"sk-1"#);
        assert!(!String::from_utf8_lossy(&redact(&cut)).contains("sk-1"));
        // A name written with an escape is found by the one pass, which decodes it.
        let escaped = Bytes::from_static(br#"{"model":"m","api\u005fkey":"sk-esc"}"#);
        let named = providers::parse_request(providers::Api::Openai, &Operation::Chat, &escaped).names_credential;
        assert_eq!(named, Some(true));
        assert!(!String::from_utf8_lossy(&redact_credentials(escaped, named)).contains("sk-esc"));
    }
}
