//! Trace and span ids: 128- and 64-bit, never all zeros, written as lowercase hex (in headers,
//! the admin API and stored spans alike). Random ids for new traces and spans. How ids are read
//! from trace headers is `formats::trace_context`'s business.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::{Serialize, Serializer};

// ---------------------------------------------------------------------------
// Hex helpers
// ---------------------------------------------------------------------------

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, which must be twice as long.
pub(crate) fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Value of a lowercase hex digit. Uppercase is rejected: the header formats require lowercase.
#[inline]
pub(crate) fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Value of a hex digit of either case.
#[inline]
fn any_hex_digit(c: u8) -> Option<u8> {
    lower_hex_digit(c.to_ascii_lowercase())
}

/// Decodes exactly `2 * N` hex digits into `N` bytes.
#[inline]
pub(crate) fn decode_hex<const N: usize>(src: &[u8], digit: fn(u8) -> Option<u8>) -> Option<[u8; N]> {
    if src.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

// ---------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------

/// A 128-bit trace id. A valid id is never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id. A valid id is never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

/// Error from parsing a [`TraceId`] or [`SpanId`] with [`FromStr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseIdError {
    expected_digits: usize,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {} hex digits, not all zero", self.expected_digits)
    }
}

impl std::error::Error for ParseIdError {}

/// The parts [`TraceId`] and [`SpanId`] share: hex conversion, formatting and serde.
macro_rules! hex_id {
    ($name:ident, $bytes:literal, $digits:literal, $what:literal) => {
        impl $name {
            #[doc = concat!("The id as ", stringify!($digits), " lowercase hex digits.")]
            pub fn to_hex(&self) -> String {
                let mut buf = [0u8; $digits];
                self.write_hex(&mut buf);
                buf.iter().map(|&b| char::from(b)).collect()
            }

            #[doc = concat!("Writes the id as ", stringify!($digits), " lowercase hex digits, without allocating.")]
            pub fn write_hex(&self, out: &mut [u8; $digits]) {
                encode_hex(&self.0, out);
            }

            #[doc = concat!("Parses ", stringify!($digits), " hex digits of either case. ")]
            /// All zeros is not a valid id and gives `None`.
            pub fn from_hex(s: &str) -> Option<Self> {
                Self::from_hex_bytes(s.as_bytes(), any_hex_digit)
            }

            /// Header formats only allow lowercase hex.
            pub(crate) fn from_lower_hex(s: &[u8]) -> Option<Self> {
                Self::from_hex_bytes(s, lower_hex_digit)
            }

            fn from_hex_bytes(s: &[u8], digit: fn(u8) -> Option<u8>) -> Option<Self> {
                decode_hex::<$bytes>(s, digit).filter(|bytes| !all_zero(bytes)).map(Self)
            }

            /// Calls `f` with the lowercase hex as a `&str` held on the stack.
            fn with_hex<R>(&self, f: impl FnOnce(&str) -> R) -> R {
                let mut buf = [0u8; $digits];
                self.write_hex(&mut buf);
                f(std::str::from_utf8(&buf).expect("hex digits are ASCII"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.with_hex(|hex| f.pad(hex))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s).ok_or(ParseIdError { expected_digits: $digits })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.with_hex(|hex| serializer.serialize_str(hex))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct HexVisitor;

                impl Visitor<'_> for HexVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} of {} hex digits, not all zero", $what, $digits)
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_hex(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
                    }
                }

                deserializer.deserialize_str(HexVisitor)
            }
        }
    };
}

hex_id!(TraceId, 16, 32, "trace id");
hex_id!(SpanId, 8, 16, "span id");

impl TraceId {
    /// A new random trace id (never all zeros).
    pub fn random() -> Self {
        Self(fastrand::u128(1..).to_be_bytes())
    }
}

impl SpanId {
    /// A new random span id (never all zeros).
    pub fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }
}
