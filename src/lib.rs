//! wedsync: the real-time collaboration server for wedding plans.
pub mod auth;
pub mod store;
