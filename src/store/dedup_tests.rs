//! Tests of requests stored as pieces of earlier ones (`dedup`): exact reads against the
//! originals, what a loop costs on disk, deletes that keep later calls whole, retention that
//! still frees everything, and a reopened store finding words of borrowed text.

use crate::model::ids::{SpanId, TraceId};
use crate::model::span::{Span, SpanBodies, SpanKind, SpanWrite};
use crate::store::dedup::{self, WINDOW_NANOS};
use crate::store::layout::*;
use crate::store::tests::reopen;
use crate::store::{Selection, Store, TraceQuery};

const SECOND: u64 = 1_000_000_000;

/// Step `n` of an agent loop: a system prompt, `n` rounds of tool calls, and the tools after
/// the messages (so each step shares both a head and a tail with the one before).
fn step(n: usize) -> String {
    let mut messages = vec![format!(
        "{{\"role\":\"system\",\"content\":\"{}\"}}",
        "You are a careful support agent with long standing instructions. ".repeat(24)
    )];
    for i in 0..n {
        messages.push(format!("{{\"role\":\"user\",\"content\":\"step {i}: where is order A-{i}? quantum{i}\"}}"));
        messages.push(format!(
            "{{\"role\":\"tool\",\"content\":\"{{\\\"order\\\":\\\"A-{i}\\\",\\\"status\\\":\\\"in transit\\\",\\\"events\\\":[{}]}}\"}}",
            (0..20).map(|e| format!("\\\"event {e} of {i}\\\"")).collect::<Vec<_>>().join(",")
        ));
    }
    format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{}],\"tools\":[{}]}}",
        messages.join(","),
        (0..6).map(|t| format!("{{\"type\":\"function\",\"function\":{{\"name\":\"tool_{t}\",\"description\":\"Looks up part {t} of an order by its id.\"}}}}")).collect::<Vec<_>>().join(",")
    )
}

fn call(trace: TraceId, session: Option<&str>, start: u64, request: String) -> SpanWrite {
    let mut span = Span::new(trace, SpanId::random(), SpanKind::Llm, "chat m".into());
    span.parent_span_id = Some(SpanId::random());
    span.session = session.map(str::to_string);
    span.start_time_unix_nano = start;
    let response = format!("{{\"answer\":\"{}\"}}", span.span_id);
    SpanWrite {
        span,
        bodies: Some(SpanBodies { request_body: Some(request), response_body: Some(response), truncated: false }),
    }
}

fn stored_body_bytes(store: &Store) -> usize {
    store.body_bytes()
}

fn read_request(store: &Store, write: &SpanWrite) -> Option<String> {
    let (_, bodies) = store.span(&write.span.trace_id, &write.span.span_id).unwrap()?;
    bodies.request_body
}

/// Every request of `writes` reads back as it was written.
fn assert_reads_back(store: &Store, writes: &[SpanWrite]) {
    for write in writes {
        assert_eq!(read_request(store, write).as_deref(), write.bodies.as_ref().unwrap().request_body.as_deref());
    }
}

/// Twenty steps of one trace, one batch each: every read is the original, byte for byte.
fn agent_loop(store: &Store, trace: TraceId, session: Option<&str>, start: u64) -> Vec<SpanWrite> {
    let writes: Vec<SpanWrite> = (1..=20).map(|n| call(trace, session, start + n as u64 * SECOND, step(n))).collect();
    for write in &writes {
        store.write_batch(std::slice::from_ref(write)).unwrap();
    }
    writes
}

#[test]
fn an_agent_loop_reads_back_exactly_and_stores_about_its_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let writes = agent_loop(&store, TraceId::random(), None, 1_000 * SECOND);
    assert_reads_back(&store, &writes);
    let whole: usize = writes.iter().map(|w| w.bodies.as_ref().unwrap().request_body.as_ref().unwrap().len()).sum();
    let last = writes.last().unwrap().bodies.as_ref().unwrap().request_body.as_ref().unwrap().len();
    let stored = stored_body_bytes(&store);
    // The last step holds every byte ever new once; the responses add ~30 bytes a call.
    assert!(stored < last, "stored {stored} bytes for {whole} bytes of requests (last one {last})");
    // Found by a word in text the late steps only borrow.
    let q = TraceQuery { limit: 50, text: Some("quantum0".into()), ..TraceQuery::default() };
    assert_eq!(store.find_traces(&q).unwrap().traces.len(), 1);
}

#[test]
fn calls_of_traces_tracegate_made_up_are_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let mut first = call(TraceId::random(), None, SECOND, step(3));
    first.span.parent_span_id = None;
    store.write_batch(std::slice::from_ref(&first)).unwrap();
    let segment = store.segments().get(BODY_SEGMENT, 1).unwrap().unwrap();
    let (flags, _, _) = raw_bodies_at(&segment, 0).unwrap().unwrap();
    assert_eq!(flags & (dedup::BASE | dedup::PIECES), 0);
}

#[test]
fn deleting_early_steps_of_a_session_keeps_the_later_ones_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    // Two traces of one session: the second trace's steps borrow from the first's.
    let first = agent_loop(&store, TraceId::random(), Some("chat-1"), 1_000 * SECOND);
    let second = agent_loop(&store, TraceId::random(), Some("chat-1"), 2_000 * SECOND);
    let deleted = store.delete_positions(&positions_of(&store, first[0].span.trace_id)).unwrap();
    assert_eq!(deleted, 20);
    store.flush().unwrap();
    assert_reads_back(&store, &second);
    assert!(read_request(&store, &first[3]).is_none());
    // A step in the middle of the second trace, then the rest of it.
    let middle = positions_of(&store, second[0].span.trace_id);
    store.delete_positions(&middle[5..6]).unwrap();
    let mut left = 0;
    for write in &second {
        if let Some(text) = read_request(&store, write) {
            assert_eq!(Some(text.as_str()), write.bodies.as_ref().unwrap().request_body.as_deref());
            left += 1;
        }
    }
    assert_eq!(left, 19);
    // After a delete the writer starts from whole text again, and reads stay exact.
    let third = agent_loop(&store, TraceId::random(), Some("chat-1"), 3_000 * SECOND);
    assert_reads_back(&store, &third);
}

fn positions_of(store: &Store, trace: TraceId) -> Vec<u64> {
    let (positions, _) = store.select(&Selection::Trace(trace), store.delete_start(), 1_000).unwrap();
    positions
}

#[test]
fn retention_keeps_borrowed_text_for_the_window_then_frees_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (old, recent);
    {
        let store = Store::open(&path).unwrap();
        old = agent_loop(&store, TraceId::random(), Some("s"), 1_000 * SECOND);
        recent = agent_loop(&store, TraceId::random(), Some("s"), 1_000 * SECOND + WINDOW_NANOS / 2);
        // The old loop's spans go; its bodies stay while the recent loop borrows them.
        assert_eq!(store.delete_older_than(1_100 * SECOND).unwrap(), 20);
        assert!(store.trace_spans(&old[0].span.trace_id).unwrap().is_empty());
        assert_reads_back(&store, &recent);
        store.flush().unwrap();
    }
    // Reopened: the orphaned bodies are found again, and the words of borrowed text too.
    let store = reopen(&path);
    let q = TraceQuery { limit: 50, text: Some("quantum0".into()), ..TraceQuery::default() };
    assert_eq!(store.find_traces(&q).unwrap().traces.len(), 1);
    assert_reads_back(&store, &recent);
    // The pass that finds the old loop's orphans (after the reopen) also removes the recent
    // loop's spans; both loops' bodies wait a window from it.
    let cutoff = 1_000 * SECOND + WINDOW_NANOS;
    assert_eq!(store.delete_older_than(cutoff).unwrap(), 20);
    assert!(store.trace_spans(&recent[0].span.trace_id).unwrap().is_empty());
    assert_eq!(store.delete_older_than(cutoff + WINDOW_NANOS - 1).unwrap(), 0);
    assert!(stored_body_bytes(&store) > 0, "the orphans wait a window from the pass that saw them");
    assert_eq!(store.delete_older_than(cutoff + WINDOW_NANOS).unwrap(), 0);
    assert_eq!(stored_body_bytes(&store), 0, "every body segment freed");
    assert_eq!(store.span_count(), 0);
}
