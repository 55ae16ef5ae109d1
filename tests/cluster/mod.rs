//! Fixtures of the cluster tests: a private redis-server ([`redis`]), a reconnecting yrs client
//! ([`peer`]), and [`Cluster`]: wedsync nodes as real child processes sharing that Redis.
#![allow(dead_code)]

pub mod peer;
pub mod proxy;
pub mod redis;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yrs::Map;

use crate::process::ServerProcess;
use peer::{Peer, ACK_WINDOW};
use redis::RedisServer;

/// Every test here runs 3-4 wedsync processes and a redis-server on a small machine: one test
/// at a time, whatever `--test-threads` says.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One wedsync node: its id, data directory and (when running) process.
pub struct Node {
    pub id: String,
    pub data: PathBuf,
    pub proc: Option<ServerProcess>,
    /// Logs of earlier runs of this node (before a kill or stop).
    pub old_logs: String,
}

/// wedsync nodes in cluster mode on one private Redis.
pub struct Cluster {
    pub redis: RedisServer,
    pub nodes: Vec<Node>,
    pub config: PathBuf,
    root: tempfile::TempDir,
}

impl Cluster {
    /// `total` node slots (ids n1..), the first `running` of them started. `cluster_toml` is
    /// the body of the `[cluster]` section of every node's config file (may be empty).
    pub fn start(redis: RedisServer, running: usize, total: usize, cluster_toml: &str) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("wedsync-cluster-")
            .tempdir()
            .expect("temp dir");
        let config = root.path().join("wedsync.toml");
        std::fs::write(&config, format!("[cluster]\n{cluster_toml}\n")).unwrap();
        let nodes = (0..total)
            .map(|i| Node {
                id: format!("n{}", i + 1),
                data: root.path().join(format!("n{}", i + 1)),
                proc: None,
                old_logs: String::new(),
            })
            .collect();
        let mut c = Cluster {
            redis,
            nodes,
            config,
            root,
        };
        for i in 0..running {
            c.start_node(i);
        }
        c
    }

    /// Starts node `i` (again) on its data directory.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none(), "node {i} already runs");
        let url = self.redis.url();
        let config = self.config.to_str().unwrap().to_string();
        let node = &mut self.nodes[i];
        let args = [
            "--redis",
            url.as_str(),
            "--node-id",
            node.id.as_str(),
            "--config",
            config.as_str(),
        ];
        node.proc = Some(ServerProcess::start(&node.data, &args));
    }

    pub fn node(&self, i: usize) -> &ServerProcess {
        self.nodes[i]
            .proc
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.nodes[i].id))
    }

    /// `ws://HOST:PORT/DOC` of node `i`.
    pub fn url(&self, i: usize, doc: &str) -> String {
        self.node(i).url(doc)
    }

    /// `ws://HOST:PORT` of node `i` (what the JS scripts take).
    pub fn base(&self, i: usize) -> String {
        format!("ws://{}", self.node(i).addr)
    }

    pub fn http(&self, i: usize, path: &str) -> String {
        self.node(i).http(path)
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut p) = node.proc.take() {
            p.kill9();
            node.old_logs.push_str(&p.logs());
            node.old_logs.push('\n');
        }
    }

    /// SIGTERM node `i` and wait for exit 0.
    pub async fn stop_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut p) = node.proc.take() {
            p.stop().await;
            node.old_logs.push_str(&p.logs());
            node.old_logs.push('\n');
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.node(i).pid();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Freezes node `i` (SIGSTOP).
    pub fn sigstop(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Resumes node `i` (SIGCONT).
    pub fn sigcont(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Everything node `i` logged, earlier runs included.
    pub fn logs(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let mut s = n.old_logs.clone();
        if let Some(p) = &n.proc {
            s.push_str(&p.logs());
        }
        s
    }

    /// The last lines of every node's log and of Redis's, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = self.logs(i);
            let all: Vec<&str> = log.lines().collect();
            let warn: Vec<&str> = all
                .iter()
                .copied()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            out.push_str(&format!(
                "--- node {} ({} lines, {} WARN/ERROR), first WARN/ERROR lines:\n",
                n.id,
                all.len(),
                warn.len()
            ));
            for l in warn.iter().take(lines) {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(&format!("--- node {}: last {lines} lines:\n", n.id));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        let rlog = self.redis.logs();
        let rl: Vec<&str> = rlog.lines().collect();
        out.push_str("--- redis: last 15 lines:\n");
        for l in &rl[rl.len().saturating_sub(15)..] {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// Prints each node's WARN/ERROR lines and lines about (re-)joins (up to `max` per node;
    /// the open-mode warning skipped): what the nodes went through in a scenario that passed.
    pub fn print_warnings(&self, max: usize) {
        for (i, n) in self.nodes.iter().enumerate() {
            let log = self.logs(i);
            let warn: Vec<&str> = log
                .lines()
                .filter(|l| {
                    (l.contains("WARN") || l.contains("ERROR")) && !l.contains("no JWT key")
                })
                .collect();
            if warn.is_empty() {
                continue;
            }
            eprintln!("  node {}: {} WARN/ERROR/join lines", n.id, warn.len());
            for l in warn.iter().take(max) {
                eprintln!("    {l}");
            }
        }
    }

    /// `/metrics` of node `i`, parsed.
    pub async fn metrics(&self, i: usize) -> Metrics {
        metrics(&self.http(i, "/metrics")).await
    }

    /// Polls node `i`'s metric `name` until `pred(value)` (0 when absent); returns the last
    /// value and whether `pred` held.
    pub async fn wait_metric(
        &self,
        i: usize,
        name: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> (f64, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metrics(i).await.get(name);
            if pred(v) {
                return (v, true);
            }
            if Instant::now() >= deadline {
                return (v, false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of metric `name` over every running node.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.proc.is_some() {
                sum += self.metrics(i).await.get(name);
            }
        }
        sum
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].proc.is_some())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== cluster logs at failure ===\n{}", self.log_tails(40));
        }
    }
}

/// Prometheus samples by metric name (summed over label sets).
#[derive(Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// The value of `name` (0 when the node does not export it).
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// GET a Prometheus text page and sum the samples of each metric name.
pub async fn metrics(url: &str) -> Metrics {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut out = Metrics::default();
    let Ok(resp) = client.get(url).send().await else {
        return out;
    };
    let Ok(text) = resp.text().await else {
        return out;
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name_labels, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let name = name_labels.split('{').next().unwrap_or("").trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.0.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// GET JSON (status, body).
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// What a writer did.
pub struct WriterReport {
    pub peer: Peer,
    pub prefix: String,
    /// Keys written (each one an own update message), in order.
    pub written: u64,
    /// Connections that broke under it.
    pub reconnects: u32,
    /// Errors of reconnect attempts (the last few).
    pub errors: Vec<String>,
    /// Own keys acknowledged when the first connection broke.
    pub acked_before_reconnect: Option<usize>,
}

impl WriterReport {
    pub fn written_keys(&self) -> BTreeSet<String> {
        (0..self.written)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect()
    }
}

/// Writes keys `PREFIX-i` (one update message each, some with array/text content too) to
/// `urls[0]` until `stop`; with `ack`, at most [`ACK_WINDOW`] unacknowledged. When the
/// connection breaks it reconnects to the next URL of `urls` (round robin) and syncs (its
/// unsent and unacked edits go up with the sync). At the end it waits for the acks of what it
/// sent on its last connection, and for the server to send back anything it lacks.
pub async fn writer(
    name: String,
    urls: Vec<String>,
    prefix: String,
    ack: bool,
    pace: Duration,
    stop: CancellationToken,
) -> WriterReport {
    writer_with(name, urls, prefix, ack, pace, false, stop).await
}

/// [`writer`]; with `deletes`, every 7th edit also removes the writer's key written 3 edits
/// earlier (compare contents, not key sets, then).
pub async fn writer_with(
    name: String,
    urls: Vec<String>,
    prefix: String,
    ack: bool,
    pace: Duration,
    deletes: bool,
    stop: CancellationToken,
) -> WriterReport {
    let mut peer = Peer::connect(&name, &urls[0], ack).await;
    let mut written = 0u64;
    let mut reconnects = 0u32;
    let mut errors = Vec::new();
    let mut next_url = 1usize;
    let mut acked_before_reconnect = None;
    while !stop.is_cancelled() {
        if !peer.is_connected() {
            acked_before_reconnect.get_or_insert(peer.acked.len());
            reconnects += 1;
            let url = urls[next_url % urls.len()].clone();
            next_url += 1;
            if let Err(e) = peer.try_connect(&url).await {
                errors.push(e);
                if errors.len() > 20 {
                    errors.remove(0);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        if ack && peer.unacked() >= ACK_WINDOW {
            let _ = peer.pump(Duration::from_millis(50)).await;
            continue;
        }
        let i = written;
        let key = format!("{prefix}-{i}");
        let k = key.clone();
        let tag = prefix.clone();
        let sent = peer
            .edit(Some(key), move |r, txn| {
                r.map.insert(txn, k, i as i64);
                if deletes && i % 7 == 6 {
                    r.map.remove(txn, &format!("{tag}-{}", i - 3));
                }
                if i % 10 == 3 {
                    peer::push_extra(r, txn, &tag, i);
                }
            })
            .await;
        // The edit is in the local doc either way; a failed send goes up with the next sync.
        written += 1;
        let _ = sent;
        // Handle whatever already arrived (acks, remote updates) without waiting.
        while let Ok(Some(_)) = peer.pump(Duration::ZERO).await {}
        tokio::time::sleep(pace).await;
    }
    // Let the last connection confirm what it has (reconnecting once if it just broke).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !peer.is_connected() {
            let url = urls[next_url % urls.len()].clone();
            next_url += 1;
            if let Err(e) = peer.try_connect(&url).await {
                errors.push(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if !ack || peer.wait_all_acked(Duration::from_secs(15)).await {
            break;
        }
    }
    WriterReport {
        peer,
        prefix,
        written,
        reconnects,
        errors,
        acked_before_reconnect,
    }
}

/// A peer that listens on `url` until `stop` or until its connection ends (no reconnect):
/// what it holds at the end is what that node relayed to it.
pub async fn observer(name: String, url: String, stop: CancellationToken) -> Peer {
    let mut peer = Peer::connect(&name, &url, false).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = peer.pump(Duration::from_secs(3600)) => if r.is_err() { break },
        }
    }
    peer
}

/// Connects a fresh client to `url` and handles frames until its document covers `sv` and holds
/// every key of `keys` (or `timeout`); returns it (the caller asserts on it).
pub async fn fresh_reader(
    name: &str,
    url: &str,
    sv: &yrs::StateVector,
    keys: &BTreeSet<String>,
    timeout: Duration,
) -> Peer {
    let mut p = Peer::connect(name, url, false).await;
    p.wait_until(timeout, |p| {
        peer::sv_covers(&p.state_vector(), sv) && keys.is_subset(&p.keys())
    })
    .await;
    p
}

/// Panics unless `doc` holds every key of `expected`, naming what is missing.
pub fn assert_has_keys(what: &str, got: &BTreeSet<String>, expected: &BTreeSet<String>) {
    let missing: Vec<&String> = expected.difference(got).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} expected keys missing, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Writes keys `PREFIX-i` for `range` on a connected ack peer (at most [`ACK_WINDOW`]
/// unacknowledged) and waits until all are acknowledged; panics when the connection breaks.
pub async fn write_acked(peer: &mut Peer, prefix: &str, range: std::ops::Range<u64>) {
    assert!(peer.ack, "{}: write_acked needs an ?ack=1 peer", peer.name);
    for i in range {
        while peer.unacked() >= ACK_WINDOW {
            if let Err(e) = peer.pump(Duration::from_secs(10)).await {
                panic!("{}: connection broke while writing: {e}", peer.name);
            }
        }
        let key = format!("{prefix}-{i}");
        let k = key.clone();
        let tag = prefix.to_string();
        peer.edit(Some(key), move |r, txn| {
            r.map.insert(txn, k, i as i64);
            if i % 10 == 3 {
                peer::push_extra(r, txn, &tag, i);
            }
        })
        .await
        .unwrap_or_else(|e| panic!("write {prefix}-{i}: {e}"));
        while let Ok(Some(_)) = peer.pump(Duration::ZERO).await {}
    }
    assert!(
        peer.wait_all_acked(Duration::from_secs(30)).await,
        "{}: {} update messages still unacknowledged 30 s after the last write ({:?})",
        peer.name,
        peer.unacked(),
        peer.last_end
    );
}
