//! `ALTER SYSTEM SET name = value` from the agent's main thread, then a configuration reload.
//!
//! ALTER SYSTEM cannot run through SPI ("cannot be executed from a function"), so this builds the
//! statement node and calls `AlterSystemSetConfigFile` directly, which writes postgresql.auto.conf
//! under its lock, exactly as the SQL command does.

use pgrx::pg_sys;
use std::ffi::CString;

/// Set (or with `None`, reset) a setting in postgresql.auto.conf and signal the postmaster to reload.
/// Must run on the agent's main thread, inside a transaction (for the catalog lookups it does).
pub fn set(name: &str, value: Option<&str>) {
    let cname = CString::new(name).expect("setting name");
    let cvalue = value.map(|v| CString::new(v).expect("setting value"));
    // SAFETY: nodes are palloc'd in the current memory context and have the layout Postgres expects;
    // main thread only.
    unsafe {
        let set = pg_sys::palloc0(std::mem::size_of::<pg_sys::VariableSetStmt>())
            as *mut pg_sys::VariableSetStmt;
        (*set).type_ = pg_sys::NodeTag::T_VariableSetStmt;
        (*set).name = pg_sys::pstrdup(cname.as_ptr());
        match &cvalue {
            Some(v) => {
                let c =
                    pg_sys::palloc0(std::mem::size_of::<pg_sys::A_Const>()) as *mut pg_sys::A_Const;
                (*c).type_ = pg_sys::NodeTag::T_A_Const;
                (*c).val.sval.type_ = pg_sys::NodeTag::T_String;
                (*c).val.sval.sval = pg_sys::pstrdup(v.as_ptr());
                (*c).location = -1;
                (*set).kind = pg_sys::VariableSetKind::VAR_SET_VALUE;
                (*set).args = pg_sys::lappend(std::ptr::null_mut(), c as *mut std::ffi::c_void);
            }
            None => {
                (*set).kind = pg_sys::VariableSetKind::VAR_RESET;
            }
        }
        let stmt = pg_sys::palloc0(std::mem::size_of::<pg_sys::AlterSystemStmt>())
            as *mut pg_sys::AlterSystemStmt;
        (*stmt).type_ = pg_sys::NodeTag::T_AlterSystemStmt;
        (*stmt).setstmt = set;
        pg_sys::AlterSystemSetConfigFile(stmt);
        libc::kill(pg_sys::PostmasterPid, libc::SIGHUP);
    }
}
