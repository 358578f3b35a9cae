//! What an exchange with a plain-HTTP upstream can fail with, and the error type of the bodies
//! it relays.

use std::fmt;
use std::io;

/// Errors a relayed body can end with (a request body fed to [`super::H1Upstream::send`], an
/// [`super::H1Body`]).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A failed upstream exchange.
#[derive(Debug)]
pub enum H1Error {
    /// Resolving the host or connecting failed.
    Connect(io::Error),
    /// Connecting took longer than the provider's connect timeout.
    ConnectTimeout,
    /// The request body ended with an error (the client broke off, or the body was too large).
    RequestBody(BodyError),
    /// The connection failed while the request was sent or the answer read.
    Io(io::Error),
    /// The upstream's answer was not valid HTTP/1.1.
    Protocol(&'static str),
    /// The request body was longer or shorter than its `content-length`, or that was invalid.
    BodyLength(&'static str),
}

impl fmt::Display for H1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            H1Error::Connect(e) => write!(f, "connect failed: {e}"),
            H1Error::ConnectTimeout => f.write_str("connect timeout"),
            H1Error::RequestBody(e) => write!(f, "request body failed: {e}"),
            H1Error::Io(e) => write!(f, "connection failed: {e}"),
            H1Error::Protocol(what) => write!(f, "invalid response: {what}"),
            H1Error::BodyLength(what) => write!(f, "request body {what} than its content-length"),
        }
    }
}

impl std::error::Error for H1Error {}

/// A body error for an answer that is not valid HTTP/1.1.
pub(super) fn protocol(what: &'static str) -> BodyError {
    Box::new(H1Error::Protocol(what))
}
