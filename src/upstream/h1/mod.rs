//! A lean HTTP/1.1 client for plain `http://` upstreams (local model servers, `mock-llm`).
//!
//! hyper's pooled client runs every upstream connection as a task of its own, and each request,
//! response head and body chunk crosses a channel between that task and the request's task. Here
//! the request's own task does the I/O: it takes a keep-alive connection from the upstream's
//! pool, writes the request, reads the response head, and the returned [`H1Body`] reads the body
//! straight from the socket as the client's side asks for it. The connection goes back to the
//! pool once the body has been read to its end and the connection can carry another request;
//! dropped half-way, it is closed, which is what cancels the upstream request.
//!
//! HTTPS (and so HTTP/2) upstreams keep using hyper's client (`upstream::client`). Files:
//! `pool` (idle connections, connecting), `codec` (heads and framing on the wire), `body`
//! (the response body), `error`.

pub(crate) mod body;
pub(crate) mod codec;
pub(crate) mod error;
pub(crate) mod pool;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWriteExt;

use crate::config::Upstream;
use crate::upstream::h1::codec::{
    encode_head, next_frame, read_head, response_framing, stream_body, wants_close, BodyState, RequestFraming,
    COALESCE_BYTES, READ_RESERVE,
};
use crate::upstream::h1::pool::Pool;

pub use body::H1Body;
pub use error::{BodyError, H1Error};

/// One plain-HTTP upstream: where it is, and its pool of idle keep-alive connections.
#[derive(Clone)]
pub struct H1Upstream {
    pool: Arc<Pool>,
}

impl H1Upstream {
    /// The client for an `http://` upstream.
    pub fn new(upstream: &Upstream, connect_timeout: Duration) -> Self {
        let authority = &upstream.authority;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let shown = if port == 80 { authority.host().to_owned() } else { format!("{}:{port}", authority.host()) };
        let host_header = HeaderValue::from_str(&shown).expect("a parsed authority is a valid header value");
        H1Upstream { pool: Arc::new(Pool::new(host, port, host_header, connect_timeout)) }
    }

    /// Sends `req` (its URI's path and query; the host is this upstream's) and returns the
    /// response once its head has arrived; the body streams from the connection.
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<H1Body>, H1Error>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        let (parts, mut body) = req.into_parts();
        let mut head = BytesMut::with_capacity(1024);
        let mut framing =
            encode_head(&mut head, &parts.method, &parts.uri, &parts.headers, &self.pool.host_header, &body)?;

        // The first body frame (the proxy has read it ahead) rides in the same write as the head.
        let mut body_done = framing == RequestFraming::Empty || body.is_end_stream();
        let mut held = None;
        if !body_done {
            match next_frame(&mut body).await? {
                Some(frame) => match frame.into_data() {
                    Ok(data) if data.len() <= COALESCE_BYTES => framing.put(&mut head, &data)?,
                    Ok(data) => held = Some(data),
                    Err(_trailers) => {}
                },
                None => {
                    framing.finish(&mut head)?;
                    body_done = true;
                }
            }
            if !body_done && held.is_none() && body.is_end_stream() {
                framing.finish(&mut head)?;
                body_done = true;
            }
        }
        let first_write = head.freeze();

        let (mut stream, reused) = match self.pool.take_idle() {
            Some(stream) => (stream, true),
            None => (self.pool.connect().await?, false),
        };
        if let Err(error) = stream.write_all(&first_write).await {
            // A pooled connection the upstream closed just now: once more on a new one. Safe:
            // the upstream cannot have read a whole request, and the rest of the body has not
            // been taken from the client yet.
            if !reused {
                return Err(H1Error::Io(error));
            }
            stream = self.pool.connect().await?;
            stream.write_all(&first_write).await.map_err(H1Error::Io)?;
        }

        let mut buf = BytesMut::with_capacity(READ_RESERVE);
        let mut request_sent = true;
        let head = if body_done {
            read_head(&mut stream, &mut buf).await?
        } else {
            // The answer is read while the rest of the body is sent: an upstream that refuses
            // early (401, 413) is heard at once, not after a slow upload (RFC 9112 §9.5).
            let (mut reader, mut writer) = stream.split();
            let upload = stream_body(&mut writer, held, &mut body, &mut framing);
            let answer = read_head(&mut reader, &mut buf);
            tokio::pin!(upload, answer);
            tokio::select! {
                biased;
                sent = &mut upload => {
                    // A write that fails means the upstream stopped reading: it may have
                    // answered already (413, 400), so its answer is read before giving up.
                    request_sent = sent?;
                    answer.await?
                }
                head = &mut answer => {
                    // Answered before the whole body went out: the rest is not sent, and the
                    // connection cannot carry another request.
                    request_sent = false;
                    head?
                }
            }
        };
        let no_body = parts.method == Method::HEAD
            || head.status.is_informational()
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        let mut headers = head.headers;
        let (state, framed) = if no_body { (BodyState::Length(0), true) } else { response_framing(&mut headers)? };
        let reusable = request_sent
            && framed
            && head.version == Version::HTTP_11
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && !wants_close(&headers);
        let mut response = Response::new(H1Body::new(stream, buf, state, reusable, self.pool.clone()));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers;
        if let Some(reason) = head.reason {
            response.extensions_mut().insert(reason);
        }
        response.body_mut().release_if_done();
        Ok(response)
    }
}

#[cfg(test)]
mod tests;
