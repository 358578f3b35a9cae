//! Recorder throughput: how many finished calls per second the recorder thread turns into
//! spans (`build_span`) and writes to sled (`Store::write_batch`), beside a naive baseline
//! store that writes one sled key per span and per body (the layout the segment design
//! replaced). Two kinds of call: a small chat call, and a 12 KB agent step (system prompt,
//! tools, six tool-call rounds) with the same answer. Run: `cargo bench --bench recorder`.

#[path = "common/agent_step.rs"]
mod agent_step;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracegate::config::Config;
use tracegate::model::capture::Capture;
use tracegate::model::ids::{SpanId, TraceId};
use tracegate::model::span::SpanWrite;
use tracegate::record::{build_span, CallInfo, CallRecord, Outcome, RecorderSettings};
use tracegate::store::Store;

const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"In one sentence, what does distributed tracing show?"}],"temperature":0.2,"max_tokens":64}"#;
const RESPONSE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1732406400,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog. Tracing shows where the time goes."},"finish_reason":"stop"}],"usage":{"prompt_tokens":27,"completion_tokens":17,"total_tokens":44}}"#;

fn record(config: &Config, request: &[u8]) -> CallRecord {
    let capture = |body: &[u8]| {
        let mut c = Capture::new(1 << 20, Some(body.len() as u64));
        c.push(body, 100);
        c.finish()
    };
    CallRecord {
        info: CallInfo {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            provider: config.providers[0].clone(),
            method: http::Method::POST,
            path: "/v1/chat/completions".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            tracegate_headers: Vec::new(),
            session: None,
            team_key: None,
            reservation: None,
        },
        duration: Duration::from_micros(850),
        status_code: Some(200),
        outcome: Outcome::Completed,
        request_body: capture(request),
        response_body: capture(RESPONSE.as_bytes()),
        response_is_sse: false,
        response_encoding: None,
        response_token_counts: None,
    }
}

fn report(name: &str, n: usize, elapsed: Duration, cpu: Option<Duration>) {
    let cpu = cpu.map(|c| format!(" {:>9.2} µs CPU/span (all threads)", c.as_secs_f64() * 1e6 / n as f64));
    println!(
        "{name:<40} {:>9.2} µs/span {:>10.0} spans/s{}",
        elapsed.as_secs_f64() * 1e6 / n as f64,
        n as f64 / elapsed.as_secs_f64(),
        cpu.unwrap_or_default()
    );
}

/// CPU time of the whole process (every thread: sled's flusher and log writer too), which is
/// what a proxy pinned to one core pays; wall time on the calling thread misses it.
fn process_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the pointer it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn main() {
    let config = Config::from_toml("", &|_| None).unwrap();
    let settings = RecorderSettings::from_config(&config);
    let n = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let agent_step = agent_step::body("gpt-4o-mini");
    let mut chat_writes = Vec::new();
    // `cargo bench --bench recorder -- agent` runs only the kinds whose name holds the word
    // (to profile one); the baseline runs only in a run of them all.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let kinds = [("chat", REQUEST.as_bytes()), ("agent step", &agent_step[..])];
    for (kind, request) in kinds.into_iter().filter(|(kind, _)| only.as_ref().is_none_or(|o| kind.contains(o.as_str())))
    {
        println!("# {kind}: request {} bytes, response {} bytes", request.len(), RESPONSE.len());
        // Built and written a batch at a time, as the recorder does, so the bodies' memory is
        // reused instead of 50,000 of them held at once (page faults would be measured).
        let store = Arc::new(Store::open(&dir.path().join(kind)).unwrap());
        let (mut building, mut writing, mut writing_cpu) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..n / 500 {
            let mut records: Vec<CallRecord> = (0..500).map(|_| record(&config, request)).collect();
            let start = Instant::now();
            let writes: Vec<SpanWrite> = records.iter_mut().map(|r| build_span(r, &settings)).collect();
            building += start.elapsed();
            let (start, cpu) = (Instant::now(), process_cpu());
            store.write_batch(&writes).unwrap();
            writing += start.elapsed();
            writing_cpu += process_cpu() - cpu;
            if kind == "chat" {
                chat_writes.extend(writes);
            }
        }
        let (start, cpu) = (Instant::now(), process_cpu());
        store.flush().unwrap();
        writing += start.elapsed();
        writing_cpu += process_cpu() - cpu;
        report("build_span (parse, price)", n, building, None);
        report("Store::write_batch (segments, 500/batch)", n, writing, Some(writing_cpu));
    }
    let writes = chat_writes;
    if only.is_some() {
        return;
    }

    // Baseline: one key per span and one per body in separate trees, as a naive store would.
    let db = sled::Config::new().path(dir.path().join("naive")).flush_every_ms(None).open().unwrap();
    let spans = db.open_tree("spans").unwrap();
    let bodies = db.open_tree("bodies").unwrap();
    let start = Instant::now();
    for chunk in writes.chunks(500) {
        let mut span_batch = sled::Batch::default();
        let mut body_batch = sled::Batch::default();
        for w in chunk {
            let mut key = w.span.trace_id.0.to_vec();
            key.extend_from_slice(&w.span.span_id.0);
            span_batch.insert(key.clone(), serde_json::to_vec(&w.span).unwrap());
            body_batch.insert(key, serde_json::to_vec(&w.bodies).unwrap());
        }
        spans.apply_batch(span_batch).unwrap();
        bodies.apply_batch(body_batch).unwrap();
    }
    db.flush().unwrap();
    report("chat baseline: key per span + key per body", n, start.elapsed(), None);
}
