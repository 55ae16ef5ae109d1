//! wedsync: the real-time collaboration server for wedding plans.
//!
//! # Layout
//! - [`config`]: the typed configuration (flags > env > file > defaults) and its validation.
//! - [`server`]: shared state, the axum router, [`Server::start`] and graceful shutdown.
//! - [`ws`]: the WebSocket upgrade (name, auth and limits checked before any client byte is
//!   decoded) and the per-socket reader/writer session.
//! - [`decode`]: bounded checking of client updates (inline when small; else a time limit and
//!   a server-wide cap on concurrent checks).
//! - [`protocol`]: y-websocket framing on top of `yrs::sync`, the ack extension, close codes.
//! - [`room`]: one task per document owning its `Doc` and `Awareness`; the registry that starts
//!   rooms on first use and unloads them when idle.
//! - [`store`]: the `Store` trait, its sled implementation (update log + snapshots with
//!   checksums), group-commit flushing and the admin tools behind `wedsync doc`.
//! - [`auth`]: JWT verification into a `Principal` (who, which weddings, view or edit),
//!   revocations, token minting for `wedsync token`.
//! - [`wedding`]: the wedding-plan schema: a typed JSON view over the Y.Doc, server-side
//!   writers (messages, timeline and vendor patches) and the conflict checks merges can't give.
//! - [`api`]: HTTP JSON errors, document-name validation and the document HTTP API.
//! - [`sessions`]: live sessions by identity, and the revocation endpoint that ends them.
//! - [`presence`]: who is connected to a wedding, with token-verified identities.
//! - [`metrics`]: Prometheus exposition at `/metrics`.
//! - [`cluster`]: cluster mode: rooms shared by several nodes through Redis streams
//!   (catch-up script, one stream reader per node, outbox while Redis is down, leased compaction).
//! - [`net`]: the accept loop: connection caps (global, per IP), header-read timeout,
//!   handshake deadline; [`body_deadline`]: the deadline for an HTTP request's body.
//!
//! One update's path: the connection's reader frames and decodes it ([`protocol`]), the room
//! appends it to the store, applies it, waits for the shared flush, then queues one encoded
//! frame to every other subscriber's bounded outgoing queue; each connection's writer sends it.

pub mod api;
pub mod auth;
pub mod body_deadline;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod net;
pub mod presence;
pub mod protocol;
pub mod room;
pub mod server;
pub mod sessions;
pub mod store;
pub mod wedding;
pub mod ws;

pub use config::Config;
pub use server::{Server, ServerError};
