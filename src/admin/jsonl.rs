//! `GET /api/export`: every span matching the filters of `/api/traces` (SPEC "Finding calls"),
//! newest first, as JSON Lines — one span a line, with `request_body` and `response_body` as
//! `GET /api/traces/{id}/spans/{span}` shows them.
//!
//! An export may hold millions of spans, so it is never gathered: a blocking-pool thread walks
//! the store (`Store::for_each_match_with_bodies`) and sends ~64 KB chunks of lines into a
//! bounded channel that the response body drains. A slow client makes the walk wait
//! (`blocking_send`); a client that goes away drops the body, and the walk stops at its next
//! chunk. A store error midway cuts the body short (the status line is already sent), so the
//! client sees a failed transfer, never a short export that looks whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use tokio::sync::mpsc;

use super::{error, filters, parse_query, served, span_with_bodies, ServedBody};
use crate::store::Store;

/// Bytes of lines gathered before a chunk is sent.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks waiting for the client: with [`CHUNK_BYTES`], what an export holds in memory.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The streamed body of an export.
pub struct ExportBody {
    chunks: mpsc::Receiver<Result<Bytes, String>>,
}

/// Why an export stopped before its end.
#[derive(Debug)]
pub struct ExportError(String);

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "export cut short: {}", self.0)
    }
}

impl std::error::Error for ExportError {}

impl http_body::Body for ExportBody {
    type Data = Bytes;
    type Error = ExportError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ExportError>>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(ExportError)))
    }
}

/// `GET /api/export?<filters>` over the shared store (`[cluster] postgres`): pages of spans
/// read in turn, each sent as its lines are ready, so memory stays bounded.
pub(super) fn export_shared(pool: deadpool_postgres::Pool, query: &str) -> Response<ServedBody> {
    let q = match filters::parse(parse_query(query), "/api/export", false, &[]) {
        Ok((q, _)) => q,
        Err(message) => return served(error(StatusCode::BAD_REQUEST, &message)),
    };
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut mark = None;
        loop {
            let page = crate::cluster::postgres::read::export_page(&pool, &q, mark.as_ref(), 500).await;
            let (spans, next) = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "export failed midway; the response is cut short");
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            let mut lines = Vec::with_capacity(CHUNK_BYTES + 4096);
            for (span, bodies) in spans {
                serde_json::to_writer(&mut lines, &span_with_bodies(&span, bodies)).expect("JSON values serialize");
                lines.push(b'\n');
                if lines.len() >= CHUNK_BYTES {
                    let chunk = Bytes::from(std::mem::replace(&mut lines, Vec::with_capacity(CHUNK_BYTES + 4096)));
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            if !lines.is_empty() && tx.send(Ok(Bytes::from(lines))).await.is_err() {
                return;
            }
            match next {
                Some(n) => mark = Some(n),
                None => return,
            }
        }
    });
    let mut response = Response::new(http_body_util::Either::Right(ExportBody { chunks: rx }));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// `GET /api/export?<filters>`.
pub(super) fn export(store: std::sync::Arc<Store>, query: &str) -> Response<ServedBody> {
    let q = match filters::parse(parse_query(query), "/api/export", false, &[]) {
        Ok((q, _)) => q,
        Err(message) => return served(error(StatusCode::BAD_REQUEST, &message)),
    };
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::with_capacity(CHUNK_BYTES + 4096);
        let mut client_gone = false;
        let walked = store.for_each_match_with_bodies(&q, |span, bodies| {
            let line = span_with_bodies(&span, bodies);
            serde_json::to_writer(&mut lines, &line).expect("JSON values serialize");
            lines.push(b'\n');
            if lines.len() >= CHUNK_BYTES {
                let chunk = Bytes::from(std::mem::replace(&mut lines, Vec::with_capacity(CHUNK_BYTES + 4096)));
                client_gone = tx.blocking_send(Ok(chunk)).is_err();
            }
            !client_gone
        });
        match walked {
            Ok(()) if !client_gone && !lines.is_empty() => {
                let _ = tx.blocking_send(Ok(Bytes::from(lines)));
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "export failed midway; the response is cut short");
                let _ = tx.blocking_send(Err(e.to_string()));
            }
        }
    });
    let mut response = Response::new(http_body_util::Either::Right(ExportBody { chunks: rx }));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}
