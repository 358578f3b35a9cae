//! PostgreSQL as the cluster's shared span store and ledger: the pool, the schema (`schema`),
//! the sync that ships this instance's spans there (`sync`).

pub mod delete;
pub mod read;
pub mod schema;
pub mod sync;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::record::metrics::Metrics;
use crate::record::RecorderHandle;
use crate::store::Store;

/// Connections per instance: the sync uses one, admin reads the rest.
const POOL_SIZE: usize = 8;

/// A pool of connections to `url` (connections are opened lazily, so PostgreSQL may be down).
pub fn pool(url: &str) -> Result<Pool, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
    let mut config = config;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    let manager =
        Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .map_err(|e| e.to_string())
}

/// Keeps `limits`' seeds — what each team spent today and this month by the shared ledger —
/// fresh: the spend Redis starts from when it has no count for a team (first use, or a Redis
/// that restarted empty).
pub fn seed_limits(pool: Pool, limits: Arc<crate::policy::shared_limits::SharedLimits>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = crate::model::clock::unix_nanos() / 1_000_000_000;
            let today = (now / 86_400) as i32;
            let (year, month, _) = crate::model::clock::civil_from_days(i64::from(today));
            let month_start = crate::model::clock::days_from_civil(year, month, 1) as i32;
            let read = async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .query(
                        "SELECT team, coalesce(sum(cost_usd) FILTER (WHERE day = date '1970-01-01' + $1::int), 0),
                                coalesce(sum(cost_usd), 0)
                         FROM tracegate_ledger WHERE day >= date '1970-01-01' + $2::int GROUP BY team",
                        &[&today, &month_start],
                    )
                    .await
                    .map_err(|e| e.to_string())
            };
            match read.await {
                Ok(rows) => limits.set_seeds(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect()),
                Err(e) => tracing::debug!(error = %e, "the limits' seeds could not be refreshed from PostgreSQL"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
    })
}

/// Migrates the schema (retrying while PostgreSQL is down) and then runs the sync: a task.
pub fn start(
    config: &Config,
    pool: Pool,
    store: Arc<Store>,
    recorder: RecorderHandle,
    metrics: &Metrics,
) -> JoinHandle<()> {
    let counters = metrics.cluster_counters();
    let retention_days = config.storage.retention_days;
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_millis(200);
        loop {
            let migrated = async {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                schema::migrate(&mut client).await.map_err(|e| e.to_string())
            }
            .await;
            match migrated {
                Ok(version) => {
                    tracing::info!(version, "PostgreSQL schema ready");
                    break;
                }
                Err(e) => {
                    counters.sync_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "PostgreSQL not ready for the cluster sync; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        sync::Sync { pool, store, recorder, counters, retention_days }.run().await
    })
}
