//! Unit tests of the wedding-plan view, writers and conflict checks.
//!
//! Why it exists: documents here are built with yrs the way a JavaScript client builds them
//! (nested Y.Maps created through `MapPrelim`, numbers that arrive as floats after a round trip),
//! so the tests check what the server makes of real client data, including hostile data.

use serde_json::json;
use yrs::types::text::TextPrelim;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, In, Map, MapPrelim, ReadTxn, StateVector, Transact, Update,
    WriteTxn,
};

use super::conflicts::fixed_offset;
use super::*;

fn doc(client: u64) -> Doc {
    Doc::with_client_id(client)
}

/// `doc.getMap(section).set(id, new Y.Map(Object.entries(fields)))`
fn put(doc: &Doc, section: &str, id: &str, fields: Vec<(&str, In)>) {
    let root = doc.get_or_insert_map(section);
    let mut txn = doc.transact_mut();
    root.insert(&mut txn, id, MapPrelim::from_iter(fields));
}

/// `doc.getMap(section).set(id, value)` for a raw value.
fn put_raw(doc: &Doc, section: &str, id: &str, value: impl Into<In>) {
    let root = doc.get_or_insert_map(section);
    let mut txn = doc.transact_mut();
    root.insert(&mut txn, id, value.into());
}

/// `doc.getMap(section).get(id).set(key, value)`
fn set(doc: &Doc, section: &str, id: &str, key: &str, value: impl Into<In>) {
    let root = doc.get_or_insert_map(section);
    let mut txn = doc.transact_mut();
    let Some(yrs::Out::YMap(item)) = root.get(&txn, id) else {
        panic!("{section}/{id} is not a Y.Map");
    };
    item.insert(&mut txn, key, value.into());
}

fn meta(doc: &Doc, fields: Vec<(&str, In)>) {
    let root = doc.get_or_insert_map("meta");
    let mut txn = doc.transact_mut();
    for (key, value) in fields {
        root.insert(&mut txn, key, value);
    }
}

fn s(v: &str) -> In {
    In::Any(Any::from(v))
}
fn n(v: f64) -> In {
    In::Any(Any::from(v))
}

fn sync(from: &Doc, to: &Doc) {
    let sv = to.transact().state_vector();
    let update = from.transact().encode_diff_v1(&sv);
    to.transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
}

fn report(doc: &Doc) -> Vec<Conflict> {
    conflicts(&doc.transact())
}

fn kinds(doc: &Doc) -> Vec<(&'static str, Vec<String>)> {
    report(doc)
        .into_iter()
        .map(|c| (c.kind.as_str(), c.items))
        .collect()
}

/// A small plan without problems.
fn clean_plan() -> Doc {
    let d = doc(1);
    meta(
        &d,
        vec![
            ("title", s("Ana & Ben")),
            ("date", s("2025-06-14")),
            ("timezone", s("Europe/Lisbon")),
            ("status", s("planning")),
        ],
    );
    put(
        &d,
        "tables",
        "t1",
        vec![("name", s("Family")), ("capacity", n(2.0))],
    );
    put(
        &d,
        "guests",
        "g1",
        vec![
            ("name", s("Carla")),
            ("email", s("carla@example.com")),
            ("rsvp", s("yes")),
            ("table", s("t1")),
            ("plus_one", In::Any(Any::Bool(false))),
        ],
    );
    put(
        &d,
        "guests",
        "g2",
        vec![
            ("name", s("Dan")),
            ("email", s("dan@example.com")),
            ("rsvp", s("pending")),
            ("table", s("t1")),
        ],
    );
    put(
        &d,
        "vendors",
        "v1",
        vec![("name", s("DJ Lux")), ("status", s("booked"))],
    );
    put(
        &d,
        "timeline",
        "s1",
        vec![
            ("title", s("Ceremony")),
            ("start", s("2025-06-14T15:00:00+01:00")),
            ("end", s("2025-06-14T16:00:00+01:00")),
            ("vendor", s("v1")),
            ("status", s("planned")),
        ],
    );
    put(
        &d,
        "timeline",
        "s2",
        vec![
            ("title", s("Party")),
            ("start", s("2025-06-14T16:00:00+01:00")),
            ("end", s("2025-06-15T01:30:00+01:00")),
            ("vendor", s("v1")),
        ],
    );
    put(
        &d,
        "budget",
        "b1",
        vec![
            ("label", s("Flowers")),
            ("estimate_cents", n(120000.0)),
            ("actual_cents", In::Any(Any::from(99_950_i64))),
            ("paid", In::Any(Any::Bool(true))),
        ],
    );
    put(
        &d,
        "tasks",
        "k1",
        vec![("title", s("Book DJ")), ("due", s("2025-05-01"))],
    );
    d
}

// ---------------------------------------------------------------- schema

#[test]
fn wedding_section_names_round_trip_and_unknown_is_typed() {
    for section in Section::ALL {
        assert_eq!(section.name().parse::<Section>(), Ok(section));
    }
    assert_eq!(
        "seating".parse::<Section>(),
        Err(UnknownSection("seating".to_owned()))
    );
}

#[test]
fn wedding_fixed_offsets_parse_and_named_zones_do_not() {
    let h = |h: i8, m: i8| time::UtcOffset::from_hms(h, m, 0).ok();
    assert_eq!(fixed_offset("UTC"), h(0, 0));
    assert_eq!(fixed_offset("Z"), h(0, 0));
    assert_eq!(fixed_offset("+02:00"), h(2, 0));
    assert_eq!(fixed_offset("UTC+2"), h(2, 0));
    assert_eq!(fixed_offset("-0530"), h(-5, -30));
    assert_eq!(fixed_offset("Europe/Paris"), None);
    assert_eq!(fixed_offset("+é1"), None);
    assert_eq!(fixed_offset("+99:00"), None);
    assert_eq!(fixed_offset(""), None);
}

// ---------------------------------------------------------------- view

#[test]
fn wedding_plan_json_matches_yjs_to_json() {
    let d = doc(1);
    put(
        &d,
        "guests",
        "g1",
        vec![
            ("name", s("Carla")),
            ("table", s("t1")),
            ("favourite_song", s("Dancing Queen")), // unknown field: kept
            ("notes", In::Text(TextPrelim::new("vegan").into())),
            ("tags", In::Array(ArrayPrelim::from(vec![s("vip"), n(2.0)]))),
        ],
    );
    put(&d, "tables", "t1", vec![("capacity", n(8.0))]);
    {
        let mut txn = d.transact_mut();
        let messages = txn.get_or_insert_array("messages");
        messages.push_back(
            &mut txn,
            MapPrelim::from([("id", s("m1")), ("at", n(1_749_906_000_000.0))]),
        );
    }
    let plan = plan_json(&d.transact());
    assert_eq!(
        plan,
        json!({
            "meta": {},
            "timeline": {},
            "guests": {"g1": {
                "name": "Carla", "table": "t1", "favourite_song": "Dancing Queen",
                "notes": "vegan", "tags": ["vip", 2]
            }},
            "tables": {"t1": {"capacity": 8}},
            "vendors": {},
            "tasks": {},
            "budget": {},
            "messages": [{"id": "m1", "at": 1_749_906_000_000_i64}],
        })
    );
    // Integers print as integers, as JSON.stringify does.
    assert!(plan.to_string().contains("\"capacity\":8}"));
    assert_eq!(
        section_json(&d.transact(), Section::Tables),
        json!({"t1": {"capacity": 8}})
    );
    assert_eq!(
        item_json(&d.transact(), Section::Guests, "g1").unwrap()["table"],
        "t1"
    );
    assert_eq!(item_json(&d.transact(), Section::Guests, "nope"), None);
}

#[test]
fn wedding_view_is_identical_after_a_round_trip_through_updates() {
    let a = clean_plan();
    let b = doc(2);
    sync(&a, &b);
    assert_eq!(plan_json(&a.transact()), plan_json(&b.transact()));
    assert_eq!(report(&a), report(&b));
}

#[test]
fn wedding_wrong_types_never_panic() {
    let d = doc(1);
    put_raw(&d, "guests", "g-number", n(3.5));
    put_raw(
        &d,
        "guests",
        "g-text",
        In::Text(TextPrelim::new("hi").into()),
    );
    put_raw(
        &d,
        "guests",
        "g-plain",
        Any::from(std::collections::HashMap::from([(
            "table".to_owned(),
            Any::from(7.0),
        )])),
    );
    put(&d, "tables", "t1", vec![("capacity", s("eight"))]);
    put(
        &d,
        "timeline",
        "s1",
        vec![("start", n(1.0)), ("end", s("soon"))],
    );
    put(&d, "budget", "b1", vec![("estimate_cents", s("12 EUR"))]);
    put_raw(&d, "vendors", "v1", In::Any(Any::Null));
    meta(&d, vec![("date", n(20250614.0)), ("timezone", s("+25:00"))]);
    {
        let mut txn = d.transact_mut();
        let messages = txn.get_or_insert_array("messages");
        messages.push_back(&mut txn, n(1.0));
        messages.push_back(&mut txn, MapPrelim::from([("at", s("yesterday"))]));
    }
    let txn = d.transact();
    let plan = plan_json(&txn);
    assert_eq!(plan["guests"]["g-number"], json!(3.5));
    assert_eq!(plan["guests"]["g-text"], json!("hi"));
    assert_eq!(plan["guests"]["g-plain"], json!({"table": 7}));
    assert_eq!(plan["tables"]["t1"]["capacity"], json!("eight"));
    assert!(messages(&txn, None, None, 10).is_empty());
    let found = conflicts(&txn);
    assert!(found
        .iter()
        .all(|c| c.kind == ConflictKind::SchemaViolation));
    for item in [
        "guests/g-number",
        "guests/g-text",
        "guests/g-plain",
        "tables/t1",
        "timeline/s1",
        "budget/b1",
        "vendors/v1",
        "meta",
        "messages/#0",
        "messages/#1",
    ] {
        assert!(
            found.iter().any(|c| c.items == [item]),
            "no schema violation for {item}: {found:#?}"
        );
    }
}

// ---------------------------------------------------------------- conflicts

#[test]
fn wedding_clean_plan_has_no_conflicts() {
    assert_eq!(report(&clean_plan()), vec![]);
}

#[test]
fn wedding_table_over_capacity_counts_plus_ones() {
    let d = clean_plan();
    set(&d, "guests", "g2", "plus_one", s("Eve"));
    assert_eq!(
        kinds(&d),
        vec![(
            "table_over_capacity",
            vec![
                "guests/g1".to_owned(),
                "guests/g2".to_owned(),
                "tables/t1".to_owned()
            ]
        )]
    );
    set(&d, "tables", "t1", "capacity", n(3.0));
    assert_eq!(report(&d), vec![]);
}

#[test]
fn wedding_guest_at_missing_table_is_reported() {
    let d = clean_plan();
    set(&d, "guests", "g2", "table", s("t9"));
    assert_eq!(
        kinds(&d),
        vec![("unknown_table", vec!["guests/g2".to_owned()])]
    );
}

#[test]
fn wedding_vendor_double_booking() {
    let d = clean_plan();
    // s1 ends exactly when s2 starts: adjacent, not overlapping.
    assert_eq!(report(&d), vec![]);
    set(
        &d,
        "timeline",
        "s2",
        "start",
        s("2025-06-14T15:30:00+01:00"),
    );
    assert_eq!(
        kinds(&d),
        vec![(
            "vendor_double_booked",
            vec![
                "timeline/s1".to_owned(),
                "timeline/s2".to_owned(),
                "vendors/v1".to_owned()
            ]
        )]
    );
    // The same instant written with another offset still overlaps.
    set(&d, "timeline", "s2", "start", s("2025-06-14T14:30:00Z"));
    assert_eq!(report(&d).len(), 1);
    // A cancelled slot does not book the vendor.
    set(&d, "timeline", "s2", "status", s("cancelled"));
    assert_eq!(report(&d), vec![]);
}

#[test]
fn wedding_unknown_vendor_and_slot_ending_before_start() {
    let d = clean_plan();
    set(&d, "timeline", "s1", "vendor", s("v404"));
    set(&d, "timeline", "s2", "end", s("2025-06-14T15:00:00+01:00"));
    assert_eq!(
        kinds(&d),
        vec![
            ("unknown_vendor", vec!["timeline/s1".to_owned()]),
            ("slot_ends_before_start", vec!["timeline/s2".to_owned()]),
        ]
    );
}

#[test]
fn wedding_budget_amounts_must_be_whole_non_negative_cents() {
    let d = clean_plan();
    set(&d, "budget", "b1", "estimate_cents", n(-5.0));
    set(&d, "budget", "b1", "actual_cents", n(12.5));
    let found = report(&d);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found
        .iter()
        .all(|c| c.kind == ConflictKind::InvalidBudgetAmount && c.items == ["budget/b1"]));
    set(&d, "budget", "b1", "estimate_cents", n(0.0));
    set(&d, "budget", "b1", "actual_cents", n(1250.0));
    assert_eq!(report(&d), vec![]);
}

#[test]
fn wedding_slots_outside_the_wedding_day() {
    let d = clean_plan();
    // Named zone: each time is read in its own offset. 01:30 the next morning is inside.
    set(
        &d,
        "timeline",
        "s1",
        "start",
        s("2025-06-13T15:00:00+01:00"),
    );
    assert_eq!(
        kinds(&d),
        vec![("outside_wedding_day", vec!["timeline/s1".to_owned()])]
    );
    set(
        &d,
        "timeline",
        "s1",
        "start",
        s("2025-06-14T15:00:00+01:00"),
    );
    set(&d, "timeline", "s2", "end", s("2025-06-15T07:00:00+01:00"));
    assert_eq!(
        kinds(&d),
        vec![("outside_wedding_day", vec!["timeline/s2".to_owned()])]
    );
    set(&d, "timeline", "s2", "end", s("2025-06-15T01:30:00+01:00"));
    assert_eq!(report(&d), vec![]);
    // Fixed offset: times are converted. 23:30Z on the 13th is 01:30 on the 14th at +02:00.
    meta(&d, vec![("timezone", s("+02:00"))]);
    set(&d, "timeline", "s1", "start", s("2025-06-13T23:30:00Z"));
    assert_eq!(report(&d), vec![]);
    meta(&d, vec![("timezone", s("UTC"))]);
    assert_eq!(
        kinds(&d),
        vec![("outside_wedding_day", vec!["timeline/s1".to_owned()])]
    );
}

#[test]
fn wedding_duplicate_emails_are_case_insensitive() {
    let d = clean_plan();
    put(
        &d,
        "guests",
        "g3",
        vec![("name", s("Carla B")), ("email", s(" Carla@Example.COM "))],
    );
    let found = report(&d);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ConflictKind::DuplicateGuestEmail);
    assert_eq!(found[0].items, ["guests/g1", "guests/g3"]);
}

#[test]
fn wedding_schema_violations_in_known_fields() {
    let d = clean_plan();
    set(&d, "tables", "t1", "capacity", s("8"));
    set(&d, "guests", "g1", "rsvp", s("maybe"));
    set(&d, "vendors", "v1", "arrival", s("14:00"));
    set(&d, "tasks", "k1", "done", s("yes"));
    let found = report(&d);
    let items: Vec<&str> = found.iter().map(|c| c.items[0].as_str()).collect();
    assert!(found
        .iter()
        .all(|c| c.kind == ConflictKind::SchemaViolation));
    assert_eq!(items, ["guests/g1", "tables/t1", "tasks/k1", "vendors/v1"]);
    // With capacity unreadable, capacity is not checked (no over-capacity guess).
    assert!(found[1].message.contains("capacity"));
}

#[test]
fn wedding_conflicts_serialise_with_snake_case_kinds_in_a_stable_order() {
    let d = clean_plan();
    set(&d, "guests", "g2", "table", s("t9"));
    set(&d, "tables", "t1", "capacity", n(0.0));
    set(&d, "budget", "b1", "paid", n(1.0));
    let value = serde_json::to_value(report(&d)).unwrap();
    let kinds: Vec<&str> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["table_over_capacity", "unknown_table", "schema_violation"]
    );
    assert_eq!(report(&d), report(&d));
}

#[test]
fn wedding_concurrent_seating_resolves_to_one_table_on_both_replicas() {
    let a = clean_plan();
    put(&a, "tables", "t2", vec![("capacity", n(10.0))]);
    let b = doc(2);
    sync(&a, &b);
    // Both seat g2 at the same time, at different tables.
    set(&a, "guests", "g2", "table", s("t1"));
    set(&b, "guests", "g2", "table", s("t2"));
    sync(&a, &b);
    sync(&b, &a);
    let table_a = plan_json(&a.transact())["guests"]["g2"]["table"].clone();
    let table_b = plan_json(&b.transact())["guests"]["g2"]["table"].clone();
    assert_eq!(table_a, table_b);
    assert!(table_a == "t1" || table_a == "t2");
    // Exactly one guest g2 exists, seated once.
    assert_eq!(plan_json(&a.transact()), plan_json(&b.transact()));
    assert_eq!(report(&a), report(&b));
}

// ---------------------------------------------------------------- writers

fn new_message(id: &str, channel: &str, at_ms: i64) -> NewMessage {
    NewMessage {
        channel: channel.to_owned(),
        text: format!("message {id}"),
        author: "planner-1".to_owned(),
        role: "planner".to_owned(),
        at_ms,
        id: id.to_owned(),
    }
}

fn state(d: &Doc) -> Vec<u8> {
    d.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

#[test]
fn wedding_messages_append_and_page() {
    let d = doc(1);
    let base = 1_749_906_000_000;
    for (i, channel) in ["general", "vendors", "general", "general"]
        .iter()
        .enumerate()
    {
        let mut txn = d.transact_mut();
        let msg = append_message(
            &mut txn,
            new_message(&format!("m{i}"), channel, base + i as i64),
        )
        .unwrap();
        assert_eq!(msg.at, base + i as i64);
    }
    // A replica sees the same messages (the timestamps arrive as floats there).
    let r = doc(2);
    sync(&d, &r);
    let txn = r.transact();
    let ids = |ms: Vec<Message>| ms.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(messages(&txn, None, None, 10)),
        ["m0", "m1", "m2", "m3"]
    );
    assert_eq!(ids(messages(&txn, Some("general"), None, 2)), ["m2", "m3"]);
    assert_eq!(ids(messages(&txn, Some("general"), Some(base), 1)), ["m2"]);
    assert_eq!(
        ids(messages(&txn, None, Some(base + 3), 10)),
        Vec::<String>::new()
    );
    let first = &messages(&txn, None, None, 1)[0];
    assert_eq!(first.role, "planner");
    assert_eq!(first.author, "planner-1");
    assert_eq!(plan_json(&txn)["messages"][0]["at"], json!(base));
    assert_eq!(conflicts(&txn), vec![]);
}

#[test]
fn wedding_invalid_messages_write_nothing() {
    let d = doc(1);
    let before = state(&d);
    let cases: Vec<(NewMessage, &str)> = vec![
        (
            NewMessage {
                text: "  ".into(),
                ..new_message("m", "general", 1)
            },
            "empty",
        ),
        (
            NewMessage {
                text: "x".repeat(4001),
                ..new_message("m", "general", 1)
            },
            "too_long",
        ),
        (
            NewMessage {
                role: "boss".into(),
                ..new_message("m", "general", 1)
            },
            "invalid_value",
        ),
        (new_message("m", "", 1), "empty"),
        (new_message("m", "gen\neral", 1), "control_characters"),
        (new_message("", "general", 1), "empty"),
        (new_message("m", "general", -1), "invalid_value"),
    ];
    for (msg, code) in cases {
        let mut txn = d.transact_mut();
        assert_eq!(append_message(&mut txn, msg).unwrap_err().code(), code);
    }
    assert_eq!(state(&d), before);
}

#[test]
fn wedding_patch_timeline_moves_a_slot() {
    let d = clean_plan();
    let patch = TimelinePatch {
        start: Some("2025-06-14T17:00:00+01:00".into()),
        end: Some("2025-06-14T18:00+01:00".into()),
        location: Some("Garden".into()),
        status: Some("delayed".into()),
        notes: Some(String::new()), // removes the key
        ..TimelinePatch::default()
    };
    let slot = patch_timeline_item(&mut d.transact_mut(), "s1", &patch).unwrap();
    assert_eq!(slot["start"], "2025-06-14T17:00:00+01:00");
    assert_eq!(slot["location"], "Garden");
    assert_eq!(slot["title"], "Ceremony");
    assert_eq!(slot.get("notes"), None);
    // s1 (17:00-18:00) now overlaps s2 (16:00-01:30) for the same vendor.
    assert_eq!(report(&d)[0].kind, ConflictKind::VendorDoubleBooked);
    // JSON patches deserialize, unknown keys refused.
    let json: TimelinePatch = serde_json::from_value(json!({"owner": "ana"})).unwrap();
    assert_eq!(json.owner.as_deref(), Some("ana"));
    assert!(serde_json::from_value::<TimelinePatch>(json!({"colour": "red"})).is_err());
}

#[test]
fn wedding_patch_timeline_rejects_bad_input_without_writing() {
    let d = clean_plan();
    let before = state(&d);
    let cases: Vec<(&str, TimelinePatch, &str)> = vec![
        ("s404", TimelinePatch::default(), "not_found"),
        (
            "s1",
            TimelinePatch {
                start: Some("2025-06-14 17:00".into()),
                ..Default::default()
            },
            "invalid_timestamp",
        ),
        (
            "s1",
            TimelinePatch {
                start: Some("2025-06-14T17:00:00".into()),
                ..Default::default()
            },
            "invalid_timestamp",
        ),
        (
            "s1",
            TimelinePatch {
                title: Some("New".into()),
                status: Some("postponed".into()),
                ..Default::default()
            },
            "invalid_value",
        ),
        (
            "s1",
            TimelinePatch {
                start: Some("2025-06-14T16:30:00+01:00".into()),
                ..Default::default()
            },
            "end_before_start",
        ),
        (
            "s1",
            TimelinePatch {
                vendor: Some("v404".into()),
                ..Default::default()
            },
            "unknown_reference",
        ),
        (
            "s1",
            TimelinePatch {
                title: Some("x".repeat(201)),
                ..Default::default()
            },
            "too_long",
        ),
        (
            "s1",
            TimelinePatch {
                notes: Some("x".repeat(4001)),
                ..Default::default()
            },
            "too_long",
        ),
    ];
    for (id, patch, code) in cases {
        let err = patch_timeline_item(&mut d.transact_mut(), id, &patch).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    put_raw(&d, "timeline", "plain", n(1.0));
    let before_plain = state(&d);
    let err = patch_timeline_item(&mut d.transact_mut(), "plain", &TimelinePatch::default());
    assert_eq!(err.unwrap_err().code(), "not_editable");
    assert_eq!(state(&d), before_plain);
    assert_ne!(before, before_plain);
}

#[test]
fn wedding_patch_vendor_marks_arrival() {
    let d = clean_plan();
    let patch = VendorPatch {
        status: Some("arrived".into()),
        arrival: Some("2025-06-14T14:05:00+01:00".into()),
        ..VendorPatch::default()
    };
    let vendor = patch_vendor(&mut d.transact_mut(), "v1", &patch).unwrap();
    assert_eq!(vendor["status"], "arrived");
    assert_eq!(vendor["name"], "DJ Lux");
    assert_eq!(
        plan_json(&d.transact())["vendors"]["v1"]["arrival"],
        "2025-06-14T14:05:00+01:00"
    );
    let before = state(&d);
    let bad = VendorPatch {
        status: Some("lost".into()),
        ..VendorPatch::default()
    };
    let err = patch_vendor(&mut d.transact_mut(), "v1", &bad).unwrap_err();
    assert_eq!(err.code(), "invalid_value");
    let err = patch_vendor(&mut d.transact_mut(), "v9", &patch).unwrap_err();
    assert_eq!(
        err,
        PlanError::NotFound {
            section: Section::Vendors,
            id: "v9".into()
        }
    );
    assert_eq!(state(&d), before);
}

#[test]
fn wedding_conflict_report_is_bounded() {
    let d = clean_plan();
    for i in 0..100 {
        put(
            &d,
            "timeline",
            &format!("x{i:03}"),
            vec![
                ("start", s("2025-06-14T10:00:00+01:00")),
                ("end", s("2025-06-14T11:00:00+01:00")),
                ("vendor", s("v1")),
            ],
        );
    }
    // 100 mutually overlapping slots: 4950 pairs, cut deterministically.
    let found = report(&d);
    assert_eq!(found.len(), conflicts::MAX_CONFLICTS);
    assert_eq!(found, report(&d));
}

#[test]
fn wedding_roots_of_the_wrong_type_never_panic() {
    // A client used the wrong root types: `getMap('messages')` and `getArray('timeline')`.
    let js = doc(7);
    {
        let messages = js.get_or_insert_map("messages");
        let timeline = js.get_or_insert_array("timeline");
        let mut txn = js.transact_mut();
        messages.insert(&mut txn, "m1", "hello");
        timeline.push_back(&mut txn, MapPrelim::from([("start", s("soon"))]));
    }
    let server = doc(1);
    sync(&js, &server);
    let _ = plan_json(&server.transact());
    let _ = report(&server);
    let _ = messages(&server.transact(), None, None, 10);
    let patched = patch_timeline_item(&mut server.transact_mut(), "0", &TimelinePatch::default());
    assert!(patched.is_err());
    let _ = append_message(&mut server.transact_mut(), new_message("m2", "general", 5));
    let _ = plan_json(&server.transact());
    let _ = report(&server);
}
