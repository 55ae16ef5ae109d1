//! Domain problems that CRDT merging cannot prevent.
//!
//! Why it exists: the document layout makes the common conflicts impossible (a guest has one
//! `table` field, so two concurrent seatings resolve to one), but some rules span several items:
//! a table seating more guests than it holds, a vendor booked in two overlapping slots, two
//! guests with one e-mail. Clients can also store values of the wrong type. This module reports
//! them; it never repairs them, because only people know which side is right.
//!
//! [`conflicts`] is a pure function of the document state and its output is sorted, so every
//! replica that has the same state computes the same report (the server publishes it in its
//! awareness state and at `GET /api/weddings/{id}/conflicts`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
use yrs::ReadTxn;

use super::schema::{FieldKind, Section};
use super::value::{self, excerpt, Item, Val};

/// The kinds of problem reported. The serialised names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// More seats taken at a table (guests plus their plus-ones) than its `capacity`.
    TableOverCapacity,
    /// A guest's `table` names a table that does not exist.
    UnknownTable,
    /// A timeline slot's `vendor` names a vendor that does not exist.
    UnknownVendor,
    /// One vendor in two timeline slots whose times overlap (cancelled slots excluded).
    VendorDoubleBooked,
    /// A timeline slot whose `end` is before its `start`.
    SlotEndsBeforeStart,
    /// A budget amount that is negative or not a whole number of cents.
    InvalidBudgetAmount,
    /// A timeline slot that starts or ends outside the wedding day.
    OutsideWeddingDay,
    /// Several guests with the same e-mail address (compared case-insensitively).
    DuplicateGuestEmail,
    /// A value of the wrong type or outside the allowed values in a known field, or an item
    /// that is not a Y.Map.
    SchemaViolation,
}

impl ConflictKind {
    /// The stable snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::TableOverCapacity => "table_over_capacity",
            ConflictKind::UnknownTable => "unknown_table",
            ConflictKind::UnknownVendor => "unknown_vendor",
            ConflictKind::VendorDoubleBooked => "vendor_double_booked",
            ConflictKind::SlotEndsBeforeStart => "slot_ends_before_start",
            ConflictKind::InvalidBudgetAmount => "invalid_budget_amount",
            ConflictKind::OutsideWeddingDay => "outside_wedding_day",
            ConflictKind::DuplicateGuestEmail => "duplicate_guest_email",
            ConflictKind::SchemaViolation => "schema_violation",
        }
    }
}

/// One problem: its kind, the items involved as `"section/id"` (sorted; messages without an id
/// are `"messages/#index"`), and a human-readable English message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub items: Vec<String>,
    pub message: String,
}

impl Conflict {
    fn new(kind: ConflictKind, mut items: Vec<String>, message: String) -> Self {
        items.sort();
        items.dedup();
        Conflict {
            kind,
            items,
            message,
        }
    }
}

/// How late the wedding day runs into the next morning (after-parties), in hours.
pub const DAY_END_NEXT_MORNING_HOURS: u8 = 6;

/// The most conflicts reported; a hostile document (thousands of overlapping slots) could
/// otherwise make the report quadratic in size. The cut is deterministic.
pub const MAX_CONFLICTS: usize = 1000;

/// Every problem in the plan, sorted by kind, then items, then message; at most
/// [`MAX_CONFLICTS`] of them.
pub fn conflicts<T: ReadTxn>(txn: &T) -> Vec<Conflict> {
    let plan = Snapshot::read(txn);
    let mut out = Vec::new();
    plan.schema(txn, &mut out);
    plan.seating(txn, &mut out);
    plan.emails(txn, &mut out);
    plan.timeline(txn, &mut out);
    plan.budget(txn, &mut out);
    out.sort();
    out.dedup();
    out.truncate(MAX_CONFLICTS);
    out
}

fn item_ref(section: Section, id: &str) -> String {
    format!("{}/{}", section.name(), id)
}

/// An item id with the item, or the name of the wrong type stored instead of a map.
type Entry = (String, Result<Item, &'static str>);

/// The items of every section, read once, in key order.
struct Snapshot {
    meta: Option<Item>,
    keyed: BTreeMap<Section, Vec<Entry>>,
    messages: Vec<Entry>,
}

impl Snapshot {
    fn read<T: ReadTxn>(txn: &T) -> Self {
        let keyed = Section::ALL
            .into_iter()
            .filter(|s| s.is_keyed())
            .map(|section| {
                let items = value::keyed_entries(txn, section)
                    .into_iter()
                    .filter(|(_, out)| !matches!(out, yrs::Out::Any(yrs::Any::Undefined)))
                    .map(|(id, out)| (id, Item::from_out(&out)))
                    .collect();
                (section, items)
            })
            .collect();
        let messages = value::message_entries(txn)
            .iter()
            .enumerate()
            .map(|(index, out)| {
                let item = Item::from_out(out);
                let id = match &item {
                    Ok(item) => item.get(txn, "id").text().map(excerpt),
                    Err(_) => None,
                }
                .unwrap_or_else(|| format!("#{index}"));
                (id, item)
            })
            .collect();
        let meta = txn.get_map(Section::Meta.name()).map(Item::Y);
        Snapshot {
            meta,
            keyed,
            messages,
        }
    }

    /// The well-formed (readable) items of a keyed section.
    fn items(&self, section: Section) -> impl Iterator<Item = (&str, &Item)> {
        self.keyed
            .get(&section)
            .into_iter()
            .flatten()
            .filter_map(|(id, item)| item.as_ref().ok().map(|item| (id.as_str(), item)))
    }

    fn exists(&self, section: Section, id: &str) -> bool {
        self.keyed
            .get(&section)
            .is_some_and(|items| items.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok())
    }

    fn schema<T: ReadTxn>(&self, txn: &T, out: &mut Vec<Conflict>) {
        if let Some(meta) = &self.meta {
            check_fields(txn, Section::Meta, "meta", meta, out);
        }
        let keyed = self.keyed.iter().map(|(s, items)| (*s, items));
        let messages = std::iter::once((Section::Messages, &self.messages));
        for (section, items) in keyed.chain(messages) {
            for (id, item) in items {
                let at = item_ref(section, id);
                match item {
                    Err(found) => out.push(Conflict::new(
                        ConflictKind::SchemaViolation,
                        vec![at.clone()],
                        format!("{at} is a {found}, expected a Y.Map"),
                    )),
                    Ok(item) => {
                        if matches!(item, Item::Plain(_)) {
                            out.push(Conflict::new(
                                ConflictKind::SchemaViolation,
                                vec![at.clone()],
                                format!(
                                    "{at} is a plain object, expected a Y.Map \
                                     (concurrent edits to its fields overwrite each other)"
                                ),
                            ));
                        }
                        check_fields(txn, section, &at, item, out);
                    }
                }
            }
        }
    }

    fn seating<T: ReadTxn>(&self, txn: &T, out: &mut Vec<Conflict>) {
        let mut seated: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
        for (id, guest) in self.items(Section::Guests) {
            let Some(table) = guest.get(txn, "table").text().map(str::to_owned) else {
                continue;
            };
            if !self.exists(Section::Tables, &table) {
                out.push(Conflict::new(
                    ConflictKind::UnknownTable,
                    vec![item_ref(Section::Guests, id)],
                    format!(
                        "guest {id:?} is seated at table {:?}, which does not exist",
                        excerpt(&table)
                    ),
                ));
                continue;
            }
            let plus_one = match guest.get(txn, "plus_one") {
                Val::Bool(true) => 1,
                Val::Str(name) if !name.trim().is_empty() => 1,
                _ => 0,
            };
            let entry = seated.entry(table).or_default();
            entry.0 += 1 + plus_one;
            entry.1.push(item_ref(Section::Guests, id));
        }
        for (id, table) in self.items(Section::Tables) {
            let Val::Int(capacity) = table.get(txn, "capacity") else {
                continue; // missing, or a schema violation reported elsewhere
            };
            let Some((seats, guests)) = seated.get(id) else {
                continue;
            };
            if capacity >= 0 && *seats > capacity as u64 {
                let mut items = guests.clone();
                items.push(item_ref(Section::Tables, id));
                out.push(Conflict::new(
                    ConflictKind::TableOverCapacity,
                    items,
                    format!("table {id:?} has {seats} seats taken for a capacity of {capacity}"),
                ));
            }
        }
    }

    fn emails<T: ReadTxn>(&self, txn: &T, out: &mut Vec<Conflict>) {
        let mut by_email: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, guest) in self.items(Section::Guests) {
            if let Some(email) = guest.get(txn, "email").text() {
                let key = email.trim().to_lowercase();
                if !key.is_empty() {
                    by_email
                        .entry(key)
                        .or_default()
                        .push(item_ref(Section::Guests, id));
                }
            }
        }
        for (email, guests) in by_email {
            if guests.len() > 1 {
                let message = format!(
                    "{} guests share the e-mail address {:?}",
                    guests.len(),
                    excerpt(&email)
                );
                out.push(Conflict::new(
                    ConflictKind::DuplicateGuestEmail,
                    guests,
                    message,
                ));
            }
        }
    }

    fn timeline<T: ReadTxn>(&self, txn: &T, out: &mut Vec<Conflict>) {
        let day = self.wedding_day(txn);
        // vendor id -> (start, end, slot id) of its bookable slots
        let mut bookings: BTreeMap<String, Vec<(OffsetDateTime, OffsetDateTime, String)>> =
            BTreeMap::new();
        for (id, slot) in self.items(Section::Timeline) {
            let at = item_ref(Section::Timeline, id);
            let start = slot.get(txn, "start");
            let end = slot.get(txn, "end");
            let start = start.text().and_then(value::parse_timestamp);
            let end = end.text().and_then(value::parse_timestamp);
            let vendor = slot.get(txn, "vendor").text().map(str::to_owned);
            if let Some(vendor) = &vendor {
                if !self.exists(Section::Vendors, vendor) {
                    out.push(Conflict::new(
                        ConflictKind::UnknownVendor,
                        vec![at.clone()],
                        format!(
                            "slot {id:?} names vendor {:?}, which does not exist",
                            excerpt(vendor)
                        ),
                    ));
                }
            }
            if let (Some(s), Some(e)) = (start, end) {
                if e < s {
                    out.push(Conflict::new(
                        ConflictKind::SlotEndsBeforeStart,
                        vec![at.clone()],
                        format!("slot {id:?} ends before it starts"),
                    ));
                } else if let Some(vendor) = vendor.filter(|_| e > s) {
                    let cancelled = slot.get(txn, "status") == Val::Str("cancelled".into());
                    if !cancelled {
                        bookings
                            .entry(vendor)
                            .or_default()
                            .push((s, e, id.to_owned()));
                    }
                }
            }
            if let Some(day) = &day {
                let outside = [start, end].into_iter().flatten().any(|t| !day.contains(t));
                if outside {
                    out.push(Conflict::new(
                        ConflictKind::OutsideWeddingDay,
                        vec![at],
                        format!(
                            "slot {id:?} is not within the wedding day {} \
                             (00:00 to {DAY_END_NEXT_MORNING_HOURS:02}:00 the next morning)",
                            day.date
                        ),
                    ));
                }
            }
        }
        for (vendor, mut slots) in bookings {
            slots.sort();
            // Every slot here has start < end; sorted by start, a later slot overlaps this one
            // exactly when it starts before this one ends.
            let mut pairs = 0;
            for (i, (_, e1, a)) in slots.iter().enumerate() {
                for (s2, _, b) in &slots[i + 1..] {
                    if s2 >= e1 || pairs >= MAX_CONFLICTS {
                        break;
                    }
                    pairs += 1;
                    out.push(Conflict::new(
                        ConflictKind::VendorDoubleBooked,
                        vec![
                            item_ref(Section::Timeline, a),
                            item_ref(Section::Timeline, b),
                            item_ref(Section::Vendors, &vendor),
                        ],
                        format!(
                            "vendor {:?} is booked in overlapping slots {a:?} and {b:?}",
                            excerpt(&vendor)
                        ),
                    ));
                }
            }
        }
    }

    fn budget<T: ReadTxn>(&self, txn: &T, out: &mut Vec<Conflict>) {
        for (id, line) in self.items(Section::Budget) {
            for field in ["estimate_cents", "actual_cents"] {
                let problem = match line.get(txn, field) {
                    Val::Int(cents) if cents < 0 => "is negative",
                    Val::Float(x) if x < 0.0 => "is negative and not a whole number of cents",
                    Val::Float(_) => "is not a whole number of cents",
                    _ => continue,
                };
                out.push(Conflict::new(
                    ConflictKind::InvalidBudgetAmount,
                    vec![item_ref(Section::Budget, id)],
                    format!("budget line {id:?}: {field} {problem}"),
                ));
            }
        }
    }

    fn wedding_day<T: ReadTxn>(&self, txn: &T) -> Option<WeddingDay> {
        let meta = self.meta.as_ref()?;
        let date = meta.get(txn, "date").text().and_then(value::parse_date)?;
        let offset = meta.get(txn, "timezone").text().and_then(fixed_offset);
        Some(WeddingDay { date, offset })
    }
}

/// The wedding day's window in local time.
///
/// The rule: a slot time is converted to the wedding's offset when `meta.timezone` is a fixed
/// offset (`UTC`, `Z`, `+02:00`, `UTC+2`, ...). For a named zone (`Europe/Paris`) the server
/// has no time-zone database, so the time is read in the offset the client wrote it with (a
/// client writes venue-local times). Local times from 00:00 on `meta.date` to 06:00 the next
/// morning, inclusive, are inside the day.
struct WeddingDay {
    date: Date,
    offset: Option<UtcOffset>,
}

impl WeddingDay {
    fn contains(&self, t: OffsetDateTime) -> bool {
        let local = match self.offset {
            Some(offset) => match t.checked_to_offset(offset) {
                Some(local) => local,
                None => return false,
            },
            None => t,
        };
        let local = PrimitiveDateTime::new(local.date(), local.time());
        let start = PrimitiveDateTime::new(self.date, Time::MIDNIGHT);
        let Some(next) = self.date.next_day() else {
            return local >= start;
        };
        let Ok(morning) = Time::from_hms(DAY_END_NEXT_MORNING_HOURS, 0, 0) else {
            return local >= start;
        };
        local >= start && local <= PrimitiveDateTime::new(next, morning)
    }
}

/// `UTC`, `GMT`, `Z`, `Etc/UTC`, `+02:00`, `-0530`, `+2`, `UTC+02:00` -> a fixed offset;
/// anything else (a named zone) -> `None`.
pub(super) fn fixed_offset(tz: &str) -> Option<UtcOffset> {
    let tz = tz.trim();
    let rest = ["Etc/UTC", "Etc/GMT", "UTC", "GMT", "Z"]
        .iter()
        .find_map(|prefix| tz.strip_prefix(prefix))
        .unwrap_or(tz);
    if rest.is_empty() {
        return (rest.len() < tz.len()).then_some(UtcOffset::UTC);
    }
    if !rest.is_ascii() {
        return None;
    }
    let (sign, digits) = match rest.as_bytes()[0] {
        b'+' => (1i8, &rest[1..]),
        b'-' => (-1i8, &rest[1..]),
        _ => return None,
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) => (h, m),
        None if digits.len() == 4 => digits.split_at(2),
        None => (digits, "0"),
    };
    if h.is_empty() || h.len() > 2 || m.is_empty() || m.len() > 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// Reports known fields whose value has the wrong type or a disallowed value.
fn check_fields<T: ReadTxn>(
    txn: &T,
    section: Section,
    at: &str,
    item: &Item,
    out: &mut Vec<Conflict>,
) {
    for spec in section.fields() {
        let value = item.get(txn, spec.name);
        if matches!(value, Val::Missing | Val::Null) {
            continue;
        }
        let problem: Option<String> = match (spec.kind, &value) {
            (FieldKind::Text | FieldKind::Ref(_), Val::Str(_)) => None,
            (FieldKind::Timestamp, Val::Str(s)) => {
                (!s.is_empty() && value::parse_timestamp(s).is_none()).then(|| {
                    format!(
                        "{:?} is not an ISO 8601 date-time with an offset",
                        excerpt(s)
                    )
                })
            }
            (FieldKind::Date, Val::Str(s)) => (!s.is_empty() && value::parse_date(s).is_none())
                .then(|| format!("{:?} is not an ISO 8601 date (YYYY-MM-DD)", excerpt(s))),
            (FieldKind::Enum(allowed), Val::Str(s)) => (!allowed.contains(&s.as_str()))
                .then(|| format!("{:?} is not one of {}", excerpt(s), allowed.join(", "))),
            (FieldKind::Cents, Val::Int(_) | Val::Float(_)) => None,
            (FieldKind::Count, Val::Int(n)) if *n >= 0 => None,
            (FieldKind::Count, Val::Int(_) | Val::Float(_)) => {
                Some("is not a non-negative integer".to_owned())
            }
            (FieldKind::Millis, Val::Int(_)) => None,
            (FieldKind::Millis, Val::Float(_)) => {
                Some("is not a whole number of milliseconds".to_owned())
            }
            (FieldKind::Bool, Val::Bool(_)) => None,
            (FieldKind::BoolOrText, Val::Bool(_) | Val::Str(_)) => None,
            (kind, found) => Some(format!(
                "is a {}, expected {}",
                found.type_name(),
                expected(kind)
            )),
        };
        if let Some(problem) = problem {
            out.push(Conflict::new(
                ConflictKind::SchemaViolation,
                vec![at.to_owned()],
                format!("{at}: {} {problem}", spec.name),
            ));
        }
    }
}

fn expected(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Text | FieldKind::Enum(_) => "a string",
        FieldKind::Ref(_) => "a string (an id)",
        FieldKind::Timestamp => "an ISO 8601 date-time string",
        FieldKind::Date => "an ISO 8601 date string",
        FieldKind::Cents => "an integer number of cents",
        FieldKind::Count => "a non-negative integer",
        FieldKind::Bool => "a boolean",
        FieldKind::BoolOrText => "a boolean or a string",
        FieldKind::Millis => "a number of milliseconds",
    }
}
