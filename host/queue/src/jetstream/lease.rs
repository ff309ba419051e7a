//! One tocsin process at a time on a namespace: a lease in the server's bucket.
//!
//! The store keeps an index of the queues in memory and is exact only while it alone moves
//! entries (see the module docs above), so a second process on the same namespace — a copy
//! started by mistake, or a restart while the old process still runs — must not start.
//!
//! The lease is key `lease` of the server's bucket: the holder's name, rewritten every
//! [`RENEW_EVERY`] with the revision last written (a write by anyone else in between fails).
//! A process that finds the lease held watches it for [`TTL`]: if its revision moves, its
//! holder is alive and the newcomer refuses to start, naming it; if not, the holder is gone
//! (`kill -9`, a lost machine) and the newcomer takes the lease over with a revision-checked
//! write. No clock is compared across machines. A clean stop deletes the lease, so the next
//! start takes it at once. A holder that cannot renew for a whole [`TTL`] (a paused process,
//! a partition) may have been replaced: its store reports a failure, and the server stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::{QueueError, Result};

/// The key of the lease in the server's bucket.
const LEASE_KEY: &str = "lease";

/// How often the holder rewrites the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

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

impl Lease {
    /// Takes the lease for `holder`, waiting up to [`TTL`] for a silent holder's to lapse.
    /// When a live holder renews it meanwhile: refuses, naming the holder — or, `standby`,
    /// keeps watching and takes the lease over once its holder stops (a hot standby).
    pub async fn acquire(
        kv: kv::Store,
        holder: &str,
        namespace: &str,
        standby: bool,
    ) -> Result<Lease> {
        let value = Bytes::from(holder.to_string());
        let mut announced = false;
        let revision = loop {
            match take(&kv, &value).await? {
                Taken(revision) => break revision,
                HeldBy(other) if standby => {
                    if !announced {
                        tracing::warn!(holder = %other, "standing by: another tocsin process runs this JetStream namespace; taking over when it stops renewing its lease");
                        announced = true;
                    }
                }
                HeldBy(other) => return Err(in_use(namespace, &other)),
            }
        };
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
        Ok(Lease {
            kv,
            revision,
            lost,
            stop,
            renewal,
        })
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
    /// Its holder, alive: it renewed the lease while we watched.
    HeldBy(String),
}
use Attempt::{HeldBy, Taken};

/// One try: takes a free lease at once; watches a held one for [`TTL`] and takes it over
/// only if nobody rewrote it meanwhile (a revision-checked write: a race is lost, not won
/// twice).
async fn take(kv: &kv::Store, value: &Bytes) -> Result<Attempt> {
    let entry = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
    let Some(entry) = entry else {
        return Ok(match kv.create(LEASE_KEY, value.clone()).await {
            Ok(revision) => Taken(revision),
            Err(_) => HeldBy("a process that took it just now".into()),
        });
    };
    let holder = String::from_utf8_lossy(&entry.value).into_owned();
    if entry.operation == kv::Operation::Put {
        tracing::info!(holder = %holder, "the JetStream namespace's lease is held; watching whether its holder still renews it");
        tokio::time::sleep(TTL).await;
        let again = kv.entry(LEASE_KEY).await.map_err(lease_error)?;
        if again.is_some_and(|a| a.revision != entry.revision) {
            return Ok(HeldBy(holder));
        }
    }
    Ok(
        match kv.update(LEASE_KEY, value.clone(), entry.revision).await {
            Ok(revision) => Taken(revision),
            Err(_) => HeldBy(holder),
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

fn in_use(namespace: &str, holder: &str) -> QueueError {
    QueueError::Storage(format!(
        "the JetStream namespace {namespace:?} is in use by another tocsin process ({holder}), \
         which renews its lease; one process at a time runs a namespace's pipelines. Stop it, \
         or give this one another --queue-namespace"
    ))
}
