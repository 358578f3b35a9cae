//! hyper's pooled client, for `https://` upstreams (and the exporters' collectors): connections
//! pooled per host, rustls with the Mozilla (webpki) roots plus the system's native roots and a
//! provider's own CA file, ALPN choosing HTTP/2 or HTTP/1.1. One client serves every provider
//! with the same connect timeout and private CA.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// TLS settings for an upstream: the shared roots plus the provider's own CA certificates.
pub fn tls_config(roots: &rustls::RootCertStore, extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = roots.clone();
    roots.add_parsable_certificates(extra.iter().cloned());
    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()
}

/// Builds a pooled HTTP(S) client with the given connect timeout (for upstreams, and for the
/// exporters with another body type).
pub fn build_client<B>(connect_timeout: Duration, tls: rustls::ClientConfig) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);

    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// Mozilla's roots, plus whatever the system trusts (for corporate CAs); a system without a
/// certificate store still gets the Mozilla set.
pub fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(native_roots = added, total = roots.len(), "TLS roots loaded");
    roots
}
