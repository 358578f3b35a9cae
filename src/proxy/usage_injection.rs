//! Optional `include_usage` injection for OpenAI streams (`inject_stream_usage = true`).
//!
//! An OpenAI chat or completions stream reports usage only when the request asked for it
//! (`stream_options.include_usage`). With injection on, tracegate asks on the app's behalf
//! and then undoes what asking changes in the reply, so the app receives exactly the bytes it
//! would have received without the proxy:
//!
//! - every chunk gains a `"usage":null` member → removed from each `data:` event;
//! - one extra chunk with `"choices":[]` and the usage object arrives before `[DONE]` →
//!   dropped for the client (the recorder still sees it in the capture, so the span gets
//!   `reported` usage).
//!
//! This is the one place the request path looks inside bodies, and only when the provider
//! enables it: the request body is read whole (up to [`MAX_REWRITE_BYTES`]) and rewritten, and
//! the response is cut at SSE event boundaries and edited with byte searches (no JSON parsing
//! of the stream; `"usage":null` cannot occur inside a JSON string, where quotes are escaped).

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Requests larger than this are forwarded untouched (no injection).
pub const MAX_REWRITE_BYTES: usize = 4 << 20;

/// If `body` is a streaming request that did not ask for usage, the same request asking for
/// it; otherwise `None` (forward the body as it is).
pub fn inject(body: &[u8]) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        stream: bool,
        #[serde(default)]
        stream_options: Option<Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if !probe.stream {
        return None;
    }
    match probe.stream_options {
        None | Some(Value::Null) => {
            // Insert the member right after the opening brace: the rest stays byte-identical.
            let open = body.iter().position(|b| *b == b'{')?;
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            Some(out.freeze())
        }
        Some(Value::Object(options)) if options.get("include_usage") == Some(&Value::Bool(true)) => None,
        Some(Value::Object(_)) => {
            let mut request: Value = serde_json::from_slice(body).ok()?;
            request["stream_options"]["include_usage"] = Value::Bool(true);
            Some(Bytes::from(serde_json::to_vec(&request).ok()?))
        }
        Some(_) => None,
    }
}

/// Removes from an SSE stream what asking for usage added. Feed it the upstream's chunks in
/// order; it returns what the client should get (complete events only; an incomplete event
/// waits for the chunk that completes it).
#[derive(Default)]
pub struct UsageStripper {
    pending: BytesMut,
}

impl UsageStripper {
    /// Processes one upstream chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let Some(end) = last_event_end(&self.pending) else { return Bytes::new() };
        let complete = self.pending.split_to(end);
        strip_events(&complete)
    }

    /// Whether nothing is waiting for the rest of an event.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The end of the stream: whatever is left is passed on unchanged.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

/// Offset just past the last blank line (event terminator) in `buf`.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut end = None;
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') => {
                end = Some(i + 2);
                i += 2;
            }
            (b'\r', b'\n') if buf.get(i + 2..i + 4) == Some(b"\r\n") => {
                end = Some(i + 4);
                i += 4;
            }
            _ => i += 1,
        }
    }
    end
}

/// Strips complete events: drops usage-only chunks, removes `"usage":null` members.
fn strip_events(events: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(events.len());
    let mut rest = events;
    while !rest.is_empty() {
        let end = first_event_end(rest).unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        rest = tail;
        if is_usage_only_chunk(event) {
            continue;
        }
        remove_null_usage(event, &mut out);
    }
    out.freeze()
}

fn first_event_end(buf: &[u8]) -> Option<usize> {
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    let crlf = find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The extra chunk: `"choices":[]` with a usage object.
fn is_usage_only_chunk(event: &[u8]) -> bool {
    find(event, br#""choices":[]"#).is_some() && find(event, br#""usage":{"#).is_some()
}

fn remove_null_usage(event: &[u8], out: &mut BytesMut) {
    let mut rest = event;
    loop {
        let with_comma = find(rest, br#","usage":null"#).map(|i| (i, 13));
        let leading = find(rest, br#""usage":null,"#).map(|i| (i, 13));
        let hit = match (with_comma, leading) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((at, len)) = hit else {
            out.extend_from_slice(rest);
            return;
        };
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at + len..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_only_into_streams_that_did_not_ask() {
        let out = inject(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(&out[..], br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#);
        let out = inject(br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"], serde_json::json!({"include_obfuscation": false, "include_usage": true}));
        assert!(inject(br#"{"model":"m","stream":false}"#).is_none());
        assert!(inject(br#"{"model":"m"}"#).is_none());
        assert!(inject(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        assert!(inject(b"not json").is_none());
    }

    #[test]
    fn strips_what_asking_added_across_chunk_boundaries() {
        let with_usage = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n"
        );
        let without = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        for split in [1, 7, 30, 64, with_usage.len()] {
            let mut stripper = UsageStripper::default();
            let mut out = Vec::new();
            for piece in with_usage.as_bytes().chunks(split) {
                out.extend_from_slice(&stripper.push(piece));
            }
            out.extend_from_slice(&stripper.finish());
            assert_eq!(String::from_utf8(out).unwrap(), without, "chunks of {split}");
        }
    }

    #[test]
    fn content_that_mentions_usage_is_left_alone() {
        let event = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}],\"usage\":null}\n\n";
        let mut stripper = UsageStripper::default();
        let out = stripper.push(event.as_bytes());
        assert_eq!(&out[..], "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}]}\n\n".as_bytes());
    }
}
