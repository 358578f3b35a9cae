//! Server-sent events (`text/event-stream`) scanner for captured response bodies.
//!
//! The recorder sees a streamed response only after it has been relayed, as one complete
//! byte buffer. [`events`] walks that buffer once, following the WHATWG event-stream
//! parsing rules, and yields each dispatched event together with the byte offset at which
//! it was complete, so callers can tell when a given event reached the client.

use std::borrow::Cow;

/// One dispatched event of an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The event type from the last `event:` line; `None` when absent or empty (the
    /// default `message` type).
    pub event: Option<&'a str>,
    /// The `data:` lines joined with `\n`. Borrowed from the buffer when the event has a
    /// single data line.
    pub data: Cow<'a, str>,
    /// Byte offset just past the blank line that dispatched this event.
    pub end_offset: usize,
}

/// Iterates the events of a complete event-stream buffer.
///
/// Lines may end with `\n`, `\r\n` or `\r`; a leading byte-order mark is skipped. Comment
/// lines (starting with `:`), `id`, `retry` and unknown fields are ignored, as are lines
/// that are not valid UTF-8. Only events dispatched by a blank line are yielded: an event
/// still open at the end of the buffer (a cut stream) is not, nor is one without any
/// `data` line.
pub fn events(buf: &[u8]) -> impl Iterator<Item = SseEvent<'_>> {
    let pos = if buf.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    Events { buf, pos }
}

/// Iterator state behind [`events`].
struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The data buffer of the event being assembled.
enum Data<'a> {
    Empty,
    One(&'a str),
    Many(String),
}

impl<'a> Data<'a> {
    fn push(&mut self, line: &'a str) {
        *self = match std::mem::replace(self, Data::Empty) {
            Data::Empty => Data::One(line),
            Data::One(first) => {
                let mut s = String::with_capacity(first.len() + 1 + line.len());
                s.push_str(first);
                s.push('\n');
                s.push_str(line);
                Data::Many(s)
            }
            Data::Many(mut s) => {
                s.push('\n');
                s.push_str(line);
                Data::Many(s)
            }
        };
    }

    fn take(&mut self) -> Option<Cow<'a, str>> {
        match std::mem::replace(self, Data::Empty) {
            Data::Empty => None,
            Data::One(s) => Some(Cow::Borrowed(s)),
            Data::Many(s) => Some(Cow::Owned(s)),
        }
    }
}

impl<'a> Events<'a> {
    /// The next complete line (without its terminator), advancing past the terminator.
    /// `None` when no terminated line remains.
    fn next_line(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        let i = memchr::memchr2(b'\n', b'\r', rest)?;
        let term = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        self.pos += i + term;
        Some(&rest[..i])
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = SseEvent<'a>;

    fn next(&mut self) -> Option<SseEvent<'a>> {
        let mut event: Option<&'a str> = None;
        let mut data = Data::Empty;
        loop {
            let line = self.next_line()?;
            if line.is_empty() {
                match data.take() {
                    Some(data) => return Some(SseEvent { event, data, end_offset: self.pos }),
                    None => {
                        event = None;
                        continue;
                    }
                }
            }
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "data" => data.push(value),
                "event" => event = Some(value).filter(|v| !v.is_empty()),
                _ => {} // comments (empty field name), id, retry and unknown fields
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(buf: &[u8]) -> Vec<(Option<&str>, String, usize)> {
        events(buf).map(|e| (e.event, e.data.into_owned(), e.end_offset)).collect()
    }

    #[test]
    fn lf_events_with_names_and_offsets() {
        let buf = b"event: message_start\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\n";
        let got = collect(buf);
        assert_eq!(
            got,
            vec![(Some("message_start"), "{\"a\":1}".to_string(), 36), (Some("ping"), "{}".to_string(), buf.len()),]
        );
        assert_eq!(&buf[..36], b"event: message_start\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn single_data_line_is_borrowed_multi_is_joined() {
        let buf = b"data: one\n\ndata: first\ndata:second\ndata:  third\n\n";
        let evs: Vec<_> = events(buf).collect();
        assert_eq!(evs.len(), 2);
        assert!(matches!(evs[0].data, Cow::Borrowed("one")));
        assert_eq!(evs[1].data, "first\nsecond\n third");
        assert!(matches!(evs[1].data, Cow::Owned(_)));
        assert_eq!(evs[1].event, None);
    }

    #[test]
    fn crlf_line_endings() {
        let buf = b"event: a\r\ndata: x\r\n\r\ndata: y\r\ndata: z\r\n\r\n";
        let got = collect(buf);
        assert_eq!(got, vec![(Some("a"), "x".to_string(), 21), (None, "y\nz".to_string(), buf.len()),]);
    }

    #[test]
    fn lone_cr_line_endings() {
        let buf = b"event: a\rdata: x\r\rdata: y\r\r";
        let got = collect(buf);
        assert_eq!(got, vec![(Some("a"), "x".to_string(), 18), (None, "y".to_string(), buf.len())]);
    }

    #[test]
    fn mixed_line_endings() {
        let buf = b"data: a\r\ndata: b\rdata: c\n\r\n";
        assert_eq!(collect(buf), vec![(None, "a\nb\nc".to_string(), buf.len())]);
    }

    #[test]
    fn comments_id_retry_and_unknown_fields_ignored() {
        let buf = b": keep-alive\n\nid: 7\nretry: 1000\nfoo: bar\n: comment\ndata: payload\n\n";
        assert_eq!(collect(buf), vec![(None, "payload".to_string(), buf.len())]);
    }

    #[test]
    fn only_one_leading_space_removed_and_colon_optional() {
        let buf = b"data:no-space\n\ndata:   three\n\ndata\n\ndata: a: b\n\n";
        let got: Vec<String> = collect(buf).into_iter().map(|e| e.1).collect();
        assert_eq!(got, vec!["no-space", "  three", "", "a: b"]);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_type_resets() {
        let buf = b"event: lonely\n\ndata: x\n\nevent: named\nevent:\ndata: y\n\n";
        assert_eq!(collect(buf), vec![(None, "x".to_string(), 24), (None, "y".to_string(), buf.len())]);
    }

    #[test]
    fn unterminated_trailing_event_not_yielded() {
        let buf = b"data: done\n\ndata: {\"partial\":tr";
        assert_eq!(collect(buf), vec![(None, "done".to_string(), 12)]);
        let buf = b"data: done\n\ndata: complete-line\n";
        assert_eq!(collect(buf), vec![(None, "done".to_string(), 12)]);
        let buf = b"data: done\n\nevent: x\n";
        assert_eq!(collect(buf).len(), 1);
    }

    #[test]
    fn invalid_utf8_lines_skipped() {
        let buf = b"data: good\ndata: bad \xFF\xFE\nevent: \xC3\n\ndata: next\n\n";
        assert_eq!(collect(buf), vec![(None, "good".to_string(), 34), (None, "next".to_string(), buf.len())]);
    }

    #[test]
    fn bom_skipped_and_empty_input() {
        let buf = b"\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(collect(buf), vec![(None, "x".to_string(), buf.len())]);
        assert!(collect(b"").is_empty());
        assert!(collect(b"\n\n\r\n\r").is_empty());
    }

    #[test]
    fn exhausted_iterator_stays_exhausted() {
        let mut it = events(b"data: a\n\ndata: b");
        assert!(it.next().is_some());
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let alphabet: &[u8] = b"\r\n:data event \xFF\xC3\xA9{}x";
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            let mut last = 0;
            for ev in events(&buf) {
                assert!(ev.end_offset > last && ev.end_offset <= buf.len());
                last = ev.end_offset;
            }
        }
    }
}
