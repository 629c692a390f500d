//! pg_ha: PostgreSQL high availability as a consensus problem, inside every node.
//!
//! Layout: `pg_ha_core` (src/core, a separate crate) holds the consensus logic with no I/O; `agent`
//! is the asynchronous side of the background worker (gRPC server and clients, tokio, never Postgres);
//! `pg` is the only code that touches Postgres (GUCs, shared memory, SPI, the worker's main thread);
//! `api` is the SQL surface in schema `ha`.

use pgrx::prelude::*;

pub mod agent;
pub mod api;
pub mod config;
pub mod pg;

/// Generated from proto/pg_ha.proto.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("pg_ha.v1");
}

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::gucs::define();
    // SAFETY: read once while the library loads.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        // Loaded by CREATE EXTENSION or a function call without preloading: SQL objects work, but
        // there is no agent and no shared memory; ha.status says so.
        return;
    }
    pg::shmem::init();
    pg::gate_shmem::init();
    pg::admission::init();
    pg::request::init();
    pg::hooks::install();
    pg::worker::register();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn status_has_own_row() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM ha.status WHERE is_self")
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        let role = Spi::get_one::<String>("SELECT role FROM ha.status WHERE is_self")
            .unwrap()
            .unwrap();
        assert_eq!(role, "leader");
    }

    #[pg_test]
    fn history_starts_empty() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM ha.history")
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }

    #[pg_test]
    fn monitor_can_read_views() {
        let ok = Spi::get_one::<bool>(
            "SELECT has_table_privilege('pg_monitor', 'ha.status', 'SELECT')
                AND has_table_privilege('pg_monitor', 'ha.history', 'SELECT')
                AND has_function_privilege('pg_monitor', 'ha.status_rows()', 'EXECUTE')
                AND NOT has_function_privilege('public', 'ha.status_rows()', 'EXECUTE')",
        )
        .unwrap()
        .unwrap();
        assert!(ok);
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_ha'",
            "ha.node_name = 'pgrx_test'",
            "ha.agent_address = '127.0.0.1:54999'",
        ]
    }
}
