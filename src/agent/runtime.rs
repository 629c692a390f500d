//! The tokio runtime inside the background worker: built with every signal blocked on its threads (so
//! Postgres' handlers always run on the main thread), tasks supervised so a panic reaches the main loop,
//! and a bounded shutdown.

use super::{Event, Events};
use std::future::Future;
use std::time::Duration;

fn block_all_signals() {
    // SAFETY: pthread_sigmask on the calling (new runtime) thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pg_ha-agent")
        .on_thread_start(block_all_signals)
        .enable_all()
        .build()
}

/// Spawn a task whose panic or unexpected end is reported as [`Event::Fatal`].
pub fn spawn_supervised<F>(rt: &tokio::runtime::Runtime, name: &'static str, events: Events, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = rt.spawn(fut);
    rt.spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                let msg = e.into_panic();
                let text = msg
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| msg.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                let _ = events.send(Event::Fatal(format!("agent task {name} panicked: {text}")));
            }
        }
    });
}

pub fn shutdown(rt: tokio::runtime::Runtime) {
    rt.shutdown_timeout(Duration::from_secs(2));
}
