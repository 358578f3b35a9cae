//! Crash safety: `kill -9` of the real binary. Every span whose call finished more than the
//! recorder's flush interval (200 ms) before the kill is found after a restart, and the store
//! opens cleanly.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_span_older_than_the_flush_interval_survives() {
    let mock = Mock::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy_port, admin_port) =
        binary_config(dir.path(), &provider("openai", "/openai", mock.addr, "openai"));
    let url = format!("http://127.0.0.1:{proxy_port}/openai/v1/chat/completions");

    let mut binary = Binary::start(&config, admin_port, &[], None).await;
    let mut traces = Vec::new();
    for _ in 0..200 {
        let (status, headers, _) = post(&url, &[], CHAT).await;
        assert_eq!(status, 200);
        traces.push(header(&headers, "x-tracegate-trace-id").to_string());
    }
    // Wait past the flush interval, then kill without any chance to clean up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    binary.0.kill().unwrap(); // SIGKILL
    binary.0.wait().unwrap();

    let _binary = Binary::start(&config, admin_port, &[], None).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut missing = 0;
    for trace in &traces {
        let (status, _, _) = get(&format!("{admin}/api/traces/{trace}")).await;
        if status != 200 {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "{missing} of {} spans lost to kill -9", traces.len());
    // The restarted proxy records new calls into the same store.
    let (status, headers, _) = post(&url, &[], CHAT).await;
    assert_eq!(status, 200);
    let trace = header(&headers, "x-tracegate-trace-id").to_string();
    for _ in 0..100 {
        if get(&format!("{admin}/api/traces/{trace}")).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("a call after the restart was not recorded");
}
