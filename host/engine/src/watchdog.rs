//! The last line of defence against a wedged process: a plain OS thread that notices when the
//! async runtime stops making progress or the queue store stops syncing, and ends the process
//! so its supervisor restarts it (exit status 75, as for a failed store).
//!
//! Why a thread of its own: when sled hits an I/O error it cannot recover from (a security
//! review produced `EMFILE` for a blob file), its calls may never return. The tokio workers
//! that made them are then blocked, so no async code runs — not the server's store check, not
//! the SIGTERM handler — and the process would sit there answering nothing, for ever. Nothing
//! acknowledged is at risk (an answer comes only after a sync), so ending the process is safe,
//! and it is the only cure: sled needs to be reopened.
//!
//! It watches three things, once a second:
//! - the runtime's heartbeat, bumped by an async task every [`HEARTBEAT_INTERVAL`]: stale for
//!   [`WEDGE_LIMIT`] means every worker is stuck;
//! - the store's sync in progress ([`QueueStore::stalled`]): running for [`WEDGE_LIMIT`]
//!   means it will not come back;
//! - the store's failure ([`QueueStore::failure`]): the server stops by itself then; if it
//!   has not exited within its shutdown grace (plus [`EXIT_MARGIN`]), the watchdog ends it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tocsin_queue::QueueStore;

/// How often the runtime proves it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long the runtime may be silent, or one sync run, before the process counts as wedged.
/// Far above a slow disk's fsync, far below an outage anyone would accept.
pub const WEDGE_LIMIT: Duration = Duration::from_secs(20);
/// Added to the shutdown grace before a failed store's shutdown counts as hung.
pub const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// What the watchdog looks at.
pub struct Watched {
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// The shutdown grace the server was given.
    pub shutdown_grace: Duration,
}

/// Why the process is wedged, in words for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wedged(pub String);

/// The runtime's side: bumps the heartbeat until the runtime stops.
#[derive(Clone, Default)]
pub struct Heartbeat {
    /// Milliseconds since the watchdog started, at the last beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Beats from a task of the current tokio runtime for as long as the runtime runs.
    pub fn spawn_beating(&self, origin: Instant) {
        let last = self.last.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                last.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        });
    }

    fn age(&self, origin: Instant) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        origin.elapsed().saturating_sub(last)
    }
}

/// Checks `watched` once: `Some` when the process must end.
pub fn check(
    watched: &Watched,
    heartbeat_age: Duration,
    failed_since: &mut Option<Instant>,
) -> Option<Wedged> {
    if heartbeat_age >= WEDGE_LIMIT {
        return Some(Wedged(format!(
            "the async runtime has made no progress for {}s (every worker is blocked, most \
             likely in the queue store)",
            heartbeat_age.as_secs()
        )));
    }
    if let Some(running) = watched.queue.stalled() {
        if running >= WEDGE_LIMIT {
            return Some(Wedged(format!(
                "a sync of the queue store has been running for {}s",
                running.as_secs()
            )));
        }
    }
    if let Some(failure) = watched.queue.failure() {
        let since = *failed_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= watched.shutdown_grace + EXIT_MARGIN {
            return Some(Wedged(format!(
                "the queue store failed ({failure}) and the shutdown did not end within the grace"
            )));
        }
    }
    None
}

/// Starts the watchdog thread: it checks once a second and calls `on_wedged` (which should
/// end the process) the first time [`check`] finds the process wedged. The heartbeat must be
/// beating ([`Heartbeat::spawn_beating`]) from the runtime being watched.
pub fn spawn(
    watched: Watched,
    heartbeat: Heartbeat,
    origin: Instant,
    on_wedged: impl FnOnce(Wedged) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tocsin-watchdog".into())
        .spawn(move || {
            let mut failed_since = None;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if let Some(wedged) = check(&watched, heartbeat.age(origin), &mut failed_since) {
                    on_wedged(wedged);
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let queue = tocsin_queue::SledStore::open(dir.path()).unwrap();
        // The store stays open after the directory handle goes: sled holds its files.
        std::mem::forget(dir);
        Watched {
            queue,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_live_runtime_and_a_healthy_store_are_left_alone() {
        let mut failed = None;
        assert_eq!(
            check(&watched(), Duration::from_millis(600), &mut failed),
            None
        );
    }

    #[test]
    fn a_silent_runtime_is_wedged() {
        let mut failed = None;
        let wedged = check(&watched(), WEDGE_LIMIT, &mut failed).expect("wedged");
        assert!(wedged.0.contains("no progress"), "{wedged:?}");
    }

    #[tokio::test]
    async fn the_heartbeat_beats_while_the_runtime_runs() {
        let origin = Instant::now();
        let heartbeat = Heartbeat::default();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            heartbeat.age(origin) >= Duration::from_millis(300),
            "no beat yet"
        );
        heartbeat.spawn_beating(origin);
        // The first beat comes at once; wait for it however busy the machine is.
        let deadline = Instant::now() + Duration::from_secs(10);
        while heartbeat.age(origin) >= Duration::from_millis(300) {
            assert!(Instant::now() < deadline, "the heartbeat never beat");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
