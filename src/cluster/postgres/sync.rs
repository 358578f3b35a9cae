//! The cluster sync: ships what this instance recorded — spans, their bodies, and their share
//! of the usage ledger — from the local sled store to PostgreSQL.
//!
//! The local store is the queue. A durable cursor (the last span segment shipped, kept in sled
//! like an exporter's and moved by the recorder, the one writer) says where to resume after a
//! restart or an outage of either side. A batch of whole segments goes in one transaction:
//! spans inserted with `ON CONFLICT DO NOTHING … RETURNING`, bodies likewise, and the ledger
//! rows of exactly the spans that were new added to `tracegate_ledger`. A batch shipped twice
//! (the cursor not yet moved when the process died) therefore counts once: exactly once by span
//! id. A failure rolls the whole batch back; it is retried with backoff, counted in
//! `tracegate_cluster_sync_errors_total`, and the backlog shows in
//! `tracegate_cluster_backlog_spans`. Nothing here touches the request path.
//!
//! PostgreSQL's text cannot hold NUL: a NUL in a stored string or body becomes U+FFFD in the
//! shared copy (the local store keeps the original).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::cluster::postgres::schema;
use crate::model::span::{Span, SpanBodies};
use crate::record::metrics::ClusterCounters;
use crate::record::RecorderHandle;
use crate::store::ledger::{LedgerKey, LedgerRow};
use crate::store::Store;

/// The cursor's name beside the exporters'.
pub const CURSOR: &str = "cluster-postgres";
/// The last shared deletion (`tracegate_deletions.id`) applied to the local store.
pub const DELETIONS_CURSOR: &str = "cluster-deletions";
/// How often the shared deletions are looked at.
const DELETIONS_EVERY: Duration = Duration::from_secs(1);
/// Spans per transaction (whole segments, so a little more).
const BATCH_SPANS: usize = 512;
const POLL: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often retention looks for partitions to drop.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub struct Sync {
    pub pool: Pool,
    pub store: Arc<Store>,
    pub recorder: RecorderHandle,
    pub counters: Arc<ClusterCounters>,
    pub retention_days: u32,
}

impl Sync {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let Some(mut cursor) = self.read(|store| store.export_cursor(CURSOR)).await else { return };
        let mut ensured: HashSet<i32> = HashSet::new();
        let mut backoff = FIRST_BACKOFF;
        let mut last_retention: Option<tokio::time::Instant> = None;
        let mut logged_outage = false;
        let Some(mut deletions) = self.read(|store| store.export_cursor(DELETIONS_CURSOR)).await else { return };
        let mut last_deletions: Option<tokio::time::Instant> = None;
        loop {
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) && self.retention().await {
                last_retention = Some(tokio::time::Instant::now());
            }
            // Deletions first: a span deleted here is then never shipped again.
            if last_deletions.is_none_or(|t| t.elapsed() >= DELETIONS_EVERY) {
                last_deletions = Some(tokio::time::Instant::now());
                deletions = self.apply_deletions(deletions).await;
            }
            let Some(batch) = self.read(move |store| store.segments_with_bodies_after(cursor, BATCH_SPANS)).await
            else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            if batch.is_empty() {
                self.counters.backlog_spans.store(0, Ordering::Relaxed);
                tokio::time::sleep(POLL).await;
                continue;
            }
            let last_seq = batch.last().map_or(cursor, |(seq, _)| *seq);
            let spans: Vec<(Span, SpanBodies)> = batch.into_iter().flat_map(|(_, spans)| spans).collect();
            match self.ship(&spans, &mut ensured).await {
                Ok(new) => {
                    if logged_outage {
                        tracing::info!("PostgreSQL reachable again; the cluster sync resumes");
                        logged_outage = false;
                    }
                    self.counters.synced_spans.fetch_add(new, Ordering::Relaxed);
                    backoff = FIRST_BACKOFF;
                    cursor = last_seq;
                    let recorder = self.recorder.clone();
                    let _ = tokio::task::spawn_blocking(move || recorder.set_export_cursor(CURSOR, last_seq)).await;
                    if let Some(backlog) = self.read(move |store| store.spans_after(cursor, 100_000)).await {
                        self.counters.backlog_spans.store(backlog, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.counters.sync_errors.fetch_add(1, Ordering::Relaxed);
                    ensured.clear();
                    if !logged_outage {
                        tracing::warn!(error = %e, "cluster sync to PostgreSQL failed; retrying with backoff");
                        logged_outage = true;
                    }
                    if let Some(backlog) = self.read(move |store| store.spans_after(cursor, 100_000)).await {
                        self.counters.backlog_spans.store(backlog, Ordering::Relaxed);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Applies the shared deletions listed after `cursor` to the local store, each followed by
    /// the same delete in PostgreSQL again (a span this instance shipped while the deletion was
    /// being asked would otherwise stay there); answers the new cursor. Stops at the first
    /// failure, to retry from there next time.
    async fn apply_deletions(&self, mut cursor: u64) -> u64 {
        let Ok(client) = self.pool.get().await else { return cursor };
        let listed = match super::delete::pending(&**client, cursor, 100).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::debug!(error = %e, "shared deletions could not be read");
                return cursor;
            }
        };
        for deletion in listed {
            let (store, recorder) = (self.store.clone(), self.recorder.clone());
            let selection = deletion.local_selection();
            let local = tokio::task::spawn_blocking(move || recorder.delete_selected(&store, &selection)).await;
            let deleted = match local {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, id = deletion.id, "a shared deletion failed locally; retrying");
                    return cursor;
                }
                Err(_) => return cursor,
            };
            if let Err(e) = super::delete::delete_rows(&**client, &deletion.selection, deletion.before_ns).await {
                tracing::debug!(error = %e, "a shared deletion could not be repeated in PostgreSQL; retrying");
                return cursor;
            }
            if deleted > 0 {
                tracing::info!(id = deletion.id, deleted, "applied a shared deletion to the local store");
            }
            cursor = deletion.id;
            self.counters.deletions_applied.fetch_add(1, Ordering::Relaxed);
            let recorder = self.recorder.clone();
            let _ = tokio::task::spawn_blocking(move || recorder.set_export_cursor(DELETIONS_CURSOR, cursor)).await;
        }
        cursor
    }

    /// Drops the partitions older than `retention_days`; false when PostgreSQL was not reached.
    async fn retention(&self) -> bool {
        if self.retention_days == 0 {
            return true;
        }
        let today = (crate::model::clock::unix_nanos() / 86_400_000_000_000) as i32;
        let Ok(client) = self.pool.get().await else { return false };
        // Deletions older than the retention name spans retention has dropped everywhere.
        let cutoff = format!("{} days", self.retention_days);
        let _ = client
            .execute("DELETE FROM tracegate_deletions WHERE requested_at < now() - $1::text::interval", &[&cutoff])
            .await;
        match schema::drop_days_before(&**client, today - self.retention_days as i32).await {
            Ok(0) => true,
            Ok(days) => {
                tracing::info!(days, "retention dropped PostgreSQL partitions");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL retention failed");
                false
            }
        }
    }

    /// One batch in one transaction; the number of spans that were new.
    async fn ship(&self, spans: &[(Span, SpanBodies)], ensured: &mut HashSet<i32>) -> Result<u64, String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        for (span, _) in spans {
            let day = day_of(span);
            if !ensured.contains(&day) {
                schema::ensure_day(&**client, day).await.map_err(|e| e.to_string())?;
                ensured.insert(day);
            }
        }
        let rows = Rows::of(spans);
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let inserted = tx
            .query(
                "INSERT INTO tracegate_spans (trace_id, span_id, day, start_ns, parent_span_id, kind, name, duration_ms,
                    provider, model, request_model, status, team, \"user\", session, instance, input_tokens,
                    output_tokens, cost_usd, properties, span)
                 SELECT t, s, date '1970-01-01' + d, st, p, k, n, du, pr, m, rm, stt, te, u, se, i, it, ot, c, pp, j
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                    $8::float8[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                    $15::text[], $16::bigint[], $17::bigint[], $18::float8[], $19::jsonb[], $20::text[], $21::text[])
                    AS x(t, s, d, st, p, k, n, du, pr, m, stt, te, u, se, i, it, ot, c, pp, j, rm)
                 ON CONFLICT DO NOTHING
                 RETURNING trace_id, span_id",
                &[
                    &rows.trace_id,
                    &rows.span_id,
                    &rows.day,
                    &rows.start_ns,
                    &rows.parent,
                    &rows.kind,
                    &rows.name,
                    &rows.duration_ms,
                    &rows.provider,
                    &rows.model,
                    &rows.status,
                    &rows.team,
                    &rows.user,
                    &rows.session,
                    &rows.instance,
                    &rows.input_tokens,
                    &rows.output_tokens,
                    &rows.cost_usd,
                    &rows.properties,
                    &rows.json,
                    &rows.request_model,
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
        let new: HashSet<(String, String)> = inserted.iter().map(|r| (r.get(0), r.get(1))).collect();
        tx.execute(
            "INSERT INTO tracegate_bodies (trace_id, span_id, day, request_body, response_body, truncated)
             SELECT t, s, date '1970-01-01' + d, rq, rs, tr
             FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::bool[]) AS x(t, s, d, rq, rs, tr)
             WHERE rq IS NOT NULL OR rs IS NOT NULL
             ON CONFLICT DO NOTHING",
            &[&rows.trace_id, &rows.span_id, &rows.day, &rows.request_body, &rows.response_body, &rows.truncated],
        )
        .await
        .map_err(|e| e.to_string())?;
        // The ledger counts exactly the spans that were new to PostgreSQL.
        let mut ledger: HashMap<LedgerKey, LedgerRow> = HashMap::new();
        for (span, _) in spans {
            if !new.contains(&(span.trace_id.to_hex(), span.span_id.to_hex())) {
                continue;
            }
            if let Some(key) = LedgerKey::of(span) {
                ledger.entry(key).or_default().add(&LedgerRow::of(span));
            }
        }
        if !ledger.is_empty() {
            let mut cells: Vec<(&LedgerKey, &LedgerRow)> = ledger.iter().collect();
            // One order for every instance: concurrent batches lock the same cells in turn.
            cells.sort_by(|a, b| a.0.cmp(b.0));
            let text = |f: fn(&LedgerKey) -> &str| cells.iter().map(|(k, _)| clean(f(k))).collect::<Vec<String>>();
            let days: Vec<i32> = cells.iter().map(|(k, _)| k.day as i32).collect();
            let (teams, users, providers, models) =
                (text(|k| &k.team), text(|k| &k.user), text(|k| &k.provider), text(|k| &k.model));
            let count =
                |f: fn(&LedgerRow) -> u64| cells.iter().map(|(_, r)| saturating_i64(f(r))).collect::<Vec<i64>>();
            let costs: Vec<f64> = cells.iter().map(|(_, r)| r.cost_usd).collect();
            tx.execute(
                "INSERT INTO tracegate_ledger AS l (day, team, \"user\", provider, model, requests, input_tokens,
                    output_tokens, cost_usd, errors)
                 SELECT date '1970-01-01' + d, te, u, p, m, rq, it, ot, c, er
                 FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                    $8::bigint[], $9::float8[], $10::bigint[]) AS x(d, te, u, p, m, rq, it, ot, c, er)
                 ON CONFLICT (day, team, \"user\", provider, model) DO UPDATE SET
                    requests = l.requests + excluded.requests,
                    input_tokens = l.input_tokens + excluded.input_tokens,
                    output_tokens = l.output_tokens + excluded.output_tokens,
                    cost_usd = l.cost_usd + excluded.cost_usd,
                    errors = l.errors + excluded.errors",
                &[
                    &days,
                    &teams,
                    &users,
                    &providers,
                    &models,
                    &count(|r| r.requests),
                    &count(|r| r.input_tokens),
                    &count(|r| r.output_tokens),
                    &costs,
                    &count(|r| r.errors),
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(new.len() as u64)
    }

    /// A store read on the blocking pool; `None` (logged) when it failed.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cluster sync cannot read the local store");
                None
            }
            Err(_) => None,
        }
    }
}

fn day_of(span: &Span) -> i32 {
    (span.start_time_unix_nano / 86_400_000_000_000) as i32
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A string PostgreSQL's text accepts (no NUL).
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

fn clean_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(clean)
}

/// A batch as columns, for `unnest`.
#[derive(Default)]
struct Rows {
    trace_id: Vec<String>,
    span_id: Vec<String>,
    day: Vec<i32>,
    start_ns: Vec<i64>,
    parent: Vec<Option<String>>,
    kind: Vec<String>,
    name: Vec<String>,
    duration_ms: Vec<f64>,
    provider: Vec<Option<String>>,
    model: Vec<Option<String>>,
    request_model: Vec<Option<String>>,
    status: Vec<String>,
    team: Vec<Option<String>>,
    user: Vec<Option<String>>,
    session: Vec<Option<String>>,
    instance: Vec<Option<String>>,
    input_tokens: Vec<Option<i64>>,
    output_tokens: Vec<Option<i64>>,
    cost_usd: Vec<Option<f64>>,
    properties: Vec<serde_json::Value>,
    json: Vec<String>,
    request_body: Vec<Option<String>>,
    response_body: Vec<Option<String>>,
    truncated: Vec<bool>,
}

impl Rows {
    fn of(spans: &[(Span, SpanBodies)]) -> Rows {
        let mut r = Rows::default();
        for (span, bodies) in spans {
            let as_text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            r.trace_id.push(span.trace_id.to_hex());
            r.span_id.push(span.span_id.to_hex());
            r.day.push(day_of(span));
            r.start_ns.push(saturating_i64(span.start_time_unix_nano));
            r.parent.push(span.parent_span_id.map(|p| p.to_hex()));
            r.kind.push(as_text(&serde_json::to_value(span.kind).unwrap_or_default()));
            r.name.push(clean(&span.name));
            r.duration_ms.push(if span.duration_ms.is_finite() { span.duration_ms } else { 0.0 });
            r.provider.push(clean_opt(&span.provider));
            r.model.push(clean_opt(&span.response_model.clone().or_else(|| span.request_model.clone())));
            r.request_model.push(clean_opt(&span.request_model));
            r.status.push(as_text(&serde_json::to_value(span.status).unwrap_or_default()));
            r.team.push(clean_opt(&span.team));
            r.user.push(clean_opt(&span.user));
            r.session.push(clean_opt(&span.session));
            r.instance.push(clean_opt(&span.instance));
            r.input_tokens.push(span.input_tokens.map(saturating_i64));
            r.output_tokens.push(span.output_tokens.map(saturating_i64));
            r.cost_usd.push(span.cost_usd.filter(|c| c.is_finite()));
            let properties: serde_json::Map<String, serde_json::Value> =
                span.properties.iter().map(|(k, v)| (clean(k), serde_json::Value::String(clean(v)))).collect();
            r.properties.push(serde_json::Value::Object(properties));
            // serde_json writes a NUL as the escape \u0000: plain text, which PostgreSQL accepts.
            r.json.push(serde_json::to_string(span).unwrap_or_default());
            r.request_body.push(clean_opt(&bodies.request_body));
            r.response_body.push(clean_opt(&bodies.response_body));
            r.truncated.push(bodies.truncated);
        }
        r
    }
}
