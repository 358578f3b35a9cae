//! AWS event-stream frames, the binary framing of Bedrock's streaming responses
//! (`ConverseStream`, `InvokeModelWithResponseStream`): read from a captured body, and written
//! (for `mock-llm` and tests).
//!
//! A frame is: `total_length: u32`, `headers_length: u32`, `prelude_crc: u32` (CRC32 of the
//! first 8 bytes), the headers, the payload, and `message_crc: u32` (CRC32 of everything
//! before it); integers big-endian, CRC32 as in zlib. A header is `name_length: u8`, the name,
//! a type byte and a value; strings (type 7) and byte arrays (type 6) carry a `u16` length.
//! Bedrock names a frame by its `:message-type` (`event` or `exception`) and `:event-type`
//! (`messageStart`, `contentBlockDelta`, `metadata`, `chunk`, ...) headers.
//!
//! Reading never trusts a frame it cannot check: a bad prelude CRC ends the walk (its lengths
//! cannot be believed), a bad message CRC is reported and skipped (the prelude's lengths still
//! find the next frame). The proxy relays the bytes unchanged either way; the recorder says in
//! the span that the stream was corrupt.

/// Bytes of a frame around its headers and payload: the prelude (12) and the message CRC (4).
const OVERHEAD: usize = 16;
/// A frame's largest total length Bedrock sends is 16 MB; anything longer is not a frame.
const MAX_FRAME: usize = 16 << 20;

/// A header's value.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue<'a> {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(&'a [u8]),
    String(&'a str),
    Timestamp(i64),
    Uuid(&'a [u8]),
}

/// One checked frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    pub headers: Vec<(&'a str, HeaderValue<'a>)>,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if *n == name => Some(*s),
            _ => None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The body ends inside a frame (a stream cut short).
    Truncated,
    /// The prelude's CRC does not match: nothing after it can be located.
    PreludeCrc,
    /// The frame's CRC does not match; the walk goes on with the next frame.
    MessageCrc,
    /// Lengths that cannot be a frame, or headers that do not parse.
    Malformed(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("event stream cut short inside a frame"),
            FrameError::PreludeCrc => f.write_str("event-stream frame with a wrong prelude CRC"),
            FrameError::MessageCrc => f.write_str("event-stream frame with a wrong message CRC"),
            FrameError::Malformed(what) => write!(f, "malformed event-stream frame: {what}"),
        }
    }
}

/// Whether `body` starts with a sound event-stream prelude (lengths that can be a frame, and
/// their CRC): how a Bedrock answer is told apart from JSON.
pub fn starts_with_frame(body: &[u8]) -> bool {
    body.len() >= 12 && crc32fast::hash(&body[..8]) == be32(&body[8..12]) && {
        let (total, headers_len) = (be32(&body[..4]) as usize, be32(&body[4..8]) as usize);
        (OVERHEAD..=MAX_FRAME).contains(&total) && headers_len <= total - OVERHEAD
    }
}

/// The frames of `body`, in order. After `Truncated`, `PreludeCrc` or `Malformed` lengths the
/// iterator ends; after `MessageCrc` it goes on.
pub fn frames(body: &[u8]) -> Frames<'_> {
    Frames { rest: body, done: false }
}

pub struct Frames<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        let result = read_frame(self.rest);
        match &result {
            Ok((_, len)) | Err((FrameError::MessageCrc, Some(len))) => self.rest = &self.rest[*len..],
            Err(_) => self.done = true,
        }
        Some(result.map(|(frame, _)| frame).map_err(|(e, _)| e))
    }
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

/// Reads the frame at the start of `body`: the frame and its length, or the error and (when
/// the prelude is sound) the length to skip.
fn read_frame(body: &[u8]) -> Result<(Frame<'_>, usize), (FrameError, Option<usize>)> {
    if body.len() < 12 {
        return Err((FrameError::Truncated, None));
    }
    if crc32fast::hash(&body[..8]) != be32(&body[8..12]) {
        return Err((FrameError::PreludeCrc, None));
    }
    let (total, headers_len) = (be32(&body[..4]) as usize, be32(&body[4..8]) as usize);
    if !(OVERHEAD..=MAX_FRAME).contains(&total) || headers_len > total - OVERHEAD {
        return Err((FrameError::Malformed("lengths"), None));
    }
    if body.len() < total {
        return Err((FrameError::Truncated, None));
    }
    if crc32fast::hash(&body[..total - 4]) != be32(&body[total - 4..total]) {
        return Err((FrameError::MessageCrc, Some(total)));
    }
    let headers = parse_headers(&body[12..12 + headers_len]).map_err(|e| (e, Some(total)))?;
    Ok((Frame { headers, payload: &body[12 + headers_len..total - 4] }, total))
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(&str, HeaderValue<'_>)>, FrameError> {
    let bad = || FrameError::Malformed("headers");
    let mut headers = Vec::new();
    while let Some((&name_len, rest)) = bytes.split_first() {
        let name = rest.get(..usize::from(name_len)).ok_or_else(bad)?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        let (&kind, rest) = rest[usize::from(name_len)..].split_first().ok_or_else(bad)?;
        let fixed = |n: usize| rest.get(..n).ok_or_else(bad);
        let int = |n: usize| -> Result<i64, FrameError> {
            Ok(fixed(n)?.iter().fold(0i64, |v, b| (v << 8) | i64::from(*b)) << (64 - 8 * n) >> (64 - 8 * n))
        };
        let sized = || -> Result<&[u8], FrameError> {
            let len = usize::from(u16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes")));
            rest.get(2..2 + len).ok_or_else(bad)
        };
        let (value, used) = match kind {
            0 => (HeaderValue::Bool(true), 0),
            1 => (HeaderValue::Bool(false), 0),
            2 => (HeaderValue::Byte(int(1)? as i8), 1),
            3 => (HeaderValue::Short(int(2)? as i16), 2),
            4 => (HeaderValue::Int(int(4)? as i32), 4),
            5 => (HeaderValue::Long(int(8)?), 8),
            6 => {
                let v = sized()?;
                (HeaderValue::Bytes(v), 2 + v.len())
            }
            7 => {
                let v = sized()?;
                (HeaderValue::String(std::str::from_utf8(v).map_err(|_| bad())?), 2 + v.len())
            }
            8 => (HeaderValue::Timestamp(int(8)?), 8),
            9 => (HeaderValue::Uuid(fixed(16)?), 16),
            _ => return Err(bad()),
        };
        headers.push((name, value));
        bytes = &rest[used..];
    }
    Ok(headers)
}

/// Encodes a frame with string headers (what Bedrock's `:event-type`, `:content-type` and
/// `:message-type` are).
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + encoded_headers.len() + payload.len();
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&(total as u32).to_be_bytes());
    frame.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame.extend_from_slice(&encoded_headers);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
    frame
}

/// Encodes one JSON event of a Bedrock stream, named by its `:event-type` (`messageStart`,
/// `contentBlockDelta`, `metadata`, `chunk`, ...).
pub fn encode_event(event_type: &str, json: &str) -> Vec<u8> {
    encode_frame(
        &[(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        json.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::encode_event as event;
    use super::*;

    #[test]
    fn frames_round_trip_and_name_their_events() {
        let body = [event("messageStart", r#"{"role":"assistant"}"#), event("metadata", r#"{"usage":{}}"#)].concat();
        let frames: Vec<Frame> = frames(&body).map(Result::unwrap).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].header(":event-type"), Some("messageStart"));
        assert_eq!(frames[1].header(":message-type"), Some("event"));
        assert_eq!(frames[1].payload, br#"{"usage":{}}"#);
    }

    #[test]
    fn a_frame_matches_what_botocore_decodes() {
        // Built independently (Python's zlib.crc32) and checked with botocore 1.44's
        // `EventStreamBuffer`, which decoded these headers and payload from these bytes.
        const BOTOCORE_CHECKED: &str = "0000006b0000004b6ace012d0b3a6576656e742d747970650700056368756e6b0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b226279746573223a2261476b3d227dbd9e5744";
        let expected: Vec<u8> = (0..BOTOCORE_CHECKED.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&BOTOCORE_CHECKED[i..i + 2], 16).unwrap())
            .collect();
        let ours = event("chunk", r#"{"bytes":"aGk="}"#);
        assert_eq!(ours, expected);
        let frame = frames(&expected).next().unwrap().unwrap();
        assert_eq!(frame.header(":event-type"), Some("chunk"));
        assert_eq!(frame.payload, br#"{"bytes":"aGk="}"#);
    }

    #[test]
    fn typed_headers_decode() {
        // One header of each fixed-size and sized type, laid out as the format says.
        let mut headers = Vec::new();
        for (name, kind, value) in [
            ("t", 0u8, &[][..]),
            ("b", 2, &[0xff][..]),
            ("s", 3, &[0x01, 0x00][..]),
            ("i", 4, &[0, 0, 0, 7][..]),
            ("x", 6, &[0, 2, 0xab, 0xcd][..]),
            ("ts", 8, &[0, 0, 0, 0, 0, 0, 0, 9][..]),
        ] {
            headers.push(name.len() as u8);
            headers.extend_from_slice(name.as_bytes());
            headers.push(kind);
            headers.extend_from_slice(value);
        }
        let parsed = parse_headers(&headers).unwrap();
        assert_eq!(parsed[0], ("t", HeaderValue::Bool(true)));
        assert_eq!(parsed[1], ("b", HeaderValue::Byte(-1)));
        assert_eq!(parsed[2], ("s", HeaderValue::Short(256)));
        assert_eq!(parsed[3], ("i", HeaderValue::Int(7)));
        assert_eq!(parsed[4], ("x", HeaderValue::Bytes(&[0xab, 0xcd])));
        assert_eq!(parsed[5], ("ts", HeaderValue::Timestamp(9)));
    }

    #[test]
    fn a_corrupt_frame_is_reported_and_the_walk_goes_on_or_stops_as_it_can() {
        let good = event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#);
        let mut corrupt_payload = good.clone();
        corrupt_payload[good.len() - 6] ^= 0x20;
        let body = [corrupt_payload, good.clone()].concat();
        let results: Vec<_> = frames(&body).collect();
        assert_eq!(results[0], Err(FrameError::MessageCrc));
        assert!(results[1].is_ok(), "the next frame is found through the sound prelude");

        let mut corrupt_prelude = good.clone();
        corrupt_prelude[2] ^= 1;
        let body = [corrupt_prelude, good.clone()].concat();
        let results: Vec<_> = frames(&body).collect();
        assert_eq!(results, vec![Err(FrameError::PreludeCrc)]);

        let results: Vec<_> = frames(&good[..good.len() - 1]).collect();
        assert_eq!(results, vec![Err(FrameError::Truncated)]);
        assert!(frames(&[]).next().is_none());
    }
}
