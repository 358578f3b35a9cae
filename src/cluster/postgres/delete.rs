//! Deletes in a cluster: a `DELETE` asked of any instance removes the spans (and bodies) from
//! the shared store at once, and is written to `tracegate_deletions` in the same transaction so
//! that every instance also removes them from its own local store (`Sync` applies each listed
//! deletion, then deletes it from PostgreSQL once more, which catches a span the instance was
//! shipping at that moment). A deletion covers the spans that started before it was asked
//! (`before_ns`): calls recorded later, by any instance, are kept, as on one instance. The
//! usage ledger keeps its totals.

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;

use crate::cluster::postgres::read::{conditions, err, refs, Params, ReadError};
use crate::model::ids::TraceId;
use crate::store::{Selection, TraceQuery};

/// One deletion as `tracegate_deletions` lists it.
#[derive(Debug, Clone)]
pub struct SharedDeletion {
    pub id: u64,
    pub selection: Selection,
    pub before_ns: u64,
}

impl SharedDeletion {
    /// What this instance deletes locally: the selection, bounded to spans started before.
    pub fn local_selection(&self) -> Selection {
        bounded(&self.selection, self.before_ns)
    }
}

/// `selection` limited to spans that started before `before_ns` (a trace is deleted whole).
pub fn bounded(selection: &Selection, before_ns: u64) -> Selection {
    match selection {
        Selection::Trace(id) => Selection::Trace(*id),
        Selection::Matching(q) => {
            let mut q = q.clone();
            q.to_unix_nano = Some(q.to_unix_nano.map_or(before_ns, |to| to.min(before_ns)));
            Selection::Matching(q)
        }
    }
}

/// The `WHERE` over `tracegate_spans s` of a selection bounded by `before_ns`.
fn where_of(selection: &Selection, before_ns: u64, params: &mut Params) -> String {
    let mut wheres = match selection {
        Selection::Trace(id) => {
            params.push(Box::new(id.to_hex()));
            vec![format!("s.trace_id = ${}", params.len())]
        }
        Selection::Matching(q) => conditions(q, params),
    };
    if matches!(selection, Selection::Matching(_)) {
        params.push(Box::new(before_ns as i64));
        wheres.push(format!("s.start_ns < ${}", params.len()));
    }
    if wheres.is_empty() {
        "false".to_string()
    } else {
        wheres.join(" AND ")
    }
}

/// How many spans of the shared store `selection` names (a dry run).
pub async fn count(pool: &Pool, selection: &Selection, before_ns: u64) -> Result<u64, ReadError> {
    let client = pool.get().await.map_err(err)?;
    let mut params: Params = Vec::new();
    let sql = format!("SELECT count(*) FROM tracegate_spans s WHERE {}", where_of(selection, before_ns, &mut params));
    let row = client.query_one(&sql, &refs(&params)).await.map_err(err)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Deletes the selected spans and their bodies from the shared store and lists the deletion
/// for every instance, in one transaction; answers how many spans PostgreSQL held.
pub async fn delete(pool: &Pool, selection: &Selection, before_ns: u64) -> Result<u64, ReadError> {
    let mut client = pool.get().await.map_err(err)?;
    let tx = client.transaction().await.map_err(err)?;
    let (trace_id, filters) = match selection {
        Selection::Trace(id) => (Some(id.to_hex()), None),
        Selection::Matching(q) => (None, Some(serde_json::to_value(&**q).map_err(err)?)),
    };
    tx.execute(
        "INSERT INTO tracegate_deletions (trace_id, selection, before_ns) VALUES ($1, $2, $3)",
        &[&trace_id, &filters, &(before_ns as i64)],
    )
    .await
    .map_err(err)?;
    let deleted = delete_rows(&*tx, selection, before_ns).await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(deleted)
}

/// Deletes the selected spans and their bodies; how many spans went.
pub async fn delete_rows(
    client: &impl GenericClient,
    selection: &Selection,
    before_ns: u64,
) -> Result<u64, tokio_postgres::Error> {
    let mut params: Params = Vec::new();
    let sql = format!(
        "WITH gone AS (DELETE FROM tracegate_spans s WHERE {} RETURNING s.trace_id, s.span_id, s.day),
              bodies AS (DELETE FROM tracegate_bodies b USING gone g
                         WHERE b.trace_id = g.trace_id AND b.span_id = g.span_id AND b.day = g.day RETURNING 1)
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM bodies)",
        where_of(selection, before_ns, &mut params)
    );
    let row = client.query_one(&sql, &refs(&params)).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The deletions listed after `after` (by id), oldest first, at most `limit`. A row whose
/// selection cannot be read (written by a newer version) is skipped, with a warning.
pub async fn pending(
    client: &impl GenericClient,
    after: u64,
    limit: i64,
) -> Result<Vec<SharedDeletion>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, trace_id, selection, before_ns FROM tracegate_deletions WHERE id > $1 ORDER BY id LIMIT $2",
            &[&(after as i64), &limit],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.get::<_, i64>(0) as u64;
        let trace_id: Option<String> = row.get(1);
        let filters: Option<serde_json::Value> = row.get(2);
        let selection = match (trace_id.as_deref().and_then(TraceId::from_hex), filters) {
            (Some(trace), _) => Some(Selection::Trace(trace)),
            (None, Some(value)) => {
                serde_json::from_value::<TraceQuery>(value).ok().map(|q| Selection::Matching(Box::new(q)))
            }
            (None, None) => None,
        };
        match selection {
            Some(selection) => out.push(SharedDeletion { id, selection, before_ns: row.get::<_, i64>(3) as u64 }),
            None => tracing::warn!(id, "a shared deletion this version cannot read was skipped"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_deletion_is_bounded_by_when_it_was_asked_and_a_trace_is_not() {
        let q = TraceQuery { team: Some("ads".into()), to_unix_nano: Some(50), ..Default::default() };
        let Selection::Matching(b) = bounded(&Selection::Matching(Box::new(q.clone())), 40) else { panic!() };
        assert_eq!(b.to_unix_nano, Some(40));
        let Selection::Matching(b) = bounded(&Selection::Matching(Box::new(q)), 90) else { panic!() };
        assert_eq!(b.to_unix_nano, Some(50), "an earlier `to` stays");
        let id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        assert!(matches!(bounded(&Selection::Trace(id), 1), Selection::Trace(t) if t == id));
    }

    #[test]
    fn filters_travel_as_json_without_cursor_or_limit() {
        let q = TraceQuery {
            team: Some("ads".into()),
            properties: vec![("env".into(), "prod".into())],
            min_cost_usd: Some(0.5),
            limit: 50,
            ..Default::default()
        };
        let json = serde_json::to_value(&q).unwrap();
        assert!(json.get("limit").is_none() && json.get("cursor").is_none(), "{json}");
        let back: TraceQuery = serde_json::from_value(json).unwrap();
        assert_eq!(back, TraceQuery { limit: 0, ..q });
    }
}
