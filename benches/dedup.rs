//! What agent loops cost on disk: 50 loops of 20 steps, each step resending the whole
//! conversation (2 → ~40 KB) with one more round of messages, written through the real store
//! (sled) in batches that mix the loops, as the recorder writes them. Per step it prints the
//! bytes new in a call (the request's new middle and the response), the body bytes the store
//! keeps (requests as pieces of the step before, `store::dedup`), the same calls stored whole
//! (the store as it was: a second store given calls whose traces cannot be found again), and
//! each body compressed alone with lz4 and with zstd (level 3), as a store that compresses
//! per body would keep them. Every request is read back and compared with the original.
//! Run: `cargo bench --bench dedup`.

use std::time::Instant;

use tracegate::model::ids::{SpanId, TraceId};
use tracegate::model::span::{Span, SpanBodies, SpanKind, SpanWrite};
use tracegate::store::Store;

const LOOPS: usize = 50;
const STEPS: usize = 20;

/// A deterministic stream of words: text that compresses like prose, not like a repeated line.
struct Words(u64);

impl Words {
    fn next(&mut self) -> &'static str {
        const VOCABULARY: &[&str] = &[
            "order",
            "refund",
            "carrier",
            "address",
            "customer",
            "invoice",
            "status",
            "shipped",
            "delayed",
            "warehouse",
            "confirm",
            "policy",
            "window",
            "payment",
            "card",
            "tracking",
            "event",
            "hub",
            "departed",
            "arrived",
            "label",
            "return",
            "exchange",
            "credit",
            "support",
            "ticket",
            "escalate",
            "priority",
            "account",
            "email",
            "phone",
            "verified",
            "pending",
            "cancelled",
            "approved",
            "weight",
            "package",
            "parcel",
            "courier",
            "express",
            "standard",
            "international",
            "customs",
            "duty",
            "fee",
            "discount",
            "coupon",
            "loyalty",
            "points",
            "balance",
            "the",
            "a",
            "of",
            "to",
            "and",
            "is",
            "was",
            "for",
            "with",
            "on",
            "by",
            "at",
            "from",
            "not",
            "yet",
            "still",
            "now",
            "today",
            "tomorrow",
        ];
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        VOCABULARY[(self.0 >> 33) as usize % VOCABULARY.len()]
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words).map(|_| self.next()).collect::<Vec<_>>().join(" ")
    }
}

/// One round of an agent loop: a user turn, the assistant's tool call, the tool's answer
/// (~1.9 KB together).
fn round(loop_id: usize, n: usize, words: &mut Words) -> String {
    let events: Vec<String> = (0..12)
        .map(|e| {
            format!(
                "{{\\\"at\\\":\\\"2026-12-0{} {e:02}:{n:02}\\\",\\\"what\\\":\\\"{}\\\"}}",
                1 + e % 9,
                words.sentence(4)
            )
        })
        .collect();
    format!(
        concat!(
            r#"{{"role":"user","content":"Step {n}: {user}"}},"#,
            r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_{l}_{n}","type":"function","function":{{"name":"get_order_status","arguments":"{{\"order_id\":\"A-{l}{n:03}\"}}"}}}}]}},"#,
            r#"{{"role":"tool","tool_call_id":"call_{l}_{n}","content":"{{\"order_id\":\"A-{l}{n:03}\",\"note\":\"{note}\",\"events\":[{events}]}}"}}"#
        ),
        n = n,
        l = loop_id,
        user = words.sentence(30),
        note = words.sentence(40),
        events = events.join(","),
    )
}

/// The request of step `n` (1-based): system prompt (~1.5 KB), `n` rounds, tools.
fn request(system: &str, rounds: &[String], n: usize) -> String {
    let tools = (0..5)
        .map(|t| format!(r#"{{"type":"function","function":{{"name":"tool_{t}","description":"Look up part {t} of a customer order by its id.","parameters":{{"type":"object","properties":{{"order_id":{{"type":"string"}}}},"required":["order_id"]}}}}}}"#))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"{system}"}},{}],"tools":[{tools}],"temperature":0.2}}"#,
        rounds[..n].join(",")
    )
}

fn response(words: &mut Words, n: usize) -> String {
    format!(
        r#"{{"id":"chatcmpl-{n}","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":900,"completion_tokens":60,"total_tokens":960}}}}"#,
        words.sentence(50)
    )
}

/// Bytes a request shares with the step before at its head and tail: measured here, not
/// with the store's own function, so the yardstick does not depend on what it measures.
fn shared_ends(a: &[u8], b: &[u8]) -> usize {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    head + tail
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let dedup = Store::open(&dir.path().join("dedup")).unwrap();
    let whole = Store::open(&dir.path().join("whole")).unwrap();
    let mut words = Words(7);
    let system = words.sentence(220);
    let loops: Vec<(TraceId, SpanId, Vec<String>)> = (0..LOOPS)
        .map(|l| (TraceId::random(), SpanId::random(), (1..=STEPS).map(|n| round(l, n, &mut words)).collect()))
        .collect();
    let mut written: Vec<SpanWrite> = Vec::new();
    let mut previous: Vec<String> = vec![String::new(); LOOPS];
    let (mut dedup_time, mut whole_time) = (0.0f64, 0.0f64);
    let (mut tot_new, mut tot_dedup, mut tot_whole, mut tot_lz4, mut tot_zstd, mut tot_raw) = (0, 0, 0, 0, 0, 0);
    println!("{LOOPS} loops × {STEPS} steps; bytes per call (means over the {LOOPS} calls of a step)");
    println!(
        "{:>4} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "step", "request", "new", "stored", "st/new", "whole", "lz4", "zstd"
    );
    for n in 1..=STEPS {
        let mut batch = Vec::with_capacity(LOOPS);
        let (mut new, mut lz4, mut zstd, mut raw) = (0usize, 0usize, 0usize, 0usize);
        for (l, (trace, parent, rounds)) in loops.iter().enumerate() {
            let request = request(&system, rounds, n);
            let response = response(&mut words, n);
            new += request.len() - shared_ends(request.as_bytes(), previous[l].as_bytes()) + response.len();
            for body in [&request, &response] {
                let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(body.len())];
                lz4 += lz4_flex::block::compress_into(body.as_bytes(), &mut out).unwrap();
                zstd += zstd::bulk::compress(body.as_bytes(), 3).unwrap().len();
            }
            raw += request.len() + response.len();
            previous[l] = request.clone();
            let mut span = Span::new(*trace, SpanId::random(), SpanKind::Llm, "chat gpt-4o-mini".into());
            span.parent_span_id = Some(*parent);
            span.start_time_unix_nano = 1_800_000_000_000_000_000 + (n * 1_000 + l) as u64 * 1_000_000;
            let bodies = SpanBodies { request_body: Some(request), response_body: Some(response), truncated: false };
            batch.push(SpanWrite { span, bodies: Some(bodies) });
        }
        // The same calls without a way back to their trace are stored whole: the old layout.
        let unlinked: Vec<SpanWrite> = batch
            .iter()
            .map(|w| {
                let mut span = w.span.clone();
                span.parent_span_id = None;
                SpanWrite { span, bodies: w.bodies.clone() }
            })
            .collect();
        let (before_dedup, before_whole) = (dedup.body_bytes(), whole.body_bytes());
        let started = Instant::now();
        dedup.write_batch(&batch).unwrap();
        dedup_time += started.elapsed().as_secs_f64();
        let started = Instant::now();
        whole.write_batch(&unlinked).unwrap();
        whole_time += started.elapsed().as_secs_f64();
        let stored = dedup.body_bytes() - before_dedup;
        let stored_whole = whole.body_bytes() - before_whole;
        println!(
            "{n:>4} {:>9} {:>9} {:>9} {:>6.2}× {:>9} {:>9} {:>9}",
            raw / LOOPS,
            new / LOOPS,
            stored / LOOPS,
            stored as f64 / new as f64,
            stored_whole / LOOPS,
            lz4 / LOOPS,
            zstd / LOOPS
        );
        (tot_new, tot_dedup, tot_whole, tot_lz4, tot_zstd, tot_raw) = (
            tot_new + new,
            tot_dedup + stored,
            tot_whole + stored_whole,
            tot_lz4 + lz4,
            tot_zstd + zstd,
            tot_raw + raw,
        );
        written.extend(batch);
    }
    let calls = (LOOPS * STEPS) as f64;
    println!(
        "all  {:>9.0} {:>9.0} {:>9.0} {:>6.2}× {:>9.0} {:>9.0} {:>9.0}",
        tot_raw as f64 / calls,
        tot_new as f64 / calls,
        tot_dedup as f64 / calls,
        tot_dedup as f64 / tot_new as f64,
        tot_whole as f64 / calls,
        tot_lz4 as f64 / calls,
        tot_zstd as f64 / calls
    );
    println!(
        "stored / new: pieces {:.2}×, whole (lz4 segments) {:.2}×, lz4 alone {:.2}×, zstd alone {:.2}×, raw {:.2}×",
        tot_dedup as f64 / tot_new as f64,
        tot_whole as f64 / tot_new as f64,
        tot_lz4 as f64 / tot_new as f64,
        tot_zstd as f64 / tot_new as f64,
        tot_raw as f64 / tot_new as f64
    );
    println!(
        "write_batch: pieces {:.1} µs/call, whole {:.1} µs/call",
        dedup_time * 1e6 / calls,
        whole_time * 1e6 / calls
    );
    let started = Instant::now();
    for w in &written {
        let (_, bodies) = dedup.span(&w.span.trace_id, &w.span.span_id).unwrap().expect("stored");
        assert_eq!(bodies.request_body, w.bodies.as_ref().unwrap().request_body, "exact read");
        assert_eq!(bodies.response_body, w.bodies.as_ref().unwrap().response_body, "exact read");
    }
    let read = started.elapsed().as_secs_f64() * 1e6 / calls;
    let started = Instant::now();
    for w in &written {
        whole.span(&w.span.trace_id, &w.span.span_id).unwrap().expect("stored");
    }
    let read_whole = started.elapsed().as_secs_f64() * 1e6 / calls;
    println!(
        "every read exact ({} calls); one span with bodies: pieces {read:.1} µs, whole {read_whole:.1} µs",
        written.len()
    );
}
