//! The runner's main loop: one long poll to the coordinator at all times (it renews the
//! leases of the attempts this runner runs, takes new jobs when there are free slots, and
//! learns which attempts to stop), a task per job, a log uploader per job, and a graceful
//! drain.
//!
//! **Invariant:** an attempt stays in the poll's `running` list until the coordinator has
//! acknowledged its finish report (or fenced it off); otherwise the coordinator would take the
//! attempt for lost and run the job again.
//!
//! **Invariant:** a report the coordinator refuses as fenced (410) is never retried, and
//! stops the job: the attempt belongs to nobody any more.

use std::collections::HashMap;

use base64::Engine as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use archway_api::client::backoff;
use archway_api::{
    ApiClient, ApiError, AttemptOutcome, FailureReason, FinishAttempt, JobPayload, LogTail,
    PlatformOffer, PollRequest,
};

use crate::executor::{ExecResult, Executor, JobIo, LogSink};
use crate::mask::Masker;

/// How a runner runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub server: String,
    pub token: String,
    pub name: String,
    pub platforms: Vec<PlatformOffer>,
    pub concurrency: u32,
    /// Per-attempt directories go here.
    pub work_dir: PathBuf,
    /// How long running jobs may go on after a drain starts before they are handed back.
    pub drain_deadline: Duration,
    pub version: String,
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused this runner's token ({0}); register the runner again")]
    Revoked(String),
    #[error("preparing the work directory {path}: {source}")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What happened, for callers and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    Connected,
    Disconnected(String),
    JobStarted {
        attempt: i64,
        job: i64,
        name: String,
    },
    JobFinished {
        attempt: i64,
        outcome: AttemptOutcome,
    },
    /// The coordinator no longer takes reports from this attempt.
    Fenced {
        attempt: i64,
    },
    Draining {
        running: usize,
    },
    Stopped,
}

/// A callback for [`AgentEvent`]s (the CLI prints them).
pub type EventSink = Arc<dyn Fn(AgentEvent) + Send + Sync>;

struct Running {
    cancel: CancellationToken,
    /// Set when the drain deadline passes: the job is given back rather than failed.
    handed_back: Arc<AtomicBool>,
}

/// Tells a running agent to drain (stop taking jobs, let running ones finish within the
/// deadline, hand the rest back, then stop).
#[derive(Clone, Debug)]
pub struct DrainHandle {
    tx: tokio::sync::watch::Sender<Option<Duration>>,
}

impl DrainHandle {
    pub fn drain(&self, deadline: Duration) {
        self.tx.send_modify(|d| {
            *d = Some(match d {
                Some(old) => (*old).min(deadline),
                None => deadline,
            })
        });
    }
}

/// A runner connected to one coordinator.
pub struct Agent {
    opts: AgentOptions,
    api: ApiClient,
    executor: Arc<dyn Executor>,
    running: Arc<Mutex<HashMap<i64, Running>>>,
    events: EventSink,
    drain_rx: tokio::sync::watch::Receiver<Option<Duration>>,
    drain: DrainHandle,
    /// A job ended: a poll that said "no free slots" is out of date.
    job_done: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.opts.name)
            .field("server", &self.opts.server)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub fn new(
        opts: AgentOptions,
        executor: Arc<dyn Executor>,
        events: EventSink,
    ) -> Result<Agent, ApiError> {
        let api = ApiClient::new(&opts.server, Some(opts.token.clone()))?;
        let (tx, drain_rx) = tokio::sync::watch::channel(None);
        Ok(Agent {
            opts,
            api,
            executor,
            running: Arc::new(Mutex::new(HashMap::new())),
            events,
            drain_rx,
            drain: DrainHandle { tx },
            job_done: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn drain_handle(&self) -> DrainHandle {
        self.drain.clone()
    }

    fn running_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    fn running_count(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn cancel(&self, attempt: i64) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&attempt)
        {
            r.cancel.cancel();
        }
    }

    /// Serves jobs until drained (or the token is refused).
    pub async fn run(mut self) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.opts.work_dir).map_err(|source| AgentError::WorkDir {
            path: self.opts.work_dir.display().to_string(),
            source,
        })?;
        let mut failures = 0u32;
        let mut connected = false;
        let mut drain_started: Option<(Instant, Duration)> = None;
        loop {
            let requested = *self.drain_rx.borrow_and_update();
            if drain_started.is_none()
                && let Some(d) = requested
            {
                drain_started = Some((Instant::now(), d));
                (self.events)(AgentEvent::Draining {
                    running: self.running_count(),
                });
            }
            if let Some((since, deadline)) = drain_started {
                if self.running_count() == 0 {
                    break;
                }
                if since.elapsed() >= deadline {
                    // Hand the rest back: stop them; their finish reports say handed_back.
                    for r in self
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                    {
                        r.handed_back.store(true, Ordering::SeqCst);
                        r.cancel.cancel();
                    }
                }
            }
            let draining = drain_started.is_some();
            let free = if draining {
                0
            } else {
                self.opts
                    .concurrency
                    .saturating_sub(self.running_count() as u32)
            };
            let req = PollRequest {
                free_slots: free,
                running: self.running_ids(),
                platforms: self.opts.platforms.clone(),
                draining,
                version: self.opts.version.clone(),
            };
            let api = self.api.clone();
            let poll = api.poll(&req);
            let job_done = self.job_done.clone();
            let result = tokio::select! {
                r = poll => Some(r),
                _ = self.drain_rx.changed(), if !draining => None,
                // Only a poll that offered nothing may be abandoned: one that offered slots
                // may be carrying jobs back.
                () = job_done.notified(), if free == 0 && !draining => None,
                () = tokio::time::sleep(Duration::from_millis(250)), if draining => None,
            };
            let Some(result) = result else { continue };
            match result {
                Ok(resp) => {
                    if !connected {
                        connected = true;
                        (self.events)(AgentEvent::Connected);
                    }
                    failures = 0;
                    for id in resp.cancel {
                        self.cancel(id);
                    }
                    for job in resp.jobs {
                        self.start(job);
                    }
                }
                Err(ApiError::Unauthorized(m)) | Err(ApiError::Forbidden(m)) => {
                    // Stop what runs: the server no longer knows us.
                    for r in self
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                    {
                        r.cancel.cancel();
                    }
                    return Err(AgentError::Revoked(m));
                }
                Err(e) => {
                    if connected {
                        connected = false;
                        (self.events)(AgentEvent::Disconnected(e.to_string()));
                    }
                    let wait = backoff(
                        failures,
                        Duration::from_millis(200),
                        Duration::from_secs(10),
                    );
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, ?wait, "poll failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        (self.events)(AgentEvent::Stopped);
        Ok(())
    }

    fn start(&self, job: JobPayload) {
        let cancel = CancellationToken::new();
        let handed_back = Arc::new(AtomicBool::new(false));
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                job.attempt_id,
                Running {
                    cancel: cancel.clone(),
                    handed_back: handed_back.clone(),
                },
            );
        (self.events)(AgentEvent::JobStarted {
            attempt: job.attempt_id,
            job: job.job_id,
            name: job.name.clone(),
        });
        let ctx = JobContext {
            api: self.api.with_token(&job.token),
            executor: self.executor.clone(),
            running: self.running.clone(),
            events: self.events.clone(),
            work_dir: self
                .opts
                .work_dir
                .join(format!("attempt-{}", job.attempt_id)),
            runner_name: self.opts.name.clone(),
            version: self.opts.version.clone(),
            job_done: self.job_done.clone(),
        };
        tokio::spawn(ctx.run(job, cancel, handed_back));
    }
}

struct JobContext {
    api: ApiClient,
    executor: Arc<dyn Executor>,
    running: Arc<Mutex<HashMap<i64, Running>>>,
    events: EventSink,
    work_dir: PathBuf,
    runner_name: String,
    version: String,
    job_done: Arc<tokio::sync::Notify>,
}

impl JobContext {
    async fn run(self, job: JobPayload, cancel: CancellationToken, handed_back: Arc<AtomicBool>) {
        let attempt = job.attempt_id;
        let sink = LogSink::new(job.max_log_bytes);
        let fenced = CancellationToken::new();
        let masker = Masker::new(
            job.variables
                .iter()
                .filter(|v| v.masked)
                .map(|v| v.value.as_str()),
        );
        let uploader = tokio::spawn(upload_log(
            self.api.clone(),
            attempt,
            sink.clone(),
            masker,
            fenced.clone(),
        ));
        sink.note(&format!(
            "Running job {} ({}) attempt {} with archway {} on runner {}, platform {}{}",
            job.job_id,
            job.name,
            job.attempt,
            self.version,
            self.runner_name,
            job.platform,
            if job.emulated {
                " (emulated with qemu-user)"
            } else {
                ""
            }
        ));
        let _ = std::fs::remove_dir_all(&self.work_dir);
        let dotenv = Arc::new(Mutex::new(Vec::new()));
        let tests = Arc::new(Mutex::new(None));
        let result = match std::fs::create_dir_all(&self.work_dir) {
            Err(e) => {
                sink.note(&format!("cannot create the job directory: {e}"));
                ExecResult::Failed {
                    exit_code: None,
                    reason: FailureReason::RunnerSystemFailure,
                }
            }
            Ok(()) => {
                let io = JobIo {
                    log: sink.clone(),
                    cancel: cancel.clone(),
                    work_dir: self.work_dir.clone(),
                    api: self.api.clone(),
                    dotenv: dotenv.clone(),
                    tests: tests.clone(),
                };
                // A fenced attempt (lease lost while we could not reach the server, or the
                // job canceled meanwhile) stops at once.
                let cancel_on_fence = {
                    let cancel = cancel.clone();
                    let fenced = fenced.clone();
                    tokio::spawn(async move {
                        fenced.cancelled().await;
                        cancel.cancel();
                    })
                };
                let r = self.executor.run(&job, io).await;
                cancel_on_fence.abort();
                r
            }
        };
        let handed = handed_back.load(Ordering::SeqCst);
        match (&result, handed) {
            (_, true) => {
                sink.note("the runner is draining: handing this job back to be run elsewhere")
            }
            (ExecResult::Success, _) => sink.note("Job succeeded"),
            (ExecResult::Canceled, _) => sink.note("Job canceled"),
            (ExecResult::Failed { exit_code, reason }, _) => sink.note(&format!(
                "Job failed{} ({reason})",
                exit_code
                    .map(|c| format!(": exit code {c}"))
                    .unwrap_or_default()
            )),
        }
        sink.close();
        // The uploader leaves the log's last bytes (if few) to travel with the end report.
        let (log_acked, tail) = uploader.await.unwrap_or((0, Vec::new()));
        let log_bytes = log_acked + tail.len() as u64;
        let log_tail = (!tail.is_empty()).then(|| LogTail {
            offset: log_acked,
            data: base64::engine::general_purpose::STANDARD.encode(&tail),
        });
        let _ = std::fs::remove_dir_all(&self.work_dir);
        let mut report = match (result, handed) {
            (_, true) => FinishAttempt {
                outcome: AttemptOutcome::HandedBack,
                exit_code: None,
                reason: None,
                log_bytes,
                log_tail: None,
                dotenv: Vec::new(),
                tests: None,
            },
            (ExecResult::Success, _) => FinishAttempt {
                outcome: AttemptOutcome::Success,
                exit_code: Some(0),
                reason: None,
                log_bytes,
                log_tail: None,
                dotenv: Vec::new(),
                tests: None,
            },
            (ExecResult::Canceled, _) => FinishAttempt {
                outcome: AttemptOutcome::Canceled,
                exit_code: None,
                reason: None,
                log_bytes,
                log_tail: None,
                dotenv: Vec::new(),
                tests: None,
            },
            (ExecResult::Failed { exit_code, reason }, _) => FinishAttempt {
                outcome: AttemptOutcome::Failed,
                exit_code,
                reason: Some(reason),
                log_bytes,
                log_tail: None,
                dotenv: Vec::new(),
                tests: None,
            },
        };
        report.log_tail = log_tail;
        if report.outcome != AttemptOutcome::HandedBack {
            report.dotenv = dotenv
                .lock()
                .map(|mut d| std::mem::take(&mut *d))
                .unwrap_or_default();
            report.tests = tests.lock().ok().and_then(|mut t| t.take());
        }
        let outcome = report.outcome;
        if !fenced.is_cancelled() {
            let mut failures = 0;
            loop {
                match self.api.finish(attempt, &report).await {
                    Ok(()) => break,
                    Err(ApiError::Fenced(_)) | Err(ApiError::NotFound(_)) => {
                        fenced.cancel();
                        break;
                    }
                    Err(e) if e.is_transient() && failures < 200 => {
                        failures += 1;
                        tracing::debug!(error = %e, attempt, "finish report failed; retrying");
                        tokio::time::sleep(backoff(
                            failures,
                            Duration::from_millis(200),
                            Duration::from_secs(5),
                        ))
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "giving up reporting the end of an attempt");
                        break;
                    }
                }
            }
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&attempt);
        self.job_done.notify_one();
        if fenced.is_cancelled() {
            (self.events)(AgentEvent::Fenced { attempt });
        } else {
            (self.events)(AgentEvent::JobFinished { attempt, outcome });
        }
    }
}

/// Largest log request.
const LOG_CHUNK: usize = 512 * 1024;
/// At the end of a job, up to this many unsent bytes go with the end report instead.
const TAIL_WITH_FINISH: usize = 64 * 1024;

/// Streams a job's output to the coordinator: masks it, sends it at increasing offsets
/// (resending from what the server acknowledged after any error), stops the job if the
/// attempt is fenced. Returns the offset the server acknowledged and the (masked) bytes left
/// for the end report.
async fn upload_log(
    api: ApiClient,
    attempt: i64,
    sink: Arc<LogSink>,
    mut masker: Masker,
    fenced: CancellationToken,
) -> (u64, Vec<u8>) {
    let mut unacked: Vec<u8> = Vec::new();
    let mut acked: u64 = 0;
    let mut closed = false;
    let mut failures = 0u32;
    loop {
        if !closed {
            // Wait for output only when there is nothing to send.
            let (data, c) = if unacked.is_empty() {
                sink.take().await
            } else {
                tokio::select! {
                    biased;
                    t = sink.take() => t,
                    () = std::future::ready(()) => (Vec::new(), false),
                }
            };
            closed = c;
            unacked.extend(masker.push(&data));
            if closed {
                unacked.extend(masker.finish());
            }
        }
        if closed && unacked.len() <= TAIL_WITH_FINISH {
            return (acked, unacked);
        }
        if unacked.is_empty() {
            continue;
        }
        let n = unacked.len().min(LOG_CHUNK);
        let chunk = Bytes::copy_from_slice(&unacked[..n]);
        match api.append_log(attempt, acked, chunk).await {
            Ok(ack) => {
                failures = 0;
                if ack.received > acked {
                    let done = ((ack.received - acked) as usize).min(unacked.len());
                    unacked.drain(..done);
                    acked += done as u64;
                } else if ack.received < acked {
                    // The server has less than we thought (it restarted from a backup?):
                    // what is gone cannot be resent; continue from our position.
                    tracing::warn!(
                        attempt,
                        server = ack.received,
                        ours = acked,
                        "log offset went back"
                    );
                    acked = ack.received;
                }
            }
            Err(ApiError::Fenced(_)) | Err(ApiError::NotFound(_)) => {
                fenced.cancel();
                // Drain the sink so the job's writers never wait on us.
                loop {
                    let (_, c) = sink.take().await;
                    if c {
                        return (acked, Vec::new());
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, attempt, "log upload failed; retrying");
                tokio::time::sleep(backoff(
                    failures,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ))
                .await;
            }
        }
    }
}
