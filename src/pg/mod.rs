//! The thin Postgres layer: the only code that touches `pg_sys`, SPI, GUCs and shared memory.
//! Everything here runs on the thread that runs Postgres (a backend, or the agent's main thread).

pub mod catalog;
pub mod gucs;
pub mod local;
pub mod shmem;
pub mod worker;
