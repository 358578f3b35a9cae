//! Three real `tracegate serve` processes sharing a real PostgreSQL and Redis on loopback:
//! one view of every call, one budget and one rate limit, through kill -9 of an instance and
//! an outage of PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use crate::engines::{Postgres, Redis};
use crate::support::*;

struct Instance {
    name: &'static str,
    config: std::path::PathBuf,
    proxy: u16,
    admin: u16,
    binary: Option<Binary>,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(name: &'static str, providers: &str, pg: &Postgres, redis: &Redis) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let cluster = format!(
            "{providers}[[teams]]\nname = \"search\"\ndaily_budget_usd = 0.0002\n[[teams]]\nname = \"ads\"\nrequests_per_minute = 10\n\
             [cluster]\ninstance = \"{name}\"\npostgres = \"{}\"\nredis = \"{}\"\n",
            pg.url(),
            redis.url()
        );
        let (config, proxy, admin) = binary_config(dir.path(), &cluster);
        let binary = Binary::start(&config, admin, &[], None).await;
        Instance { name, config, proxy, admin, binary: Some(binary), _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/openai/v1/chat/completions", self.proxy)
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn kill_9(&mut self) {
        if let Some(mut binary) = self.binary.take() {
            binary.0.kill().unwrap();
            binary.0.wait().unwrap();
        }
    }

    async fn restart(&mut self) {
        self.binary = Some(Binary::start(&self.config, self.admin, &[], None).await);
    }
}

const BOUNDED_CHAT: &str =
    r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;

async fn call(url: &str, team: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = team.map(|t| ("x-tracegate-team", t)).into_iter().collect();
    let (status, headers, _) = post(url, &headers, BOUNDED_CHAT).await;
    (status, header(&headers, "x-tracegate-trace-id").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_view_one_budget_and_survive_kill_9_and_a_postgres_outage() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let mock = Mock::start(Duration::from_millis(2)).await;
    let providers = provider("openai", "/openai", mock.addr, "openai");
    let mut instances = Vec::new();
    for name in ["tg-a", "tg-b", "tg-c"] {
        instances.push(Instance::start(name, &providers, &pg, &redis).await);
    }

    // A call through C is visible through A's API within seconds, with its instance.
    let (status, trace) = call(&instances[2].url(), None).await;
    assert_eq!(status, 200);
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, _, body) = get(&instances[0].admin(&format!("/api/traces/{trace}"))).await;
        if status == 200 {
            seen = serde_json::from_slice(&body).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["spans"][0]["instance"], "tg-c", "A shows C's call: {seen}");

    // 60 concurrent calls of one team over three instances against its daily budget.
    let urls: Vec<String> = (0..60).map(|i| instances[i % 3].url()).collect();
    let tasks: Vec<_> =
        urls.into_iter().map(|u| tokio::spawn(async move { call(&u, Some("search")).await.0 })).collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok + statuses.iter().filter(|s| **s == 429).count(), 60, "{statuses:?}");
    assert!(ok > 0 && ok < 60, "{ok} admitted");
    pg.wait_count("SELECT coalesce(sum(requests), 0)::bigint FROM tracegate_ledger WHERE team = 'search'", 60).await;
    let client = pg.client().await;
    let spent: f64 = client
        .query_one("SELECT coalesce(sum(cost_usd), 0) FROM tracegate_ledger WHERE team = 'search'", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("budget: {ok} of 60 calls admitted, spent {spent:.8} of 0.0002 USD");
    // Each reservation is above its call's real cost, so spend stays within the budget.
    assert!(spent <= 0.0002 + 1e-12, "spent {spent} of 0.0002 over {ok} calls");
    assert!(spent >= 0.0002 * 0.5, "the budget was used before calls were refused: {spent}");

    // Ten requests a minute, whichever instance serves them.
    let mut ads = Vec::new();
    for i in 0..16 {
        ads.push(call(&instances[i % 3].url(), Some("ads")).await.0);
    }
    assert_eq!(ads.iter().filter(|s| **s == 200).count(), 10, "{ads:?}");

    // kill -9 of B under load, then a restart: every call B answered before its last flush
    // (200 ms) is in the shared store exactly once.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::time::Instant, String)>();
    let b_url = instances[1].url();
    let load = tokio::spawn(async move {
        while let Some((200, headers, _)) = try_post(&b_url, &[], BOUNDED_CHAT).await {
            let trace = header(&headers, "x-tracegate-trace-id").to_string();
            if tx.send((std::time::Instant::now(), trace)).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = std::time::Instant::now();
    instances[1].kill_9();
    let _ = load.await;
    let mut answered = Vec::new();
    while let Ok((at, trace)) = rx.try_recv() {
        answered.push((at, trace));
    }
    assert!(answered.len() > 10, "B was under load: {} calls", answered.len());
    instances[1].restart().await;
    let durable: Vec<&String> = answered
        .iter()
        .filter(|(at, _)| killed_at.duration_since(*at) > Duration::from_millis(300))
        .map(|(_, t)| t)
        .collect();
    let ids: Vec<String> = durable.iter().map(|t| t.to_string()).collect();
    let mut counts: HashMap<String, i64> = HashMap::new();
    for _ in 0..200 {
        let rows = pg
            .client()
            .await
            .query("SELECT trace_id, count(*) FROM tracegate_spans WHERE trace_id = ANY($1) GROUP BY trace_id", &[&ids])
            .await
            .unwrap();
        counts = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if counts.len() == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts.len(), ids.len(), "calls B answered before the kill are all in the shared store");
    assert!(counts.values().all(|n| *n == 1), "each exactly once");
    eprintln!(
        "kill -9: B answered {} calls, {} of them over 300 ms before the kill, each stored once",
        answered.len(),
        ids.len()
    );

    // PostgreSQL stopped for a few seconds under load: every call answered, then every span
    // arrives and the backlog returns to 0. Only A's rows are counted: B, just restarted, may
    // still be shipping the calls it answered in its last moments before the kill.
    let a_rows = format!("SELECT count(*) FROM tracegate_spans WHERE instance = '{}'", instances[0].name);
    let before = pg.count(&a_rows).await;
    pg.stop();
    let mut during = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let (status, _) = call(&instances[0].url(), None).await;
        assert_eq!(status, 200, "calls go on while PostgreSQL is down");
        during += 1;
    }
    pg.start_again();
    let outage = std::time::Instant::now();
    pg.wait_count(&a_rows, before + during).await;
    eprintln!(
        "postgres outage: {during} calls answered meanwhile, all shipped {:?} after it came back",
        outage.elapsed()
    );
    let mut backlog = -1.0;
    for _ in 0..100 {
        backlog = metric(&instances[0].admin(""), "tracegate_cluster_backlog_spans").await;
        if backlog == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backlog, 0.0);
    assert!(metric(&instances[0].admin(""), "tracegate_cluster_sync_errors_total").await >= 1.0);
    for instance in &mut instances {
        instance.kill_9();
    }
}
