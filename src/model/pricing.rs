//! Prices: which `[pricing."model"]` entry applies to a model, and what a call cost.
//!
//! A model is matched exactly, then by the longest configured prefix, so a dated snapshot such
//! as `gpt-4o-mini-2024-07-18` finds `gpt-4o-mini`. Cached input is billed at
//! `cached_input_per_mtok` and cache writes at `cache_write_per_mtok` when those are set,
//! otherwise at the plain input price.

use std::collections::BTreeMap;

/// USD per million tokens of one model (`[pricing."model"]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
}

/// The token counts a price is applied to. `input_tokens` includes cached and cache-write tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BilledTokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

/// The price entry for `model`: exact match, else the longest prefix match.
pub fn price_for<'a>(table: &'a BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
    if let Some(price) = table.get(model) {
        return Some(price);
    }
    table
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| price)
}

/// Cost in USD of one call at `price`.
pub fn cost_usd(price: &Price, tokens: BilledTokens) -> f64 {
    let cached = tokens.cache_read_input_tokens.min(tokens.input_tokens);
    let written = tokens.cache_creation_input_tokens.min(tokens.input_tokens - cached);
    let plain = tokens.input_tokens - cached - written;
    let per_token = |per_mtok: f64| per_mtok / 1_000_000.0;
    plain as f64 * per_token(price.input_per_mtok)
        + cached as f64 * per_token(price.cached_input_per_mtok.unwrap_or(price.input_per_mtok))
        + written as f64 * per_token(price.cache_write_per_mtok.unwrap_or(price.input_per_mtok))
        + tokens.output_tokens as f64 * per_token(price.output_per_mtok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BTreeMap<String, Price> {
        let p = |i, o| Price {
            input_per_mtok: i,
            output_per_mtok: o,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
        };
        BTreeMap::from([("gpt-4o".to_string(), p(2.5, 10.0)), ("gpt-4o-mini".to_string(), p(0.15, 0.6))])
    }

    #[test]
    fn exact_then_longest_prefix() {
        let t = table();
        assert_eq!(price_for(&t, "gpt-4o").unwrap().input_per_mtok, 2.5);
        assert_eq!(price_for(&t, "gpt-4o-mini-2024-07-18").unwrap().input_per_mtok, 0.15);
        assert_eq!(price_for(&t, "gpt-4o-2024-08-06").unwrap().input_per_mtok, 2.5);
        assert!(price_for(&t, "claude-3-5-haiku").is_none());
    }

    #[test]
    fn cost_splits_cached_input() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: Some(0.5),
            cache_write_per_mtok: Some(2.5),
        };
        let tokens = BilledTokens {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cache_read_input_tokens: 400_000,
            cache_creation_input_tokens: 100_000,
        };
        let expected = 0.5 * 2.0 + 0.4 * 0.5 + 0.1 * 2.5 + 0.5 * 8.0;
        assert!((cost_usd(&price, tokens) - expected).abs() < 1e-12);
    }
}
