//! The server's understanding of a wedding plan.
//!
//! Why it exists: the room task owns a `yrs::Doc` that clients edit freely; the REST API and the
//! server's awareness state need to *read* that document as a plan (JSON with stable names),
//! make a few validated edits on behalf of a user, and report the domain problems a CRDT merge
//! cannot prevent. Everything here is pure code over yrs transactions: no sockets, no store, no
//! clock (callers pass timestamps in), so every replica computes the same answers.
//!
//! Layout:
//! - [`schema`]: root type names, field names and types, allowed values, [`Section`].
//! - [`plan`]: the JSON view of the plan, message paging, and the validated writers.
//! - [`conflicts`](mod@conflicts): the deterministic list of [`Conflict`]s in a document state.
//!
//! docs/schema.md describes the same layout for front-end developers.

pub mod conflicts;
pub mod http;
pub mod plan;
pub mod schema;
mod value;

#[cfg(test)]
mod tests;

pub use conflicts::{conflicts, Conflict, ConflictKind};
pub use plan::{
    append_message, item_json, messages, patch_timeline_item, patch_vendor, plan_json,
    section_json, Message, NewMessage, PlanError, TimelinePatch, VendorPatch,
};
pub use schema::{Section, UnknownSection};
