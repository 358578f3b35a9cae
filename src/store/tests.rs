//! The store's tests: round trips, merges, retention, crash recovery and format upgrades,
//! on real sled in temporary directories.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{Span, SpanBodies, SpanWrite};
use crate::model::span::{SpanKind, SpanStatus, UsageSource};
use crate::store::body_log::BodyRef;
use crate::store::index;
use crate::store::layout::*;
use crate::store::reader::SegmentCache;
use crate::store::{Store, StoreError, TraceQuery};

/// Opens the store at `path` again in this process. sled's IO threads may still hold the
/// previous handle's file (and its lock) for a moment after the drop; a new process never
/// meets this.
pub(super) fn reopen(path: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            // sled's lock error is reported as `InUse` (it was an Io error before: flaky reopens).
            Err(StoreError::InUse) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn span(trace_id: TraceId, start: u64) -> Span {
    Span {
        start_time_unix_nano: start,
        duration_ms: 1.5,
        provider: Some("openai".into()),
        operation: Some("chat".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        status_code: Some(200),
        request_model: Some("m".into()),
        response_model: Some("m".into()),
        input_tokens: Some(3),
        output_tokens: Some(4),
        usage_source: UsageSource::Reported,
        ..Span::new(trace_id, SpanId::random(), SpanKind::Llm, "chat m".into())
    }
}

#[test]
fn spans_bodies_and_summaries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let trace = TraceId::random();
    let bodies = SpanBodies {
        request_body: Some("{\"a\":1}".into()),
        response_body: Some("data: x\n\n".into()),
        truncated: true,
    };
    let writes = vec![
        SpanWrite { span: span(trace, 20), bodies: Some(bodies.clone()) },
        SpanWrite { span: span(trace, 10), bodies: None },
        SpanWrite { span: span(TraceId::random(), 30), bodies: None },
    ];
    store.write_batch(&writes).unwrap();
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.iter().map(|s| s.start_time_unix_nano).collect::<Vec<_>>(), vec![10, 20]);
    let (found, got) = store.span(&trace, &writes[0].span.span_id).unwrap().unwrap();
    assert_eq!(found, writes[0].span);
    assert_eq!(got, bodies);
    assert_eq!(store.span(&trace, &writes[1].span.span_id).unwrap().unwrap().1, SpanBodies::default());
    let listed = store.find_traces(&TraceQuery { limit: 10, ..TraceQuery::default() }).unwrap().traces;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].trace_id, trace);
    assert_eq!(listed[1].span_count, 2);
    assert_eq!(listed[1].input_tokens, 6);
}

#[test]
fn retention_deletes_old_segments_with_their_bodies_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let (old, new) = (TraceId::random(), TraceId::random());
    let bodies = SpanBodies { request_body: Some("x".into()), response_body: None, truncated: false };
    store.write_batch(&[SpanWrite { span: span(old, 100), bodies: Some(bodies.clone()) }]).unwrap();
    store.write_batch(&[SpanWrite { span: span(old, 200), bodies: None }]).unwrap();
    store.write_batch(&[SpanWrite { span: span(new, 5_000), bodies: Some(bodies) }]).unwrap();
    assert_eq!(store.delete_older_than(1_000).unwrap(), 2);
    assert!(store.trace_spans(&old).unwrap().is_empty());
    assert_eq!(store.trace_spans(&new).unwrap().len(), 1);
    assert_eq!(store.span_count(), 1);
    assert!(store.tree.get(segment_key(BODY_SEGMENT, 1)).unwrap().is_none());
    assert_eq!(store.find_traces(&TraceQuery { limit: 10, ..TraceQuery::default() }).unwrap().traces.len(), 1);
    assert_eq!(store.delete_older_than(1_000).unwrap(), 0, "nothing more to delete");
}

#[test]
fn search_index_runs_are_written_found_after_reopen_and_dropped_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(&path).unwrap();
    store.index.set_run_spans(1_000);
    let long_trace = TraceId::random();
    let mut others = Vec::new();
    // 25 batches of 100: two runs and a half-full memtable; one trace has a span in each.
    const BATCHES: u64 = 25;
    for batch_no in 0..BATCHES {
        let mut writes = vec![SpanWrite { span: span(long_trace, batch_no), bodies: None }];
        for i in 0..99 {
            let trace = TraceId::random();
            others.push(trace);
            writes.push(SpanWrite { span: span(trace, batch_no * 1000 + i), bodies: None });
        }
        store.write_batch(&writes).unwrap();
    }
    assert_eq!(store.index.run_count(), 2);
    assert_eq!(store.tree.scan_prefix([index::run::RUN_META]).count(), 2);
    assert_eq!(store.trace_spans(&long_trace).unwrap().len() as u64, BATCHES, "found in runs and memtable");
    for trace in others.iter().step_by(97) {
        assert_eq!(store.trace_spans(trace).unwrap().len(), 1);
    }
    assert_eq!(store.span_count() as u64, BATCHES * 100);
    assert!(store.unmerged_runs.load(Ordering::Relaxed) < RUNS_BEFORE_MERGE);
    // Reopened: the runs are read back and the memtable rebuilt from the segments after them.
    drop(store);
    let store = reopen(&path);
    assert_eq!(store.index.run_count(), 2);
    assert_eq!(store.trace_spans(&long_trace).unwrap().len() as u64, BATCHES);
    let all = TraceQuery { limit: 10_000, ..TraceQuery::default() };
    assert_eq!(store.find_traces(&all).unwrap().traces.len(), others.len() + 1);
    // Retention drops the run whose spans are all gone; the rest is still found.
    assert_eq!(store.delete_older_than(11_000).unwrap(), 1_100, "batches 0..11 are wholly older");
    assert_eq!(store.index.run_count(), 1);
    assert_eq!(store.trace_spans(&long_trace).unwrap().len() as u64, BATCHES - 11);
    assert_eq!(store.find_traces(&all).unwrap().traces.len(), others.len() + 1 - 11 * 99);
}

#[test]
fn segments_of_a_batch_cut_short_by_a_crash_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (kept, cut) = (TraceId::random(), TraceId::random());
    let bodies = SpanBodies { request_body: Some("x".into()), response_body: None, truncated: false };
    {
        let store = reopen(&path);
        store.write_batch(&[SpanWrite { span: span(kept, 1), bodies: Some(bodies.clone()) }]).unwrap();
        store.write_batch(&[SpanWrite { span: span(cut, 2), bodies: Some(bodies) }]).unwrap();
        // As if the process died after the second batch's segments, before its run.
        store.tree.remove(segment_key(INDEX_RUN, 2)).unwrap();
        store.flush().unwrap();
    }
    let store = reopen(&path);
    assert_eq!(store.span_count(), 1);
    assert!(store.tree.get(segment_key(BODY_SEGMENT, 2)).unwrap().is_none());
    assert_eq!(store.trace_spans(&kept).unwrap().len(), 1);
    assert!(store.trace_spans(&cut).unwrap().is_empty());
    assert_eq!(store.find_traces(&TraceQuery { limit: 10, ..TraceQuery::default() }).unwrap().traces.len(), 1);
    // The next batch reuses nothing it should not: it is found, and so is the old one.
    store.write_batch(&[SpanWrite { span: span(cut, 3), bodies: None }]).unwrap();
    assert_eq!(store.trace_spans(&cut).unwrap().len(), 1);
}

#[test]
fn the_ledger_counts_merged_and_unmerged_batches_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let mut with_team = span(TraceId::random(), 86_400 * 1_000_000_000 * 20_000);
    with_team.team = Some("search".into());
    with_team.cost_usd = Some(0.5);
    for _ in 0..3 {
        store.write_batch(&[SpanWrite { span: with_team.clone(), bodies: None }]).unwrap();
    }
    let total = |store: &Store| -> (u64, f64) {
        let cells = store.ledger(0, u32::MAX - 1).unwrap();
        cells
            .iter()
            .filter(|(k, _)| k.team == "search")
            .fold((0, 0.0), |(n, c), (_, r)| (n + r.requests, c + r.cost_usd))
    };
    assert_eq!(total(&store), (3, 1.5), "from the runs");
    store.merge_runs().unwrap();
    assert_eq!(total(&store), (3, 1.5), "from the ledger cells");
    store.write_batch(&[SpanWrite { span: with_team, bodies: None }]).unwrap();
    assert_eq!(total(&store), (4, 2.0), "from both");
}

fn write_with_bodies(store: &Store, trace: TraceId, spans: u64) {
    let writes: Vec<SpanWrite> = (0..spans)
        .map(|i| SpanWrite {
            span: span(trace, i),
            bodies: Some(SpanBodies {
                request_body: Some(format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":"question {i}"}}]}}"#
                )),
                response_body: Some(format!(r#"{{"choices":[{{"message":{{"content":"answer {i}"}}}}]}}"#)),
                truncated: false,
            }),
        })
        .collect();
    store.write_batch(&writes).unwrap();
}

#[test]
fn segments_are_stored_compressed_and_closed_near_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let trace = TraceId::random();
    write_with_bodies(&store, trace, 2_000);
    write_with_bodies(&store, trace, 2_000);
    let (mut raw, mut stored, mut segments) = (0, 0, 0);
    for entry in store.tree.scan_prefix([SPAN_SEGMENT]) {
        let value = entry.unwrap().1;
        assert_eq!(value[0], b'Z', "compressed");
        assert!(value.len() <= 2 * SEGMENT_TARGET_BYTES, "{} bytes", value.len());
        raw += RawSegment::of(value.clone()).unwrap().len();
        stored += value.len();
        segments += 1;
    }
    assert!(raw > 3 * stored, "ratio {raw} / {stored}");
    // Planned on the ratio, a segment holds several times the spans of an uncompressed one.
    assert!(segments < 2 * raw / SEGMENT_TARGET_BYTES / 3, "{segments} segments for {raw} raw bytes");
    // Their bodies are in body files, compressed, one record per span segment.
    let (mut body_raw, mut body_stored, mut body_segments) = (0, 0, 0);
    for entry in store.tree.scan_prefix([BODY_SEGMENT]) {
        let value = entry.unwrap().1;
        let body_ref = BodyRef::decode(&value).expect("a reference into a body file");
        body_raw += store.segments().raw(value).unwrap().len();
        body_stored += body_ref.len as usize;
        body_segments += 1;
    }
    assert_eq!(body_segments, segments);
    assert!(body_raw > 3 * body_stored, "ratio {body_raw} / {body_stored}");
    assert_eq!(store.body_bytes(), body_stored);
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.len(), 4_000);
    let last = spans.last().unwrap();
    let (_, bodies) = store.span(&trace, &last.span_id).unwrap().unwrap();
    assert!(bodies.request_body.unwrap().contains("question 1999"));
}

#[test]
fn a_format_2_store_with_raw_segments_reads_and_moves_to_format_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    {
        let store = reopen(&path);
        write_with_bodies(&store, trace, 300);
        // Format 2 stored segments raw.
        for kind in [SPAN_SEGMENT, BODY_SEGMENT] {
            for entry in store.tree.scan_prefix([kind]).collect::<Vec<_>>() {
                let (key, value) = entry.unwrap();
                store.tree.insert(key, &*store.segments().raw(value).unwrap()).unwrap();
            }
        }
        store.tree.insert(FORMAT_KEY, &[FORMAT2]).unwrap();
        store.flush().unwrap();
    }
    let store = reopen(&path);
    assert_eq!(store.tree.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT_VERSION]);
    write_with_bodies(&store, trace, 300);
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.len(), 600);
    assert_eq!(store.span_count(), 600);
    for span in [&spans[0], &spans[599]] {
        let (_, bodies) = store.span(&trace, &span.span_id).unwrap().unwrap();
        assert!(bodies.response_body.unwrap().starts_with(r#"{"choices""#));
    }
    assert_eq!(store.find_traces(&TraceQuery { limit: 10, ..TraceQuery::default() }).unwrap().traces.len(), 1);
}

/// Rewrites the index of a store whose segments 1..=`indexed_through` each hold one span
/// of `trace` the way format 1 kept it: no runs or pages, one key per span.
fn as_format1(store: &Store, trace: &TraceId, indexed_through: u64) {
    let format2_index = [INDEX_RUN, FORMAT3_INDEX_PAGE, index::run::RUN_CHUNK, index::run::RUN_META]
        .into_iter()
        .flat_map(|p| store.tree.scan_prefix([p]).keys());
    for key in format2_index.collect::<Vec<_>>() {
        store.tree.remove(key.unwrap()).unwrap();
    }
    store.tree.remove(MERGED_THROUGH_KEY).unwrap();
    for seq in 1..=indexed_through {
        let mut key = vec![FORMAT1_TRACE_INDEX];
        key.extend_from_slice(&trace.0);
        key.extend_from_slice(&seq.to_be_bytes());
        key.extend_from_slice(&0u32.to_be_bytes());
        store.tree.insert(key, &[]).unwrap();
    }
    store.tree.insert(FORMAT1_INDEXED_THROUGH_KEY, &indexed_through.to_be_bytes()).unwrap();
    store.tree.insert(FORMAT_KEY, &[1]).unwrap();
    store.flush().unwrap();
}

#[test]
fn a_format_1_store_is_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    {
        let store = reopen(&path);
        store.write_batch(&[SpanWrite { span: span(trace, 1), bodies: None }]).unwrap();
        store.write_batch(&[SpanWrite { span: span(trace, 2), bodies: None }]).unwrap();
        as_format1(&store, &trace, 2);
    }
    let store = reopen(&path);
    assert_eq!(store.trace_spans(&trace).unwrap().len(), 2);
    assert_eq!(store.tree.scan_prefix([FORMAT1_TRACE_INDEX]).count(), 0);
    assert_eq!(store.tree.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT_VERSION]);
}

// Crash, concurrency and failure-path cases found by a review of the layout.

/// Retention deletes every segment; after a restart seqs start at 1 again.
#[test]
fn review_seq_reuse_after_retention_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    {
        let store = reopen(&path);
        for i in 0..10 {
            store.write_batch(&[SpanWrite { span: span(TraceId::random(), 100 + i), bodies: None }]).unwrap();
        }
        store.set_export_cursor("otlp", 10).unwrap();
        assert_eq!(store.delete_older_than(1_000).unwrap(), 10);
        store.flush().unwrap();
    }
    let torn = TraceId::random();
    {
        let store = reopen(&path);
        println!("next_seq after reopen = {}", store.next_seq.load(Ordering::Relaxed));
        store.write_batch(&[SpanWrite { span: span(TraceId::random(), 5_000), bodies: None }]).unwrap();
        println!("exporter sees after cursor 10: {:?}", store.span_segments_after(10, 100).unwrap().len());
        // torn batch: segment without its run
        store.write_batch(&[SpanWrite { span: span(torn, 5_001), bodies: None }]).unwrap();
        let last = store.next_seq.load(Ordering::Relaxed) - 1;
        store.tree.remove(segment_key(INDEX_RUN, last)).unwrap();
        store.flush().unwrap();
    }
    let store = reopen(&path);
    let ledger: u64 = store.ledger(0, u32::MAX - 1).unwrap().iter().map(|(_, r)| r.requests).sum();
    println!(
        "after reopen: span_count={} ledger requests={} (10 deleted by retention + 1 committed)",
        store.span_count(),
        ledger
    );
    assert_eq!(store.span_count(), 1, "torn segment must be removed at open");
}

/// A format-1 store that crashed between a batch (segments + ledger) and its index keys.
#[test]
fn review_format1_unindexed_segments_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    {
        let store = reopen(&path);
        store.write_batch(&[SpanWrite { span: span(trace, 1), bodies: None }]).unwrap();
        store.write_batch(&[SpanWrite { span: span(trace, 2), bodies: None }]).unwrap();
        store.merge_runs().unwrap();
        // Only segment 1 got its index key; segment 2's were cut by a crash (format 1 repaired this at open).
        as_format1(&store, &trace, 1);
    }
    let store = reopen(&path);
    assert_eq!(store.span_count(), 2);
    assert_eq!(store.trace_spans(&trace).unwrap().len(), 2, "span of segment 2 is stored and counted but not found");
}

fn entries_of(store: &Store, trace_id: &TraceId) -> usize {
    let mut n = 0;
    store
        .for_each_span(trace_id, &mut SegmentCache::default(), |_, _, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
    n
}

#[test]
fn review_reader_misses_entries_during_retention_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(&dir.path().join("s")).unwrap());
    const TARGET: usize = 5_000;
    const FILLER: usize = 600;
    let write = |store: &Store, trace: Option<TraceId>, n: usize, ts: u64| {
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let w: Vec<_> = chunk
                .iter()
                .map(|_| SpanWrite { span: span(trace.unwrap_or_else(TraceId::random), ts), bodies: None })
                .collect();
            store.write_batch(&w).unwrap();
        }
    };
    let mut target = TraceId::random();
    write(&store, None, FILLER, 1);
    write(&store, Some(target), TARGET, 500);
    store.merge_runs().unwrap();
    let mut misses = 0;
    for c in 1..60u64 {
        write(&store, None, FILLER, c * 1000 + 1);
        let next = TraceId::random();
        write(&store, Some(next), TARGET, c * 1000 + 500);
        store.merge_runs().unwrap();
        assert_eq!(entries_of(&store, &next), TARGET);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut min = usize::MAX;
                while !stop.load(Ordering::Relaxed) {
                    min = min.min(entries_of(&store, &next));
                }
                min
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.delete_older_than(c * 1000 + 400).unwrap();
        stop.store(true, Ordering::Relaxed);
        let min = reader.join().unwrap();
        let after = entries_of(&store, &next);
        if c < 4 {
            println!("cycle {c}: after retention, sequentially: {after}; min seen {min}");
        }
        assert_eq!(after, TARGET);
        if min < TARGET {
            misses += 1;
            println!("cycle {c}: a reader saw {min} of {TARGET} entries of a trace untouched by retention");
        }
        target = next;
    }
    let _ = target;
    assert_eq!(misses, 0);
}

#[test]
fn review_retention_cycles_without_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    for c in 1..80u64 {
        for _ in 0..12 {
            let w: Vec<_> =
                (0..500).map(|_| SpanWrite { span: span(TraceId::random(), c * 1000 + 1), bodies: None }).collect();
            store.write_batch(&w).unwrap();
        }
        store.delete_older_than(c * 1000).unwrap();
    }
}

/// A span of trace `t` numbered `i`, with fields that vary with `i` (for the query tests).
fn varied_span(t: TraceId, i: u64) -> Span {
    let mut s = span(t, 1_000_000 + i * 10);
    s.team = Some(format!("team-{}", i % 5));
    s.user = Some(format!("user-{}", i % 7));
    s.session = i.is_multiple_of(3).then(|| format!("session-{}", i % 11));
    s.provider = Some(if i.is_multiple_of(4) { "anthropic" } else { "openai" }.into());
    s.request_model = Some(format!("model-{}", i % 6));
    s.response_model = Some(format!("model-{}-snapshot", i % 6));
    s.status = if i % 50 == 7 { SpanStatus::Error } else { SpanStatus::Ok };
    s.duration_ms = (i % 1000) as f64;
    s.cost_usd = i.is_multiple_of(2).then_some(i as f64 * 1e-6);
    s.properties.insert("env".into(), if i % 10 == 3 { "prod" } else { "dev" }.into());
    s
}

#[test]
fn find_traces_answers_every_filter_and_pages_with_no_duplicate_or_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(300);
    // 1,500 traces of 2 spans each (the second written 700 spans later), in 30 batches.
    let traces: Vec<TraceId> = (0..1500).map(|_| TraceId::random()).collect();
    let mut written: Vec<Span> = Vec::new();
    for batch in 0..30u64 {
        let writes: Vec<SpanWrite> = (0..100u64)
            .map(|k| {
                let i = batch * 100 + k;
                let trace = if i < 1500 { traces[i as usize] } else { traces[(i - 700) as usize % 1500] };
                let s = varied_span(trace, i);
                written.push(s.clone());
                SpanWrite { span: s, bodies: None }
            })
            .collect();
        store.write_batch(&writes).unwrap();
    }
    assert!(store.index.run_count() >= 9);
    // What a page must hold: traces by their newest matching span, newest first.
    let expected = |q: &TraceQuery| -> Vec<TraceId> {
        let mut out = Vec::new();
        for s in written.iter().rev() {
            if q.matches(s) && !out.contains(&s.trace_id) {
                out.push(s.trace_id);
            }
        }
        out
    };
    let walk = |q: &TraceQuery| -> Vec<TraceId> {
        let mut q = q.clone();
        let mut out = Vec::new();
        loop {
            let page = store.find_traces(&q).unwrap();
            assert!(page.traces.len() <= q.limit);
            out.extend(page.traces.iter().map(|t| t.trace_id));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return out,
            }
        }
    };
    let q = |f: &dyn Fn(&mut TraceQuery)| {
        let mut q = TraceQuery { limit: 50, ..TraceQuery::default() };
        f(&mut q);
        q
    };
    let queries = [
        q(&|_| {}),
        q(&|q| q.team = Some("team-3".into())),
        q(&|q| q.user = Some("user-6".into())),
        q(&|q| q.model = Some("model-2".into())),
        q(&|q| q.model = Some("model-2-snapshot".into())),
        q(&|q| q.provider = Some("anthropic".into())),
        q(&|q| q.status = Some(SpanStatus::Error)),
        q(&|q| q.session = Some("session-4".into())),
        q(&|q| q.properties = vec![("env".into(), "prod".into())]),
        q(&|q| q.min_duration_ms = Some(990.0)),
        q(&|q| q.min_cost_usd = Some(0.002_9)),
        q(&|q| (q.from_unix_nano, q.to_unix_nano) = (Some(1_000_000 + 1000 * 10), Some(1_000_000 + 1200 * 10))),
        q(&|q| {
            q.team = Some("team-1".into());
            q.provider = Some("openai".into());
            q.status = Some(SpanStatus::Ok);
            q.min_duration_ms = Some(500.0);
        }),
        q(&|q| q.team = Some("nobody".into())),
        q(&|q| {
            q.team = Some("team-0".into());
            q.user = Some("user-0".into());
            q.limit = 7;
        }),
    ];
    for query in &queries {
        let want = expected(query);
        let first = store.find_traces(query).unwrap();
        let first_ids: Vec<TraceId> = first.traces.iter().map(|t| t.trace_id).collect();
        assert_eq!(first_ids, want[..want.len().min(query.limit)], "{query:?}");
        assert_eq!(first.next_cursor.is_some(), want.len() > query.limit, "{query:?}");
        assert_eq!(walk(query), want, "walking every page of {query:?}");
    }
    // Summaries are whole: both spans, users and sessions of the trace.
    let page = store.find_traces(&q(&|q| q.team = Some("team-3".into()))).unwrap();
    let t = &page.traces[0];
    assert_eq!(t.span_count, 2);
    assert_eq!(t.users.len(), 2);

    // Calls arriving between pages land above the cursor: the walk neither repeats nor skips.
    let query = q(&|q| q.provider = Some("openai".into()));
    let before = expected(&query);
    let mut cursor_query = query.clone();
    let mut seen = Vec::new();
    let mut arrivals = 0u64;
    loop {
        let page = store.find_traces(&cursor_query).unwrap();
        seen.extend(page.traces.iter().map(|t| t.trace_id));
        let fresh: Vec<SpanWrite> = (0..20)
            .map(|k| SpanWrite { span: varied_span(TraceId::random(), 10_000 + arrivals * 20 + k), bodies: None })
            .collect();
        arrivals += 1;
        store.write_batch(&fresh).unwrap();
        match page.next_cursor {
            Some(c) => cursor_query.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, before);
}

#[test]
fn a_call_joining_an_unlisted_trace_between_pages_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(64);
    let traces: Vec<TraceId> = (0..200).map(|_| TraceId::random()).collect();
    for chunk in traces.chunks(20) {
        let writes: Vec<SpanWrite> =
            chunk.iter().map(|t| SpanWrite { span: varied_span(*t, 0), bodies: None }).collect();
        store.write_batch(&writes).unwrap();
    }
    let all = TraceQuery { limit: 30, ..TraceQuery::default() };
    let before: Vec<TraceId> = traces.iter().rev().copied().collect();
    let (mut query, mut seen, mut page_no) = (all.clone(), Vec::new(), 0);
    loop {
        let page = store.find_traces(&query).unwrap();
        seen.extend(page.traces.iter().map(|t| t.trace_id));
        // A new call joins the oldest trace, not listed yet: it lands above the cursor.
        let mut joining = varied_span(traces[page_no], 1_000_000);
        joining.parent_span_id = Some(SpanId::random());
        store.write_batch(&[SpanWrite { span: joining, bodies: None }]).unwrap();
        page_no += 1;
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, before);
    // Starting again from the top shows the traces that grew first.
    let fresh = store.find_traces(&all).unwrap();
    assert_eq!(fresh.traces[0].trace_id, traces[page_no - 1]);
    assert_eq!(fresh.traces[0].span_count, 2);
}

#[test]
fn find_sessions_lists_each_session_once_with_totals_over_all_its_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(100);
    let mut written: Vec<Span> = Vec::new();
    for batch in 0..12u64 {
        let writes: Vec<SpanWrite> = (0..50u64)
            .map(|k| {
                let s = varied_span(TraceId::random(), batch * 50 + k);
                written.push(s.clone());
                SpanWrite { span: s, bodies: None }
            })
            .collect();
        store.write_batch(&writes).unwrap();
    }
    let walk = |q: &TraceQuery| {
        let (mut q, mut out) = (q.clone(), Vec::new());
        loop {
            let page = store.find_sessions(&q).unwrap();
            out.extend(page.sessions);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return out,
            }
        }
    };
    for query in [
        TraceQuery { limit: 4, ..TraceQuery::default() },
        TraceQuery { limit: 2, team: Some("team-3".into()), ..TraceQuery::default() },
        TraceQuery { limit: 3, user: Some("user-2".into()), ..TraceQuery::default() },
    ] {
        let mut want: Vec<String> = Vec::new();
        for s in written.iter().rev() {
            if let Some(session) = &s.session {
                if query.matches(s) && !want.contains(session) {
                    want.push(session.clone());
                }
            }
        }
        let got = walk(&query);
        assert_eq!(got.iter().map(|s| s.session.clone()).collect::<Vec<_>>(), want, "{query:?}");
        for summary in got {
            let spans: Vec<&Span> = written.iter().filter(|s| s.session.as_ref() == Some(&summary.session)).collect();
            assert_eq!(summary.span_count, spans.len() as u64);
            assert_eq!(summary.trace_count, spans.len() as u64);
            assert_eq!(summary.errors, spans.iter().filter(|s| s.status == SpanStatus::Error).count() as u64);
            assert_eq!(summary.input_tokens, 3 * spans.len() as u64);
            assert_eq!(summary.first_time_unix_nano, spans[0].start_time_unix_nano);
            assert_eq!(summary.user, spans.last().unwrap().user);
        }
    }
}

#[test]
fn text_search_finds_a_phrase_in_bodies_case_insensitively_and_inside_json_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(40);
    let bodies = |i: u64| SpanBodies {
        request_body: Some(match i {
            5 => r#"{"messages":[{"content":"Tell me about the Quantum Marmalade"}]}"#.to_string(),
            17 => r#"{"messages":[{"content":"she said \"quantum marmalade\" twice"}]}"#.to_string(),
            _ => format!(r#"{{"messages":[{{"content":"ordinary call {i}"}}]}}"#),
        }),
        response_body: Some(if i == 33 { "data: QUANTUM MARMALADE\n\n".into() } else { "data: ok\n\n".into() }),
        truncated: false,
    };
    let mut traces = Vec::new();
    for batch in 0..5u64 {
        let writes: Vec<SpanWrite> = (0..20u64)
            .map(|k| {
                let i = batch * 20 + k;
                let t = TraceId::random();
                traces.push(t);
                SpanWrite { span: varied_span(t, i), bodies: Some(bodies(i)) }
            })
            .collect();
        store.write_batch(&writes).unwrap();
    }
    let find = |text: &str| {
        let q = TraceQuery { limit: 50, text: Some(text.into()), ..TraceQuery::default() };
        store.find_traces(&q).unwrap().traces.iter().map(|t| t.trace_id).collect::<Vec<_>>()
    };
    assert_eq!(find("quantum marmalade"), vec![traces[33], traces[17], traces[5]]);
    assert_eq!(find("\"Quantum Marmalade\""), vec![traces[17]]);
    assert_eq!(find("ordinary call 42"), vec![traces[42]]);
    assert!(find("no such phrase").is_empty());
    // Whole words at the phrase's edges, as search engines match.
    assert!(find("marmal").is_empty());
    assert!(find("uantum marmalade").is_empty());
    assert_eq!(find("call 4"), vec![traces[4]]);
}

#[test]
fn text_search_narrows_by_word_blocks_and_combines_with_other_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(1000);
    let mut written = Vec::new();
    for batch in 0..25u64 {
        let writes: Vec<SpanWrite> = (0..100u64)
            .map(|k| {
                let i = batch * 100 + k;
                let s = varied_span(TraceId::random(), i);
                let text =
                    if i % 400 == 123 { "the rare zebra phrase".to_string() } else { format!("the usual {}", i % 97) };
                let request_body = Some(format!(r#"{{"messages":[{{"content":"{text}"}}]}}"#));
                written.push((s.clone(), text));
                SpanWrite { span: s, bodies: Some(SpanBodies { request_body, response_body: None, truncated: false }) }
            })
            .collect();
        store.write_batch(&writes).unwrap();
    }
    assert_eq!(store.index.run_count(), 2, "two runs of several blocks, and the memtable");
    for query in [
        TraceQuery { text: Some("Rare Zebra".into()), ..TraceQuery::default() },
        TraceQuery { text: Some("rare zebra".into()), team: Some("team-3".into()), ..TraceQuery::default() },
        TraceQuery { text: Some("usual 5".into()), status: Some(SpanStatus::Error), ..TraceQuery::default() },
        TraceQuery { text: Some("the".into()), user: Some("user-1".into()), ..TraceQuery::default() },
    ] {
        let query = TraceQuery { limit: 1000, ..query };
        let phrase = query.text.clone().unwrap().to_lowercase();
        let want: Vec<TraceId> = written
            .iter()
            .rev()
            .filter(|(s, text)| query.matches(s) && format!("{text} ").contains(&format!("{phrase} ")))
            .map(|(s, _)| s.trace_id)
            .collect();
        assert!(!want.is_empty(), "{query:?}");
        let got: Vec<TraceId> = store.find_traces(&query).unwrap().traces.iter().map(|t| t.trace_id).collect();
        assert_eq!(got, want, "{query:?}");
    }
    // The word index survives a reopen (runs read back, the memtable rebuilt from segments).
    drop(store);
    let store = reopen(&dir.path().join("s"));
    let q = TraceQuery { limit: 100, text: Some("rare zebra".into()), ..TraceQuery::default() };
    assert_eq!(store.find_traces(&q).unwrap().traces.len(), 6);
}

#[test]
fn a_memtable_flushed_during_a_walk_hides_no_span() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    store.index.set_run_spans(50);
    let first: Vec<SpanWrite> =
        (0..30).map(|i| SpanWrite { span: varied_span(TraceId::random(), i), bodies: None }).collect();
    store.write_batch(&first).unwrap();
    // A query takes its sources: the memtable, 30 spans.
    let sources = store.index.sources();
    assert_eq!(sources.len(), 1);
    let team = vec![index::terms::term(index::terms::Field::Team, b"team-1")];
    let before = store.index.positions(&store.tree, &sources[0], &team).unwrap();
    // Meanwhile the memtable fills and is written out as a run.
    let more: Vec<SpanWrite> =
        (30..60).map(|i| SpanWrite { span: varied_span(TraceId::random(), i), bodies: None }).collect();
    store.write_batch(&more).unwrap();
    assert_eq!(store.index.run_count(), 1);
    // The old source now reads the run it became: nothing of it is hidden.
    let after = store.index.positions(&store.tree, &sources[0], &team).unwrap();
    assert!(before.iter().all(|p| after.contains(p)), "{before:?} ⊄ {after:?}");
    assert!(store.index.estimate(&sources[0], &team) > 0);
    let ranges = store.index.block_ranges(&store.tree, &sources[0], &[], (0, u64::MAX)).unwrap();
    assert!(!ranges.is_empty());
}

/// Files of the store's body folder, and all their bytes.
fn body_files(path: &Path) -> (usize, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(path.join("bodies")).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    (count, bytes)
}

#[test]
fn bodies_written_to_body_files_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    {
        let store = reopen(&path);
        write_with_bodies(&store, trace, 500);
        store.flush().unwrap();
    }
    let store = reopen(&path);
    assert_eq!(store.tree.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT_VERSION]);
    assert_eq!(body_files(&path).0, 1);
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.len(), 500);
    for (i, span) in spans.iter().enumerate().step_by(97) {
        let (_, bodies) = store.span(&trace, &span.span_id).unwrap().unwrap();
        let expected = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"question {i}"}}]}}"#);
        assert_eq!(bodies.request_body.as_deref(), Some(expected.as_str()));
        assert_eq!(
            bodies.response_body.unwrap(),
            format!(r#"{{"choices":[{{"message":{{"content":"answer {i}"}}}}]}}"#)
        );
    }
    // The search index, rebuilt from the segments at open, reads the bodies through the files.
    let q = TraceQuery { text: Some("question 421".into()), ..TraceQuery::default() };
    assert_eq!(store.find_traces(&q).unwrap().traces.len(), 1);
}

#[test]
fn body_bytes_a_crash_left_after_the_last_commit_are_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    {
        let store = reopen(&path);
        write_with_bodies(&store, trace, 50);
        store.flush().unwrap();
    }
    let file = std::fs::read_dir(path.join("bodies")).unwrap().next().unwrap().unwrap().path();
    let committed = std::fs::metadata(&file).unwrap().len();
    // A batch whose bodies reached the file but whose references never reached sled.
    let mut torn = std::fs::read(&file).unwrap();
    torn.extend_from_slice(&[0xAB; 3000]);
    std::fs::write(&file, torn).unwrap();
    let store = reopen(&path);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), committed);
    write_with_bodies(&store, trace, 50);
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.len(), 100);
    for span in &spans {
        let (_, bodies) = store.span(&trace, &span.span_id).unwrap().unwrap();
        assert!(bodies.request_body.unwrap().contains("question"));
    }
}

#[test]
fn a_damaged_body_record_reads_as_an_error_and_its_spans_can_still_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let trace = TraceId::random();
    let store = reopen(&path);
    write_with_bodies(&store, trace, 20);
    store.flush().unwrap();
    let file = std::fs::read_dir(path.join("bodies")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&file, bytes).unwrap();
    let spans = store.trace_spans(&trace).unwrap();
    assert_eq!(spans.len(), 20, "spans still list");
    let read = store.span(&trace, &spans[19].span_id);
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
    let positions = store.select(&crate::store::Selection::Trace(trace), store.delete_start(), 100).unwrap().0;
    assert_eq!(store.delete_positions(&positions).unwrap(), 20);
    assert!(store.trace_spans(&trace).unwrap().is_empty());
}

#[test]
fn deleting_a_span_erases_its_text_from_the_body_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = reopen(&path);
    let (kept, gone) = (TraceId::random(), TraceId::random());
    let write = |trace, marker: &str| SpanWrite {
        span: span(trace, 1),
        bodies: Some(SpanBodies {
            request_body: Some(format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{marker}"}}]}}"#)),
            response_body: Some(r#"{"choices":[]}"#.into()),
            truncated: false,
        }),
    };
    store.write_batch(&[write(kept, "Qv7Tk3ptZ3rfWq8"), write(gone, "Xp9Lg0nyW4bjHd2")]).unwrap();
    store.flush().unwrap();
    let contains = |needle: &[u8]| body_files(&path).1.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"Xp9Lg0nyW4bjHd2") && contains(b"Qv7Tk3ptZ3rfWq8"));
    let positions = store.select(&crate::store::Selection::Trace(gone), store.delete_start(), 100).unwrap().0;
    assert_eq!(store.delete_positions(&positions).unwrap(), 1);
    assert!(!contains(b"Xp9Lg0nyW4bjHd2"), "the deleted text is gone from disk");
    let kept_span = store.trace_spans(&kept).unwrap().remove(0);
    let (_, bodies) = store.span(&kept, &kept_span.span_id).unwrap().unwrap();
    assert!(bodies.request_body.unwrap().contains("Qv7Tk3ptZ3rfWq8"));
}

#[test]
fn retention_removes_body_files_no_kept_span_refers_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let mut store = reopen(&path);
    store.bodies.set_file_bytes(2048);
    let (old, new) = (TraceId::random(), TraceId::random());
    for _ in 0..10 {
        write_with_bodies(&store, old, 100);
    }
    let before = store.body_file_bytes();
    let files_before = body_files(&path).0;
    assert!(files_before > 3, "{files_before} files");
    let writes: Vec<SpanWrite> = (0..100)
        .map(|i| SpanWrite {
            span: span(new, 1_000_000 + i),
            bodies: Some(SpanBodies { request_body: Some(format!("new {i}")), response_body: None, truncated: false }),
        })
        .collect();
    store.write_batch(&writes).unwrap();
    assert_eq!(store.delete_older_than(1_000_000).unwrap(), 1000);
    assert!(store.body_file_bytes() * 4 < before, "{} of {before} bytes left", store.body_file_bytes());
    assert!(body_files(&path).0 < files_before);
    let spans = store.trace_spans(&new).unwrap();
    assert_eq!(spans.len(), 100);
    let (_, bodies) = store.span(&new, &spans[99].span_id).unwrap().unwrap();
    assert_eq!(bodies.request_body.as_deref(), Some("new 99"));
}
