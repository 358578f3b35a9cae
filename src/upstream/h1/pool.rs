//! The idle keep-alive connections of one plain-HTTP upstream: taken for a request, given
//! back when a response ended cleanly, swept every 15 s; and connecting, with the connect
//! timeout shared out over the host's addresses.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::net::TcpStream;

use crate::upstream::h1::error::H1Error;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are checked for expiry and for being closed by the upstream.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// TCP keep-alive probes start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// One upstream's address and its idle keep-alive connections.
pub(super) struct Pool {
    /// Host to resolve (an IPv6 literal without its brackets) and port.
    pub(super) host: String,
    pub(super) port: u16,
    /// The `Host` header sent: the authority, without `:80`.
    pub(super) host_header: HeaderValue,
    pub(super) connect_timeout: Duration,
    pub(super) idle: Mutex<Vec<IdleConnection>>,
    pub(super) sweeper_started: AtomicBool,
}

pub(super) struct IdleConnection {
    pub(super) stream: TcpStream,
    pub(super) since: Instant,
}

impl Pool {
    pub(super) fn new(host: String, port: u16, host_header: HeaderValue, connect_timeout: Duration) -> Self {
        Pool {
            host,
            port,
            host_header,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            sweeper_started: AtomicBool::new(false),
        }
    }
}

impl Pool {
    /// A pooled connection still open on the upstream's side, if there is one.
    pub(super) fn take_idle(&self) -> Option<TcpStream> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if idle.usable() {
                return Some(idle.stream);
            }
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(super) fn put_idle(self: &Arc<Self>, stream: TcpStream) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(IdleConnection { stream, since: Instant::now() });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Connects to the first address of the host that answers. Like hyper's connector, the
    /// connect timeout is shared out: an address that swallows packets gets its part of the
    /// time left, and the next address still gets a chance.
    pub(super) async fn connect(&self) -> Result<TcpStream, H1Error> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addresses: Vec<std::net::SocketAddr> =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host((self.host.as_str(), self.port))).await {
                Err(_) => return Err(H1Error::ConnectTimeout),
                Ok(Err(e)) => return Err(H1Error::Connect(e)),
                Ok(Ok(found)) => found.collect(),
            };
        let mut last_error = H1Error::Connect(io::Error::new(io::ErrorKind::NotFound, "the host has no address"));
        for (tried, address) in addresses.iter().enumerate() {
            let share =
                deadline.saturating_duration_since(tokio::time::Instant::now()) / (addresses.len() - tried) as u32;
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    // Both only tune the socket; a failure leaves a working connection.
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok(stream);
                }
                Ok(Err(e)) => last_error = H1Error::Connect(e),
                Err(_) => last_error = H1Error::ConnectTimeout,
            }
        }
        Err(last_error)
    }
}

/// Closes idle connections that expired or that the upstream closed, until the pool is gone.
async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(IdleConnection::usable);
    }
}

impl IdleConnection {
    /// Not idle too long, and the peer has neither closed nor sent anything unasked. When
    /// tokio already knows the socket has nothing to read, the check costs no system call.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.since.elapsed() < IDLE_TIMEOUT
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}
