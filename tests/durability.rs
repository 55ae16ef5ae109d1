//! Durability with real processes: the `wedsync` binary is started as a child process, killed
//! with SIGKILL or stopped with SIGTERM, and restarted on the same data directory.
//!
//! The promises under test (docs/operations.md, "Durability"):
//! 1. an update is relayed only after it is durable, so whatever any client has seen survives
//!    kill -9;
//! 2. `?ack=1` acks arrive once updates are durable, and what was acked survives kill -9;
//! 3. a restart restores every document exactly.
//!
//! Run with `--nocapture` to see what each round tried and what survived.

mod common;
#[path = "process/mod.rs"]
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Received};
use futures_util::{SinkExt, StreamExt};
use process::ServerProcess;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{Message, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, Doc, GetString, Map, StateVector, Text, Transact};

/// The root map every writer here inserts into: key `PREFIX-i` for its i-th update message.
const MAP: &str = "m";
/// Unacknowledged update messages an ack writer allows itself (a realistic client window).
const ACK_WINDOW: u64 = 32;

fn map_keys(doc: &Doc) -> BTreeSet<String> {
    let map = doc.get_or_insert_map(MAP);
    let txn = doc.transact();
    map.keys(&txn).map(str::to_owned).collect()
}

/// The document's content as comparable values (every root this file writes).
fn content(doc: &Doc) -> (Any, Any, String) {
    let map = doc.get_or_insert_map(MAP);
    let arr = doc.get_or_insert_array("a");
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    (map.to_json(&txn), arr.to_json(&txn), text.get_string(&txn))
}

/// Whether `big` has at least every clock of `small`.
fn sv_covers(big: &StateVector, small: &StateVector) -> bool {
    small
        .iter()
        .all(|(client, clock)| big.get(client) >= *clock)
}

/// Reads the varuint count of a type-100 ack frame.
fn parse_ack(data: &[u8]) -> Option<u64> {
    if data.first() != Some(&100) {
        return None;
    }
    Cursor::new(&data[1..]).read_var().ok()
}

/// What one writer connection did.
#[derive(Debug)]
struct WriterReport {
    room: String,
    prefix: String,
    ack: bool,
    /// Update messages fully handed to the socket.
    sent: u64,
    /// Every ack count received, in order.
    acks: Vec<u64>,
    /// Close frame received, if any.
    close: Option<(u16, String)>,
}

impl WriterReport {
    fn acked(&self) -> u64 {
        self.acks.last().copied().unwrap_or(0)
    }

    /// Indexes of this writer's keys present in `keys`.
    fn present(&self, keys: &BTreeSet<String>) -> Vec<u64> {
        let head = format!("{}-", self.prefix);
        keys.iter()
            .filter_map(|k| k.strip_prefix(&head)?.parse().ok())
            .collect()
    }
}

/// Writes update messages (one Y.Map insert each, key `PREFIX-i`) until `stop` or until the
/// connection breaks. With `ack`, it connects with `?ack=1`, records every ack and keeps at most
/// [`ACK_WINDOW`] messages unacknowledged.
async fn writer(
    url: String,
    room: String,
    prefix: String,
    ack: bool,
    pace: Duration,
    stop: CancellationToken,
) -> WriterReport {
    let full = if ack { format!("{url}?ack=1") } else { url };
    let ws = common::connect_raw(&full).await;
    let (mut sink, mut stream) = ws.split();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let last_ack = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let acks = acks.clone();
        let last_ack = last_ack.clone();
        async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(WsMessage::Binary(data)) => {
                        if let Some(n) = parse_ack(&data) {
                            acks.lock().unwrap().push(n);
                            last_ack.store(n, Ordering::SeqCst);
                        }
                    }
                    Ok(WsMessage::Close(f)) => {
                        return f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        }
    });
    let doc = Doc::new();
    let map = doc.get_or_insert_map(MAP);
    let mut sent = 0u64;
    while !stop.is_cancelled() && !reader.is_finished() {
        if ack && sent - last_ack.load(Ordering::SeqCst) >= ACK_WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let update = {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, format!("{prefix}-{sent}"), sent as i64);
            txn.encode_update_v1()
        };
        let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
        if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(pace).await;
    }
    if stop.is_cancelled() && !reader.is_finished() {
        // Give outstanding acks a moment, then leave politely.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ack && last_ack.load(Ordering::SeqCst) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = sink.close().await;
    }
    let close = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    let acks = acks.lock().unwrap().clone();
    WriterReport {
        room,
        prefix,
        ack,
        sent,
        acks,
        close,
    }
}

/// A client that only listens until its connection ends; returns it with everything it
/// received applied to its document.
async fn observer(url: String) -> Client {
    let mut c = Client::connect(&url).await;
    loop {
        match c.recv(Duration::from_secs(60)).await {
            None | Some(Received::Close(_)) => return c,
            Some(_) => {}
        }
    }
}

/// The acks a writer received must count up and never exceed what it sent.
fn check_ack_sequence(w: &WriterReport) {
    for pair in w.acks.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{}: acks not increasing: {:?}",
            w.prefix,
            w.acks
        );
    }
    assert!(
        w.acked() <= w.sent,
        "{}: ack count {} exceeds the {} update messages sent",
        w.prefix,
        w.acked(),
        w.sent
    );
    if !w.ack {
        assert!(w.acks.is_empty(), "{}: acks without ?ack=1", w.prefix);
    }
}

/// What must be in each room after any later restart.
#[derive(Default)]
struct Expected {
    keys: BTreeSet<String>,
    sv: StateVector,
}

fn merge_sv(into: &mut StateVector, other: &StateVector) {
    for (client, clock) in other.iter() {
        into.set_max(*client, *clock);
    }
}

/// Connects a fresh client to every room and checks that everything expected is there.
async fn verify_rooms(
    server: &ServerProcess,
    expected: &BTreeMap<String, Expected>,
) -> BTreeMap<String, Client> {
    let mut out = BTreeMap::new();
    for (room, exp) in expected {
        let c = Client::connect(&server.url(room)).await;
        let keys = map_keys(&c.doc);
        let missing: Vec<&String> = exp.keys.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "{room}: {} of {} expected entries lost after restart, e.g. {:?}",
            missing.len(),
            exp.keys.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            sv_covers(&c.state_vector(), &exp.sv),
            "{room}: restored state vector {:?} is behind what clients saw {:?}",
            c.state_vector(),
            exp.sv
        );
        out.insert(room.clone(), c);
    }
    out
}

/// Promises 1 and 2 under kill -9, several rounds on one data directory: ack writers, plain
/// writers and an observer per room; SIGKILL at a random moment while they write; restart and
/// check that every acked update and every update an observer received is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_seen_or_acked_is_lost_to_kill_9() {
    crash_rounds(4, &[], true).await;
}

/// `--durability relaxed` relays before the flush, so what observers saw may be lost; acks
/// still wait for the flush, so what was acked must survive (promise 2 only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_mode_still_keeps_everything_acked() {
    crash_rounds(2, &["--durability", "relaxed"], false).await;
}

/// `rounds` rounds of write, SIGKILL, restart, verify. `seen_survives`: promise 1 holds (strict
/// mode), so every update an observer received is required after the restart too.
async fn crash_rounds(rounds: usize, args: &[&str], seen_survives: bool) {
    const ROOMS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
    let dir = tempfile::tempdir().unwrap();
    let mut expected: BTreeMap<String, Expected> = ROOMS
        .iter()
        .map(|r| (r.to_string(), Expected::default()))
        .collect();
    let mut server = ServerProcess::start(dir.path(), args);
    let started = Instant::now();
    let (mut total_sent, mut total_acked, mut total_seen) = (0u64, 0u64, 0usize);

    let mut seen_lost = 0usize;
    for round in 0..rounds {
        let stop = CancellationToken::new();
        let mut observers = Vec::new();
        for room in ROOMS {
            observers.push((room, tokio::spawn(observer(server.url(room)))));
        }
        // Observers join before the writers start.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut writers = Vec::new();
        for room in ROOMS {
            for ack in [true, false] {
                let prefix = format!("r{round}-{room}-{}", if ack { "ack" } else { "plain" });
                writers.push(tokio::spawn(writer(
                    server.url(room),
                    room.to_string(),
                    prefix,
                    ack,
                    Duration::from_millis(if ack { 1 } else { 2 }),
                    stop.clone(),
                )));
            }
        }
        let kill_after = Duration::from_millis(rand::random_range(800..2500));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        let kill_at = Instant::now();

        let mut reports = Vec::new();
        for w in writers {
            reports.push(
                tokio::time::timeout(Duration::from_secs(20), w)
                    .await
                    .expect("writer notices the dead server")
                    .expect("writer task"),
            );
        }
        let mut seen = Vec::new();
        for (room, o) in observers {
            let c = tokio::time::timeout(Duration::from_secs(20), o)
                .await
                .expect("observer notices the dead server")
                .expect("observer task");
            seen.push((room, c));
        }
        stop.cancel();
        eprintln!(
            "round {round}: SIGKILL after {} ms of writing; clients saw it within {} ms",
            kill_after.as_millis(),
            kill_at.elapsed().as_millis()
        );

        server = ServerProcess::start(dir.path(), args);
        // Everything of earlier rounds and of this one must be there.
        for w in &reports {
            check_ack_sequence(w);
            let exp = expected.get_mut(&w.room).unwrap();
            for i in 0..w.acked() {
                exp.keys.insert(format!("{}-{i}", w.prefix));
            }
        }
        if seen_survives {
            for (room, c) in &seen {
                let exp = expected.get_mut(*room).unwrap();
                exp.keys.extend(map_keys(&c.doc));
                merge_sv(&mut exp.sv, &c.state_vector());
            }
        }
        let restored = verify_rooms(&server, &expected).await;
        for (room, c) in &seen {
            let lost = map_keys(&c.doc)
                .difference(&map_keys(&restored[*room].doc))
                .count();
            if lost > 0 {
                eprintln!("  {room}: {lost} updates the observer had seen are gone");
            }
            seen_lost += lost;
        }

        for w in &reports {
            let keys = map_keys(&restored[&w.room].doc);
            let mut present = w.present(&keys);
            present.sort_unstable();
            // Updates of one connection are stored in the order sent: what survived is a
            // prefix of what was sent, never a set with holes, never more than was sent.
            let n = present.len() as u64;
            assert!(
                present.iter().copied().eq(0..n),
                "{}: surviving updates are not a prefix 0..{n}: first ones {:?}",
                w.prefix,
                &present[..present.len().min(10)]
            );
            assert!(n <= w.sent, "{}: {n} stored but {} sent", w.prefix, w.sent);
            let observed = seen
                .iter()
                .find(|(r, _)| *r == w.room)
                .map(|(_, c)| w.present(&map_keys(&c.doc)).len())
                .unwrap_or(0);
            eprintln!(
                "  {:<24} sent {:>5}  acked {:>5}  seen by observer {:>5}  restored {:>5}",
                w.prefix,
                w.sent,
                w.acked(),
                observed,
                n
            );
            total_sent += w.sent;
            total_acked += w.acked();
            total_seen += observed;
        }
        for (room, c) in restored {
            eprintln!(
                "  {room}: {} entries restored in total",
                map_keys(&c.doc).len()
            );
        }
    }
    server.stop().await;
    eprintln!(
        "{rounds} rounds {args:?} in {} s: {total_sent} update messages sent, {total_acked} \
         acked (none lost), {total_seen} seen by observers ({seen_lost} of them lost)",
        started.elapsed().as_secs()
    );
    // The checks above are only meaningful if the promises were exercised.
    assert!(total_acked > 0, "no ack arrived in any round");
    assert!(
        total_seen > 0,
        "no observer received any update in any round"
    );
}

/// SIGTERM: every client is closed with 1001, the process exits 0, and a restart has exactly
/// the state clients had; acked updates of a writer busy during the shutdown survive too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_exits_0_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]);

    // A quiet room: written, acknowledged, observed, then idle at shutdown.
    let mut calm = Client::connect(&format!("{}?ack=1", server.url("calm"))).await;
    let m = calm.doc.get_or_insert_map(MAP);
    let t = calm.doc.get_or_insert_text("t");
    for i in 0..200u32 {
        calm.edit(|txn| {
            m.insert(txn, format!("k{i}"), i);
            t.push(txn, "x");
            if i % 10 == 9 {
                m.remove(txn, &format!("k{}", i - 5));
            }
        })
        .await;
    }
    assert!(
        calm.recv_until(|r| matches!(r, Received::Ack(n) if *n >= 201))
            .await
            .is_some(),
        "201 acks (the handshake's step 2 and 200 edits)"
    );
    let mut calm_watcher = Client::connect(&server.url("calm")).await;
    assert_eq!(calm_watcher.state_vector(), calm.state_vector());
    let before_sv = calm.state_vector();
    let before = content(&calm.doc);

    // A busy room: a writer still writing when SIGTERM arrives.
    let busy_watcher = tokio::spawn(observer(server.url("busy")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = CancellationToken::new();
    let busy = tokio::spawn(writer(
        server.url("busy"),
        "busy".into(),
        "busy-ack".into(),
        true,
        Duration::from_millis(1),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;

    server.sigterm();
    let calm_close = calm.wait_close().await;
    let watcher_close = calm_watcher.wait_close().await;
    let busy = tokio::time::timeout(Duration::from_secs(20), busy)
        .await
        .expect("busy writer ends")
        .unwrap();
    let busy_seen = tokio::time::timeout(Duration::from_secs(20), busy_watcher)
        .await
        .expect("busy observer ends")
        .unwrap();
    stop.cancel();
    let status = server
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", server.logs()));
    eprintln!(
        "SIGTERM: exit {status:?}; calm close {calm_close:?}; busy writer sent {} acked {} close {:?}; busy observer close {:?}",
        busy.sent,
        busy.acked(),
        busy.close,
        busy_seen.closed
    );
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.logs()
    );
    for (who, close) in [
        ("calm writer", calm_close),
        ("calm watcher", watcher_close),
        ("busy writer", busy.close.clone()),
        ("busy observer", busy_seen.closed.clone().flatten()),
    ] {
        assert_eq!(close.map(|c| c.0), Some(1001), "{who} is closed with 1001");
    }
    check_ack_sequence(&busy);
    assert!(busy.acked() > 0, "the busy writer got acks before shutdown");

    let server = ServerProcess::start(dir.path(), &[]);
    let after = Client::connect(&server.url("calm")).await;
    assert_eq!(
        after.state_vector(),
        before_sv,
        "state vector after restart"
    );
    assert_eq!(content(&after.doc), before, "content after restart");
    let busy_after = Client::connect(&server.url("busy")).await;
    let keys = map_keys(&busy_after.doc);
    let restored = busy.present(&keys).len() as u64;
    for i in 0..busy.acked() {
        assert!(
            keys.contains(&format!("busy-ack-{i}")),
            "acked busy-ack-{i} lost"
        );
    }
    let seen = map_keys(&busy_seen.doc);
    assert!(
        seen.is_subset(&keys),
        "the busy observer saw updates that were lost"
    );
    assert!(sv_covers(
        &busy_after.state_vector(),
        &busy_seen.state_vector()
    ));
    eprintln!(
        "busy room: sent {}, acked {}, observed {}, restored {restored}",
        busy.sent,
        busy.acked(),
        seen.len()
    );
    drop(server);
}

/// Writes `n` update messages with `?ack=1` (map inserts, some deletions, text and array
/// pushes) and waits until all are acknowledged.
async fn write_acked(url: &str, n: u32, tag: &str) -> Client {
    let mut c = Client::connect(&format!("{url}?ack=1")).await;
    // The handshake's sync step 2 (this client's empty diff) is an update message too: it is
    // stored and counted like any other.
    assert!(
        c.recv_until(|r| matches!(r, Received::Ack(1)))
            .await
            .is_some(),
        "the handshake's step 2 is acked"
    );
    edit_acked(&mut c, 0..n, tag).await;
    c
}

/// Makes one edit per index on a `?ack=1` client and waits until every one is acknowledged.
async fn edit_acked(c: &mut Client, range: std::ops::Range<u32>, tag: &str) {
    let m = c.doc.get_or_insert_map(MAP);
    let a = c.doc.get_or_insert_array("a");
    let t = c.doc.get_or_insert_text("t");
    let expected = c.acks + u64::from(range.len() as u32);
    for i in range {
        c.edit(|txn| {
            m.insert(txn, format!("{tag}-{i}"), i);
            if i % 7 == 6 {
                m.remove(txn, &format!("{tag}-{}", i - 3));
            }
            if i % 5 == 0 {
                a.push_back(txn, i);
                t.insert(txn, 0, &format!("{i};"));
            }
        })
        .await;
    }
    let acked = c
        .recv_until(|r| matches!(r, Received::Ack(k) if *k >= expected))
        .await;
    assert!(
        matches!(acked, Some(Received::Ack(k)) if k == expected),
        "ack count reaches exactly {expected}: {acked:?}"
    );
}

/// Polls /readyz until the number of loaded rooms is `n`.
async fn wait_rooms_loaded(server: &ServerProcess, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok(resp) = reqwest::get(server.http("/readyz")).await {
            if let Ok(v) = resp.json::<serde_json::Value>().await {
                if v["rooms_loaded"].as_u64() == Some(n) {
                    return;
                }
                last = v;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rooms_loaded never became {n}; last /readyz: {last}");
}

fn inspect(dir: &std::path::Path, doc: &str) -> serde_json::Value {
    let out = process::command()
        .args(["doc", "inspect", doc, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "doc inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Promise 3: state vector and content are equal after a restart, after the room compacted
/// while running (> 500 updates, then kill -9, so no shutdown compaction helps), and after an
/// idle unload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_restore_documents_exactly_after_compaction_and_idle_unload() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wedsync.toml");
    std::fs::write(&config, "[limits]\nroom_idle_unload = 0.5\n").unwrap();
    let data = dir.path().join("data");
    let cfg = ["--config", config.to_str().unwrap()];
    let mut server = ServerProcess::start(&data, &cfg);

    let mut writer = write_acked(&server.url("rt"), 620, "w").await;
    // A room compacts after delivering a commit; the next commit's flush makes the compaction
    // durable. One more acknowledged edit guarantees that flush before the kill.
    edit_acked(&mut writer, 620..621, "w").await;
    let (sv, body) = (writer.state_vector(), content(&writer.doc));
    server.kill9();
    let info = inspect(&data, "rt");
    eprintln!("after 621 updates and kill -9: {info}");
    assert!(
        info["snapshot_bytes"].as_u64().unwrap() > 0,
        "the room compacted while running"
    );
    assert!(
        info["log_entries"].as_u64().unwrap() < 500,
        "compaction folded log entries"
    );
    let mut server = ServerProcess::start(&data, &cfg);
    let c = Client::connect(&server.url("rt")).await;
    assert_eq!(
        c.state_vector(),
        sv,
        "state vector after compaction + kill -9"
    );
    assert_eq!(content(&c.doc), body, "content after compaction + kill -9");
    drop(c);

    // Idle unload: every client gone, the room leaves memory; a new client loads it again.
    drop(writer);
    wait_rooms_loaded(&server, 0).await;
    let more = write_acked(&server.url("rt"), 30, "more").await;
    let (sv, body) = (more.state_vector(), content(&more.doc));
    drop(more);
    wait_rooms_loaded(&server, 0).await;
    let c = Client::connect(&server.url("rt")).await;
    assert_eq!(c.state_vector(), sv, "state vector after idle unload");
    assert_eq!(content(&c.doc), body, "content after idle unload");
    drop(c);
    wait_rooms_loaded(&server, 0).await;

    server.stop().await;
    let server = ServerProcess::start(&data, &cfg);
    let c = Client::connect(&server.url("rt")).await;
    assert_eq!(c.state_vector(), sv, "state vector after unload + restart");
    assert_eq!(content(&c.doc), body, "content after unload + restart");
    let map_len = map_keys(&c.doc).len();
    eprintln!("rt: {map_len} map entries, state vector equal across 3 restarts");
    drop(server);
}

/// A damaged record quarantines its document only: start-up completes, the damaged
/// document's clients are refused with 1011 and a reason, other documents are served, and the
/// server reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_quarantines_only_its_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]);
    let good = write_acked(&server.url("good-doc"), 40, "g").await;
    let bad = write_acked(&server.url("bad-doc"), 40, "b").await;
    let (good_sv, good_body) = (good.state_vector(), content(&good.doc));
    drop((good, bad));
    server.stop().await;

    // Flip the last payload byte of one of bad-doc's records (its checksum then fails).
    let flipped = {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("docs/v1").unwrap();
        let name = b"bad-doc";
        let mut prefix = (name.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(name);
        let (key, value) = tree
            .scan_prefix(&prefix)
            .next()
            .expect("bad-doc has a record")
            .unwrap();
        let mut value = value.to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x40;
        tree.insert(&key, value).unwrap();
        db.flush().unwrap();
        key.len()
    };
    eprintln!("flipped one byte of a bad-doc record (key of {flipped} bytes)");

    let t0 = Instant::now();
    let server = ServerProcess::start(dir.path(), &[]);
    let startup = t0.elapsed();
    assert!(
        startup < Duration::from_secs(10),
        "start-up took {startup:?}"
    );

    let mut ws = common::connect_raw(&server.url("bad-doc")).await;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(WsMessage::Close(f)) => {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the damaged document's client is closed");
    eprintln!("bad-doc client closed with {close:?}");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1011);
    assert!(!reason.is_empty(), "the close frame gives a reason");

    let c = Client::connect(&server.url("good-doc")).await;
    assert_eq!(c.state_vector(), good_sv);
    assert_eq!(content(&c.doc), good_body);
    let http = reqwest::get(server.http("/api/docs/bad-doc/update"))
        .await
        .unwrap();
    assert!(
        http.status().is_server_error(),
        "HTTP read of the quarantined document: {}",
        http.status()
    );
    let ready = reqwest::get(server.http("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "/readyz with a quarantined document");
    eprintln!(
        "start-up {} ms; good-doc served; /readyz 200",
        startup.as_millis()
    );
    drop(server);
}
