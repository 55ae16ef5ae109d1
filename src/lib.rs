//! wedsync: the real-time collaboration server for wedding plans.
//!
//! # Layout
//! - [`config`]: the typed configuration (flags > env > file > defaults) and its validation.
//! - [`server`]: shared state, the axum router, [`Server::start`] and graceful shutdown.
//! - [`ws`]: the WebSocket upgrade (name, auth and limits checked before any client byte is
//!   decoded) and the per-socket reader/writer session.
//! - [`protocol`]: y-websocket framing on top of `yrs::sync`, the ack extension, close codes.
//! - [`room`]: one task per document owning its `Doc` and `Awareness`; the registry that starts
//!   rooms on first use and unloads them when idle.
//! - [`store`]: the `Store` trait, its sled implementation (update log + snapshots with
//!   checksums), group-commit flushing and the admin tools behind `wedsync doc`.
//! - [`auth`]: JWT verification into a `Principal` (who, which weddings, view or edit),
//!   revocations, token minting for `wedsync token`.
//! - [`api`]: HTTP JSON errors, document-name validation and the document HTTP API.
//! - [`metrics`]: Prometheus exposition at `/metrics`.
//!
//! One update's path: the connection's reader frames and decodes it ([`protocol`]), the room
//! appends it to the store, applies it, waits for the shared flush, then queues one encoded
//! frame to every other subscriber's bounded outgoing queue; each connection's writer sends it.

pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod store;
pub mod ws;

pub use config::Config;
pub use server::{Server, ServerError};
