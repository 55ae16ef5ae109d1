//! wedsync: the real-time collaboration server for wedding plans.
pub mod store;
pub mod wedding;
