//! Real PostgreSQL and Redis servers for the cluster tests, each private to its test: a fresh
//! PostgreSQL cluster (`initdb`) in a temp dir on a free loopback port, run as the `postgres`
//! user when the tests run as root (PostgreSQL refuses root), and a `redis-server` without
//! persistence. Both are stopped by pid when dropped; `stop` and `start` simulate outages.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::free_port;

/// Where Debian puts PostgreSQL's server binaries.
fn pg_bin(name: &str) -> PathBuf {
    for version in ["17", "16", "15", "14", "13"] {
        let path = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{name}"));
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    // SAFETY-free: the effective uid of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root.
fn as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    _dir: TempDir,
}

impl Postgres {
    /// A new cluster, started; `url()` connects as the superuser `postgres` with trust auth.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new().prefix("tracegate-pg").tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let status = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown the temp dir to postgres");
        }
        let out = as_postgres(pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
            .output()
            .expect("initdb runs (apt-get install postgresql)");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let pg = Postgres { port: free_port(), data, _dir: dir };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.data.display()
        );
        let out = as_postgres(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server at once (connections are cut), as an outage would.
    pub fn stop(&self) {
        let _ =
            as_postgres(pg_bin("pg_ctl")).arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }

    /// A client for the test's own queries.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// The number `sql` (a `SELECT count(*)`-like query) answers, or -1 while it fails.
    pub async fn count(&self, sql: &str) -> i64 {
        let Ok((client, connection)) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await else {
            return -1;
        };
        tokio::spawn(connection);
        match client.query_one(sql, &[]).await {
            Ok(row) => row.try_get::<_, i64>(0).unwrap_or(-1),
            Err(_) => -1,
        }
    }

    /// Waits (bounded) until `sql` answers `want`; panics with the last answer otherwise.
    pub async fn wait_count(&self, sql: &str, want: i64) {
        let mut last = -1;
        for _ in 0..300 {
            last = self.count(sql).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{sql} answered {last}, not {want}");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `redis-server` on a free loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis { port: free_port(), child: None };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again, empty) and waits until it answers.
    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start");
    }

    /// Kills the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
