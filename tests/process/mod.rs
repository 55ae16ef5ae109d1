//! The real `wedsync` binary as a child process: start it on port 0 in a data directory, learn
//! its port from its log, kill it with SIGKILL or stop it with SIGTERM. A guard kills the child
//! when a test fails, so no server outlives its test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the binary may take to open its store and bind (a loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wedsync")
}

/// A `wedsync` command with a quiet, uncoloured environment (no stray `WEDSYNC_*` settings of
/// the developer's shell leak in).
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEDSYNC_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    cmd
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case colours are on anyway.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address in a `listening addr=HOST:PORT` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `wedsync serve`.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// `wedsync serve --listen 127.0.0.1:0 --data-dir DIR EXTRA...`; returns once it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        let mut cmd = command();
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("the wedsync binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Reads stderr to the end (a full pipe would block the server), keeping every line for
        // failure messages, and reports the bound address once.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(strip_ansi(&line));
            }
        });
        let mut proc = ServerProcess {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => proc.addr = addr,
            Err(_) => {
                let status = proc.child.as_mut().unwrap().try_wait().ok().flatten();
                proc.kill9();
                panic!(
                    "wedsync serve did not log `listening addr=` within {START_TIMEOUT:?} \
                     (exit status {status:?}); its log:\n{}",
                    proc.logs()
                );
            }
        }
        eprintln!(
            "[server] pid {} listening on {} after {} ms",
            proc.pid(),
            proc.addr,
            started.elapsed().as_millis()
        );
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}/{}", self.addr, doc)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL (what `kill -9` sends) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.pid();
        assert!(pid != 0, "no running server to signal");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit (polling, so async tests keep running); `None` on
    /// timeout (the guard then kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit; panics with the log unless it exits 0 in time.
    pub async fn stop(&mut self) {
        self.sigterm();
        match self.wait_exit(Duration::from_secs(30)).await {
            Some(status) if status.success() => {}
            other => panic!(
                "wedsync did not exit 0 after SIGTERM: {other:?}; log:\n{}",
                self.logs()
            ),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
