//! Tests of deletes: tombstones keep every other position valid, every reader skips them, the
//! ledger keeps its totals, postings go from the memtable and the runs, a reopened store
//! rebuilds without them, and retention still deletes old segments.

use std::collections::HashSet;
use std::path::Path;

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{Span, SpanBodies, SpanKind, SpanStatus, SpanWrite, UsageSource};
use crate::store::index::terms::{self, Field};
use crate::store::layout::*;
use crate::store::tests::reopen;
use crate::store::{Position, Selection, Store, TraceQuery};

/// Span `i`: team-(i % 3), user-(i % 5), its own trace except every 4th joins the one before.
fn span_of(i: u64, traces: &mut Vec<TraceId>) -> Span {
    let trace = if i % 4 == 3 { *traces.last().unwrap() } else { TraceId::random() };
    traces.push(trace);
    Span {
        start_time_unix_nano: 1_000_000 + i,
        duration_ms: 2.0 + i as f64,
        provider: Some("openai".into()),
        request_model: Some("m".into()),
        response_model: Some("m".into()),
        input_tokens: Some(3),
        output_tokens: Some(4),
        cost_usd: Some(0.001),
        usage_source: UsageSource::Reported,
        team: Some(format!("team-{}", i % 3)),
        user: Some(format!("user-{}", i % 5)),
        session: Some(format!("session-{}", i % 7)),
        status: if i.is_multiple_of(10) { SpanStatus::Error } else { SpanStatus::Ok },
        ..Span::new(trace, SpanId::random(), SpanKind::Llm, "chat m".into())
    }
}

fn bodies_of(span: &Span) -> SpanBodies {
    SpanBodies {
        request_body: Some(format!("{{\"ask\":\"{}\"}}", span.span_id)),
        response_body: Some(format!("data: {}\n\n", span.span_id)),
        truncated: false,
    }
}

/// A store of `n` spans in batches of 25 (runs of 60 spans, the rest in the memtable).
fn filled(path: &Path, n: u64) -> (Store, Vec<Span>) {
    let store = Store::open(path).unwrap();
    store.index.set_run_spans(60);
    let (mut traces, mut written) = (Vec::new(), Vec::new());
    for batch in 0..n.div_ceil(25) {
        let writes: Vec<SpanWrite> = (batch * 25..((batch + 1) * 25).min(n))
            .map(|i| {
                let span = span_of(i, &mut traces);
                written.push(span.clone());
                SpanWrite { bodies: Some(bodies_of(&span)), span }
            })
            .collect();
        store.write_batch(&writes).unwrap();
    }
    (store, written)
}

/// Deletes a selection as admin does: batches of `batch` positions, newest first.
fn delete(store: &Store, selection: &Selection, batch: usize) -> usize {
    let mut cursor = store.delete_start();
    let (mut deleted, mut seen): (usize, HashSet<Position>) = (0, HashSet::new());
    loop {
        let (positions, next) = store.select(selection, cursor, batch).unwrap();
        assert!(positions.windows(2).all(|w| w[0] > w[1]), "newest first");
        assert!(positions.iter().all(|p| seen.insert(*p)), "no position twice");
        deleted += store.delete_positions(&positions).unwrap();
        match next {
            Some(next) => cursor = next,
            None => return deleted,
        }
    }
}

fn all_spans(store: &Store) -> Vec<Span> {
    let mut spans = Vec::new();
    let query = TraceQuery::default();
    store
        .for_each_match_with_bodies(&query, |span, _| {
            spans.push(span);
            true
        })
        .unwrap();
    spans
}

/// Every position the index holds for `term`, memtable and runs.
fn postings(store: &Store, term: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for source in store.index.sources() {
        out.extend(store.index.positions(&store.tree, &source, &[term]).unwrap());
    }
    out
}

#[test]
fn deleted_spans_become_tombstones_that_every_reader_skips_and_the_rest_keep_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, written) = filled(&dir.path().join("s"), 300);
    assert!(store.index.run_count() >= 4, "some spans in runs, some in the memtable");
    let ledger_before = store.ledger(0, u32::MAX).unwrap();
    let team = Selection::Matching(Box::new(TraceQuery { team: Some("team-1".into()), ..TraceQuery::default() }));
    assert_eq!(store.count_selected(&team).unwrap(), 100);
    assert_eq!(delete(&store, &team, 7), 100);
    assert_eq!(store.count_selected(&team).unwrap(), 0);
    assert_eq!(delete(&store, &team, 7), 0, "a second delete finds nothing");

    let (gone, kept): (Vec<&Span>, Vec<&Span>) = written.iter().partition(|s| s.team.as_deref() == Some("team-1"));
    assert_eq!(store.span_count(), 200);
    // Trace reads, one span with bodies, the query walk.
    for span in &gone {
        assert!(store.span(&span.trace_id, &span.span_id).unwrap().is_none());
        assert!(store.trace_spans(&span.trace_id).unwrap().iter().all(|s| s.span_id != span.span_id));
    }
    for span in &kept {
        let (found, bodies) = store.span(&span.trace_id, &span.span_id).unwrap().unwrap();
        assert_eq!(&found, *span);
        assert_eq!(bodies, bodies_of(span), "bodies still at their positions");
    }
    let walked = all_spans(&store);
    let want: Vec<&Span> = kept.iter().rev().copied().collect();
    assert_eq!(walked.iter().collect::<Vec<_>>(), want);
    let found = store.find_traces(&TraceQuery { limit: 1000, ..TraceQuery::default() }).unwrap().traces;
    let traces: HashSet<TraceId> = kept.iter().map(|s| s.trace_id).collect();
    assert_eq!(found.len(), traces.len());
    // Exporters' segments.
    let exported: Vec<Span> =
        store.span_segments_after(0, usize::MAX).unwrap().into_iter().flat_map(|(_, s)| s).collect();
    assert_eq!(exported.iter().collect::<Vec<_>>(), kept);
    assert_eq!(store.spans_after(0, usize::MAX).unwrap(), 200);
    // Bodies emptied, ledger kept, postings gone.
    for entry in store.tree.scan_prefix([BODY_SEGMENT]) {
        let segment = RawSegment::of(entry.unwrap().1).unwrap();
        let raw = String::from_utf8_lossy(&segment);
        assert!(gone.iter().all(|s| !raw.contains(&s.span_id.to_string())), "a deleted span's body is left");
    }
    assert_eq!(store.ledger(0, u32::MAX).unwrap(), ledger_before);
    assert!(postings(&store, terms::term(Field::Team, b"team-1")).is_empty());
    let gone_traces: Vec<TraceId> = gone.iter().map(|s| s.trace_id).filter(|t| !traces.contains(t)).collect();
    for trace in gone_traces {
        assert!(postings(&store, terms::trace_term(&trace)).is_empty());
    }
    assert_eq!(
        postings(&store, terms::term(Field::User, b"user-2")).len(),
        kept.iter().filter(|s| s.user.as_deref() == Some("user-2")).count()
    );
}

#[test]
fn a_trace_is_deleted_whole_and_a_reopened_store_rebuilds_without_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (store, written) = filled(&path, 130);
    let trace = written[3].trace_id; // spans 2 and 3
    assert_eq!(store.count_selected(&Selection::Trace(trace)).unwrap(), 2);
    assert_eq!(delete(&store, &Selection::Trace(trace), 1), 2);
    assert!(store.trace_spans(&trace).unwrap().is_empty());
    let newest = &written[128]; // in the memtable
    assert_eq!(delete(&store, &Selection::Trace(newest.trace_id), 10), 1);
    let user = Selection::Matching(Box::new(TraceQuery { user: Some("user-4".into()), ..TraceQuery::default() }));
    let users = delete(&store, &user, 5);
    assert_eq!(
        users,
        written
            .iter()
            .filter(|s| s.user.as_deref() == Some("user-4") && s.trace_id != trace && s.span_id != newest.span_id)
            .count()
    );
    let count = store.span_count();
    let walked = all_spans(&store);
    store.flush().unwrap();
    drop(store);

    let store = reopen(&path);
    assert_eq!(store.span_count(), count);
    assert_eq!(all_spans(&store), walked);
    assert!(store.trace_spans(&trace).unwrap().is_empty());
    assert!(store.trace_spans(&newest.trace_id).unwrap().is_empty());
    assert_eq!(store.count_selected(&user).unwrap(), 0);
    assert!(postings(&store, terms::term(Field::User, b"user-4")).is_empty());
    // New writes after the reopen land after the tombstones, found as usual.
    let mut traces = Vec::new();
    let later = span_of(1000, &mut traces);
    store.write_batch(&[SpanWrite { span: later.clone(), bodies: None }]).unwrap();
    assert_eq!(store.trace_spans(&later.trace_id).unwrap(), vec![later]);
}

#[test]
fn retention_still_deletes_segments_holding_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, written) = filled(&dir.path().join("s"), 200);
    let errors = Selection::Matching(Box::new(TraceQuery { status: Some(SpanStatus::Error), ..TraceQuery::default() }));
    assert_eq!(delete(&store, &errors, 3), 20);
    // Everything before span 150 goes; the tombstones among them are not counted again.
    let deleted = store.delete_older_than(1_000_000 + 150).unwrap();
    let live_before = written[..150].iter().filter(|s| s.status != SpanStatus::Error).count();
    assert!(deleted <= live_before && deleted >= live_before - 25, "{deleted} of {live_before}");
    let left: Vec<u64> = all_spans(&store).iter().map(|s| s.start_time_unix_nano - 1_000_000).collect();
    assert!(left.iter().all(|i| i % 10 != 0));
    assert_eq!(left.len(), store.span_count());
    assert!(left.contains(&199) && left.len() < 60 + 25);
    // A segment of nothing but tombstones goes too.
    assert_eq!(
        delete(
            &store,
            &Selection::Matching(Box::new(TraceQuery { from_unix_nano: Some(0), ..TraceQuery::default() })),
            50
        ),
        left.len()
    );
    store.delete_older_than(u64::MAX).unwrap();
    assert_eq!(store.tree.scan_prefix([SPAN_SEGMENT]).count(), 0);
}

#[test]
fn deleting_a_position_twice_or_of_a_segment_retention_removed_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = filled(&dir.path().join("s"), 50);
    let (positions, _) = store
        .select(
            &Selection::Matching(Box::new(TraceQuery { user: Some("user-0".into()), ..TraceQuery::default() })),
            store.delete_start(),
            100,
        )
        .unwrap();
    assert_eq!(positions.len(), 10);
    assert_eq!(store.delete_positions(&positions).unwrap(), 10);
    assert_eq!(store.delete_positions(&positions).unwrap(), 0);
    store.delete_older_than(u64::MAX).unwrap();
    assert_eq!(store.span_count(), 0);
    assert_eq!(store.delete_positions(&[crate::store::index::position(1, 1)]).unwrap(), 0);
}

#[test]
fn time_windows_and_phrases_read_blocks_of_positions_and_skip_the_tombstones_there() {
    let dir = tempfile::tempdir().unwrap();
    let (store, written) = filled(&dir.path().join("s"), 300);
    let victim = &written[100];
    let phrase = victim.span_id.to_string();
    let by_phrase = Selection::Matching(Box::new(TraceQuery { text: Some(phrase.clone()), ..TraceQuery::default() }));
    assert_eq!(store.count_selected(&by_phrase).unwrap(), 1);
    let window = TraceQuery { from_unix_nano: Some(1_000_050), to_unix_nano: Some(1_000_150), ..TraceQuery::default() };
    assert_eq!(store.count_selected(&Selection::Matching(Box::new(window.clone()))).unwrap(), 100);
    assert_eq!(delete(&store, &by_phrase, 10), 1);
    assert_eq!(store.count_selected(&by_phrase).unwrap(), 0);
    let mut found = Vec::new();
    store
        .for_each_match_with_bodies(&window, |span, bodies| {
            found.push((span.start_time_unix_nano, bodies));
            true
        })
        .unwrap();
    assert_eq!(found.len(), 99);
    assert!(found.iter().all(|(start, _)| *start != victim.start_time_unix_nano));
    assert!(found.iter().all(|(_, b)| !b.request_body.as_deref().unwrap_or("").contains(&phrase)));
}
