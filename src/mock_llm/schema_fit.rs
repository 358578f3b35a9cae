//! A JSON value that fits a JSON Schema: the answer to a structured-output request
//! (`response_format` / `text.format` of type `json_schema`).
//!
//! [`fit`] walks the schema the way the OpenAI SDKs write it from a Pydantic model or a Zod
//! schema, and answers the first, simplest thing each keyword allows:
//! - `const` → that value; `enum` → its first value;
//! - `$ref` → the schema it points at (`#`, `#/$defs/…`, `#/definitions/…`, any JSON pointer
//!   into the root); `anyOf` / `oneOf` → the first branch; `allOf` → its branches' objects
//!   merged;
//! - `type` (a name, or a list such as `["string", "null"]`: the first that is not `null`;
//!   without `type`, the keywords present tell it: `properties` → object, `items` → array, ...):
//!   `object` → every property of `properties` (and every `required` name), `array` →
//!   `minItems` items (at least one, at most `maxItems`; `prefixItems` first, then `items`),
//!   `string` → `"mock"` stretched or cut to `minLength` / `maxLength`, or a valid example of its
//!   `format` (`date-time`, `date`, `time`, `email`, `uuid`, `uri`, `hostname`, `ipv4`, `ipv6`,
//!   `duration`), `integer` → 1 and `number` → 1.5 moved inside `minimum` / `maximum` (and
//!   their exclusive forms), `boolean` → true, `null` → null;
//! - a schema that allows anything (`{}`, `true`, an unknown type, an unresolvable `$ref`) →
//!   `"mock"`; `false` → null.
//!
//! The answer is deterministic (the same schema always gives the same value) and bounded:
//! deeper than [`WIND_DOWN_DEPTH`] it takes the shortest way out (only required properties, no
//! optional array items, the `null` branch or type when there is one), so recursive schemas
//! end; deeper than [`MAX_DEPTH`], or after [`MAX_VALUES`] values, it answers null and adds no
//! more properties or items. Any JSON is accepted as a schema and nothing in it can make the
//! walk panic; what it cannot satisfy (`pattern`, `uniqueItems`, `not`, a required cycle
//! beyond the depth bound) is answered as well as the rules above allow.

use serde_json::{Map, Number, Value};

/// Nesting depth (of values and `$ref`s) from which the answer winds down to its shortest form.
pub(super) const WIND_DOWN_DEPTH: usize = 12;
/// Nesting depth beyond which every value is null.
pub(super) const MAX_DEPTH: usize = 48;
/// At most this many values in one answer; past half of it the answer winds down too.
pub(super) const MAX_VALUES: usize = 2_000;
/// At most this many items in one array, whatever `minItems` says.
const MAX_ITEMS: u64 = 64;
/// At most this many characters in one string, whatever `minLength` says.
const MAX_STRING: u64 = 256;

/// What a schema that allows anything is answered with.
const ANYTHING: &str = "mock";

/// The schema that allows anything, for items and properties no schema describes.
static ANY_SCHEMA: Value = Value::Bool(true);

/// A value that fits `schema` (see the module doc for the rules and bounds).
pub(super) fn fit(schema: &Value) -> Value {
    Fitter { root: schema, values: 0 }.value(schema, 0)
}

struct Fitter<'a> {
    root: &'a Value,
    /// Values produced so far.
    values: usize,
}

impl<'a> Fitter<'a> {
    fn value(&mut self, schema: &'a Value, depth: usize) -> Value {
        self.values += 1;
        if depth > MAX_DEPTH || self.values > MAX_VALUES {
            return Value::Null;
        }
        let s = match schema {
            Value::Object(s) => s,
            Value::Bool(false) => return Value::Null,
            _ => return Value::from(ANYTHING),
        };
        if let Some(value) = s.get("const") {
            return value.clone();
        }
        if let Some(first) = s.get("enum").and_then(Value::as_array).and_then(|values| values.first()) {
            return first.clone();
        }
        if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
            return match self.resolve(reference) {
                Some(target) => self.value(target, depth + 1),
                None => Value::from(ANYTHING),
            };
        }
        let winding = self.winding(depth);
        for key in ["anyOf", "oneOf"] {
            if let Some(branch) = s.get(key).and_then(Value::as_array).and_then(|b| choose_branch(b, winding)) {
                return self.value(branch, depth + 1);
            }
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array).filter(|p| !p.is_empty()) {
            return self.all_of(parts, depth);
        }
        match kind(s, winding) {
            Some("object") => self.object(s, depth, winding),
            Some("array") => self.array(s, depth, winding),
            Some("string") => string(s),
            Some("integer") => integer(s),
            Some("number") => number(s),
            Some("boolean") => Value::Bool(true),
            Some("null") => Value::Null,
            _ => Value::from(ANYTHING),
        }
    }

    fn winding(&self, depth: usize) -> bool {
        depth >= WIND_DOWN_DEPTH || self.values > MAX_VALUES / 2
    }

    /// A local reference: `#` or `#/json/pointer` into the root schema.
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    /// Every branch answered; objects merged (the first branch naming a property wins), else
    /// the first branch's answer.
    fn all_of(&mut self, parts: &'a [Value], depth: usize) -> Value {
        let mut answers = parts.iter().map(|part| self.value(part, depth + 1)).collect::<Vec<_>>();
        if !answers.iter().all(Value::is_object) {
            return answers.swap_remove(0);
        }
        let mut merged = Map::new();
        for answer in answers {
            if let Value::Object(members) = answer {
                for (name, value) in members {
                    merged.entry(name).or_insert(value);
                }
            }
        }
        Value::Object(merged)
    }

    fn object(&mut self, s: &'a Map<String, Value>, depth: usize, winding: bool) -> Value {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |r| r.iter().filter_map(Value::as_str).collect());
        let mut out = Map::new();
        if let Some(properties) = s.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                if self.values >= MAX_VALUES {
                    break;
                }
                if winding && !required.contains(&name.as_str()) {
                    continue;
                }
                let value = self.value(property, depth + 1);
                out.insert(name.clone(), value);
            }
        }
        // Required names `properties` does not describe take `additionalProperties`' schema.
        let extra = s.get("additionalProperties").filter(|a| a.is_object()).unwrap_or(&ANY_SCHEMA);
        for name in required {
            if self.values >= MAX_VALUES {
                break;
            }
            if !out.contains_key(name) {
                let value = self.value(extra, depth + 1);
                out.insert(name.to_owned(), value);
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, s: &'a Map<String, Value>, depth: usize, winding: bool) -> Value {
        // `prefixItems` (2020-12), or `items` as a list (draft 4 to 2019-09 tuples).
        let (prefix, rest): (&[Value], Option<&Value>) = match (s.get("prefixItems"), s.get("items")) {
            (Some(Value::Array(prefix)), rest) => (prefix, rest),
            (_, Some(Value::Array(prefix))) => (prefix, s.get("additionalItems")),
            (_, rest) => (&[], rest),
        };
        let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = s.get("maxItems").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let wanted = if winding { min } else { min.max(1).max(prefix.len() as u64) };
        let count = wanted.min(max).min(MAX_ITEMS) as usize;
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            if self.values >= MAX_VALUES {
                break;
            }
            let schema = match prefix.get(i) {
                Some(schema) => schema,
                None => match rest {
                    Some(Value::Bool(false)) => break,
                    Some(schema) => schema,
                    None => &ANY_SCHEMA,
                },
            };
            items.push(self.value(schema, depth + 1));
        }
        Value::Array(items)
    }
}

/// The `anyOf` / `oneOf` branch to answer: the first; when winding down, the first that ends
/// the nesting (a `null` type, or at least no `$ref`), if any.
fn choose_branch(branches: &[Value], winding: bool) -> Option<&Value> {
    if winding {
        let is_null = |b: &&Value| b.get("type").and_then(Value::as_str) == Some("null");
        let no_ref = |b: &&Value| b.get("$ref").is_none();
        if let Some(branch) = branches.iter().find(is_null).or_else(|| branches.iter().find(no_ref)) {
            return Some(branch);
        }
    }
    branches.first()
}

/// The type to answer: `type` itself, the first non-null of a list (null when winding down and
/// allowed), or what the keywords present imply.
fn kind(s: &Map<String, Value>, winding: bool) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(kind)) => return Some(kind),
        Some(Value::Array(kinds)) => {
            let kinds: Vec<&str> = kinds.iter().filter_map(Value::as_str).collect();
            let nullable = kinds.contains(&"null");
            if let Some(&kind) = kinds.iter().find(|k| **k != "null").filter(|_| !(winding && nullable)) {
                return Some(kind);
            }
            if nullable {
                return Some("null");
            }
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if has(&["properties", "required", "additionalProperties", "patternProperties", "minProperties"]) {
        Some("object")
    } else if has(&["items", "prefixItems", "minItems", "maxItems", "contains"]) {
        Some("array")
    } else if has(&["minLength", "maxLength", "pattern", "format"]) {
        Some("string")
    } else if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"]) {
        Some("number")
    } else {
        None
    }
}

fn string(s: &Map<String, Value>) -> Value {
    let example = match s.get("format").and_then(Value::as_str).unwrap_or("") {
        "date-time" => "2024-01-01T00:00:00Z",
        "date" => "2024-01-01",
        "time" => "12:00:00Z",
        "email" | "idn-email" => "mock@example.com",
        "uuid" => "00000000-0000-4000-8000-000000000000",
        "uri" | "url" | "iri" | "uri-reference" | "iri-reference" => "https://example.com/",
        "hostname" | "idn-hostname" => "example.com",
        "ipv4" => "192.0.2.1",
        "ipv6" => "2001:db8::1",
        "duration" => "PT1M",
        _ => "",
    };
    if !example.is_empty() {
        return Value::from(example);
    }
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0).min(MAX_STRING) as usize;
    let max = s.get("maxLength").and_then(Value::as_u64).unwrap_or(u64::MAX).min(MAX_STRING) as usize;
    let len = ANYTHING.len().max(min).min(max);
    // "mock", or "mock mock mo…" up to `minLength`: ASCII, so bytes are characters.
    Value::from(ANYTHING.chars().chain(" mock".chars().cycle()).take(len).collect::<String>())
}

/// The bounds of a number schema: (lowest, highest, exclusive low, exclusive high).
fn bounds(s: &Map<String, Value>) -> (f64, f64, bool, bool) {
    let get = |key: &str| s.get(key).and_then(Value::as_f64);
    // Draft 4 wrote exclusiveness as booleans beside minimum / maximum.
    let flag = |key: &str| s.get(key).and_then(Value::as_bool).unwrap_or(false);
    let (low, low_open) = match (get("exclusiveMinimum"), get("minimum")) {
        (Some(x), Some(m)) if m > x => (m, false),
        (Some(x), _) => (x, true),
        (None, Some(m)) => (m, flag("exclusiveMinimum")),
        (None, None) => (f64::NEG_INFINITY, false),
    };
    let (high, high_open) = match (get("exclusiveMaximum"), get("maximum")) {
        (Some(x), Some(m)) if m < x => (m, false),
        (Some(x), _) => (x, true),
        (None, Some(m)) => (m, flag("exclusiveMaximum")),
        (None, None) => (f64::INFINITY, false),
    };
    (low, high, low_open, high_open)
}

/// 1, or the nearest integer inside the bounds (and a multiple of an integer `multipleOf`).
fn integer(s: &Map<String, Value>) -> Value {
    let (low, high, low_open, high_open) = bounds(s);
    let low = if low_open { low.floor() + 1.0 } else { low.ceil() };
    let high = if high_open { high.ceil() - 1.0 } else { high.floor() };
    let mut n = 1f64.max(low).min(high);
    if let Some(step) = s.get("multipleOf").and_then(Value::as_f64).filter(|m| *m >= 1.0 && m.fract() == 0.0) {
        let up = (n / step).ceil() * step;
        n = if up <= high { up } else { (n / step).floor() * step };
    }
    // `as` saturates at the ends of i64.
    Value::from(n as i64)
}

/// 1.5, or a number inside the bounds.
fn number(s: &Map<String, Value>) -> Value {
    let (low, high, low_open, high_open) = bounds(s);
    let inside = |x: f64| (x > low || (!low_open && x == low)) && (x < high || (!high_open && x == high));
    let n = if inside(1.5) {
        1.5
    } else if low.is_finite() && high.is_finite() {
        low / 2.0 + high / 2.0
    } else if low.is_finite() {
        if low_open {
            low + 1.0
        } else {
            low
        }
    } else if high_open {
        high - 1.0
    } else {
        high
    };
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pydantic_schema_gets_every_field_with_its_type() {
        // What the openai SDK sends for a Pydantic model (nested model, enum, Literal, list,
        // Optional), strict mode.
        let schema = json!({
            "$defs": {
                "Address": {
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    "required": ["street", "city"], "type": "object", "additionalProperties": false,
                },
                "Priority": {"enum": ["low", "high"], "type": "string"},
            },
            "properties": {
                "title": {"type": "string"},
                "count": {"type": "integer"},
                "score": {"type": "number"},
                "urgent": {"type": "boolean"},
                "priority": {"$ref": "#/$defs/Priority"},
                "kind": {"enum": ["bug", "feature"], "type": "string"},
                "tags": {"items": {"type": "string"}, "type": "array"},
                "address": {"$ref": "#/$defs/Address"},
                "history": {"items": {"$ref": "#/$defs/Address"}, "type": "array"},
                "assignee": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["title", "count", "score", "urgent", "priority", "kind", "tags", "address", "history", "assignee"],
            "type": "object", "additionalProperties": false,
        });
        let address = json!({"street": "mock", "city": "mock"});
        assert_eq!(
            fit(&schema),
            json!({
                "title": "mock", "count": 1, "score": 1.5, "urgent": true, "priority": "low", "kind": "bug",
                "tags": ["mock"], "address": address, "history": [address], "assignee": "mock",
            })
        );
        assert_eq!(fit(&schema), fit(&schema), "deterministic");
    }

    #[test]
    fn keywords_pick_their_simplest_fitting_value() {
        let cases = [
            (json!({"const": {"a": [1]}}), json!({"a": [1]})),
            (json!({"type": "string", "enum": [7, "x"]}), json!(7)),
            (json!({"oneOf": [{"type": "integer"}, {"type": "string"}]}), json!(1)),
            (json!({"type": ["null", "boolean"]}), json!(true)),
            (json!({"type": "null"}), json!(null)),
            (json!({"type": "string", "minLength": 10}), json!("mock mock ")),
            (json!({"type": "string", "maxLength": 2}), json!("mo")),
            (json!({"type": "array", "items": {"type": "integer"}, "minItems": 3}), json!([1, 1, 1])),
            (json!({"type": "array", "maxItems": 0}), json!([])),
            (json!({"prefixItems": [{"type": "boolean"}, {"const": 2}], "items": false}), json!([true, 2])),
            (json!({"items": [{"type": "null"}], "additionalItems": false, "minItems": 3}), json!([null])),
            (json!({"required": ["x"]}), json!({"x": "mock"})),
            (
                json!({"type": "object", "required": ["n"], "additionalProperties": {"type": "integer"}}),
                json!({"n": 1}),
            ),
            (
                json!({"allOf": [{"properties": {"a": {"const": 1}}}, {"properties": {"a": {"const": 2}, "b": {"const": 3}}}]}),
                json!({"a": 1, "b": 3}),
            ),
            (json!({"$ref": "#/definitions/n", "definitions": {"n": {"type": "number"}}}), json!(1.5)),
            (json!({}), json!("mock")),
            (json!(true), json!("mock")),
            (json!(false), json!(null)),
            (json!({"type": "no-such-type"}), json!("mock")),
            (json!({"$ref": "https://example.com/elsewhere"}), json!("mock")),
            (json!({"$ref": "#/$defs/missing"}), json!("mock")),
        ];
        for (schema, expected) in cases {
            assert_eq!(fit(&schema), expected, "{schema}");
        }
    }

    #[test]
    fn string_formats_are_valid_examples() {
        let value = |format: &str| fit(&json!({"type": "string", "format": format})).as_str().unwrap().to_owned();
        assert_eq!(value("date-time"), "2024-01-01T00:00:00Z");
        assert_eq!(value("date"), "2024-01-01");
        assert!(value("email").contains('@'));
        let uuid = value("uuid");
        assert_eq!((uuid.len(), uuid.matches('-').count(), &uuid[14..15]), (36, 4, "4"), "a version-4 UUID");
        assert!(value("uri").starts_with("https://"));
        assert_eq!(value("no-such-format"), "mock");
    }

    #[test]
    fn numbers_move_inside_their_bounds() {
        let cases = [
            (json!({"type": "integer", "minimum": 5}), json!(5)),
            (json!({"type": "integer", "exclusiveMinimum": 5}), json!(6)),
            (json!({"type": "integer", "maximum": -3}), json!(-3)),
            (json!({"type": "integer", "exclusiveMaximum": 0}), json!(-1)),
            (json!({"type": "integer", "minimum": 10, "multipleOf": 4}), json!(12)),
            (json!({"type": "integer", "minimum": 2.5, "maximum": 2.7}), json!(2)),
            (json!({"type": "integer", "minimum": 1e300}), json!(i64::MAX)),
            (json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1}), json!(0.5)),
            (json!({"type": "number", "minimum": 2}), json!(2.0)),
            (json!({"type": "number", "exclusiveMaximum": 1.5}), json!(0.5)),
            (json!({"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1}), json!(0.5)),
            (json!({"type": "number", "minimum": -1.7e308, "maximum": 1.7e308, "multipleOf": 0}), json!(1.5)),
        ];
        for (schema, expected) in cases {
            assert_eq!(fit(&schema), expected, "{schema}");
        }
    }

    #[test]
    fn recursive_schemas_end() {
        // A tree whose children are optional, and a list whose `next` is required and
        // nullable: both wind down to their shortest form.
        let tree = json!({
            "$ref": "#/$defs/Node",
            "$defs": {"Node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                "required": ["name", "children"],
            }},
        });
        let value = fit(&tree);
        let mut depth = 0;
        let mut node = &value;
        while let Some(child) = node["children"].get(0) {
            depth += 1;
            node = child;
        }
        assert_eq!(node, &json!({"name": "mock", "children": []}));
        assert!((2..=WIND_DOWN_DEPTH).contains(&depth), "{depth}");

        let list = json!({"type": "object", "required": ["next"], "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}});
        let text = serde_json::to_string(&fit(&list)).unwrap();
        assert_eq!(text, r#"{"next":{"next":{"next":{"next":{"next":null}}}}}"#);

        // A required, non-null cycle cannot fit: it ends as null at the depth bound.
        let endless = json!({"type": "object", "required": ["me"], "properties": {"me": {"$ref": "#"}}});
        assert!(serde_json::to_string(&fit(&endless)).unwrap().contains("{\"me\":null}"));
        assert_eq!(fit(&json!({"$ref": "#"})), Value::Null, "a reference to itself alone");
    }

    #[test]
    fn answers_are_bounded() {
        // Wide: 100,000 required properties of a huge string each.
        let properties: Map<String, Value> =
            (0..100_000).map(|i| (format!("p{i}"), json!({"type": "string", "minLength": 1_000_000}))).collect();
        let required: Vec<String> = properties.keys().cloned().collect();
        let wide = json!({"type": "object", "properties": properties, "required": required});
        let text = serde_json::to_string(&fit(&wide)).unwrap();
        assert!(text.len() < MAX_VALUES * (MAX_STRING as usize + 16), "{}", text.len());
        // Deep: an array of arrays ... 10 levels of 64 items would be 64^10 values.
        let mut deep = json!({"type": "integer"});
        for _ in 0..10 {
            deep = json!({"type": "array", "items": deep, "minItems": 1_000_000});
        }
        let text = serde_json::to_string(&fit(&deep)).unwrap();
        assert!(text.len() < MAX_VALUES * 8, "{}", text.len());
    }

    #[test]
    fn any_json_is_a_schema_and_none_panics() {
        let odd = [
            json!(null),
            json!(3),
            json!("string"),
            json!([1, 2]),
            json!({"type": 3, "properties": [], "required": "x", "items": 7, "minItems": -1}),
            json!({"anyOf": [], "oneOf": "x", "allOf": [1, {"type": "string"}]}),
            json!({"allOf": []}),
            json!({"$ref": "#/~2/\u{0}", "enum": []}),
            json!({"$ref": 5, "type": ["null"]}),
            json!({"type": [], "minLength": "x"}),
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
            json!({"type": "integer", "multipleOf": 1e300, "minimum": 1}),
            json!({"type": "number", "exclusiveMinimum": 1e308, "exclusiveMaximum": -1e308}),
        ];
        for schema in odd {
            let value = fit(&schema);
            assert!(serde_json::to_string(&value).is_ok(), "{schema}");
        }
    }
}
