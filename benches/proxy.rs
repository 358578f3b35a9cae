//! Proxy load benchmark: what tracegate costs a caller, measured end to end on loopback
//! against the real binaries.
//!
//! It starts two child processes of the `tracegate` binary built for this bench: a
//! `tracegate mock-llm` upstream and a `tracegate serve` proxy (temporary config and store,
//! one provider `openai` at prefix `/openai` pointing at the mock, bodies captured as by
//! default). Every workload runs twice, once DIRECT against the mock and once THROUGH the
//! proxy, so the difference is the proxy's cost:
//!
//! 1. Non-streaming: `POST /v1/chat/completions` (an OpenAI chat request) over 32 keep-alive
//!    HTTP/1.1 connections, each sending its next request as soon as the previous answer is
//!    read, until 20,000 requests are done (after 1,000 unmeasured warm-up requests; each
//!    phase is also capped at 30 s). Reported: requests per second, p50/p99 latency (request
//!    sent → whole response body read) and the latency the proxy adds at p50/p99 (in that
//!    "proxy − direct" row the req/s column is the throughput ratio proxy / direct).
//! 2. Slow streams: 1,000 streaming requests (`"stream": true`; `STREAMS=10000` for more),
//!    each on its own connection (opened beforehand, not timed), started evenly over 1 s; the mock's hooks
//!    (`x-mock-chunks: 40`, `x-mock-chunk-delay-ms: 50`) make every stream last about 2 s, so
//!    all 1,000 are open at the same time (the peak is printed). Reported: p50/p99 time to first token (request
//!    sent → first body bytes that complete a `data:` event with non-empty `delta.content`; the
//!    mock sends that event 50 ms after its first, content-free one, so ~50 ms is the floor)
//!    and of the whole stream, and the proxy's overhead on both. This runs in two rounds: in
//!    round 1 the proxy must open its ~1,000 upstream connections to the mock inside the
//!    burst (cold pool), in round 2 it reuses them (warm pool). The "listen ovf" column is the
//!    increase of the host's TcpExt ListenOverflows while the streams ran (system-wide, after
//!    the bench's own connections were set up): the listeners of mock and proxy use a backlog
//!    of 128 (mio's default), and a SYN dropped by a full accept queue is retried by the
//!    kernel after 1 s, which shows up as a ~1 s TTFT p99.
//! 3. Recording: after the run it reads the proxy's admin `/metrics` (polling until the
//!    recorder, which flushes every 200 ms, has settled) and compares
//!    `tracegate_spans_recorded_total` with the number of requests sent through the proxy
//!    (warm-up included); `tracegate_spans_dropped_total` should be 0. It also prints the
//!    proxy's peak resident memory (VmHWM from /proc/<pid>/status).
//!
//! Run: `cargo bench --bench proxy` (release build; the run itself takes well under a minute
//! on an idle machine). Linux only (/proc, RLIMIT_NOFILE). The bench raises its open-file soft
//! limit to the hard limit before spawning the children, which inherit it; it needs room for
//! about 2 × 1,000 sockets in the proxy.
//!
//! Reading the numbers: client, mock and proxy share the machine's cores, so absolute figures
//! depend on the host and on what else runs; compare DIRECT and PROXY rows of the same run. The
//! "proxy − direct" rows are the cost of one extra hop through tracegate (parsing, forwarding,
//! body capture, span recording) under that load. Children are killed when the bench ends,
//! also when it panics.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use tokio::sync::Semaphore;

use common::{
    connect, fetch_metrics, free_loopback_addrs, metric_value, ms, percentile, start_mock, ChildProcess, Connection,
};

// ---------------------------------------------------------------------------------------------
// Workload parameters.

/// Keep-alive connections of the non-streaming phase.
const CONNECTIONS: usize = 32;
/// Unmeasured requests before each non-streaming phase (connections, pools, caches).
const WARMUP_REQUESTS: u64 = 1_000;
/// Measured requests of each non-streaming phase.
const MEASURED_REQUESTS: u64 = 20_000;
/// Upper bound on the duration of one non-streaming phase.
const PHASE_TIME_LIMIT: Duration = Duration::from_secs(30);

/// Concurrent slow streams by default.
const DEFAULT_STREAMS: usize = 1_000;

/// Concurrent slow streams: `STREAMS` from the environment (issue 21 asks for 10,000), else 1,000.
fn streams() -> usize {
    std::env::var("STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_STREAMS)
}
/// Rounds of the slow-streams phase (1: the proxy's upstream pool is cold, 2: warm).
const STREAM_ROUNDS: usize = 2;
/// Content events per stream (`x-mock-chunks`).
const STREAM_CHUNKS: u32 = 40;
/// Pause between two events of a stream (`x-mock-chunk-delay-ms`).
const STREAM_CHUNK_DELAY_MS: u64 = 50;
/// Stream starts are spread over this time (shorter than a stream, 40 × 50 ms).
const STREAM_START_SPREAD: Duration = Duration::from_secs(1);
/// Upper bound on one stream, from connecting to its end.
const STREAM_TIME_LIMIT: Duration = Duration::from_secs(30);
/// Connections opened at the same time while setting up the streams (not measured).
const CONNECT_PARALLELISM: usize = 64;

/// How long to wait for the recorder to write every span.
const RECORDER_SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

const CHAT_PATH: &str = "/v1/chat/completions";
const PROXY_PREFIX: &str = "/openai";
const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"In one sentence, what does distributed tracing show?"}],"temperature":0.2,"max_tokens":64}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"In one sentence, what does distributed tracing show?"}],"temperature":0.2,"stream":true,"stream_options":{"include_usage":true}}"#;

fn main() {
    let open_file_limit = raise_open_file_limit();
    let stack = Stack::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let started = Instant::now();
    let report = runtime.block_on(run_workloads(&stack));
    let recording = runtime.block_on(settled_recording(stack.admin_addr, report.sent_through_proxy));
    let peak_rss_kib = peak_rss_kib(stack.proxy.pid());
    print_report(open_file_limit, &report, &recording, peak_rss_kib, started.elapsed());
    drop(stack); // kills the children (also done on panic, by unwinding)
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// The mock upstream and the proxy in front of it. Fields drop in order: the proxy, then the
/// mock, then the temporary directory holding the config, logs and store.
struct Stack {
    proxy: ChildProcess,
    _mock: ChildProcess,
    mock_addr: SocketAddr,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Stack {
    fn start() -> Stack {
        let dir = tempfile::tempdir().expect("temporary directory");
        let [mock_addr, proxy_addr, admin_addr] = free_loopback_addrs();

        let mock = start_mock(mock_addr, dir.path().join("mock.log"));

        let config = write_proxy_config(dir.path(), mock_addr, proxy_addr, admin_addr);
        let config = config.to_str().expect("UTF-8 temp path");
        let mut proxy = ChildProcess::spawn("proxy", &["serve", "--config", config], dir.path().join("proxy.log"));
        proxy.wait_until_listening(proxy_addr);
        proxy.wait_until_listening(admin_addr);

        Stack { proxy, _mock: mock, mock_addr, proxy_addr, admin_addr, _dir: dir }
    }
}

/// Writes the proxy's config: one OpenAI provider at `/openai` pointing at the mock.
fn write_proxy_config(dir: &Path, mock: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> PathBuf {
    let store = dir.join("store");
    let text = format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"

[storage]
path = '{store}'

[[providers]]
name = "openai"
prefix = "{PROXY_PREFIX}"
upstream = "http://{mock}"
api = "openai"

[pricing."gpt-4o-mini"]
input_per_mtok = 0.15
cached_input_per_mtok = 0.075
output_per_mtok = 0.60
"#,
        store = store.display()
    );
    let path = dir.join("tracegate.toml");
    std::fs::write(&path, text).expect("write proxy config");
    path
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it) and returns it.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit(RLIMIT_NOFILE)");
        let wanted = if limit.rlim_max == libc::RLIM_INFINITY { kernel_open_file_ceiling() } else { limit.rlim_max };
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                eprintln!("warning: cannot raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            }
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit(RLIMIT_NOFILE)");
    }
    let needed = 2 * streams() as u64 + 512;
    assert!(limit.rlim_cur >= needed, "open-file limit {} is below the {needed} the streams need", limit.rlim_cur);
    limit.rlim_cur
}

/// The most file descriptors a process may have (`fs.nr_open`), for an unlimited hard limit.
fn kernel_open_file_ceiling() -> libc::rlim_t {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}

/// Peak resident set size of a process in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP client plumbing.

/// Where requests go: the mock directly, or the proxy with the provider prefix. `sent` counts
/// every request handed to a connection, so the proxy's count can be checked against its spans.
#[derive(Clone)]
struct Target {
    label: &'static str,
    addr: SocketAddr,
    chat_path: String,
    sent: Arc<AtomicU64>,
}

impl Target {
    fn new(label: &'static str, addr: SocketAddr, prefix: &str) -> Target {
        Target { label, addr, chat_path: format!("{prefix}{CHAT_PATH}"), sent: Arc::new(AtomicU64::new(0)) }
    }

    fn chat_request(&self, body: &'static str, extra_headers: &[(&str, String)]) -> Request<Full<Bytes>> {
        let mut builder = Request::post(self.chat_path.as_str())
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-bench");
        for (name, value) in extra_headers {
            builder = builder.header(*name, value.as_str());
        }
        builder.body(Full::new(Bytes::from_static(body.as_bytes()))).expect("valid request")
    }
}

/// Opens `count` connections, at most `CONNECT_PARALLELISM` at a time.
async fn connect_many(addr: SocketAddr, count: usize) -> Vec<Result<Connection, String>> {
    let permits = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                connect(addr).await
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(count);
    for task in tasks {
        connections.push(task.await.expect("connect task panicked"));
    }
    connections
}

/// Sends one request on `connection` and reads the whole response body.
async fn send_and_read(connection: &mut Connection, target: &Target) -> Result<(), String> {
    connection.ready().await.map_err(|e| e.to_string())?;
    target.sent.fetch_add(1, Ordering::Relaxed);
    let response = connection.send_request(target.chat_request(CHAT_BODY, &[])).await.map_err(|e| e.to_string())?;
    let status = response.status();
    response.into_body().collect().await.map_err(|e| e.to_string())?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads.

struct Report {
    direct_load: LoadResult,
    proxy_load: LoadResult,
    stream_rounds: Vec<StreamRound>,
    sent_through_proxy: u64,
}

async fn run_workloads(stack: &Stack) -> Report {
    let direct = Target::new("direct", stack.mock_addr, "");
    let proxy = Target::new("proxy", stack.proxy_addr, PROXY_PREFIX);

    let direct_load = warm_up_then_measure(&direct).await;
    let proxy_load = warm_up_then_measure(&proxy).await;
    let mut stream_rounds = Vec::with_capacity(STREAM_ROUNDS);
    for round in 1..=STREAM_ROUNDS {
        let direct = run_slow_streams(&direct, round).await;
        let proxy = run_slow_streams(&proxy, round).await;
        stream_rounds.push(StreamRound { direct, proxy });
    }

    Report { direct_load, proxy_load, stream_rounds, sent_through_proxy: proxy.sent.load(Ordering::Relaxed) }
}

/// Outcome of a fixed-count non-streaming phase.
struct LoadResult {
    errors: u64,
    elapsed: Duration,
    /// Sorted latencies of the successful requests.
    latencies: Vec<Duration>,
}

impl LoadResult {
    fn requests_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn warm_up_then_measure(target: &Target) -> LoadResult {
    progress(&format!("{}: non-streaming warm-up ({WARMUP_REQUESTS} requests)", target.label));
    let warm_up = run_fixed_load(target, WARMUP_REQUESTS).await;
    assert!(warm_up.errors == 0, "{}: {} warm-up requests failed", target.label, warm_up.errors);
    progress(&format!("{}: non-streaming, {MEASURED_REQUESTS} requests on {CONNECTIONS} connections", target.label));
    run_fixed_load(target, MEASURED_REQUESTS).await
}

/// `total` requests over `CONNECTIONS` keep-alive connections, each worker sending its next
/// request when the previous answer is read, stopping early at `PHASE_TIME_LIMIT`.
async fn run_fixed_load(target: &Target, total: u64) -> LoadResult {
    let tickets = Arc::new(AtomicU64::new(total));
    let started = Instant::now();
    let deadline = started + PHASE_TIME_LIMIT;
    let workers: Vec<_> =
        (0..CONNECTIONS).map(|_| tokio::spawn(load_worker(target.clone(), tickets.clone(), deadline))).collect();
    let mut result = LoadResult { errors: 0, elapsed: Duration::ZERO, latencies: Vec::with_capacity(total as usize) };
    for worker in workers {
        let (latencies, errors) = worker.await.expect("load worker panicked");
        result.latencies.extend(latencies);
        result.errors += errors;
    }
    result.elapsed = started.elapsed();
    result.latencies.sort_unstable();
    result
}

/// One connection's share of a phase: its latencies and its error count. A failed request
/// drops the connection; the next one opens a new connection.
async fn load_worker(target: Target, tickets: Arc<AtomicU64>, deadline: Instant) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut connection: Option<Connection> = None;
    while Instant::now() < deadline && take_ticket(&tickets) {
        if connection.is_none() {
            match connect(target.addr).await {
                Ok(c) => connection = Some(c),
                Err(_) => {
                    errors += 1;
                    continue;
                }
            }
        }
        let open = connection.as_mut().expect("connected");
        let sent_at = Instant::now();
        match send_and_read(open, &target).await {
            Ok(()) => latencies.push(sent_at.elapsed()),
            Err(_) => {
                errors += 1;
                connection = None;
            }
        }
    }
    (latencies, errors)
}

/// Takes one request from the shared budget; false when it is used up.
fn take_ticket(tickets: &AtomicU64) -> bool {
    tickets.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

/// One round of slow streams, direct then through the proxy.
struct StreamRound {
    direct: StreamsResult,
    proxy: StreamsResult,
}

/// Outcome of one round of slow streams against one target.
struct StreamsResult {
    /// Sorted times to the first content event.
    ttft: Vec<Duration>,
    /// Sorted whole-stream times.
    total: Vec<Duration>,
    errors: Vec<String>,
    peak_open: usize,
    /// Increase of the host's TcpExt ListenOverflows while the streams ran.
    listen_overflows: Option<u64>,
}

/// Counts streams whose response headers arrived and whose body has not ended yet.
#[derive(Default)]
struct OpenStreams {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl OpenStreams {
    fn enter(self: &Arc<Self>) -> OpenStreamGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        OpenStreamGuard(self.clone())
    }
}

struct OpenStreamGuard(Arc<OpenStreams>);

impl Drop for OpenStreamGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens `STREAMS` connections first (not measured), then starts one slow stream on each,
/// spread over `STREAM_START_SPREAD`.
async fn run_slow_streams(target: &Target, round: usize) -> StreamsResult {
    progress(&format!(
        "{}: round {round}, {} concurrent streams, {STREAM_CHUNKS} chunks {STREAM_CHUNK_DELAY_MS} ms apart",
        target.label,
        streams()
    ));
    let open = Arc::new(OpenStreams::default());
    let mut errors = Vec::new();
    let count = streams();
    let mut tasks = Vec::with_capacity(count);
    let connections = connect_many(target.addr, count).await;
    let overflows_before = listen_overflows();
    let first_start = tokio::time::Instant::now();
    for (index, connection) in connections.into_iter().enumerate() {
        match connection {
            Ok(connection) => {
                let (target, open) = (target.clone(), open.clone());
                // Starts are spread evenly over STREAM_START_SPREAD, like arriving users; each
                // stream lasts longer than the spread, so all are open together at the end of it.
                let start_at = first_start + STREAM_START_SPREAD * index as u32 / count as u32;
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(start_at).await;
                    tokio::time::timeout(STREAM_TIME_LIMIT, one_slow_stream(connection, &target, &open))
                        .await
                        .unwrap_or_else(|_| Err("stream timed out".into()))
                }));
            }
            Err(e) => errors.push(e),
        }
    }
    let (mut ttft, mut total) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for task in tasks {
        match task.await.expect("stream task panicked") {
            Ok(timing) => {
                ttft.push(timing.first_content);
                total.push(timing.whole_stream);
            }
            Err(e) => errors.push(e),
        }
    }
    ttft.sort_unstable();
    total.sort_unstable();
    let listen_overflows = Option::zip(listen_overflows(), overflows_before).map(|(after, before)| after - before);
    StreamsResult { ttft, total, errors, peak_open: open.peak.load(Ordering::SeqCst), listen_overflows }
}

/// The host's TcpExt ListenOverflows counter: connections dropped because an accept queue
/// was full (any listener on the host).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let column = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

struct StreamTiming {
    first_content: Duration,
    whole_stream: Duration,
}

/// Sends one streaming request and reads it to the end, timing the first content event.
async fn one_slow_stream(
    mut connection: Connection,
    target: &Target,
    open: &Arc<OpenStreams>,
) -> Result<StreamTiming, String> {
    connection.ready().await.map_err(|e| e.to_string())?;
    let hooks =
        [("x-mock-chunks", STREAM_CHUNKS.to_string()), ("x-mock-chunk-delay-ms", STREAM_CHUNK_DELAY_MS.to_string())];
    let request = target.chat_request(STREAM_BODY, &hooks);
    target.sent.fetch_add(1, Ordering::Relaxed);
    let sent_at = Instant::now();
    let response = connection.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let _open = open.enter();
    let mut body = response.into_body();
    let mut events = SseScanner::default();
    let mut first_content = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            events.push(data);
            if first_content.is_none() && events.saw_content {
                first_content = Some(sent_at.elapsed());
            }
        }
    }
    let whole_stream = sent_at.elapsed();
    if !events.saw_done {
        return Err("stream ended without data: [DONE]".into());
    }
    let first_content = first_content.ok_or("stream had no content event")?;
    Ok(StreamTiming { first_content, whole_stream })
}

/// Splits a chat-completions SSE body into events as bytes arrive and notes the first event
/// carrying non-empty `choices[0].delta.content`, and the final `data: [DONE]`.
#[derive(Default)]
struct SseScanner {
    pending: Vec<u8>,
    saw_content: bool,
    saw_done: bool,
}

impl SseScanner {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            self.inspect_event(&event);
        }
    }

    fn inspect_event(&mut self, event: &[u8]) {
        let text = String::from_utf8_lossy(event);
        for data in text.lines().filter_map(|line| line.strip_prefix("data:")).map(str::trim) {
            if data == "[DONE]" {
                self.saw_done = true;
            } else if !self.saw_content && has_delta_content(data) {
                self.saw_content = true;
            }
        }
    }
}

fn has_delta_content(data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(|c| !c.is_empty()))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Recording check.

struct Recording {
    recorded: Option<u64>,
    dropped: Option<u64>,
}

/// Polls the admin `/metrics` until recorded + dropped spans reach `expected` and stop
/// changing, or until `RECORDER_SETTLE_TIMEOUT`.
async fn settled_recording(admin: SocketAddr, expected: u64) -> Recording {
    progress("waiting for the proxy's recorder to settle");
    let deadline = Instant::now() + RECORDER_SETTLE_TIMEOUT;
    let mut last = Recording { recorded: None, dropped: None };
    let mut unchanged_polls = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let current = match fetch_metrics(admin).await {
            Ok(text) => Recording {
                recorded: metric_value(&text, "tracegate_spans_recorded_total"),
                dropped: metric_value(&text, "tracegate_spans_dropped_total"),
            },
            Err(e) => {
                eprintln!("warning: /metrics: {e}");
                Recording { recorded: None, dropped: None }
            }
        };
        let accounted = current.recorded.unwrap_or(0) + current.dropped.unwrap_or(0);
        let same = current.recorded == last.recorded && current.dropped == last.dropped;
        unchanged_polls = if same { unchanged_polls + 1 } else { 0 };
        last = current;
        let settled = (accounted >= expected && unchanged_polls >= 1) || unchanged_polls >= 8;
        if settled || Instant::now() >= deadline {
            return last;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// proxy − direct at percentile `p`, in milliseconds (signed).
fn overhead_ms(direct: &[Duration], proxy: &[Duration], p: f64) -> f64 {
    ms(percentile(proxy, p)) - ms(percentile(direct, p))
}

fn progress(message: &str) {
    eprintln!("[proxy bench] {message}");
}

fn print_report(open_file_limit: u64, r: &Report, rec: &Recording, peak_rss_kib: Option<u64>, wall: Duration) {
    println!();
    println!("tracegate proxy benchmark — loopback, open-file limit {open_file_limit}, {:.1} s", wall.as_secs_f64());
    println!();
    println!(
        "non-streaming POST {CHAT_PATH}: {CONNECTIONS} keep-alive connections, {MEASURED_REQUESTS} requests (+{WARMUP_REQUESTS} warm-up)"
    );
    println!("{:<14} {:>7} {:>7} {:>10} {:>9} {:>9}", "target", "ok", "errors", "req/s", "p50 ms", "p99 ms");
    for (label, load) in [("direct", &r.direct_load), ("proxy", &r.proxy_load)] {
        println!(
            "{:<14} {:>7} {:>7} {:>10.0} {:>9.3} {:>9.3}",
            label,
            load.latencies.len(),
            load.errors,
            load.requests_per_second(),
            ms(percentile(&load.latencies, 50.0)),
            ms(percentile(&load.latencies, 99.0)),
        );
    }
    let (direct, proxy) = (&r.direct_load.latencies, &r.proxy_load.latencies);
    println!(
        "{:<14} {:>7} {:>7} {:>9.2}x {:>+9.3} {:>+9.3}",
        "proxy − direct",
        "",
        "",
        r.proxy_load.requests_per_second() / r.direct_load.requests_per_second(),
        overhead_ms(direct, proxy, 50.0),
        overhead_ms(direct, proxy, 99.0),
    );
    println!();
    print_stream_rounds(&r.stream_rounds);
    println!();
    let show = |v: Option<u64>| v.map_or("unavailable".to_string(), |v| v.to_string());
    let verdict = match rec.recorded {
        Some(n) if n == r.sent_through_proxy => "yes",
        _ => "NO",
    };
    println!("proxy recording (admin /metrics after the recorder settled)");
    println!("  requests sent through the proxy  {}", r.sent_through_proxy);
    println!("  tracegate_spans_recorded_total   {}", show(rec.recorded));
    println!("  tracegate_spans_dropped_total    {}", show(rec.dropped));
    println!("  recorded == sent                 {verdict}");
    println!(
        "  proxy peak RSS (VmHWM)           {}",
        peak_rss_kib.map_or("unavailable".to_string(), |kib| format!("{kib} kB ({:.1} MiB)", kib as f64 / 1024.0))
    );
}

fn print_stream_rounds(rounds: &[StreamRound]) {
    println!(
        "streaming: {} concurrent streams, {STREAM_CHUNKS} chunks {STREAM_CHUNK_DELAY_MS} ms apart, times in ms \
         (round 1: proxy upstream pool cold, round 2: warm)",
        streams()
    );
    println!(
        "{:<18} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "target", "ok", "errors", "peak open", "TTFT p50", "TTFT p99", "total p50", "total p99", "listen ovf"
    );
    for (index, round) in rounds.iter().enumerate() {
        let n = index + 1;
        for (label, streams) in [("direct", &round.direct), ("proxy", &round.proxy)] {
            println!(
                "{:<18} {:>5} {:>6} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10}",
                format!("{label} #{n}"),
                streams.ttft.len(),
                streams.errors.len(),
                streams.peak_open,
                ms(percentile(&streams.ttft, 50.0)),
                ms(percentile(&streams.ttft, 99.0)),
                ms(percentile(&streams.total, 50.0)),
                ms(percentile(&streams.total, 99.0)),
                streams.listen_overflows.map_or("?".to_string(), |n| n.to_string()),
            );
        }
        let (d, p) = (&round.direct, &round.proxy);
        println!(
            "{:<18} {:>5} {:>6} {:>9} {:>+9.1} {:>+9.1} {:>+9.1} {:>+9.1}",
            format!("proxy − direct #{n}"),
            "",
            "",
            "",
            overhead_ms(&d.ttft, &p.ttft, 50.0),
            overhead_ms(&d.ttft, &p.ttft, 99.0),
            overhead_ms(&d.total, &p.total, 50.0),
            overhead_ms(&d.total, &p.total, 99.0),
        );
        for (label, streams) in [("direct", d), ("proxy", p)] {
            if let Some(first) = streams.errors.first() {
                println!("  {label} #{n} stream errors: {} (first: {first})", streams.errors.len());
            }
        }
    }
}
