//! Cluster benchmark: two tracegate instances sharing PostgreSQL and Redis, beside one, with the
//! real binaries on loopback.
//!
//! It starts a private PostgreSQL and Redis (the cluster tests' `engines.rs`: a fresh `initdb`
//! cluster run as the `postgres` user, with `fsync=off`, and a Redis without persistence), one
//! `tracegate mock-llm`, and then, one after another, three setups of `tracegate serve`:
//!
//! 1. **alone**: one instance, no `[cluster]` (the embedded default, the reference);
//! 2. **cluster ×1**: one instance with `[cluster]` postgres and redis;
//! 3. **cluster ×2**: two instances with the same `[cluster]`, the load split evenly.
//!
//! Each setup gets its own database and its own team, whose daily budget and requests-per-minute
//! limit are set far above the load, so every call takes the full path of the limits (with Redis:
//! one admit script before the call and one settle script after) without being refused. The load
//! is the proxy bench's non-streaming chat call: 32 keep-alive HTTP/1.1 connections in all, each
//! sending its next request when the previous answer is read, 1,000 unmeasured warm-up requests
//! then 20,000 measured ones (capped at 30 s). Reported per setup: requests per second (and the
//! ratio to "alone"), p50/p99 latency, the peak `tracegate_cluster_backlog_spans` summed over the
//! instances (polled every 100 ms), and the **sync lag** of every measured call: the time from the
//! call's end (its span's start + duration) to its row's commit in PostgreSQL (`synced_at`),
//! p50/p99/max, read from PostgreSQL once every span has arrived. It also checks that
//! PostgreSQL holds exactly one row per call sent.
//!
//! Run: `cargo bench --bench cluster` (needs Debian's `postgresql` and `redis-server`, as the
//! tests do; about a minute). Client, mock, instances, PostgreSQL and Redis share the machine's
//! cores: on two cores a second instance adds no capacity, it shows the cost of sharing.

mod common;
#[allow(dead_code)] // the outage helpers are the tests' alone
#[path = "../tests/integration/engines.rs"]
mod engines;
/// What `engines.rs` takes from the test support module.
mod support {
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};

use common::{
    connect, fetch_metrics, free_loopback_addrs, metric_value, ms, percentile, start_mock, ChildProcess, Connection,
};
use engines::{Postgres, Redis};

const CONNECTIONS: usize = 32;
const WARMUP_REQUESTS: u64 = 1_000;
const MEASURED_REQUESTS: u64 = 20_000;
const PHASE_TIME_LIMIT: Duration = Duration::from_secs(30);
/// How long every span may take to reach PostgreSQL after the load.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const CHAT_PATH: &str = "/openai/v1/chat/completions";
const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"In one sentence, what does distributed tracing show?"}],"temperature":0.2,"max_tokens":64}"#;

struct Setup {
    label: &'static str,
    instances: usize,
    postgres: bool,
    redis: bool,
    /// Calls per second in all (paced), or `None` for as fast as answers come.
    rate: Option<u64>,
}

const fn setup(label: &'static str, instances: usize, postgres: bool, redis: bool) -> Setup {
    Setup { label, instances, postgres, redis, rate: None }
}

const SETUPS: [Setup; 6] = [
    setup("alone", 1, false, false),
    setup("redis only ×1", 1, false, true),
    setup("postgres only ×1", 1, true, false),
    setup("cluster ×1", 1, true, true),
    setup("cluster ×2", 2, true, true),
    // The lag at a load the machine carries easily: what a user sees.
    Setup { label: "cluster ×2 at 1,000/s", instances: 2, postgres: true, redis: true, rate: Some(1_000) },
];
/// Measured calls of a paced setup (5 s at 1,000/s).
const PACED_REQUESTS: u64 = 5_000;

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    progress("starting PostgreSQL and Redis");
    let pg = Postgres::start();
    let redis = Redis::start();
    let [mock_addr] = free_loopback_addrs();
    let mock = start_mock(mock_addr, dir.path().join("mock.log"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let mut results = Vec::new();
    for (n, setup) in SETUPS.iter().enumerate() {
        let database = format!("bench{n}");
        runtime.block_on(async {
            pg.client().await.batch_execute(&format!("CREATE DATABASE {database}")).await.expect("create database")
        });
        let postgres = format!("postgres://postgres@127.0.0.1:{}/{database}", pg.port);
        let team = format!("bench-{n}");
        let instances: Vec<Instance> = (0..setup.instances)
            .map(|i| {
                let cluster = (setup.postgres || setup.redis).then(|| ClusterKeys {
                    instance: format!("instance-{i}"),
                    postgres: setup.postgres.then(|| postgres.clone()),
                    redis: setup.redis.then(|| redis.url()),
                });
                Instance::start(&dir.path().join(format!("{n}-{i}")), mock_addr, &team, cluster)
            })
            .collect();
        let result = runtime.block_on(run_setup(setup, &instances, &team, setup.postgres.then_some(&postgres)));
        results.push(result);
        drop(instances);
    }
    print_report(&results);
    drop(mock);
}

/// The `[cluster]` keys of one instance.
struct ClusterKeys {
    instance: String,
    postgres: Option<String>,
    redis: Option<String>,
}

/// One `tracegate serve` child with its own config and store.
struct Instance {
    proxy: SocketAddr,
    admin: SocketAddr,
    child: ChildProcess,
}

impl Instance {
    fn start(dir: &Path, mock: SocketAddr, team: &str, cluster: Option<ClusterKeys>) -> Instance {
        std::fs::create_dir_all(dir).expect("instance dir");
        let [proxy, admin] = free_loopback_addrs();
        let cluster = match cluster {
            Some(keys) => {
                let mut text = format!("[cluster]\ninstance = \"{}\"\n", keys.instance);
                for (key, value) in [("postgres", keys.postgres), ("redis", keys.redis)] {
                    if let Some(url) = value {
                        text.push_str(&format!("{key} = \"{url}\"\n"));
                    }
                }
                text
            }
            None => String::new(),
        };
        let config = format!(
            "[server]\nlisten = \"{proxy}\"\nadmin_listen = \"{admin}\"\n[storage]\npath = '{}'\n\
             [[providers]]\nname = \"openai\"\nprefix = \"/openai\"\nupstream = \"http://{mock}\"\napi = \"openai\"\n\
             [[teams]]\nname = \"{team}\"\ndaily_budget_usd = 1000000.0\nrequests_per_minute = 100000000\n{cluster}",
            dir.join("store").display()
        );
        let path = dir.join("tracegate.toml");
        std::fs::write(&path, config).expect("write config");
        let path = path.to_str().expect("UTF-8 temp path").to_string();
        let mut child = ChildProcess::spawn("tracegate", &["serve", "--config", &path], dir.join("serve.log"));
        child.wait_until_listening(proxy);
        child.wait_until_listening(admin);
        Instance { proxy, admin, child }
    }
}

struct SetupResult {
    label: &'static str,
    instances: usize,
    sent: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    peak_backlog: Option<u64>,
    /// CPU time per measured call, in µs: the tracegate instances, redis-server, postgres.
    cpu_per_call_us: [f64; 3],
    /// p50, p99 and max sync lag in ms, and the rows PostgreSQL holds.
    sync: Option<([f64; 3], i64)>,
}

async fn run_setup(setup: &Setup, instances: &[Instance], team: &str, postgres: Option<&String>) -> SetupResult {
    let targets: Vec<SocketAddr> = instances.iter().map(|i| i.proxy).collect();
    let sent = Arc::new(AtomicU64::new(0));
    progress(&format!("{}: warm-up ({WARMUP_REQUESTS} requests)", setup.label));
    let (_, warm_errors, _) = load(&targets, team, WARMUP_REQUESTS, None, &sent).await;
    assert_eq!(warm_errors, 0, "{}: warm-up requests failed", setup.label);
    // Only the measured calls count for the sync lag: they start after this instant.
    let measured_from_ns = tracegate::model::clock::unix_nanos() as i64;
    let polling = Arc::new(AtomicBool::new(true));
    let peak = tokio::spawn(peak_backlog(instances.iter().map(|i| i.admin).collect(), polling.clone()));
    let measured = if setup.rate.is_some() { PACED_REQUESTS } else { MEASURED_REQUESTS };
    progress(&format!("{}: {measured} requests on {CONNECTIONS} connections", setup.label));
    let pids: Vec<u32> = instances.iter().map(|i| i.child.pid()).collect();
    let cpu_before = cpu_ticks(&pids);
    let (latencies, errors, elapsed) = load(&targets, team, measured, setup.rate, &sent).await;
    let cpu_after = cpu_ticks(&pids);
    let per_call = |i: usize| ticks_to_us(cpu_after[i] - cpu_before[i]) / measured as f64;
    let cpu_per_call_us = [per_call(0), per_call(1), per_call(2)];
    let sync = match postgres {
        Some(url) => Some(sync_lag(url, sent.load(Ordering::Relaxed) as i64, measured_from_ns).await),
        None => None,
    };
    polling.store(false, Ordering::Relaxed);
    let peak_backlog = peak.await.expect("poller");
    SetupResult {
        label: setup.label,
        instances: instances.len(),
        sent: sent.load(Ordering::Relaxed),
        errors,
        elapsed,
        latencies,
        peak_backlog: setup.postgres.then_some(peak_backlog),
        cpu_per_call_us,
        sync,
    }
}

/// `total` requests over `CONNECTIONS` connections spread evenly over `targets`, at `rate` per
/// second in all when given (each connection sends on its own schedule); the sorted latencies
/// of the answered ones, the error count and the elapsed time.
async fn load(
    targets: &[SocketAddr],
    team: &str,
    total: u64,
    rate: Option<u64>,
    sent: &Arc<AtomicU64>,
) -> (Vec<Duration>, u64, Duration) {
    let interval = rate.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r as f64));
    let tickets = Arc::new(AtomicU64::new(total));
    let started = Instant::now();
    let deadline = started + PHASE_TIME_LIMIT;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (target, team, tickets, sent) =
                (targets[i % targets.len()], team.to_string(), tickets.clone(), sent.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut connection: Option<Connection> = None;
                let mut next = started + interval.map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / CONNECTIONS as f64));
                while Instant::now() < deadline
                    && tickets.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
                {
                    if connection.is_none() {
                        connection = connect(target).await.ok();
                    }
                    let Some(open) = connection.as_mut() else {
                        errors += 1;
                        continue;
                    };
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    let sent_at = Instant::now();
                    match call(open, target, &team, &sent).await {
                        Ok(()) => latencies.push(sent_at.elapsed()),
                        Err(_) => {
                            errors += 1;
                            connection = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::with_capacity(total as usize), 0);
    for worker in workers {
        let (l, e) = worker.await.expect("load worker");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    (latencies, errors, elapsed)
}

async fn call(connection: &mut Connection, target: SocketAddr, team: &str, sent: &AtomicU64) -> Result<(), String> {
    connection.ready().await.map_err(|e| e.to_string())?;
    let request = Request::post(CHAT_PATH)
        .header("host", target.to_string())
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .header("x-tracegate-team", team)
        .body(Full::new(Bytes::from_static(CHAT_BODY.as_bytes())))
        .expect("valid request");
    sent.fetch_add(1, Ordering::Relaxed);
    let response = connection.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    response.into_body().collect().await.map_err(|e| e.to_string())?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The largest sum over `admins` of `tracegate_cluster_backlog_spans`, polled every 100 ms
/// while `polling` holds.
async fn peak_backlog(admins: Vec<SocketAddr>, polling: Arc<AtomicBool>) -> u64 {
    let mut peak = 0;
    while polling.load(Ordering::Relaxed) {
        let mut sum = 0;
        for admin in &admins {
            if let Ok(text) = fetch_metrics(*admin).await {
                sum += metric_value(&text, "tracegate_cluster_backlog_spans").unwrap_or(0);
            }
        }
        peak = peak.max(sum);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// Waits until PostgreSQL holds `want` spans, then reads the sync lag of the calls that started
/// at or after `from_ns`: p50, p99 and max in ms, and the row count.
async fn sync_lag(url: &str, want: i64, from_ns: i64) -> ([f64; 3], i64) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut rows = 0;
    while Instant::now() < deadline {
        rows = client.query_one("SELECT count(*) FROM tracegate_spans", &[]).await.map(|r| r.get(0)).unwrap_or(0);
        if rows >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = "extract(epoch FROM synced_at) * 1000 - (start_ns / 1e6 + duration_ms)";
    let sql = format!(
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY {lag}), max({lag}) \
         FROM tracegate_spans WHERE start_ns >= $1"
    );
    let row = client.query_one(&sql, &[&from_ns]).await.expect("lag query");
    let p: Vec<f64> = row.get(0);
    ([p[0], p[1], row.get(1)], rows)
}

/// CPU ticks (user + system) so far of the processes `pids`, of every `redis-server` and of
/// every `postgres` process (the server and its backends), from /proc.
fn cpu_ticks(pids: &[u32]) -> [u64; 3] {
    let ticks = |stat: &str| -> Option<(String, u64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some((comm, fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?))
    };
    let mut out = [0; 3];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some((comm, t)) = std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(ticks) else {
            continue;
        };
        if pids.contains(&pid) {
            out[0] += t;
        } else if comm == "redis-server" {
            out[1] += t;
        } else if comm == "postgres" {
            out[2] += t;
        }
    }
    out
}

fn ticks_to_us(ticks: u64) -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1e6 / per_second
}

fn progress(message: &str) {
    eprintln!("[cluster bench] {message}");
}

fn print_report(results: &[SetupResult]) {
    let alone = results[0].latencies.len() as f64 / results[0].elapsed.as_secs_f64();
    println!();
    println!("| setup | instances | req/s | vs alone | p50 / p99 ms | errors | CPU µs per call: tracegate / redis / postgres | peak backlog | sync lag p50 / p99 / max ms | rows in PostgreSQL / calls sent |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let rps = r.latencies.len() as f64 / r.elapsed.as_secs_f64();
        let (lag, rows) = match &r.sync {
            Some(([p50, p99, max], rows)) => {
                (format!("{p50:.0} / {p99:.0} / {max:.0}"), format!("{rows} / {}", r.sent))
            }
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {rps:.0} | {:.2}× | {:.3} / {:.3} | {} | {:.0} / {:.0} / {:.0} | {} | {lag} | {rows} |",
            r.label,
            r.instances,
            rps / alone,
            ms(percentile(&r.latencies, 50.0)),
            ms(percentile(&r.latencies, 99.0)),
            r.errors,
            r.cpu_per_call_us[0],
            r.cpu_per_call_us[1],
            r.cpu_per_call_us[2],
            r.peak_backlog.map_or("—".into(), |b| b.to_string()),
        );
    }
}
