//! Processes by PID, through /proc and signals: liveness (a zombie counts as dead), children, command lines.
//!
//! The harness makes the test process a child subreaper ([`become_subreaper`]): postmasters, which pg_ctl
//! leaves orphaned, become its children instead of init's, so it can reap them itself the moment they die.
//! Otherwise a SIGKILLed postmaster may stay a zombie for seconds (until init gets round to it), and Postgres
//! refuses to start on that data directory while the PID in its postmaster.pid still exists.

use std::time::Duration;

use crate::error::{err, Result};
use crate::wait::wait_until;

/// Makes this process a child subreaper (once; Linux `PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            eprintln!(
                "pg_test: PR_SET_CHILD_SUBREAPER failed: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Whether `pid` names a live process (exists and is not a zombie). A zombie that is this process' child is
/// reaped on the way, so its PID is really gone afterwards.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat_fields(&stat).first() {
            Some(&"Z") => {
                // SAFETY: waitpid on one PID with WNOHANG; fails harmlessly (ECHILD) if it is not our child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                false
            }
            Some(&"X") => false,
            _ => true,
        },
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ...
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Parent PID of `pid`, if it exists.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).get(1)?.parse().ok()
}

/// Command line of `pid` with NULs turned into spaces ("" if gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Every PID currently in /proc.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| parent_pid(p) == Some(pid) && pid_alive(p))
        .collect()
}

/// Live descendants of `pid` (children, their children, ...), not including `pid`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let pids = all_pids();
    let parents: Vec<(i32, Option<i32>)> = pids.iter().map(|&p| (p, parent_pid(p))).collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parents {
            if pp == Some(p) && !out.contains(&c) && pid_alive(c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Live processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        // cmdline first: a zombie's is empty, so this never reaps a child someone else waits for.
        .filter(|&p| p != me && cmdline(p).contains(needle) && pid_alive(p))
        .collect()
}

/// Live processes with environment entry `entry` (e.g. `PGDATA=/tmp/...`) or, when `prefix` is true, one
/// that starts with it: pg_ha's rejoin helper, whose command line does not name its data directory.
pub fn pids_with_env(entry: &str, prefix: bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|b| {
                b.split(|&c| c == 0).any(|e| {
                    let e = String::from_utf8_lossy(e);
                    if prefix {
                        e.starts_with(entry)
                    } else {
                        e == entry
                    }
                })
            })
        })
        .filter(|&p| pid_alive(p))
        .collect()
}

/// Sends `sig` to `pid` if it is alive; Ok if it is gone already.
pub fn signal(pid: i32, sig: i32) -> Result<()> {
    if !pid_alive(pid) {
        return Ok(());
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(err(format!("kill({pid}, {sig}): {e}")));
        }
    }
    Ok(())
}

/// Waits until none of `pids` is alive.
pub fn wait_gone(pids: &[i32], timeout: Duration, what: &str) -> Result<()> {
    wait_until(timeout, what, || {
        let alive: Vec<String> = pids
            .iter()
            .filter(|&&p| pid_alive(p))
            .map(|&p| format!("{p} ({})", cmdline(p)))
            .collect();
        if alive.is_empty() {
            Ok(true)
        } else {
            Err(err(format!("still alive: {}", alive.join(", "))))
        }
    })
}

/// `/proc/PID/stat` state letter (`S` asleep, `R` running, `T` stopped, ...), None once the process is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Signal `sig` is no longer pending for `pid` (its handler ran), or the process is gone.
pub fn signal_taken(pid: i32, sig: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let bit = 1u64 << (sig - 1);
    !s.lines().any(|l| {
        (l.starts_with("ShdPnd:") || l.starts_with("SigPnd:"))
            && u64::from_str_radix(l.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap_or(0)
                & bit
                != 0
    })
}
