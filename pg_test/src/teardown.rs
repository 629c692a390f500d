//! Teardown by PID: every process a cluster started is killed, also when the test panics, and its temp
//! dir removed (unless `PG_TEST_KEEP=1`).

use std::time::Duration;

use crate::cluster::Cluster;
use crate::procs::{cmdline, descendants, pid_alive, pids_with_cmdline, pids_with_env, signal};
use crate::wait::wait_until;

impl Cluster {
    /// Kills every process of this cluster by PID: SIGCONT (in case a node is frozen), SIGQUIT to each
    /// postmaster (what `pg_ctl stop -m immediate` sends), SIGKILL whatever is left after a few seconds.
    /// Also catches postmasters the harness did not start itself (e.g. restarted by the agent) through their
    /// command line (`-D <data dir>`), and any other program running on the cluster's directory.
    pub fn kill_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let base = format!("{}/", self.base.display());
        let mut roots: Vec<i32> = Vec::new();
        for n in &self.nodes {
            let _ = n.postmaster_pid();
            let seen = n
                .seen_pids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            roots.extend(
                seen.into_iter()
                    .filter(|&p| pid_alive(p) && cmdline(p).contains(&base)),
            );
        }
        // pg_ha's rejoin helper (a shell in a session of its own) names its data directory only in its
        // environment.
        let mut strays = pids_with_cmdline(&base);
        strays.extend(pids_with_env(&format!("PGDATA={base}"), true));
        for p in strays {
            if !roots.contains(&p) {
                roots.push(p);
            }
        }
        let mut all = roots.clone();
        for &r in &roots {
            for d in descendants(r) {
                if !all.contains(&d) {
                    all.push(d);
                }
            }
        }
        if all.is_empty() {
            self.remove_stale_shm();
            return problems;
        }
        for &p in &all {
            let _ = signal(p, libc::SIGCONT);
        }
        for &r in &roots {
            let _ = signal(r, libc::SIGQUIT);
        }
        let gone = |pids: &[i32], secs: u64| {
            wait_until(
                Duration::from_secs(secs),
                "cluster processes to exit",
                || Ok(pids.iter().all(|&p| !pid_alive(p))),
            )
            .is_ok()
        };
        if !gone(&all, 5) {
            for &p in all.iter().filter(|&&p| pid_alive(p)) {
                problems.push(format!(
                    "SIGKILL {p} ({}) after SIGQUIT did not stop it",
                    cmdline(p)
                ));
                let _ = signal(p, libc::SIGKILL);
            }
            if !gone(&all, 10) {
                for &p in all.iter().filter(|&&p| pid_alive(p)) {
                    problems.push(format!("process {p} ({}) survived SIGKILL", cmdline(p)));
                }
            }
        }
        self.remove_stale_shm();
        problems
    }

    /// A node that died by SIGKILL and was not restarted leaves its SysV shared memory segment behind (a
    /// restart would remove it). Removes such segments: the one named in a stale postmaster.pid, if nothing
    /// is attached to it any more. (Its /dev/shm DSM segments cannot be told apart from other clusters' and
    /// stay.)
    fn remove_stale_shm(&self) {
        for n in &self.nodes {
            let Ok(text) = std::fs::read_to_string(n.data_dir.join("postmaster.pid")) else {
                continue;
            };
            let Some(line) = text.lines().nth(6) else {
                continue;
            };
            let mut it = line.split_whitespace();
            let (Some(key), Some(id)) = (it.next(), it.next()) else {
                continue;
            };
            let (Ok(key), Ok(id)) = (key.parse::<i64>(), id.parse::<i32>()) else {
                continue;
            };
            // SAFETY: shmctl IPC_STAT fills the zeroed struct we own; IPC_RMID takes no buffer.
            unsafe {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0
                    && i64::from(ds.shm_perm.__key) == key
                    && ds.shm_nattch == 0
                {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "\n===== pg_test: the test panicked; cluster in {} =====",
                self.base.display()
            );
            for n in &self.nodes {
                eprintln!(
                    "\n===== pg_test: {} ({}:{}), last lines of {} =====\n{}",
                    n.name,
                    n.host,
                    n.pg_port,
                    n.log_path.display(),
                    n.log_tail(40)
                );
            }
        }
        for p in self.kill_all() {
            eprintln!("pg_test teardown: {p}");
        }
        if std::env::var("PG_TEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("pg_test: PG_TEST_KEEP=1, keeping {}", self.base.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("pg_test teardown: remove {}: {e}", self.base.display());
        }
    }
}
