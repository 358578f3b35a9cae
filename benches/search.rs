//! Search at scale (issue 18): builds a span store of `SPANS` realistic calls (10 M by
//! default) through `Store::write_batch`, as the recorder writes it, then reopens it and times
//! `Store::find_traces` — the first page (50) of `/api/traces` for every filter, a few
//! combinations, `q` phrases, and a full cursor walk — checking every answer against ground
//! truth counted while building.
//!
//! ```text
//! SPANS=200000 cargo bench --bench search                          # a calibration run (~15 s)
//! SEARCH_STORE=/work/search-store-10m cargo bench --bench search   # 10 M spans (~10 min, 32 GB)
//! SEARCH_STORE=/work/search-store-10m SEARCH_REUSE=1 cargo bench --bench search   # queries only
//! ```
//!
//! Env knobs:
//! - `SPANS` (10_000_000): spans to build.
//! - `SEARCH_STORE` (`$TMPDIR/tracegate-search-bench`): the store's directory. The default one
//!   is replaced by every build; a named one that holds spans is never removed (query it with
//!   `SEARCH_REUSE=1`, or remove it). The build's ground truth is kept beside it, in
//!   `<SEARCH_STORE>.truth.json`.
//! - `SEARCH_REUSE=1`: if the store already holds spans, skip the build and only query (to
//!   re-run the query phase after code changes; a newer index format is rebuilt by
//!   `Store::open`, which is timed). Without the truth file, answers are still checked span
//!   by span, but page sizes and exact sets are not.
//! - `SEARCH_RUNS` (50): runs per case; the first is reported apart as `cold`, p50/p99 are over
//!   the others.
//! - `SEARCH_BUDGET_S` (20): a case stops repeating once its runs took this long (a query that
//!   takes seconds runs fewer times).
//! - `SEARCH_CASES`: comma-separated substrings; only the cases whose name holds one run
//!   (`pagination` names the cursor walk; `none` runs no case).
//! - `SEARCH_BODY_SIZES` (`skewed`) and `SEARCH_REPEAT` (0.75): body sizes and compressibility,
//!   see "Bodies" below; `log-uniform` and `0` give the store the issue describes literally.
//! - `SEARCH_BREAKDOWN=1`: at the end, the bytes the store's sled tree holds by key kind.
//!
//! What it builds (deterministic: one seeded splitmix64, so every build is the same store):
//! - 500 teams with Zipf (s = 1) popularity (`team-001` is the busiest), 50,000 users split
//!   among teams by popularity (at least 3 each; skewed within a team), 20,000 sessions on ~30%
//!   of the calls (a session lives ~0.5% of the timeline — a few hours — and has one user), 30
//!   models of 5 providers (openai, anthropic, gemini, mistral, local) with Zipf popularity and
//!   list prices (`local` is unpriced: its cost is null), 2% errors (429/5xx/400) and 0.3%
//!   cancelled calls, properties `env` (prod/staging/dev, on 90% of traces) and `feature` (one
//!   of 50, Zipf, on 85%), 0.3% long-context calls (20k–200k input tokens, body truncated: the
//!   rare expensive ones).
//! - Traces of 1–6 spans (45/20/14/10/7/4%), a root call and its children, up to 64 traces in
//!   flight at once, so a trace's spans are interleaved with others' as in a live proxy.
//! - Start times spread evenly over the 20 days before the build (a span is written as it
//!   ends: its start is its write time minus its duration), so they increase with write order.
//!   Nothing here deletes: `Store` drops spans only through `delete_older_than`, which the
//!   recorder calls with `retention_days` (default 30) — a server run on this store more than
//!   10 days after its build would start deleting its oldest spans.
//! - Durations log-normal (median 1.8 s, clamped to 50 ms–60 s), tokens ≈ body bytes / 4,
//!   cost from tokens and the model's price.
//! - Planted: the phrase "quantum marmalade overture" (in three letter cases) in exactly 5
//!   calls' request bodies, all within the first 1% of the build; the first 20 calls belong to
//!   team `alpha-old`, user `user-old`, session `session-old`, `feature=legacy-export`, which
//!   never appear again (matches older than 99.9% of the store). Neither the phrase nor
//!   `xylophone quokka zephyr` can occur by chance (no generated word has a q, x or z).
//!
//! Bodies: an OpenAI chat request (the team's system prompt; for 60% of teams its `tools`
//! array; 1–5 turns) and its answer (a chat completion, or for the 40% streamed calls the SSE
//! chunks as captured), together 1–16 KB. Text is pseudo-words (50,000, from syllables) drawn
//! Zipf-distributed, 40% of them as common 2–5 word phrases, so it compresses like text (lz4
//! ~1.7×), not like filler. Here realism gave way to disk. Drawn as the issue reads — sizes
//! log-uniform over 1–16 KB (mean 5.4 KB) and every word fresh — 1 M spans took 7.4 GB
//! (96 s): 10 M would take ~74 GB, more than this machine's free disk. sled takes 2–2.5× the
//! bytes it is given (rewritten leaves not yet reclaimed), and the part that is not bodies
//! (span segments ~0.33 KB a span, postings 0.17, ledger 0.06, words 0.04) is ~15 GB of a
//! 10 M store by itself. A per-team system prompt does not help: the store compresses each ~6 KB
//! segment (2–5 calls) alone, so repetition across calls is invisible to it. So by default:
//! - sizes are log-normal, median 1.25 KB, σ 0.75, clamped to 1–16 KB (mean ~2.3 KB: most
//!   calls are short, a few long), and
//! - 75% of a call's body text repeats text the same call already sent (agents re-send their
//!   context: the transcript, quoted documents, tool output read again), ~3.2× under lz4,
//!
//! which made the 10 M store 32 GB on disk (13 GB of keys and values, 7.1 GB of them bodies;
//! 23.7 GB of raw bodies), built in 9.5 min here (2 cores). Index, postings, span segments and the query paths are the
//! same either way; the `q` scan reads fewer, smaller bodies than the literal store would.
//!
//! Writing: batches of 512 spans (the recorder's `MAX_BATCH`), a sled flush every 16 batches.
//! Memory stays bounded: the traces in flight, one batch and ground-truth counters.
//!
//! Query phase: the store is dropped and opened afresh (`Store::open` loads the index headers
//! and re-indexes the spans past its last run: timed), then per case `find_traces` with
//! `limit = 50`. Checks: no trace listed twice; every listed trace has a span that satisfies
//! the filter (read back with `trace_spans`, bodies with `span`, judged by this file's own
//! predicate); with the truth file, a page holds exactly the matching traces when fewer than
//! 51 match (the planted cases: 7 traces of `alpha-old`'s 20 calls, the 5 calls of the
//! phrase), else a full page and a cursor; and every run of a case lists the same traces. The
//! cursor walk lists every trace of `team-100` (the 100th busiest) through `next_cursor`, with
//! no duplicate, and compares the count with the build's.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tracegate::model::ids::{SpanId, TraceId};
use tracegate::model::span::{Span, SpanBodies, SpanKind, SpanStatus, SpanWrite, TraceSummary, UsageSource};
use tracegate::store::{Store, TracePage, TraceQuery};

const TEAMS: usize = 500;
const USERS: usize = 50_000;
const SESSIONS: u32 = 20_000;
/// Sessions open at any one time: a session lives this many / `SESSIONS` of the timeline.
const SESSION_WINDOW: u32 = 100;
const VOCABULARY: usize = 50_000;
const PHRASES: usize = 20_000;
const DEFAULT_REPEAT: f64 = 0.75;
const FEATURES: usize = 50;
const DAYS: u64 = 20;
const IN_FLIGHT: usize = 64;
/// The recorder's `MAX_BATCH`.
const BATCH: usize = 512;
const FLUSH_EVERY_BATCHES: usize = 16;
const LIMIT: usize = 50;
const MAX_PAGES: usize = 200;
const DAY_NS: u64 = 86_400 * 1_000_000_000;
const HOUR_NS: u64 = 3_600 * 1_000_000_000;

const PHRASE: &str = "quantum marmalade overture";
const PHRASE_AS_WRITTEN: [&str; 5] = [
    "quantum marmalade overture",
    "Quantum Marmalade Overture",
    "quantum marmalade overture",
    "QUANTUM MARMALADE OVERTURE",
    "quantum marmalade overture",
];
const NO_PHRASE: &str = "xylophone quokka zephyr";
const OLD_TEAM: &str = "alpha-old";
const OLD_USER: &str = "user-old";
const OLD_SESSION: &str = "session-old";
const OLD_FEATURE: &str = "legacy-export";
/// Trace sizes of the first 20 calls (team `alpha-old`).
const OLD_TRACES: [u32; 7] = [3, 1, 4, 2, 5, 1, 4];
/// The team walked page by page: the 100th busiest.
const WALKED_TEAM: usize = 99;
const HIGH_COST_USD: f64 = 1.0;

/// Model, provider, list price in USD per million input and output tokens (`None`: unpriced).
type Model = (&'static str, &'static str, Option<(f64, f64)>);

const MODELS: [Model; 30] = [
    ("gpt-4o-mini", "openai", Some((0.15, 0.6))),
    ("gpt-4o", "openai", Some((2.5, 10.0))),
    ("claude-sonnet-4", "anthropic", Some((3.0, 15.0))),
    ("gemini-2.5-flash", "gemini", Some((0.3, 2.5))),
    ("gpt-4.1-mini", "openai", Some((0.4, 1.6))),
    ("claude-3-5-haiku", "anthropic", Some((0.8, 4.0))),
    ("gpt-4.1", "openai", Some((2.0, 8.0))),
    ("gemini-2.0-flash", "gemini", Some((0.1, 0.4))),
    ("o4-mini", "openai", Some((1.1, 4.4))),
    ("claude-3-7-sonnet", "anthropic", Some((3.0, 15.0))),
    ("llama-3.1-8b-instruct", "local", None),
    ("gemini-2.5-pro", "gemini", Some((1.25, 10.0))),
    ("mistral-small-latest", "mistral", Some((0.1, 0.3))),
    ("gpt-4.1-nano", "openai", Some((0.1, 0.4))),
    ("o3", "openai", Some((2.0, 8.0))),
    ("claude-opus-4", "anthropic", Some((15.0, 75.0))),
    ("mistral-large-latest", "mistral", Some((2.0, 6.0))),
    ("gpt-3.5-turbo", "openai", Some((0.5, 1.5))),
    ("qwen2.5-14b-instruct", "local", None),
    ("gemini-1.5-flash", "gemini", Some((0.075, 0.3))),
    ("codestral-latest", "mistral", Some((0.3, 0.9))),
    ("o3-mini", "openai", Some((1.1, 4.4))),
    ("claude-3-haiku", "anthropic", Some((0.25, 1.25))),
    ("gemini-1.5-pro", "gemini", Some((1.25, 5.0))),
    ("gpt-4-turbo", "openai", Some((10.0, 30.0))),
    ("claude-3-opus", "anthropic", Some((15.0, 75.0))),
    ("open-mixtral-8x22b", "mistral", Some((2.0, 6.0))),
    ("ministral-8b-latest", "mistral", Some((0.1, 0.1))),
    ("gemma-2-9b-it", "local", None),
    ("o1", "openai", Some((15.0, 60.0))),
];

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    fn normal(&mut self) -> f64 {
        let u = self.f64().max(1e-12);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.f64()).cos()
    }

    /// Log-uniform in [lo, hi).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.f64() * (hi.ln() - lo.ln())).exp()
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        out
    }
}

/// A Zipf(s) distribution over 0..n, sampled in O(1) from a table of quantiles.
struct Zipf(Vec<u32>);

impl Zipf {
    fn new(n: usize, s: f64, slots: usize) -> Zipf {
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut table = Vec::with_capacity(slots);
        let (mut k, mut cumulative) = (0, weights[0]);
        for slot in 0..slots {
            let target = (slot as f64 + 0.5) / slots as f64 * total;
            while cumulative < target && k + 1 < n {
                k += 1;
                cumulative += weights[k];
            }
            table.push(k as u32);
        }
        Zipf(table)
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        self.0[rng.below(self.0.len())] as usize
    }
}

/// The share of rank `rank` in a Zipf(s) distribution over 0..n.
fn zipf_share(rank: usize, n: usize, s: f64) -> f64 {
    let total: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
    ((rank + 1) as f64).powf(-s) / total
}

// ---------------------------------------------------------------------------------------------
// The world: teams, users, sessions, words
// ---------------------------------------------------------------------------------------------

struct World {
    words: Vec<String>,
    word_dist: Zipf,
    /// Common word sequences (2–5 words): real text repeats n-grams, and so compresses better
    /// than words drawn one by one.
    phrases: Vec<String>,
    phrase_dist: Zipf,
    team_dist: Zipf,
    model_dist: Zipf,
    feature_dist: Zipf,
    teams: Vec<String>,
    /// First user index and user count of each team.
    team_users: Vec<(usize, usize)>,
    features: Vec<String>,
    prompts: Vec<String>,
    /// The `tools` array each team's agent sends (empty for teams without tools).
    tools: Vec<String>,
    old_prompt: String,
    fingerprints: Vec<String>,
    /// The share of body text that repeats the call's own earlier text (`SEARCH_REPEAT`).
    repeat: f64,
    sizes: BodySizes,
}

/// How the size of a call's bodies (request and response together) is drawn.
#[derive(Clone, Copy, Debug)]
enum BodySizes {
    /// Log-uniform over 1–16 KB (mean 5.4 KB).
    LogUniform,
    /// Log-normal, median 1.25 KB, σ 0.75, clamped to 1–16 KB.
    Skewed,
}

impl World {
    fn new(repeat: f64, sizes: BodySizes) -> World {
        let mut rng = Rng(0x7261_6365_6761_7465);
        let words = vocabulary(&mut rng);
        let teams: Vec<String> = (1..=TEAMS).map(|t| format!("team-{t:03}")).collect();
        let minimum = 3;
        let spread = USERS - minimum * TEAMS;
        let mut counts: Vec<usize> =
            (0..TEAMS).map(|t| minimum + (spread as f64 * zipf_share(t, TEAMS, 1.0)) as usize).collect();
        counts[0] += USERS - counts.iter().sum::<usize>();
        let mut team_users = Vec::with_capacity(TEAMS);
        let mut first = 0;
        for count in counts {
            team_users.push((first, count));
            first += count;
        }
        let verbs =
            ["summarize", "classify", "extract", "translate", "draft", "search", "review", "plan", "answer", "tag"];
        let nouns = ["ticket", "invoice", "email", "document", "code"];
        let features = verbs.iter().flat_map(|v| nouns.iter().map(move |n| format!("{v}-{n}"))).collect();
        let mut world = World {
            word_dist: Zipf::new(VOCABULARY, 1.0, 1 << 20),
            words,
            phrases: Vec::new(),
            phrase_dist: Zipf::new(PHRASES, 1.0, 1 << 18),
            team_dist: Zipf::new(TEAMS, 1.0, 1 << 18),
            model_dist: Zipf::new(MODELS.len(), 1.0, 1 << 14),
            feature_dist: Zipf::new(FEATURES, 0.9, 1 << 14),
            teams,
            team_users,
            features,
            prompts: Vec::new(),
            tools: Vec::new(),
            old_prompt: String::new(),
            fingerprints: Vec::new(),
            repeat,
            sizes,
        };
        for _ in 0..PHRASES {
            let n = 2 + rng.below(4);
            let phrase: Vec<&str> = (0..n).map(|_| world.words[world.word_dist.sample(&mut rng)].as_str()).collect();
            let phrase = phrase.join(" ");
            world.phrases.push(phrase);
        }
        for t in 0..TEAMS {
            let tools = if rng.chance(0.6) { world.tools_json(&mut rng) } else { String::new() };
            world.tools.push(tools);
            let mut prompt = format!("You are the assistant of {}. ", world.teams[t]);
            let len = rng.log_uniform(200.0, 2500.0) as usize;
            world.text(&mut rng, &mut prompt, len);
            world.prompts.push(prompt);
            world.fingerprints.push(format!("sha256:{:012x}", rng.next() >> 16));
        }
        let mut old = format!("You are the assistant of {OLD_TEAM}. ");
        world.text(&mut rng, &mut old, 800);
        world.old_prompt = old;
        world
    }

    fn from_env() -> World {
        let repeat = std::env::var("SEARCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_REPEAT);
        let sizes = match std::env::var("SEARCH_BODY_SIZES").as_deref() {
            Ok("log-uniform") => BodySizes::LogUniform,
            Ok("skewed") | Err(_) => BodySizes::Skewed,
            Ok(other) => panic!("SEARCH_BODY_SIZES={other}: log-uniform or skewed"),
        };
        World::new(repeat.clamp(0.0, 0.95), sizes)
    }

    fn user_name(user: usize) -> String {
        format!("user-{user:05}")
    }

    fn session_name(session: u32) -> String {
        format!("sess-{session:05}")
    }

    /// A user of `team`, the first ones busier.
    fn user_of(&self, team: usize, rng: &mut Rng) -> usize {
        let (first, count) = self.team_users[team];
        first + ((count as f64) * rng.f64().powi(3)) as usize
    }

    /// The team and user of a session (fixed per session).
    fn session_owner(&self, session: u32) -> (usize, usize) {
        let mut rng = Rng(0x5e55_1000 ^ u64::from(session).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let team = self.team_dist.sample(&mut rng);
        (team, self.user_of(team, &mut rng))
    }

    /// Appends sentences of Zipf-drawn words and phrases until `out` grew by at least `bytes`.
    fn text(&self, rng: &mut Rng, out: &mut String, bytes: usize) {
        let end = out.len() + bytes;
        while out.len() < end {
            self.sentence(rng, out);
        }
    }

    /// Appends body text until `out` grew by at least `bytes`: fresh sentences, and passages
    /// of what this call already said (`said`) — a body re-sends its own context — until
    /// `self.repeat` of the bytes written through `said` are such repeats.
    fn body_text(&self, rng: &mut Rng, out: &mut String, bytes: usize, said: &mut Said) {
        let end = out.len() + bytes;
        while out.len() < end {
            let enough = said.repeated as f64 >= self.repeat * (said.repeated + said.text.len()) as f64;
            if enough || said.text.len() < 200 {
                let at = out.len();
                self.sentence(rng, out);
                said.text.push_str(&out[at..]);
            } else {
                let len = (60 + rng.below(540)).min(said.text.len());
                let from = rng.below(said.text.len() - len + 1);
                let passage = said.text[from..from + len].trim_end_matches('\\');
                out.push_str(passage);
                out.push(' ');
                said.repeated += passage.len() + 1;
            }
        }
    }

    /// Appends one sentence of Zipf-drawn words and phrases.
    fn sentence(&self, rng: &mut Rng, out: &mut String) {
        {
            let words = 3 + rng.below(10);
            for i in 0..words {
                let word = match rng.below(10) < 4 {
                    true => &self.phrases[self.phrase_dist.sample(rng)],
                    false => &self.words[self.word_dist.sample(rng)],
                };
                if i == 0 {
                    out.push(word.as_bytes()[0].to_ascii_uppercase() as char);
                    out.push_str(&word[1..]);
                } else {
                    out.push(' ');
                    out.push_str(word);
                }
                if i + 1 < words && rng.below(10) == 0 {
                    out.push(',');
                }
            }
            out.push_str(if rng.below(8) == 0 { ".\\n\\n" } else { ". " });
        }
    }
}

impl World {
    /// A `tools` array of 2–8 functions with JSON-schema parameters, as agent frameworks send.
    fn tools_json(&self, rng: &mut Rng) -> String {
        const TYPES: [&str; 5] = ["string", "string", "integer", "boolean", "number"];
        let mut out = String::from("[");
        for t in 0..2 + rng.below(7) {
            let word = |rng: &mut Rng| self.words[self.word_dist.sample(rng) % 5_000].clone();
            let (verb, noun) = (word(rng), word(rng));
            let mut description = String::new();
            let len = 40 + rng.below(120);
            self.text(rng, &mut description, len);
            let _ = write!(
                out,
                r#"{}{{"type":"function","function":{{"name":"{verb}_{noun}","description":"{}","parameters":{{"type":"object","properties":{{"#,
                if t == 0 { "" } else { "," },
                description.trim_end(),
            );
            let mut names = Vec::new();
            for p in 0..1 + rng.below(6) {
                let name = word(rng);
                let mut about = String::new();
                let len = 20 + rng.below(60);
                self.text(rng, &mut about, len);
                let _ = write!(
                    out,
                    r#"{}"{name}":{{"type":"{}","description":"{}"}}"#,
                    if p == 0 { "" } else { "," },
                    TYPES[rng.below(TYPES.len())],
                    about.trim_end()
                );
                names.push(format!("\"{name}\""));
            }
            let _ = write!(out, r#"}},"required":[{}],"additionalProperties":false}}}}}}"#, names[..1].join(","));
        }
        out.push(']');
        out
    }
}

/// 50,000 distinct pseudo-words, shorter ones first (the commonest words are short).
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const ONSETS: [&str; 34] = [
        "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "ch", "cl",
        "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr",
    ];
    const VOWELS: [&str; 11] = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou"];
    const CODAS: [&str; 14] = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt"];
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(VOCABULARY);
    while words.len() < VOCABULARY {
        let syllables = match words.len() {
            0..150 => 1,
            150..4_000 => 2,
            4_000..30_000 => 3,
            _ => 4,
        };
        let mut word = String::new();
        for _ in 0..syllables {
            word.push_str(ONSETS[rng.below(ONSETS.len())]);
            word.push_str(VOWELS[rng.below(VOWELS.len())]);
            word.push_str(CODAS[rng.below(CODAS.len())]);
        }
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

/// The text one call has written so far, for its later parts to repeat.
#[derive(Default)]
struct Said {
    text: String,
    repeated: usize,
}

/// A trace in flight.
struct Flight {
    trace_id: TraceId,
    root: SpanId,
    emitted: u32,
    size: u32,
    team: Option<usize>,
    user: Option<usize>,
    session: Option<u32>,
    env: Option<&'static str>,
    feature: Option<usize>,
}

impl Flight {
    fn new(world: &World, rng: &mut Rng, progress: f64) -> Flight {
        let size = match rng.below(100) {
            0..45 => 1,
            45..65 => 2,
            65..79 => 3,
            79..89 => 4,
            89..96 => 5,
            _ => 6,
        };
        let (team, user, session) = if rng.chance(0.3) {
            let first = (progress * f64::from(SESSIONS - SESSION_WINDOW)) as u32;
            let session = first + rng.below(SESSION_WINDOW as usize) as u32;
            let (team, user) = world.session_owner(session);
            (team, Some(user), Some(session))
        } else {
            let team = world.team_dist.sample(rng);
            let user = world.user_of(team, rng);
            (team, rng.chance(0.95).then_some(user), None)
        };
        let env = rng.chance(0.9).then(|| match rng.below(100) {
            0..75 => "prod",
            75..93 => "staging",
            _ => "dev",
        });
        let feature = rng.chance(0.85).then(|| world.feature_dist.sample(rng));
        Flight {
            trace_id: TraceId(rng.bytes()),
            root: SpanId(rng.bytes()),
            emitted: 0,
            size,
            team: Some(team),
            user,
            session,
            env,
            feature,
        }
    }

    /// A trace of team `alpha-old` (the first 20 calls only).
    fn old(rng: &mut Rng, size: u32) -> Flight {
        Flight {
            trace_id: TraceId(rng.bytes()),
            root: SpanId(rng.bytes()),
            emitted: 0,
            size,
            team: None,
            user: None,
            session: None,
            env: Some("prod"),
            feature: None,
        }
    }
}

/// Makes one call (span and bodies) of `flight`, ending at `end_ns`.
fn call(world: &World, rng: &mut Rng, flight: &mut Flight, end_ns: u64, plant: Option<&str>) -> SpanWrite {
    let old = flight.team.is_none();
    let (model, provider, price) = MODELS[world.model_dist.sample(rng)];
    let span_id = if flight.emitted == 0 { flight.root } else { SpanId(rng.bytes()) };
    let mut span = Span::new(flight.trace_id, span_id, SpanKind::Llm, format!("chat {model}"));
    span.parent_span_id = (flight.emitted > 0).then_some(flight.root);
    flight.emitted += 1;

    let roll = rng.below(1000);
    let status = match roll {
        0..20 => SpanStatus::Error,
        20..23 => SpanStatus::Cancelled,
        _ => SpanStatus::Ok,
    };
    let stream = rng.chance(0.4);
    let long_context = rng.chance(0.003);
    let duration_ms = match status {
        SpanStatus::Ok => 1800.0 * (1.1 * rng.normal()).exp(),
        _ => 300.0 * (1.0 * rng.normal()).exp(),
    }
    .clamp(50.0, 60_000.0);
    let duration_ms = (duration_ms * 1000.0).round() / 1000.0;

    // Bodies: request and response together 1–16 KB.
    let total = match world.sizes {
        BodySizes::LogUniform => rng.log_uniform(1024.0, 16384.0),
        BodySizes::Skewed => (1280.0 * (0.75 * rng.normal()).exp()).clamp(1024.0, 16384.0),
    } as usize;
    // SSE framing makes a streamed answer large beside its request.
    let request_share = if stream { 0.3 + 0.4 * rng.f64() } else { 0.5 + 0.4 * rng.f64() };
    let request_bytes = (total as f64 * request_share) as usize;
    let preamble = match flight.team {
        Some(team) => Preamble { model, prompt: &world.prompts[team], tools: &world.tools[team], stream },
        None => Preamble { model, prompt: &world.old_prompt, tools: "", stream },
    };
    let mut said = Said::default();
    let request = request_body(world, rng, &preamble, request_bytes, plant, &mut said);
    let response_model = match provider {
        "openai" => format!("{model}-2025-04-14"),
        _ => model.to_string(),
    };
    let (response, content_bytes) = match status {
        SpanStatus::Ok => {
            let (body, content) = response_body(
                world,
                rng,
                &response_model,
                total.saturating_sub(request.len()),
                end_ns,
                stream,
                &mut said,
            );
            (Some(body), content)
        }
        SpanStatus::Error => (Some(error_body(rng, model)), 0),
        SpanStatus::Cancelled => (None, 0),
    };

    let input_tokens =
        if long_context { rng.log_uniform(20_000.0, 200_000.0) as u64 } else { request.len() as u64 / 4 };
    span.start_time_unix_nano = end_ns - (duration_ms * 1e6) as u64;
    span.duration_ms = duration_ms;
    span.provider = Some(provider.to_string());
    span.operation = Some("chat".into());
    span.method = Some("POST".into());
    span.path = Some(
        match provider {
            "anthropic" => "/anthropic/v1/messages",
            "gemini" => "/gemini/v1beta/openai/chat/completions",
            "mistral" => "/mistral/v1/chat/completions",
            "local" => "/local/v1/chat/completions",
            _ => "/v1/chat/completions",
        }
        .to_string(),
    );
    span.status = status;
    span.request_model = Some(model.to_string());
    span.stream = stream;
    match status {
        SpanStatus::Ok => {
            let output_tokens = (content_bytes as u64 / 4).max(1);
            span.status_code = Some(200);
            span.ttft_ms = stream.then(|| (duration_ms * (0.05 + 0.3 * rng.f64()) * 1000.0).round() / 1000.0);
            span.response_model = Some(response_model);
            span.input_tokens = Some(input_tokens);
            span.output_tokens = Some(output_tokens);
            span.usage_source = UsageSource::Reported;
            if matches!(provider, "openai" | "anthropic") && rng.chance(0.25) {
                span.cache_read_input_tokens =
                    Some(((preamble.prompt.len() + preamble.tools.len()) as u64 / 4).min(input_tokens));
            }
            if model.starts_with('o') {
                span.reasoning_tokens = Some(output_tokens / 2);
            }
            span.finish_reason = Some(
                match rng.below(20) {
                    0 => "length",
                    1..4 => "tool_calls",
                    _ => "stop",
                }
                .into(),
            );
            span.cost_usd = price
                .map(|(i, o)| (input_tokens as f64 * i + output_tokens as f64 * o) / 1e6)
                .map(|c| (c * 1e9).round() / 1e9);
        }
        SpanStatus::Error => {
            let code = [429, 429, 429, 429, 500, 500, 502, 503, 503, 400][rng.below(10)];
            span.status_code = Some(code);
            span.input_tokens = Some(input_tokens);
            span.usage_source = UsageSource::Estimated;
            span.error = Some(format!("upstream answered {code}"));
        }
        SpanStatus::Cancelled => {
            span.error = Some("client disconnected before the response ended".into());
        }
    }
    if old {
        span.team = Some(OLD_TEAM.into());
        span.user = Some(OLD_USER.into());
        span.session = Some(OLD_SESSION.into());
        span.key_fingerprint = Some("sha256:0123456789ab".into());
        span.properties.insert("feature".into(), OLD_FEATURE.into());
    } else {
        let team = flight.team.expect("a team");
        span.team = Some(world.teams[team].clone());
        span.key_fingerprint = Some(world.fingerprints[team].clone());
        span.user = flight.user.map(World::user_name);
        span.session = flight.session.map(World::session_name);
        if let Some(feature) = flight.feature {
            span.properties.insert("feature".into(), world.features[feature].clone());
        }
    }
    if let Some(env) = flight.env {
        span.properties.insert("env".into(), env.into());
    }
    SpanWrite {
        span,
        bodies: Some(SpanBodies { request_body: Some(request), response_body: response, truncated: long_context }),
    }
}

/// What a request is made of besides its turns: the model, whether it streams, and the team's
/// system prompt and tools (the same on every call of the team).
struct Preamble<'a> {
    model: &'a str,
    prompt: &'a str,
    tools: &'a str,
    stream: bool,
}

/// An OpenAI chat request of about `bytes` bytes: the team's system prompt, 1–5 turns (the
/// last one the user's, holding `plant` if any), the team's tools.
fn request_body(
    world: &World,
    rng: &mut Rng,
    preamble: &Preamble<'_>,
    bytes: usize,
    plant: Option<&str>,
    said: &mut Said,
) -> String {
    let (model, stream) = (preamble.model, preamble.stream);
    let mut out = String::with_capacity(bytes + 256);
    out.push_str(r#"{"model":""#);
    out.push_str(model);
    out.push_str(r#"","messages":[{"role":"system","content":""#);
    let prompt = preamble.prompt;
    out.push_str(prompt[..prompt.len().min(bytes * 4 / 10)].trim_end_matches('\\'));
    out.push_str(r#""}"#);
    // Tools go in whole or not at all (a cut schema would not be JSON).
    let tools = match preamble.tools.len() < bytes.saturating_sub(out.len()) / 2 {
        true => preamble.tools,
        false => "",
    };
    let messages = 1 + 2 * rng.below(3);
    let each = bytes.saturating_sub(out.len() + tools.len() + 120) / messages;
    for m in 0..messages {
        out.push_str(if m % 2 == 0 { r#",{"role":"user","content":""# } else { r#",{"role":"assistant","content":""# });
        if m + 1 == messages {
            if let Some(phrase) = plant {
                world.body_text(rng, &mut out, each / 2, said);
                out.push_str(phrase);
                out.push_str(". ");
            }
        }
        world.body_text(rng, &mut out, each.max(1), said);
        out.push_str(r#""}"#);
    }
    out.push(']');
    if !tools.is_empty() {
        out.push_str(r#","tools":"#);
        out.push_str(tools);
        out.push_str(r#","tool_choice":"auto""#);
    }
    let _ = write!(out, r#","temperature":{:.1},"max_tokens":{},"stream":{stream}}}"#, rng.f64(), 256 << rng.below(5));
    out
}

/// An OpenAI chat completion of about `bytes` bytes — a JSON body, or for a stream the SSE
/// chunks as captured — and the length of its content.
fn response_body(
    world: &World,
    rng: &mut Rng,
    model: &str,
    bytes: usize,
    end_ns: u64,
    stream: bool,
    said: &mut Said,
) -> (String, usize) {
    let mut out = String::with_capacity(bytes + 512);
    let id = rng.next();
    let created = end_ns / 1_000_000_000;
    let prompt_tokens = 100 + rng.below(4000);
    if stream {
        let fingerprint = rng.next() >> 24;
        let head = format!(
            r#"data: {{"id":"chatcmpl-{id:016x}","object":"chat.completion.chunk","created":{created},"model":"{model}","system_fingerprint":"fp_{fingerprint:010x}","choices":[{{"index":0,"delta":{{"#
        );
        let _ = write!(out, r#"{head}"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#);
        out.push_str("\n\n");
        let mut text = String::new();
        world.body_text(rng, &mut text, (bytes / 40).max(8), said);
        let mut content = 0;
        for (i, token) in text.split(' ').filter(|t| !t.is_empty()).enumerate() {
            if out.len() + 400 > bytes && i > 0 {
                break;
            }
            let _ = write!(
                out,
                r#"{head}"content":"{}{token}"}},"logprobs":null,"finish_reason":null}}]}}"#,
                if i == 0 { "" } else { " " }
            );
            out.push_str("\n\n");
            content += token.len() + usize::from(i > 0);
        }
        let completion_tokens = content / 4;
        let _ = write!(out, r#"{head}}},"logprobs":null,"finish_reason":"stop"}}]}}"#);
        out.push_str("\n\n");
        let _ = write!(
            out,
            r#"data: {{"id":"chatcmpl-{id:016x}","object":"chat.completion.chunk","created":{created},"model":"{model}","choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{}}}}}"#,
            prompt_tokens + completion_tokens
        );
        out.push_str("\n\ndata: [DONE]\n\n");
        return (out, content);
    }
    let _ = write!(
        out,
        r#"{{"id":"chatcmpl-{id:016x}","object":"chat.completion","created":{created},"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":""#,
    );
    let start = out.len();
    world.body_text(rng, &mut out, bytes.saturating_sub(start + 120).max(16), said);
    let content = out.len() - start;
    let completion_tokens = content / 4;
    let _ = write!(
        out,
        r#""}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{}}}}}"#,
        prompt_tokens + completion_tokens
    );
    (out, content)
}

fn error_body(rng: &mut Rng, model: &str) -> String {
    format!(
        r#"{{"error":{{"message":"Rate limit reached for {model} in organization org-{:012x} on tokens per min (TPM): Limit 30000, Used {}, Requested {}.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}}}"#,
        rng.next() >> 16,
        20_000 + rng.below(10_000),
        rng.below(8_000)
    )
}

// ---------------------------------------------------------------------------------------------
// Cases and ground truth
// ---------------------------------------------------------------------------------------------

struct Case {
    name: String,
    query: TraceQuery,
}

/// What the build counted for one case: matching spans, and the matching traces (at most
/// `LIMIT + 1`; `more` when there were more).
#[derive(Default, Clone)]
struct Truth {
    spans: u64,
    traces: Vec<TraceId>,
    more: bool,
}

impl Truth {
    fn add(&mut self, trace_id: TraceId) {
        self.spans += 1;
        if self.more || self.traces.contains(&trace_id) {
            return;
        }
        if self.traces.len() == LIMIT {
            self.more = true;
        } else {
            self.traces.push(trace_id);
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "spans": self.spans,
            "traces": self.traces.iter().map(|t| t.to_hex()).collect::<Vec<_>>(),
            "more": self.more,
        })
    }

    fn from_json(v: &Value) -> Option<Truth> {
        Some(Truth {
            spans: v["spans"].as_u64()?,
            traces: v["traces"]
                .as_array()?
                .iter()
                .map(|t| t.as_str().and_then(TraceId::from_hex))
                .collect::<Option<_>>()?,
            more: v["more"].as_bool()?,
        })
    }

    /// Traces expected on the first page.
    fn page(&self) -> String {
        if self.more {
            format!("{LIMIT}")
        } else {
            self.traces.len().to_string()
        }
    }
}

fn cases(world: &World, base_ns: u64) -> Vec<Case> {
    let team = |t: usize| Some(world.teams[t].clone());
    let user_of_team = |t: usize| Some(World::user_name(world.team_users[t].0));
    let q =
        |name: &str, query: TraceQuery| Case { name: name.to_string(), query: TraceQuery { limit: LIMIT, ..query } };
    let d = TraceQuery::default;
    let window = base_ns + DAY_NS * DAYS / 2;
    vec![
        q("no filter", d()),
        q("team=team-001 (busiest)", TraceQuery { team: team(0), ..d() }),
        q("team=alpha-old (oldest 20)", TraceQuery { team: Some(OLD_TEAM.into()), ..d() }),
        q("team=nonexistent", TraceQuery { team: Some("team-none".into()), ..d() }),
        q(&format!("user={}", World::user_name(world.team_users[2].0)), TraceQuery { user: user_of_team(2), ..d() }),
        q("user=user-old", TraceQuery { user: Some(OLD_USER.into()), ..d() }),
        q("model=claude-sonnet-4", TraceQuery { model: Some("claude-sonnet-4".into()), ..d() }),
        q("model=gemma-2-9b-it (rare)", TraceQuery { model: Some("gemma-2-9b-it".into()), ..d() }),
        q("provider=anthropic", TraceQuery { provider: Some("anthropic".into()), ..d() }),
        q("status=error", TraceQuery { status: Some(SpanStatus::Error), ..d() }),
        q("status=cancelled", TraceQuery { status: Some(SpanStatus::Cancelled), ..d() }),
        q("session=sess-10000", TraceQuery { session: Some(World::session_name(10_000)), ..d() }),
        q("session=session-old", TraceQuery { session: Some(OLD_SESSION.into()), ..d() }),
        q("property.env=prod", TraceQuery { properties: vec![("env".into(), "prod".into())], ..d() }),
        q(
            "property.feature=legacy-export",
            TraceQuery { properties: vec![("feature".into(), OLD_FEATURE.into())], ..d() },
        ),
        q(
            "from/to: 1 h, 10 days ago",
            TraceQuery { from_unix_nano: Some(window), to_unix_nano: Some(window + HOUR_NS), ..d() },
        ),
        q("min_duration_ms=30000", TraceQuery { min_duration_ms: Some(30_000.0), ..d() }),
        q(&format!("min_cost_usd={HIGH_COST_USD}"), TraceQuery { min_cost_usd: Some(HIGH_COST_USD), ..d() }),
        q(
            "team-001+gpt-4o-mini+error",
            TraceQuery { team: team(0), model: Some("gpt-4o-mini".into()), status: Some(SpanStatus::Error), ..d() },
        ),
        q(
            "team-050+env=dev+from/to 1 h",
            TraceQuery {
                team: team(49),
                properties: vec![("env".into(), "dev".into())],
                from_unix_nano: Some(window),
                to_unix_nano: Some(window + HOUR_NS),
                ..d()
            },
        ),
        q("team-001 & user of team-002 (none)", TraceQuery { team: team(0), user: user_of_team(1), ..d() }),
        // `q` (TraceQuery::text): judged on bodies; its truth is known by construction.
        q(&format!("q=\"{PHRASE}\""), TraceQuery { text: Some(PHRASE.into()), ..d() }),
        q(&format!("q=\"{}\" (common)", world.words[0]), TraceQuery { text: Some(world.words[0].clone()), ..d() }),
        q(&format!("q=\"{NO_PHRASE}\""), TraceQuery { text: Some(NO_PHRASE.into()), ..d() }),
    ]
}

/// Whether `span` satisfies every filter of `q` but `text`: this file's own reading of the
/// filters, independent of the store's.
fn satisfies(q: &TraceQuery, span: &Span) -> bool {
    let is =
        |filter: &Option<String>, value: &Option<String>| filter.as_ref().is_none_or(|f| value.as_ref() == Some(f));
    is(&q.team, &span.team)
        && is(&q.user, &span.user)
        && is(&q.provider, &span.provider)
        && is(&q.session, &span.session)
        && q.model
            .as_ref()
            .is_none_or(|m| [&span.request_model, &span.response_model].iter().any(|v| v.as_ref() == Some(m)))
        && q.status.is_none_or(|s| s == span.status)
        && q.properties.iter().all(|(k, v)| span.properties.get(k) == Some(v))
        && q.from_unix_nano.is_none_or(|t| span.start_time_unix_nano >= t)
        && q.to_unix_nano.is_none_or(|t| span.start_time_unix_nano < t)
        && q.min_duration_ms.is_none_or(|ms| span.duration_ms >= ms)
        && q.min_cost_usd.is_none_or(|usd| span.cost_usd.is_some_and(|c| c >= usd))
}

fn contains_text(bodies: &SpanBodies, text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [&bodies.request_body, &bodies.response_body]
        .into_iter()
        .flatten()
        .any(|b| memchr::memmem::find(b.to_ascii_lowercase().as_bytes(), text.as_bytes()).is_some())
}

// ---------------------------------------------------------------------------------------------
// Build
// ---------------------------------------------------------------------------------------------

struct Built {
    base_ns: u64,
    truths: Vec<Truth>,
    walked_team_traces: u64,
}

fn build(path: &Path, spans: u64, world: &World) -> Built {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let base_ns = (now_ns - DAYS * DAY_NS) / 1_000_000_000 * 1_000_000_000;
    let step_ns = DAYS * DAY_NS / spans;
    let cases = cases(world, base_ns);
    let mut truths = vec![Truth::default(); cases.len()];
    let phrase_case = cases.iter().position(|c| c.query.text.as_deref() == Some(PHRASE)).expect("phrase case");
    let common_case = cases.iter().position(|c| c.name.contains("(common)")).expect("common case");
    let planted: Vec<u64> = (1..=5).map(|k| 20 + k * spans / 600).collect();
    let mut walked_team_traces = 0;
    let old_calls = u64::from(OLD_TRACES.iter().sum::<u32>());

    let store = Store::open(path).expect("open store");
    let mut rng = Rng(0x5eed_0f5e_a2c4);
    let mut flights: Vec<Flight> = Vec::with_capacity(IN_FLIGHT);
    let mut old_flight: Option<Flight> = None;
    let mut old_traces = OLD_TRACES.iter();
    let mut batch: Vec<SpanWrite> = Vec::with_capacity(BATCH);
    let (mut batches, mut body_bytes) = (0usize, 0u64);
    let (mut making, mut writing) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let report_every = (spans / 50).max(1);
    for i in 0..spans {
        let made = Instant::now();
        let end_ns = base_ns + (i + 1) * step_ns;
        let plant = planted.iter().position(|&p| p == i).map(|k| PHRASE_AS_WRITTEN[k]);
        let write = if i < old_calls {
            if old_flight.as_ref().is_none_or(|f| f.emitted == f.size) {
                old_flight = Some(Flight::old(&mut rng, *old_traces.next().expect("old traces")));
            }
            call(world, &mut rng, old_flight.as_mut().expect("old flight"), end_ns, plant)
        } else {
            let progress = i as f64 / spans as f64;
            let slot = if flights.is_empty() || (flights.len() < IN_FLIGHT && rng.chance(0.5)) {
                let flight = Flight::new(world, &mut rng, progress);
                if flight.team == Some(WALKED_TEAM) {
                    walked_team_traces += 1;
                }
                flights.push(flight);
                flights.len() - 1
            } else {
                rng.below(flights.len())
            };
            let write = call(world, &mut rng, &mut flights[slot], end_ns, plant);
            if flights[slot].emitted == flights[slot].size {
                flights.swap_remove(slot);
            }
            write
        };
        for (case, truth) in cases.iter().zip(truths.iter_mut()) {
            if case.query.text.is_none() && satisfies(&case.query, &write.span) {
                truth.add(write.span.trace_id);
            }
        }
        if plant.is_some() {
            truths[phrase_case].add(write.span.trace_id);
        }
        if let Some(b) = &write.bodies {
            body_bytes +=
                [&b.request_body, &b.response_body].into_iter().flatten().map(|s| s.len() as u64).sum::<u64>();
        }
        batch.push(write);
        making += made.elapsed();
        if batch.len() == BATCH || i + 1 == spans {
            let written = Instant::now();
            store.write_batch(&batch).expect("write batch");
            batch.clear();
            batches += 1;
            if batches % FLUSH_EVERY_BATCHES == 0 || i + 1 == spans {
                store.flush().expect("flush");
            }
            writing += written.elapsed();
        }
        if (i + 1) % report_every == 0 {
            let elapsed = started.elapsed().as_secs_f64();
            let done = (i + 1) as f64;
            println!(
                "built {:>10} spans  {:>7.0} s  {:>6.0} spans/s  making {:>5.0} s  writing {:>6.0} s  bodies {:>7.0} MB  store {:>7.0} MB  eta {:>5.0} s",
                i + 1,
                elapsed,
                done / elapsed,
                making.as_secs_f64(),
                writing.as_secs_f64(),
                body_bytes as f64 / 1e6,
                disk_bytes(path) as f64 / 1e6,
                elapsed / done * (spans as f64 - done),
            );
        }
    }
    truths[common_case].more = true;
    let elapsed = started.elapsed();
    drop(store);
    println!(
        "build: {spans} spans in {:.1} s ({:.0} spans/s; making {:.0} s, write_batch+flush {:.0} s), bodies {:.2} GB raw, store {:.2} GB on disk",
        elapsed.as_secs_f64(),
        spans as f64 / elapsed.as_secs_f64(),
        making.as_secs_f64(),
        writing.as_secs_f64(),
        body_bytes as f64 / 1e9,
        disk_bytes(path) as f64 / 1e9,
    );
    Built { base_ns, truths, walked_team_traces }
}

/// Bytes the directory takes on disk (`du`), else the sum of its files' lengths.
fn disk_bytes(path: &Path) -> u64 {
    if let Ok(out) = std::process::Command::new("du").arg("-sk").arg(path).output() {
        if let Some(kb) =
            String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|k| k.parse::<u64>().ok())
        {
            return kb * 1024;
        }
    }
    fn walk(path: &Path) -> u64 {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(path)
}

fn truth_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".truth.json");
    PathBuf::from(name)
}

fn save_truth(path: &Path, spans: u64, built: &Built) {
    let value = json!({
        "spans": spans,
        "base_ns": built.base_ns,
        "walked_team_traces": built.walked_team_traces,
        "cases": built.truths.iter().map(Truth::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).expect("write truth file");
}

fn load_truth(path: &Path) -> Option<(u64, Built)> {
    let value: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let truths = value["cases"].as_array()?.iter().map(Truth::from_json).collect::<Option<Vec<_>>>()?;
    Some((
        value["spans"].as_u64()?,
        Built {
            base_ns: value["base_ns"].as_u64()?,
            truths,
            walked_team_traces: value["walked_team_traces"].as_u64()?,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Checks a first page against the store (span by span) and against the build's truth.
fn check(store: &Store, query: &TraceQuery, page: &TracePage, truth: Option<&Truth>) -> Result<(), String> {
    let ids: Vec<TraceId> = page.traces.iter().map(|t| t.trace_id).collect();
    let unique: HashSet<&TraceId> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err("a trace listed twice".into());
    }
    if ids.len() > LIMIT {
        return Err(format!("{} traces on a page of {LIMIT}", ids.len()));
    }
    for id in &ids {
        let spans = store.trace_spans(id).map_err(|e| e.to_string())?;
        let mut matched = false;
        for span in spans.iter().filter(|s| satisfies(query, s)) {
            matched = match &query.text {
                None => true,
                Some(text) => match store.span(id, &span.span_id).map_err(|e| e.to_string())? {
                    Some((_, bodies)) => contains_text(&bodies, text),
                    None => false,
                },
            };
            if matched {
                break;
            }
        }
        if !matched {
            return Err(format!("trace {} has no span that matches", id.to_hex()));
        }
    }
    let Some(truth) = truth else { return Ok(()) };
    if truth.more {
        if ids.len() != LIMIT || page.next_cursor.is_none() {
            return Err(format!(
                "{} traces, cursor {:?}: expected a full page and a cursor",
                ids.len(),
                page.next_cursor
            ));
        }
    } else {
        let expected: HashSet<&TraceId> = truth.traces.iter().collect();
        if unique != expected {
            return Err(format!("{} traces listed, {} expected (or not the same ones)", ids.len(), expected.len()));
        }
        if page.next_cursor.is_some() {
            return Err("a cursor after the last match".into());
        }
    }
    Ok(())
}

struct Settings {
    runs: usize,
    budget: Duration,
    only: Vec<String>,
}

impl Settings {
    fn selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

fn run_case(store: &Store, case: &Case, truth: Option<&Truth>, settings: &Settings) -> bool {
    let mut times = Vec::with_capacity(settings.runs);
    let started = Instant::now();
    let cold = Instant::now();
    let first = store.find_traces(&case.query).expect("find_traces");
    times.push(cold.elapsed());
    let first_ids: Vec<TraceId> = first.traces.iter().map(|t| t.trace_id).collect();
    let mut stable = true;
    while times.len() < settings.runs && started.elapsed() < settings.budget {
        let t = Instant::now();
        let page = store.find_traces(&case.query).expect("find_traces");
        times.push(t.elapsed());
        stable &= page.traces.iter().map(|t| t.trace_id).eq(first_ids.iter().copied());
    }
    let verdict = match (check(store, &case.query, &first, truth), stable) {
        (Ok(()), true) => "ok".to_string(),
        (Ok(()), false) => "FAIL: pages differ between runs".to_string(),
        (Err(e), _) => format!("FAIL: {e}"),
    };
    let cold = times[0];
    let mut warm = times[1..].to_vec();
    warm.sort();
    let (p50, p99) = match warm.is_empty() {
        true => ("-".to_string(), "-".to_string()),
        false => (format!("{:.2}", ms(percentile(&warm, 50.0))), format!("{:.2}", ms(percentile(&warm, 99.0)))),
    };
    println!(
        "{:<38} {:>5} {:>8} {:>10} {:>10.2} {:>9} {:>9} {:>5}  {}",
        case.name,
        first.traces.len(),
        truth.map_or("?".into(), Truth::page),
        truth.map_or("?".into(), |t| if t.more && t.spans == 0 { "many".into() } else { t.spans.to_string() }),
        ms(cold),
        p50,
        p99,
        times.len(),
        verdict
    );
    verdict == "ok"
}

/// Walks every trace of `team` through `next_cursor`.
fn walk(store: &Store, team: &str, expected: Option<u64>) -> bool {
    let mut query = TraceQuery { team: Some(team.to_string()), limit: LIMIT, ..TraceQuery::default() };
    let mut seen: HashSet<TraceId> = HashSet::new();
    let mut times = Vec::new();
    let mut problems = Vec::new();
    for _ in 0..MAX_PAGES {
        let t = Instant::now();
        let page = store.find_traces(&query).expect("find_traces");
        times.push(t.elapsed());
        for summary in &page.traces {
            if !seen.insert(summary.trace_id) {
                problems.push(format!("trace {} listed twice", summary.trace_id.to_hex()));
            }
            if !summary_has_team(summary, team) {
                problems.push(format!("trace {} is not {team}'s", summary.trace_id.to_hex()));
            }
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => {
                query.cursor = None;
                break;
            }
        }
    }
    if query.cursor.is_some() {
        problems.push(format!("more than {MAX_PAGES} pages"));
    }
    if let Some(expected) = expected {
        if seen.len() as u64 != expected {
            problems.push(format!("{} traces walked, {expected} expected", seen.len()));
        }
    }
    let total: Duration = times.iter().sum();
    times.sort();
    println!(
        "{:<38} {:>5} {:>8} pages {:>4}  total {:>8.1} ms  page p50 {:>7.2} ms  p99 {:>7.2} ms  {}",
        format!("pagination: team={team}"),
        seen.len(),
        expected.map_or("?".into(), |e| e.to_string()),
        times.len(),
        ms(total),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        if problems.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL: {}", problems[..problems.len().min(3)].join("; "))
        }
    );
    problems.is_empty()
}

fn summary_has_team(summary: &TraceSummary, team: &str) -> bool {
    summary.teams.iter().any(|t| t == team)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// What the store's sled tree holds by key kind (`S` span segments, `B` body segments, `X`
/// postings, `W` words, `Y` run headers, `L` ledger, `I` commit records, `M` metadata): the
/// bytes sled is given, beside what it takes on disk.
fn breakdown(path: &Path) {
    let db = sled::Config::new().path(path).open().expect("open sled");
    let tree = db.open_tree("spans").expect("open tree");
    let mut kinds: std::collections::BTreeMap<u8, (u64, u64)> = Default::default();
    for entry in tree.iter() {
        let (key, value) = entry.expect("read");
        let kind = kinds.entry(key.first().copied().unwrap_or(0)).or_default();
        kind.0 += 1;
        kind.1 += (key.len() + value.len()) as u64;
    }
    let total: u64 = kinds.values().map(|k| k.1).sum();
    for (kind, (entries, bytes)) in kinds {
        println!("  {} {entries:>10} entries {:>10.1} MB", kind as char, bytes as f64 / 1e6);
    }
    println!("  keys and values {:.2} GB; sled on disk {:.2} GB", total as f64 / 1e9, disk_bytes(path) as f64 / 1e9);
}

fn main() {
    let spans = env_u64("SPANS", 10_000_000);
    let named = std::env::var_os("SEARCH_STORE").map(PathBuf::from);
    let path = named.clone().unwrap_or_else(|| std::env::temp_dir().join("tracegate-search-bench"));
    let reuse = std::env::var("SEARCH_REUSE").is_ok_and(|v| v == "1");
    let settings = Settings {
        runs: env_u64("SEARCH_RUNS", 50).max(1) as usize,
        budget: Duration::from_secs(env_u64("SEARCH_BUDGET_S", 20)),
        only: std::env::var("SEARCH_CASES")
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    };
    let truth_file = truth_path(&path);

    let started = Instant::now();
    let world = World::from_env();
    println!("world: {VOCABULARY} words, {TEAMS} teams, {USERS} users in {:.1} s", started.elapsed().as_secs_f64());

    let holds_spans = path.exists() && {
        let store = Store::open(&path).expect("open store");
        !store.find_traces(&TraceQuery { limit: 1, ..TraceQuery::default() }).expect("find_traces").traces.is_empty()
    };
    let built = if reuse && holds_spans {
        match load_truth(&truth_file) {
            Some((built_spans, built)) => {
                println!("reusing {} ({built_spans} spans built; truth from {})", path.display(), truth_file.display());
                Some(built)
            }
            None => {
                println!("reusing {} without its truth file: answers checked span by span only", path.display());
                None
            }
        }
    } else {
        if path.exists() {
            match named {
                Some(_) if holds_spans => {
                    eprintln!("{} already holds spans: set SEARCH_REUSE=1 to query it, or remove it", path.display());
                    std::process::exit(2);
                }
                _ => std::fs::remove_dir_all(&path).expect("remove the old store"),
            }
        }
        let _ = std::fs::remove_file(&truth_file);
        println!("building {spans} spans into {}", path.display());
        let built = build(&path, spans, &world);
        save_truth(&truth_file, spans, &built);
        Some(built)
    };
    println!("store on disk: {:.2} GB ({})", disk_bytes(&path) as f64 / 1e9, path.display());

    let opened = Instant::now();
    let store = Store::open(&path).expect("open store");
    println!("Store::open (index headers loaded, spans past the last run re-indexed): {:.0} ms", ms(opened.elapsed()));

    let base_ns = built.as_ref().map_or_else(
        || {
            // Without the truth file the window is placed from the oldest span.
            let oldest =
                store.find_traces(&TraceQuery { team: Some(OLD_TEAM.into()), limit: LIMIT, ..TraceQuery::default() });
            oldest.ok().and_then(|p| p.traces.iter().map(|t| t.start_time_unix_nano).min()).unwrap_or(0) / 1_000_000_000
                * 1_000_000_000
        },
        |b| b.base_ns,
    );
    let cases = cases(&world, base_ns);
    println!();
    println!(
        "{:<38} {:>5} {:>8} {:>10} {:>10} {:>9} {:>9} {:>5}  check",
        "case", "page", "expected", "spans", "cold ms", "p50 ms", "p99 ms", "runs"
    );
    let mut ok = true;
    for (i, case) in cases.iter().enumerate() {
        if settings.selected(&case.name) {
            ok &= run_case(&store, case, built.as_ref().map(|b| &b.truths[i]), &settings);
        }
    }
    let walked = format!("pagination: team={}", world.teams[WALKED_TEAM]);
    if settings.selected(&walked) {
        ok &= walk(&store, &world.teams[WALKED_TEAM], built.as_ref().map(|b| b.walked_team_traces));
    }
    if std::env::var("SEARCH_BREAKDOWN").is_ok_and(|v| v == "1") {
        drop(store);
        println!("\nstore by key kind:");
        breakdown(&path);
    }
    println!("\n{}", if ok { "all checks passed" } else { "SOME CHECKS FAILED" });
    if !ok {
        std::process::exit(1);
    }
}
