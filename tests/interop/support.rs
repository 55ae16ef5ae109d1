//! Support for the interop tests: running the Node scripts of `tests/js`, and a minimal
//! y-websocket client on yrs + tokio-tungstenite that joins the same rooms as the JS clients.
//!
//! Nothing here knows the server: every function takes a `ws://HOST:PORT` base URL, so the same
//! scenarios run against any y-websocket server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::Cursor;
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Array, ArrayRef, Doc, GetString, Map, MapRef, Out, ReadTxn, Text, TextRef, Transact,
    TransactionMut, Update,
};

/// Generous: a script has its own 20 s deadline; this only catches a wedged `node`.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// The machine has 2 cores shared by everything: at most two Node processes at once, however
/// many tests the harness runs in parallel.
static NODE_SLOTS: Semaphore = Semaphore::const_new(2);

/// `tests/js`, after checking that `npm ci` ran there. Fails (never skips) when it did not.
pub fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    for package in [
        "yjs",
        "y-websocket",
        "y-protocols",
        "lib0",
        "ws",
        "jsonwebtoken",
    ] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "tests/js/node_modules/{package} is missing: run `npm ci --prefix tests/js` \
             (Node >= 20) before `cargo test --test interop`"
        );
    }
    dir
}

/// Run `node tests/js/SCRIPT URL ROOM ARGS...`; panic with its stderr unless it exits 0; return
/// the JSON line it printed.
pub async fn node(script: &str, url: &str, room: &str, args: &[&str]) -> Value {
    let dir = js_dir();
    let _slot = NODE_SLOTS
        .acquire()
        .await
        .expect("semaphore is never closed");
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .arg(url)
        .arg(room)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `node` ({e}): the interop tests need Node >= 20"));
    let out = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} {room} {args:?}: no exit after {NODE_TIMEOUT:?}"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} {url} {room} {args:?} failed ({}):\n--- stderr\n{stderr}--- stdout\n{stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} printed nothing"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} printed no JSON line ({e}): {stdout}"))
}

/// A y-websocket client on yrs: sync step 1/2, updates, auth; awareness is ignored.
pub struct YClient {
    pub doc: Doc,
    pub map: MapRef,
    pub array: ArrayRef,
    pub text: TextRef,
    /// Received the server's sync step 2: the doc holds everything the server had.
    pub synced: bool,
    /// Reasons of "permission denied" auth messages received.
    pub auth_denied: Vec<String>,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl YClient {
    /// Connect to `BASE/ROOM` and send sync step 1. The roots are those converge.mjs edits.
    pub async fn connect(base: &str, room: &str) -> YClient {
        let url = format!("{base}/{room}");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("yrs client cannot connect to {url}: {e}"));
        let doc = Doc::new();
        let (map, array, text) = (
            doc.get_or_insert_map("map"),
            doc.get_or_insert_array("array"),
            doc.get_or_insert_text("text"),
        );
        let mut client = YClient {
            doc,
            map,
            array,
            text,
            synced: false,
            auth_denied: Vec::new(),
            ws,
        };
        let sv = client.doc.transact().state_vector();
        client.send(Message::Sync(SyncMessage::SyncStep1(sv))).await;
        client
    }

    async fn send(&mut self, msg: Message) {
        let frame = WsMessage::Binary(msg.encode_v1().into());
        self.ws.send(frame).await.expect("yrs client: send failed");
    }

    /// Wait for one frame and handle it.
    async fn pump(&mut self) {
        let data = match self.ws.next().await {
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Close(frame))) => panic!("yrs client: server closed: {frame:?}"),
            Some(Ok(_)) => return, // ping/pong/text
            Some(Err(e)) => panic!("yrs client: websocket error: {e}"),
            None => panic!("yrs client: connection ended"),
        };
        let mut replies = Vec::new();
        let mut decoder = DecoderV1::new(Cursor::new(&data));
        for msg in MessageReader::new(&mut decoder) {
            match msg.expect("yrs client: malformed message from the server") {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    replies.push(Message::Sync(SyncMessage::SyncStep2(diff)));
                }
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    self.apply(&update);
                    self.synced = true;
                }
                Message::Sync(SyncMessage::Update(update)) => self.apply(&update),
                Message::Auth(Some(reason)) => self.auth_denied.push(reason),
                _ => {} // awareness, awareness query, auth granted
            }
        }
        for reply in replies {
            self.send(reply).await;
        }
    }

    fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("yrs client: undecodable update");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("yrs client: update not applicable");
    }

    /// Handle incoming messages until `pred` holds; panic naming `what` after `timeout`.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !pred(self) {
            if tokio::time::timeout_at(deadline, self.pump())
                .await
                .is_err()
            {
                panic!(
                    "yrs client: timed out after {timeout:?} waiting for {what}; doc = {}",
                    self.json()
                );
            }
        }
    }

    /// Edit in one transaction and send the resulting update.
    pub async fn edit(&mut self, f: impl FnOnce(&Self, &mut TransactionMut)) {
        let update = {
            let mut txn = self.doc.transact_mut();
            f(self, &mut txn);
            txn.encode_update_v1()
        };
        self.send(Message::Sync(SyncMessage::Update(update))).await;
    }

    /// The three roots as JSON, shaped like converge.mjs's output.
    pub fn json(&self) -> Value {
        let txn = self.doc.transact();
        json!({
            "map": serde_json::to_value(self.map.to_json(&txn)).expect("map as JSON"),
            "array": serde_json::to_value(self.array.to_json(&txn)).expect("array as JSON"),
            "text": self.text.get_string(&txn),
        })
    }

    /// State vector as `{"clientId": clock}`, as the JS scripts print it.
    pub fn state_vector(&self) -> Value {
        let sv = self.doc.transact().state_vector();
        Value::Object(
            sv.iter()
                .map(|(client, clock)| (client.to_string(), json!(clock)))
                .collect(),
        )
    }
}

/// A yrs client and two `WebsocketProvider` clients edit one room at the same time (Y.Map, a
/// nested Y.Map created by JS, Y.Array, Y.Text) and all three must end with the same document.
pub async fn rust_and_js_clients_converge(base: &str, room: &str) {
    let mut rust = YClient::connect(base, room).await;
    rust.wait_until("sync with the server", Duration::from_secs(10), |c| {
        c.synced
    })
    .await;

    // The JS pair waits for "from-rust", which the Rust client sets in its last transaction.
    let js = tokio::spawn({
        let (base, room) = (base.to_string(), room.to_string());
        async move {
            node(
                "converge.mjs",
                &base,
                &room,
                &["--wait-for-key", "from-rust"],
            )
            .await
        }
    });

    rust.edit(|c, txn| {
        c.map.insert(txn, "rust-early", 1);
        c.array.push_back(txn, "R-early");
        c.text.insert(txn, 0, "[rust] ");
    })
    .await;
    // Second round on content the JS clients created: it races with their second round.
    rust.wait_until(
        "both JS clients' first edits",
        Duration::from_secs(20),
        |c| {
            let txn = c.doc.transact();
            c.map.contains_key(&txn, "guest-A") && c.map.contains_key(&txn, "from-B")
        },
    )
    .await;
    rust.edit(|c, txn| {
        match c.map.get(txn, "guest-A") {
            Some(Out::YMap(guest)) => {
                guest.insert(txn, "table", "t1");
            }
            other => panic!("guest-A should be a Y.Map, found {other:?}"),
        }
        c.array.insert(txn, 0, "R-late");
        c.text.insert(txn, 0, "[rust again] ");
        c.map.insert(txn, "from-rust", "yrs");
    })
    .await;

    let out = js.await.expect("converge.mjs task");
    assert_eq!(out["a"], out["b"], "the two JS clients differ");
    let js_view = out["a"].clone();
    rust.wait_until(
        "the same document as the JS clients",
        Duration::from_secs(10),
        |c| c.json() == js_view,
    )
    .await;
    assert_eq!(
        rust.state_vector(),
        out["stateVector"],
        "state vectors differ"
    );

    let view = rust.json();
    assert_eq!(view["map"]["from-rust"], "yrs");
    assert_eq!(view["map"]["rust-early"], 1);
    assert_eq!(
        view["map"]["guest-A"]["table"], "t1",
        "yrs edit inside a JS-created Y.Map"
    );
    assert_eq!(view["map"]["guest-B"]["rsvp"], "yes");
    let array: Vec<&str> = view["array"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        array.contains(&"R-early") && array.contains(&"R-late"),
        "array: {array:?}"
    );
    let text = view["text"].as_str().unwrap();
    for part in [
        "[rust] ",
        "[rust again] ",
        "hello from A. ",
        "hello from B. ",
    ] {
        assert!(text.contains(part), "text {text:?} lacks {part:?}");
    }
}
