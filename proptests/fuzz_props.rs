//! Fuzzing in the normal test suite: arbitrary and mutated-valid frames never panic the frame
//! decoder, the update path (decode + apply into a `Doc`), or a live server.
//!
//! Why it exists: the cargo-fuzz targets in `fuzz/` run for hours on demand (nightly only); this
//! runs a bounded number of cases on every `cargo test`, starting from valid y-protocols frames
//! and mutating them (flips, truncation, insertion, huge varints), because purely random bytes
//! rarely get past the first tag byte.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wedsync::protocol::decode_client_frame;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

/// Valid frames of every kind a client sends: step 1, step 2, updates, awareness, query.
fn seeds() -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(7);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("guests");
    let arr = doc.get_or_insert_array("messages");
    let u1 = {
        let mut txn = doc.transact_mut();
        text.push(&mut txn, "hello wedding");
        map.insert(&mut txn, "g1", "Ana");
        arr.push_back(&mut txn, 42);
        txn.encode_update_v1()
    };
    let u2 = {
        let mut txn = doc.transact_mut();
        text.remove_range(&mut txn, 2, 5);
        map.remove(&mut txn, "g1");
        txn.encode_update_v1()
    };
    let sv = doc.transact().state_vector();
    let full = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(99),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock: 3,
            json: r#"{"user":{"name":"Ana"}}"#.into(),
        },
    );
    let awareness = Message::Awareness(yrs::sync::AwarenessUpdate { clients });
    let mut multi = Message::Sync(SyncMessage::SyncStep1(sv.clone())).encode_v1();
    multi.extend(Message::Sync(SyncMessage::Update(u2.clone())).encode_v1());
    vec![
        Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
        Message::Sync(SyncMessage::SyncStep2(full)).encode_v1(),
        Message::Sync(SyncMessage::Update(u1)).encode_v1(),
        Message::Sync(SyncMessage::Update(u2)).encode_v1(),
        awareness.encode_v1(),
        Message::AwarenessQuery.encode_v1(),
        multi,
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Replaces a byte with a 10-byte maximal varint (huge lengths and counts).
    HugeVarint {
        at: usize,
    },
    Delete {
        at: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        any::<usize>().prop_map(|at| Mutation::HugeVarint { at }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if frame.is_empty() {
            break;
        }
        let n = frame.len();
        match m {
            Mutation::Flip { at, xor } => frame[at % n] ^= xor,
            Mutation::Truncate { at } => frame.truncate(at % n),
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                frame.splice(at..at, bytes.iter().copied());
            }
            Mutation::HugeVarint { at } => {
                let at = at % n;
                frame.splice(
                    at..at + 1,
                    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                );
            }
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(n);
                frame.drain(at..end);
            }
        }
    }
    frame
}

fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let n = seeds().len();
    (0..n, prop::collection::vec(mutation(), 1..4))
        .prop_map(|(i, muts)| mutate(seeds()[i].clone(), &muts))
}

/// The room's update path: decode, apply into a document with content, encode again.
fn update_path(raw: &[u8]) -> Duration {
    let started = Instant::now();
    // The server's own decode: bounded counts, and proven harmless on a scratch document.
    if let Ok(update) = wedsync::protocol::decode_update_checked(raw) {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        text.push(&mut doc.transact_mut(), "base");
        let _ = doc.transact_mut().apply_update(update);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(
            Update::decode_v1(&state).is_ok(),
            "the server's own encoding must decode"
        );
    }
    started.elapsed()
}

/// Checks a frame through the decoder and, for every update in it, the update path.
fn check_frame(frame: &[u8]) {
    if let Ok(messages) = decode_client_frame(frame) {
        for m in messages {
            if let Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) = m {
                let took = update_path(&u);
                // Debug build, loaded machine: only a pathological input gets near this.
                assert!(
                    took < Duration::from_secs(5),
                    "update of {} bytes took {took:?}",
                    u.len()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(frame in prop::collection::vec(any::<u8>(), 0..256)) {
        check_frame(&frame);
        // The same bytes as the payload of an update message reach the update path.
        let mut wrapped = vec![0u8, 2];
        let mut len = frame.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 { wrapped.push(b); break; }
            wrapped.push(b | 0x80);
        }
        wrapped.extend(&frame);
        check_frame(&wrapped);
    }

    #[test]
    fn mutated_valid_frames_never_panic_the_decoder(frame in mutated_frame()) {
        check_frame(&frame);
    }
}

proptest! {
    // Each case is a handful of connections to one live server: keep the count small.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_never_harm_a_live_room(frames in prop::collection::vec(mutated_frame(), 8)) {
        live_room(frames);
    }
}

/// Sends each frame on its own connection to an in-process server, then checks that the
/// server still serves the document it had (nothing applied that was refused, nothing lost).
fn live_room(frames: Vec<Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = wedsync::Config::for_tests(dir.path());
        config.limits.max_message_bytes = 64 * 1024;
        let server = wedsync::Server::start(config).await.expect("server starts");
        let url = format!("ws://{}/fuzz", server.local_addr());
        // A known base state.
        let base = {
            let doc = Doc::with_client_id(5);
            doc.get_or_insert_text("base")
                .push(&mut doc.transact_mut(), "kept");
            let update = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            update
        };
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connects");
        ws.send(WsMessage::Binary(
            Message::Sync(SyncMessage::Update(base)).encode_v1().into(),
        ))
        .await
        .expect("send");
        for frame in frames {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connects");
            let _ = ws.send(WsMessage::Binary(frame.into())).await;
            // Then ask for the state: either the connection was closed for the frame, or it
            // answers (the frame was accepted).
            let probe = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
            let _ = ws.send(WsMessage::Binary(probe.into())).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, ws.next()).await {
                    Err(_) => panic!("no answer and no close within 10 s"),
                    Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => break,
                    Ok(Some(Ok(WsMessage::Binary(b)))) => {
                        if matches!(
                            Message::decode_v1(&b),
                            Ok(Message::Sync(SyncMessage::SyncStep2(_)))
                        ) {
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
        // The room still serves, and the base content is there.
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("still serving");
        let probe = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        ws.send(WsMessage::Binary(probe.into()))
            .await
            .expect("send");
        let doc = Doc::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(left, ws.next())
                .await
                .expect("answers in time")
                .expect("open")
                .expect("frame");
            if let WsMessage::Binary(b) = frame {
                if let Ok(Message::Sync(SyncMessage::SyncStep2(u))) = Message::decode_v1(&b) {
                    doc.transact_mut()
                        .apply_update(Update::decode_v1(&u).expect("server update decodes"))
                        .expect("applies");
                    break;
                }
            }
        }
        // (A mutated update may legally delete the base text; it cannot un-store it.)
        let sv = doc.transact().state_vector();
        assert!(
            sv.get(&yrs::ClientID::new(5)) >= 4,
            "the base update is still stored: {sv:?}"
        );
        drop(ws);
        server.shutdown().await.expect("clean shutdown");
    });
}
