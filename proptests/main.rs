//! Property tests; one module per subsystem.

mod fuzz_props;
mod store_props;
mod sync_props;
mod wedding_props;
