//! The usage ledger: per (UTC day, team, user, provider, model) counters of requests, tokens,
//! cost and errors; how a cell's key and counters are stored. The grouped reports built from
//! it (`/api/usage`, `tracegate usage`) are admin's (`admin::usage_report`).
//!
//! The recorder folds every proxied span into the ledger in the same atomic sled batch that
//! stores the span, so the ledger always equals the sum over the stored spans, and survives
//! restarts with them.

use serde::{Deserialize, Serialize};

use crate::model::span::{Span, SpanKind, SpanStatus};

/// One ledger cell's identity. Empty strings stand for "not attributed" / "unknown".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerKey {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    pub team: String,
    pub user: String,
    pub provider: String,
    pub model: String,
}

/// One ledger cell's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub errors: u64,
}

impl LedgerRow {
    pub fn add(&mut self, other: &LedgerRow) {
        self.requests += other.requests;
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
        self.errors += other.errors;
    }
}

const SEPARATOR: u8 = 0;

impl LedgerKey {
    /// The ledger cell a proxied span belongs to (`None` for ingested application spans).
    pub fn of(span: &Span) -> Option<LedgerKey> {
        if span.kind != SpanKind::Llm {
            return None;
        }
        let clean = |s: &Option<String>| s.as_deref().unwrap_or("").replace('\0', "");
        Some(LedgerKey {
            day: (span.start_time_unix_nano / 86_400_000_000_000) as u32,
            team: clean(&span.team),
            user: clean(&span.user),
            provider: clean(&span.provider),
            model: clean(&span.response_model.clone().or_else(|| span.request_model.clone())),
        })
    }

    /// Store key: `prefix ‖ day(4) ‖ team 0 user 0 provider 0 model`.
    pub fn encode(&self, prefix: u8) -> Vec<u8> {
        let mut key =
            Vec::with_capacity(8 + self.team.len() + self.user.len() + self.provider.len() + self.model.len());
        key.push(prefix);
        key.extend_from_slice(&self.day.to_be_bytes());
        for (i, part) in [&self.team, &self.user, &self.provider, &self.model].into_iter().enumerate() {
            if i > 0 {
                key.push(SEPARATOR);
            }
            key.extend_from_slice(part.as_bytes());
        }
        key
    }

    pub fn decode(key: &[u8]) -> Option<LedgerKey> {
        let day = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?);
        let mut parts = key[5..].split(|b| *b == SEPARATOR).map(|p| String::from_utf8_lossy(p).into_owned());
        Some(LedgerKey { day, team: parts.next()?, user: parts.next()?, provider: parts.next()?, model: parts.next()? })
    }
}

impl LedgerRow {
    /// The counters one span adds.
    pub fn of(span: &Span) -> LedgerRow {
        LedgerRow {
            requests: 1,
            input_tokens: span.input_tokens.unwrap_or(0),
            output_tokens: span.output_tokens.unwrap_or(0),
            cost_usd: span.cost_usd.unwrap_or(0.0),
            errors: u64::from(span.status == SpanStatus::Error),
        }
    }
}

/// A cell of provider `openai` with no user, for tests here and in the usage reports.
#[cfg(test)]
pub(crate) fn test_key(day: u32, team: &str, model: &str) -> LedgerKey {
    LedgerKey { day, team: team.into(), user: String::new(), provider: "openai".into(), model: model.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_key as key;

    #[test]
    fn keys_round_trip() {
        let k = key(20_000, "search", "gpt-4o");
        assert_eq!(LedgerKey::decode(&k.encode(b'L')), Some(k));
        let empty = key(1, "", "");
        assert_eq!(LedgerKey::decode(&empty.encode(b'L')), Some(empty));
    }
}
