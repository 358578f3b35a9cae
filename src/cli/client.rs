//! The CLI's client of the admin API: where it is (`--admin`, else the config's
//! `server.admin_listen`), the admin token, one GET that returns JSON, and errors a user can
//! act on (no server at that address: say to start `serve`).

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
    let (base, token) = resolve_admin(target)?;
    let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|e| format!("bad admin URL {url:?}: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(uri).body(Empty::new()).map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "admin token is not a valid header")?;
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let response = client.request(request).await.map_err(|e| unreachable_admin(&base, &e))?;
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
