//! The `wedsync` command line as an operator uses it: `token`, the `doc` tools on a stopped
//! server's data directory, the lock that keeps them away from a running server, and the exit
//! status and message of bad arguments.

mod common;
#[path = "process/mod.rs"]
mod process;

use std::path::Path;
use std::process::Output;

use common::{Client, Received};
use process::ServerProcess;
use tokio_tungstenite::tungstenite::Error as WsError;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

const SECRET: &str = "cli-test-secret-0123456789abcdef0123";

/// Runs `wedsync ARGS...` to completion.
fn run(args: &[&str]) -> Output {
    process::command()
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run wedsync")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "wedsync {args:?} failed ({:?}): {}",
        out.status,
        stderr(&out)
    );
    out
}

fn dir_str(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp path")
}

fn token(weddings: &[&str]) -> String {
    let mut args = vec![
        "token", "--secret", SECRET, "--sub", "alice", "--ttl", "10m",
    ];
    for w in weddings {
        args.extend(["--wedding", w]);
    }
    let out = ok(&args);
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

/// The HTTP status a refused WebSocket upgrade got.
async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{url}: unexpected error {e}"),
        Ok(_) => panic!("{url}: upgrade accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_cli_is_accepted_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--jwt-secret", SECRET]);
    let edit = token(&["w1:edit"]);
    let view_other = token(&["w2:view"]);

    let url = format!("{}?ack=1&token={edit}", server.url("w1"));
    let mut c = Client::connect(&url).await;
    let m = c.doc.get_or_insert_map("guests");
    c.edit(|txn| {
        m.insert(txn, "g1", "Ada");
    })
    .await;
    assert!(
        c.recv_until(|r| matches!(r, Received::Ack(2)))
            .await
            .is_some(),
        "the edit made with the CLI's token is stored"
    );
    assert_eq!(upgrade_status(&server.url("w1")).await, 401, "no token");
    assert_eq!(
        upgrade_status(&format!("{}?token={view_other}", server.url("w1"))).await,
        403,
        "a token for another wedding"
    );
    assert_eq!(
        upgrade_status(&format!("{}?token={edit}x", server.url("w1"))).await,
        401,
        "a tampered token"
    );
    drop(server);
}

fn content(doc: &Doc) -> (yrs::Any, String) {
    use yrs::types::ToJson;
    let m = doc.get_or_insert_map("guests");
    let t = doc.get_or_insert_text("notes");
    let txn = doc.transact();
    (m.to_json(&txn), t.get_string(&txn))
}

fn sv_json(doc: &Doc) -> serde_json::Value {
    let sv = doc.transact().state_vector();
    let map: serde_json::Map<String, serde_json::Value> = sv
        .iter()
        .map(|(client, clock)| (client.get().to_string(), (*clock).into()))
        .collect();
    serde_json::Value::Object(map)
}

fn doc_from_update(bytes: &[u8]) -> Doc {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(bytes).expect("a v1 update"))
        .expect("applies");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_tools_work_on_a_stopped_servers_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = dir_str(&data);
    let mut server = ServerProcess::start(&data, &[]);
    let mut c = Client::connect(&format!("{}?ack=1", server.url("plan"))).await;
    let m = c.doc.get_or_insert_map("guests");
    let t = c.doc.get_or_insert_text("notes");
    for i in 0..50 {
        c.edit(|txn| {
            m.insert(txn, format!("g{i}"), i);
            t.push(txn, "·");
            if i % 10 == 9 {
                m.remove(txn, &format!("g{}", i - 4));
            }
        })
        .await;
    }
    assert!(c
        .recv_until(|r| matches!(r, Received::Ack(51)))
        .await
        .is_some());
    let (sv, body) = (sv_json(&c.doc), content(&c.doc));
    drop(c);
    server.stop().await;

    assert_eq!(stdout(&ok(&["doc", "list", "--data-dir", d])), "plan\n");

    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "inspect", "plan", "--data-dir", d]).stdout).unwrap();
    assert_eq!(info["doc"], "plan");
    assert!(info["log_entries"].is_u64(), "{info}");
    assert_eq!(info["state_vector"], sv, "{info}");

    // export to a file and to stdout: the same document
    let file = tmp.path().join("plan.bin");
    let f = dir_str(&file);
    ok(&["doc", "export", "plan", "--out", f, "--data-dir", d]);
    let exported = std::fs::read(&file).unwrap();
    let via_stdout = ok(&["doc", "export", "plan", "--data-dir", d]).stdout;
    let doc = doc_from_update(&exported);
    assert_eq!(sv_json(&doc), sv);
    assert_eq!(content(&doc), body);
    assert_eq!(
        doc_from_update(&via_stdout).transact().state_vector(),
        doc.transact().state_vector()
    );

    // import into another document: the same state
    let imported: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "import", "copy", f, "--data-dir", d]).stdout).unwrap();
    assert_eq!(imported["doc"], "copy", "{imported}");
    let copy: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "inspect", "copy", "--data-dir", d]).stdout).unwrap();
    assert_eq!(copy["state_vector"], sv);
    assert_eq!(
        stdout(&ok(&["doc", "list", "--data-dir", d])),
        "copy\nplan\n"
    );

    // compact one document, then all: nothing changes but the layout
    let one: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "compact", "copy", "--data-dir", d]).stdout).unwrap();
    assert_eq!(one["doc"], "copy", "{one}");
    let all: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "compact", "--data-dir", d]).stdout).unwrap();
    assert!(all["failed"].as_array().unwrap().is_empty(), "{all}");
    let copy: serde_json::Value =
        serde_json::from_slice(&ok(&["doc", "inspect", "copy", "--data-dir", d]).stdout).unwrap();
    assert_eq!(copy["log_entries"], 0, "{copy}");
    assert_eq!(copy["state_vector"], sv);

    // a server on the directory serves the imported, compacted copy
    let server = ServerProcess::start(&data, &[]);
    let c = Client::connect(&server.url("copy")).await;
    assert_eq!(sv_json(&c.doc), sv);
    assert_eq!(content(&c.doc), body);
    assert_eq!(
        c.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .len(),
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
            .len()
    );
    drop(server);

    let missing = run(&["doc", "export", "nosuch", "--data-dir", d]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nosuch"), "{}", stderr(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_tools_refuse_a_directory_held_by_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_str(dir.path());
    let mut server = ServerProcess::start(dir.path(), &[]);
    for args in [
        vec!["doc", "list", "--data-dir", d],
        vec!["doc", "inspect", "plan", "--data-dir", d],
        vec!["doc", "compact", "--data-dir", d],
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("in use by a running wedsync server"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("acktrace"), "no backtrace: {err}");
    }
    server.stop().await;
    ok(&["doc", "list", "--data-dir", d]);
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["bogus"], "unrecognized subcommand"),
        (&["token", "--secret", "s"], "--sub"),
        (
            &[
                "token",
                "--secret",
                "s",
                "--sub",
                "u",
                "--wedding",
                "w1:owner",
            ],
            "--wedding",
        ),
        (
            &[
                "token",
                "--secret",
                "s",
                "--sub",
                "u",
                "--wedding",
                "w1:edit",
                "--ttl",
                "5x",
            ],
            "ttl",
        ),
        (
            &[
                "token",
                "--secret",
                "",
                "--sub",
                "u",
                "--wedding",
                "w1:edit",
            ],
            "--secret",
        ),
        (&["serve", "--listen", "nope"], "listen"),
        (&["serve", "--listen", "0.0.0.0:0"], "--insecure-open"),
        (&["serve", "--durability", "maybe"], "--durability"),
        (&["serve", "--redis", "redis://127.0.0.1:1"], "--node-id"),
        (&["serve", "--node-id", "a"], "--redis"),
        (
            &[
                "serve",
                "--redis",
                "redis://127.0.0.1:1",
                "--node-id",
                "a b",
            ],
            "node id",
        ),
        (
            &["serve", "--redis", "http://127.0.0.1:1", "--node-id", "a"],
            "redis url",
        ),
        (&["doc", "export"], "<DOC>"),
        (&["doc", "frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "wedsync {args:?}: {err}");
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "wedsync {args:?}: the message names {needle:?}: {err}"
        );
        assert!(!err.contains("acktrace"), "wedsync {args:?}: {err}");
        assert!(out.stdout.is_empty(), "wedsync {args:?} printed to stdout");
    }
}
