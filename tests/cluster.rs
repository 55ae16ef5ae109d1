//! Cluster mode (issue 8) with real processes only: a private `redis-server` on a free loopback
//! port (tests/cluster/redis.rs) and three (sometimes four) `wedsync serve --redis URL
//! --node-id nI` child processes (tests/process/mod.rs), driven by yrs clients
//! (tests/cluster/peer.rs) and npm `WebsocketProvider` clients (tests/js/cluster.mjs).
//!
//! Needs `redis-server` (7.x) on PATH (or `WEDSYNC_TEST_REDIS_SERVER`), and for the JS test
//! `npm ci --prefix tests/js`; `scripts/test.sh` installs both. The tests run one at a time
//! (each starts 4-5 processes) and each is bounded by a deadline; on failure the tails of every
//! node's log and of Redis's are printed.
//!
//! What "nothing lost" means everywhere here: every key an `?ack=1` writer had acknowledged,
//! every update any client received from any node, and every writer's whole document (writers
//! reconnect and sync after a failure, as WebsocketProvider does) is on every surviving node at
//! the end, and on a node that starts afterwards from Redis alone.

#[path = "process/mod.rs"]
mod process;

#[path = "cluster/mod.rs"]
mod cluster;

#[allow(dead_code)]
#[path = "interop/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::peer::{self, content, keys, merge_sv, sv_covers, union_doc, Peer};
use cluster::proxy::Balancer;
use cluster::redis::{Persistence, RedisServer};
use cluster::{
    assert_has_keys, fresh_reader, get_json, observer, write_acked, writer, writer_with, Cluster,
    WriterReport, SERIAL,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Map, MapPrelim, ReadTxn, StateVector, Transact, Update, WriteTxn};

const UP: &str = "wedsync_cluster_redis_up";
const DEGRADED: &str = "wedsync_cluster_degraded_rooms";
const OUTBOX: &str = "wedsync_cluster_outbox_bytes";
const REJOINS: &str = "wedsync_cluster_rejoins_total";
const REMOTE: &str = "wedsync_cluster_remote_updates_total";
const COMPACTIONS: &str = "wedsync_cluster_compactions_total";

fn updates_key(doc: &str) -> String {
    format!("wedsync:{{{doc}}}:updates")
}
fn snapshot_key(doc: &str) -> String {
    format!("wedsync:{{{doc}}}:snapshot")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs `body` under `limit`; a timeout is a failure (the cluster's logs are printed by its
/// drop).
async fn within<T>(limit: Duration, what: &str, body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

async fn join_all<T>(tasks: Vec<JoinHandle<T>>, what: &str) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            within(Duration::from_secs(60), what, t)
                .await
                .unwrap_or_else(|e| panic!("{what}: task failed: {e}")),
        );
    }
    out
}

/// What every node must hold at the end of a scenario.
struct Expected {
    keys: BTreeSet<String>,
    acked: BTreeSet<String>,
    sv: StateVector,
}

/// Everything writers wrote (their final documents) or had acknowledged, and everything
/// observers received (observers are only used with writers that never delete).
fn expected(writers: &[&WriterReport], observers: &[Peer]) -> Expected {
    let mut e = Expected {
        keys: BTreeSet::new(),
        acked: BTreeSet::new(),
        sv: StateVector::default(),
    };
    // The union of the writers' documents (a writer's copy of another writer's key may predate
    // that writer's deletion of it: only the union knows).
    let union = keys(&union_doc(writers.iter().map(|w| &w.peer.doc)));
    for w in writers {
        // A writer with deletions removed some of its own acked keys later (nobody else
        // touches them): those must be gone, not present.
        e.acked.extend(w.peer.acked.intersection(&union).cloned());
        merge_sv(&mut e.sv, &w.peer.state_vector());
    }
    e.keys.extend(union);
    for o in observers {
        e.keys.extend(o.keys());
        merge_sv(&mut e.sv, &o.state_vector());
    }
    e
}

fn report(writers: &[WriterReport], observers: &[Peer]) {
    for w in writers {
        eprintln!(
            "  writer {:<14} wrote {:>5}  acked {:>5}  connections {}  last url {}  errors {:?}",
            w.prefix,
            w.written,
            w.peer.acked.len(),
            w.peer.connections,
            w.peer.url,
            w.errors.iter().rev().take(2).collect::<Vec<_>>()
        );
    }
    for o in observers {
        eprintln!(
            "  observer {:<12} saw {:>5} keys  ended: {:?}",
            o.name,
            o.keys().len(),
            o.last_end
        );
    }
}

/// A fresh client on node `i` must hold everything expected: every acked key, every key seen,
/// the expected state vector; and (when `exact`) exactly the union of the writers' documents.
async fn check_node(
    c: &Cluster,
    i: usize,
    doc: &str,
    e: &Expected,
    exact: Option<&yrs::Doc>,
    what: &str,
) -> BTreeSet<String> {
    let id = c.nodes[i].id.clone();
    let r = fresh_reader(
        &format!("reader-{id}"),
        &c.url(i, doc),
        &e.sv,
        &e.keys,
        Duration::from_secs(30),
    )
    .await;
    let got = r.keys();
    assert_has_keys(
        &format!("{what}: node {id}, acknowledged keys"),
        &got,
        &e.acked,
    );
    assert_has_keys(
        &format!("{what}: node {id}, keys written or seen"),
        &got,
        &e.keys,
    );
    assert!(
        sv_covers(&r.state_vector(), &e.sv),
        "{what}: node {id}: state vector {:?} is behind what clients had {:?}",
        r.state_vector(),
        e.sv
    );
    if let Some(u) = exact {
        assert_eq!(
            r.state_vector(),
            u.transact().state_vector(),
            "{what}: node {id}: state vector differs from the union of all writers"
        );
        assert!(
            content(&r.doc) == content(u),
            "{what}: node {id}: content differs from the union of all writers"
        );
    }
    eprintln!("  {what}: node {id} holds {} keys, all expected", got.len());
    got
}

// ---------------------------------------------------------------------------------------------
// a. JS clients on three nodes
// ---------------------------------------------------------------------------------------------

/// Three npm `WebsocketProvider` clients, one per node, edit one wedding concurrently and
/// converge; each sees the others' awareness; the presence API of every node lists all three
/// with their nodes; a leaving client disappears everywhere (cluster.mjs checks all of it, this
/// test checks its report and the room's keys in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_clients_on_three_nodes_converge_and_see_each_other() {
    let _serial = SERIAL.lock().await;
    support::js_dir();
    let c = Cluster::start(RedisServer::start(Persistence::AofAlways), 3, 3, "");
    let room = "wedding-cluster-js";
    within(Duration::from_secs(90), "js scenario", async {
        let (b0, b1, b2) = (c.base(0), c.base(1), c.base(2));
        let out = support::node(
            "cluster.mjs",
            &b0,
            room,
            &["--also", &b1, "--also", &b2, "--timeout-ms", "45000"],
        )
        .await;
        eprintln!("cluster.mjs: {out}");
        for b in [&b0, &b1, &b2] {
            let p = &out["presence"][b.as_str()];
            let conn = p["connected"].as_array().expect("presence.connected");
            assert_eq!(conn.len(), 3, "presence on {b}: {p}");
            let nodes: BTreeSet<&str> = conn.iter().filter_map(|e| e["node"].as_str()).collect();
            assert_eq!(
                nodes,
                BTreeSet::from(["n1", "n2", "n3"]),
                "presence on {b} names the node of each connection: {p}"
            );
            let after = &out["presenceAfterLeave"][b.as_str()]["connected"];
            assert_eq!(
                after.as_array().map(Vec::len),
                Some(2),
                "after C left, on {b}: {after}"
            );
        }
        // Every node serves the converged document to a fresh yrs client too.
        let text = out["json"]["text"].as_str().expect("text").to_string();
        let map_keys: BTreeSet<String> = out["json"]["map"]
            .as_object()
            .expect("map")
            .keys()
            .cloned()
            .collect();
        for i in 0..3 {
            let mut r = Peer::connect("reader", &c.url(i, room), false).await;
            let ok = r
                .wait_until(Duration::from_secs(10), |p| {
                    let m = p.doc.get_or_insert_map("map");
                    let t = p.doc.get_or_insert_text("text");
                    let txn = p.doc.transact();
                    m.keys(&txn).map(str::to_owned).collect::<BTreeSet<_>>() == map_keys
                        && t.get_string(&txn) == text
                })
                .await;
            assert!(
                ok,
                "node n{} serves the document the JS clients converged on",
                i + 1
            );
        }
        // The room lives in Redis under its hash tag.
        let keys = c.redis.keys(&format!("wedsync:{{{room}}}:*"));
        assert!(
            keys.contains(&updates_key(room)) || keys.contains(&snapshot_key(room)),
            "Redis holds the room's stream or snapshot: {keys:?}"
        );
    })
    .await;
}

/// Three `WebsocketProvider`s behind a round-robin TCP balancer (one lands on each node) edit
/// continuously; n3 gets SIGKILL after 2 s. The provider that was on n3 reconnects through the
/// same URL to a live node and syncs its edits; all three end with every key of every client
/// (failover.mjs checks that), and so do n1, n2 and n3 restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_clients_behind_a_balancer_fail_over_when_a_node_dies() {
    let _serial = SERIAL.lock().await;
    support::js_dir();
    let mut c = Cluster::start(RedisServer::start(Persistence::AofAlways), 3, 3, "");
    let room = "wedding-failover-js";
    within(Duration::from_secs(120), "js failover scenario", async {
        let lb = Balancer::start((0..3).map(|i| c.node(i).addr).collect()).await;
        let base = lb.base();
        let script = tokio::spawn(async move {
            support::node(
                "failover.mjs",
                &base,
                room,
                &[
                    "--clients",
                    "3",
                    "--duration-ms",
                    "6000",
                    "--pace-ms",
                    "20",
                    "--timeout-ms",
                    "50000",
                ],
            )
            .await
        });
        // Wait until each node has one of the three providers, then let them write a while.
        let killed = c.node(2).addr;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while lb.handed.lock().unwrap().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the three providers did not connect through the balancer: {:?}",
                lb.handed.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.kill9(2);
        eprintln!("SIGKILL n3 ({killed}) under the JS clients");
        let out = within(Duration::from_secs(70), "failover.mjs", script)
            .await
            .expect("node task");
        eprintln!(
            "failover.mjs: {out}; balancer handed {:?}",
            lb.handed.lock().unwrap()
        );
        let clients = out["clients"].as_array().expect("clients");
        assert!(
            clients
                .iter()
                .any(|c| c["connects"].as_u64().unwrap_or(0) >= 2),
            "a provider reconnected after the kill: {out}"
        );
        let mut keys = BTreeSet::new();
        for (i, cl) in clients.iter().enumerate() {
            for k in 0..cl["written"].as_u64().expect("written") {
                keys.insert(format!("js{i}-{k}"));
            }
        }
        assert_eq!(keys.len() as u64, out["keys"].as_u64().unwrap());
        let mut sv = StateVector::default();
        for (id, clock) in out["stateVector"].as_object().expect("stateVector") {
            sv.set_max(
                yrs::ClientID::new(id.parse().expect("client id")),
                clock.as_u64().expect("clock") as u32,
            );
        }
        let e = Expected {
            acked: BTreeSet::new(),
            keys,
            sv,
        };
        for i in [0, 1] {
            check_node(&c, i, room, &e, None, "after the JS failover").await;
        }
        c.start_node(2);
        check_node(&c, 2, room, &e, None, "n3 restarted after the JS failover").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// b. late join after compaction; offline edits sent to another node
// ---------------------------------------------------------------------------------------------

/// 3000 acknowledged updates on n1 (compaction every 200 entries, 1 s retention), then n3
/// starts and a client there gets exactly the writer's document. Then a client edits offline
/// and comes back on another node than before, while a client on a third node edited online:
/// both end with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_node_serves_full_state_after_compaction_and_offline_edits_merge() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofEverySec),
        2,
        3,
        "compact_entries = 200\nretention = 1\n",
    );
    let doc = "wedding-late-join";
    within(Duration::from_secs(120), "late join scenario", async {
        let mut w = Peer::connect("writer", &c.url(0, doc), true).await;
        let t0 = std::time::Instant::now();
        write_acked(&mut w, "w", 0..3000).await;
        eprintln!(
            "3000 acked updates on n1 in {} ms",
            t0.elapsed().as_millis()
        );

        // At least one compaction happened: the counter, the snapshot key, a trimmed stream.
        let (n, ok) = c
            .wait_metric(0, COMPACTIONS, Duration::from_secs(20), |v| v >= 1.0)
            .await;
        assert!(
            ok,
            "n1 {COMPACTIONS} = {n} after 3000 updates with compact_entries = 200"
        );
        let snap = c.redis.hgetall(&snapshot_key(doc));
        let field = |f: &str| snap.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        assert!(
            field("d").is_some_and(|d| !d.is_empty()) && field("id").is_some(),
            "{} has fields d and id: {:?}",
            snapshot_key(doc),
            snap.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
        );
        let xlen = c.redis.xlen(&updates_key(doc));
        assert!(
            xlen < 3000,
            "the stream was trimmed behind the snapshot: XLEN = {xlen}"
        );
        eprintln!("compactions on n1: {n}; XLEN after the writes: {xlen}");

        // A node that starts now serves the whole document.
        c.start_node(2);
        let sv = w.state_vector();
        let r3 = fresh_reader(
            "late-n3",
            &c.url(2, doc),
            &sv,
            &w.keys(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(r3.state_vector(), sv, "late node n3: state vector");
        assert!(content(&r3.doc) == content(&w.doc), "late node n3: content");
        assert_eq!(r3.keys().len(), 3000);

        // Offline edits: X synced on n1, goes offline, edits; Y edits online on n2; X comes back
        // on n3.
        let mut x = Peer::connect("x", &c.url(0, doc), false).await;
        x.disconnect().await;
        for i in 0..50u64 {
            let _ = x
                .edit(Some(format!("offline-x-{i}")), |r, txn| {
                    r.map.insert(txn, format!("offline-x-{i}"), i as i64);
                    if i % 10 == 0 {
                        peer::push_extra(r, txn, "x", i);
                    }
                })
                .await;
        }
        // X also changes a key the writer created, Y the same one: one of them wins everywhere.
        let _ = x
            .edit(None, |r, txn| {
                r.map.insert(txn, "w-0", "x");
            })
            .await;
        let mut y = Peer::connect("y", &c.url(1, doc), true).await;
        write_acked(&mut y, "online-y", 0..50).await;
        y.edit(None, |r, txn| {
            r.map.insert(txn, "w-0", "y");
        })
        .await
        .unwrap();
        assert!(
            !y.keys().contains("offline-x-0"),
            "X's offline edits must not reach anyone before it reconnects"
        );
        x.try_connect(&c.url(2, doc))
            .await
            .unwrap_or_else(|e| panic!("X reconnects on n3: {e}"));
        let want: BTreeSet<String> = x.keys().union(&y.keys()).cloned().collect();
        let x_ok = x
            .wait_until(Duration::from_secs(20), |p| want.is_subset(&p.keys()))
            .await;
        assert!(x_ok, "X (back on n3) receives Y's online edits");
        let y_ok = y
            .wait_until(Duration::from_secs(20), |p| {
                want.is_subset(&p.keys()) && p.state_vector() == x.state_vector()
            })
            .await;
        assert!(y_ok, "Y (on n2) receives X's offline edits sent to n3");
        let x_ok = x
            .wait_until(Duration::from_secs(20), |p| {
                p.state_vector() == y.state_vector()
            })
            .await;
        assert!(x_ok, "X and Y reach the same state vector");
        assert!(
            content(&x.doc) == content(&y.doc),
            "X and Y have equal content"
        );
        let e = Expected {
            keys: want,
            acked: y.acked.clone(),
            sv: y.state_vector(),
        };
        for i in 0..3 {
            check_node(&c, i, doc, &e, Some(&y.doc), "after the offline merge").await;
        }
    })
    .await;
}

/// A load balancer sends HTTP requests to any node: a node on which no WebSocket client ever
/// opened the room must still serve the document (`GET /api/docs/{doc}/update`) and the plan
/// (`GET /api/weddings/{id}`) from Redis, not answer 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_on_a_node_that_never_hosted_the_room() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(RedisServer::start(Persistence::AofAlways), 2, 2, "");
    let doc = "wedding-http-elsewhere";
    within(Duration::from_secs(60), "http scenario", async {
        let mut w = Peer::connect("writer", &c.url(0, doc), true).await;
        write_acked(&mut w, "w", 0..50).await;
        // The plan API reads the root maps of docs/schema.md; `m` is not one of them, so put a
        // guest in too.
        w.edit(None, |_, txn| {
            let guests = txn.get_or_insert_map("guests");
            guests.insert(
                txn,
                "g1",
                MapPrelim::from_iter([("name", "Ana"), ("rsvp", "yes")]),
            );
        })
        .await
        .unwrap();
        assert!(
            w.wait_all_acked(Duration::from_secs(10)).await,
            "guest edit acked"
        );

        let resp = reqwest::get(c.http(1, &format!("/api/docs/{doc}/update")))
            .await
            .expect("GET update from n2");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(
            status,
            200,
            "GET /api/docs/{doc}/update on n2 (room never opened there): {}",
            String::from_utf8_lossy(&bytes)
        );
        let d2 = yrs::Doc::new();
        d2.transact_mut()
            .apply_update(Update::decode_v1(&bytes).expect("a v1 update"))
            .unwrap();
        assert_eq!(
            d2.transact().state_vector(),
            w.state_vector(),
            "n2 over HTTP: state vector"
        );
        assert!(content(&d2) == content(&w.doc), "n2 over HTTP: content");

        let (status, plan) = get_json(&c.http(1, &format!("/api/weddings/{doc}"))).await;
        assert_eq!(status, 200, "GET /api/weddings/{doc} on n2: {plan}");
        assert_eq!(
            plan["guests"]["g1"]["name"], "Ana",
            "the plan from n2: {plan}"
        );
    })
    .await;
}

/// On a healthy cluster a room joins exactly once (a health check landing while it loads must
/// not send it to join again), no room counts as degraded, `/readyz` names the node and says
/// Redis is up — and, with Redis gone, the node stays ready but says so. A document that
/// exists neither locally nor in Redis is still a 404 over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_join_once_and_readyz_reports_redis() {
    let _serial = SERIAL.lock().await;
    // Health checks every 10 ms, so some land while rooms are loading.
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        1,
        1,
        "health_interval = 0.01\n",
    );
    within(Duration::from_secs(60), "join-once scenario", async {
        let (status, ready) = get_json(&c.http(0, "/readyz")).await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["cluster"]["node"], "n1", "{ready}");
        let mut peers = Vec::new();
        for i in 0..20 {
            let mut p = Peer::connect("p", &c.url(0, &format!("wedding-once-{i}")), true).await;
            write_acked(&mut p, "k", 0..3).await;
            peers.push(p);
        }
        // Many health intervals with every room loaded.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = c.metrics(0).await;
        assert_eq!(m.get(REJOINS), 0.0, "no room joined twice");
        assert_eq!(
            m.get(DEGRADED),
            0.0,
            "no room degraded on a healthy cluster"
        );
        assert_eq!(m.get(UP), 1.0);
        let (_, ready) = get_json(&c.http(0, "/readyz")).await;
        assert_eq!(ready["cluster"]["redis_up"], true, "{ready}");
        let (status, body) = get_json(&c.http(0, "/api/docs/wedding-nowhere/update")).await;
        assert_eq!(status, 404, "{body}");

        c.redis.kill9();
        let (v, ok) = c
            .wait_metric(0, UP, Duration::from_secs(10), |v| v == 0.0)
            .await;
        assert!(ok, "{UP} = {v} after Redis died");
        let (status, ready) = get_json(&c.http(0, "/readyz")).await;
        assert_eq!(status, 200, "still ready without Redis: {ready}");
        assert_eq!(ready["cluster"]["redis_up"], false, "{ready}");
        drop(peers);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// c. kill -9 of one node under write load
// ---------------------------------------------------------------------------------------------

/// Ack writers on each node and an observer per node; n3 gets SIGKILL while they write (after
/// 1-3 s, at random). Of n3's two ack writers one stays away afterwards (so what it had acked
/// must already be in Redis: nothing resends it) and one reconnects to n1 and keeps writing, as
/// a WebsocketProvider behind a load balancer would. At the end every surviving node, a new node
/// and n3 restarted on its data directory hold everything acked, everything any observer (n3's
/// too) had received, and the whole document of every writer still connected; and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        3,
        4,
        "compact_entries = 300\n",
    );
    let doc = "wedding-node-kill";
    within(Duration::from_secs(120), "node kill scenario", async {
        let stop = CancellationToken::new();
        let obs: Vec<_> = (0..3)
            .map(|i| tokio::spawn(observer(format!("obs-n{}", i + 1), c.url(i, doc), stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ws = Vec::new();
        // (node, prefix, failover): "n3-stay" only ever talks to n3.
        for (i, prefix, failover) in [
            (0, "n1-ack", true),
            (1, "n2-ack", true),
            (2, "n3-stay", false),
            (2, "n3-roam", true),
        ] {
            let urls = if failover {
                vec![c.url(i, doc), c.url((i + 1) % 3, doc), c.url((i + 2) % 3, doc)]
            } else {
                vec![c.url(i, doc)]
            };
            ws.push(tokio::spawn(writer(
                prefix.to_string(),
                urls,
                prefix.to_string(),
                true,
                Duration::from_millis(2),
                stop.clone(),
            )));
        }
        // A different moment each run (mid-batch, mid-compaction, ...); printed for a rerun.
        let kill_after = Duration::from_millis(rand::random_range(1000..3000));
        tokio::time::sleep(kill_after).await;
        c.kill9(2);
        eprintln!("SIGKILL n3 after {} ms of writing", kill_after.as_millis());
        tokio::time::sleep(Duration::from_millis(3000)).await;
        stop.cancel();
        let writers = join_all(ws, "writers").await;
        let observers = join_all(obs, "observers").await;
        report(&writers, &observers);
        let (stay, roamers): (Vec<&WriterReport>, Vec<&WriterReport>) =
            writers.iter().partition(|w| w.prefix == "n3-stay");
        let stay = stay[0];
        let roam = roamers.iter().find(|w| w.prefix == "n3-roam").unwrap();
        assert!(
            roam.peer.connections >= 2 && roam.peer.is_connected(),
            "n3-roam reconnected to another node after the kill ({} connections, {:?})",
            roam.peer.connections,
            roam.errors
        );
        let before = roam.acked_before_reconnect.unwrap_or(0);
        assert!(
            roam.peer.acked.len() > before + 50 && roam.peer.unacked() == 0,
            "n3-roam kept writing on its new node and got it acked there ({before} acked before \
             the reconnect, {} at the end, {} unacked)",
            roam.peer.acked.len(),
            roam.peer.unacked()
        );
        assert!(!stay.peer.is_connected(), "n3-stay has no node to talk to");
        assert!(observers[2].last_end.is_some(), "n3's observer noticed the kill");
        assert!(
            !observers[2].keys().is_empty() && !stay.peer.acked.is_empty(),
            "n3's observer and n3-stay got updates/acks before the kill (else the test proves little)"
        );
        for w in &roamers {
            assert!(!w.peer.acked.is_empty(), "{} got acks", w.prefix);
        }
        // Expected: the documents of the writers that are still connected, what n3-stay had
        // acked, what observers saw. Allowed: nothing beyond what some writer wrote.
        let mut e = expected(&roamers, &observers);
        e.acked.extend(stay.peer.acked.iter().cloned());
        e.keys.extend(stay.peer.acked.iter().cloned());
        let allowed: BTreeSet<String> = writers.iter().flat_map(|w| w.peer.keys()).collect();
        let union = union_doc(roamers.iter().map(|w| &w.peer.doc));
        eprintln!(
            "  n3-stay: {} written, {} acked before the kill",
            stay.written,
            stay.peer.acked.len()
        );
        c.start_node(3);
        for i in [0, 1, 3] {
            let got = check_node(&c, i, doc, &e, None, "after kill -9 of n3").await;
            let invented: Vec<&String> = got.difference(&allowed).collect();
            assert!(invented.is_empty(), "node {i}: keys nobody wrote: {invented:?}");
            let r = Peer::connect("exact", &c.url(i, doc), false).await;
            assert!(
                sv_covers(&r.state_vector(), &union.transact().state_vector()),
                "node {i}: covers every connected writer's whole document"
            );
        }
        let remote = c.metrics(0).await.get(REMOTE);
        assert!(remote > 0.0, "n1 applied updates from other nodes ({REMOTE} = {remote})");
        c.start_node(2);
        check_node(&c, 2, doc, &e, None, "n3 restarted").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// d. Redis failures
// ---------------------------------------------------------------------------------------------

/// Two clients of node `i` that must keep talking through that node alone (Redis down or
/// empty): each edit of one reaches the other within 5 s.
async fn local_pair_still_works(i: usize, a: &mut Peer, b: &mut Peer, tag: &str) {
    for k in 0..10u64 {
        let key = format!("{tag}-n{}-{k}", i + 1);
        a.insert(key.clone(), k as i64)
            .await
            .unwrap_or_else(|e| panic!("{key}: n{}'s client cannot send: {e}", i + 1));
        let ok = b
            .wait_until(Duration::from_secs(5), |p| p.keys().contains(&key))
            .await;
        assert!(
            ok,
            "{key}: an edit between two clients of n{} did not flow within 5 s (b: {:?})",
            i + 1,
            b.last_end
        );
    }
}

/// Load of the Redis tests: writers on every node (each stays on its node), an observer per
/// node, and a pair of clients per node.
struct Load {
    stop: CancellationToken,
    observers: Vec<JoinHandle<Peer>>,
    writers: Vec<JoinHandle<WriterReport>>,
    pairs: Vec<(Peer, Peer)>,
}

impl Load {
    /// Every node's pair still edits together.
    async fn pairs_work(&mut self, tag: &str) {
        for (i, (a, b)) in self.pairs.iter_mut().enumerate() {
            local_pair_still_works(i, a, b, tag).await;
        }
    }
}

/// Starts the load and lets it run 1.5 s.
async fn start_load(c: &Cluster, doc: &str) -> Load {
    let stop = CancellationToken::new();
    let observers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(observer(
                format!("obs-n{}", i + 1),
                c.url(i, doc),
                stop.clone(),
            ))
        })
        .collect();
    let mut pairs = Vec::new();
    for i in 0..3 {
        let a = Peer::connect(&format!("pair-a-n{}", i + 1), &c.url(i, doc), false).await;
        let b = Peer::connect(&format!("pair-b-n{}", i + 1), &c.url(i, doc), false).await;
        pairs.push((a, b));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let prefix = format!("n{}-ack", i + 1);
            tokio::spawn(writer(
                prefix.clone(),
                vec![c.url(i, doc)],
                prefix,
                true,
                Duration::from_millis(3),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Load {
        stop,
        observers,
        writers,
        pairs,
    }
}

/// Lets the load run 2 s more, stops it and returns what every node must hold (and the union
/// of every writer's document, the pairs' included).
async fn finish_load(load: Load) -> (Expected, yrs::Doc) {
    let Load {
        stop,
        observers,
        writers,
        mut pairs,
    } = load;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // After the fault each pair writes once more: it must reach every node.
    for (i, (a, _)) in pairs.iter_mut().enumerate() {
        a.insert(format!("pair-after-n{}", i + 1), 1)
            .await
            .expect("a pair's client sends after the fault");
    }
    stop.cancel();
    let writers = join_all(writers, "writers").await;
    let observers = join_all(observers, "observers").await;
    report(&writers, &observers);
    for w in &writers {
        assert!(
            w.peer.connections == 1,
            "{}: a Redis failure must not drop clients ({} connections; {:?})",
            w.prefix,
            w.peer.connections,
            w.errors
        );
    }
    let refs: Vec<&WriterReport> = writers.iter().collect();
    let mut e = expected(&refs, &observers);
    for (i, (a, b)) in pairs.iter_mut().enumerate() {
        let key = format!("pair-after-n{}", i + 1);
        assert!(
            b.wait_until(Duration::from_secs(10), |p| p.keys().contains(&key))
                .await,
            "n{}'s pair: b receives a's edit after the fault",
            i + 1
        );
        e.keys.extend(a.keys());
        e.keys.extend(b.keys());
        merge_sv(&mut e.sv, &a.state_vector());
        merge_sv(&mut e.sv, &b.state_vector());
    }
    let mut docs: Vec<&yrs::Doc> = writers.iter().map(|w| &w.peer.doc).collect();
    docs.extend(pairs.iter().map(|(a, _)| &a.doc));
    let union = union_doc(docs);
    (e, union)
}

/// Redis (AOF, `appendfsync everysec`) gets SIGKILL under load and is restarted 3 s later on
/// its AOF. Meanwhile every node reports `redis_up 0` and a degraded room, keeps its outbox,
/// and two clients of each node keep editing together. Afterwards: `redis_up 1`, one more
/// rejoin, an empty outbox, and every node, plus a fourth node started from Redis alone, holds
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_9_and_aof_restart_under_load_loses_nothing() {
    redis_outage(Persistence::AofEverySec, "wedding-redis-kill").await;
}

/// As `redis_kill_9_and_aof_restart_under_load_loses_nothing`, but Redis keeps nothing on
/// disk: it comes back empty after the outage, and the nodes must hand everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_9_and_empty_restart_under_load_loses_nothing() {
    redis_outage(Persistence::None, "wedding-redis-empty").await;
}

async fn redis_outage(persistence: Persistence, doc: &str) {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(persistence),
        3,
        4,
        "redis_timeout = 1\nhealth_interval = 0.25\ncompact_entries = 300\n",
    );
    within(Duration::from_secs(120), "redis outage scenario", async {
        let mut load = start_load(&c, doc).await;
        {
            // Every join counts, the first one too: compare with the count before the fault.
            let mut before = Vec::new();
            for i in 0..3 {
                before.push(c.metrics(i).await.get(REJOINS));
            }
            c.redis.kill9();
            eprintln!("SIGKILL redis");
            for i in 0..3 {
                let (v, ok) = c
                    .wait_metric(i, UP, Duration::from_secs(10), |v| v == 0.0)
                    .await;
                assert!(ok, "n{}: {UP} = {v} 10 s after Redis died", i + 1);
                let (v, ok) = c
                    .wait_metric(i, DEGRADED, Duration::from_secs(10), |v| v >= 1.0)
                    .await;
                assert!(ok, "n{}: {DEGRADED} = {v} while Redis is down", i + 1);
            }
            load.pairs_work("down-local").await;
            let (v, ok) = c
                .wait_metric(0, OUTBOX, Duration::from_secs(5), |v| v > 0.0)
                .await;
            assert!(
                ok,
                "n1: {OUTBOX} = {v}: updates wait in the outbox while Redis is down"
            );
            tokio::time::sleep(Duration::from_millis(1000)).await;
            c.redis.restart();
            eprintln!(
                "redis restarted ({persistence:?}): DBSIZE {}",
                c.redis.dbsize()
            );
            for (i, was) in before.iter().copied().enumerate() {
                let (v, ok) = c
                    .wait_metric(i, UP, Duration::from_secs(20), |v| v == 1.0)
                    .await;
                assert!(ok, "n{}: {UP} = {v} 20 s after Redis came back", i + 1);
                let (v, ok) = c
                    .wait_metric(i, REJOINS, Duration::from_secs(20), |v| v > was)
                    .await;
                assert!(
                    ok,
                    "n{}: {REJOINS} = {v} (was {was}) after Redis came back",
                    i + 1
                );
            }
        }
        let (e, union) = finish_load(load).await;
        for i in 0..3 {
            let (v, ok) = c
                .wait_metric(i, OUTBOX, Duration::from_secs(20), |v| v == 0.0)
                .await;
            assert!(
                ok,
                "n{}: {OUTBOX} = {v}: the outbox drains once Redis is back",
                i + 1
            );
            let (v, ok) = c
                .wait_metric(i, DEGRADED, Duration::from_secs(20), |v| v == 0.0)
                .await;
            assert!(ok, "n{}: {DEGRADED} = {v} once Redis is back", i + 1);
        }
        for i in 0..3 {
            check_node(
                &c,
                i,
                doc,
                &e,
                Some(&union),
                "after Redis kill -9 + restart",
            )
            .await;
        }
        c.start_node(3);
        check_node(
            &c,
            3,
            doc,
            &e,
            Some(&union),
            "a new node after the Redis restart",
        )
        .await;
    })
    .await;
}

/// FLUSHALL under load: Redis stays up but loses every key (the epoch key disappears too).
/// Every node re-joins and appends what Redis lacks: every node and a fourth node started from
/// Redis alone hold everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        3,
        4,
        "redis_timeout = 1\nhealth_interval = 0.25\ncompact_entries = 300\n",
    );
    let doc = "wedding-flushall";
    within(Duration::from_secs(120), "flushall scenario", async {
        let mut load = start_load(&c, doc).await;
        {
            let before: Vec<f64> = {
                let mut v = Vec::new();
                for i in 0..3 {
                    v.push(c.metrics(i).await.get(REJOINS));
                }
                v
            };
            if before.iter().any(|v| *v > 1.0) {
                eprintln!("more than one join before any fault: {before:?}");
                c.print_warnings(10);
            }
            c.redis.flushall();
            eprintln!("FLUSHALL; rejoins before: {before:?}");
            load.pairs_work("after-flush-local").await;
            for (i, was) in before.iter().copied().enumerate() {
                let (v, ok) = c
                    .wait_metric(i, REJOINS, Duration::from_secs(20), |v| v > was)
                    .await;
                assert!(ok, "n{}: {REJOINS} = {v} (was {was}) after FLUSHALL", i + 1);
            }
        }
        let (e, union) = finish_load(load).await;
        let keys = c.redis.keys(&format!("wedsync:{{{doc}}}:*"));
        assert!(
            keys.contains(&updates_key(doc)) || keys.contains(&snapshot_key(doc)),
            "the nodes wrote the room back to Redis: {keys:?}"
        );
        for i in 0..3 {
            check_node(&c, i, doc, &e, Some(&union), "after FLUSHALL").await;
        }
        c.start_node(3);
        check_node(&c, 3, doc, &e, Some(&union), "a new node after FLUSHALL").await;
    })
    .await;
}

/// The outbox is durable: while Redis is down, a writer on n1 gets 300 more updates acked
/// (they are only in n1's sled outbox), n1 gets SIGKILL, Redis comes back, n1 restarts on its
/// data directory and hands its outbox to Redis without any client reconnecting: a new node n4
/// (reading Redis only), n2 and n3 then hold all 600 acked updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_acked_while_redis_down_survives_kill_9_of_the_node() {
    outbox_after_node_kill(false).await;
}

/// As `outbox_acked_while_redis_down_survives_kill_9_of_the_node`, but n1 restarts while Redis
/// is still down (it opens the room from its outbox, degraded) and Redis comes back 2 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_of_a_node_restarted_while_redis_is_down_reaches_redis_when_it_returns() {
    outbox_after_node_kill(true).await;
}

async fn outbox_after_node_kill(node_before_redis: bool) {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        3,
        4,
        "redis_timeout = 1\nhealth_interval = 0.25\n",
    );
    let doc = "wedding-outbox";
    within(Duration::from_secs(120), "outbox scenario", async {
        let mut w = Peer::connect("writer", &c.url(0, doc), true).await;
        let mut watcher = Peer::connect("watcher-n2", &c.url(1, doc), false).await;
        write_acked(&mut w, "w", 0..300).await;
        assert!(
            watcher
                .wait_until(Duration::from_secs(10), |p| p.keys().len() == 300)
                .await,
            "n2 sees n1's first 300 updates"
        );
        c.redis.kill9();
        let (v, ok) = c.wait_metric(0, UP, Duration::from_secs(10), |v| v == 0.0).await;
        assert!(ok, "n1: {UP} = {v} 10 s after Redis died");
        // Acked while Redis is down: durable in n1's outbox only.
        write_acked(&mut w, "w", 300..600).await;
        let (v, ok) = c.wait_metric(0, OUTBOX, Duration::from_secs(5), |v| v > 0.0).await;
        assert!(ok, "n1: {OUTBOX} = {v} with 300 updates Redis has not seen");
        assert_eq!(w.acked.len(), 600, "all 600 updates acked");
        let expected_sv = w.state_vector();
        let expected_content = content(&w.doc);
        let acked = w.acked.clone();
        drop(w);
        c.kill9(0);
        if node_before_redis {
            eprintln!("n1 killed with 300 updates in its outbox; restarting n1, then Redis");
            c.start_node(0);
            let (v, ok) = c.wait_metric(0, UP, Duration::from_secs(10), |v| v == 0.0).await;
            assert!(ok, "restarted n1: {UP} = {v} while Redis is down");
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.redis.restart();
        } else {
            eprintln!("n1 killed with 300 updates in its outbox; restarting Redis, then n1");
            c.redis.restart();
            c.start_node(0);
        }
        // Redis itself (through n4, which starts now and never saw the room), the nodes that
        // were up all along, and n1: each must end with all 600 updates. Every node is asked
        // before any verdict, so a failure says which of them lack what.
        c.start_node(3);
        let mut verdicts = Vec::new();
        for i in [3, 1, 2, 0] {
            let r = fresh_reader(
                "reader",
                &c.url(i, doc),
                &expected_sv,
                &acked,
                Duration::from_secs(20),
            )
            .await;
            let missing = acked.difference(&r.keys()).count();
            let exact = r.state_vector() == expected_sv && content(&r.doc) == expected_content;
            eprintln!("  n{}: {} keys, {missing} acked keys missing, exact: {exact}", i + 1, r.keys().len());
            verdicts.push((i, missing, exact));
        }
        let outbox_lines: Vec<String> = c
            .logs(0)
            .lines()
            .filter(|l| l.contains("outbox") || l.contains("lacked") || l.contains("re-join"))
            .map(str::to_owned)
            .collect();
        eprintln!("  n1 log about its outbox:\n    {}", outbox_lines.join("\n    "));
        for (_, missing, exact) in &verdicts {
            assert!(
                *missing == 0 && *exact,
                "after n1 restarted with 300 acked updates in its outbox: {}",
                verdicts
                    .iter()
                    .map(|(i, m, x)| format!("n{}: {m} of 600 acked keys missing (exact: {x})", i + 1))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let ok = watcher
            .wait_until(Duration::from_secs(20), |p| p.keys().len() == 600)
            .await;
        assert!(
            ok,
            "n2's client, connected all along, receives the 300 updates from n1's outbox (has {}, {:?})",
            watcher.keys().len(),
            watcher.last_end
        );
        let (v, ok) = c.wait_metric(0, OUTBOX, Duration::from_secs(20), |v| v == 0.0).await;
        assert!(ok, "n1 (restarted): {OUTBOX} = {v}: its outbox drains into Redis");
    })
    .await;
}

/// A bounded outbox: with `outbox_max_bytes = 16384` and Redis down, a writer on n1 is closed
/// with 1013 once the outbox is full, while a reader on n1 stays connected. What was acked
/// reaches Redis once it is back (a node on which the writer never was serves it), and the
/// writer, reconnecting to n2, hands over the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_closes_writers_with_1013_and_keeps_what_it_acked() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        2,
        2,
        "redis_timeout = 1\nhealth_interval = 0.25\noutbox_max_bytes = 16384\n",
    );
    let doc = "wedding-outbox-full";
    within(Duration::from_secs(120), "full outbox scenario", async {
        let mut w = Peer::connect("writer", &c.url(0, doc), true).await;
        let mut reader = Peer::connect("reader-n1", &c.url(0, doc), false).await;
        write_acked(&mut w, "w", 0..50).await;
        c.redis.kill9();
        let (v, ok) = c
            .wait_metric(0, UP, Duration::from_secs(10), |v| v == 0.0)
            .await;
        assert!(ok, "n1: {UP} = {v} 10 s after Redis died");
        // Write until the node refuses (each key ~30 bytes: 16 KiB is a few hundred updates).
        let mut i = 50u64;
        let closed = loop {
            if i > 5000 {
                break None;
            }
            while w.unacked() >= peer::ACK_WINDOW {
                if w.pump(Duration::from_secs(10)).await.is_err() {
                    break;
                }
            }
            if !w.is_connected() {
                break w.last_end.clone();
            }
            let _ = w.insert(format!("w-{i}"), i as i64).await;
            i += 1;
            while let Ok(Some(_)) = w.pump(Duration::ZERO).await {}
        };
        // Let the reader take what n1 relayed.
        reader.drain(Duration::from_millis(500)).await;
        eprintln!(
            "writer: {} sent, {} acked, closed: {closed:?}; n1 {OUTBOX} = {}",
            i,
            w.acked.len(),
            c.metrics(0).await.get(OUTBOX)
        );
        let closed =
            closed.expect("the writer was closed before 5000 updates with a 16 KiB outbox");
        assert!(
            closed.contains("1013"),
            "closed with 1013 (try again later): {closed}"
        );
        assert!(
            reader.is_connected(),
            "a reader of n1 is not closed by a full outbox ({:?})",
            reader.last_end
        );
        assert!(
            w.acked.len() > 50,
            "updates were acked from the outbox before it filled"
        );
        let acked = w.acked.clone();
        assert_has_keys(
            "n1's reader: what was acked while Redis was down",
            &reader.keys(),
            &acked,
        );

        c.redis.restart();
        let (v, ok) = c
            .wait_metric(0, OUTBOX, Duration::from_secs(20), |v| v == 0.0)
            .await;
        assert!(
            ok,
            "n1: {OUTBOX} = {v}: the outbox drains once Redis is back"
        );
        let e = Expected {
            keys: acked.clone(),
            acked: acked.clone(),
            sv: StateVector::default(),
        };
        check_node(&c, 1, doc, &e, None, "acked from the outbox, read on n2").await;

        // The writer comes back on n2: its unacked edits go up with the sync.
        w.try_connect(&c.url(1, doc))
            .await
            .expect("writer reconnects to n2");
        assert!(
            w.wait_all_acked(Duration::from_secs(10)).await,
            "the resync is acked"
        );
        let e = Expected {
            keys: w.keys(),
            acked,
            sv: w.state_vector(),
        };
        check_node(
            &c,
            0,
            doc,
            &e,
            Some(&w.doc),
            "after the writer resynced through n2",
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// e. compaction racing with writes
// ---------------------------------------------------------------------------------------------

/// Six ack writers (two per node; map inserts and deletions, array pushes, text inserts) with
/// compaction every 20 entries and a 1 s retention: every node ends with exactly the union of
/// all writes, and so does every node after a cold restart of all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_writes_from_three_nodes_keeps_the_union() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        3,
        3,
        "compact_entries = 20\nretention = 1\n",
    );
    let doc = "wedding-compaction-race";
    within(Duration::from_secs(120), "compaction race", async {
        let stop = CancellationToken::new();
        let mut ws = Vec::new();
        for i in 0..3 {
            for k in 0..2 {
                let prefix = format!("n{}-w{k}", i + 1);
                ws.push(tokio::spawn(writer_with(
                    prefix.clone(),
                    vec![c.url(i, doc)],
                    prefix,
                    true,
                    Duration::from_millis(2 + k),
                    true,
                    stop.clone(),
                )));
            }
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop.cancel();
        let writers = join_all(ws, "writers").await;
        report(&writers, &[]);
        let compactions = c.metric_sum(COMPACTIONS).await;
        assert!(
            compactions >= 3.0,
            "compactions ran during the writes: {COMPACTIONS} = {compactions}"
        );
        eprintln!("compactions (all nodes): {compactions}");
        let refs: Vec<&WriterReport> = writers.iter().collect();
        let e = expected(&refs, &[]);
        let union = union_doc(writers.iter().map(|w| &w.peer.doc));
        for i in 0..3 {
            check_node(&c, i, doc, &e, Some(&union), "after the race").await;
        }
        for i in 0..3 {
            c.stop_node(i).await;
        }
        for i in 0..3 {
            c.start_node(i);
        }
        for i in 0..3 {
            check_node(
                &c,
                i,
                doc,
                &e,
                Some(&union),
                "after a cold restart of all nodes",
            )
            .await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// f. a node frozen past the retention window
// ---------------------------------------------------------------------------------------------

/// n3 hosts the room (a writer and an observer on it) and is frozen with SIGSTOP while n1 and
/// n2 keep writing (5 s or more) with compaction every 20 entries and a 1 s retention, so the
/// stream is trimmed past the point n3 had read. After SIGCONT n3 catches up: its observer, a
/// fresh client and the other nodes all end with exactly the union of all writes.
///
/// If n3 froze in the middle of a compaction, its lease (10 × `redis_timeout`, at least 10 s)
/// holds the others off until it expires, so the freeze lasts until they compacted. A fixed
/// 5 s freeze failed that way once in two full runs of the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_frozen_past_retention_catches_up_after_sigcont() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(
        RedisServer::start(Persistence::AofAlways),
        3,
        3,
        "compact_entries = 20\nretention = 1\nredis_timeout = 1\n",
    );
    let doc = "wedding-frozen";
    within(Duration::from_secs(120), "frozen node scenario", async {
        let stop = CancellationToken::new();
        let obs_stop = CancellationToken::new();
        let obs = tokio::spawn(observer("obs-n3".into(), c.url(2, doc), obs_stop.clone()));
        let mut ws = Vec::new();
        for i in 0..3 {
            let prefix = format!("n{}-ack", i + 1);
            ws.push(tokio::spawn(writer(
                prefix.clone(),
                vec![c.url(i, doc)],
                prefix,
                true,
                Duration::from_millis(3),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let compactions_before = c.metrics(0).await.get(COMPACTIONS) + c.metrics(1).await.get(COMPACTIONS);
        let frozen_at = unix_ms();
        c.sigstop(2);
        eprintln!("SIGSTOP n3");
        // At least 5 s, and until n1/n2 compacted and the trim passed the freeze. If n3 was
        // frozen in the middle of a compaction, it holds the compaction lease (10 s here) and
        // the others must wait for it to expire: that is the lease doing its job.
        let frozen = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (compactions_during, first) = loop {
            let during = c.metrics(0).await.get(COMPACTIONS) + c.metrics(1).await.get(COMPACTIONS)
                - compactions_before;
            let first = c.redis.first_stream_id(&updates_key(doc));
            let trimmed = first.is_some_and(|(ms, _)| ms > frozen_at);
            if (during >= 1.0 && trimmed) || frozen.elapsed() > Duration::from_secs(16) {
                break (during, first);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        c.sigcont(2);
        eprintln!(
            "SIGCONT n3 after {:?}; compactions meanwhile on n1+n2: {compactions_during}; first \
             stream id {first:?}, frozen at {frozen_at}",
            frozen.elapsed()
        );
        assert!(compactions_during >= 1.0, "n1/n2 compacted while n3 was frozen");
        let (first_ms, _) = first.expect("the updates stream has entries");
        assert!(
            first_ms > frozen_at,
            "the stream was trimmed past everything appended before the freeze (first id {first_ms} ms, frozen at {frozen_at} ms)"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.cancel();
        let writers = join_all(ws, "writers").await;
        report(&writers, &[]);
        let union = union_doc(writers.iter().map(|w| &w.peer.doc));
        let usv = union.transact().state_vector();
        // The observer stayed connected to n3 through the freeze: n3 must bring it up to date.
        tokio::time::sleep(Duration::from_millis(100)).await;
        obs_stop.cancel();
        let mut o = within(Duration::from_secs(10), "observer", obs).await.expect("observer task");
        assert!(o.is_connected(), "n3's observer is still connected after SIGCONT ({:?})", o.last_end);
        let ok = o
            .wait_until(Duration::from_secs(30), |p| p.state_vector() == usv)
            .await;
        assert!(
            ok,
            "n3's observer caught up after SIGCONT: has {} keys of {}",
            o.keys().len(),
            keys(&union).len()
        );
        assert!(content(&o.doc) == content(&union), "n3's observer: content equals the union");
        let refs: Vec<&WriterReport> = writers.iter().collect();
        let e = expected(&refs, &[o]);
        for i in 0..3 {
            check_node(&c, i, doc, &e, Some(&union), "after SIGCONT").await;
        }
    })
    .await;
}

/// The fixture itself: a private Redis with `appendfsync always` keeps what it accepted across
/// SIGKILL + restart on the same port, and FLUSHALL empties it. (No wedsync involved; this
/// fails fast when redis-server is missing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixture_kill_restart_and_flush() {
    let mut r = RedisServer::start(Persistence::AofAlways);
    let port = r.port;
    assert_eq!(
        r.cmd(&["XADD", "wedsync:{t}:updates", "*", "n", "x", "u", "abc"])
            .as_str()
            .map(|s| s.contains('-')),
        Some(true)
    );
    r.kill9();
    assert!(
        r.try_cmd(&["PING"]).is_err(),
        "killed redis does not answer"
    );
    r.restart();
    assert_eq!(r.port, port);
    assert_eq!(r.xlen("wedsync:{t}:updates"), 1, "the AOF was reloaded");
    r.flushall();
    assert_eq!(r.dbsize(), 0);
}
