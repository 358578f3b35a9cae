//! The clients that talk to the configured upstreams, apart from the proxy that uses them.
//!
//! `https://` upstreams go through hyper's pooled client (`client`: rustls, ALPN h2/h1, one
//! client per distinct connect timeout and private CA); plain `http://` upstreams (local model
//! servers, `mock-llm`) through the leaner HTTP/1.1 client in [`h1`], whose request's own task
//! does the I/O. [`UpstreamBody`] is a response body from either. This floor imports only
//! `config` (where an upstream is): it never names the proxy, the recorder or the store, so
//! both clients can be read and tested alone.

pub(crate) mod client;
pub mod h1;

use http_body_util::Either;
use hyper::body::Incoming;

pub use client::{build_client, root_store, tls_config};
pub use h1::{BodyError, H1Body};

/// A response body from an upstream: hyper's pooled client's (`Left`), or the plain-HTTP
/// client's (`Right`).
pub type UpstreamBody = Either<Incoming, H1Body>;
