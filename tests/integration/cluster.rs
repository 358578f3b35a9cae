//! `[cluster]` with a real PostgreSQL: every span, its bodies and its ledger row reach the
//! shared store exactly once, through outages and a cursor replayed from the start.

use std::time::Duration;

use crate::engines::Postgres;
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
