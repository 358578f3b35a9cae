//! The PostgreSQL schema, created and migrated by tracegate itself: numbered migrations applied
//! in order inside one transaction each, under an advisory lock so that instances starting
//! together apply each once, and recorded in `tracegate_migrations`.
//!
//! Spans and bodies are partitioned by UTC day (`day`), so retention drops whole partitions;
//! a day's partitions are created before its first rows (`ensure_day`). The key is (trace id,
//! span id, day): a span's day never changes, so it is unique by span, and the sync's inserts
//! are idempotent (`ON CONFLICT DO NOTHING`). The ledger is one small table, not partitioned:
//! retention keeps its daily totals, as the local ledger does. `tracegate_deletions` lists every
//! delete asked of any instance (a trace id, or the filters as JSON, and the time before which
//! matching spans started), for every instance to apply to its own local store. A span row's `synced_at` is when
//! it reached PostgreSQL, so the sync lag of any call is `synced_at` minus the call's end.

use tokio_postgres::GenericClient;

/// Any advisory-lock key will do as long as every instance uses the same one.
const MIGRATION_LOCK: i64 = 0x7472_6163_6567_6174; // "tracegat"
const PARTITION_LOCK: i64 = 0x7472_6163_6567_7074;

/// The migrations, in order; each runs once per database.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE tracegate_spans (
    trace_id text NOT NULL,
    span_id text NOT NULL,
    day date NOT NULL,
    start_ns bigint NOT NULL,
    parent_span_id text,
    kind text NOT NULL,
    name text NOT NULL,
    duration_ms double precision NOT NULL,
    provider text,
    model text,
    request_model text,
    status text NOT NULL,
    team text,
    "user" text,
    session text,
    instance text,
    input_tokens bigint,
    output_tokens bigint,
    cost_usd double precision,
    properties jsonb NOT NULL DEFAULT '{}',
    span text NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (trace_id, span_id, day)
) PARTITION BY RANGE (day);
CREATE INDEX tracegate_spans_start ON tracegate_spans (start_ns DESC);
CREATE INDEX tracegate_spans_team ON tracegate_spans (team, start_ns DESC);
CREATE INDEX tracegate_spans_user ON tracegate_spans ("user", start_ns DESC);
CREATE INDEX tracegate_spans_model ON tracegate_spans (model, start_ns DESC);
CREATE INDEX tracegate_spans_request_model ON tracegate_spans (request_model, start_ns DESC);
CREATE INDEX tracegate_spans_trace ON tracegate_spans (trace_id);
CREATE INDEX tracegate_spans_provider ON tracegate_spans (provider, start_ns DESC);
CREATE INDEX tracegate_spans_status ON tracegate_spans (status, start_ns DESC);
CREATE INDEX tracegate_spans_session ON tracegate_spans (session, start_ns DESC);
CREATE INDEX tracegate_spans_instance ON tracegate_spans (instance, start_ns DESC);
CREATE INDEX tracegate_spans_duration ON tracegate_spans (duration_ms);
CREATE INDEX tracegate_spans_cost ON tracegate_spans (cost_usd);
CREATE INDEX tracegate_spans_properties ON tracegate_spans USING gin (properties jsonb_path_ops);
CREATE TABLE tracegate_bodies (
    trace_id text NOT NULL,
    span_id text NOT NULL,
    day date NOT NULL,
    request_body text,
    response_body text,
    truncated boolean NOT NULL DEFAULT false,
    PRIMARY KEY (trace_id, span_id, day)
) PARTITION BY RANGE (day);
CREATE TABLE tracegate_ledger (
    day date NOT NULL,
    team text NOT NULL,
    "user" text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    requests bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    errors bigint NOT NULL,
    PRIMARY KEY (day, team, "user", provider, model)
);
CREATE TABLE tracegate_deletions (
    id bigserial PRIMARY KEY,
    trace_id text,
    selection jsonb,
    before_ns bigint NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
"#,
)];

/// The body-text index behind `q` needs `pg_trgm` (a trusted extension: a database owner may
/// create it). Without it `q` still works, by scanning.
const TRIGRAM_INDEXES: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS tracegate_bodies_request_trgm ON tracegate_bodies USING gin (request_body gin_trgm_ops);
CREATE INDEX IF NOT EXISTS tracegate_bodies_response_trgm ON tracegate_bodies USING gin (response_body gin_trgm_ops);
"#;

/// Creates or upgrades the schema; returns the version it is at.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tracegate_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM tracegate_migrations", &[]).await?.get(0);
    let mut version = current;
    for (number, sql) in MIGRATIONS {
        if *number <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO tracegate_migrations (version) VALUES ($1)", &[number]).await?;
        version = *number;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    if let Err(e) = client.batch_execute(TRIGRAM_INDEXES).await {
        tracing::warn!(error = %e, "pg_trgm unavailable: body searches (q) scan instead of using an index");
    }
    Ok(version)
}

/// The partitions of `day` (days since 1970-01-01), created if missing.
pub async fn ensure_day(client: &impl GenericClient, day: i32) -> Result<(), tokio_postgres::Error> {
    let (from, to) = (date_of(day), date_of(day + 1));
    let name = from.replace('-', "");
    let sql = format!(
        "SELECT pg_advisory_xact_lock({PARTITION_LOCK});
         CREATE TABLE IF NOT EXISTS tracegate_spans_{name} PARTITION OF tracegate_spans FOR VALUES FROM ('{from}') TO ('{to}');
         CREATE TABLE IF NOT EXISTS tracegate_bodies_{name} PARTITION OF tracegate_bodies FOR VALUES FROM ('{from}') TO ('{to}');"
    );
    // One implicit transaction: the lock is held while both are created.
    client.batch_execute(&sql).await
}

/// Drops the partitions of days before `cutoff_day`; returns how many days went.
pub async fn drop_days_before(client: &impl GenericClient, cutoff_day: i32) -> Result<usize, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'tracegate_spans'",
            &[],
        )
        .await?;
    let cutoff = date_of(cutoff_day).replace('-', "");
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        let Some(day) = name.strip_prefix("tracegate_spans_") else { continue };
        if day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()) && day < cutoff.as_str() {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS tracegate_spans_{day}; DROP TABLE IF EXISTS tracegate_bodies_{day};"
                ))
                .await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// `YYYY-MM-DD` of a day number.
pub fn date_of(day: i32) -> String {
    crate::model::clock::format_day(i64::from(day))
}
