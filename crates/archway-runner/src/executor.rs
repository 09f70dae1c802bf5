//! What runs a job: the [`Executor`] trait, its I/O ([`JobIo`]: log output, cancellation,
//! a private work directory), and two executors without side effects: [`NoopExecutor`]
//! (benchmarks) and [`RecordingExecutor`] (tests: records every payload and plays a script of
//! outcomes). The real one is [`crate::sandbox::SandboxExecutor`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use archway_api::{FailureReason, JobPayload};

/// How a job ended, as the executor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecResult {
    Success,
    Failed {
        exit_code: Option<i32>,
        reason: FailureReason,
    },
    /// Stopped because [`JobIo::cancel`] fired.
    Canceled,
}

/// Output of a running job, collected for the log uploader. Writers never block: bytes past
/// `limit` are counted and dropped (the server would drop them anyway).
#[derive(Debug)]
pub struct LogSink {
    buf: Mutex<(Vec<u8>, bool)>,
    notify: Notify,
    written: AtomicU64,
    limit: u64,
}

impl LogSink {
    pub fn new(limit: u64) -> Arc<LogSink> {
        Arc::new(LogSink {
            buf: Mutex::new((Vec::new(), false)),
            notify: Notify::new(),
            written: AtomicU64::new(0),
            limit,
        })
    }

    /// Appends output (keeps at most the limit plus a little, so the server can mark the cut).
    pub fn write(&self, data: &[u8]) {
        let before = self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        let room = (self.limit + 4096).saturating_sub(before) as usize;
        if room == 0 {
            return;
        }
        let take = &data[..data.len().min(room)];
        if let Ok(mut b) = self.buf.lock() {
            b.0.extend_from_slice(take);
        }
        self.notify.notify_one();
    }

    /// A line of Archway's own (prefixed, so it stands out from the job's output).
    pub fn note(&self, line: &str) {
        self.write(format!("\x1b[36;1m[archway]\x1b[0;m {line}\n").as_bytes());
    }

    /// No more output will come.
    pub fn close(&self) {
        if let Ok(mut b) = self.buf.lock() {
            b.1 = true;
        }
        self.notify.notify_one();
    }

    /// Takes what has been written (and whether the sink is closed), waiting for something.
    pub async fn take(&self) -> (Vec<u8>, bool) {
        loop {
            let notified = self.notify.notified();
            {
                let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
                if !b.0.is_empty() || b.1 {
                    return (std::mem::take(&mut b.0), b.1);
                }
            }
            notified.await;
        }
    }
}

/// What an executor gets besides the payload.
#[derive(Clone, Debug)]
pub struct JobIo {
    pub log: Arc<LogSink>,
    /// Fires when the job must stop (canceled, lease lost, drain deadline).
    pub cancel: CancellationToken,
    /// A directory private to this attempt (removed after it).
    pub work_dir: PathBuf,
    /// The runner's API client with this attempt's job token (to fetch the source).
    pub api: archway_api::ApiClient,
    /// Variables of the job's `artifacts:reports:dotenv` files, sent with its end report.
    pub dotenv: Arc<Mutex<Vec<archway_api::VarDef>>>,
    /// The job's JUnit reports, summarised, sent with its end report.
    pub tests: Arc<Mutex<Option<archway_api::TestSummary>>>,
}

/// Runs jobs.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`sandbox`, `noop`, …).
    fn name(&self) -> &'static str;
    async fn run(&self, job: &JobPayload, io: JobIo) -> ExecResult;
}

/// Succeeds at once (for measuring the coordinator alone).
#[derive(Debug, Default)]
pub struct NoopExecutor;

#[async_trait]
impl Executor for NoopExecutor {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, _job: &JobPayload, _io: JobIo) -> ExecResult {
        ExecResult::Success
    }
}

/// What the recording executor does for a job (by job name).
#[derive(Clone, Debug)]
pub struct Act {
    /// Output written before finishing, in chunks as given.
    pub output: Vec<Vec<u8>>,
    /// How long the job "runs" (cancellation ends it early).
    pub duration: Duration,
    pub result: ExecResult,
}

impl Default for Act {
    fn default() -> Self {
        Act {
            output: Vec::new(),
            duration: Duration::ZERO,
            result: ExecResult::Success,
        }
    }
}

/// A fake that records each payload it runs and acts as scripted.
#[derive(Debug, Default)]
pub struct RecordingExecutor {
    pub runs: Mutex<Vec<JobPayload>>,
    pub acts: Mutex<HashMap<String, Act>>,
}

impl RecordingExecutor {
    pub fn new() -> Arc<RecordingExecutor> {
        Arc::new(RecordingExecutor::default())
    }

    /// Scripts what the job named `name` does.
    pub fn act(&self, name: &str, act: Act) {
        self.acts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), act);
    }

    /// Names of the jobs run so far, in order.
    pub fn names(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|j| j.name.clone())
            .collect()
    }
}

#[async_trait]
impl Executor for RecordingExecutor {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn run(&self, job: &JobPayload, io: JobIo) -> ExecResult {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job.clone());
        let act = self
            .acts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.name)
            .cloned()
            .unwrap_or_default();
        for chunk in &act.output {
            io.log.write(chunk);
        }
        tokio::select! {
            () = tokio::time::sleep(act.duration) => act.result,
            () = io.cancel.cancelled() => ExecResult::Canceled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_hands_over_output_and_bounds_it() {
        let sink = LogSink::new(10);
        sink.write(b"hello ");
        sink.write(b"world, and a lot more than ten bytes");
        let (got, closed) = sink.take().await;
        assert!(!closed);
        assert!(got.starts_with(b"hello world"));
        sink.write(&vec![b'x'; 10_000]);
        let (got, _) = sink.take().await;
        assert!(got.len() <= 4096 + 10, "{}", got.len());
        sink.close();
        assert_eq!(sink.take().await, (Vec::new(), true));
    }
}
