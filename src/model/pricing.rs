//! Prices: which price applies to a model, where it came from, and what a call cost.
//!
//! Two sources: the config's `[pricing."model"]` entries and the built-in catalog compiled into
//! the binary ([`catalog`], dated). A model takes the entry that names it most closely: exactly,
//! else the longest prefix (a dated snapshot such as `gpt-4o-mini-2024-07-18` finds
//! `gpt-4o-mini`), looking at both sources at once; where both have that same entry, the
//! config's wins. So a config entry for a retired family (`claude-opus-4`) cannot swallow newer
//! models the catalog lists (`claude-opus-4-5`), and `tracegate prices MODEL` shows which entry
//! applied. A model with no match under its own name is tried without a router's vendor part
//! (`openai/gpt-4o`), then without a Bedrock cross-region prefix (`us.anthropic.claude-…`).
//!
//! Cached input is billed at `cached_input_per_mtok`, cache writes at `cache_write_per_mtok`,
//! reasoning tokens (inside the output) at `reasoning_per_mtok`, each when set, otherwise at the
//! plain input or output price.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// USD per million tokens of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
    pub reasoning_per_mtok: Option<f64>,
}

/// The token counts a price is applied to. `input_tokens` includes cached and cache-write
/// tokens; `output_tokens` includes reasoning tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BilledTokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Where a price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceSource {
    /// `[pricing."…"]` in the config.
    Config,
    /// The built-in catalog.
    Catalog,
}

impl PriceSource {
    pub fn describe(self) -> String {
        match self {
            PriceSource::Config => "config [pricing]".into(),
            PriceSource::Catalog => format!("built-in catalog, dated {}", catalog().dated),
        }
    }
}

/// The price that applies to a model: the entry it matched (`key`) and its source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceMatch<'a> {
    pub key: &'a str,
    pub price: &'a Price,
    pub source: PriceSource,
}

/// The config's prices in front of the built-in catalog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceBook {
    overrides: BTreeMap<String, Price>,
}

impl PriceBook {
    pub fn new(overrides: BTreeMap<String, Price>) -> PriceBook {
        PriceBook { overrides }
    }

    /// The config's own entries.
    pub fn overrides(&self) -> &BTreeMap<String, Price> {
        &self.overrides
    }

    /// The price for `model`, or `None` when neither source knows it.
    pub fn lookup(&self, model: &str) -> Option<PriceMatch<'_>> {
        let catalog = &catalog().prices;
        names_to_try(model).find_map(|name| {
            longest_match(name, |prefix| match self.overrides.get_key_value(prefix) {
                Some((key, price)) => Some(PriceMatch { key, price, source: PriceSource::Config }),
                None => catalog.get_key_value(prefix).map(|(key, price)| PriceMatch {
                    key,
                    price,
                    source: PriceSource::Catalog,
                }),
            })
        })
    }

    /// What `model` cost for `tokens`, or `None` when it has no price.
    pub fn cost_usd(&self, model: &str, tokens: BilledTokens) -> Option<f64> {
        self.lookup(model).map(|m| cost_usd(m.price, tokens))
    }
}

/// Bedrock's cross-region inference profiles put a geography before the model id.
const BEDROCK_REGION_PREFIXES: &[&str] = &["global.", "us.", "us-gov.", "eu.", "apac.", "au.", "jp.", "ca.", "in."];

/// `model` itself, then without a router's `vendor/` part (or a Bedrock ARN's
/// `arn:aws:bedrock:…:inference-profile/`), then either without a Bedrock region.
fn names_to_try(model: &str) -> impl Iterator<Item = &str> {
    let unrouted = model.rsplit_once('/').map(|(_, m)| m).filter(|m| !m.is_empty());
    fn unregioned(name: &str) -> Option<&str> {
        BEDROCK_REGION_PREFIXES.iter().find_map(|p| name.strip_prefix(p))
    }
    let (bare, routed_bare) = (unregioned(model), unrouted.and_then(unregioned));
    std::iter::once(model).chain(unrouted).chain(bare).chain(routed_bare)
}

/// The entry for `name` (exact), else the one for its longest prefix: one look-up per
/// character boundary, longest first, so the cost does not grow with the catalog.
fn longest_match<'a, F>(name: &str, get: F) -> Option<PriceMatch<'a>>
where
    F: Fn(&str) -> Option<PriceMatch<'a>>,
{
    // Every non-empty prefix ending on a character boundary, longest first (no allocation:
    // this runs for every recorded call).
    (1..=name.len()).rev().filter(|&end| name.is_char_boundary(end)).find_map(|end| get(&name[..end]))
}

/// Cost in USD of one call at `price`.
pub fn cost_usd(price: &Price, tokens: BilledTokens) -> f64 {
    let cached = tokens.cache_read_input_tokens.min(tokens.input_tokens);
    let written = tokens.cache_creation_input_tokens.min(tokens.input_tokens - cached);
    let plain = tokens.input_tokens - cached - written;
    let reasoning = tokens.reasoning_tokens.min(tokens.output_tokens);
    let per_token = |per_mtok: f64| per_mtok / 1_000_000.0;
    plain as f64 * per_token(price.input_per_mtok)
        + cached as f64 * per_token(price.cached_input_per_mtok.unwrap_or(price.input_per_mtok))
        + written as f64 * per_token(price.cache_write_per_mtok.unwrap_or(price.input_per_mtok))
        + (tokens.output_tokens - reasoning) as f64 * per_token(price.output_per_mtok)
        + reasoning as f64 * per_token(price.reasoning_per_mtok.unwrap_or(price.output_per_mtok))
}

/// The built-in price catalog: `price_catalog.tsv`, compiled in and parsed on first use.
pub struct Catalog {
    /// The day the prices were taken (`YYYY-MM-DD`).
    pub dated: &'static str,
    /// Where the numbers come from.
    pub source: &'static str,
    pub prices: HashMap<&'static str, Price>,
}

/// The built-in catalog (parsed once).
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| parse_catalog(include_str!("price_catalog.tsv")))
}

/// Parses the catalog's text: `@dated`/`@source` lines, `#` comments, and one tab-separated
/// line per model (`model input output cached_input cache_write reasoning`, `-` for none).
/// A malformed line is skipped; a unit test checks that the shipped file has none.
fn parse_catalog(text: &'static str) -> Catalog {
    let mut catalog = Catalog { dated: "unknown", source: "unknown", prices: HashMap::new() };
    for line in text.lines() {
        if let Some(meta) = line.strip_prefix('@') {
            match meta.split_once('\t') {
                Some(("dated", value)) => catalog.dated = value,
                Some(("source", value)) => catalog.source = value,
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((model, price)) = parse_catalog_line(line) {
            catalog.prices.insert(model, price);
        }
    }
    catalog
}

fn parse_catalog_line(line: &'static str) -> Option<(&'static str, Price)> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [model, input, output, cached, write, reasoning] = fields.as_slice() else { return None };
    let number = |s: &str| s.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0);
    let optional = |s: &str| if s == "-" { Some(None) } else { number(s).map(Some) };
    Some((
        model,
        Price {
            input_per_mtok: number(input)?,
            output_per_mtok: number(output)?,
            cached_input_per_mtok: optional(cached)?,
            cache_write_per_mtok: optional(write)?,
            reasoning_per_mtok: optional(reasoning)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: f64, o: f64) -> Price {
        Price {
            input_per_mtok: i,
            output_per_mtok: o,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            reasoning_per_mtok: None,
        }
    }

    fn book() -> PriceBook {
        PriceBook::new(BTreeMap::from([
            ("gpt-4o".to_string(), p(2.0, 9.0)),
            ("gpt-4o-mini".to_string(), p(0.1, 0.5)),
            ("llama3".to_string(), p(0.0, 0.0)),
        ]))
    }

    #[test]
    fn the_closest_entry_wins_and_the_config_wins_a_tie() {
        let b = book();
        let m = b.lookup("gpt-4o").unwrap();
        assert_eq!((m.key, m.price.input_per_mtok, m.source), ("gpt-4o", 2.0, PriceSource::Config));
        // The catalog names this snapshot exactly: closer than the config's family entry.
        let m = b.lookup("gpt-4o-2024-08-06").unwrap();
        assert_eq!((m.key, m.source), ("gpt-4o-2024-08-06", PriceSource::Catalog));
        // The catalog has no entry closer than the config's `gpt-4o-mini`.
        let m = b.lookup("gpt-4o-mini-2099-01-01").unwrap();
        assert_eq!((m.key, m.source), ("gpt-4o-mini", PriceSource::Config));
        let retired = PriceBook::new(BTreeMap::from([("claude-opus-4".to_string(), p(15.0, 75.0))]));
        assert_eq!(retired.lookup("claude-opus-4-20250514").unwrap().source, PriceSource::Config);
        assert_eq!(retired.lookup("claude-opus-4-5-20251101").unwrap().price.input_per_mtok, 5.0);
        assert_eq!(b.lookup("llama3.1:8b").unwrap().price.output_per_mtok, 0.0);
        assert!(b.lookup("my-own-finetune").is_none());
        assert!(b.lookup("").is_none());
    }

    #[test]
    fn the_catalog_prices_models_of_every_listed_provider() {
        let b = PriceBook::default();
        for (model, input) in [
            ("gpt-4o-mini", 0.15),
            ("gpt-4o-mini-2024-07-18", 0.15),
            ("claude-sonnet-4-5-20250929", 3.0),
            ("gemini-2.5-flash", 0.3),
            ("mistral-large-latest", 0.5),
            ("deepseek-chat", 0.28),
            ("grok-code-fast-1", 1.0),
            ("anthropic.claude-sonnet-4-5-20250929-v1:0", 3.0),
            ("text-embedding-3-small", 0.02),
        ] {
            let m = b.lookup(model).unwrap_or_else(|| panic!("{model} is not priced"));
            assert_eq!((m.price.input_per_mtok, m.source), (input, PriceSource::Catalog), "{model}");
        }
        let sonnet = b.lookup("claude-sonnet-4-5").unwrap().price;
        assert_eq!((sonnet.cached_input_per_mtok, sonnet.cache_write_per_mtok), (Some(0.3), Some(3.75)));
        // A router's vendor part and a Bedrock region the catalog does not list are looked through.
        assert_eq!(b.lookup("openai/gpt-4o-mini").unwrap().key, "gpt-4o-mini");
        assert_eq!(b.lookup("ca.amazon.nova-pro-v1:0").unwrap().key, "amazon.nova-pro-v1:0");
        // Bedrock ids as they arrive in paths: plain, inference profiles, ARNs of profiles.
        for (model, key) in [
            ("anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-haiku-4-5-20251001-v1:0"),
            ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "us.anthropic.claude-haiku-4-5-20251001-v1:0"),
            ("meta.llama3-2-1b-instruct-v1:0", "meta.llama3-2-1b-instruct-v1:0"),
            ("amazon.titan-text-express-v1", "amazon.titan-text-express-v1"),
            (
                "arn:aws:bedrock:ca-central-1:123456789012:inference-profile/ca.amazon.nova-pro-v1:0",
                "amazon.nova-pro-v1:0",
            ),
        ] {
            assert_eq!(b.lookup(model).map(|m| m.key), Some(key), "{model}");
        }
        // Gemini and Azure: the model names their APIs report.
        for model in ["gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-embedding-001", "gpt-4o-mini-2024-07-18"] {
            assert!(b.lookup(model).is_some(), "{model} is not priced");
        }
    }

    #[test]
    fn the_shipped_catalog_parses_whole() {
        let text = include_str!("price_catalog.tsv");
        let lines = text.lines().filter(|l| !l.starts_with(['#', '@']) && !l.trim().is_empty()).count();
        let c = catalog();
        assert_eq!(c.prices.len(), lines, "every model line parses, none repeats");
        assert!(c.prices.len() > 500);
        assert_eq!(c.dated.len(), 10, "dated YYYY-MM-DD: {}", c.dated);
        assert!(c.source.starts_with("LiteLLM"), "{}", c.source);
        assert!(parse_catalog_line("m\t1\t2\t-\t-").is_none());
        assert!(parse_catalog_line("m\t1\tx\t-\t-\t-").is_none());
        assert!(parse_catalog_line("m\t1\t2\t-\t-\tNaN").is_none());
    }

    #[test]
    fn cost_splits_cached_input_cache_writes_and_reasoning() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: Some(0.5),
            cache_write_per_mtok: Some(2.5),
            reasoning_per_mtok: Some(10.0),
        };
        let tokens = BilledTokens {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cache_read_input_tokens: 400_000,
            cache_creation_input_tokens: 100_000,
            reasoning_tokens: 200_000,
        };
        let expected = 0.5 * 2.0 + 0.4 * 0.5 + 0.1 * 2.5 + 0.3 * 8.0 + 0.2 * 10.0;
        assert!((cost_usd(&price, tokens) - expected).abs() < 1e-12);
        // Counts that do not add up (more reasoning than output) never go negative.
        let odd = BilledTokens { output_tokens: 10, reasoning_tokens: 50, ..BilledTokens::default() };
        assert!((cost_usd(&price, odd) - 10.0 * 10.0 / 1e6).abs() < 1e-15);
    }
}
