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

use http::{Response, StatusCode};
use serde_json::json;

use super::{error, filters, json_response, parse_query, AdminBody};
use crate::model::ids::TraceId;
use crate::record::RecorderHandle;
use crate::store::{Selection, Store, DELETE_BATCH};

/// `DELETE /api/traces/{trace_id}`.
pub(super) async fn delete_trace(
    store: std::sync::Arc<Store>,
    recorder: RecorderHandle,
    id: &str,
    query: &str,
) -> Response<AdminBody> {
    let Some(trace_id) = TraceId::from_hex(id) else {
        return error(StatusCode::BAD_REQUEST, "trace id must be 32 hex digits");
    };
    let dry_run = match dry_run_of(parse_query(query), "/api/traces/{trace_id}") {
        Ok(d) => d,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    run(store, recorder, Selection::Trace(trace_id), dry_run).await
}

/// `DELETE /api/spans?<filters>`.
pub(super) async fn delete_spans(
    store: std::sync::Arc<Store>,
    recorder: RecorderHandle,
    query: &str,
) -> Response<AdminBody> {
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
    run(store, recorder, Selection::Matching(Box::new(q)), dry_run).await
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

async fn run(
    store: std::sync::Arc<Store>,
    recorder: RecorderHandle,
    selection: Selection,
    dry_run: bool,
) -> Response<AdminBody> {
    let done = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        if dry_run {
            return store.count_selected(&selection).map_err(|e| e.to_string());
        }
        let (mut cursor, mut deleted) = (store.delete_start(), 0u64);
        loop {
            let (positions, next) = store.select(&selection, cursor, DELETE_BATCH).map_err(|e| e.to_string())?;
            if !positions.is_empty() {
                deleted += recorder.delete(positions)? as u64;
            }
            match next {
                Some(next) => cursor = next,
                None => return Ok(deleted),
            }
        }
    });
    match done.await {
        Ok(Ok(deleted)) => json_response(StatusCode::OK, &json!({ "deleted": deleted })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
