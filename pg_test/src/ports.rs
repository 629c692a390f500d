//! Free loopback ports, never handed out twice within one process.
//!
//! Ports are drawn at random from 20000..32000, below Linux's ephemeral range (32768..60999 by default), so the
//! many outgoing connections a running cluster makes (replication, gRPC, clients) cannot take a port between
//! the moment it is chosen and the moment Postgres or an agent binds it. A port is offered only if binding
//! `host:port` succeeds right now and this process never handed it out before.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use crate::error::{err, Result};
use crate::random::random_u64;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

const LOW: u16 = 20000;
const HIGH: u16 = 32000;

/// A TCP port on `host` (e.g. "127.0.0.1") that is free now and was never returned before in this process.
pub fn free_port(host: &str) -> Result<u16> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = LOW + (random_u64() % u64::from(HIGH - LOW)) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind((host, port)).is_ok() {
            used.insert(port);
            return Ok(port);
        }
    }
    Err(err(format!(
        "no free port found on {host} in {LOW}..{HIGH}"
    )))
}
