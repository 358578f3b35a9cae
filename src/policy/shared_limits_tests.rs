//! The Redis scripts against a real `redis-server` on a free loopback port, with the clock
//! chosen by the test: a window lets calls in again once their second has left it, settled
//! and expired reservations stop counting, and the reservations' sum returns to zero.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{RedisUnavailable, Team};

struct Server(std::process::Child, u16);

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        // Owned at once, so it is killed and reaped on every path.
        let server = Server(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn limits(server: &Server, team: Team) -> Arc<SharedLimits> {
    let url = format!("redis://127.0.0.1:{}/0", server.1);
    let limits = SharedLimits::new(&url, &[team], RedisUnavailable::Refuse, "t", Arc::new(AtomicU64::new(0))).unwrap();
    limits.set_seeds(HashMap::new());
    limits
}

fn team(daily: Option<f64>, rpm: Option<u32>) -> Team {
    Team {
        name: "ads".into(),
        keys: vec![],
        daily_budget_usd: daily,
        monthly_budget_usd: None,
        requests_per_minute: rpm,
        tokens_per_minute: None,
    }
}

fn estimate(cost_usd: f64) -> Estimate {
    Estimate { cost_usd, tokens: 10, bounded: true }
}

/// 2026-12-07 12:00:00 UTC: far from a day's end, so no period changes within a test.
const T0: u64 = 1_796_644_800;

fn admitted(shared: Shared) -> Claim {
    match shared {
        Shared::Admitted(claim, _) => claim,
        Shared::Refused(r) => panic!("refused: {:?}", r.reason),
        Shared::Unavailable => panic!("Redis unavailable"),
    }
}

fn refusal(shared: Shared) -> Refusal {
    match shared {
        Shared::Refused(r) => r.reason,
        _ => panic!("admitted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_lets_calls_in_again_once_their_second_has_left_it() {
    let server = Server::start();
    let limits = limits(&server, team(None, Some(3)));
    let mut claims = Vec::new();
    for offset in [0, 10, 20] {
        claims.push(admitted(limits.admit(0, estimate(0.0), T0 + offset).await));
    }
    assert_eq!(refusal(limits.admit(0, estimate(0.0), T0 + 59).await), Refusal::RequestsPerMinute);
    // The call of T0 has left the window; those of T0+10 and T0+20 have not.
    match limits.admit(0, estimate(0.0), T0 + 60).await {
        Shared::Admitted(_, remaining) => assert_eq!(remaining.requests.map(|(_, left)| left), Some(0)),
        _ => panic!("the window should have room at T0+60"),
    }
    assert_eq!(refusal(limits.admit(0, estimate(0.0), T0 + 61).await), Refusal::RequestsPerMinute);
    admitted(limits.admit(0, estimate(0.0), T0 + 71).await);
    // Long idle: the whole window is gone at once.
    for _ in 0..3 {
        admitted(limits.admit(0, estimate(0.0), T0 + 500).await);
    }
    assert_eq!(refusal(limits.admit(0, estimate(0.0), T0 + 500).await), Refusal::RequestsPerMinute);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_and_expired_reservations_stop_counting_and_their_sum_returns_to_zero() {
    let server = Server::start();
    let limits = limits(&server, team(Some(1.0), None));
    let a = admitted(limits.admit(0, estimate(0.4), T0).await);
    let b = admitted(limits.admit(0, estimate(0.4), T0).await);
    assert_eq!(refusal(limits.admit(0, estimate(0.4), T0).await), Refusal::DailyBudget, "0.8 reserved + 0.4 > 1");
    a.settle(0.1, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Spent 0.1 + reserved 0.4 (b) + 0.4 fits.
    let c = admitted(limits.admit(0, estimate(0.4), T0 + 1).await);
    b.settle(0.2, 10);
    c.settle(0.3, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut connection = limits.connection().await.unwrap();
    let sum: Option<f64> = redis::cmd("GET").arg("tracegate:{ads}:resvsum").query_async(&mut connection).await.unwrap();
    assert!(sum.unwrap_or(0.0).abs() < 1e-9, "nothing in flight: {sum:?}");
    // Spent 0.6: a reservation of 0.35 fits, one of 0.05 more does not while it is held...
    let held = admitted(limits.admit(0, estimate(0.35), T0 + 2).await);
    assert_eq!(refusal(limits.admit(0, estimate(0.1), T0 + 2).await), Refusal::DailyBudget);
    // ...until it expires unsettled (its instance died).
    admitted(limits.admit(0, estimate(0.1), T0 + 2 + RESERVATION_TTL_SECS + 1).await);
    drop(held);
}
