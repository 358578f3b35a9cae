//! Listeners and lifecycle: opens the store, starts the recorder, binds the proxy and admin
//! listeners, serves connections (HTTP/1.1 and HTTP/2, optionally TLS on the proxy listener),
//! and shuts down gracefully: stop accepting, let in-flight calls finish within a deadline,
//! then write and flush every queued span.
//!
//! [`Server::start`] is what `tracegate serve` runs and what the integration tests start
//! in-process on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::{Config, TlsFiles};
use crate::policy::budget::Budgets;
use crate::proxy::Proxy;
use crate::record::metrics::Metrics;
use crate::record::{self as recorder, RecorderHandle, RecorderSettings};
use crate::store::Store;

/// How long a graceful shutdown waits for in-flight calls (streams included).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A running tracegate.
pub struct Server {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// `None` while running; the grace period once shutdown begins.
    shutdown: watch::Sender<Option<Duration>>,
    listeners: Vec<JoinHandle<()>>,
    /// Exporter tasks; stopped at shutdown (their cursors only ever mark delivered spans).
    exporters: Vec<JoinHandle<()>>,
    recorder: RecorderHandle,
    recorder_thread: Option<std::thread::JoinHandle<()>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl Server {
    /// Opens the store and binds both listeners; serving starts immediately.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let store_path = config.storage.path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
            .await
            .map_err(|e| StartError(e.to_string()))?
            .map_err(|e| StartError(format!("cannot open the span store at {}: {e}", config.storage.path.display())))?;
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::default());
        let (recorder, recorder_thread) = recorder::start(
            RecorderSettings::from_config(&config),
            store.clone(),
            metrics.clone(),
            config.storage.queue_capacity,
        );

        let tls = match &config.server.tls {
            Some(files) => Some(tls_acceptor(files)?),
            None => None,
        };
        let proxy_listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| StartError(format!("cannot listen on {} (server.listen): {e}", config.server.listen)))?;
        let admin_listener = TcpListener::bind(config.server.admin_listen).await.map_err(|e| {
            StartError(format!("cannot listen on {} (server.admin_listen): {e}", config.server.admin_listen))
        })?;
        let proxy_addr = proxy_listener.local_addr().map_err(|e| StartError(e.to_string()))?;
        let admin_addr = admin_listener.local_addr().map_err(|e| StartError(e.to_string()))?;

        let mut exporters = crate::export::start(&config, store.clone(), recorder.clone(), &metrics);
        let postgres = match config.cluster.as_ref().and_then(|c| c.postgres.as_deref()) {
            Some(url) => {
                Some(crate::cluster::postgres::pool(url).map_err(|e| StartError(format!("cluster.postgres: {e}")))?)
            }
            None => None,
        };
        if let Some(pool) = &postgres {
            // The sync task owns its pool handle; admin reads through the same pool.
            exporters.push(crate::cluster::postgres::start(
                &config,
                pool.clone(),
                store.clone(),
                recorder.clone(),
                &metrics,
            ));
        }
        let (shutdown, shutdown_rx) = watch::channel(None);
        let budgets = seed_budgets(&config, &store)?;
        let mut proxy = Proxy::new(&config, recorder.clone(), budgets.clone());
        if let Some(cluster) = &config.cluster {
            if let Some(url) = &cluster.redis {
                let counters = metrics.cluster_counters();
                let limits = crate::policy::shared_limits::SharedLimits::new(
                    url,
                    &config.teams,
                    cluster.redis_unavailable,
                    &cluster.instance,
                    counters.redis_errors.clone(),
                )
                .map_err(|e| StartError(format!("cluster.redis: {e}")))?;
                match &postgres {
                    Some(pool) => exporters.push(crate::cluster::postgres::seed_limits(pool.clone(), limits.clone())),
                    // Without a shared ledger, Redis starts from what this instance's ledger says.
                    None => limits.set_seeds(budgets.spent_by_team()),
                }
                proxy = proxy.with_shared_limits(limits);
            }
        }
        let proxy = Arc::new(proxy);
        let mut admin = Admin::new(store.clone(), metrics.clone(), recorder.clone(), config.admin.token.as_deref());
        if let Some(pool) = postgres {
            admin = admin.reading_shared(pool);
        }
        let admin = Arc::new(admin);

        let header_timeout = config.server.header_read_timeout;
        let proxy_task =
            tokio::spawn(accept_loop(proxy_listener, tls, header_timeout, shutdown_rx.clone(), move || {
                let proxy = proxy.clone();
                // Boxed per request: hyper keeps a connection's in-flight future in a box sized
                // for it from the connection's first byte to its last, and the proxy's future is
                // ~6 KB — held by every idle keep-alive connection and every streaming answer
                // (whose future is done once the head is sent) otherwise. Boxed, that box holds a
                // pointer, and the future's bytes live only while a request is being answered.
                service_fn(move |req| Box::pin(proxy.clone().handle(req)))
            }));
        let admin_task = tokio::spawn(accept_loop(admin_listener, None, header_timeout, shutdown_rx, move || {
            let admin = admin.clone();
            service_fn(move |req| admin.clone().handle(req))
        }));

        let source = config.source.as_ref().map_or_else(|| "built-in defaults".into(), |p| p.display().to_string());
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            config = %source,
            store = %config.storage.path.display(),
            "tracegate listening"
        );
        Ok(Server {
            proxy_addr,
            admin_addr,
            shutdown,
            listeners: vec![proxy_task, admin_task],
            exporters,
            recorder,
            recorder_thread: Some(recorder_thread),
            store,
            metrics,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until every call finished so far is written and flushed.
    pub async fn flush(&self) {
        let recorder = self.recorder.clone();
        let _ = tokio::task::spawn_blocking(move || recorder.flush()).await;
    }

    /// Stops accepting, drains in-flight connections (up to [`SHUTDOWN_GRACE`]), then writes and
    /// flushes every queued span.
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_GRACE).await
    }

    /// [`Server::shutdown`] with another grace period: connections still open after it are
    /// closed, and their calls recorded as cancelled.
    pub async fn shutdown_within(mut self, grace: Duration) {
        let _ = self.shutdown.send(Some(grace));
        for task in self.listeners.drain(..) {
            let _ = task.await;
        }
        for task in self.exporters.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.flush().await;
        drop(self.recorder);
        if let Some(thread) = self.recorder_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("tracegate stopped");
    }
}

/// Team budgets, seeded with what each limited team already spent today and this month.
fn seed_budgets(config: &Config, store: &Store) -> Result<Arc<Budgets>, StartError> {
    let now = crate::model::clock::unix_nanos() / 1_000_000_000;
    let today = (now / 86_400) as i64;
    let (year, month, _) = crate::model::clock::civil_from_days(today);
    let month_start = crate::model::clock::days_from_civil(year, month, 1);
    let limited = config.teams.iter().any(|t| t.daily_budget_usd.is_some() || t.monthly_budget_usd.is_some());
    let cells = if limited {
        store
            .ledger(month_start as u32, today as u32)
            .map_err(|e| StartError(format!("cannot read the usage ledger: {e}")))?
    } else {
        Vec::new()
    };
    Ok(Budgets::new(&config.teams, now, |team, _, _| {
        let spent = |from: i64| {
            cells.iter().filter(|(k, _)| k.team == team && i64::from(k.day) >= from).map(|(_, r)| r.cost_usd).sum()
        };
        (spent(today), spent(month_start))
    }))
}

/// Accepts connections until shutdown, then waits (up to the grace period) for the open
/// ones, which were told to finish their in-flight requests and close.
async fn accept_loop<M, S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_read_timeout: Duration,
    shutdown: watch::Receiver<Option<Duration>>,
    make_service: M,
) where
    M: Fn() -> S + Send + Sync + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One clone per open connection; the loop waits for the count to fall back to one.
    let open_connections = Arc::new(());
    let mut stop = shutdown.clone();
    // Past the grace period, this closes the connections that are still open.
    let (force_close, force_closed) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = make_service();
                let shutdown = shutdown.clone();
                let force_closed = force_closed.clone();
                let guard = open_connections.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let io = match tls {
                        None => Connection::Plain(stream),
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => Connection::Tls(Box::new(tls_stream)),
                            Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        },
                    };
                    serve_connection(io, service, header_read_timeout, shutdown, force_closed).await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let grace = shutdown.borrow().unwrap_or(SHUTDOWN_GRACE);
    let deadline = tokio::time::Instant::now() + grace;
    let mut forced = false;
    while Arc::strong_count(&open_connections) > 1 {
        if !forced && tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open = Arc::strong_count(&open_connections) - 1,
                "shutdown grace period over; closing open connections (their calls are recorded as cancelled)"
            );
            let _ = force_close.send(true);
            forced = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most header fields per HTTP/1 request (hyper's default is 100).
const MAX_HEADER_COUNT: usize = 1000;
/// Read buffer of the HTTP/1 parser, and the HTTP/2 header list limit.
const PARSER_BUFFER_BYTES: usize = 512 << 10;

/// Serves one connection (HTTP/1.1 or HTTP/2 by preface); on shutdown, lets the current
/// requests finish and then closes it.
async fn serve_connection<S, B>(
    io: Connection,
    service: S,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<Option<Duration>>,
    mut force_closed: watch::Receiver<bool>,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(protocol) = protocol_of(&io, header_read_timeout).await else { return };
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Either => builder,
    };
    // The parser's own limits sit above `server.max_header_bytes` (at most 256 KiB), so that
    // oversized headers get the proxy's provider-shaped 431 rather than a bare one.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(MAX_HEADER_COUNT)
        .max_buf_size(PARSER_BUFFER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(PARSER_BUFFER_BYTES as u32);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                // Dropping the connection drops its response bodies: their calls end as cancelled.
                _ = force_closed.changed() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The HTTP a connection speaks, known before hyper reads from it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
    /// Not known (a TLS client that offered no ALPN): hyper-util reads the preface to tell.
    Either,
}

/// The first bytes of the HTTP/2 client preface (`PRI * HTTP/2.0`); `PRI` is no HTTP/1 method.
const H2_PREFACE_START: &[u8] = b"PRI";

/// Which HTTP `io` speaks: by ALPN over TLS, by peeking at its first bytes (left in the
/// socket) over plain TCP. `None` when the client closes or sends nothing within `timeout`.
///
/// Peeking instead of letting hyper-util sniff the preface keeps the read buffer to one 8 KB
/// allocation: hyper-util hands its 24 sniffed bytes to hyper as a first read, after which
/// hyper's next reservation of 8 KB no longer fits and its buffer doubles to 16 KB for the
/// connection's life (see BENCHMARKS.md, "Fifth sitting").
async fn protocol_of(io: &Connection, timeout: Duration) -> Option<Protocol> {
    let stream = match io {
        Connection::Tls(tls) => {
            return Some(match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                Some(_) => Protocol::Http1,
                None => Protocol::Either,
            })
        }
        Connection::Plain(stream) => stream,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; H2_PREFACE_START.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if first[..n] != H2_PREFACE_START[..n] {
            return Some(Protocol::Http1);
        }
        if n == first.len() {
            return Some(Protocol::Http2);
        }
        // Fewer bytes than it takes to tell (a client writing a byte at a time): a peek would
        // return the same bytes at once, so wait a little for more.
        tokio::time::sleep(PEEK_RETRY).await;
    }
}

/// Pause between two peeks at a connection's first bytes while they cannot tell its HTTP.
const PEEK_RETRY: Duration = Duration::from_millis(5);

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect())
        .map_err(|e| StartError(format!("server.tls_cert {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError(format!("server.tls_cert {}: no certificate found", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| StartError(format!("server.tls_key {}: {e}", files.key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError(format!("server.tls_cert/tls_key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An accepted connection, plain or TLS.
enum Connection {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

// Connection implements AsyncRead/AsyncWrite by delegating to the plain or TLS stream.
impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(s) => s.is_write_vectored(),
            Connection::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Connection::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
