//! The store failing under the proxy, and the real binary's logs and exports: a full disk
//! (a tiny tmpfs) must not stop proxying — failed writes are counted and logged — and no
//! credential a client sent may appear in the logs (at the most verbose level) or in what is
//! exported. Also `kill -9` in the middle of a load, with the loss window measured.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Mounts a tmpfs of `size` at `dir`; false where this machine does not allow it.
fn mount_tiny_fs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
    }
}

const SECRET_BEARER: &str = "sk-live-bearer-0f1e2d3c4b5a69788796a5b4";
const SECRET_X_API_KEY: &str = "sk-ant-xkey-1a2b3c4d5e6f7a8b9c0d";
const SECRET_QUERY_KEY: &str = "AIzaQueryKey-55aa66bb77cc88dd";
const SECRET_COOKIE: &str = "session=cookie-secret-9e8d7c6b5a";
const SECRET_IN_BODY: &str = "sk-body-embedded-4d3c2b1a0f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_stop_proxying_and_no_credential_reaches_logs_or_exports() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    if !mount_tiny_fs(&tiny, "4m") {
        eprintln!(
            "SKIPPED: this machine does not allow mounting a tmpfs (needs root); the disk-full case is not exercised"
        );
        return;
    }
    let _unmount = Unmount(&tiny);
    let mock = Mock::start(Duration::ZERO).await;
    let collector = Scripted::start(|_req| http::Response::new(full("{}"))).await;
    let (proxy_port, admin_port) = (free_port(), free_port());
    let config = dir.path().join("tracegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [storage]\npath = \"{}\"\n\
             [export]\notlp_endpoint = \"http://{}/v1/traces\"\notlp_protocol = \"json\"\ncompression = \"none\"\n{}",
            tiny.join("store").display(),
            collector.addr,
            provider("openai", "/openai", mock.addr, "openai")
        ),
    )
    .unwrap();
    let log = dir.path().join("tracegate.log");
    let _binary = Binary::start(&config, admin_port, &[("RUST_LOG", "trace")], Some(&log)).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let url = format!("http://127.0.0.1:{proxy_port}/openai/v1/chat/completions?key={SECRET_QUERY_KEY}");

    // ~200 KB per call of random letters (the store compresses, so a repeated text would
    // barely grow it): the 4 MB filesystem is full after a few dozen.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let filler: String = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let body = format!(
        r#"{{"model":"gpt-4o-mini","api_key":"{SECRET_IN_BODY}","messages":[{{"role":"user","content":"{filler}"}}]}}"#
    );
    let auth = format!("Bearer {SECRET_BEARER}");
    let headers = [("authorization", auth.as_str()), ("x-api-key", SECRET_X_API_KEY), ("cookie", SECRET_COOKIE)];
    let mut answered = 0;
    for _ in 0..60 {
        let (status, _, _) = post(&url, &headers, &body).await;
        assert_eq!(status, 200, "a store that cannot write must not fail the call");
        answered += 1;
    }
    assert_eq!(answered, 60);
    let mut errors = 0.0;
    for _ in 0..100 {
        errors = metric(&admin, "tracegate_store_errors_total").await;
        if errors > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors > 0.0, "failed writes were not counted");
    // Still serving, admin included.
    let (status, _, _) = post(&url, &headers, r#"{"model":"gpt-4o-mini","messages":[]}"#).await;
    assert_eq!(status, 200);
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("span store write failed") || logged.contains("span store flush failed"),
        "the failure was not logged"
    );
    let exported: Vec<u8> = collector.requests().iter().flat_map(|r| r.body.to_vec()).collect();
    let exported = String::from_utf8_lossy(&exported);
    for secret in [SECRET_BEARER, SECRET_X_API_KEY, SECRET_QUERY_KEY, SECRET_COOKIE, SECRET_IN_BODY] {
        assert!(!logged.contains(secret), "{secret} appears in the log");
        assert!(!exported.contains(secret), "{secret} appears in an export");
    }
}

/// Calls finished in each 50 ms window before the kill, and how many of those were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_only_calls_inside_the_flush_window() {
    let mock = Mock::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy_port, admin_port) =
        binary_config(dir.path(), &provider("openai", "/openai", mock.addr, "openai"));
    let url = format!("http://127.0.0.1:{proxy_port}/openai/v1/chat/completions");
    let mut binary = Binary::start(&config, admin_port, &[], None).await;

    // Eight clients in a loop for 1.5 s; each call's trace id and finish time is kept.
    let started = Instant::now();
    let stop_at = started + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
            let mut done = Vec::new();
            while Instant::now() < stop_at {
                let request = http::Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(CHAT.as_bytes())))
                    .unwrap();
                // Calls cut by the kill fail; only answered calls count.
                let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await
                else {
                    break;
                };
                let trace = header(response.headers(), "x-tracegate-trace-id").to_string();
                let complete = http_body_util::BodyExt::collect(response.into_body()).await.is_ok();
                if complete {
                    done.push((trace, Instant::now()));
                }
            }
            done
        }));
    }
    tokio::time::sleep_until((stop_at - Duration::from_millis(100)).into()).await;
    binary.0.kill().unwrap(); // SIGKILL while the clients are still sending
    let killed_at = Instant::now();
    binary.0.wait().unwrap();
    let mut calls = Vec::new();
    for client in clients {
        calls.extend(client.await.unwrap());
    }
    calls.retain(|(_, finished)| *finished < killed_at);
    assert!(calls.len() > 200, "too little load to measure ({} calls)", calls.len());

    let _binary = Binary::start(&config, admin_port, &[], None).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut windows = [(0usize, 0usize); 8]; // (calls, lost) per 50 ms before the kill; last = older
    for (trace, finished) in &calls {
        let age = killed_at.duration_since(*finished).as_millis() as usize;
        let window = (age / 50).min(windows.len() - 1);
        windows[window].0 += 1;
        if get(&format!("{admin}/api/traces/{trace}")).await.0 != 200 {
            windows[window].1 += 1;
        }
    }
    let report: Vec<String> = windows
        .iter()
        .enumerate()
        .map(|(i, (n, lost))| {
            let span = if i == windows.len() - 1 {
                format!("≥{} ms", i * 50)
            } else {
                format!("{}–{} ms", i * 50, i * 50 + 50)
            };
            format!("{span}: {lost}/{n} lost")
        })
        .collect();
    eprintln!("kill -9 under load, calls by age at the kill: {}", report.join(", "));
    // The promise: every call that finished more than the flush interval (200 ms) before the
    // kill survives (the 200–250 ms window allows for the batch in progress being written).
    let lost_old: usize = windows[5..].iter().map(|(_, lost)| lost).sum();
    assert_eq!(lost_old, 0, "calls older than 250 ms were lost: {}", report.join(", "));
}
