//! Running Postgres' programs as the unprivileged OS account (initdb and postgres refuse root), and files
//! that account must own.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{err, Result};

/// The OS account Postgres runs as: uid, gid, home.
#[derive(Clone, Debug)]
pub(crate) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl OsUser {
    /// `$PG_TEST_OS_USER` or `postgres`, or the current user when not running as root.
    pub fn postgres() -> Result<OsUser> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let name = std::env::var("PG_TEST_OS_USER").unwrap_or_else(|_| "postgres".into());
        if euid != 0 {
            // Not root: run everything as ourselves.
            // SAFETY: getegid has no preconditions.
            let gid = unsafe { libc::getegid() };
            let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
            return Ok(OsUser {
                name: "self".into(),
                uid: euid,
                gid,
                home,
            });
        }
        let cname = CString::new(name.clone())?;
        static GETPWNAM: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = GETPWNAM.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: getpwnam returns NULL or a pointer to static storage, which we copy out of at once, holding
        // a lock so that parallel tests in this process do not overwrite it meanwhile.
        unsafe {
            let pw = libc::getpwnam(cname.as_ptr());
            if pw.is_null() {
                return Err(err(format!(
                    "OS user {name} not found (set PG_TEST_OS_USER)"
                )));
            }
            let home = std::ffi::CStr::from_ptr((*pw).pw_dir)
                .to_string_lossy()
                .into_owned();
            Ok(OsUser {
                name,
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
                home,
            })
        }
    }

    /// Makes `path` owned by this account (no-op when not root).
    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| err(format!("chown {}: {e}", path.display())))
    }
}

/// Directory of the Postgres 15 binaries (`$PG_TEST_BINDIR` or Debian's).
pub(crate) fn bindir() -> PathBuf {
    std::env::var_os("PG_TEST_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A command for Postgres program `prog` that runs as `user`, in `cwd`, with a clean libpq environment.
pub(crate) fn pg_command(user: &OsUser, prog: &str, cwd: &Path) -> Command {
    pg_command_in(user, prog, cwd, None)
}

/// [`pg_command`] inside network namespace `netns` (a test host), when given.
pub(crate) fn pg_command_in(user: &OsUser, prog: &str, cwd: &Path, netns: Option<&str>) -> Command {
    let mut cmd = Command::new(bindir().join(prog));
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .env("HOME", &user.home)
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC");
    let ns_fd = netns.map(|ns| crate::netns::open_ns(ns).map(std::os::fd::OwnedFd::from));
    match ns_fd {
        Some(fd) => {
            // setns needs root, so it must come before dropping to `user`; std's uid()/gid() happen before
            // pre_exec closures, hence the switch by hand. An open error surfaces as the spawn error.
            let (uid, gid, switch) = (user.uid, user.gid, user.name != "self");
            let fd = fd.map_err(|e| e.to_string());
            // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls.
            unsafe {
                cmd.pre_exec(move || {
                    use std::os::fd::AsRawFd;
                    let Ok(fd) = fd.as_ref() else {
                        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
                    };
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if switch
                        && (libc::setgroups(1, &gid) != 0
                            || libc::setgid(gid) != 0
                            || libc::setuid(uid) != 0)
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            if switch {
                cmd.env("USER", &user.name).env("LOGNAME", &user.name);
            }
        }
        None => {
            if user.name != "self" {
                cmd.uid(user.uid)
                    .gid(user.gid)
                    .env("USER", &user.name)
                    .env("LOGNAME", &user.name);
            }
        }
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd` to completion within `timeout`, failing with its output if it exits non-zero or takes too long
/// (then it is killed).
pub(crate) fn run(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let dir = std::env::temp_dir();
    // Output goes to files, not pipes: a daemon it starts (pg_ctl start) must not hold our pipe open.
    let tag = crate::random::random_hex(6);
    let out_path = dir.join(format!("pg_test_cmd.{tag}.out"));
    let err_path = dir.join(format!("pg_test_cmd.{tag}.err"));
    let out_f = std::fs::File::create(&out_path)?;
    let err_f = std::fs::File::create(&err_path)?;
    cmd.stdout(out_f).stderr(err_f);
    let result = (|| {
        let mut child = cmd.spawn().map_err(|e| err(format!("spawn {desc}: {e}")))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("{desc} timed out after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20)); // poll the child until its deadline
        };
        let output = Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        if !status.success() {
            return Err(err(format!(
                "{desc} failed ({status}):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output)
    })();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    result
}
