//! The CLI's client of the admin API: where it is (`--admin`, else the config's
//! `server.admin_listen`), the admin token, a GET or DELETE that returns JSON, a GET whose
//! streamed answer is copied out as it arrives (`export`), and errors a user can act on (no
//! server at that address: say to start `serve`).

use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Config;

/// Where the client commands find the admin API.
#[derive(Debug, PartialEq, Default, Args)]
pub struct AdminTarget {
    /// The admin API's base URL, e.g. http://127.0.0.1:8788.
    #[arg(long = "admin", value_name = "URL")]
    pub url: Option<String>,
    /// The config file whose server.admin_listen and [admin] token to use.
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Fetches a JSON document from the admin API.
pub(super) async fn get_json(target: &AdminTarget, path_and_query: &str) -> Result<Value, String> {
    json_of(send(target, http::Method::GET, path_and_query).await?).await
}

/// Sends a DELETE to the admin API; its JSON answer.
pub(super) async fn delete_json(target: &AdminTarget, path_and_query: &str) -> Result<Value, String> {
    json_of(send(target, http::Method::DELETE, path_and_query).await?).await
}

/// Copies a streamed answer (JSON Lines) to `out` as it arrives; returns the bytes copied.
/// An answer cut short (the server failed midway, or went away) is an error.
pub(super) async fn stream(
    target: &AdminTarget,
    path_and_query: &str,
    out: &mut impl std::io::Write,
) -> Result<u64, String> {
    let response = send(target, http::Method::GET, path_and_query).await?;
    if !response.status().is_success() {
        return json_of(response).await.map(|_| 0);
    }
    let mut body = response.into_body();
    let mut copied = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the admin API's answer was cut short after {copied} bytes: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).and_then(|()| out.flush()).map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => BROKEN_PIPE.to_string(),
                _ => format!("cannot write the output: {e}"),
            })?;
            copied += data.len() as u64;
        }
    }
    Ok(copied)
}

/// The error [`stream`] returns when its reader closed the pipe (`| head`): not a failure.
pub const BROKEN_PIPE: &str = "broken pipe";

async fn send(
    target: &AdminTarget,
    method: http::Method,
    path_and_query: &str,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let (base, token) = resolve_admin(target)?;
    let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|e| format!("bad admin URL {url:?}: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(uri).body(Empty::new()).map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "admin token is not a valid header")?;
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    client.request(request).await.map_err(|e| unreachable_admin(&base, &e))
}

/// The JSON of an answer; a failure status is an error carrying the API's message.
async fn json_of(response: http::Response<hyper::body::Incoming>) -> Result<Value, String> {
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value: Value =
        serde_json::from_slice(&body).map_err(|_| format!("admin API answered {status} with a non-JSON body"))?;
    if !status.is_success() {
        let message = value["error"]["message"].as_str().unwrap_or("request failed");
        return Err(format!("admin API: {status}: {}", super::print::printable(message)));
    }
    Ok(value)
}

/// Why the admin API could not be asked, in words a user can act on: a refused connection
/// means no `serve` is listening at that address.
fn unreachable_admin(base: &str, error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_connect() {
        format!(
            "no tracegate answers at {base} ({cause}): start it with `tracegate serve` (or `cargo run --release -- serve`), or point --admin at where it listens"
        )
    } else {
        format!("the admin API at {base} failed: {cause}")
    }
}

fn resolve_admin(target: &AdminTarget) -> Result<(String, Option<String>), String> {
    let config = match (&target.url, &target.config) {
        (Some(_), None) => None,
        _ => Some(Config::resolve(target.config.as_deref()).map_err(|e| format!("config: {e}"))?),
    };
    let token = config
        .as_ref()
        .and_then(|c| c.admin.token.clone())
        .or_else(|| std::env::var("TRACEGATE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()));
    let url = match (&target.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => {
            let mut addr = c.server.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
        (None, None) => unreachable!("config is loaded when no URL is given"),
    };
    Ok((url, token))
}
