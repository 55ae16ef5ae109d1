//! Tolerant reading of whatever clients stored in the plan.
//!
//! Why it exists: clients can write any value into any key, and the same number can arrive as an
//! integer on one replica and as a float on another (yrs keeps a local `i64` as an integer, while
//! the lib0 encoding turns large integers into floats on the wire). Everything the view and the
//! conflict checker read goes through here, so it is normalised the same way on every replica,
//! converted to JSON the way yjs' `toJSON()` + `JSON.stringify` would, and never panics.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use time::format_description::well_known::Iso8601;
use time::{Date, Month, OffsetDateTime};
use yrs::types::ToJson;
use yrs::{Any, Map, MapRef, Out, ReadTxn};

use super::schema::Section;

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// A scalar field value, normalised.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// The key is not there (or holds `undefined`).
    Missing,
    Null,
    Bool(bool),
    /// A number with an exact integer value (whether stored as an integer or a float).
    Int(i64),
    /// Any other number (fractional, huge, or not finite).
    Float(f64),
    /// A string or the content of a Y.Text.
    Str(String),
    /// Anything else: the name of its type, for error messages.
    Other(&'static str),
}

impl Val {
    /// The value as a string when it is a non-empty string; `None` when unset or empty.
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Val::Str(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// A JavaScript-ish name of the value's type, for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Missing => "undefined",
            Val::Null => "null",
            Val::Bool(_) => "boolean",
            Val::Int(_) | Val::Float(_) => "number",
            Val::Str(_) => "string",
            Val::Other(name) => name,
        }
    }
}

fn number(n: yrs::any::Number) -> Val {
    match n {
        yrs::any::Number::Int(i) => Val::Int(i),
        yrs::any::Number::Float(x) => {
            if x.is_finite() && x.fract() == 0.0 && x.abs() <= MAX_SAFE {
                Val::Int(x as i64)
            } else {
                Val::Float(x)
            }
        }
    }
}

fn any_val(any: &Any) -> Val {
    match any {
        Any::Undefined => Val::Missing,
        Any::Null => Val::Null,
        Any::Bool(b) => Val::Bool(*b),
        Any::Number(n) => number(*n),
        Any::String(s) => Val::Str(s.to_string()),
        Any::Buffer(_) => Val::Other("binary"),
        Any::Array(_) => Val::Other("array"),
        Any::Map(_) => Val::Other("object"),
    }
}

/// Reads a value as stored under a key of a Y.Map.
pub(crate) fn out_val<T: ReadTxn>(txn: &T, out: &Out) -> Val {
    match out {
        Out::Any(any) => any_val(any),
        Out::YText(text) => Val::Str(yrs::GetString::get_string(text, txn)),
        other => Val::Other(shared_type_name(other)),
    }
}

fn shared_type_name(out: &Out) -> &'static str {
    match out {
        Out::Any(_) => "value",
        Out::YText(_) => "Y.Text",
        Out::YArray(_) => "Y.Array",
        Out::YMap(_) => "Y.Map",
        Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => "Y.Xml",
        Out::YDoc(_) => "Y.Doc",
        _ => "unknown shared type",
    }
}

/// One item of a section (or `meta` itself): a Y.Map as documented, or a plain JSON object
/// that a client set instead (readable, but its fields do not merge independently).
pub(crate) enum Item {
    Y(MapRef),
    Plain(Arc<HashMap<String, Any>>),
}

impl Item {
    /// The item stored under a key, or the name of the wrong type found there.
    pub(crate) fn from_out(out: &Out) -> Result<Item, &'static str> {
        match out {
            Out::YMap(map) => Ok(Item::Y(map.clone())),
            Out::Any(Any::Map(map)) => Ok(Item::Plain(map.clone())),
            Out::Any(any) => Err(any_val(any).type_name()),
            other => Err(shared_type_name(other)),
        }
    }

    /// A field of the item, normalised.
    pub(crate) fn get<T: ReadTxn>(&self, txn: &T, key: &str) -> Val {
        match self {
            Item::Y(map) => map
                .get(txn, key)
                .map_or(Val::Missing, |out| out_val(txn, &out)),
            Item::Plain(map) => map.get(key).map_or(Val::Missing, any_val),
        }
    }
}

/// The entries of a keyed section's root map, sorted by key; empty when the root is absent.
pub(crate) fn keyed_entries<T: ReadTxn>(txn: &T, section: Section) -> Vec<(String, Out)> {
    let Some(root) = txn.get_map(section.name()) else {
        return Vec::new();
    };
    let mut entries: Vec<(String, Out)> = root
        .iter(txn)
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// The elements of the `messages` array in document order; empty when absent.
pub(crate) fn message_entries<T: ReadTxn>(txn: &T) -> Vec<Out> {
    use yrs::Array;
    match txn.get_array(Section::Messages.name()) {
        Some(array) => array.iter(txn).collect(),
        None => Vec::new(),
    }
}

/// The JSON that `JSON.stringify(x.toJSON())` gives for a value stored in the document.
pub(crate) fn out_json<T: ReadTxn>(txn: &T, out: &Out) -> Value {
    any_json(&out.to_json(txn))
}

/// JSON for an `Any`, following `JSON.stringify`: integral numbers print as integers,
/// non-finite numbers and `undefined` array elements become `null`, `undefined` object members
/// are left out, binary becomes an object keyed by index, object keys come out sorted.
pub(crate) fn any_json(any: &Any) -> Value {
    match any {
        Any::Undefined | Any::Null => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(n) => match number(*n) {
            Val::Int(i) => Value::from(i),
            Val::Float(x) => {
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.2e18 {
                    Value::from(x as i64)
                } else {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
            }
            _ => Value::Null,
        },
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(bytes) => Value::Object(
            bytes
                .iter()
                .enumerate()
                .map(|(i, b)| (i.to_string(), Value::from(*b)))
                .collect(),
        ),
        Any::Array(items) => Value::Array(items.iter().map(any_json).collect()),
        Any::Map(map) => {
            let mut keys: Vec<&String> = map
                .iter()
                .filter(|(_, v)| !matches!(v, Any::Undefined))
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            let mut object = serde_json::Map::new();
            for key in keys {
                object.insert(key.clone(), any_json(&map[key]));
            }
            Value::Object(object)
        }
    }
}

/// Parses an ISO 8601 date-time that carries an offset (`Z` or `±hh:mm`).
pub(crate) fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    // Bound the work on client-supplied strings; no valid timestamp is this long.
    if s.len() > 64 {
        return None;
    }
    OffsetDateTime::parse(s.trim(), &Iso8601::DEFAULT).ok()
}

/// Parses a calendar date `YYYY-MM-DD`, or takes the local date of a date-time with offset.
pub(crate) fn parse_date(s: &str) -> Option<Date> {
    let s = s.trim();
    if s.len() == 10 {
        let mut parts = s.splitn(3, '-');
        let year: i32 = parts.next()?.parse().ok()?;
        let month: u8 = parts.next()?.parse().ok()?;
        let day: u8 = parts.next()?.parse().ok()?;
        return Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok();
    }
    parse_timestamp(s).map(|t| t.date())
}

/// Cuts a client-supplied string for use inside an error or conflict message.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}
