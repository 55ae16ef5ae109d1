//! Property tests; one module per subsystem.

mod store_props;
mod sync_props;
mod wedding_props;
