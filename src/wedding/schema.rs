//! The names and allowed values of the wedding-plan document.
//!
//! Why it exists: the Y.Doc layout is a contract shared with every JavaScript client
//! (docs/schema.md). Keeping every root name, field name, field type and allowed value in one
//! table means the view ([`super::plan`]), the writers and the conflict checker
//! ([`super::conflicts`](mod@super::conflicts)) cannot disagree about what a plan looks like.

use std::fmt;
use std::str::FromStr;

/// Root `meta` Y.Map: the plan's own fields (not a keyed collection).
pub const META: &str = "meta";
/// Root `timeline` Y.Map: slot id -> Y.Map.
pub const TIMELINE: &str = "timeline";
/// Root `guests` Y.Map: guest id -> Y.Map.
pub const GUESTS: &str = "guests";
/// Root `tables` Y.Map: table id -> Y.Map.
pub const TABLES: &str = "tables";
/// Root `vendors` Y.Map: vendor id -> Y.Map.
pub const VENDORS: &str = "vendors";
/// Root `tasks` Y.Map: task id -> Y.Map.
pub const TASKS: &str = "tasks";
/// Root `budget` Y.Map: budget line id -> Y.Map.
pub const BUDGET: &str = "budget";
/// Root `messages` Y.Array of Y.Map, append-only.
pub const MESSAGES: &str = "messages";

/// Allowed `guests.*.rsvp` values.
pub const RSVP: &[&str] = &["pending", "yes", "no"];
/// Allowed `meta.status` values.
pub const META_STATUS: &[&str] = &["planning", "confirmed", "live", "completed", "cancelled"];
/// Allowed `timeline.*.status` values.
pub const TIMELINE_STATUS: &[&str] = &["planned", "in_progress", "done", "delayed", "cancelled"];
/// Allowed `vendors.*.status` values.
pub const VENDOR_STATUS: &[&str] = &[
    "booked",
    "confirmed",
    "en_route",
    "arrived",
    "done",
    "cancelled",
];
/// Allowed `messages[*].role` values: the JWT roles.
pub const ROLES: &[&str] = &["couple", "planner", "vendor", "guest", "admin"];

/// Longest id (map key, or a reference such as a guest's `table`), in characters.
pub const ID_MAX: usize = 128;
/// Longest short text (names, titles, locations, e-mails), in characters.
pub const SHORT_TEXT_MAX: usize = 200;
/// Longest long text (notes, message text), in characters.
pub const LONG_TEXT_MAX: usize = 4000;
/// Longest message channel name, in characters.
pub const CHANNEL_MAX: usize = 64;

/// The expected type of a known field. Every field may also be absent or `null` (unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A string (a Y.Text is accepted too: its JSON is a string).
    Text,
    /// A string holding the id of an item of another section (`""` means none).
    Ref(Section),
    /// An ISO 8601 date-time string with an offset, e.g. `2025-06-14T15:30:00+02:00`.
    Timestamp,
    /// An ISO 8601 calendar date `YYYY-MM-DD` (a date-time with offset is accepted too).
    Date,
    /// One of a fixed list of strings.
    Enum(&'static [&'static str]),
    /// An integer number of cents (checked for sign and fraction by the conflict checker).
    Cents,
    /// A non-negative integer.
    Count,
    /// A boolean.
    Bool,
    /// A boolean, or a string (e.g. the plus-one's name).
    BoolOrText,
    /// Milliseconds since the Unix epoch, a number.
    Millis,
}

/// A known field of an item: its key in the item's Y.Map and its expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
}

const fn f(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec { name, kind }
}

const META_FIELDS: &[FieldSpec] = &[
    f("title", FieldKind::Text),
    f("date", FieldKind::Date),
    f("timezone", FieldKind::Text),
    f("venue", FieldKind::Text),
    f("status", FieldKind::Enum(META_STATUS)),
];
const TIMELINE_FIELDS: &[FieldSpec] = &[
    f("title", FieldKind::Text),
    f("start", FieldKind::Timestamp),
    f("end", FieldKind::Timestamp),
    f("location", FieldKind::Text),
    f("vendor", FieldKind::Ref(Section::Vendors)),
    f("owner", FieldKind::Text),
    f("status", FieldKind::Enum(TIMELINE_STATUS)),
    f("notes", FieldKind::Text),
];
const GUEST_FIELDS: &[FieldSpec] = &[
    f("name", FieldKind::Text),
    f("email", FieldKind::Text),
    f("party", FieldKind::Text),
    f("rsvp", FieldKind::Enum(RSVP)),
    f("meal", FieldKind::Text),
    f("dietary", FieldKind::Text),
    f("table", FieldKind::Ref(Section::Tables)),
    f("plus_one", FieldKind::BoolOrText),
];
const TABLE_FIELDS: &[FieldSpec] = &[f("name", FieldKind::Text), f("capacity", FieldKind::Count)];
const VENDOR_FIELDS: &[FieldSpec] = &[
    f("name", FieldKind::Text),
    f("category", FieldKind::Text),
    f("contact", FieldKind::Text),
    f("arrival", FieldKind::Timestamp),
    f("status", FieldKind::Enum(VENDOR_STATUS)),
];
const TASK_FIELDS: &[FieldSpec] = &[
    f("title", FieldKind::Text),
    f("assignee", FieldKind::Text),
    f("due", FieldKind::Date),
    f("done", FieldKind::Bool),
];
const BUDGET_FIELDS: &[FieldSpec] = &[
    f("category", FieldKind::Text),
    f("label", FieldKind::Text),
    f("estimate_cents", FieldKind::Cents),
    f("actual_cents", FieldKind::Cents),
    f("paid", FieldKind::Bool),
];
const MESSAGE_FIELDS: &[FieldSpec] = &[
    f("id", FieldKind::Text),
    f("channel", FieldKind::Text),
    f("author", FieldKind::Text),
    f("role", FieldKind::Enum(ROLES)),
    f("text", FieldKind::Text),
    f("at", FieldKind::Millis),
];

/// A part of the plan: one root type of the Y.Doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Meta,
    Timeline,
    Guests,
    Tables,
    Vendors,
    Tasks,
    Budget,
    Messages,
}

impl Section {
    /// Every section, in the order of the plan's JSON.
    pub const ALL: [Section; 8] = [
        Section::Meta,
        Section::Timeline,
        Section::Guests,
        Section::Tables,
        Section::Vendors,
        Section::Tasks,
        Section::Budget,
        Section::Messages,
    ];

    /// The root type's name in the Y.Doc, which is also the section's name in URLs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Section::Meta => META,
            Section::Timeline => TIMELINE,
            Section::Guests => GUESTS,
            Section::Tables => TABLES,
            Section::Vendors => VENDORS,
            Section::Tasks => TASKS,
            Section::Budget => BUDGET,
            Section::Messages => MESSAGES,
        }
    }

    /// The known fields of one item of this section (of `meta` itself for [`Section::Meta`]).
    pub const fn fields(self) -> &'static [FieldSpec] {
        match self {
            Section::Meta => META_FIELDS,
            Section::Timeline => TIMELINE_FIELDS,
            Section::Guests => GUEST_FIELDS,
            Section::Tables => TABLE_FIELDS,
            Section::Vendors => VENDOR_FIELDS,
            Section::Tasks => TASK_FIELDS,
            Section::Budget => BUDGET_FIELDS,
            Section::Messages => MESSAGE_FIELDS,
        }
    }

    /// Whether the root is a keyed Y.Map of items (everything but `meta` and `messages`).
    pub const fn is_keyed(self) -> bool {
        !matches!(self, Section::Meta | Section::Messages)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A section name that is not part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan section {0:?} (expected one of meta, timeline, guests, tables, vendors, tasks, budget, messages)")]
pub struct UnknownSection(pub String);

impl FromStr for Section {
    type Err = UnknownSection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Section::ALL
            .into_iter()
            .find(|section| section.name() == s)
            .ok_or_else(|| UnknownSection(s.chars().take(ID_MAX).collect()))
    }
}
