//! `DELETE /api/traces/{trace_id}` and `DELETE /api/spans?<filters>` (at least one): delete
//! spans and their bodies, for mistakes and for a user's right to erasure, and answer
//! `{"deleted": N}`; `?dry_run=true` only counts. The usage ledger keeps its totals.
//!
//! Admin reads, the recorder writes: a blocking-pool thread chooses the spans a batch at a time
//! (`Store::select`, at most `DELETE_BATCH` positions, newest first, below the positions
//! committed when the delete began) and hands each batch to the recorder
//! (`RecorderHandle::delete`), which tombstones it and flushes before answering. So a delete of
//! a whole team holds one batch in memory, calls keep being recorded between batches, and the
//! answer comes once the delete is durable. (A walk reads a memtable written out meanwhile
//! as the run it became, so one walk finds every selected span.)
//!
//! With `[cluster] postgres` the delete is the cluster's (`cluster::postgres::delete`): the
//! spans started before it go from PostgreSQL at once (`deleted` counts those), then from this
//! instance's local store, and every other instance removes them from its own within seconds;
//! a dry run counts in PostgreSQL. PostgreSQL unreachable: 503, nothing deleted.

use http::{Response, StatusCode};
use serde_json::json;

use super::{error, filters, json_response, parse_query, AdminBody};
use crate::cluster::postgres::delete as shared;
use crate::model::ids::TraceId;
use crate::record::RecorderHandle;
use crate::store::{Selection, Store};

/// Where a delete acts: the local store, and the shared one when the cluster has it.
pub(super) struct Target {
    pub store: std::sync::Arc<Store>,
    pub recorder: RecorderHandle,
    pub shared: Option<deadpool_postgres::Pool>,
}

/// `DELETE /api/traces/{trace_id}`.
pub(super) async fn delete_trace(target: Target, id: &str, query: &str) -> Response<AdminBody> {
    let Some(trace_id) = TraceId::from_hex(id) else {
        return error(StatusCode::BAD_REQUEST, "trace id must be 32 hex digits");
    };
    let dry_run = match dry_run_of(parse_query(query), "/api/traces/{trace_id}") {
        Ok(d) => d,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    run(target, Selection::Trace(trace_id), dry_run).await
}

/// `DELETE /api/spans?<filters>`.
pub(super) async fn delete_spans(target: Target, query: &str) -> Response<AdminBody> {
    let (q, extras) = match filters::parse(parse_query(query), "/api/spans", false, &["dry_run"]) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if !filters::filters_anything(&q) {
        let message = format!(
            "DELETE /api/spans needs at least one filter ({}); to delete one trace use DELETE /api/traces/{{trace_id}}",
            filters::FILTERS.join(", ")
        );
        return error(StatusCode::BAD_REQUEST, &message);
    }
    let dry_run = match dry_run_of(extras, "/api/spans") {
        Ok(d) => d,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    run(target, Selection::Matching(Box::new(q)), dry_run).await
}

/// `dry_run=true|false` (also 1/0, or bare); any other parameter is an error.
fn dry_run_of(pairs: Vec<(String, String)>, endpoint: &str) -> Result<bool, String> {
    let mut dry_run = false;
    for (key, value) in pairs {
        match (key.as_str(), value.as_str()) {
            ("dry_run", "" | "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => dry_run = false,
            ("dry_run", _) => return Err("dry_run must be true or false".into()),
            (other, _) => return Err(format!("DELETE {endpoint} has no parameter {other:?}; it accepts dry_run")),
        }
    }
    Ok(dry_run)
}

async fn run(target: Target, selection: Selection, dry_run: bool) -> Response<AdminBody> {
    let Target { store, recorder, shared } = target;
    if let Some(pool) = shared {
        return run_shared(store, recorder, &pool, selection, dry_run).await;
    }
    let done = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        if dry_run {
            return store.count_selected(&selection).map_err(|e| e.to_string());
        }
        recorder.delete_selected(&store, &selection)
    });
    match done.await {
        Ok(Ok(deleted)) => json_response(StatusCode::OK, &json!({ "deleted": deleted })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The cluster's delete: PostgreSQL first (with the deletion listed for every instance), then
/// this instance's local store.
async fn run_shared(
    store: std::sync::Arc<Store>,
    recorder: RecorderHandle,
    pool: &deadpool_postgres::Pool,
    selection: Selection,
    dry_run: bool,
) -> Response<AdminBody> {
    let before_ns = crate::model::clock::unix_nanos();
    let deleted = if dry_run {
        shared::count(pool, &selection, before_ns).await
    } else {
        shared::delete(pool, &selection, before_ns).await
    };
    let deleted = match deleted {
        Ok(n) => n,
        Err(e) => return super::shared_unavailable(&e),
    };
    if !dry_run {
        let local = shared::bounded(&selection, before_ns);
        match tokio::task::spawn_blocking(move || recorder.delete_selected(&store, &local)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    json_response(StatusCode::OK, &json!({ "deleted": deleted }))
}
