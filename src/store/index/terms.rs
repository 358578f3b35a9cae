//! What a span is indexed under: one 64-bit term per (field, value) it can be found by.
//!
//! A term is the FNV-1a hash of a field tag and the value's bytes, so every field shares one
//! posting space and a term costs 8 bytes whatever the value's length. Two values may share a
//! hash: the query checks every span it reads against the filter itself, so a collision costs a
//! read, never a wrong answer. Durations and costs are indexed by power-of-two bucket, so a
//! `min_duration_ms` or `min_cost_usd` filter reads the few buckets at or above its own.

use crate::model::ids::TraceId;
use crate::model::span::{Span, SpanStatus};

/// The fields a span is indexed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    Trace = 1,
    Team = 2,
    User = 3,
    Model = 4,
    Provider = 5,
    Status = 6,
    Session = 7,
    /// `name=value` of a property.
    Property = 8,
    /// log2 of the duration in microseconds.
    DurationBucket = 9,
    /// log2 of the cost in nano-dollars.
    CostBucket = 10,
}

/// The term of `field` = `value`.
pub fn term(field: Field, value: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(field as u8).chain(value.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys; one more round of mixing spreads them.
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^ (hash >> 32)
}

pub fn trace_term(trace_id: &TraceId) -> u64 {
    term(Field::Trace, &trace_id.0)
}

pub fn property_term(name: &str, value: &str) -> u64 {
    let mut bytes = Vec::with_capacity(name.len() + value.len() + 1);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    term(Field::Property, &bytes)
}

pub fn status_term(status: SpanStatus) -> u64 {
    term(Field::Status, status.as_str().as_bytes())
}

/// Buckets are 0..=63; a duration under a microsecond, or a cost under a nano-dollar, is 0.
pub const BUCKETS: u8 = 64;

pub fn duration_bucket(duration_ms: f64) -> u8 {
    log2_bucket(duration_ms * 1000.0)
}

pub fn cost_bucket(cost_usd: f64) -> u8 {
    log2_bucket(cost_usd * 1e9)
}

fn log2_bucket(value: f64) -> u8 {
    if value.is_nan() || value < 1.0 {
        return 0;
    }
    (value.log2().floor() as u64).min(u64::from(BUCKETS - 1)) as u8
}

/// The terms of every bucket at or above the one `min` falls in.
pub fn buckets_from(field: Field, first: u8) -> Vec<u64> {
    (first..BUCKETS).map(|b| term(field, &[b])).collect()
}

/// Every term `span` is found by (no repeats).
pub fn terms_of(span: &Span) -> Vec<u64> {
    let mut terms = Vec::with_capacity(10 + span.properties.len());
    terms.push(trace_term(&span.trace_id));
    for (field, value) in [
        (Field::Team, &span.team),
        (Field::User, &span.user),
        (Field::Session, &span.session),
        (Field::Provider, &span.provider),
        (Field::Model, &span.request_model),
    ] {
        if let Some(v) = value {
            terms.push(term(field, v.as_bytes()));
        }
    }
    if let Some(m) = &span.response_model {
        if span.request_model.as_ref() != Some(m) {
            terms.push(term(Field::Model, m.as_bytes()));
        }
    }
    terms.push(status_term(span.status));
    for (name, value) in &span.properties {
        terms.push(property_term(name, value));
    }
    terms.push(term(Field::DurationBucket, &[duration_bucket(span.duration_ms)]));
    if let Some(cost) = span.cost_usd {
        terms.push(term(Field::CostBucket, &[cost_bucket(cost)]));
    }
    terms.sort_unstable();
    terms.dedup();
    terms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::SpanId;
    use crate::model::span::SpanKind;

    #[test]
    fn terms_differ_by_field_and_value_and_are_stable() {
        assert_ne!(term(Field::Team, b"a"), term(Field::User, b"a"));
        assert_ne!(term(Field::Team, b"a"), term(Field::Team, b"b"));
        // Terms are stored on disk: the function must never change.
        assert_eq!(term(Field::Team, b""), 880_121_918_398_089_185);
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(duration_bucket(0.0), 0);
        assert_eq!(duration_bucket(f64::NAN), 0);
        assert_eq!(duration_bucket(1.0), 9, "1000 µs");
        assert_eq!(duration_bucket(2.0), 10);
        assert_eq!(duration_bucket(1e300), 63);
        assert_eq!(cost_bucket(0.000_001), 9, "1000 n$");
        assert_eq!(buckets_from(Field::CostBucket, 62).len(), 2);
    }

    #[test]
    fn a_span_is_found_by_each_of_its_fields_once() {
        let mut span = Span::new(TraceId([1; 16]), SpanId([2; 8]), SpanKind::Llm, "chat".into());
        span.team = Some("alpha".into());
        span.request_model = Some("gpt-4o".into());
        span.response_model = Some("gpt-4o".into());
        span.properties.insert("env".into(), "prod".into());
        let terms = terms_of(&span);
        for t in [
            trace_term(&span.trace_id),
            term(Field::Team, b"alpha"),
            term(Field::Model, b"gpt-4o"),
            property_term("env", "prod"),
            status_term(SpanStatus::Ok),
        ] {
            assert!(terms.contains(&t));
        }
        assert_eq!(terms.len(), 6, "trace, team, model (once), status, property, duration");
    }
}
