//! Soak: the real binaries under a steady mixed load with faults, for a bounded time, to show
//! that memory stays flat and that no span is dropped.
//!
//!     SOAK_SECS=600 cargo bench --bench soak      # default 600 s; CLIENTS (default 16)
//!
//! `tracegate mock-llm` (5 ms between streamed chunks) is the upstream; `tracegate serve` has a
//! provider on it and one whose upstream is down. Each client loops over a fixed mix of ten
//! calls: five plain chat calls, two full streams, one stream the client abandons after its
//! first chunk, one upstream 500, one call to the dead upstream (502). Every 10 s it prints the
//! proxy's RSS, the calls finished so far and the recorded/dropped span counters. At the end
//! it checks that every call became exactly one span, that none was dropped, and compares
//! the RSS of the first and the last minute.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"How do traces work?"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"How do traces work?"}]}"#;

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("port {port} never opened");
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One call of the mix; true when it ended as the mix expects.
async fn call(client: &HttpClient, base: &str, kind: usize) -> bool {
    let (path, body, headers): (&str, &str, &[(&str, &str)]) = match kind {
        0..=4 => ("/openai/v1/chat/completions", CHAT, &[]),
        5 | 6 => ("/openai/v1/chat/completions", CHAT_STREAM, &[("x-mock-chunks", "20")]),
        7 => ("/openai/v1/chat/completions", CHAT_STREAM, &[("x-mock-chunks", "200")]),
        8 => ("/openai/v1/chat/completions", CHAT, &[("x-mock-status", "500")]),
        _ => ("/down/v1/chat/completions", CHAT, &[]),
    };
    let mut request = http::Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await else {
        return false;
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if kind == 7 {
        // Abandon the stream after its first chunk.
        let first = body.frame().await;
        return status == 200 && first.is_some();
    }
    let complete = body.collect().await.is_ok();
    complete
        && match kind {
            0..=7 => status == 200,
            8 => status == 500,
            _ => status == 502,
        }
}

async fn metric(client: &HttpClient, admin: &str, name: &str) -> u64 {
    let request = http::Request::get(format!("{admin}/metrics")).body(Full::new(Bytes::new())).unwrap();
    let Ok(response) = client.request(request).await else { return 0 };
    let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let clients: usize = std::env::var("CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let binary = env!("CARGO_BIN_EXE_tracegate");
    let dir = tempfile::tempdir().unwrap();
    let (mock_port, proxy_port, admin_port, dead_port) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("tracegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [storage]\npath = \"{}\"\n\
             [[providers]]\nname = \"openai\"\nprefix = \"/openai\"\nupstream = \"http://127.0.0.1:{mock_port}\"\napi = \"openai\"\n\
             [[providers]]\nname = \"down\"\nprefix = \"/down\"\nupstream = \"http://127.0.0.1:{dead_port}\"\napi = \"openai\"\nconnect_timeout_secs = 1\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let mock = Command::new(binary)
        .args(["mock-llm", "--listen", &format!("127.0.0.1:{mock_port}"), "--chunk-delay-ms", "5"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut children = Children(vec![mock]);
    let proxy = Command::new(binary).arg("serve").arg("--config").arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let proxy_pid = proxy.id();
    children.0.push(proxy);
    wait_for_port(mock_port);
    wait_for_port(proxy_port);
    wait_for_port(admin_port);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let base = format!("http://127.0.0.1:{proxy_port}");
        let admin = format!("http://127.0.0.1:{admin_port}");
        let finished = Arc::new(AtomicU64::new(0));
        let unexpected = Arc::new(AtomicU64::new(0));
        let stop_at = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for client_index in 0..clients {
            let (base, finished, unexpected) = (base.clone(), finished.clone(), unexpected.clone());
            tasks.push(tokio::spawn(async move {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                let mut kind = client_index % 10;
                while Instant::now() < stop_at {
                    if !call(&client, &base, kind).await {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                    finished.fetch_add(1, Ordering::Relaxed);
                    kind = (kind + 1) % 10;
                }
            }));
        }
        let probe: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let started = Instant::now();
        let mut samples: Vec<(u64, u64)> = Vec::new(); // (second, RSS kB)
        println!("{:>6} {:>10} {:>10} {:>10} {:>9}", "t_s", "calls", "recorded", "dropped", "rss_kB");
        while Instant::now() < stop_at {
            tokio::time::sleep(Duration::from_secs(10).min(stop_at.saturating_duration_since(Instant::now()))).await;
            let t = started.elapsed().as_secs();
            let rss = rss_kb(proxy_pid, "VmRSS:");
            samples.push((t, rss));
            println!(
                "{t:>6} {:>10} {:>10} {:>10} {rss:>9}",
                finished.load(Ordering::Relaxed),
                metric(&probe, &admin, "tracegate_spans_recorded_total").await,
                metric(&probe, &admin, "tracegate_spans_dropped_total").await,
            );
        }
        for task in tasks {
            let _ = task.await;
        }
        // Let the recorder write what is queued (it flushes every 200 ms).
        let calls = finished.load(Ordering::Relaxed);
        let mut recorded = 0;
        for _ in 0..100 {
            recorded = metric(&probe, &admin, "tracegate_spans_recorded_total").await;
            if recorded >= calls {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dropped = metric(&probe, &admin, "tracegate_spans_dropped_total").await;
        let minute = |from: u64, to: u64| {
            let in_range: Vec<u64> = samples.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, r)| *r).collect();
            in_range.iter().copied().max().unwrap_or(0)
        };
        let last = samples.last().map_or(0, |(t, _)| *t);
        println!(
            "# {secs} s, {clients} clients: {calls} calls ({:.0}/s), {} not as expected",
            calls as f64 / secs as f64,
            unexpected.load(Ordering::Relaxed)
        );
        println!("# spans recorded {recorded}, dropped {dropped}");
        println!(
            "# RSS max in the first minute {} kB, in the last minute {} kB; peak {} kB",
            minute(0, 60),
            minute(last.saturating_sub(60), last),
            rss_kb(proxy_pid, "VmHWM:")
        );
        assert_eq!(dropped, 0, "spans were dropped");
        assert_eq!(recorded, calls, "every call must become exactly one span");
    });
}
