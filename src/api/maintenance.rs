//! `ha.pause()` / `ha.resume()`: maintenance mode. A row in `ha.cluster_settings`, written on the leader
//! like any commit and replicated to every node; while it says paused, no agent starts an automatic
//! failover (operators can still run `ha.switchover()` and `ha.failover()`).

use pgrx::prelude::*;

fn set_paused(on: bool) -> String {
    let value = if on { "on" } else { "off" };
    Spi::run_with_args(
        "INSERT INTO ha.cluster_settings (name, value) VALUES ('paused', $1)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, changed_at = now()",
        &[value.into()],
    )
    .unwrap_or_else(|e| error!("pg_ha: cannot record the maintenance mode: {e}"));
    if on {
        "paused: no automatic failover until ha.resume()".into()
    } else {
        "resumed: automatic failover is on".into()
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn pause() -> String {
    set_paused(true)
}

#[pg_extern(volatile, parallel_unsafe)]
fn resume() -> String {
    set_paused(false)
}
