//! Property: whatever order the server receives updates in — shuffled, duplicated, with
//! dependencies arriving after the updates that need them — every client converges to one
//! state, that state is the merge of all edits, and it survives a server restart.
//!
//! Why it exists: offline phones come back hours later and replay edits that depend on other
//! clients' edits they had seen. The server must keep out-of-order updates (yrs holds them as
//! pending; the store keeps the raw bytes) and never diverge. This drives the real server over
//! real sockets, so the room, the store and the relay are all under test.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Client, TestServer};
use proptest::prelude::*;
use yrs::sync::{Message, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

const CLIENTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        client: usize,
        pos: u32,
        text: String,
    },
    Delete {
        client: usize,
        pos: u32,
        len: u32,
    },
    MapSet {
        client: usize,
        key: u8,
        value: i32,
    },
    Push {
        client: usize,
        value: i32,
    },
    /// `to` learns everything `from` has so far (later edits of `to` depend on them).
    Learn {
        from: usize,
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        3 => (c.clone(), any::<u32>(), "[a-z]{1,6}").prop_map(|(client, pos, text)| Op::Insert { client, pos, text }),
        1 => (c.clone(), any::<u32>(), 1u32..4).prop_map(|(client, pos, len)| Op::Delete { client, pos, len }),
        2 => (c.clone(), 0u8..5, any::<i32>()).prop_map(|(client, key, value)| Op::MapSet { client, key, value }),
        1 => (c.clone(), any::<i32>()).prop_map(|(client, value)| Op::Push { client, value }),
        1 => (c.clone(), c).prop_map(|(from, to)| Op::Learn { from, to }),
    ]
}

/// Runs the ops on offline replicas; returns every update any replica produced.
fn run_offline(ops: &[Op]) -> (Vec<Doc>, Vec<Vec<u8>>) {
    let docs: Vec<Doc> = (0..CLIENTS)
        .map(|i| Doc::with_client_id(100 + i as u64))
        .collect();
    let mut updates = Vec::new();
    for op in ops {
        let (client, update) = match op {
            Op::Learn { from, to } => {
                if from == to {
                    continue;
                }
                let sv = docs[*to].transact().state_vector();
                let diff = docs[*from].transact().encode_state_as_update_v1(&sv);
                docs[*to]
                    .transact_mut()
                    .apply_update(Update::decode_v1(&diff).unwrap())
                    .unwrap();
                continue;
            }
            Op::Insert { client, pos, text } => {
                let t = docs[*client].get_or_insert_text("t");
                let mut txn = docs[*client].transact_mut();
                let len = t.len(&txn);
                t.insert(&mut txn, pos % (len + 1), text);
                (*client, txn.encode_update_v1())
            }
            Op::Delete { client, pos, len } => {
                let t = docs[*client].get_or_insert_text("t");
                let mut txn = docs[*client].transact_mut();
                let have = t.len(&txn);
                if have == 0 {
                    continue;
                }
                let at = pos % have;
                t.remove_range(&mut txn, at, (*len).min(have - at));
                (*client, txn.encode_update_v1())
            }
            Op::MapSet { client, key, value } => {
                let m = docs[*client].get_or_insert_map("m");
                let mut txn = docs[*client].transact_mut();
                m.insert(&mut txn, format!("k{key}"), *value);
                (*client, txn.encode_update_v1())
            }
            Op::Push { client, value } => {
                let a = docs[*client].get_or_insert_array("a");
                let mut txn = docs[*client].transact_mut();
                a.push_back(&mut txn, *value);
                (*client, txn.encode_update_v1())
            }
        };
        let _ = client;
        updates.push(update);
    }
    (docs, updates)
}

/// Text, map and array contents (maps compare by content, not by iteration order).
fn snapshot(doc: &Doc) -> (String, Option<yrs::Any>, Option<yrs::Any>) {
    let txn = doc.transact();
    let t = txn
        .get_text("t")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default();
    let m = txn.get_map("m").map(|m| m.to_json(&txn));
    let a = txn.get_array("a").map(|a| a.to_json(&txn));
    (t, m, a)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_with_duplicates_converges(
        ops in prop::collection::vec(op(), 1..24),
        order_seed in any::<u64>(),
        dup_every in 2usize..5,
        split in 1usize..4,
    ) {
        let (docs, updates) = run_offline(&ops);
        // the reference: every update applied to one document
        let reference = Doc::new();
        for u in &updates {
            reference.transact_mut().apply_update(Update::decode_v1(u).unwrap()).unwrap();
        }
        // a shuffled delivery with duplicates
        let mut delivery: Vec<&Vec<u8>> = updates.iter().collect();
        for (i, u) in updates.iter().enumerate() {
            if i % dup_every == 0 {
                delivery.push(u);
            }
        }
        let mut state = order_seed | 1;
        for i in (1..delivery.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            delivery.swap(i, (state % (i as u64 + 1)) as usize);
        }

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let srv = TestServer::start().await;
            let url = srv.url("prop");
            // deliver through `split` connections, round robin
            let mut senders = Vec::new();
            for _ in 0..split {
                senders.push(Client::connect(&url).await);
            }
            for (i, u) in delivery.iter().enumerate() {
                let c = &mut senders[i % split];
                c.send(&Message::Sync(SyncMessage::Update((*u).clone()))).await;
            }
            for c in senders.iter_mut() {
                c.sync().await; // a round trip: everything sent before is committed
            }
            let fresh = Client::connect(&url).await;
            assert_eq!(snapshot(&fresh.doc), snapshot(&reference), "server state is the merge of all edits");
            assert_eq!(fresh.state_vector(), reference.transact().state_vector());

            // every offline client syncs and converges too
            for d in docs {
                let c = Client::connect_with_doc(&url, d).await;
                assert_eq!(snapshot(&c.doc), snapshot(&reference));
                drop(c);
            }

            // and the state survives a restart (raw log replay, out-of-order parts included)
            drop(senders);
            drop(fresh);
            let dir = srv.stop().await;
            let config = wedsync::Config::for_tests(dir.path());
            let srv = TestServer::start_in(dir, config).await;
            let again = Client::connect(&srv.url("prop")).await;
            assert_eq!(snapshot(&again.doc), snapshot(&reference), "after restart");
            let full = again.doc.transact().encode_state_as_update_v1(&StateVector::default());
            let check = Doc::new();
            check.transact_mut().apply_update(Update::decode_v1(&full).unwrap()).unwrap();
            assert_eq!(snapshot(&check), snapshot(&reference));
            drop(again);
            srv.stop().await;
        });
    }
}
