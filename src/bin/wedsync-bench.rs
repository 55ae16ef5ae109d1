//! `wedsync-bench`: a y-websocket load generator with lightweight clients.
//!
//! N connections over M rooms (client i joins room i mod M), the first K clients of each room
//! write at R updates/s each. No client holds a `Doc`: writers send hand-encoded Y.Text
//! inserts whose string carries writer, sequence number and send time (see `bench/wire.rs`);
//! every client parses the strings it receives, so fan-out latency (send to receipt at every
//! other client of the room), losses and duplicates are measured without a CRDT. Prints one
//! JSON line. `--ramp` raises the rate step by step until p99 passes `--p99-bound-ms`.
//! `--proto hocuspocus` speaks Hocuspocus' multiplexed framing (document name before every
//! message, an auth message first) so @hocuspocus/server can be measured the same way.

#[path = "../bench/procstat.rs"]
mod procstat;
#[path = "../bench/wire.rs"]
mod wire;

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// y-websocket: one message per frame, room in the URL path.
    Yws,
    /// Hocuspocus 2+: every message prefixed with the document name, auth first.
    Hocuspocus,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "y-websocket load generator: fan-out latency, loss, server RSS/CPU")]
struct Args {
    /// Server base URL; the room name is appended as the path. Several, comma-separated
    /// (cluster nodes): the k-th client of every room uses URL k mod N, so each room's writer
    /// and readers sit on different nodes (cross-node fan-out).
    #[arg(long, default_value = "ws://127.0.0.1:1234")]
    url: String,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Rooms (client i joins room i mod rooms).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Writers per room (0: idle connections).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Updates per second per writer (the starting rate with --ramp).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of writing before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Ask for durable acknowledgements (`?ack=1`).
    #[arg(long)]
    ack: bool,
    /// Spread client sockets over source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    src_ips: u8,
    /// Server process to sample (/proc/PID: RSS and CPU).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    #[arg(long, value_enum, default_value = "yws")]
    proto: Proto,
    /// Room names are PREFIX-0 .. PREFIX-(M-1).
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// Raise the rate by --ramp-factor every --step-secs until p99 > --p99-bound-ms.
    #[arg(long)]
    ramp: bool,
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    #[arg(long, default_value_t = 1.3)]
    ramp_factor: f64,
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 25)]
    max_steps: usize,
    /// Idle mode: seconds to hold the connections before sampling the server's RSS.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Seconds allowed for connecting everyone.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Instead of running a load: write --seed-docs documents of --seed-kib KiB each, named
    /// like the rooms (PREFIX-i), into a wedsync data directory (the server must be stopped).
    #[arg(long)]
    seed_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1000)]
    seed_docs: usize,
    #[arg(long, default_value_t = 100)]
    seed_kib: usize,
}

/// Latency shards: receivers record into `shard[conn % SHARDS]`, so locks rarely collide.
const SHARDS: usize = 32;

struct Shared {
    hist: Vec<Mutex<Histogram<u64>>>,
    recording: AtomicBool,
    /// In-order first deliveries since the start (all phases).
    delivered: AtomicU64,
    /// Deliveries counted while `recording`.
    window: AtomicU64,
    duplicates: AtomicU64,
    /// Sequence numbers skipped (a later one arrived first: a loss, unless it shows up later).
    gaps: AtomicU64,
    unparsed: AtomicU64,
    acks: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    close_codes: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per room: clients ready, updates sent.
    room_ready: Vec<AtomicU64>,
    room_sent: Vec<AtomicU64>,
    /// Per-writer rate in milli-updates per second.
    rate_milli: AtomicU64,
    writing: AtomicBool,
    connect_errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Shared {
    fn new(rooms: usize) -> Shared {
        Shared {
            hist: (0..SHARDS)
                .map(|_| Mutex::new(new_hist()))
                .collect::<Vec<_>>(),
            recording: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            window: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            close_codes: Mutex::default(),
            room_ready: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            room_sent: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            rate_milli: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            connect_errors: Mutex::default(),
        }
    }

    /// Deliveries owed: every update sent reaches every other ready client of its room.
    fn expected(&self) -> u64 {
        self.room_sent
            .iter()
            .zip(&self.room_ready)
            .map(|(s, r)| s.load(Ordering::Relaxed) * r.load(Ordering::Relaxed).saturating_sub(1))
            .sum()
    }

    fn sent(&self) -> u64 {
        self.room_sent
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum()
    }

    fn reset_window(&self) {
        for h in &self.hist {
            h.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
        self.window.store(0, Ordering::Relaxed);
    }

    /// (p50, p99, max) in ms, samples.
    fn percentiles(&self) -> (f64, f64, f64, u64) {
        let mut all = new_hist();
        for h in &self.hist {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.add(&*h);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        (
            ms(all.value_at_quantile(0.5)),
            ms(all.value_at_quantile(0.99)),
            ms(all.max()),
            all.len(),
        )
    }
}

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 µs .. 120 s, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct ClientSpec {
    index: usize,
    room: usize,
    /// Room-local writer index.
    writer: Option<u32>,
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.seed_dir {
        println!("{}", seed(dir, &args));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(run(args));
    println!("{out}");
    // Sockets close with the runtime; do not wait for the servers' close handshakes.
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Writes documents of about `seed_kib` KiB (a map of 200-byte notes) as stored snapshots.
fn seed(dir: &std::path::Path, args: &Args) -> serde_json::Value {
    use wedsync::store::{SledStore, Store};
    use yrs::{Doc, Map, ReadTxn, StateVector, Transact};
    let started = std::time::Instant::now();
    let store = SledStore::open(dir, Duration::from_secs(30)).expect("open the data directory");
    let note = "x".repeat(200);
    let mut bytes = 0usize;
    for i in 0..args.seed_docs {
        let doc = Doc::new();
        let guests = doc.get_or_insert_map("guests");
        {
            let mut txn = doc.transact_mut();
            for g in 0..(args.seed_kib * 1024 / 220).max(1) {
                guests.insert(&mut txn, format!("g{g}"), note.clone());
            }
        }
        let snapshot = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        bytes += snapshot.len();
        let name = format!("{}-{i}", args.room_prefix);
        store.compact(&name, &snapshot, 0).expect("store snapshot");
    }
    store.flush().expect("flush");
    json!({"seeded_docs": args.seed_docs, "bytes": bytes, "secs": round3(started.elapsed().as_secs_f64())})
}

fn server_addr(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("ws://")
        .expect("--url must start with ws://");
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("--url host:port must resolve")
}

async fn run(args: Args) -> serde_json::Value {
    let args = Arc::new(args);
    let shared = Arc::new(Shared::new(args.rooms.max(1)));
    let targets: Vec<(String, SocketAddr)> = args
        .url
        .split(',')
        .map(|u| {
            let u = u.trim().trim_end_matches('/').to_owned();
            let addr = server_addr(&u);
            (u, addr)
        })
        .collect();
    let pid = args.server_pid;
    let rss_before = procstat::rss_kib(pid);
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));

    let connect_started = Instant::now();
    let self_cpu_0 = procstat::cpu(None);
    let mut tasks = Vec::with_capacity(args.conns);
    for index in 0..args.conns {
        let room = index % args.rooms.max(1);
        let local = index / args.rooms.max(1);
        let writer = (local < args.writers).then_some(local as u32);
        let spec = ClientSpec {
            index,
            room,
            writer,
        };
        tasks.push(tokio::spawn(client(
            spec,
            args.clone(),
            targets[local % targets.len()].clone(),
            shared.clone(),
            sem.clone(),
            go_rx.clone(),
            stop_rx.clone(),
        )));
    }
    // Wait for every client to be ready (or to have failed).
    let deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < args.conns
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let ready = shared.ready.load(Ordering::Relaxed);
    let mut out = json!({
        "label": args.label,
        "url": args.url,
        "proto": format!("{:?}", args.proto).to_lowercase(),
        "conns": args.conns,
        "rooms": args.rooms,
        "writers_per_room": args.writers,
        "ack": args.ack,
        "threads": args.threads,
        "ready": ready,
        "connect_failed": shared.failed.load(Ordering::Relaxed),
        "connect_errors": *shared.connect_errors.lock().unwrap_or_else(|p| p.into_inner()),
        "connect_secs": round3(connect_secs),
        "connects_per_sec": round3(ready as f64 / connect_secs.max(1e-9)),
        "date": chrono_like_now(),
    });
    let server_cpu_connect = procstat::cpu(pid);

    if args.writers == 0 || args.rate <= 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let rss_after = procstat::rss_kib(pid);
        out["server_rss_kib_before"] = json!(rss_before);
        out["server_rss_kib"] = json!(rss_after);
        if let (Some(a), Some(b)) = (rss_before, rss_after) {
            out["server_rss_per_conn_kib"] =
                json!(round3((b as f64 - a as f64) / ready.max(1) as f64));
        }
        out["bench_rss_kib"] = json!(procstat::rss_kib(None));
        out["bench_rss_per_conn_kib"] =
            json!(procstat::rss_kib(None).map(|r| round3(r as f64 / ready.max(1) as f64)));
        out["closed_unexpectedly"] = json!(shared.closed.load(Ordering::Relaxed));
        out["close_codes"] = json!(*shared.close_codes.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = server_cpu_connect;
        finish(&stop_tx, tasks).await;
        return out;
    }

    // Writers start; the first `warmup` seconds are not measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared
        .rate_milli
        .store((args.rate * 1000.0) as u64, Ordering::Relaxed);
    shared.writing.store(true, Ordering::Relaxed);
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    if args.ramp {
        let mut steps = Vec::new();
        let mut rate = args.rate;
        let mut best: Option<serde_json::Value> = None;
        for _ in 0..args.max_steps {
            shared
                .rate_milli
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let step = measure(&shared, pid, args.step_secs, rate, &args).await;
            let p99 = step["p99_ms"].as_f64().unwrap_or(f64::MAX);
            let closed = shared.closed.load(Ordering::Relaxed);
            let ok = p99 <= args.p99_bound_ms && closed == 0;
            steps.push(step.clone());
            if !ok {
                break;
            }
            best = Some(step);
            rate *= args.ramp_factor;
        }
        out["ramp_bound_ms"] = json!(args.p99_bound_ms);
        out["steps"] = json!(steps);
        out["sustained"] = json!(best);
        out["sustained_deliveries_per_sec"] = best
            .as_ref()
            .map(|b| b["deliveries_per_sec"].clone())
            .unwrap_or(json!(null));
    } else {
        let m = measure(&shared, pid, args.duration, args.rate, &args).await;
        if let (Some(o), Some(m)) = (out.as_object_mut(), m.as_object()) {
            for (k, v) in m {
                o.insert(k.clone(), v.clone());
            }
        }
    }

    // Stop writing, then wait for the deliveries in flight.
    shared.writing.store(false, Ordering::Relaxed);
    let drain_start = Instant::now();
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let d = shared.delivered.load(Ordering::Relaxed);
        if d >= shared.expected() {
            break;
        }
        if d != last {
            last = d;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let expected = shared.expected();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    out["sent_total"] = json!(shared.sent());
    out["expected_deliveries"] = json!(expected);
    out["delivered_total"] = json!(delivered);
    out["lost"] = json!(expected.saturating_sub(delivered));
    out["duplicated"] = json!(shared.duplicates.load(Ordering::Relaxed));
    out["out_of_order_gaps"] = json!(shared.gaps.load(Ordering::Relaxed));
    out["unparsed"] = json!(shared.unparsed.load(Ordering::Relaxed));
    out["acks"] = json!(shared.acks.load(Ordering::Relaxed));
    out["closed_unexpectedly"] = json!(shared.closed.load(Ordering::Relaxed));
    out["close_codes"] = json!(*shared.close_codes.lock().unwrap_or_else(|p| p.into_inner()));
    out["server_rss_kib_before"] = json!(rss_before);
    out["server_rss_kib"] = json!(procstat::rss_kib(pid));
    out["bench_cpu_secs_total"] = json!(procstat::cpu_secs(self_cpu_0, procstat::cpu(None)));
    finish(&stop_tx, tasks).await;
    out
}

/// One measured window at the current rate.
async fn measure(
    shared: &Shared,
    pid: Option<u32>,
    secs: f64,
    rate: f64,
    args: &Args,
) -> serde_json::Value {
    shared.reset_window();
    let sent0 = shared.sent();
    shared.recording.store(true, Ordering::Relaxed);
    let s0 = procstat::cpu(pid);
    let b0 = procstat::cpu(None);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    shared.recording.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = procstat::cpu(pid);
    let b1 = procstat::cpu(None);
    let (p50, p99, max, samples) = shared.percentiles();
    let window = shared.window.load(Ordering::Relaxed);
    let sent = shared.sent() - sent0;
    let server_cpu = procstat::cpu_percent(s0, s1);
    let dps = window as f64 / elapsed;
    json!({
        "rate_per_writer": round3(rate),
        "target_updates_per_sec": round3(rate * (args.writers * args.rooms) as f64),
        "updates_per_sec": round3(sent as f64 / elapsed),
        "deliveries_per_sec": round3(dps),
        "p50_ms": round3(p50),
        "p99_ms": round3(p99),
        "max_ms": round3(max),
        "samples": samples,
        "server_cpu_pct": server_cpu.map(round3),
        "server_cpu_us_per_delivery": server_cpu.map(|c| round3(c / 100.0 * 1e6 / dps.max(1e-9))),
        "bench_cpu_pct": procstat::cpu_percent(b0, b1).map(round3),
        "server_rss_kib": procstat::rss_kib(pid),
        "secs": round3(elapsed),
    })
}

async fn finish(stop: &watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    let _ = stop.send(true);
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// UTC date and time without a date crate.
fn chrono_like_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn note(map: &Mutex<std::collections::BTreeMap<String, u64>>, key: String) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
}

#[allow(clippy::too_many_arguments)]
async fn client(
    spec: ClientSpec,
    args: Arc<Args>,
    target: (String, SocketAddr),
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let room_name = format!("{}-{}", args.room_prefix, spec.room);
    let hocus = args.proto == Proto::Hocuspocus;
    let mut ws = {
        let Ok(_permit) = sem.acquire().await else {
            return;
        };
        match connect(&args, &target, &room_name, spec.index).await {
            Ok(ws) => ws,
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                note(&shared.connect_errors, e);
                return;
            }
        }
    };
    let frame = |msg: &[u8]| -> Message {
        if hocus {
            Message::binary(wire::with_doc_name(&room_name, msg))
        } else {
            Message::binary(msg.to_vec())
        }
    };
    if hocus {
        let _ = ws
            .feed(Message::binary(wire::hocuspocus_auth(&room_name)))
            .await;
    }
    if ws.send(frame(&wire::SYNC_STEP1_EMPTY)).await.is_err() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        note(&shared.connect_errors, "send failed".into());
        return;
    }

    let mut ready = false;
    let mut last_seq = vec![0u32; args.writers];
    let shard = spec.index % SHARDS;
    let mut writer = spec
        .writer
        .map(|w| wire::Writer::new(1_000_000 + spec.index as u64 * 7 + u64::from(w)));
    let mut seq = 0u32;
    let mut next_send: Option<Instant> = None;
    loop {
        let write_at = next_send;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = go.changed(), if writer.is_some() && next_send.is_none() => {
                let rate = shared.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
                // Spread the writers' first sends over one interval.
                let interval = 1.0 / rate.max(0.001);
                let offset = (spec.index as f64 * 0.618_034).fract() * interval;
                next_send = Some(Instant::now() + Duration::from_secs_f64(offset));
            }
            _ = async { tokio::time::sleep_until(write_at.unwrap_or_else(Instant::now)).await }, if write_at.is_some() => {
                let now = Instant::now();
                let rate = shared.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
                if !shared.writing.load(Ordering::Relaxed) || rate <= 0.0 {
                    next_send = Some(now + Duration::from_millis(50));
                    continue;
                }
                let interval = Duration::from_secs_f64(1.0 / rate);
                let mut due = write_at.unwrap_or(now);
                if now.duration_since(due) > Duration::from_millis(200) {
                    due = now; // fell far behind (generator overloaded): do not burst
                }
                let (Some(w), Some(wi)) = (writer.as_mut(), spec.writer) else { continue };
                let mut n = 0u64;
                let mut failed = false;
                while due <= now {
                    seq += 1;
                    let msg = w.update_message(&wire::stamp(wi, seq, now_nanos()));
                    if ws.feed(frame(&msg)).await.is_err() {
                        failed = true;
                        break;
                    }
                    n += 1;
                    due += interval;
                }
                if failed || ws.flush().await.is_err() {
                    break;
                }
                shared.room_sent[spec.room].fetch_add(n, Ordering::Relaxed);
                next_send = Some(due);
            }
            msg = ws.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(f))) => {
                        if !*stop.borrow() {
                            shared.closed.fetch_add(1, Ordering::Relaxed);
                            note(&shared.close_codes, f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "none".into()));
                        }
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        if !*stop.borrow() {
                            shared.closed.fetch_add(1, Ordering::Relaxed);
                            note(&shared.close_codes, format!("error: {e}"));
                        }
                        break;
                    }
                    None => {
                        if !*stop.borrow() {
                            shared.closed.fetch_add(1, Ordering::Relaxed);
                            note(&shared.close_codes, "eof".into());
                        }
                        break;
                    }
                };
                let body: &[u8] = if hocus {
                    match wire::strip_doc_name(&data) { Some(b) => b, None => { shared.unparsed.fetch_add(1, Ordering::Relaxed); continue; } }
                } else {
                    &data
                };
                match wire::parse_message(body) {
                    Some(wire::Received::Handshake) => {
                        if body.get(1) == Some(&0) {
                            // The server's step 1: answer with our (empty) document.
                            if ws.send(frame(&wire::SYNC_STEP2_EMPTY)).await.is_err() {
                                break;
                            }
                        }
                        if !ready {
                            ready = true;
                            shared.room_ready[spec.room].fetch_add(1, Ordering::Relaxed);
                            shared.ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(wire::Received::Update(strings)) => {
                        let now = now_nanos();
                        let recording = shared.recording.load(Ordering::Relaxed);
                        let mut fresh = 0u64;
                        let mut hist = None;
                        for (w, s, sent) in wire::records(&strings) {
                            if Some(w) == spec.writer {
                                continue; // our own update echoed (y-websocket-server does)
                            }
                            let Some(last) = last_seq.get_mut(w as usize) else {
                                shared.unparsed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            if s <= *last {
                                shared.duplicates.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            if s > *last + 1 {
                                shared.gaps.fetch_add(u64::from(s - *last - 1), Ordering::Relaxed);
                            }
                            *last = s;
                            fresh += 1;
                            if recording {
                                let h = hist.get_or_insert_with(|| shared.hist[shard].lock().unwrap_or_else(|p| p.into_inner()));
                                h.saturating_record(now.saturating_sub(sent) / 1000);
                            }
                        }
                        drop(hist);
                        shared.delivered.fetch_add(fresh, Ordering::Relaxed);
                        if recording {
                            shared.window.fetch_add(fresh, Ordering::Relaxed);
                        }
                    }
                    Some(wire::Received::Other) => {
                        if body.first() == Some(&100) {
                            shared.acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        shared.unparsed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(
    args: &Args,
    (base, addr): &(String, SocketAddr),
    room: &str,
    index: usize,
) -> Result<Ws, String> {
    let ip = Ipv4Addr::new(127, 0, 0, 1 + (index % args.src_ips.max(1) as usize) as u8);
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(ip.into(), 0))
        .map_err(|e| format!("bind: {e}"))?;
    let tcp = sock
        .connect(*addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let url = if args.proto == Proto::Hocuspocus {
        format!("{base}/")
    } else if args.ack {
        format!("{base}/{room}?ack=1")
    } else {
        format!("{base}/{room}")
    };
    // Small buffers: the generator holds up to ~19k sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}
