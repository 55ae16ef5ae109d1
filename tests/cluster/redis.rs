//! A private `redis-server` for one test: started on a free loopback port in a temp dir (never
//! the system service), killed with SIGKILL, restarted on the same port and dir (the AOF is
//! reloaded), flushed, stopped on drop. And a tiny blocking RESP client, enough for the tests
//! to look at the keys the nodes write (`XLEN`, `HGETALL`, `FLUSHALL`, ...).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the private Redis persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// No AOF, no RDB: a restart comes back empty.
    None,
    /// `appendonly yes`, `appendfsync always`.
    AofAlways,
    /// `appendonly yes`, `appendfsync everysec`.
    AofEverySec,
}

/// How long a fresh or restarted redis-server may take to answer PING (AOF reload included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback TCP port (bound once, released: a small race a test can live with).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The `redis-server` binary: `$WEDSYNC_TEST_REDIS_SERVER` or `redis-server` on `PATH`.
fn binary() -> String {
    std::env::var("WEDSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub persistence: Persistence,
    dir: tempfile::TempDir,
    /// Starts so far (1 + restarts).
    pub starts: u32,
}

impl RedisServer {
    /// Starts a private redis-server and waits until it answers PING.
    pub fn start(persistence: Persistence) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("wedsync-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut redis = RedisServer {
            child: None,
            port: free_port(),
            persistence,
            dir,
            starts: 0,
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log file so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let (appendonly, fsync) = match self.persistence {
            Persistence::None => ("no", "everysec"),
            Persistence::AofAlways => ("yes", "always"),
            Persistence::AofEverySec => ("yes", "everysec"),
        };
        let port = self.port.to_string();
        let mut cmd = Command::new(binary());
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(self.log_path())
        .args(["--daemonize", "no", "--save", ""])
        .args(["--appendonly", appendonly, "--appendfsync", fsync])
        // The test machine is small: no background rewrite in the middle of a test.
        .args(["--auto-aof-rewrite-percentage", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start `{}` ({e}): the cluster tests need redis-server 7 \
                 (`apt-get install redis-server`; scripts/test.sh installs it)",
                binary()
            )
        });
        self.child = Some(child);
        self.starts += 1;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "redis-server on port {} exited at start ({status}); its log:\n{}",
                    self.port,
                    self.logs()
                );
            }
            match self.try_cmd(&["PING"]) {
                Ok(Resp::Simple(s)) if s == "PONG" => break,
                // -LOADING while the AOF is replayed, or not listening yet.
                _ if started.elapsed() < READY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                other => {
                    self.kill9();
                    panic!(
                        "redis-server on port {} not ready after {READY_TIMEOUT:?} ({other:?}); \
                         its log:\n{}",
                        self.port,
                        self.logs()
                    );
                }
            }
        }
        eprintln!(
            "[redis] pid {} on port {} ({:?}, start #{}) ready after {} ms",
            self.pid(),
            self.port,
            self.persistence,
            self.starts,
            started.elapsed().as_millis()
        );
    }

    /// SIGKILL and reap (no shutdown save, no AOF flush beyond what the OS already has).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with an AOF: reloads it).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `FLUSHALL SYNC`: every key gone, the server stays up.
    pub fn flushall(&self) {
        match self.cmd(&["FLUSHALL", "SYNC"]) {
            Resp::Simple(s) if s == "OK" => {}
            other => panic!("FLUSHALL answered {other:?}"),
        }
    }

    /// One command on a fresh connection; panics on a connection error.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// One command on a fresh connection.
    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<Resp> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        stream.write_all(&out)?;
        read_resp(&mut BufReader::new(stream))
    }

    /// `XLEN KEY` (0 when the key is missing).
    pub fn xlen(&self, key: &str) -> i64 {
        match self.cmd(&["XLEN", key]) {
            Resp::Int(n) => n,
            other => panic!("XLEN {key}: {other:?}"),
        }
    }

    /// The id of the first entry of a stream, as (milliseconds, sequence).
    pub fn first_stream_id(&self, key: &str) -> Option<(u64, u64)> {
        match self.cmd(&["XRANGE", key, "-", "+", "COUNT", "1"]) {
            Resp::Array(entries) => {
                let first = entries.into_iter().next()?;
                let Resp::Array(parts) = first else {
                    panic!("XRANGE entry is not an array: {first:?}")
                };
                let id = parts.first()?.as_str()?;
                let (ms, seq) = id.split_once('-')?;
                Some((ms.parse().ok()?, seq.parse().ok()?))
            }
            other => panic!("XRANGE {key}: {other:?}"),
        }
    }

    /// `HGETALL KEY` as (field, value bytes) pairs.
    pub fn hgetall(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        match self.cmd(&["HGETALL", key]) {
            Resp::Array(items) => items
                .chunks(2)
                .map(|kv| {
                    let field = kv[0].as_str().unwrap_or_default().to_string();
                    let value = match &kv[1] {
                        Resp::Bulk(Some(b)) => b.clone(),
                        other => panic!("HGETALL {key} value: {other:?}"),
                    };
                    (field, value)
                })
                .collect(),
            // RESP3 maps are not requested (HELLO is never sent): only arrays come back.
            other => panic!("HGETALL {key}: {other:?}"),
        }
    }

    /// `KEYS PATTERN` (tests only: a handful of keys).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.cmd(&["KEYS", pattern]) {
            Resp::Array(items) => {
                let mut keys: Vec<String> = items
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS {pattern}: {other:?}"),
        }
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> i64 {
        match self.cmd(&["DBSIZE"]) {
            Resp::Int(n) => n,
            other => panic!("DBSIZE: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
    Nil,
}

impl Resp {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("RESP: {line:?}"));
    if !line.is_char_boundary(1) {
        return Err(bad());
    }
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Nil
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(items)
            }
        }
        _ => return Err(bad()),
    })
}
