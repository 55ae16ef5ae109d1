//! Interop tests: unmodified npm clients (`yjs`, `y-websocket`'s `WebsocketProvider`, pinned in
//! `tests/js/package-lock.json`) and a yrs client against the server started in-process.
//!
//! Needs Node >= 20 and `npm ci --prefix tests/js`; without them every test here fails with a
//! message saying so. The scripts are described in `tests/js/README.md`.

#[path = "process/mod.rs"]
mod process;
#[path = "interop/support.rs"]
mod support;

use std::path::Path;

use support::node;

/// Starts a server on 127.0.0.1:0 in open development mode; returns it and its `ws://` base URL.
async fn start(dir: &Path) -> (wedsync::Server, String) {
    let server = wedsync::Server::start(wedsync::Config::for_tests(dir))
        .await
        .expect("server starts");
    let url = format!("ws://{}", server.local_addr());
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_js_clients_converge_on_map_array_text() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let out = node("converge.mjs", &url, "converge-room", &[]).await;
    assert_eq!(out["a"], out["b"]);
    assert_eq!(out["a"]["map"]["guest-B"]["rsvp"], "yes");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_is_relayed_and_removed_on_leave_and_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let out = node(
        "awareness.mjs",
        &url,
        "awareness-room",
        &["--remove-within-ms", "5000"],
    )
    .await;
    assert!(
        out["seen"]["user"]["name"]
            .as_str()
            .unwrap()
            .starts_with("Alice"),
        "{out}"
    );
    assert!(
        out["dropSeen"]["user"]["name"]
            .as_str()
            .unwrap()
            .starts_with("Carol"),
        "{out}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_merge_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let out = node("offline.mjs", &url, "offline-room", &[]).await;
    assert_eq!(out["json"]["map"]["offline-A"], "written offline");
    assert_eq!(out["json"]["map"]["online-B"], "written while A was away");
    server.shutdown().await.unwrap();
}

/// write.mjs returns only after the durable ack (type 100) for all its updates; a new server on
/// the same data directory must serve every entry to a fresh JS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_js_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let written = node("write.mjs", &url, "restart-room", &["--entries", "100"]).await;
    assert_eq!(written["mode"], "ack");
    assert_eq!(written["acks"].as_array().unwrap().last().unwrap(), 100);
    server.shutdown().await.unwrap();

    let (server, url) = start(dir.path()).await;
    let read = node(
        "read.mjs",
        &url,
        "restart-room",
        &["--expect-entries", "100"],
    )
    .await;
    assert_eq!(read["json"]["entries"]["e99"], "value-99");
    server.shutdown().await.unwrap();
}

/// Like `acknowledged_js_writes_survive_a_restart`, with the real binary and no goodbye: once
/// write.mjs has its acks, the server is killed with SIGKILL (nothing flushed on the way out),
/// restarted on the same data directory, and a fresh JS client reads every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_js_writes_survive_kill_9_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = process::ServerProcess::start(dir.path(), &[]);
    let url = format!("ws://{}", server.addr);
    let written = node("write.mjs", &url, "kill-room", &["--entries", "150"]).await;
    assert_eq!(written["mode"], "ack");
    assert_eq!(written["acks"].as_array().unwrap().last().unwrap(), 150);
    server.kill9();

    let server = process::ServerProcess::start(dir.path(), &[]);
    let url = format!("ws://{}", server.addr);
    let read = node("read.mjs", &url, "kill-room", &["--expect-entries", "150"]).await;
    assert_eq!(read["json"]["entries"]["e149"], "value-149");
    drop(server);
}

/// A yrs client and two WebsocketProvider clients edit one room at once and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yrs_client_and_two_js_clients_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    support::rust_and_js_clients_converge(&url, "three-way-room").await;
    server.shutdown().await.unwrap();
}

/// With auth on: a view-only WebsocketProvider sees edits live, gets "permission denied" when it
/// edits, and its edits reach no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_only_js_client_is_denied_and_its_edits_do_not_leak() {
    const SECRET: &str = "interop-test-secret-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let mut config = wedsync::Config::for_tests(dir.path());
    config.auth.jwt_secret = Some(SECRET.to_string());
    let server = wedsync::Server::start(config).await.expect("server starts");
    let url = format!("ws://{}", server.local_addr());
    let out = node("viewonly.mjs", &url, "viewonly-room", &["--secret", SECRET]).await;
    assert_eq!(out["denied"], true);
    assert_eq!(out["leaked"], false);
    server.shutdown().await.unwrap();
}

/// plan.mjs: a WebsocketProvider client builds a plan with an over-full table and a
/// double-booked vendor; GET /conflicts and the server's awareness state list exactly those,
/// fixing the plan clears both, GET /api/weddings/ROOM equals the client's toJSON(), and a
/// message POSTed while a client is offline reaches it on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_rest_api_matches_js_clients_conflicts_and_offline_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path()).await;
    let out = node("plan.mjs", &url, "plan-room", &[]).await;
    let kinds: Vec<(&str, Vec<&str>)> = out["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let items = c["items"].as_array().unwrap();
            (
                c["kind"].as_str().unwrap(),
                items.iter().map(|i| i.as_str().unwrap()).collect(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "table_over_capacity",
                vec!["guests/g1", "guests/g2", "guests/g3", "tables/t1"]
            ),
            (
                "vendor_double_booked",
                vec!["timeline/s1", "timeline/s2", "vendors/v1"]
            ),
        ],
        "{out}"
    );
    assert_eq!(out["awarenessConflicts"], out["conflicts"]);
    assert_eq!(out["fixed"], true);
    assert_eq!(out["planEqual"], true);
    assert_eq!(out["offlineMessage"], out["message"]);
    assert_eq!(out["message"]["text"], "DJ: load-in via the back gate");
    server.shutdown().await.unwrap();
}
