//! A bounded copy of a body as it streams past.
//!
//! Bodies up to the limit are kept whole. A longer body keeps its head and a fixed-size tail
//! (the tail matters: streamed usage arrives in the last events), so memory per call is bounded
//! by `max_capture_bytes` whatever the upstream sends. Copying a chunk is a `memcpy` into a
//! preallocated buffer; nothing here parses or allocates per chunk once the buffer is sized.
//! A body of unknown length (a stream) grows its buffer by a quarter at a time, not double:
//! thousands of open streams each hold their capture for the stream's whole life, and doubling
//! left up to half of every buffer empty (the largest part of a waiting stream's memory).

use bytes::{Bytes, BytesMut};

/// The most bytes kept at the end of a body that overflows the capture limit.
const MAX_TAIL_BYTES: usize = 64 * 1024;

/// The least a capture's buffer grows by when a chunk does not fit.
const MIN_GROWTH: usize = 1024;

/// How many chunk arrival times are kept (used to find the chunk that held the first token).
const MAX_CHUNK_MARKS: usize = 4096;

/// Arrival of one chunk: the offset just past its last byte and microseconds since the call began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMark {
    pub end_offset: u32,
    pub elapsed_us: u32,
}

/// Accumulates a bounded copy of a body.
#[derive(Debug)]
pub struct Capture {
    head: Vec<u8>,
    head_cap: usize,
    tail: Vec<u8>,
    tail_cap: usize,
    /// Write position in `tail` once it is full (ring buffer).
    tail_pos: usize,
    total: u64,
    marks: Vec<ChunkMark>,
}

/// A finished capture.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// The first bytes of the body (the whole body unless `truncated`).
    pub head: Bytes,
    /// The last bytes of the body when it was longer than the limit; empty otherwise.
    pub tail: Bytes,
    /// The body's full length in bytes.
    pub total_len: u64,
    pub marks: Vec<ChunkMark>,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        self.total_len > (self.head.len() + self.tail.len()) as u64
    }

    /// The whole body when it was kept whole; otherwise head and tail joined by `separator`.
    pub fn joined(&self, separator: &[u8]) -> Bytes {
        if self.tail.is_empty() && !self.truncated() {
            return self.head.clone();
        }
        let mut out = BytesMut::with_capacity(self.head.len() + separator.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        if self.truncated() {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(&self.tail);
        out.freeze()
    }
}

impl Capture {
    /// A capture keeping at most `limit` bytes; `size_hint` (e.g. Content-Length) sizes the
    /// first allocation.
    pub fn new(limit: usize, size_hint: Option<u64>) -> Self {
        let tail_cap = if limit >= 4 * MAX_TAIL_BYTES { MAX_TAIL_BYTES } else { limit / 4 };
        let head_cap = limit - tail_cap;
        let initial = size_hint.map(|n| n.min(head_cap as u64) as usize).unwrap_or(0).min(head_cap);
        Capture {
            head: Vec::with_capacity(initial),
            head_cap,
            tail: Vec::new(),
            tail_cap,
            tail_pos: 0,
            total: 0,
            marks: Vec::new(),
        }
    }

    /// Copies `chunk` into the capture and notes when it arrived.
    pub fn push(&mut self, chunk: &[u8], elapsed_us: u32) {
        self.total += chunk.len() as u64;
        let room = self.head_cap - self.head.len();
        let (to_head, rest) = chunk.split_at(chunk.len().min(room));
        if to_head.len() > self.head.capacity() - self.head.len() {
            // A quarter more (at most a fifth of the buffer empty, each byte copied ~4 times as
            // it grows), never past the limit.
            let grow = to_head.len().max(self.head.len() / 4).max(MIN_GROWTH).min(room);
            self.head.reserve_exact(grow);
        }
        self.head.extend_from_slice(to_head);
        if !rest.is_empty() {
            self.push_tail(rest);
        }
        if self.marks.len() < MAX_CHUNK_MARKS && rest.is_empty() {
            self.marks.push(ChunkMark { end_offset: self.head.len() as u32, elapsed_us });
        }
    }

    fn push_tail(&mut self, mut bytes: &[u8]) {
        if self.tail_cap == 0 {
            return;
        }
        if bytes.len() >= self.tail_cap {
            bytes = &bytes[bytes.len() - self.tail_cap..];
            self.tail.clear();
            self.tail.extend_from_slice(bytes);
            self.tail_pos = 0;
            return;
        }
        let free = self.tail_cap - self.tail.len();
        if free > 0 {
            let n = free.min(bytes.len());
            self.tail.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        for &b in bytes {
            // Ring overwrite: only reached once the tail is full, bounded by tail_cap per call.
            self.tail[self.tail_pos] = b;
            self.tail_pos = (self.tail_pos + 1) % self.tail_cap;
        }
    }

    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// Ends the capture.
    pub fn finish(self) -> Captured {
        let mut tail = self.tail;
        tail.rotate_left(self.tail_pos);
        Captured { head: Bytes::from(self.head), tail: Bytes::from(tail), total_len: self.total, marks: self.marks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_of_unknown_length_leaves_at_most_a_fifth_of_its_buffer_empty() {
        // 40 SSE-sized chunks, then an agent-sized answer: the buffer follows the body within
        // a quarter (doubling left up to half of it empty for every open stream).
        for (chunks, size) in [(40, 260), (2_000, 97)] {
            let mut c = Capture::new(1 << 20, None);
            for i in 0..chunks {
                c.push(&vec![b'x'; size], i);
                let (len, cap) = (c.head.len(), c.head.capacity());
                assert!(cap <= len + len / 4 + MIN_GROWTH + size, "{len} bytes in a buffer of {cap}");
            }
            assert_eq!(c.finish().head.len(), chunks as usize * size);
        }
        // Never past the limit.
        let mut c = Capture::new(5_000, None);
        for _ in 0..100 {
            c.push(&[b'y'; 333], 0);
        }
        assert!(c.head.capacity() <= 5_000 - 5_000 / 4 + 64, "{}", c.head.capacity());
    }

    #[test]
    fn short_body_is_kept_whole() {
        let mut c = Capture::new(1024, Some(10));
        c.push(b"hello ", 1);
        c.push(b"world", 2);
        let done = c.finish();
        assert_eq!(&done.joined(b"|")[..], b"hello world");
        assert!(!done.truncated());
        assert_eq!(
            done.marks,
            vec![ChunkMark { end_offset: 6, elapsed_us: 1 }, ChunkMark { end_offset: 11, elapsed_us: 2 }]
        );
    }

    #[test]
    fn body_at_the_limit_is_whole_and_longer_keeps_head_and_tail() {
        let body: Vec<u8> = (0..100u8).collect();
        let mut c = Capture::new(100, None);
        for piece in body.chunks(7) {
            c.push(piece, 0);
        }
        let done = c.finish();
        assert!(!done.truncated());
        assert_eq!(&done.joined(b"")[..], &body[..]);

        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut c = Capture::new(100, None);
        for piece in body.chunks(13) {
            c.push(piece, 0);
        }
        let done = c.finish();
        assert!(done.truncated());
        assert_eq!(done.total_len, 1000);
        assert_eq!(&done.head[..], &body[..75]);
        assert_eq!(&done.tail[..], &body[1000 - 25..]);
    }

    #[test]
    fn one_huge_chunk_keeps_its_end() {
        let body: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut c = Capture::new(400, None);
        c.push(&body, 0);
        let done = c.finish();
        assert_eq!(&done.head[..], &body[..300]);
        assert_eq!(&done.tail[..], &body[4900..]);
    }

    #[test]
    fn zero_limit_keeps_nothing_but_counts() {
        let mut c = Capture::new(0, Some(50));
        c.push(b"abc", 0);
        let done = c.finish();
        assert_eq!(done.total_len, 3);
        assert!(done.head.is_empty() && done.tail.is_empty());
    }
}
