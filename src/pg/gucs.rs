//! The `ha.*` settings (interface.md): definitions, validation hooks, and typed reads.
//!
//! Values are read on the worker's main thread or in a backend only (pgrx thread check); the agent's
//! tokio tasks receive an [`AgentSettings`] copy instead.

use crate::config;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

pub static NODE_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static AGENT_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static PEERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"default"));
pub static FAILOVER_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static AUTH_TOKEN_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static DEBUG_FAILPOINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static RECLONE_ON_REWIND_FAILURE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static METRICS_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SYSTEMD_UNIT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// While `_PG_init` defines the settings, Postgres applies postgresql.conf values through the check
/// hooks at WARNING level and silently keeps the default on failure. We want a hard error at start, so
/// during definition the hooks only record problems, and `define()` raises them afterwards.
static DEFINING: AtomicBool = AtomicBool::new(false);
static DEFINE_ERRORS: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

/// A copy of the settings for the agent's tasks (plain data, any thread).
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub node_name: String,
    pub agent_address: config::AgentAddr,
    pub peers: Vec<config::AgentAddr>,
    pub conninfo: String,
    pub zone: String,
    pub failover_timeout_ms: u64,
    pub auth_token_file: Option<String>,
    /// Test-only fault injection (`ha.debug_failpoint`); empty in production.
    pub failpoint: String,
    pub reclone_on_rewind_failure: bool,
    /// `ha.metrics_address`: where the agent serves `/metrics` and the health endpoints; `None` = off.
    pub metrics_address: Option<config::AgentAddr>,
    /// `ha.systemd_unit` with its `.service` suffix; empty: the server is run by bare `pg_ctl`.
    pub systemd_unit: String,
}

fn read(s: &GucSetting<Option<CString>>) -> String {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Current settings. Only call on the main thread. Values were validated by the hooks, so parse errors
/// here mean a setting is missing; those are reported as `Err` with the setting named.
/// `ha.failover_timeout` in ms (at least 1).
pub fn failover_timeout_ms() -> u64 {
    FAILOVER_TIMEOUT_MS.get().max(1) as u64
}

pub fn agent_settings() -> Result<AgentSettings, String> {
    let node_name = read(&NODE_NAME);
    config::validate_node_name(&node_name).map_err(|e| format!("ha.node_name: {e}"))?;
    let agent_address = config::parse_agent_addr(&read(&AGENT_ADDRESS))
        .map_err(|e| format!("ha.agent_address: {e}"))?;
    let peers = config::parse_peers(&read(&PEERS)).map_err(|e| format!("ha.peers: {e}"))?;
    let tf = read(&AUTH_TOKEN_FILE);
    let metrics_address = config::parse_metrics_addr(&read(&METRICS_ADDRESS))
        .map_err(|e| format!("ha.metrics_address: {e}"))?;
    let systemd_unit = config::parse_systemd_unit(&read(&SYSTEMD_UNIT))
        .map_err(|e| format!("ha.systemd_unit: {e}"))?
        .unwrap_or_default();
    Ok(AgentSettings {
        node_name,
        agent_address,
        peers,
        conninfo: read(&CONNINFO),
        zone: read(&ZONE),
        failover_timeout_ms: FAILOVER_TIMEOUT_MS.get().max(1) as u64,
        auth_token_file: if tf.is_empty() { None } else { Some(tf) },
        failpoint: read(&DEBUG_FAILPOINT),
        reclone_on_rewind_failure: RECLONE_ON_REWIND_FAILURE.get(),
        metrics_address,
        systemd_unit,
    })
}

pub fn node_name() -> String {
    read(&NODE_NAME)
}

pub fn zone() -> String {
    read(&ZONE)
}

/// Report a check failure: during definition, remember it; afterwards, tell Postgres why.
fn reject(setting: &str, msg: String) -> bool {
    if DEFINING.load(Ordering::Relaxed) {
        DEFINE_ERRORS
            .lock()
            .push(format!("invalid value for parameter \"{setting}\": {msg}"));
        return true;
    }
    let c = CString::new(msg).unwrap_or_else(|_| c"invalid value".into());
    // SAFETY: check hooks run on the main thread; GUC_check_errdetail_string takes a palloc'd string.
    unsafe {
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(c.as_ptr());
    }
    false
}

unsafe fn new_value(newval: *mut *mut c_char) -> Option<String> {
    // SAFETY: Postgres passes a pointer to the candidate string (may be NULL).
    unsafe {
        if newval.is_null() || (*newval).is_null() {
            None
        } else {
            Some(CStr::from_ptr(*newval).to_string_lossy().into_owned())
        }
    }
}

macro_rules! check_hook {
    ($fn_name:ident, $setting:literal, $validate:expr) => {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn $fn_name(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            let v = unsafe { new_value(newval) }.unwrap_or_default();
            let f: fn(&str) -> Result<(), String> = $validate;
            match f(&v) {
                Ok(()) => true,
                Err(e) => reject($setting, e),
            }
        }
    };
}

check_hook!(check_node_name, "ha.node_name", |v| if v.is_empty() {
    Ok(()) // unset is reported by the agent at start with a clear message
} else {
    config::validate_node_name(v)
});
check_hook!(
    check_agent_address,
    "ha.agent_address",
    |v| if v.is_empty() {
        Ok(())
    } else {
        config::parse_agent_addr(v).map(|_| ())
    }
);
check_hook!(check_peers, "ha.peers", |v| config::parse_peers(v)
    .map(|_| ()));
check_hook!(check_zone, "ha.zone", config::validate_zone);
check_hook!(check_metrics_address, "ha.metrics_address", |v| {
    config::parse_metrics_addr(v).map(|_| ())
});
check_hook!(check_systemd_unit, "ha.systemd_unit", |v| {
    config::parse_systemd_unit(v).map(|_| ())
});

/// Define every `ha.*` setting. Called once from `_PG_init`.
pub fn define() {
    DEFINING.store(true, Ordering::Relaxed);
    // SAFETY: hooks are #[pg_guard]ed and only touch Postgres from the calling (main) thread.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"ha.node_name",
            c"Unique name of this pg_ha node.",
            c"Also its application_name when it streams WAL.",
            &NODE_NAME,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_node_name),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ha.agent_address",
            c"host:port the pg_ha agent listens on and advertises to its peers.",
            c"",
            &AGENT_ADDRESS,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_agent_address),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ha.peers",
            c"Comma-separated agent addresses used to find the cluster.",
            c"May include this node's own address.",
            &PEERS,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_peers),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ha.zone",
            c"Zone (cell) label of this node, used by zone policies.",
            c"",
            &ZONE,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_zone),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ha.metrics_address",
            c"host:port where the pg_ha agent serves Prometheus metrics and health endpoints over HTTP.",
            c"Empty (the default): off. GET /metrics, /health, /leader, /replica. A reload rebinds.",
            &METRICS_ADDRESS,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_metrics_address),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ha.systemd_unit",
            c"The systemd unit that runs this server (e.g. postgresql@15-main); empty: bare pg_ctl.",
            c"When set, the rejoin helper runs as pg-ha-rejoin@<instance>.service and stops and starts the server with systemctl (README: Running under systemd).",
            &SYSTEMD_UNIT,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
            Some(check_systemd_unit),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"ha.conninfo",
        c"libpq connection string peers use to reach this node's Postgres.",
        c"Used for streaming replication and pg_rewind.",
        &CONNINFO,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ha.failover_timeout",
        c"How long the leader may be unreachable before coordinators race for a new term.",
        c"",
        &FAILOVER_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"ha.auth_token_file",
        c"File holding the shared secret every agent RPC must carry.",
        c"",
        &AUTH_TOKEN_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"ha.reclone_on_rewind_failure",
        c"Re-clone this node with pg_basebackup when pg_rewind cannot bring it back as a follower.",
        c"Off: the node is left stopped-in-recovery with pg_ha.rejoin_failed in its data directory for an operator.",
        &RECLONE_ON_REWIND_FAILURE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ha.debug_failpoint",
        c"Testing only: stall the agent at a named point of a leadership change.",
        c"coordinator_stall_after_pledges: a coordinator that won its pledges waits 60 s before promoting; candidate_never_establish: a promoted candidate never opens its fence; rewind_fails: the rejoin helper's pg_rewind cannot connect; commit_pause_after_fence: a writing transaction waits after the fence check until pg_ha.failpoint_release exists in the data directory; agent_hold_at_start: the agent does nothing until pg_ha_failpoint_release exists in the data directory; rewind_floor_ahead: the rewind floor recorded before a rejoin is 48 MiB ahead, at the new leader's term; change_pause_after_row: a ruleset change stops right after writing its row until the failpoint is cleared. Empty (the default) in production.",
        &DEBUG_FAILPOINT,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    // SAFETY: main thread, during _PG_init.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"ha".as_ptr()) };
    DEFINING.store(false, Ordering::Relaxed);
    let errors = std::mem::take(&mut *DEFINE_ERRORS.lock());
    if !errors.is_empty() {
        pgrx::error!("pg_ha: {}", errors.join("; "));
    }
}
