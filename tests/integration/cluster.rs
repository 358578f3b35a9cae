//! `[cluster]` with a real PostgreSQL: every span, its bodies and its ledger row reach the
//! shared store exactly once, through outages and a cursor replayed from the start.

use std::time::Duration;

use crate::engines::{Postgres, Redis};
use crate::support::*;

const SPANS: &str = "SELECT count(*) FROM tracegate_spans";
const LEDGER_REQUESTS: &str = "SELECT coalesce(sum(requests), 0)::bigint FROM tracegate_ledger";

fn cluster(pg: &Postgres, instance: &str) -> String {
    format!("[cluster]\ninstance = \"{instance}\"\npostgres = \"{}\"\n", pg.url())
}

async fn chat_calls(proxy: &Proxy, n: usize, team: &str) {
    for _ in 0..n {
        let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-team", team)], CHAT).await;
        assert_eq!(status, 200, "every call is answered, whatever PostgreSQL does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_sync_ships_every_span_once_through_an_outage_and_a_replay() {
    let pg = Postgres::start();
    let mock = Mock::start(Duration::ZERO).await;
    let config = format!("{}{}", provider("openai", "/openai", mock.addr, "openai"), cluster(&pg, "tg-a"));
    let proxy = Proxy::start(&config).await;
    chat_calls(&proxy, 20, "search").await;
    pg.wait_count(SPANS, 20).await;
    pg.wait_count(LEDGER_REQUESTS, 20).await;
    pg.wait_count("SELECT count(*) FROM tracegate_spans WHERE instance = 'tg-a' AND team = 'search'", 20).await;
    pg.wait_count("SELECT count(*) FROM tracegate_bodies WHERE response_body LIKE '%chat.completion%'", 20).await;
    // The stored span JSON is the admin API's, with `instance`.
    let client = pg.client().await;
    let row = client.query_one("SELECT span FROM tracegate_spans LIMIT 1", &[]).await.unwrap();
    let span: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
    assert_eq!(span["instance"], "tg-a");
    let (_, local) = proxy.admin_get("/api/traces?limit=1").await;
    assert!(local["traces"].as_array().is_some_and(|t| !t.is_empty()));

    // PostgreSQL goes away: calls are still answered, and the backlog grows.
    pg.stop();
    chat_calls(&proxy, 10, "search").await;
    proxy.server().flush().await;
    let admin = proxy.admin_url("");
    let mut backlog = 0.0;
    for _ in 0..100 {
        backlog = metric(&admin, "tracegate_cluster_backlog_spans").await;
        if backlog >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backlog, 10.0, "the calls made during the outage wait in the local store");
    assert!(metric(&admin, "tracegate_cluster_sync_errors_total").await >= 1.0);
    pg.start_again();
    pg.wait_count(SPANS, 30).await;
    pg.wait_count(LEDGER_REQUESTS, 30).await;
    for _ in 0..100 {
        if metric(&admin, "tracegate_cluster_backlog_spans").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&admin, "tracegate_cluster_backlog_spans").await, 0.0, "the backlog drains");

    // A restart that has lost its cursor ships everything again: nothing counts twice.
    let dir = proxy.shutdown().await;
    {
        let store = tracegate::store::Store::open(&dir.path().join("store")).unwrap();
        store.set_export_cursor(tracegate::cluster::postgres::sync::CURSOR, 0).unwrap();
        store.flush().unwrap();
    }
    let proxy = Proxy::start_in(dir, &config).await;
    chat_calls(&proxy, 1, "ads").await;
    pg.wait_count(SPANS, 31).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pg.count(SPANS).await, 31, "each span once, by its id");
    assert_eq!(pg.count(LEDGER_REQUESTS).await, 31, "the ledger counts each call once");
    let ledger = pg
        .client()
        .await
        .query_one("SELECT sum(requests)::bigint FROM tracegate_ledger WHERE team = 'search'", &[])
        .await
        .unwrap();
    assert_eq!(ledger.get::<_, i64>(0), 30);
    let _ = proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_shows_the_calls_of_all_with_every_filter() {
    let pg = Postgres::start();
    let mock = Mock::start(Duration::ZERO).await;
    let route = provider("openai", "/openai", mock.addr, "openai");
    let a = Proxy::start(&format!("{route}{}", cluster(&pg, "tg-a"))).await;
    let b = Proxy::start(&format!("{route}{}", cluster(&pg, "tg-b"))).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let rare = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Quince marmalade, please"}]}"#;
    let (status, _, _) = post(
        &b.url("/openai/v1/chat/completions"),
        &[
            ("traceparent", &traceparent),
            ("x-tracegate-team", "ads"),
            ("x-tracegate-user", "u-7"),
            ("x-tracegate-session", "s-1"),
            ("x-tracegate-property-env", "prod"),
        ],
        rare,
    )
    .await;
    assert_eq!(status, 200);
    for proxy in [&a, &b] {
        for i in 0..3 {
            let team = if i == 0 { "ads" } else { "search" };
            post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-team", team)], CHAT).await;
        }
    }
    pg.wait_count(SPANS, 7).await;

    // Through A: the call made through B, with its instance, found by every filter.
    let (status, one) = a.admin_get(&format!("/api/traces/{trace}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["spans"][0]["instance"], "tg-b");
    let span_id = one["spans"][0]["span_id"].as_str().unwrap().to_string();
    let (_, span) = a.admin_get(&format!("/api/traces/{trace}/spans/{span_id}")).await;
    assert_eq!(span["request_body"]["messages"][0]["content"], "Quince marmalade, please");
    for filter in [
        "team=ads&user=u-7",
        "session=s-1",
        "property.env=prod",
        "q=marmalade",
        "q=Quince%20Marmalade",
        "model=gpt-4o-mini&team=ads&status=ok&q=quince",
    ] {
        let (status, page) = a.admin_get(&format!("/api/traces?{filter}")).await;
        assert_eq!(status, 200, "{filter}: {page}");
        let ids: Vec<&str> =
            page["traces"].as_array().unwrap().iter().map(|t| t["trace_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![trace], "{filter}");
    }
    let (_, ads) = a.admin_get("/api/traces?team=ads&min_duration_ms=0").await;
    assert_eq!(ads["traces"].as_array().unwrap().len(), 3);
    let (_, none) = a.admin_get("/api/traces?q=marmalades").await;
    assert_eq!(none["traces"].as_array().unwrap().len(), 0, "q matches whole words");
    let (_, all) = a.admin_get("/api/traces?limit=1000").await;
    assert_eq!(all["traces"].as_array().unwrap().len(), 7);

    // Pages by cursor: every trace once.
    let mut seen = std::collections::HashSet::new();
    let mut path = "/api/traces?limit=3".to_string();
    loop {
        let (_, page) = a.admin_get(&path).await;
        for t in page["traces"].as_array().unwrap() {
            assert!(seen.insert(t["trace_id"].as_str().unwrap().to_string()), "a trace listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/traces?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);

    let (_, sessions) = a.admin_get("/api/sessions").await;
    assert_eq!(sessions["sessions"][0]["session"], "s-1");
    let (_, usage) = a.admin_get("/api/usage?group_by=team").await;
    let requests: Vec<(String, u64)> = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["team"].as_str().unwrap().to_string(), r["requests"].as_u64().unwrap()))
        .collect();
    assert!(requests.contains(&("ads".into(), 3)) && requests.contains(&("search".into(), 4)), "{requests:?}");
    let (status, _, lines) = get(&a.admin_url("/api/export?team=ads")).await;
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&lines).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["response_body"]["object"] == "chat.completion"));
    let instances: std::collections::BTreeSet<&str> = lines.iter().map(|l| l["instance"].as_str().unwrap()).collect();
    assert_eq!(instances.into_iter().collect::<Vec<_>>(), vec!["tg-a", "tg-b"]);
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

/// A chat request whose estimate is bounded (`max_tokens`), so a budget holds a known number.
const BOUNDED_CHAT: &str =
    r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_rate_limits_hold_across_instances_through_redis() {
    let mut redis = Redis::start();
    let mock = Mock::start(Duration::from_millis(1)).await;
    let route = provider("openai", "/openai", mock.addr, "openai");
    let teams =
        "[[teams]]\nname = \"search\"\ndaily_budget_usd = 0.0001\n[[teams]]\nname = \"ads\"\nrequests_per_minute = 5\n";
    let shared = |instance: &str, mode: &str| {
        format!(
            "{route}{teams}[cluster]\ninstance = \"{instance}\"\nredis = \"{}\"\nredis_unavailable = \"{mode}\"\n",
            redis.url()
        )
    };
    let a = Proxy::start(&shared("tg-a", "local")).await;
    let b = Proxy::start(&shared("tg-b", "refuse")).await;

    // 40 concurrent calls of one team, spread over both instances, against a daily budget.
    let urls: Vec<String> = (0..40).map(|i| if i % 2 == 0 { a.url("") } else { b.url("") }).collect();
    let calls = urls.iter().map(|base| {
        let url = format!("{base}/openai/v1/chat/completions");
        async move { post(&url, &[("x-tracegate-team", "search")], BOUNDED_CHAT).await.0 }
    });
    let statuses = futures_join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + refused, 40, "{statuses:?}");
    assert!(ok >= 1 && refused >= 1, "the budget admits some and refuses the rest: {ok} ok");
    a.server().flush().await;
    b.server().flush().await;
    let mut spent = 0.0;
    for proxy in [&a, &b] {
        let (_, usage) = proxy.admin_get("/api/usage?group_by=team").await;
        for row in usage["rows"].as_array().unwrap() {
            if row["team"] == "search" {
                spent += row["cost_usd"].as_f64().unwrap();
            }
        }
    }
    // Estimates are above the real cost, so spend stays within the budget itself.
    assert!(spent <= 0.0001 + 1e-12, "spent {spent} of 0.0001 with {ok} calls");
    let single = 0.0001 / ok as f64;
    assert!(spent + 3.0 * single > 0.0001 * 0.5, "the budget was used, not refused early: {spent}");

    // Requests per minute, across instances: five in the minute, whichever instance serves them.
    let mut ads = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { a.url("") } else { b.url("") };
        ads.push(
            post(&format!("{base}/openai/v1/chat/completions"), &[("x-tracegate-team", "ads")], BOUNDED_CHAT).await.0,
        );
    }
    assert_eq!(ads.iter().filter(|s| **s == 200).count(), 5, "{ads:?}");

    // Redis goes away: `local` goes on alone, `refuse` refuses; errors are counted.
    redis.stop();
    let (status_a, _, _) =
        post(&a.url("/openai/v1/chat/completions"), &[("x-tracegate-team", "ads")], BOUNDED_CHAT).await;
    let (status_b, _, body_b) =
        post(&b.url("/openai/v1/chat/completions"), &[("x-tracegate-team", "ads")], BOUNDED_CHAT).await;
    assert_eq!(status_a, 200, "local: this instance's own window (3 of 5 used here) still has room");
    assert_eq!(status_b, 429, "{}", String::from_utf8_lossy(&body_b));
    assert!(String::from_utf8_lossy(&body_b).contains("Redis"));
    assert!(metric(&a.admin_url(""), "tracegate_redis_errors_total").await >= 1.0);
    // Unlimited teams never ask Redis.
    let (status, _, _) = post(&b.url("/openai/v1/chat/completions"), &[], BOUNDED_CHAT).await;
    assert_eq!(status, 200);
    redis.start_again();
    let mut status = 0;
    for _ in 0..40 {
        status = post(&b.url("/openai/v1/chat/completions"), &[("x-tracegate-team", "ads")], BOUNDED_CHAT).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "Redis back (empty): the shared limits work again");
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

/// Runs the futures concurrently, answers in order.
async fn futures_join_all<F: std::future::Future<Output = u16> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Waits (bounded) until `proxy`'s `tracegate_cluster_deletions_applied_total` reaches `n`.
async fn wait_deletions_applied(proxy: &Proxy, n: f64) {
    let admin = proxy.admin_url("");
    for _ in 0..200 {
        if metric(&admin, "tracegate_cluster_deletions_applied_total").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the instance never applied {n} shared deletions");
}

/// How many of the local store's spans `selection` names (the proxy must be shut down).
fn local_count(dir: &std::path::Path, selection: &tracegate::store::Selection) -> u64 {
    let store = tracegate::store::Store::open(&dir.join("store")).unwrap();
    store.count_selected(selection).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_asked_of_one_instance_removes_the_calls_of_every_instance() {
    let pg = Postgres::start();
    let mock = Mock::start(Duration::ZERO).await;
    let route = provider("openai", "/openai", mock.addr, "openai");
    let a = Proxy::start(&format!("{route}{}", cluster(&pg, "tg-a"))).await;
    let b = Proxy::start(&format!("{route}{}", cluster(&pg, "tg-b"))).await;
    chat_calls(&a, 3, "ads").await;
    chat_calls(&a, 2, "search").await;
    chat_calls(&b, 4, "ads").await;
    let trace = "6cf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, _, _) = post(
        &b.url("/openai/v1/chat/completions"),
        &[("traceparent", &traceparent), ("x-tracegate-team", "search")],
        CHAT,
    )
    .await;
    assert_eq!(status, 200);
    pg.wait_count(SPANS, 10).await;

    assert_eq!(
        admin_call(&a, "DELETE", "/api/spans?team=ads&dry_run=true", None).await,
        (200, serde_json::json!({"deleted": 7}))
    );
    assert_eq!(pg.count(SPANS).await, 10, "a dry run deletes nothing");
    assert_eq!(admin_call(&a, "DELETE", "/api/spans?team=ads", None).await, (200, serde_json::json!({"deleted": 7})));
    assert_eq!(
        pg.count("SELECT count(*) FROM tracegate_spans WHERE team = 'ads'").await,
        0,
        "gone from every view at once"
    );
    let bodies = "SELECT count(*) FROM tracegate_bodies b WHERE NOT EXISTS (SELECT 1 FROM tracegate_spans s WHERE s.span_id = b.span_id)";
    assert_eq!(pg.count(bodies).await, 0, "with their bodies");
    // B's trace, deleted through A.
    assert_eq!(admin_call(&a, "DELETE", &format!("/api/traces/{trace}"), None).await.1["deleted"], 1);
    assert_eq!(pg.count(SPANS).await, 2);
    let (_, usage) = a.admin_get("/api/usage").await;
    assert_eq!(usage["totals"]["requests"], 10, "the shared ledger keeps its totals");

    // Calls made after the delete are kept, though they match its filters.
    chat_calls(&b, 1, "ads").await;
    wait_deletions_applied(&b, 2.0).await;
    wait_deletions_applied(&a, 2.0).await;
    pg.wait_count("SELECT count(*) FROM tracegate_spans WHERE team = 'ads'", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pg.count("SELECT count(*) FROM tracegate_spans WHERE team = 'ads'").await, 1);

    // Each instance's own store lost the deleted calls, and kept the rest.
    let ads = tracegate::store::Selection::Matching(Box::new(tracegate::store::TraceQuery {
        team: Some("ads".into()),
        ..Default::default()
    }));
    let every = tracegate::store::Selection::Matching(Box::new(tracegate::store::TraceQuery {
        from_unix_nano: Some(0),
        ..Default::default()
    }));
    let (a_dir, b_dir) = (a.shutdown().await, b.shutdown().await);
    assert_eq!((local_count(a_dir.path(), &ads), local_count(a_dir.path(), &every)), (0, 2));
    assert_eq!(
        (local_count(b_dir.path(), &ads), local_count(b_dir.path(), &every)),
        (1, 1),
        "B keeps only its later call"
    );
}
