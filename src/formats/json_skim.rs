//! Skimming JSON without building it: the top-level members a reader wants from an object,
//! and, in the same pass, whether any string of it (a member name at any depth, or a value)
//! is one of some names. One forward pass; strings are crossed with a vectorised search for
//! their closing quote or next escape (`memchr2` of `"` and `\`).
//!
//! Skipped values are checked for structure (strings closed, brackets balanced — not matched
//! by kind), not for every rule of JSON: a control character inside a skipped string, or a
//! malformed number, is crossed. Wanted values are parsed by serde_json, strictly. A syntax
//! error, or the end of a truncated body, ends the walk: what was read before it is kept.

use memchr::memchr2;
use serde_json::{Map, Value};

/// What one walk over a body found: the wanted top-level members, and whether a string
/// (a member name or a value, at any depth) is one of the names looked for.
#[derive(Debug, Default, PartialEq)]
pub struct Skimmed {
    /// The wanted top-level members read before the walk ended.
    pub members: Map<String, Value>,
    /// `Some` when the body is one whole JSON object (read to its end): whether any string
    /// in it equals one of the names, without regard to ASCII case. `None` when it is not (not
    /// an object, a syntax error, cut short): the caller must then look another way.
    pub named: Option<bool>,
}

/// Reads the top-level members named in `keys` from a JSON object, skipping all others
/// without building them. Stops quietly at the first syntax error, keeping the members
/// read before it, so a truncated body still yields its leading fields. Anything but an
/// object gives an empty map. A member named twice keeps its last value.
pub fn top_level(body: &[u8], keys: &[&str]) -> Map<String, Value> {
    skim(body, keys, &[]).members
}

/// [`top_level`], and in the same pass whether any string of the body is one of `names`.
pub fn skim(body: &[u8], keys: &[&str], names: &[&str]) -> Skimmed {
    let mut out = Skimmed::default();
    let mut found = false;
    // No names (every reader but the recorder's): no table, no string looked at.
    let filter = (!names.is_empty()).then(|| NameFilter::new(names));
    let mut note = |s: &Key| {
        if !found && filter.as_ref().is_some_and(|f| f.may_be(s)) {
            found = names.iter().any(|n| s.is(n, <[u8]>::eq_ignore_ascii_case));
        }
    };
    let mut s = Skim { b: body, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return out;
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let Some(key) = s.key() else { return out };
            note(&key);
            let wanted = keys.iter().find(|k| key.is(k, |a, b| a == b)).copied();
            s.ws();
            let start = s.i;
            if s.value_noting(&mut note).is_none() {
                return out;
            }
            if let Some(name) = wanted {
                match serde_json::from_slice::<Value>(&body[start..s.i]) {
                    Ok(value) => {
                        out.members.insert(name.to_owned(), value);
                    }
                    Err(_) => return out,
                }
            }
            s.ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return out,
            }
        }
    }
    s.ws();
    if s.i == body.len() {
        out.named = Some(found);
    }
    out
}

/// Which lengths the names looked for have, by the byte they start with: most strings of a
/// body are passed over by one lookup, without comparing them with each name. (A table of
/// first bytes and one of lengths, separately, let through every six-letter string beginning
/// with `s` — "system", "status", "string" — and every "content"; a quarter of the skim.)
struct NameFilter {
    /// For each first byte (in either case): bit `n` set when a name of `n` bytes starts with
    /// it; bit 63 for names of 63 bytes or more.
    lengths_by_first: [u64; 256],
    longest: usize,
}

impl NameFilter {
    fn new(names: &[&str]) -> NameFilter {
        let mut filter = NameFilter { lengths_by_first: [0; 256], longest: 0 };
        for name in names {
            let (Some(&first), len) = (name.as_bytes().first(), name.len()) else { continue };
            for first in [first.to_ascii_lowercase(), first.to_ascii_uppercase()] {
                filter.lengths_by_first[usize::from(first)] |= 1 << len.min(63);
            }
            filter.longest = filter.longest.max(len);
        }
        filter
    }

    /// Whether `s` could be one of the names. An escaped string is decoded before comparing,
    /// so only its raw length's upper bound (`\uXXXX` per byte) is known here.
    fn may_be(&self, s: &Key) -> bool {
        let Some(&first) = s.raw.first() else { return false };
        let lengths = self.lengths_by_first[usize::from(first)];
        if s.escaped {
            s.raw.len() <= self.longest * 6 && (first == b'\\' || lengths != 0)
        } else {
            lengths & (1 << s.raw.len().min(63)) != 0
        }
    }
}

/// A string (a member name or a value) as it stands in the body: its raw bytes between the
/// quotes, and whether they hold an escape (then it is decoded before comparing).
struct Key<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl Key<'_> {
    fn decoded(&self) -> Option<String> {
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice(&quoted).ok()
    }

    /// Whether the string is `name`, compared by `same` (exactly, or ignoring ASCII case).
    fn is(&self, name: &str, same: impl Fn(&[u8], &[u8]) -> bool) -> bool {
        if !self.escaped {
            return same(self.raw, name.as_bytes());
        }
        // Every escape stands for at least a sixth of its length in bytes: a raw string more
        // than six times longer than `name` cannot decode to it (and is not decoded).
        self.raw.len() <= name.len() * 6 && self.decoded().is_some_and(|s| same(s.as_bytes(), name.as_bytes()))
    }
}

/// The walk: bytes and the position of the next unread one.
struct Skim<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Skim<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// Past the string whose opening quote is at the position: its raw contents.
    fn string(&mut self) -> Option<Key<'a>> {
        let start = self.i + 1;
        let mut at = start;
        let mut escaped = false;
        loop {
            let found = at + memchr2(b'"', b'\\', self.b.get(at..)?)?;
            if self.b[found] == b'\\' {
                escaped = true;
                at = found + 2;
            } else {
                self.i = found + 1;
                return Some(Key { raw: &self.b[start..found], escaped });
            }
        }
    }

    /// A member name and the colon after it.
    fn key(&mut self) -> Option<Key<'a>> {
        if self.peek()? != b'"' {
            return None;
        }
        let key = self.string()?;
        self.ws();
        (self.peek()? == b':').then(|| {
            self.i += 1;
            key
        })
    }

    /// Past one value of any kind, showing `note` every string inside it.
    fn value_noting(&mut self, note: &mut dyn FnMut(&Key)) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|s| note(&s)),
            b'{' | b'[' => self.container(note),
            b'}' | b']' | b',' | b':' => None,
            _ => {
                // A number or literal: up to the next delimiter.
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'{' | b'[' | b':') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Past an object or array (nested to any depth, without recursion), showing `note` every
    /// string in it (member names and values).
    fn container(&mut self, note: &mut dyn FnMut(&Key)) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    note(&self.string()?);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn top_level_reads_wanted_keys_only() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi \"there\""}],"model":"m","n":{"x":[1,2]},"stream":true}"#;
        let got = top_level(body, &["model", "stream", "absent"]);
        assert_eq!(Value::Object(got), json!({"model":"m","stream":true}));
    }

    #[test]
    fn top_level_keeps_fields_before_a_cut() {
        let body = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"a long prom"#;
        let got = top_level(body, &["model", "stream", "messages"]);
        assert_eq!(Value::Object(got), json!({"model":"gpt-4o","stream":true}));
        // Cut inside an escape, inside a skipped value, and right after a key.
        for body in [&br#"{"model":"m","x":"ab\"#[..], br#"{"model":"m","x":[{"a":1},"#, br#"{"model":"m","x""#] {
            assert_eq!(Value::Object(top_level(body, &["model", "x"])), json!({"model":"m"}));
        }
    }

    #[test]
    fn top_level_of_non_objects_is_empty() {
        for body in [&b""[..], b"[1,2]", b"\"model\"", b"null", b"\xFF\xFE", b"{\"model\":\"a\xFFb\"}", b"{}", b"{ }"] {
            assert!(top_level(body, &["model"]).is_empty());
        }
        // Escaped keys still match.
        assert_eq!(top_level(br#"{"mod\u0065l":"x"}"#, &["model"]).len(), 1);
    }

    #[test]
    fn top_level_agrees_with_serde_on_whitespace_and_values_of_every_kind() {
        let body = b" {\n \"a\" : [ 1, {\"b\": [true, null]}, \"]}\" ] ,\t\"model\":\"m\", \"n\": -1.5e3, \"t\": false,\r\n \"o\": {} }";
        let got = top_level(body, &["model", "n", "t", "o", "a"]);
        let mut whole: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(Value::Object(got), whole.take());
    }

    #[test]
    fn top_level_stops_at_a_syntax_error() {
        assert_eq!(
            Value::Object(top_level(br#"{"model":"m" "stream":true}"#, &["model", "stream"])),
            json!({"model":"m"})
        );
        assert_eq!(
            Value::Object(top_level(br#"{"model":"m",,"stream":true}"#, &["model", "stream"])),
            json!({"model":"m"})
        );
        assert_eq!(
            Value::Object(top_level(br#"{"model":"m","stream":tru}"#, &["model", "stream"])),
            json!({"model":"m"})
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut body = b"{\"model\":\"m\",\"x\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        assert_eq!(Value::Object(top_level(&body, &["model", "x"])), json!({"model":"m"}));
        let mut body = b"{\"x\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(b"],\"model\":\"m\"}");
        assert!(top_level(&body, &["model"]).is_empty());
        // Deep but balanced: skipped without recursion, and what follows is read.
        let mut body = b"{\"x\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.extend(b",\"model\":\"m\"}");
        assert_eq!(Value::Object(top_level(&body, &["model"])), json!({"model":"m"}));
    }

    #[test]
    fn names_are_found_in_any_string_at_any_depth() {
        let names = ["api_key", "password"];
        let named = |body: &[u8]| skim(body, &[], &names).named;
        assert_eq!(named(br#"{"a":[{"b":{"API_KEY" : "x"}}]}"#), Some(true));
        assert_eq!(named(br#"{"a":"password"}"#), Some(true));
        assert_eq!(named(br#"{"a":["x", {"pass\u0077ord":1}]}"#), Some(true));
        assert_eq!(named(br#"{"api_key":1}"#), Some(true));
        assert_eq!(named(br#"{"a":"my password is","b":{"api_keys":2}}"#), Some(false));
        assert_eq!(named(b"{}"), Some(false));
        // Not one whole object: unknown.
        for body in
            [&br#"{"a":"x"#[..], br#"{"a":1} {"password":2}"#, b"api_key=1", br#"[{"password":1}]"#, br#"{"a" 1}"#]
        {
            assert_eq!(named(body), None, "{}", String::from_utf8_lossy(body));
        }
        // The wanted members come in the same pass.
        let got = skim(br#"{"model":"m","password":"p"}"#, &["model"], &names);
        assert_eq!((Value::Object(got.members), got.named), (json!({"model":"m"}), Some(true)));
    }
}
