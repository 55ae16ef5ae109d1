//! Property: whatever the order of appends, compactions and restarts, the store gives back
//! exactly the document its clients built.
//!
//! Why it exists: the unit tests in `src/store/` check chosen sequences; this one lets proptest
//! pick the interleavings (a compaction between two clients' edits, a restart right after a
//! compaction, deletes folded into a snapshot, ...) and compares against an in-memory `yrs::Doc`
//! that applied every stored update.

use std::time::Duration;

use proptest::prelude::*;
use wedsync::store::admin::{self, AdminError};
use wedsync::store::{SledStore, Store};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, Text, Transact, Update};

const DOC: &str = "wedding-1";
const CLIENTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        client: usize,
        pos: u16,
        text: String,
    },
    Delete {
        client: usize,
        pos: u16,
        len: u8,
    },
    SetKey {
        client: usize,
        key: u8,
        value: i32,
    },
    RemoveKey {
        client: usize,
        key: u8,
    },
    /// Client `to` catches up with client `from` (a peer-to-peer sync, nothing stored): later
    /// edits of `to` then depend on `from`'s structs.
    Sync {
        from: usize,
        to: usize,
    },
    Compact,
    /// A compaction that loaded the document `lag` appends ago (a room compacting while its
    /// clients keep writing): the entries after its `upto_seq` must survive.
    CompactLagging {
        lag: u8,
    },
    Reopen {
        flush: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        6 => (client.clone(), any::<u16>(), "[a-z]{1,5}")
            .prop_map(|(client, pos, text)| Op::Insert { client, pos, text }),
        2 => (client.clone(), any::<u16>(), 1..4u8)
            .prop_map(|(client, pos, len)| Op::Delete { client, pos, len }),
        3 => (client.clone(), 0..5u8, any::<i32>())
            .prop_map(|(client, key, value)| Op::SetKey { client, key, value }),
        1 => (client.clone(), 0..5u8).prop_map(|(client, key)| Op::RemoveKey { client, key }),
        2 => (client.clone(), client).prop_map(|(from, to)| Op::Sync { from, to }),
        1 => Just(Op::Compact),
        1 => (0..4u8).prop_map(|lag| Op::CompactLagging { lag }),
        1 => any::<bool>().prop_map(|flush| Op::Reopen { flush }),
    ]
}

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(dir, Duration::from_secs(20)).expect("store opens")
}

/// Runs one edit on `doc` and returns it as a v1 update.
fn edit(doc: &Doc, op: &Op) -> Vec<u8> {
    let text = doc.get_or_insert_text("notes");
    let guests = doc.get_or_insert_map("guests");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    match op {
        Op::Insert { pos, text: s, .. } => {
            text.insert(&mut txn, u32::from(*pos) % (len + 1), s);
        }
        Op::Delete { pos, len: n, .. } if len > 0 => {
            let at = u32::from(*pos) % len;
            text.remove_range(&mut txn, at, u32::from(*n).min(len - at));
        }
        Op::SetKey { key, value, .. } => {
            guests.insert(&mut txn, format!("g{key}"), i64::from(*value));
        }
        Op::RemoveKey { key, .. } => {
            guests.remove(&mut txn, &format!("g{key}"));
        }
        _ => {}
    }
    txn.encode_update_v1()
}

fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("update decodes");
    doc.transact_mut()
        .apply_update(update)
        .expect("update applies");
}

/// Content (`Any` compares maps by content, not by iteration order) and state vector, compared between the reference and the loaded document.
fn fingerprint(doc: &Doc) -> (String, yrs::Any, Vec<(u64, u32)>) {
    let text = doc.get_or_insert_text("notes");
    let guests = doc.get_or_insert_map("guests");
    let txn = doc.transact();
    let mut sv: Vec<(u64, u32)> = txn
        .state_vector()
        .iter()
        .map(|(c, k)| (c.get(), *k))
        .collect();
    sv.sort_unstable();
    (text.get_string(&txn), guests.to_json(&txn), sv)
}

fn loaded(store: &SledStore) -> Doc {
    let stored = store.load(DOC).expect("load");
    admin::materialize(DOC, &stored).expect("stored updates apply")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn store_returns_what_clients_built(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let clients: Vec<Doc> = (0..CLIENTS).map(|i| Doc::with_client_id(i as u64 + 1)).collect();
        let reference = Doc::new();

        for op in &ops {
            match op {
                Op::Insert { client, .. }
                | Op::Delete { client, .. }
                | Op::SetKey { client, .. }
                | Op::RemoveKey { client, .. } => {
                    let update = edit(&clients[*client], op);
                    store.append(DOC, &[&update]).expect("append");
                    apply(&reference, &update);
                }
                Op::Sync { from, to } => {
                    let sv = clients[*to].transact().state_vector();
                    let diff = clients[*from].transact().encode_diff_v1(&sv);
                    apply(&clients[*to], &diff);
                }
                Op::Compact => match admin::compact(&store, DOC) {
                    Ok(_) | Err(AdminError::NotFound(_)) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("compact: {e}"))),
                },
                Op::CompactLagging { lag } => {
                    let mut stored = store.load(DOC).expect("load");
                    let lag = usize::from(*lag);
                    if lag < stored.updates.len() {
                        // Entries are numbered consecutively up to last_seq.
                        stored.updates.truncate(stored.updates.len() - lag);
                        let upto = stored.last_seq - lag as u64;
                        let snapshot = admin::materialize(DOC, &stored)
                            .expect("materialize")
                            .transact()
                            .encode_state_as_update_v1(&Default::default());
                        store.compact(DOC, &snapshot, upto).expect("compact");
                    }
                }
                Op::Reopen { flush } => {
                    if *flush {
                        store.flush().expect("flush");
                    }
                    drop(store);
                    store = open(dir.path());
                }
            }
        }
        prop_assert_eq!(fingerprint(&loaded(&store)), fingerprint(&reference));
        drop(store);
        let store = open(dir.path());
        prop_assert_eq!(fingerprint(&loaded(&store)), fingerprint(&reference));
        prop_assert!(store.verify_all(Duration::from_secs(20)).expect("verify").is_empty());
    }
}
