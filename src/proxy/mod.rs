//! The request path: every proxied call passes the phases of `phases` in order — admit,
//! route, trace context, (the call opens) read ahead, team, upstream request, send, respond —
//! each a method over the per-request `call::CallContext` that can be read and tested alone.
//!
//! Nothing on this path counts tokens, computes a price from a response or touches the store:
//! it forwards bytes and copies them into bounded captures (`body_tee`); a finished call goes
//! to the recorder through `record::queue`, the only part of `record` this floor names. The one
//! body it reads is a request's first bytes, for a team with limits (the budget estimate) or
//! an opt-in usage injection (see ARCHITECTURE.md, "invariants"). It imports `upstream`,
//! `policy`, `config`, `formats`, `model` and `record::queue`; never `store`, `admin` or
//! `export`, and nothing below names it.

pub(crate) mod body_tee;
pub(crate) mod call;
pub(crate) mod errors;
pub(crate) mod headers;
pub(crate) mod phases;
pub(crate) mod routing;
pub mod usage_injection;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{Config, Provider};
use crate::model::clock::unix_nanos;
use crate::model::pricing::Price;
use crate::policy::budget::Budgets;
use crate::policy::teams::TeamDirectory;
use crate::proxy::body_tee::{RequestTee, ResponseTee};
use crate::proxy::routing::Router;
use crate::record::queue::RecorderHandle;
use crate::upstream::h1::H1Upstream;
use crate::upstream::{build_client, root_store, tls_config};

/// hyper's pooled client, carrying request bodies through the tee.
type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    RequestTee,
>;

/// What the proxy answers with: a relayed upstream body or a small body of its own.
pub type ProxyBody = Either<ResponseTee, Full<Bytes>>;

/// How long a client may take to start sending its request body.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy service shared by every connection.
pub struct Proxy {
    router: Router,
    /// One pooled hyper client per distinct (connect timeout, private CA) of the HTTPS providers.
    clients: Vec<UpstreamClient>,
    /// How each provider's upstream is reached.
    client_of: Vec<(Arc<Provider>, UpstreamRoute)>,
    recorder: RecorderHandle,
    max_capture_bytes: usize,
    max_request_bytes: u64,
    max_header_bytes: usize,
    teams: TeamDirectory,
    team_names: Vec<String>,
    require_team_key: bool,
    budgets: Arc<Budgets>,
    pricing: BTreeMap<String, Price>,
}

impl Proxy {
    pub fn new(config: &Config, recorder: RecorderHandle, budgets: Arc<Budgets>) -> Self {
        let roots = root_store();
        let mut keys: Vec<(Duration, &[rustls::pki_types::CertificateDer<'static>])> = Vec::new();
        let mut clients = Vec::new();
        let mut client_of = Vec::new();
        for provider in &config.providers {
            if provider.upstream.scheme == http::uri::Scheme::HTTP {
                let route = UpstreamRoute::Direct(H1Upstream::new(&provider.upstream, provider.connect_timeout));
                client_of.push((provider.clone(), route));
                continue;
            }
            let key = (provider.connect_timeout, provider.ca_certs.as_slice());
            let index = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    clients.push(build_client(provider.connect_timeout, tls_config(&roots, &provider.ca_certs)));
                    clients.len() - 1
                }
            };
            client_of.push((provider.clone(), UpstreamRoute::Pooled(index)));
        }
        Proxy {
            router: Router::new(config),
            clients,
            client_of,
            recorder,
            max_capture_bytes: config.storage.max_capture_bytes,
            max_request_bytes: config.server.max_request_bytes,
            max_header_bytes: config.server.max_header_bytes,
            teams: TeamDirectory::new(&config.teams),
            team_names: config.teams.iter().map(|t| t.name.clone()).collect(),
            require_team_key: config.server.require_team_key,
            budgets,
            pricing: config.pricing.clone(),
        }
    }

    /// Handles one request; never fails (errors become provider-shaped responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let start_time_unix_nano = unix_nanos();
        Ok(self.run(req, started, start_time_unix_nano).await.unwrap_or_else(|early| early))
    }

    fn route_for(&self, provider: &Arc<Provider>) -> &UpstreamRoute {
        let (_, route) = self
            .client_of
            .iter()
            .find(|(p, _)| Arc::ptr_eq(p, provider))
            .expect("a client exists for every configured provider");
        route
    }
}

/// How a provider's upstream is reached.
enum UpstreamRoute {
    /// hyper's pooled client (HTTPS: ALPN picks HTTP/2 or HTTP/1.1); an index into `clients`.
    Pooled(usize),
    /// The lean HTTP/1.1 client of a plain `http://` upstream.
    Direct(H1Upstream),
}
