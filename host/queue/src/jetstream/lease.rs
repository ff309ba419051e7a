//! Which tocsin process delivers for a namespace: a lease in the server's bucket.
//!
//! The store keeps an index of the queues in memory and is exact only while one process
//! moves entries (runs filters, deliveries, schedules; see the module docs above). Every
//! other process on the namespace only *appends* ingress (it takes `POST /ingest/…`), which
//! the holder's index follows, and stands by to take the lease over.
//!
//! The lease is key `lease` of the server's bucket: the holder's name, rewritten every
//! [`RENEW_EVERY`] with the revision last written (a write by anyone else in between fails).
//! A process that finds the lease free takes it at once ([`join`]); one that finds it held
//! watches it ([`take_over`]) for [`TTL`] at a time: while its revision moves, the holder is
//! alive; when it stops moving, the holder is gone (`kill -9`, a lost machine) and the
//! watcher takes the lease over with a revision-checked write (two watchers: one wins). No
//! clock is compared across machines. A clean stop deletes the lease, so a watcher takes it
//! within a few seconds. A holder that cannot renew for a whole [`TTL`] (a paused process, a
//! partition) may have been replaced: its store reports a failure, and the server stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::{QueueError, Result};

/// The key of the lease in the server's bucket.
const LEASE_KEY: &str = "lease";

/// How often the holder rewrites the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// How often a standing-by process looks at the lease.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long a lease that nobody rewrites stays its holder's.
pub const TTL: Duration = Duration::from_secs(12);

/// This process's name in the lease: its host, pid and start time (pids repeat).
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    format!(
        "{host}, pid {}, started at {} s since the epoch",
        std::process::id(),
        crate::now_ms() / 1000
    )
}

/// A held lease: renewed in the background until dropped.
pub struct Lease {
    kv: kv::Store,
    revision: Arc<Mutex<u64>>,
    lost: Arc<Mutex<Option<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    renewal: tokio::task::JoinHandle<()>,
}

/// Who holds the lease now, if anyone.
pub async fn holder(kv: &kv::Store) -> Result<Option<String>> {
    let entry = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
}

/// What [`join`] found.
pub enum Joined {
    /// The lease was free: this process delivers.
    Holder(Box<Lease>),
    /// Another process holds it (named): this one takes ingest and stands by.
    Follower(String),
}

/// Takes the lease if it is free (never taken, or released by a clean stop); otherwise says
/// who holds it, at once — whether that holder is still alive is for [`take_over`] to find.
pub async fn join(kv: kv::Store, holder: &str) -> Result<Joined> {
    let value = Bytes::from(holder.to_string());
    let entry = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
    let taken = match &entry {
        None => kv.create(LEASE_KEY, value).await.ok(),
        Some(e) if e.operation != kv::Operation::Put => {
            kv.update(LEASE_KEY, value, e.revision).await.ok()
        }
        Some(_) => None,
    };
    Ok(match taken {
        Some(revision) => Joined::Holder(Box::new(Lease::start(kv, holder, revision))),
        None => Joined::Follower(entry.map_or_else(
            || "a process that took it just now".to_string(),
            |e| String::from_utf8_lossy(&e.value).into_owned(),
        )),
    })
}

/// Watches the lease until its holder stops renewing it (or releases it), then takes it over
/// for `holder`: the wait of a standing-by process.
pub async fn take_over(kv: kv::Store, holder: &str) -> Result<Lease> {
    let value = Bytes::from(holder.to_string());
    loop {
        if let Taken(revision) = take(&kv, &value).await? {
            return Ok(Lease::start(kv, holder, revision));
        }
    }
}

impl Lease {
    fn start(kv: kv::Store, holder: &str, revision: u64) -> Lease {
        let revision = Arc::new(Mutex::new(revision));
        let lost = Arc::new(Mutex::new(None));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let renewal = tokio::spawn(renew(
            kv.clone(),
            holder.to_string(),
            revision.clone(),
            lost.clone(),
            stopped,
        ));
        Lease {
            kv,
            revision,
            lost,
            stop,
            renewal,
        }
    }

    /// Why the lease was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops renewing and deletes the lease (if still ours), so the next start needs not
    /// wait for it to lapse.
    pub async fn release(self) {
        // Not aborted: a renewal in flight must finish, or the revision below would be stale
        // and the delete refused (the next start would then wait the lease out).
        let _ = self.stop.send(true);
        let _ = self.renewal.await;
        let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        let lost = self
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !lost {
            let _ = self
                .kv
                .delete_expect_revision(LEASE_KEY, Some(revision))
                .await;
        }
    }
}

/// What one try at the lease found.
enum Attempt {
    /// The lease is ours, at this revision.
    Taken(u64),
    /// Not taken: its holder renewed (or released) it while we watched, or another process
    /// won the race for it.
    Held,
}
use Attempt::{Held, Taken};

/// One try: takes a free lease at once; watches a held one for up to [`TTL`] and takes it
/// over only if nobody rewrote it meanwhile (a revision-checked write: a race is lost, not won
/// twice); a lease rewritten or released meanwhile ends the try (the next one looks again).
async fn take(kv: &kv::Store, value: &Bytes) -> Result<Attempt> {
    let entry = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
    let Some(entry) = entry else {
        return Ok(match kv.create(LEASE_KEY, value.clone()).await {
            Ok(revision) => Taken(revision),
            Err(_) => Held,
        });
    };
    if entry.operation == kv::Operation::Put {
        // Looked at every second: a release (or a renewal) is seen at once, a holder that
        // went silent after a whole TTL.
        let silent_until = tokio::time::Instant::now() + TTL;
        while tokio::time::Instant::now() < silent_until {
            tokio::time::sleep(WATCH_EVERY).await;
            let again = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
            if again.is_none_or(|a| a.revision != entry.revision) {
                return Ok(Held);
            }
        }
    }
    Ok(
        match kv.update(LEASE_KEY, value.clone(), entry.revision).await {
            Ok(revision) => Taken(revision),
            Err(_) => Held,
        },
    )
}

/// Rewrites the lease every [`RENEW_EVERY`]; records why when it cannot for a whole [`TTL`],
/// or when someone else wrote it.
async fn renew(
    kv: kv::Store,
    holder: String,
    revision: Arc<Mutex<u64>>,
    lost: Arc<Mutex<Option<String>>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stopped.changed() => return,
        }
        let current = *revision.lock().unwrap_or_else(|e| e.into_inner());
        match kv
            .update(LEASE_KEY, Bytes::from(holder.clone()), current)
            .await
        {
            Ok(next) => {
                *revision.lock().unwrap_or_else(|e| e.into_inner()) = next;
                last_renewed = tokio::time::Instant::now();
            }
            Err(e) => {
                let why = if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) {
                    Some("another tocsin process took over the JetStream namespace's lease".into())
                } else if last_renewed.elapsed() >= TTL {
                    Some(format!(
                        "the JetStream namespace's lease could not be renewed for {}s ({e}); another process may hold it now",
                        TTL.as_secs()
                    ))
                } else {
                    tracing::warn!(error = %e, "cannot renew the JetStream namespace's lease; trying again");
                    None
                };
                if let Some(why) = why {
                    *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    return;
                }
            }
        }
    }
}

fn lease_error(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("JetStream: the namespace's lease: {e}"))
}
