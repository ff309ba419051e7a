//! A guest's stderr, turned into host log lines tagged with its pipeline and stage.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::guest_text::GuestText;
use crate::log_budget::LogBudget;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of stderr an instance may log over its lifetime; the rest is dropped (a flood of
/// output must not fill the host's log).
pub(crate) const STDERR_BUDGET: usize = 256 * 1024;

/// Writes lines to `tracing` at warn level.
#[derive(Clone)]
pub(crate) struct LogStream {
    pipeline: Arc<str>,
    stage: Arc<str>,
    budget: Arc<AtomicUsize>,
    /// The stage's lines per second.
    lines: LogBudget,
    text: GuestText,
}

impl LogStream {
    pub(crate) fn new(pipeline: &str, stage: &str, lines: LogBudget, text: GuestText) -> Self {
        LogStream {
            pipeline: pipeline.into(),
            stage: stage.into(),
            budget: Arc::new(AtomicUsize::new(STDERR_BUDGET)),
            lines,
            text,
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            stream: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    stream: LogStream,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let left = self.stream.budget.load(Ordering::Relaxed);
        if left == 0 {
            self.stream.lines.count_dropped();
            return;
        }
        if !self.stream.lines.admit() {
            return;
        }
        let take = line.len().min(left);
        self.stream.budget.fetch_sub(take, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&line[..take]);
        let text = self.stream.text.clean(text.trim_end());
        tracing::warn!(
            pipeline = %self.stream.pipeline,
            stage = %self.stream.stage,
            "plugin stderr: {text}"
        );
        if take < line.len() || self.stream.budget.load(Ordering::Relaxed) == 0 {
            tracing::warn!(
                pipeline = %self.stream.pipeline,
                stage = %self.stream.stage,
                "plugin stderr budget of {STDERR_BUDGET} bytes used up; further output dropped"
            );
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            self.emit(&line);
        }
        if self.buf.len() > 4096 {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}
