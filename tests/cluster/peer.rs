//! A y-websocket client on yrs for the cluster tests: keeps its `Doc` across connections, can
//! reconnect to another node (and then syncs both ways, as a `WebsocketProvider` does), counts
//! `?ack=1` acks per connection and knows which of its own keys were acknowledged. It never
//! panics on a broken connection: the tests break connections on purpose.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapRef, ReadTxn, StateVector, Text, TextRef,
    Transact, Update,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The root map every writer inserts its keys into.
pub const MAP: &str = "m";
/// Unacknowledged update messages an ack writer allows itself.
pub const ACK_WINDOW: u64 = 32;

/// The roots the tests write, obtained before a transaction opens (asking a `Doc` for a root
/// inside `transact_mut` would wait for that very transaction).
#[derive(Clone)]
pub struct Roots {
    pub map: MapRef,
    pub array: ArrayRef,
    pub text: TextRef,
}

impl Roots {
    pub fn of(doc: &Doc) -> Roots {
        Roots {
            map: doc.get_or_insert_map(MAP),
            array: doc.get_or_insert_array("a"),
            text: doc.get_or_insert_text("t"),
        }
    }
}

pub struct Peer {
    pub name: String,
    pub doc: Doc,
    ws: Option<Ws>,
    /// Full URL of the current (or last) connection, without the `?ack=1`.
    pub url: String,
    pub ack: bool,
    /// Update messages (step 2 and updates) sent on the current connection.
    conn_updates: u64,
    /// Last ack count received on the current connection.
    conn_acked: u64,
    /// (index of the update message on its connection, key it carried) not yet acked.
    pending: VecDeque<(u64, Option<String>)>,
    /// Own keys whose update message was acknowledged.
    pub acked: BTreeSet<String>,
    /// Connections opened so far.
    pub connections: u32,
    /// Why the last connection ended (close frame or error), if it did.
    pub last_end: Option<String>,
    /// Reasons of "permission denied" messages.
    pub denied: Vec<String>,
}

impl Peer {
    /// A peer with an empty document, not connected.
    pub fn new(name: &str, ack: bool) -> Peer {
        Peer {
            name: name.to_string(),
            doc: Doc::new(),
            ws: None,
            url: String::new(),
            ack,
            conn_updates: 0,
            conn_acked: 0,
            pending: VecDeque::new(),
            acked: BTreeSet::new(),
            connections: 0,
            last_end: None,
            denied: Vec::new(),
        }
    }

    /// Connects and syncs; panics when that fails.
    pub async fn connect(name: &str, url: &str, ack: bool) -> Peer {
        let mut p = Peer::new(name, ack);
        if let Err(e) = p.try_connect(url).await {
            panic!("{name}: cannot connect to {url}: {e}");
        }
        p
    }

    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    /// Connects to `url` (a full `ws://HOST:PORT/DOC`), sends sync step 1 and waits for the
    /// server's step 2 (answering its step 1 with our diff, so offline edits go up).
    pub async fn try_connect(&mut self, url: &str) -> Result<(), String> {
        self.disconnect().await;
        self.url = url.to_string();
        let full = if self.ack {
            format!("{url}?ack=1")
        } else {
            url.to_string()
        };
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(full.as_str()),
        )
        .await
        .map_err(|_| format!("connect to {full} timed out"))?
        .map_err(|e| format!("connect to {full}: {e}"))?;
        self.ws = Some(ws);
        self.connections += 1;
        self.conn_updates = 0;
        self.conn_acked = 0;
        self.pending.clear();
        self.last_end = None;
        let sv = self.doc.transact().state_vector();
        self.send(Message::Sync(SyncMessage::SyncStep1(sv))).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.disconnect().await;
                return Err(format!(
                    "{}: no sync step 2 from {url} within 20 s",
                    self.name
                ));
            }
            if self.pump(left).await? == Some(true) {
                return Ok(());
            }
        }
    }

    /// Closes the connection (politely, without waiting long).
    pub async fn disconnect(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        }
        self.pending.clear();
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_connection(&mut self) {
        self.ws = None;
        self.pending.clear();
    }

    async fn send(&mut self, msg: Message) -> Result<(), String> {
        let ws = self.ws.as_mut().ok_or("not connected")?;
        let counts = matches!(
            msg,
            Message::Sync(SyncMessage::SyncStep2(_)) | Message::Sync(SyncMessage::Update(_))
        );
        match ws.send(WsMessage::Binary(msg.encode_v1().into())).await {
            Ok(()) => {
                if counts {
                    self.conn_updates += 1;
                }
                Ok(())
            }
            Err(e) => {
                self.ws = None;
                self.last_end = Some(format!("send failed: {e}"));
                Err(format!("{}: send failed: {e}", self.name))
            }
        }
    }

    /// Makes an edit; sends it when connected (otherwise it stays local until the next
    /// connection's sync). `key` is the own key this edit wrote, for the acked set.
    pub async fn edit(
        &mut self,
        key: Option<String>,
        f: impl FnOnce(&Roots, &mut yrs::TransactionMut),
    ) -> Result<(), String> {
        let roots = Roots::of(&self.doc);
        let update = {
            let mut txn = self.doc.transact_mut();
            f(&roots, &mut txn);
            txn.encode_update_v1()
        };
        if self.ws.is_none() {
            return Err(format!("{}: offline edit", self.name));
        }
        self.send(Message::Sync(SyncMessage::Update(update)))
            .await?;
        self.pending.push_back((self.conn_updates, key));
        Ok(())
    }

    /// Inserts `key = value` into the root map [`MAP`].
    pub async fn insert(&mut self, key: String, value: i64) -> Result<(), String> {
        let k = key.clone();
        self.edit(Some(key), move |r, txn| {
            r.map.insert(txn, k, value);
        })
        .await
    }

    /// Update messages sent on this connection and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.conn_updates.saturating_sub(self.conn_acked)
    }

    /// Waits for one frame and handles it. `Ok(None)`: timeout; `Ok(Some(step2))`: a frame was
    /// handled (`step2` tells whether it held the server's sync step 2); `Err`: the connection
    /// ended (the peer is then disconnected).
    pub async fn pump(&mut self, timeout: Duration) -> Result<Option<bool>, String> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(format!("{}: not connected", self.name));
        };
        let frame = match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => Err("connection ended".to_string()),
            Ok(Some(Err(e))) => Err(format!("websocket error: {e}")),
            Ok(Some(Ok(WsMessage::Close(f)))) => Err(format!(
                "closed by the server: {:?}",
                f.map(|f| (u16::from(f.code), f.reason.to_string()))
            )),
            Ok(Some(Ok(WsMessage::Binary(data)))) => Ok(data),
            Ok(Some(Ok(_))) => return Ok(Some(false)),
        };
        let data = match frame {
            Ok(d) => d,
            Err(e) => {
                self.ws = None;
                self.pending.clear();
                self.last_end = Some(e.clone());
                return Err(format!("{}: {e}", self.name));
            }
        };
        self.handle(&data).await.map(Some)
    }

    async fn handle(&mut self, data: &[u8]) -> Result<bool, String> {
        if data.first() == Some(&100) {
            let n: u64 = Cursor::new(&data[1..])
                .read_var()
                .map_err(|e| format!("{}: bad ack frame: {e}", self.name))?;
            if n < self.conn_acked || n > self.conn_updates {
                return Err(format!(
                    "{}: ack count {n} after {} with {} update messages sent",
                    self.name, self.conn_acked, self.conn_updates
                ));
            }
            self.conn_acked = n;
            while let Some((idx, _)) = self.pending.front() {
                if *idx > n {
                    break;
                }
                if let Some((_, Some(key))) = self.pending.pop_front() {
                    self.acked.insert(key);
                }
            }
            return Ok(false);
        }
        let mut step2 = false;
        let mut replies = Vec::new();
        {
            let mut decoder = DecoderV1::new(Cursor::new(data));
            for msg in MessageReader::new(&mut decoder) {
                let msg = msg.map_err(|e| format!("{}: undecodable message: {e}", self.name))?;
                match msg {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                        replies.push(Message::Sync(SyncMessage::SyncStep2(diff)));
                    }
                    Message::Sync(SyncMessage::SyncStep2(u)) => {
                        self.apply(&u)?;
                        step2 = true;
                    }
                    Message::Sync(SyncMessage::Update(u)) => self.apply(&u)?,
                    Message::Auth(Some(reason)) => self.denied.push(reason),
                    _ => {}
                }
            }
        }
        for r in replies {
            self.send(r).await?;
            self.pending.push_back((self.conn_updates, None));
        }
        Ok(step2)
    }

    fn apply(&self, update: &[u8]) -> Result<(), String> {
        let u = Update::decode_v1(update).map_err(|e| format!("{}: bad update: {e}", self.name))?;
        self.doc
            .transact_mut()
            .apply_update(u)
            .map_err(|e| format!("{}: update not applicable: {e}", self.name))
    }

    /// Handles frames until `pred` holds (true) or `timeout` passes or the connection ends
    /// (false).
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Peer) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.pump(left).await {
                Ok(_) => {}
                Err(_) => return pred(self),
            }
        }
    }

    /// Waits until every update message sent on this connection is acknowledged.
    pub async fn wait_all_acked(&mut self, timeout: Duration) -> bool {
        self.wait_until(timeout, |p| p.unacked() == 0).await
    }

    /// Handles whatever arrives within `quiet`.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(_)) = self.pump(quiet).await {}
    }

    pub fn keys(&self) -> BTreeSet<String> {
        keys(&self.doc)
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The whole document as one update.
    pub fn full_update(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }
}

/// Keys of the root map [`MAP`].
pub fn keys(doc: &Doc) -> BTreeSet<String> {
    let map = doc.get_or_insert_map(MAP);
    let txn = doc.transact();
    map.keys(&txn).map(str::to_owned).collect()
}

/// Comparable content of the roots the tests write: map `m`, array `a`, text `t`.
pub fn content(doc: &Doc) -> (Any, Any, String) {
    let map = doc.get_or_insert_map(MAP);
    let arr = doc.get_or_insert_array("a");
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    (map.to_json(&txn), arr.to_json(&txn), text.get_string(&txn))
}

/// Whether `big` has at least every clock of `small`.
pub fn sv_covers(big: &StateVector, small: &StateVector) -> bool {
    small
        .iter()
        .all(|(client, clock)| big.get(client) >= *clock)
}

pub fn merge_sv(into: &mut StateVector, other: &StateVector) {
    for (client, clock) in other.iter() {
        into.set_max(*client, *clock);
    }
}

/// A document holding the union of the given documents (each one's full state applied).
pub fn union_doc<'a>(docs: impl IntoIterator<Item = &'a Doc>) -> Doc {
    let out = Doc::new();
    for d in docs {
        let u = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        out.transact_mut()
            .apply_update(Update::decode_v1(&u).expect("own encoding decodes"))
            .expect("applies");
    }
    out
}

/// Appends `x` to the array root `a` and inserts text into `t` (content besides the map).
pub fn push_extra(r: &Roots, txn: &mut yrs::TransactionMut, tag: &str, i: u64) {
    r.array.push_back(txn, format!("{tag}-{i}"));
    let len = r.text.len(txn);
    r.text.insert(
        txn,
        (i as u32).wrapping_mul(7) % (len + 1),
        &format!("<{tag}{i}>"),
    );
}
