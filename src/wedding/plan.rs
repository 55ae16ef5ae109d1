//! The plan as JSON, message paging, and the few edits the server makes itself.
//!
//! Why it exists: REST clients and the lead's handlers need the plan in the exact shape a yjs
//! client sees (`doc.getMap('guests').toJSON()`), including fields this server does not know
//! about, so the view is a faithful conversion of the document rather than a lossy typed copy.
//! The writers (a coordination message, moving a timeline slot, marking a vendor arrived) run in
//! the caller's `TransactionMut` and validate everything before writing anything, so a rejected
//! request leaves the document, and therefore every replica, untouched.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use yrs::{Any, Array, Map, MapPrelim, MapRef, Out, ReadTxn, TransactionMut, WriteTxn};

use super::schema::{
    Section, CHANNEL_MAX, ID_MAX, LONG_TEXT_MAX, ROLES, SHORT_TEXT_MAX, TIMELINE_STATUS,
    VENDOR_STATUS,
};
use super::value::{self, excerpt, Item, Val};

/// Why a write was refused. Nothing was written to the document when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The item to change does not exist (HTTP 404).
    #[error("{section} item {id:?} not found")]
    NotFound { section: Section, id: String },
    /// The item exists but is not a Y.Map (a client stored something else), so it cannot be
    /// edited field by field (HTTP 409).
    #[error("{section} item {id:?} is not a Y.Map and cannot be edited field by field")]
    NotEditable { section: Section, id: String },
    /// A timestamp is not ISO 8601 with an offset (HTTP 400).
    #[error("{field}: {value:?} is not an ISO 8601 date-time with an offset (e.g. 2025-06-14T15:30:00+02:00)")]
    InvalidTimestamp { field: &'static str, value: String },
    /// A value outside the allowed list (HTTP 400).
    #[error("{field}: {value:?} is not one of {allowed}")]
    InvalidValue {
        field: &'static str,
        value: String,
        allowed: String,
    },
    /// A text over its length cap, in characters (HTTP 400).
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    /// A required text is empty or blank (HTTP 400).
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    /// A text holds control characters where only one line is allowed (HTTP 400).
    #[error("{field} must not contain control characters")]
    ControlCharacters { field: &'static str },
    /// The slot would end before it starts (HTTP 400).
    #[error("end {end:?} is before start {start:?}")]
    EndBeforeStart { start: String, end: String },
    /// A reference to an item that does not exist, e.g. a slot's vendor (HTTP 400).
    #[error("{field} refers to unknown {section} item {id:?}")]
    UnknownReference {
        field: &'static str,
        section: Section,
        id: String,
    },
}

impl PlanError {
    /// A stable snake_case code for the `{"error": {"code": ...}}` body.
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::NotFound { .. } => "not_found",
            PlanError::NotEditable { .. } => "not_editable",
            PlanError::InvalidTimestamp { .. } => "invalid_timestamp",
            PlanError::InvalidValue { .. } => "invalid_value",
            PlanError::TooLong { .. } => "too_long",
            PlanError::Empty { .. } => "empty",
            PlanError::ControlCharacters { .. } => "control_characters",
            PlanError::EndBeforeStart { .. } => "end_before_start",
            PlanError::UnknownReference { .. } => "unknown_reference",
        }
    }
}

/// The whole plan: `{"meta": {...}, "timeline": {...}, ..., "messages": [...]}`.
///
/// Every section is present (an absent root reads as `{}` or `[]`, as in yjs). Each section is
/// exactly what `JSON.stringify(doc.getMap(name).toJSON())` gives, unknown fields included.
pub fn plan_json<T: ReadTxn>(txn: &T) -> Value {
    let mut plan = serde_json::Map::new();
    for section in Section::ALL {
        plan.insert(section.name().to_owned(), section_json(txn, section));
    }
    Value::Object(plan)
}

/// One section as JSON: an object keyed by item id (or `meta`'s fields), or the message array.
pub fn section_json<T: ReadTxn>(txn: &T, section: Section) -> Value {
    if section == Section::Messages {
        return Value::Array(
            value::message_entries(txn)
                .iter()
                .map(|out| value::out_json(txn, out))
                .collect(),
        );
    }
    let mut object = serde_json::Map::new();
    for (key, out) in value::keyed_entries(txn, section) {
        if matches!(out, Out::Any(Any::Undefined)) {
            continue;
        }
        object.insert(key, value::out_json(txn, &out));
    }
    Value::Object(object)
}

/// One item of a keyed section as JSON, or `None` when there is no such item.
pub fn item_json<T: ReadTxn>(txn: &T, section: Section, id: &str) -> Option<Value> {
    if !section.is_keyed() {
        return None;
    }
    let out = txn.get_map(section.name())?.get(txn, id)?;
    match out {
        Out::Any(Any::Undefined) => None,
        out => Some(value::out_json(txn, &out)),
    }
}

/// A coordination message as stored in `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub channel: String,
    pub author: String,
    pub role: String,
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
}

/// A message to append; `author` and `role` come from the caller's token, never from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub channel: String,
    pub text: String,
    pub author: String,
    pub role: String,
    /// Milliseconds since the Unix epoch (the caller's clock).
    pub at_ms: i64,
    /// A unique id chosen by the caller (e.g. random or `"{author}-{at_ms}-{n}"`).
    pub id: String,
}

/// Appends a message to the `messages` array as a Y.Map, after validating it.
///
/// Rules: `channel` 1-64 characters, no control characters; `text` non-blank, at most 4000
/// characters; `author` and `id` 1-128 characters; `role` one of the JWT roles; `at_ms` >= 0.
pub fn append_message(txn: &mut TransactionMut, msg: NewMessage) -> Result<Message, PlanError> {
    check_line("id", &msg.id, ID_MAX, true)?;
    check_line("channel", &msg.channel, CHANNEL_MAX, true)?;
    check_line("author", &msg.author, ID_MAX, true)?;
    check_enum("role", &msg.role, ROLES)?;
    if msg.text.trim().is_empty() {
        return Err(PlanError::Empty { field: "text" });
    }
    check_len("text", &msg.text, LONG_TEXT_MAX)?;
    if msg.at_ms < 0 {
        return Err(PlanError::InvalidValue {
            field: "at",
            value: msg.at_ms.to_string(),
            allowed: "milliseconds since the Unix epoch".to_owned(),
        });
    }
    let message = Message {
        id: msg.id,
        channel: msg.channel,
        author: msg.author,
        role: msg.role,
        text: msg.text,
        at: msg.at_ms,
    };
    let prelim = MapPrelim::from([
        ("id", Any::from(message.id.as_str())),
        ("channel", Any::from(message.channel.as_str())),
        ("author", Any::from(message.author.as_str())),
        ("role", Any::from(message.role.as_str())),
        ("text", Any::from(message.text.as_str())),
        // A float, as yjs itself stores millisecond timestamps (they exceed 31 bits).
        ("at", Any::from(message.at as f64)),
    ]);
    let array = txn.get_or_insert_array(Section::Messages.name());
    array.push_back(txn, prelim);
    Ok(message)
}

/// Reads messages, oldest first, sorted by (`at`, `id`) so paging is stable on every replica.
///
/// `channel`: only that channel. `since_ms`: only messages with `at` strictly after it, and then
/// the *first* `limit` of them (page forward with the last `at` seen); without it, the *last*
/// `limit` messages. Elements that are not well-formed messages (not a map, `at` not an
/// integer, a known field not a string) are skipped here; the conflict report lists them.
/// Callers cap `limit`.
pub fn messages<T: ReadTxn>(
    txn: &T,
    channel: Option<&str>,
    since_ms: Option<i64>,
    limit: usize,
) -> Vec<Message> {
    let mut all: Vec<Message> = value::message_entries(txn)
        .iter()
        .filter_map(|out| read_message(txn, out))
        .filter(|m| channel.is_none_or(|c| m.channel == c))
        .filter(|m| since_ms.is_none_or(|since| m.at > since))
        .collect();
    all.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    if since_ms.is_some() {
        all.truncate(limit);
    } else if all.len() > limit {
        all.drain(..all.len() - limit);
    }
    all
}

pub(crate) fn read_message<T: ReadTxn>(txn: &T, out: &Out) -> Option<Message> {
    let item = Item::from_out(out).ok()?;
    let text = |key: &str| match item.get(txn, key) {
        Val::Str(s) => Some(s),
        Val::Missing | Val::Null => Some(String::new()),
        _ => None,
    };
    let at = match item.get(txn, "at") {
        Val::Int(at) => at,
        _ => return None,
    };
    Some(Message {
        id: text("id")?,
        channel: text("channel")?,
        author: text("author")?,
        role: text("role")?,
        text: text("text")?,
        at,
    })
}

/// Changes to a timeline slot. `None` leaves a field alone; `Some("")` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelinePatch {
    pub title: Option<String>,
    /// ISO 8601 with offset.
    pub start: Option<String>,
    /// ISO 8601 with offset; not before `start`.
    pub end: Option<String>,
    pub location: Option<String>,
    /// One of [`TIMELINE_STATUS`].
    pub status: Option<String>,
    pub owner: Option<String>,
    /// The id of an existing vendor.
    pub vendor: Option<String>,
    pub notes: Option<String>,
}

/// Changes to a vendor. `None` leaves a field alone; `Some("")` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorPatch {
    pub name: Option<String>,
    pub category: Option<String>,
    pub contact: Option<String>,
    /// One of [`VENDOR_STATUS`], e.g. `"arrived"`.
    pub status: Option<String>,
    /// ISO 8601 with offset: when the vendor arrived (or is expected).
    pub arrival: Option<String>,
}

/// A validated change to one field: set a string, or remove the key.
type Change = (&'static str, Option<String>);

/// Moves or edits a timeline slot; returns the slot's JSON after the change.
pub fn patch_timeline_item(
    txn: &mut TransactionMut,
    id: &str,
    patch: &TimelinePatch,
) -> Result<Value, PlanError> {
    let item = editable_item(txn, Section::Timeline, id)?;
    let mut changes: Vec<Change> = Vec::new();
    text_change(&mut changes, "title", &patch.title, SHORT_TEXT_MAX)?;
    timestamp_change(&mut changes, "start", &patch.start)?;
    timestamp_change(&mut changes, "end", &patch.end)?;
    text_change(&mut changes, "location", &patch.location, SHORT_TEXT_MAX)?;
    enum_change(&mut changes, "status", &patch.status, TIMELINE_STATUS)?;
    text_change(&mut changes, "owner", &patch.owner, ID_MAX)?;
    text_change(&mut changes, "vendor", &patch.vendor, ID_MAX)?;
    long_text_change(&mut changes, "notes", &patch.notes)?;

    if let Some(vendor) = patch.vendor.as_deref().filter(|v| !v.is_empty()) {
        let exists = txn
            .get_map(Section::Vendors.name())
            .is_some_and(|vendors| vendors.contains_key(txn, vendor));
        if !exists {
            return Err(PlanError::UnknownReference {
                field: "vendor",
                section: Section::Vendors,
                id: excerpt(vendor),
            });
        }
    }
    // The slot as it will be: patched values over stored ones.
    let resulting = |key: &str, patched: &Option<String>| -> Option<(String, OffsetDateTime)> {
        let s = match patched {
            Some(s) => s.clone(),
            None => match Item::Y(item.clone()).get(txn, key) {
                Val::Str(s) => s,
                _ => return None,
            },
        };
        value::parse_timestamp(&s).map(|t| (s, t))
    };
    if let (Some((start, s)), Some((end, e))) = (
        resulting("start", &patch.start),
        resulting("end", &patch.end),
    ) {
        if e < s {
            return Err(PlanError::EndBeforeStart {
                start: excerpt(&start),
                end: excerpt(&end),
            });
        }
    }
    Ok(apply(txn, &item, changes))
}

/// Edits a vendor (e.g. `status: "arrived"`, `arrival: "...T14:05:00+02:00"`); returns the
/// vendor's JSON after the change.
pub fn patch_vendor(
    txn: &mut TransactionMut,
    id: &str,
    patch: &VendorPatch,
) -> Result<Value, PlanError> {
    let item = editable_item(txn, Section::Vendors, id)?;
    let mut changes: Vec<Change> = Vec::new();
    text_change(&mut changes, "name", &patch.name, SHORT_TEXT_MAX)?;
    text_change(&mut changes, "category", &patch.category, SHORT_TEXT_MAX)?;
    text_change(&mut changes, "contact", &patch.contact, SHORT_TEXT_MAX)?;
    enum_change(&mut changes, "status", &patch.status, VENDOR_STATUS)?;
    timestamp_change(&mut changes, "arrival", &patch.arrival)?;
    Ok(apply(txn, &item, changes))
}

fn editable_item<T: ReadTxn>(txn: &T, section: Section, id: &str) -> Result<MapRef, PlanError> {
    let not_found = || PlanError::NotFound {
        section,
        id: excerpt(id),
    };
    let root = txn.get_map(section.name()).ok_or_else(not_found)?;
    match root.get(txn, id) {
        None | Some(Out::Any(Any::Undefined)) => Err(not_found()),
        Some(Out::YMap(map)) => Ok(map),
        Some(_) => Err(PlanError::NotEditable {
            section,
            id: excerpt(id),
        }),
    }
}

fn apply(txn: &mut TransactionMut, item: &MapRef, changes: Vec<Change>) -> Value {
    for (key, change) in changes {
        match change {
            Some(value) => {
                item.insert(txn, key, Any::from(value));
            }
            None => {
                if item.contains_key(txn, key) {
                    item.remove(txn, key);
                }
            }
        }
    }
    value::out_json(txn, &Out::YMap(item.clone()))
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), PlanError> {
    if value.chars().count() > max {
        Err(PlanError::TooLong { field, max })
    } else {
        Ok(())
    }
}

/// A one-line text: length cap, no control characters, optionally non-blank.
fn check_line(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), PlanError> {
    if required && value.trim().is_empty() {
        return Err(PlanError::Empty { field });
    }
    check_len(field, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(PlanError::ControlCharacters { field });
    }
    Ok(())
}

fn check_enum(field: &'static str, value: &str, allowed: &[&str]) -> Result<(), PlanError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(PlanError::InvalidValue {
            field,
            value: excerpt(value),
            allowed: allowed.join(", "),
        })
    }
}

fn text_change(
    changes: &mut Vec<Change>,
    field: &'static str,
    value: &Option<String>,
    max: usize,
) -> Result<(), PlanError> {
    if let Some(value) = value {
        check_line(field, value, max, false)?;
        changes.push((field, Some(value.clone()).filter(|v| !v.is_empty())));
    }
    Ok(())
}

fn long_text_change(
    changes: &mut Vec<Change>,
    field: &'static str,
    value: &Option<String>,
) -> Result<(), PlanError> {
    if let Some(value) = value {
        check_len(field, value, LONG_TEXT_MAX)?;
        changes.push((field, Some(value.clone()).filter(|v| !v.is_empty())));
    }
    Ok(())
}

fn enum_change(
    changes: &mut Vec<Change>,
    field: &'static str,
    value: &Option<String>,
    allowed: &[&str],
) -> Result<(), PlanError> {
    if let Some(value) = value {
        if !value.is_empty() {
            check_enum(field, value, allowed)?;
        }
        changes.push((field, Some(value.clone()).filter(|v| !v.is_empty())));
    }
    Ok(())
}

fn timestamp_change(
    changes: &mut Vec<Change>,
    field: &'static str,
    value: &Option<String>,
) -> Result<(), PlanError> {
    if let Some(value) = value {
        if !value.is_empty() && value::parse_timestamp(value).is_none() {
            return Err(PlanError::InvalidTimestamp {
                field,
                value: excerpt(value),
            });
        }
        changes.push((field, Some(value.clone()).filter(|v| !v.is_empty())));
    }
    Ok(())
}
