//! Test harness: a broker to talk to.
//!
//! With `WARREN_TEST_ADDR=host:port` set, tests use that broker (a running
//! Warren or RabbitMQ, for the differential run). Otherwise each test starts
//! the real `warren` binary on a free port with a temporary data directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

pub struct TestBroker {
    pub addr: String,
    pub child: Option<Child>,
    pub data_dir: Option<PathBuf>,
    /// Extra environment, kept across restarts.
    pub env: Vec<(String, String)>,
    /// Lines of the broker's log (every process it has been) that say
    /// "panicked": the test fails on any when the broker is dropped.
    pub panics: Arc<Mutex<Vec<String>>>,
    /// The thread reading the current process's log.
    pump: Option<std::thread::JoinHandle<()>>,
    /// Base URL of the management API (`.../api/...` follows).
    pub http: String,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        if let Ok(addr) = std::env::var("WARREN_TEST_ADDR") {
            let host = addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h).to_owned();
            let http = std::env::var("WARREN_TEST_HTTP").unwrap_or_else(|_| format!("http://{host}:15672"));
            return TestBroker {
                addr,
                child: None,
                data_dir: None,
                env: Vec::new(),
                panics: Default::default(),
                pump: None,
                http,
            };
        }
        Self::spawn()
    }

    /// Always a fresh Warren process, for tests about the process itself.
    pub fn spawn() -> TestBroker {
        let (dir, port) = Self::fresh();
        Self::spawn_at(dir, port)
    }

    /// A free port and a data directory path for it.
    pub fn fresh() -> (PathBuf, u16) {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("warren-test-{}-{port}", std::process::id()));
        (dir, port)
    }

    /// A Warren process on `port` with data in `dir` (kept across restarts).
    pub fn spawn_at(dir: PathBuf, port: u16) -> TestBroker {
        Self::spawn_env(dir, port, &[])
    }

    /// Same, with extra environment variables (fault injection).
    pub fn spawn_env(dir: PathBuf, port: u16, env: &[(&str, &str)]) -> TestBroker {
        Self::spawn_logged(dir, port, env, Default::default())
    }

    fn spawn_logged(dir: PathBuf, port: u16, env: &[(&str, &str)], panics: Arc<Mutex<Vec<String>>>) -> TestBroker {
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .envs(env.iter().copied())
            .args([
                "--amqp-listen",
                &addr,
                "--http-listen",
                "127.0.0.1:0",
                "--prometheus-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .env("WARREN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start warren");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = panics.clone();
        let http = Arc::new(Mutex::new(String::new()));
        let http_seen = http.clone();
        let pump = std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.split("HTTP API ready on ").nth(1) {
                    let url = at.split_whitespace().next().unwrap_or_default();
                    *http_seen.lock().unwrap() = url.trim_end_matches("/api/").to_owned();
                }
                if !sent && line.contains("listening") {
                    let _ = tx.send(());
                    sent = true;
                }
                if line.contains("panicked") {
                    seen.lock().unwrap().push(line.clone());
                }
                eprintln!("[warren] {line}");
            }
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("warren did not log 'listening'");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let http = http.lock().unwrap().clone();
        TestBroker { addr, child: Some(child), data_dir: Some(dir), env, panics, pump: Some(pump), http }
    }

    pub fn is_warren(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default()).await.expect("connect")
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("own process").id() as i32;
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl TestBroker {
    /// Runs `warren ctl ARGS` against this broker; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("ctl")
            .arg("--data-dir")
            .arg(self.data_dir.as_ref().expect("own process"))
            .args(args)
            .output()
            .expect("run warren ctl");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// kill -9, then start again on the same port and data directory.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("own process");
        child.kill().unwrap();
        child.wait().unwrap();
        self.respawn();
    }

    fn respawn(&mut self) {
        let dir = self.data_dir.take().unwrap();
        let env = std::mem::take(&mut self.env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Some(pump) = self.pump.take() {
            let _ = pump.join(); // the old process is gone: its log is complete
        }
        let next = Self::spawn_logged(dir, self.port(), &env, self.panics.clone());
        // Assigning drops the old value, which must not kill or delete anything.
        let old = std::mem::replace(self, next);
        std::mem::forget(old);
    }

    /// SIGTERM (clean shutdown), then start again.
    pub fn stop_and_restart(&mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("own process");
        assert!(child.wait().unwrap().success());
        self.respawn();
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let panics = self.panics.lock().map(|p| p.clone()).unwrap_or_default();
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("panic in the broker's log:\n{}", panics.join("\n"));
        }
    }
}

/// A name no other test (or earlier run against a shared broker) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The (reply code, reply text) of an AMQP error, if it is one.
pub fn amqp_error(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => Some((a.get_id(), a.get_message().to_string())),
        _ => None,
    }
}
