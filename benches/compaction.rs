//! Snapshot and compaction cost of a 5 MB document (issue 3), on the real sled store.
//!
//! `cargo bench --bench compaction`. The document is a wedding-plan-like map of 25,000 guests
//! with ~200-byte notes (about 5 MB encoded). Measured: encoding the snapshot
//! (`encode_state_as_update_v1`), one whole room compaction (encode + `Store::compact` folding
//! a 500-entry log + fsync), and loading it back (`Store::load` + applying into a fresh Doc,
//! what a room does on its first join).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wedsync::store::{SledStore, Store};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

fn big_doc() -> Doc {
    let doc = Doc::new();
    let guests = doc.get_or_insert_map("guests");
    let note = "x".repeat(200);
    for chunk in 0..25 {
        let mut txn = doc.transact_mut();
        for i in 0..1000 {
            guests.insert(&mut txn, format!("guest-{chunk}-{i}"), note.clone());
        }
    }
    doc
}

fn small_edit(doc: &Doc, i: u32) -> Vec<u8> {
    let guests = doc.get_or_insert_map("guests");
    let mut txn = doc.transact_mut();
    guests.insert(&mut txn, format!("edit-{i}"), "rsvp yes");
    txn.encode_update_v1()
}

fn bench(c: &mut Criterion) {
    let doc = big_doc();
    let snapshot = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    eprintln!("document: {} bytes encoded", snapshot.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("db"), Duration::from_secs(10)).expect("open");

    let mut g = c.benchmark_group("doc_5mb");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("encode_snapshot", |b| {
        b.iter(|| {
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        })
    });

    let mut edits = 0u32;
    g.bench_function("compact_500_entries_with_fsync", |b| {
        b.iter_batched(
            || {
                // A log of 500 small updates, as the room's threshold triggers it.
                let mut last = 0;
                for _ in 0..500 {
                    edits += 1;
                    let u = small_edit(&doc, edits);
                    last = store.append("wedding", &[u.as_slice()]).expect("append");
                }
                store.flush().expect("flush");
                last
            },
            |upto| {
                let snap = doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                store.compact("wedding", &snap, upto).expect("compact");
                store.flush().expect("flush");
            },
            criterion::BatchSize::PerIteration,
        )
    });

    g.bench_function("load_and_apply", |b| {
        b.iter(|| {
            let stored = store.load("wedding").expect("load");
            let fresh = Doc::new();
            let mut txn = fresh.transact_mut();
            for u in stored.snapshot.iter().chain(stored.updates.iter()) {
                txn.apply_update(Update::decode_v1(u).expect("decode"))
                    .expect("apply");
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
