//! What the load benches share (`mod common;` in each): tracegate child processes killed when
//! dropped, free loopback addresses, keep-alive HTTP/1.1 connections, a read of `/metrics`, and
//! nearest-rank percentiles. Not every bench uses every piece.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a child may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One keep-alive HTTP/1.1 connection's sending half.
pub type Connection = SendRequest<Full<Bytes>>;

/// A running `tracegate` child, killed when dropped. Its stderr goes to a log file that is
/// shown if it dies early.
pub struct ChildProcess {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn spawn(name: &'static str, args: &[&str], log: PathBuf) -> ChildProcess {
        let log_file = File::create(&log).expect("create child log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tracegate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildProcess { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until `addr` accepts TCP connections; panics if the child exits or takes too long.
    pub fn wait_until_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} exited ({status}) before listening on {addr}; its stderr:\n{log}", self.name);
            }
            if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "{} does not accept connections on {addr}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tracegate mock-llm` on `addr` without pauses between streamed chunks (the benches set them
/// per request), listening when this returns; its stderr goes to `log`.
pub fn start_mock(addr: SocketAddr, log: PathBuf) -> ChildProcess {
    let listen = addr.to_string();
    let mut mock = ChildProcess::spawn("mock-llm", &["mock-llm", "--listen", &listen, "--chunk-delay-ms", "0"], log);
    mock.wait_until_listening(addr);
    mock
}

/// `N` distinct loopback addresses whose ports were free a moment ago (bound to port 0, then
/// released), for children that cannot report the port they bound.
pub fn free_loopback_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<StdTcpListener> =
        (0..N).map(|_| StdTcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address"))
}

/// Opens one HTTP/1.1 keep-alive connection.
pub async fn connect(addr: SocketAddr) -> Result<Connection, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

pub async fn fetch_metrics(admin: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get("/metrics").header("host", admin.to_string()).body(Empty::<Bytes>::new());
    let response = sender.send_request(request.expect("valid request")).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

/// The value of an unlabelled series in the Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// The `p`th percentile (nearest rank) of sorted durations; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
