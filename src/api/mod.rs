//! The SQL surface (schema `ha`): thin `#[pg_extern]` functions that read shared memory or the catalog
//! and map errors to clear messages.

pub mod cluster;
pub mod maintenance;
pub mod status;
