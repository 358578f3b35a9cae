//! Compression of the store's segment values: an lz4 block behind a one-byte tag.
//!
//! sled's cost per write grows with the bytes it logs (every insert copies the value into its
//! log, and a leaf split logs both halves whole), so the store compresses each span and body
//! segment before inserting it. Spans of one batch repeat the same JSON keys and much of the
//! same values, so a segment shrinks ~4–5×; a segment that would not shrink is kept raw.
//!
//! A stored value is either
//! - `0x5A 'Z'` ‖ raw length: u32 BE ‖ lz4 block of the raw segment, or
//! - the raw segment itself, which always starts with its span count as a u32 BE below 2^16,
//!   hence with a zero byte. Store format 2 wrote only raw segments, so they read unchanged.

use std::borrow::Cow;

use lz4_flex::block::{self, CompressTable};

const LZ4_TAG: u8 = b'Z';
/// Longest raw segment stored compressed, and accepted as such when reading (a segment is a
/// few tens of KB; a huge body makes one larger). The length header is a u32.
const MAX_RAW_BYTES: usize = 1 << 30;

/// Capacity a reused segment buffer keeps, here and in the store's segment writer (a segment
/// holds ~6 KB compressed, at most ~30 KB raw; only a body of hundreds of KB makes one larger).
pub const KEPT_BUFFER_BYTES: usize = 256 << 10;

/// Compresses segments, reusing one hash table and one output buffer for every segment.
pub struct SegmentCompressor {
    table: CompressTable,
    scratch: Vec<u8>,
}

impl Default for SegmentCompressor {
    fn default() -> Self {
        SegmentCompressor { table: CompressTable::small(), scratch: Vec::new() }
    }
}

impl SegmentCompressor {
    /// The stored form of `raw` (a segment whose first byte is zero): compressed when that
    /// is smaller, otherwise `raw` itself. A segment larger than a reader accepts compressed
    /// (possible only with a capture limit of hundreds of MB) stays raw.
    pub fn encode<'a>(&'a mut self, raw: &'a [u8]) -> &'a [u8] {
        debug_assert_eq!(raw.first(), Some(&0), "a raw segment starts with a zero byte");
        if raw.len() > MAX_RAW_BYTES {
            return raw;
        }
        if self.scratch.len() > KEPT_BUFFER_BYTES {
            self.scratch = Vec::new(); // a huge body grew it; segments are tens of KB
        }
        let needed = 5 + block::get_maximum_output_size(raw.len());
        if self.scratch.len() < needed {
            self.scratch.resize(needed, 0); // zeroed once; later segments overwrite what they use
        }
        self.scratch[0] = LZ4_TAG;
        self.scratch[1..5].copy_from_slice(&(raw.len() as u32).to_be_bytes());
        match block::compress_into_with_table(raw, &mut self.scratch[5..], &mut self.table) {
            Ok(n) if 5 + n < raw.len() => &self.scratch[..5 + n],
            _ => raw,
        }
    }
}

/// The raw segment behind a stored value.
pub fn decode(stored: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    match stored.first() {
        Some(&LZ4_TAG) => {
            let header: [u8; 4] = stored
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| "compressed segment header cut short".to_string())?;
            let raw_len = u32::from_be_bytes(header) as usize;
            if raw_len > MAX_RAW_BYTES {
                return Err(format!("compressed segment claims {raw_len} raw bytes"));
            }
            let mut raw = vec![0; raw_len];
            match block::decompress_into(&stored[5..], &mut raw) {
                Ok(n) if n == raw_len => Ok(Cow::Owned(raw)),
                Ok(n) => Err(format!("compressed segment holds {n} bytes, its header says {raw_len}")),
                Err(e) => Err(format!("compressed segment: {e}")),
            }
        }
        _ => Ok(Cow::Borrowed(stored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_segment(body: &[u8]) -> Vec<u8> {
        let mut raw = vec![0, 0, 0, 3];
        raw.extend_from_slice(body);
        raw
    }

    #[test]
    fn repetitive_segments_are_compressed_and_read_back() {
        let raw = raw_segment(&br#"{"provider":"openai","model":"gpt-4o-mini","status":"ok"}"#.repeat(50));
        let stored = SegmentCompressor::default().encode(&raw).to_vec();
        assert_eq!(stored[0], LZ4_TAG);
        assert!(stored.len() * 4 < raw.len(), "{} of {}", stored.len(), raw.len());
        assert_eq!(decode(&stored).unwrap(), raw.as_slice());
    }

    #[test]
    fn incompressible_segments_are_kept_raw_and_raw_segments_read_unchanged() {
        let mut noise = vec![0u8; 4096];
        let mut x = 0x2545F4914F6CDD1Du64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let raw = raw_segment(&noise);
        let stored = SegmentCompressor::default().encode(&raw).to_vec();
        assert_eq!(stored, raw);
        assert!(matches!(decode(&stored).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn damaged_compressed_segments_are_errors_not_panics() {
        let raw = raw_segment(&b"abcdefgh".repeat(100));
        let stored = SegmentCompressor::default().encode(&raw).to_vec();
        for cut in [1, 3, 5, stored.len() / 2, stored.len() - 1] {
            assert!(decode(&stored[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = stored.clone();
        lying[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&lying).is_err());
        let mut flipped = stored;
        let last = flipped.len() - 1;
        flipped[last] ^= 0xFF;
        let _ = decode(&flipped); // any answer but a panic
    }
}
