//! Test harness: a real tracegate (in-process, real sockets on loopback, real sled in a temp
//! dir) in front of real upstreams — the `mock-llm` server, or a scripted upstream whose every
//! response a test writes by hand and which records every request it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracegate::config::Config;
use tracegate::mock_llm::{self, MockConfig};
use tracegate::server::Server;

/// A running `mock-llm` on a random loopback port.
pub struct Mock {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Mock {
    pub async fn start(chunk_delay: Duration) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = mock_llm::serve(listener, MockConfig { chunk_delay }).await;
        });
        Mock { addr, task }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request as a scripted upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

pub type ScriptBody = BoxBody<Bytes, Infallible>;
type Script = dyn Fn(&Received) -> Response<ScriptBody> + Send + Sync;

/// An upstream whose answers the test scripts, recording what it receives.
pub struct Scripted {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Scripted {
    pub async fn start(script: impl Fn(&Received) -> Response<ScriptBody> + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(serve_scripted(stream, script.clone(), log.clone()));
            }
        });
        Scripted { addr, received, task }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one scripted-upstream connection: records each request, answers with the script.
async fn serve_scripted<IO>(io: IO, script: Arc<Script>, log: Arc<Mutex<Vec<Received>>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (script, log) = (script.clone(), log.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let rec =
                Received { method: parts.method, uri: parts.uri, headers: parts.headers, body, version: parts.version };
            log.lock().unwrap().push(rec.clone());
            Ok::<_, Infallible>(script(&rec))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// An upstream that runs `behaviour` on every accepted connection.
pub async fn raw_upstream<F, Fut>(behaviour: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behaviour = std::sync::Arc::new(behaviour);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behaviour(stream));
        }
    });
    addr
}

/// A scripted upstream that answers its one request with an SSE body fed through the sender.
pub async fn streaming_upstream() -> (Scripted, tokio::sync::mpsc::Sender<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let upstream = Scripted::start(move |_req| {
        let rx = rx.lock().unwrap().take().expect("one request");
        Response::builder().header("content-type", "text/event-stream").body(ChannelBody(rx).boxed()).unwrap()
    })
    .await;
    (upstream, tx)
}

/// POSTs a streaming chat request; returns the trace id, the first chunk, and the rest of the body.
pub async fn open_stream(url: &str, headers: &[(&str, &str)]) -> (String, Bytes, Incoming) {
    let mut request = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = send(request.body(Full::new(Bytes::from_static(CHAT_STREAM.as_bytes()))).unwrap()).await;
    let trace_id = header(response.headers(), "x-tracegate-trace-id").to_string();
    let mut body = response.into_body();
    let first = next_chunk(&mut body).await.expect("the stream sends a first chunk");
    (trace_id, first, body)
}

pub fn full(body: impl Into<Bytes>) -> ScriptBody {
    Full::new(body.into()).boxed()
}

/// A provider entry for the test config.
pub fn provider(name: &str, prefix: &str, upstream: SocketAddr, api: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\napi = \"{api}\"\n"
    )
}

/// tracegate on random ports with its store in a temp dir.
pub struct Proxy {
    pub server: Option<Server>,
    pub store_dir: Arc<TempDir>,
}

impl Proxy {
    /// Starts tracegate with `providers` (TOML) and any extra config.
    pub async fn start(providers: &str) -> Proxy {
        Proxy::start_in(Arc::new(TempDir::new().unwrap()), providers).await
    }

    /// Starts tracegate on an existing store directory (restart tests).
    pub async fn start_in(store_dir: Arc<TempDir>, providers: &str) -> Proxy {
        Proxy::start_with_server(store_dir, "", providers).await
    }

    /// Like [`Proxy::start_in`], with extra `[server]` keys.
    pub async fn start_with_server(store_dir: Arc<TempDir>, server: &str, providers: &str) -> Proxy {
        let config_text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}[storage]\npath = \"{}\"\n{providers}",
            store_dir.path().join("store").display()
        );
        let config = Config::from_toml(&config_text, &|_| None).expect("test config is valid");
        let server = Server::start(config).await.expect("tracegate starts");
        Proxy { server: Some(server), store_dir }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server().proxy_addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server().admin_addr())
    }

    /// GET on the admin API after every finished call has been written.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.server().flush().await;
        let resp = send(Request::get(self.admin_url(path)).body(Full::new(Bytes::new())).unwrap()).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The spans of a trace (empty if unknown).
    pub async fn spans(&self, trace_id: &str) -> Vec<Value> {
        let (_, v) = self.admin_get(&format!("/api/traces/{trace_id}")).await;
        v["spans"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (bounded) until the trace has `n` spans; returns them.
    pub async fn wait_spans(&self, trace_id: &str, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let spans = self.spans(trace_id).await;
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("trace {trace_id} never reached {n} spans");
    }

    pub async fn shutdown(mut self) -> Arc<TempDir> {
        self.server.take().unwrap().shutdown().await;
        self.store_dir.clone()
    }
}

/// Sends a request with a fresh HTTP/1.1 client and returns the streaming response.
pub async fn send(req: Request<Full<Bytes>>) -> Response<Incoming> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    client.request(req).await.expect("request reaches the server")
}

/// POSTs JSON with extra headers; returns status, headers and the whole body.
/// Sends `method` to the admin API (with `token` when given); status and JSON.
pub async fn admin_call(proxy: &Proxy, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    proxy.server().flush().await;
    let mut request = Request::builder().method(method).uri(proxy.admin_url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = send(request.body(Full::new(Bytes::new())).unwrap()).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, HeaderMap, Bytes) {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Like [`post`], but `None` when the server cannot be reached or the answer breaks off
/// (a server being killed).
pub async fn try_post(url: &str, headers: &[(&str, &str)], body: &str) -> Option<(u16, HeaderMap, Bytes)> {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_string()))).ok()?).await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, body))
}

/// GETs a URL; returns status, headers and body.
pub async fn get(url: &str) -> (u16, HeaderMap, Bytes) {
    let resp = send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// The value of an unlabelled metric on the admin listener at `admin` (`http://host:port`).
pub async fn metric(admin: &str, name: &str) -> f64 {
    let (_, _, body) = get(&format!("{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The request headers the mock saw, from its `x-mock-request-headers` echo.
pub fn upstream_saw(headers: &HeaderMap) -> Value {
    serde_json::from_str(header(headers, "x-mock-request-headers")).expect("mock echoes request headers")
}

pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
pub const CHAT_STREAM_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
pub const CHAT_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
pub const MESSAGES_STREAM: &str = r#"{"model":"claude-3-5-haiku-latest","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
pub const MESSAGES: &str = r#"{"model":"claude-3-5-haiku-latest","max_tokens":64,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;

/// A response body the test feeds chunk by chunk through a channel.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Reads the next data frame of a response (None at the end), failing after 10 s.
pub async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("no chunk within 10 s: the proxy is holding the stream back")?
            .expect("body error");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// A body that yields `chunks` as separate frames.
pub fn chunked<T: Into<Bytes>>(chunks: impl IntoIterator<Item = T>) -> ScriptBody {
    let chunks: Vec<Bytes> = chunks.into_iter().map(Into::into).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(c).unwrap();
    }
    ChannelBody(rx).boxed()
}

/// A certificate authority and a server certificate for `localhost`/`127.0.0.1` it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tracegate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let mut server_config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_config: Arc::new(server_config),
        }
    }
}

impl Scripted {
    /// Like [`Scripted::start`], over TLS (ALPN h2 and http/1.1) with `pki`'s server certificate.
    pub async fn start_tls(
        pki: &TestPki,
        script: impl Fn(&Received) -> Response<ScriptBody> + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log = received.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, log, acceptor) = (script.clone(), log.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_scripted(stream, script, log).await;
                    }
                });
            }
        });
        Scripted { addr, received, task }
    }
}

/// Every file below `dir` (to grep a store for secrets).
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The real `tracegate serve` as a child process, killed and reaped when dropped.
pub struct Binary(pub std::process::Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Binary {
    /// Starts `tracegate serve --config <config>` with extra environment, its log (stderr) going
    /// to `log` when given, and waits until the admin port accepts connections.
    pub async fn start(
        config: &std::path::Path,
        admin_port: u16,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Binary {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tracegate"));
        command.arg("serve").arg("--config").arg(config).stdout(std::process::Stdio::null());
        command.stderr(match log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).expect("log file")),
            None => std::process::Stdio::null(),
        });
        for (key, value) in env {
            command.env(key, value);
        }
        // Owned by `Binary` at once, so it is killed and reaped on every path.
        let binary = Binary(command.spawn().expect("the tracegate binary starts"));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await.is_ok() {
                return binary;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tracegate did not start listening");
    }
}

/// Writes a config for [`Binary::start`] in `dir` (store in `dir/store`, free loopback ports)
/// with `providers`; returns its path and the proxy and admin ports.
pub fn binary_config(dir: &std::path::Path, providers: &str) -> (std::path::PathBuf, u16, u16) {
    let (proxy_port, admin_port) = (free_port(), free_port());
    let config = dir.join("tracegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n[storage]\npath = \"{}\"\n{providers}",
            dir.join("store").display()
        ),
    )
    .unwrap();
    (config, proxy_port, admin_port)
}

/// Runs the Python script `tests/sdk/{script}` with `args` (the SDKs it drives come from
/// tests/requirements.txt, which tests/run.sh installs); its stdout as JSON.
pub async fn sdk_script(script: &str, args: Vec<String>) -> Value {
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("python3").arg(&script).args(&args).output())
            .await
            .unwrap()
            .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed (the SDKs come from tests/requirements.txt; tests/run.sh installs them):\n{stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("the script prints JSON ({e}): {stderr}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
