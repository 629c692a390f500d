//! The thin Postgres layer: the only code that touches `pg_sys`, SPI, GUCs and shared memory.
//! Everything here runs on the thread that runs Postgres (a backend, or the agent's main thread).

pub mod admission;
pub mod alter_system;
pub mod backend_failpoint;
pub mod catalog;
pub mod commit_gate;
pub mod commit_wait;
pub mod coverage;
pub mod floor;
pub mod follow;
pub mod force;
pub mod gate_shmem;
pub mod gucs;
pub mod hooks;
pub mod local;
pub mod rejoin;
pub mod request;
pub mod shmem;
pub mod steward;
pub mod takeover;
pub mod timeline;
pub mod walrcv;
pub mod walsnd;
pub mod worker;
