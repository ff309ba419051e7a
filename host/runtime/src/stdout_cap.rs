//! A granted stdout with bounds: at most [`MAX_BYTES_PER_CALL`] per call and
//! [`MAX_BYTES_PER_SECOND`] on average (bursts of one call's worth), per stage.
//!
//! Without them one message made a plugin write 200 MB to tocsin's stdout in 55 ms — into the
//! journal, or a pipe whose reader falls behind and blocks the host. What is over the bounds is
//! dropped; the stage's log budget counts it and one log line says so.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::log_budget::LogBudget;

/// Bytes one call may write to a granted stdout.
pub const MAX_BYTES_PER_CALL: usize = 1 << 20;
/// Bytes per second a stage may write to a granted stdout, on average.
pub const MAX_BYTES_PER_SECOND: f64 = (1 << 20) as f64;

/// One stage's stdout; clones share its bounds.
#[derive(Clone)]
pub(crate) struct CappedStdout {
    /// Written in the current call; reset by the stage before each call.
    call: Arc<AtomicUsize>,
    /// Token bucket in bytes.
    rate: Arc<Mutex<(f64, Instant)>>,
    log: LogBudget,
    pipeline: Arc<str>,
    stage: Arc<str>,
}

impl CappedStdout {
    pub(crate) fn new(pipeline: &str, stage: &str, log: LogBudget) -> Self {
        CappedStdout {
            call: Arc::new(AtomicUsize::new(0)),
            rate: Arc::new(Mutex::new((MAX_BYTES_PER_SECOND, Instant::now()))),
            log,
            pipeline: pipeline.into(),
            stage: stage.into(),
        }
    }

    /// The same stage's stdout for another instance: its own per-call count, the stage's
    /// per-second bound.
    pub(crate) fn sibling(&self) -> Self {
        CappedStdout {
            call: Arc::new(AtomicUsize::new(0)),
            ..self.clone()
        }
    }

    /// Starts a call's count afresh.
    pub(crate) fn new_call(&self) {
        self.call.store(0, Ordering::Relaxed);
    }

    /// How many of `len` bytes may be written now (the rest is dropped).
    fn allowance(&self, len: usize) -> usize {
        let used = self.call.load(Ordering::Relaxed);
        let by_call = MAX_BYTES_PER_CALL.saturating_sub(used);
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(rate.1).as_secs_f64() * MAX_BYTES_PER_SECOND;
        rate.0 = (rate.0 + earned).min(MAX_BYTES_PER_SECOND);
        rate.1 = now;
        let take = len.min(by_call).min(rate.0.max(0.0) as usize);
        rate.0 -= take as f64;
        self.call.fetch_add(take, Ordering::Relaxed);
        take
    }
}

impl IsTerminal for CappedStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedStdout {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CappedStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let take = self.allowance(data.len());
        if take > 0 {
            let mut out = io::stdout().lock();
            out.write_all(&data[..take])?;
            out.flush()?;
        }
        if take < data.len() {
            self.log.count_dropped();
            if self.log.admit() {
                tracing::warn!(
                    pipeline = %self.pipeline,
                    stage = %self.stage,
                    dropped = data.len() - take,
                    "plugin stdout over its bounds ({MAX_BYTES_PER_CALL} bytes per call, {MAX_BYTES_PER_SECOND} per second); the rest of this write is dropped"
                );
            }
        }
        // The guest is told everything was written: what is dropped is dropped, not retried.
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_at_most_its_share_and_the_next_call_waits_for_the_rate() {
        let out = CappedStdout::new("p", "sink.s", LogBudget::new("p", "sink.s"));
        assert_eq!(out.allowance(200 << 20), MAX_BYTES_PER_CALL);
        assert_eq!(out.allowance(10), 0, "the call's share is used up");
        out.new_call();
        // The per-second bucket was emptied by the first call; a moment later it holds little.
        assert!(out.allowance(MAX_BYTES_PER_CALL) < MAX_BYTES_PER_CALL / 2);
    }
}
