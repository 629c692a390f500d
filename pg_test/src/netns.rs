//! Test hosts in network namespaces: one namespace per node, one for the clients, all joined by veth pairs to a
//! bridge in a namespace of their own, and the packet filters (nftables, inside each host's namespace) that
//! cut links between them.
//!
//! Everything lives in namespaces this module creates (`pgha<pid>x<tag>-…`), with addresses only inside them
//! (10.77.0.0/24); nothing outside the machine, and nothing in the test process' own namespace, is touched.
//! [`Net::drop`] deletes the namespaces (and with them every link and rule); namespaces left behind by a test
//! process that died are swept the next time one is created.
//!
//! The harness itself reaches each node out of band, so a partition never blinds the test: SQL over the
//! node's unix socket (a path, not namespaced), and the agent's gRPC from inside the node's own namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::{err, Result};
use crate::procs::pid_alive;
use crate::random::random_hex;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The subnet every test network uses (each has its own bridge namespace, so they never meet).
const SUBNET: &str = "10.77.0";
/// The clients' host number on the subnet.
const CLIENT_HOST: u8 = 200;

/// Whether this machine can run namespace tests (root, `ip` and `nft`); `Err` says what is missing.
pub fn available() -> std::result::Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (ip netns, nftables)".into());
    }
    for prog in ["ip", "nft"] {
        let found = Command::new(prog)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!("needs `{prog}` (iproute2, nftables)"));
        }
    }
    Ok(())
}

/// For tests that need namespaces: true if they can run; otherwise prints why the test is skipped.
pub fn available_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// One link cut: who cannot talk to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// Hosts `a` and `b` (indexes) exchange nothing.
    Both(usize, usize),
    /// Host `from` cannot open connections to `to` (and its connections to `to` die), while `to` still reaches
    /// `from`: the packets of connections `to` opened pass both ways.
    OneWay { from: usize, to: usize },
}

/// A test network: `hosts` node namespaces plus a client namespace and the bridge.
pub struct Net {
    prefix: String,
    hosts: usize,
    cuts: Mutex<BTreeSet<Cut>>,
}

impl Net {
    /// Creates the namespaces, the bridge, a veth pair per host and the (empty) filter of each host.
    pub fn create(hosts: usize) -> Result<Net> {
        available().map_err(err)?;
        sweep_stale();
        let net = Net {
            prefix: format!("pgha{}x{}", std::process::id(), random_hex(2)),
            hosts,
            cuts: Mutex::new(BTreeSet::new()),
        };
        // From here on, an error drops `net`, which deletes whatever was created.
        let br = net.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for h in 0..=hosts {
            // Host `hosts` is the client namespace.
            let ns = if h == hosts {
                net.client_ns()
            } else {
                net.node_ns(h)
            };
            let addr = if h == hosts {
                net.client_addr()
            } else {
                net.node_addr(h)
            };
            let port = format!("v{h}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            if h < hosts {
                // Connection tracking must see every connection from its first packet, so that one-way cuts
                // know who opened which: load the (empty) filter before anything runs.
                net.load_filter(h, &BTreeSet::new())?;
            }
        }
        Ok(net)
    }

    /// Number of node hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }
    /// Namespace of node `i` (0-based).
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }
    /// Namespace the clients run in.
    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }
    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }
    /// Address of node `i` (0-based).
    pub fn node_addr(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }
    /// Address of the client namespace.
    pub fn client_addr(&self) -> String {
        format!("{SUBNET}.{CLIENT_HOST}")
    }

    // ---- faults ----

    /// Adds `cuts` to the links cut now.
    pub fn cut(&self, cuts: &[Cut]) -> Result<()> {
        let mut now = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = now.clone();
        next.extend(cuts.iter().copied());
        self.apply(&next)?;
        *now = next;
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<()> {
        let mut now = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        self.apply(&BTreeSet::new())?;
        now.clear();
        Ok(())
    }

    /// The links cut now.
    pub fn cuts(&self) -> Vec<Cut> {
        self.cuts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn apply(&self, cuts: &BTreeSet<Cut>) -> Result<()> {
        for h in 0..self.hosts {
            self.load_filter(h, cuts)?;
        }
        Ok(())
    }

    /// Replaces host `h`'s filter with the rules `cuts` imply for it (atomically, one `nft -f`).
    fn load_filter(&self, h: usize, cuts: &BTreeSet<Cut>) -> Result<()> {
        let addrs: Vec<String> = (0..self.hosts).map(|i| self.node_addr(i)).collect();
        let script = filter_script(h, &addrs, cuts);
        let ns = self.node_ns(h);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("nft in {ns}: {e}")))?;
        child
            .stdin
            .take()
            .ok_or_else(|| err("nft stdin"))?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(err(format!(
                "nft -f in {ns} failed: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut names: Vec<String> = (0..self.hosts).map(|i| self.node_ns(i)).collect();
        names.push(self.client_ns());
        names.push(self.bridge_ns());
        for ns in names {
            if std::path::Path::new(NETNS_DIR).join(&ns).exists() {
                if let Err(e) = ip(&["netns", "del", &ns]) {
                    eprintln!("pg_test teardown: {e}");
                }
            }
        }
    }
}

/// The nftables script that gives host `h` (of `addrs`) the filter `cuts` imply: drops whatever crosses a
/// cut in either direction as seen from `h`. Starts by deleting the previous table, so it replaces it whole.
pub fn filter_script(h: usize, addrs: &[String], cuts: &BTreeSet<Cut>) -> String {
    let mut input = vec!["ct state invalid counter".to_string()];
    let mut output = Vec::new();
    for cut in cuts {
        match *cut {
            Cut::Both(a, b) if a == h || b == h => {
                let other = &addrs[if a == h { b } else { a }];
                input.push(format!("ip saddr {other} drop"));
                output.push(format!("ip daddr {other} drop"));
            }
            // `from` cannot open connections to `to`: drop what belongs to connections `from` opened.
            Cut::OneWay { from, to } if from == h => {
                let other = &addrs[to];
                output.push(format!("ip daddr {other} ct direction original drop"));
                input.push(format!("ip saddr {other} ct direction reply drop"));
            }
            Cut::OneWay { from, to } if to == h => {
                let other = &addrs[from];
                input.push(format!("ip saddr {other} ct direction original drop"));
                output.push(format!("ip daddr {other} ct direction reply drop"));
            }
            _ => {}
        }
    }
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let mut s =
            format!("  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n");
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    format!(
        "table inet pgtest\ndelete table inet pgtest\ntable inet pgtest {{\n{}{}}}\n",
        chain("input", "input", &input),
        chain("output", "output", &output)
    )
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes namespaces of test processes that no longer exist (a test killed before its teardown ran), after
/// killing whatever still runs in them.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgha") else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        for p in pids_in_netns(&e.path()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = ip(&["netns", "del", &name]);
    }
}

/// PIDs of the processes whose network namespace is the one bound at `path`.
fn pids_in_netns(path: &std::path::Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let ino = meta.ino();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == ino))
        .collect()
}

/// Opens namespace `ns` for `setns`.
pub(crate) fn open_ns(ns: &str) -> Result<File> {
    let path = std::path::Path::new(NETNS_DIR).join(ns);
    File::open(&path).map_err(|e| err(format!("open {}: {e}", path.display())))
}

/// Moves the calling thread into network namespace `ns` (only this thread; sockets it creates from now on
/// live there).
pub(crate) fn enter(ns: &str) -> Result<()> {
    let f = open_ns(ns)?;
    // SAFETY: setns on a namespace fd we own; affects only the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(format!(
            "setns {ns}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns` (the caller's namespace is untouched).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(err(format!("thread in {ns} panicked"))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<String> {
        (1..=3).map(|i| format!("10.77.0.{i}")).collect()
    }

    #[test]
    fn no_cut_keeps_only_the_conntrack_rule() {
        let s = filter_script(0, &addrs(), &BTreeSet::new());
        assert!(s.contains("ct state invalid counter"));
        assert!(!s.contains("drop"));
        assert!(s.starts_with("table inet pgtest\ndelete table inet pgtest\n"));
    }

    #[test]
    fn both_ways_cut_drops_on_both_hosts_only() {
        let cuts = BTreeSet::from([Cut::Both(0, 2)]);
        let s0 = filter_script(0, &addrs(), &cuts);
        assert!(s0.contains("ip saddr 10.77.0.3 drop") && s0.contains("ip daddr 10.77.0.3 drop"));
        let s2 = filter_script(2, &addrs(), &cuts);
        assert!(s2.contains("ip saddr 10.77.0.1 drop") && s2.contains("ip daddr 10.77.0.1 drop"));
        assert!(!filter_script(1, &addrs(), &cuts).contains("drop"));
    }

    #[test]
    fn one_way_cut_drops_only_connections_the_cut_off_host_opens() {
        let cuts = BTreeSet::from([Cut::OneWay { from: 1, to: 0 }]);
        let s1 = filter_script(1, &addrs(), &cuts);
        assert!(s1.contains("ip daddr 10.77.0.1 ct direction original drop"));
        assert!(s1.contains("ip saddr 10.77.0.1 ct direction reply drop"));
        let s0 = filter_script(0, &addrs(), &cuts);
        assert!(s0.contains("ip saddr 10.77.0.2 ct direction original drop"));
        assert!(s0.contains("ip daddr 10.77.0.2 ct direction reply drop"));
    }
}
