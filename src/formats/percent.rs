//! Percent-decoding of URL parts: query parameters (where `+` is a space) and path segments
//! (where it is a `+`, e.g. Bedrock's URL-encoded model ids). A `%` not followed by two hex
//! digits is kept as is; bytes that do not form UTF-8 become U+FFFD.

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space`.
pub fn decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_plus_and_stray_percents() {
        assert_eq!(decode("a%20b+c", true), "a b c");
        assert_eq!(decode("v1%3A0+x", false), "v1:0+x");
        assert_eq!(decode("%zz%4", true), "%zz%4");
        assert_eq!(decode("%ff", false), "\u{fffd}");
    }
}
