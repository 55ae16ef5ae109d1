//! Shared helpers for the integration tests: start a real server on port 0 in a temp dir, and
//! a small y-websocket client built on yrs and tokio-tungstenite.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wedsync::config::Config;
use wedsync::Server;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

pub const STEP: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1:0 with its own temp data dir.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        tweak(&mut config);
        TestServer::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, mut config: Config) -> TestServer {
        init_logs();
        config.data_dir = dir.path().to_owned();
        let server = Server::start(config).await.expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            dir,
            addr,
        }
    }

    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}/{}", self.addr, doc)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Graceful shutdown; returns the data dir so a test can restart on it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        self.dir
    }
}

/// Server logs in test output when `RUST_LOG` is set (e.g. `RUST_LOG=wedsync=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// What a client saw arrive.
#[derive(Debug)]
pub enum Received {
    Msg(Message),
    Ack(u64),
    Close(Option<(u16, String)>),
}

/// A minimal y-websocket client: a yrs Doc kept in sync over one socket.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub doc: Doc,
    pub awareness_seen: AwarenessUpdate,
    pub acks: u64,
    pub permission_denied: Option<String>,
    pub closed: Option<Option<(u16, String)>>,
}

pub async fn connect_raw(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    ws
}

/// Connects with a tiny kernel receive buffer, so a client that stops reading fills the
/// server's queue after little data (the slow-consumer tests).
pub async fn connect_raw_small_buffer(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("ws://IP:PORT/... url");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket handshake");
    ws
}

impl Client {
    /// Connects and completes the handshake (server step 1 answered, own step 1 answered).
    pub async fn connect(url: &str) -> Client {
        Client::connect_with_doc(url, Doc::new()).await
    }

    /// Connects with a tiny kernel receive buffer (see [`connect_raw_small_buffer`]).
    pub async fn connect_small_buffer(url: &str) -> Client {
        Client::handshake(connect_raw_small_buffer(url).await, Doc::new()).await
    }

    /// Completes the handshake on an already upgraded socket (e.g. one opened with an
    /// `Authorization` header).
    pub async fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client::handshake(ws, Doc::new()).await
    }

    /// Connects with an existing document (an offline client coming back).
    pub async fn connect_with_doc(url: &str, doc: Doc) -> Client {
        Client::handshake(connect_raw(url).await, doc).await
    }

    async fn handshake(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, doc: Doc) -> Client {
        let mut c = Client {
            ws,
            doc,
            awareness_seen: AwarenessUpdate {
                clients: Default::default(),
            },
            acks: 0,
            permission_denied: None,
            closed: None,
        };
        c.sync().await;
        c
    }

    pub async fn send(&mut self, msg: &Message) {
        self.ws
            .send(WsMessage::Binary(msg.encode_v1().into()))
            .await
            .expect("send");
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// Sends our step 1 and waits until the server's step 2 arrived (and answers the
    /// server's step 1 with our diff, as y-websocket clients do).
    pub async fn sync(&mut self) {
        let sv = self.doc.transact().state_vector();
        self.send(&Message::Sync(SyncMessage::SyncStep1(sv))).await;
        self.recv_until(|r| matches!(r, Received::Msg(Message::Sync(SyncMessage::SyncStep2(_)))))
            .await
            .expect("server answers step 1 with step 2");
    }

    /// Makes a local edit and sends it as an update; returns the update bytes.
    pub async fn edit(&mut self, f: impl FnOnce(&mut TransactionMut)) -> Vec<u8> {
        let update = {
            let mut txn = self.doc.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        self.send(&Message::Sync(SyncMessage::Update(update.clone())))
            .await;
        update
    }

    /// Receives one frame (applying document messages) or `None` on timeout. Control frames
    /// (pings) do not extend the timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.closed.get_or_insert(None);
                    return Some(Received::Close(None));
                }
                Ok(Some(Err(_))) => {
                    self.closed.get_or_insert(None);
                    return Some(Received::Close(None));
                }
                Ok(Some(Ok(f))) => f,
            };
            match frame {
                WsMessage::Binary(data) => return Some(self.handle(&data).await),
                WsMessage::Close(frame) => {
                    let f = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    self.closed = Some(f.clone());
                    return Some(Received::Close(f));
                }
                _ => continue,
            }
        }
    }

    async fn handle(&mut self, data: &[u8]) -> Received {
        if data.first() == Some(&100) {
            let mut cur = Cursor::new(&data[1..]);
            let n: u64 = cur.read_var().expect("ack count");
            self.acks = n;
            return Received::Ack(n);
        }
        let msg = Message::decode_v1(data).expect("server sends valid messages");
        match &msg {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = self.doc.transact().encode_state_as_update_v1(sv);
                self.send(&Message::Sync(SyncMessage::SyncStep2(update)))
                    .await;
            }
            Message::Sync(SyncMessage::SyncStep2(u)) | Message::Sync(SyncMessage::Update(u)) => {
                let update = Update::decode_v1(u).expect("valid update");
                self.doc
                    .transact_mut()
                    .apply_update(update)
                    .expect("applies");
            }
            Message::Awareness(u) => {
                for (id, e) in &u.clients {
                    self.awareness_seen.clients.insert(*id, e.clone());
                }
            }
            Message::Auth(Some(reason)) => self.permission_denied = Some(reason.clone()),
            _ => {}
        }
        Received::Msg(msg)
    }

    /// Receives until `pred` holds for a received item; `None` on timeout or close.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.recv(left).await?;
            if pred(&r) {
                return Some(r);
            }
            if matches!(r, Received::Close(_)) {
                return None;
            }
        }
    }

    /// Receives until the document satisfies `pred`.
    pub async fn wait_doc(&mut self, mut pred: impl FnMut(&Doc) -> bool) -> bool {
        if pred(&self.doc) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                None | Some(Received::Close(_)) => return pred(&self.doc),
                Some(_) => {
                    if pred(&self.doc) {
                        return true;
                    }
                }
            }
        }
    }

    /// Receives until the connection closes; returns the close code and reason.
    pub async fn wait_close(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if let Some(c) = &self.closed {
                return c.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.recv(left).await.is_none() {
                panic!("connection did not close within {STEP:?}");
            }
        }
    }

    /// Drains whatever arrives within `quiet`.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Some(r) = self.recv(quiet).await {
            if matches!(r, Received::Close(_)) {
                return;
            }
        }
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    pub fn full_update(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }
}

/// Encodes an awareness update for one client id with a JSON state.
pub fn awareness_frame(client: u64, clock: u32, json: &str) -> Message {
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: json.into(),
        },
    );
    Message::Awareness(AwarenessUpdate { clients })
}

/// The close code of a tungstenite close code.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
