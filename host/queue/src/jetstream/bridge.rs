//! The JetStream client is async; [`crate::QueueStore`] is called synchronously, from tokio
//! tasks and from plain threads (the CLI). The client therefore runs on a runtime of its own,
//! and a synchronous call hands its future over and waits on a plain channel: safe from any
//! thread (a runtime's `block_on` would panic inside another runtime), at the price of
//! blocking the caller for the round trips the call makes.

use std::future::Future;

use crate::{QueueError, Result};

/// A runtime for the client, and a way to wait for futures run on it.
pub struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    /// Starts the runtime (one worker thread: the client's work is I/O).
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tocsin-jetstream")
            .enable_all()
            .build()
            .map_err(|e| QueueError::Storage(format!("cannot start the JetStream client: {e}")))?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on the client's runtime and waits for its output. Never call it from a
    /// task of that runtime (the store never does).
    pub fn wait<F, T>(&self, future: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .expect("the JetStream client's runtime ended while a call waited")
    }

    /// The runtime's handle, to spawn work that nobody waits for.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the bridge")
            .handle()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime (a store dropped by
        // an async test or the server): let its threads end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
