//! Property: concurrent wedding-plan edits converge, and so does the conflict report.
//!
//! Why it exists: the server publishes `conflicts()` to every client and each client may compute
//! its own view; that is only sound if the report is a pure function of the merged document.
//! Three replicas start from a shared plan, make random edits of the kinds real clients make
//! (seating, capacities, e-mails, timeline slots, budget amounts, messages, deletions, some of
//! them wrong on purpose), then receive each other's updates in a random order.

use proptest::prelude::*;
use wedsync::wedding::{self, NewMessage, TimelinePatch};
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, In, Map, MapPrelim, Out, ReadTxn, StateVector, Transact, Update};

const REPLICAS: usize = 3;
const MAX_OPS: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    AddGuest {
        guest: u8,
        email: u8,
    },
    Seat {
        guest: u8,
        table: Option<u8>,
    },
    SetEmail {
        guest: u8,
        email: u8,
    },
    AddTable {
        table: u8,
        capacity: u8,
    },
    CapacityAsText {
        table: u8,
    },
    RemoveTable {
        table: u8,
    },
    RemoveGuest {
        guest: u8,
    },
    AddVendor {
        vendor: u8,
    },
    SetSlot {
        slot: u8,
        start: u8,
        len: i8,
        vendor: Option<u8>,
    },
    PatchSlot {
        slot: u8,
        start: u8,
    },
    Budget {
        line: u8,
        cents: f64,
    },
    Message {
        channel: u8,
        at: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5u8, 0..4u8).prop_map(|(guest, email)| Op::AddGuest { guest, email }),
        (0..5u8, proptest::option::of(0..4u8)).prop_map(|(guest, table)| Op::Seat { guest, table }),
        (0..5u8, 0..4u8).prop_map(|(guest, email)| Op::SetEmail { guest, email }),
        (0..4u8, 0..4u8).prop_map(|(table, capacity)| Op::AddTable { table, capacity }),
        (0..4u8).prop_map(|table| Op::CapacityAsText { table }),
        (0..4u8).prop_map(|table| Op::RemoveTable { table }),
        (0..5u8).prop_map(|guest| Op::RemoveGuest { guest }),
        (0..3u8).prop_map(|vendor| Op::AddVendor { vendor }),
        (0..4u8, 12..32u8, -2..6i8, proptest::option::of(0..2u8)).prop_map(
            |(slot, start, len, vendor)| Op::SetSlot {
                slot,
                start,
                len,
                vendor
            }
        ),
        (0..4u8, 12..32u8).prop_map(|(slot, start)| Op::PatchSlot { slot, start }),
        (
            0..3u8,
            prop_oneof![Just(100.0), Just(-50.0), Just(12.5), Just(0.0)]
        )
            .prop_map(|(line, cents)| Op::Budget { line, cents }),
        (0..2u8, any::<u16>()).prop_map(|(channel, at)| Op::Message { channel, at }),
    ]
}

/// Hours from 2025-06-14T00:00 at +02:00, as an ISO 8601 string (hour 24+ is the next day).
fn at_hour(hour: i32) -> String {
    let (day, hour) = (14 + hour.div_euclid(24), hour.rem_euclid(24));
    format!("2025-06-{day:02}T{hour:02}:00:00+02:00")
}

const EMAILS: [&str; 4] = ["a@x.org", "A@X.org", "b@x.org", ""];

fn item(txn: &yrs::TransactionMut, section: &str, id: &str) -> Option<yrs::MapRef> {
    match txn.get_map(section)?.get(txn, id)? {
        Out::YMap(map) => Some(map),
        _ => None,
    }
}

fn apply(doc: &Doc, replica: usize, seq: usize, op: &Op) {
    let guests = doc.get_or_insert_map("guests");
    let tables = doc.get_or_insert_map("tables");
    let vendors = doc.get_or_insert_map("vendors");
    let timeline = doc.get_or_insert_map("timeline");
    let budget = doc.get_or_insert_map("budget");
    let mut txn = doc.transact_mut();
    let txn = &mut txn;
    match op {
        Op::AddGuest { guest, email } => {
            let prelim = MapPrelim::from([
                ("name", In::from(format!("Guest {guest}"))),
                ("email", In::from(EMAILS[*email as usize])),
                ("rsvp", In::from("pending")),
            ]);
            guests.insert(txn, format!("g{guest}"), prelim);
        }
        Op::Seat { guest, table } => {
            if let Some(g) = item(txn, "guests", &format!("g{guest}")) {
                match table {
                    Some(t) => {
                        g.insert(txn, "table", format!("t{t}"));
                    }
                    None => {
                        g.remove(txn, "table");
                    }
                }
            }
        }
        Op::SetEmail { guest, email } => {
            if let Some(g) = item(txn, "guests", &format!("g{guest}")) {
                g.insert(txn, "email", EMAILS[*email as usize]);
            }
        }
        Op::AddTable { table, capacity } => {
            let prelim = MapPrelim::from([
                ("name", In::from(format!("Table {table}"))),
                ("capacity", In::from(*capacity as f64)),
            ]);
            tables.insert(txn, format!("t{table}"), prelim);
        }
        Op::CapacityAsText { table } => {
            if let Some(t) = item(txn, "tables", &format!("t{table}")) {
                t.insert(txn, "capacity", "lots");
            }
        }
        Op::RemoveTable { table } => {
            tables.remove(txn, &format!("t{table}"));
        }
        Op::RemoveGuest { guest } => {
            guests.remove(txn, &format!("g{guest}"));
        }
        Op::AddVendor { vendor } => {
            let prelim = MapPrelim::from([("name", In::from(format!("Vendor {vendor}")))]);
            vendors.insert(txn, format!("v{vendor}"), prelim);
        }
        Op::SetSlot {
            slot,
            start,
            len,
            vendor,
        } => {
            let start = i32::from(*start);
            let mut fields = vec![
                ("start", In::from(at_hour(start))),
                ("end", In::from(at_hour(start + i32::from(*len)))),
            ];
            if let Some(v) = vendor {
                fields.push(("vendor", In::from(format!("v{v}"))));
            }
            timeline.insert(txn, format!("s{slot}"), MapPrelim::from_iter(fields));
        }
        Op::PatchSlot { slot, start } => {
            let patch = TimelinePatch {
                start: Some(at_hour(i32::from(*start))),
                ..TimelinePatch::default()
            };
            // Refusals (missing slot, end before start) are part of the game.
            let _ = wedding::patch_timeline_item(txn, &format!("s{slot}"), &patch);
        }
        Op::Budget { line, cents } => {
            let prelim = MapPrelim::from([("estimate_cents", In::Any(Any::from(*cents)))]);
            budget.insert(txn, format!("b{line}"), prelim);
        }
        Op::Message { channel, at } => {
            let msg = NewMessage {
                channel: ["general", "vendors"][*channel as usize].to_owned(),
                text: "on my way".to_owned(),
                author: format!("user-{replica}"),
                role: "planner".to_owned(),
                at_ms: 1_749_906_000_000 + i64::from(*at),
                id: format!("r{replica}-{seq}"),
            };
            wedding::append_message(txn, msg).expect("valid message");
        }
    }
}

fn base_plan() -> Doc {
    let doc = Doc::with_client_id(100);
    let ops = [
        Op::AddTable {
            table: 0,
            capacity: 2,
        },
        Op::AddTable {
            table: 1,
            capacity: 3,
        },
        Op::AddGuest { guest: 0, email: 0 },
        Op::AddGuest { guest: 1, email: 2 },
        Op::Seat {
            guest: 0,
            table: Some(0),
        },
        Op::AddVendor { vendor: 0 },
        Op::SetSlot {
            slot: 0,
            start: 15,
            len: 2,
            vendor: Some(0),
        },
    ];
    for (seq, op) in ops.iter().enumerate() {
        apply(&doc, 99, seq, op);
    }
    let meta = doc.get_or_insert_map("meta");
    let mut txn = doc.transact_mut();
    meta.insert(&mut txn, "date", "2025-06-14");
    meta.insert(&mut txn, "timezone", "+02:00");
    drop(txn);
    doc
}

fn apply_update(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("own update decodes");
    doc.transact_mut()
        .apply_update(update)
        .expect("own update applies");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn wedding_concurrent_edits_converge_with_identical_conflicts(
        edits in proptest::collection::vec(proptest::collection::vec(op(), 0..=MAX_OPS), REPLICAS),
        order in proptest::collection::vec(
            proptest::collection::vec(any::<u32>(), REPLICAS * MAX_OPS), REPLICAS),
    ) {
        let base = base_plan()
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let replicas: Vec<Doc> = (0..REPLICAS)
            .map(|i| {
                let doc = Doc::with_client_id(i as u64 + 1);
                apply_update(&doc, &base);
                doc
            })
            .collect();

        // Each edit is its own transaction, hence its own update, as from a real client.
        let mut updates: Vec<(usize, Vec<u8>)> = Vec::new();
        for (r, ops) in edits.iter().enumerate() {
            for (seq, op) in ops.iter().enumerate() {
                let before = replicas[r].transact().state_vector();
                apply(&replicas[r], r, seq, op);
                let diff = replicas[r].transact().encode_diff_v1(&before);
                updates.push((r, diff));
            }
        }

        // Deliver every other replica's updates in a random order (dependencies may arrive late).
        for (r, doc) in replicas.iter().enumerate() {
            let mut inbox: Vec<(u32, &[u8])> = updates
                .iter()
                .enumerate()
                .filter(|(_, (from, _))| *from != r)
                .map(|(i, (_, u))| (order[r][i], u.as_slice()))
                .collect();
            inbox.sort_by_key(|(key, _)| *key);
            for (_, update) in inbox {
                apply_update(doc, update);
            }
        }

        let first = replicas[0].transact();
        let plan = wedding::plan_json(&first);
        let report = wedding::conflicts(&first);
        for doc in &replicas[1..] {
            let txn = doc.transact();
            prop_assert_eq!(txn.state_vector(), first.state_vector());
            prop_assert_eq!(&wedding::plan_json(&txn), &plan);
            prop_assert_eq!(&wedding::conflicts(&txn), &report);
            prop_assert_eq!(
                wedding::messages(&txn, None, None, 100),
                wedding::messages(&first, None, None, 100)
            );
        }
        // The report is sorted and free of duplicates.
        let mut sorted = report.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted, report);
    }
}
