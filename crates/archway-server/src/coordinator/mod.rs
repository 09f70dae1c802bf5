//! The coordinator's state changes: pipelines in, attempts out to runners, reports back,
//! leases, cancels, retries. Every change is one database transaction; the scheduling
//! decisions come from [`crate::schedule`].
//!
//! * `access`: tokens, authentication, runners and their polls' bookkeeping;
//! * `pipelines`: submission (and auto-cancel) and the user's actions (cancel, retry, play);
//! * `attempts`: dispatch claims, log appends, attempt ends, lost leases;
//! * `views`: what the API shows (pipelines, jobs, runners, logs, gauges);
//! * `archived_logs`: finished attempts' logs leaving the database for the archive.
//!
//! Fencing: an attempt accepts reports (log, finish) only while its row says `running`. A
//! lost lease flips it to `lost` in a conditional update, after which nothing from it is
//! accepted, whatever its runner does later.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Any, Row, Transaction};

use archway_api::{
    ArtifactRef, ArtifactsView, AttemptOutcome, AttemptView, FailureReason, FinishAttempt,
    JobDefinition, JobPayload, JobStatus, JobVariable, JobView, LogAck, PipelineStatus,
    PipelineView, PlatformOffer, RegisterRunner, RegisteredRunner, RunnerRef, RunnerView,
    SubmitPipeline, VarDef, When,
};

use crate::db::{Db, DbError, now_ms};
use crate::error::CoordError;
use crate::events::Events;
use crate::metrics::{Metrics, RequeueReason};
use crate::schedule::{self, JobState, RunnerOffer};
use crate::tokens::{self, TokenKind};

/// Tunables.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// An attempt whose runner has not renewed its lease for this long is lost.
    pub lease_ttl: Duration,
    /// Requeues after lost leases (separate from the user's `retry:`).
    pub system_retries: u32,
    /// Log bytes kept per attempt.
    pub max_log_bytes: u64,
    /// Largest artifact archive a job may keep.
    pub max_artifact_bytes: u64,
    /// Job timeout when the job names none.
    pub default_timeout: Duration,
    /// The server's URL as jobs reach it (`CI_SERVER_URL`).
    pub server_url: String,
    /// The built-in registry's host (`CI_REGISTRY`).
    pub registry: String,
    /// Most jobs per pipeline.
    pub max_jobs: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            lease_ttl: Duration::from_secs(15),
            system_retries: 2,
            max_log_bytes: 4 * 1024 * 1024,
            max_artifact_bytes: 1024 * 1024 * 1024,
            default_timeout: Duration::from_secs(3600),
            server_url: "http://127.0.0.1:8700".into(),
            registry: "127.0.0.1:8700".into(),
            max_jobs: 5000,
        }
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin { token_id: i64 },
    Registration { token_id: i64 },
    Runner { runner_id: i64 },
    Job(JobIdentity),
}

/// What a job token proves: one running attempt of one job of one project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobIdentity {
    pub attempt_id: i64,
    pub job_id: i64,
    pub pipeline_id: i64,
    pub project: String,
}

/// A job claimed for a waiting runner.
#[derive(Clone, Debug)]
pub struct Claim {
    pub job_id: i64,
    pub runner_id: i64,
    pub platform: String,
    pub emulated: bool,
}

/// The coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub db: Db,
    pub config: CoordinatorConfig,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    /// When each runner's leases were last renewed by this server (renewals are throttled).
    renewed: Mutex<HashMap<i64, Instant>>,
    /// Token hash → who holds it. Job-token identities never change (whether the attempt
    /// still runs is checked where it matters, in the same transaction as the change);
    /// admin and runner tokens are re-read after a few seconds, so revocation takes effect.
    principals: cache::TtlCache<String, Principal>,
    runners_fixed: cache::TtlCache<i64, RunnerFixed>,
    pipelines_fixed: cache::TtlCache<i64, PipelineFixed>,
    /// Pipelines this server has already marked running.
    marked_running: cache::TtlCache<i64, ()>,
    /// The source snapshots and artifact archives, for planning dynamic child pipelines.
    archives: std::sync::OnceLock<(crate::sources::SourceStore, crate::sources::SourceStore)>,
}

/// What a runner registered with (it does not change).
#[derive(Clone, Debug)]
pub(super) struct RunnerFixed {
    pub(super) tags: Vec<String>,
    pub(super) platforms: Vec<PlatformOffer>,
    pub(super) run_untagged: bool,
}

/// The fields of a pipeline that never change after submission.
#[derive(Clone, Debug)]
pub(super) struct PipelineFixed {
    pub(super) project: String,
    pub(super) git_ref: String,
    pub(super) is_tag: bool,
    pub(super) sha: String,
    pub(super) commit_message: String,
    pub(super) source: Option<String>,
    pub(super) masked: Vec<String>,
    pub(super) secrets: BTreeMap<String, String>,
    /// Names of `file` variables.
    pub(super) file_vars: Vec<String>,
    /// Some job of the pipeline keeps artifacts (or dotenv reports): only then do claims
    /// look for its jobs' dependencies.
    pub(super) has_artifacts: bool,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, CoordError> {
    serde_json::from_str(s).map_err(|e| CoordError::Db(DbError::Corrupt(format!("{what}: {e}"))))
}

fn status_of(s: &str) -> Result<JobStatus, CoordError> {
    s.parse()
        .map_err(|e: String| CoordError::Db(DbError::Corrupt(e)))
}

const ACTIVE_JOB: &str = "('pending','running','canceling','scheduled','created','manual')";

impl Coordinator {
    /// Where source snapshots and artifact archives are (dynamic child pipelines are planned
    /// from them); set once by the server.
    pub fn set_archives(
        &self,
        sources: crate::sources::SourceStore,
        artifacts: crate::sources::SourceStore,
    ) {
        let _ = self.archives.set((sources, artifacts));
    }

    pub fn new(
        db: Db,
        config: CoordinatorConfig,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Coordinator {
            db,
            config,
            events,
            metrics,
            renewed: Mutex::new(HashMap::new()),
            principals: cache::TtlCache::new(Duration::from_secs(5), 10_000),
            runners_fixed: cache::TtlCache::new(Duration::from_secs(300), 10_000),
            pipelines_fixed: cache::TtlCache::new(Duration::from_secs(600), 2_000),
            marked_running: cache::TtlCache::new(Duration::from_secs(600), 2_000),
            archives: std::sync::OnceLock::new(),
        }
    }

    /// A runner's registration, cached.
    pub(super) async fn runner_fixed(&self, runner_id: i64) -> Result<RunnerFixed, CoordError> {
        if let Some(r) = self.runners_fixed.get(&runner_id) {
            return Ok(r);
        }
        let row = sqlx::query("SELECT tags, platforms, run_untagged FROM runners WHERE id = $1")
            .bind(runner_id)
            .fetch_one(&self.db.read)
            .await?;
        let r = RunnerFixed {
            tags: parse_json(&row.try_get::<String, _>("tags")?, "runner tags")?,
            platforms: parse_json(&row.try_get::<String, _>("platforms")?, "runner platforms")?,
            run_untagged: row.try_get::<i64, _>("run_untagged")? != 0,
        };
        self.runners_fixed.insert(runner_id, r.clone());
        Ok(r)
    }

    /// A pipeline's fixed fields, cached.
    pub(super) async fn pipeline_fixed(
        &self,
        pipeline_id: i64,
    ) -> Result<PipelineFixed, CoordError> {
        if let Some(p) = self.pipelines_fixed.get(&pipeline_id) {
            return Ok(p);
        }
        let row = sqlx::query(
            "SELECT project, git_ref, is_tag, sha, commit_message, source, masked, secrets, \
             file_vars FROM pipelines WHERE id = $1",
        )
        .bind(pipeline_id)
        .fetch_one(&self.db.read)
        .await?;
        let p = PipelineFixed {
            project: row.try_get("project")?,
            git_ref: row.try_get("git_ref")?,
            is_tag: row.try_get::<i64, _>("is_tag")? != 0,
            sha: row.try_get("sha")?,
            commit_message: row.try_get("commit_message")?,
            source: row.try_get("source")?,
            masked: parse_json(&row.try_get::<String, _>("masked")?, "masked")?,
            secrets: parse_json(&row.try_get::<String, _>("secrets")?, "secrets")?,
            file_vars: match row.try_get::<Option<String>, _>("file_vars")? {
                Some(f) => parse_json(&f, "file variables")?,
                None => Vec::new(),
            },
            // Job specs never change after submission.
            has_artifacts: sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE pipeline_id = $1 AND spec LIKE '%\"artifacts\":%'",
            )
            .bind(pipeline_id)
            .fetch_one(&self.db.read)
            .await?
                > 0,
        };
        self.pipelines_fixed.insert(pipeline_id, p.clone());
        Ok(p)
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>, CoordError> {
        Ok(self.db.write.begin().await?)
    }

    /// Wakes whoever a committed change concerns.
    pub(super) async fn after_commit(&self, jobs_ready: bool, canceled_runners: &[i64]) {
        if jobs_ready {
            self.events.jobs_ready(&self.db).await;
        }
        for r in canceled_runners {
            self.events.cancel_for_runner(&self.db, *r).await;
        }
        self.events.state_changed();
    }

    /// Decides the created jobs of a pipeline and recomputes its status; true if a job
    /// became pending.
    /// Takes the pipeline's row lock (PostgreSQL): every transaction that changes jobs of a
    /// pipeline takes it before touching them, so they queue up instead of deadlocking.
    pub(super) async fn lock_pipeline(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<(), CoordError> {
        if self.db.dialect == crate::db::Dialect::Postgres {
            // A child pipeline's ancestors first: locks are always taken from the top-level
            // pipeline down, so a child's job ending (child, then parent to mirror its status)
            // cannot deadlock with the parent's cancel (parent, then child).
            let parent: Option<i64> = sqlx::query_scalar(
                "SELECT j.pipeline_id FROM pipelines p JOIN jobs j ON j.id = p.parent_job_id \
                 WHERE p.id = $1",
            )
            .bind(pipeline_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(parent) = parent {
                Box::pin(self.lock_pipeline(tx, parent)).await?;
            }
            sqlx::query("SELECT id FROM pipelines WHERE id = $1 FOR UPDATE")
                .bind(pipeline_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Decides the created jobs of a pipeline, starts its trigger jobs that became pending
    /// (creating their child pipelines), recomputes its status (and, for a child pipeline
    /// that finished, its `depend` trigger job's); true if a job became pending.
    pub(super) async fn advance_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<bool, CoordError> {
        let mut ready = false;
        loop {
            let (r, triggered) = self.advance_once_tx(tx, pipeline_id).await?;
            ready |= r;
            if !triggered {
                return Ok(ready);
            }
        }
    }

    /// One round of [`Self::advance_tx`]; `.1` is true if trigger jobs were started (their
    /// new states may let more jobs run: another round decides).
    async fn advance_once_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<(bool, bool), CoordError> {
        // Two attempts of one pipeline ending at once must not both decide on a snapshot
        // that lacks the other's result (write skew): the pipeline row serialises them. The
        // later one reads after the earlier one committed, so it sees both. (SQLite has one
        // writer at a time already.)
        self.lock_pipeline(tx, pipeline_id).await?;
        // A summary first (one row per kind of job): with no created job left, nothing can
        // become ready and the summary decides the pipeline's status; only otherwise are all
        // jobs read (a wide stage finishing job by job stays cheap).
        let summary = summary_states(tx, pipeline_id).await?;
        let states = if summary.iter().any(|s| s.status == JobStatus::Created) {
            load_states(tx, pipeline_id).await?
        } else {
            summary
        };
        let changes = schedule::advance(&states);
        let now = now_ms();
        let mut ready = false;
        let mut states = states;
        for (id, status) in &changes {
            let run_after = if *status == JobStatus::Scheduled {
                let spec: String = sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await?;
                let def: JobDefinition = parse_json(&spec, "job spec")?;
                Some(now + def.start_in_secs.unwrap_or(0) as i64 * 1000)
            } else {
                None
            };
            let finished = (*status == JobStatus::Skipped).then_some(now);
            let queued = (*status == JobStatus::Pending).then_some(now);
            sqlx::query(
                "UPDATE jobs SET status = $1, run_after_ms = $2, finished_ms = $3, queued_ms = $4 \
                 WHERE id = $5 AND status = 'created'",
            )
            .bind(status.as_str())
            .bind(run_after)
            .bind(finished)
            .bind(queued)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            ready |= *status == JobStatus::Pending;
            if let Some(s) = states.iter_mut().find(|s| s.id == *id) {
                s.status = *status;
            }
        }
        // Trigger jobs never go to a runner: starting one creates its child pipeline.
        let triggers: Vec<(i64, String)> = sqlx::query(
            "SELECT id, spec FROM jobs WHERE pipeline_id = $1 AND status = 'pending' AND is_trigger = 1",
        )
        .bind(pipeline_id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("spec")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        if !triggers.is_empty() {
            for (job_id, spec) in triggers {
                ready |= self
                    .start_trigger_tx(tx, pipeline_id, job_id, &spec, now)
                    .await?;
            }
            return Ok((ready, true));
        }
        let row = sqlx::query(
            "SELECT status, cancel_requested, parent_job_id FROM pipelines WHERE id = $1",
        )
        .bind(pipeline_id)
        .fetch_one(&mut **tx)
        .await?;
        let parent_job: Option<i64> = row.try_get("parent_job_id")?;
        let old: String = row.try_get("status")?;
        let cancel_requested = row.try_get::<i64, _>("cancel_requested")? != 0;
        let new = schedule::pipeline_status(&states, cancel_requested);
        if old != new.as_str() {
            sqlx::query("UPDATE pipelines SET status = $1, finished_ms = $2 WHERE id = $3")
                .bind(new.as_str())
                .bind(new.is_final().then_some(now))
                .bind(pipeline_id)
                .execute(&mut **tx)
                .await?;
            tracing::info!(pipeline = pipeline_id, status = %new, "pipeline status");
            if let Some(job) = parent_job
                && new.is_final()
            {
                self.finish_trigger_tx(tx, job, pipeline_id, new, now)
                    .await?;
            }
        }
        Ok((ready, false))
    }

    /// Starts a pending trigger job: creates its child pipeline (same project, commit, ref
    /// and source; the variables passed down expanded with the trigger job's ids) and
    /// decides the child's first jobs. A `depend` trigger job then runs until the child
    /// finishes ([`Self::finish_trigger_tx`]); any other succeeds now. A child with no job
    /// to run fails the trigger job, as in GitLab. True if a child job became pending.
    async fn start_trigger_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
        job_id: i64,
        spec: &str,
        now: i64,
    ) -> Result<bool, CoordError> {
        let mut def: JobDefinition = parse_json(spec, "job spec")?;
        let Some(trigger) = def.trigger.take() else {
            return Err(CoordError::Db(DbError::Corrupt(format!(
                "job {job_id} is marked as a trigger job but has no trigger"
            ))));
        };
        sqlx::query("UPDATE jobs SET started_ms = $1, message = NULL WHERE id = $2")
            .bind(now)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        let mut trigger = trigger;
        if let Some(dynamic) = trigger.dynamic.take() {
            match self
                .plan_dynamic_tx(tx, pipeline_id, job_id, &def, &trigger, &dynamic)
                .await?
            {
                Ok((stages, jobs)) => {
                    trigger.stages = stages;
                    trigger.jobs = jobs;
                }
                Err(message) => {
                    tracing::info!(pipeline = pipeline_id, job = job_id, %message, "dynamic child pipeline refused");
                    sqlx::query("UPDATE jobs SET message = $1 WHERE id = $2")
                        .bind(&message)
                        .bind(job_id)
                        .execute(&mut **tx)
                        .await?;
                    trigger.jobs.clear();
                }
            }
        }
        if trigger.jobs.is_empty() {
            set_job_final(
                tx,
                job_id,
                JobStatus::Failed,
                Some(FailureReason::DownstreamPipelineCreationFailed),
                None,
                def.allow_failure,
                now,
            )
            .await?;
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT project, git_ref, is_tag, sha, commit_message, source, masked, secrets, \
             file_vars FROM pipelines WHERE id = $1",
        )
        .bind(pipeline_id)
        .fetch_one(&mut **tx)
        .await?;
        let header = pipelines::PipelineHeader {
            project: row.try_get("project")?,
            git_ref: row.try_get("git_ref")?,
            is_tag: row.try_get::<i64, _>("is_tag")? != 0,
            sha: row.try_get("sha")?,
            commit_message: row.try_get("commit_message")?,
            source: row.try_get("source")?,
            masked: row.try_get("masked")?,
            secrets: row.try_get("secrets")?,
            file_vars: row
                .try_get::<Option<String>, _>("file_vars")?
                .unwrap_or_else(|| "[]".into()),
        };
        // `PARENT_PIPELINE_ID: $CI_PIPELINE_ID` means the parent's id: the trigger job's
        // predefined variables are known only now. A child job whose variable still holds
        // the passed-down value as planned gets the expanded one.
        let known = |name: &str| trigger_job_variable(name, pipeline_id, job_id, &def);
        let expanded: HashMap<&str, (&str, String)> = trigger
            .variables
            .iter()
            .filter(|v| v.value.contains('$'))
            .map(|v| {
                (
                    v.name.as_str(),
                    (
                        v.value.as_str(),
                        archway_pipeline::vars::expand_known(&v.value, &known),
                    ),
                )
            })
            .collect();
        let mut variables = trigger.variables.clone();
        let mut jobs = trigger.jobs.clone();
        for v in variables
            .iter_mut()
            .chain(jobs.iter_mut().flat_map(|j| j.variables.iter_mut()))
        {
            if let Some((raw, value)) = expanded.get(v.name.as_str())
                && v.value == *raw
            {
                v.value = value.clone();
            }
        }
        let child = pipelines::insert_pipeline_tx(
            tx,
            &header,
            &trigger.file,
            &trigger.stages,
            &variables,
            &jobs,
            Some(job_id),
            now,
        )
        .await?;
        tracing::info!(
            pipeline = pipeline_id,
            job = job_id,
            child,
            "trigger job created a child pipeline"
        );
        if trigger.depend {
            sqlx::query("UPDATE jobs SET status = 'running' WHERE id = $1")
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
        } else {
            set_job_final(tx, job_id, JobStatus::Success, None, None, false, now).await?;
        }
        Box::pin(self.advance_tx(tx, child)).await
    }

    /// Plans a dynamic child pipeline now (see [`dynamic`]): the trigger job's variables
    /// expanded with its ids, the generating job's artifacts and the source snapshot read on
    /// a blocking thread. `Err` is why the child cannot run (the trigger job fails with it).
    async fn plan_dynamic_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
        job_id: i64,
        def: &JobDefinition,
        trigger: &archway_api::TriggerDefinition,
        dynamic: &archway_api::DynamicChild,
    ) -> Result<Result<(Vec<String>, Vec<JobDefinition>), String>, CoordError> {
        let Some((sources, artifacts)) = self.archives.get() else {
            return Ok(Err(
                "this coordinator has no artifact store to plan dynamic child pipelines from"
                    .into(),
            ));
        };
        let known = |name: &str| trigger_job_variable(name, pipeline_id, job_id, def);
        let variables: BTreeMap<String, String> = trigger
            .variables
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    archway_pipeline::vars::expand_known(&v.value, &known),
                )
            })
            .collect();
        let source: Option<String> =
            sqlx::query_scalar("SELECT source FROM pipelines WHERE id = $1")
                .bind(pipeline_id)
                .fetch_one(&mut **tx)
                .await?;
        let rows = sqlx::query(
            "SELECT name, artifact_digest FROM jobs WHERE pipeline_id = $1 \
             AND status = 'success' AND artifact_digest IS NOT NULL ORDER BY stage_idx, id",
        )
        .bind(pipeline_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut archived = Vec::new();
        for r in rows {
            let digest: String = r.try_get("artifact_digest")?;
            if let Ok(a) = artifacts.stored(&digest) {
                archived.push((r.try_get::<String, _>("name")?, a));
            }
        }
        let files = dynamic::ArchiveFiles {
            source: source.and_then(|d| sources.stored(&d).ok()),
            artifacts: archived,
        };
        let dynamic = dynamic.clone();
        tokio::task::spawn_blocking(move || dynamic::plan(&dynamic, variables, &files))
            .await
            .map_err(|e| CoordError::Io {
                context: "planning a dynamic child pipeline".into(),
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// A child pipeline finished: its `depend` trigger job takes its status (if the child
    /// is the job's newest and the job still waits for it), and the parent is decided again.
    async fn finish_trigger_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: i64,
        child: i64,
        child_status: PipelineStatus,
        now: i64,
    ) -> Result<(), CoordError> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM pipelines WHERE parent_job_id = $1")
                .bind(job_id)
                .fetch_one(&mut **tx)
                .await?;
        if newest != Some(child) {
            return Ok(());
        }
        let row = sqlx::query("SELECT pipeline_id, status, spec FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
        let parent: i64 = row.try_get("pipeline_id")?;
        let status = status_of(&row.try_get::<String, _>("status")?)?;
        let def: JobDefinition = parse_json(&row.try_get::<String, _>("spec")?, "job spec")?;
        if !matches!(status, JobStatus::Running | JobStatus::Canceling)
            || !def.trigger.is_some_and(|t| t.depend)
        {
            return Ok(());
        }
        let (status, allowed) = match child_status {
            PipelineStatus::Success => (JobStatus::Success, false),
            PipelineStatus::Failed => (JobStatus::Failed, def.allow_failure),
            PipelineStatus::Canceled => (JobStatus::Canceled, false),
            PipelineStatus::Skipped => (JobStatus::Skipped, false),
            _ => return Ok(()),
        };
        set_job_final(tx, job_id, status, None, None, allowed, now).await?;
        Box::pin(self.advance_tx(tx, parent)).await?;
        Ok(())
    }
}

pub(super) async fn load_states(
    tx: &mut Transaction<'static, Any>,
    pipeline_id: i64,
) -> Result<Vec<JobState>, CoordError> {
    let rows = sqlx::query(
        "SELECT id, stage_idx, status, needs, when_run, allow_failure, failure_allowed \
         FROM jobs WHERE pipeline_id = $1 ORDER BY id",
    )
    .bind(pipeline_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let needs: Option<String> = r.try_get("needs")?;
        out.push(JobState {
            id: r.try_get("id")?,
            stage_idx: r.try_get("stage_idx")?,
            status: status_of(&r.try_get::<String, _>("status")?)?,
            needs: needs.map(|n| parse_json(&n, "job needs")).transpose()?,
            when: When::parse(&r.try_get::<String, _>("when_run")?).unwrap_or(When::OnSuccess),
            allow_failure: r.try_get::<i64, _>("allow_failure")? != 0,
            failure_allowed: r.try_get::<i64, _>("failure_allowed")? != 0,
        });
    }
    Ok(out)
}

/// One representative job per (status, allow_failure, failure_allowed) of a pipeline: enough
/// for [`schedule::pipeline_status`], which only asks whether any or all jobs are of a kind.
async fn summary_states(
    tx: &mut Transaction<'static, Any>,
    pipeline_id: i64,
) -> Result<Vec<JobState>, CoordError> {
    let rows = sqlx::query(
        "SELECT status, allow_failure, failure_allowed FROM jobs WHERE pipeline_id = $1 \
         GROUP BY status, allow_failure, failure_allowed",
    )
    .bind(pipeline_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        out.push(JobState {
            id: -(i as i64) - 1,
            stage_idx: 0,
            status: status_of(&r.try_get::<String, _>("status")?)?,
            needs: None,
            when: When::OnSuccess,
            allow_failure: r.try_get::<i64, _>("allow_failure")? != 0,
            failure_allowed: r.try_get::<i64, _>("failure_allowed")? != 0,
        });
    }
    Ok(out)
}

pub(super) async fn set_job_final(
    tx: &mut Transaction<'static, Any>,
    job_id: i64,
    status: JobStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    failure_allowed: bool,
    now: i64,
) -> Result<(), CoordError> {
    sqlx::query(
        "UPDATE jobs SET status = $1, failure_reason = $2, exit_code = $3, failure_allowed = $4, \
         finished_ms = $5 WHERE id = $6",
    )
    .bind(status.as_str())
    .bind(reason.map(|r| r.as_str()))
    .bind(exit_code.map(i64::from))
    .bind(i64::from(failure_allowed))
    .bind(now)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn job_status_tx(
    tx: &mut Transaction<'static, Any>,
    job_id: i64,
) -> Result<(i64, JobStatus), CoordError> {
    let row = sqlx::query("SELECT pipeline_id, status FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| CoordError::NotFound(format!("no job {job_id}")))?;
    Ok((
        row.try_get("pipeline_id")?,
        status_of(&row.try_get::<String, _>("status")?)?,
    ))
}

pub(super) async fn pipeline_status_tx(
    tx: &mut Transaction<'static, Any>,
    id: i64,
) -> Result<PipelineStatus, CoordError> {
    let s: String = sqlx::query_scalar("SELECT status FROM pipelines WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| CoordError::NotFound(format!("no pipeline {id}")))?;
    s.parse()
        .map_err(|e: String| CoordError::Db(DbError::Corrupt(e)))
}

mod access;
mod archived_logs;
mod attempts;
mod cache;
mod dynamic;

/// The predefined variables of a trigger job that the values it passes down may use
/// (`PARENT_PIPELINE_ID: $CI_PIPELINE_ID`), known only when it starts.
fn trigger_job_variable(
    name: &str,
    pipeline_id: i64,
    job_id: i64,
    def: &JobDefinition,
) -> Option<String> {
    match name {
        "CI_PIPELINE_ID" | "CI_PIPELINE_IID" => Some(pipeline_id.to_string()),
        "CI_JOB_ID" => Some(job_id.to_string()),
        "CI_JOB_NAME" => Some(def.name.clone()),
        "CI_JOB_STAGE" => Some(def.stage.clone()),
        _ => None,
    }
}
mod pipelines;
mod views;

pub use access::TokenInfo;
pub use archived_logs::FinishedLog;
pub use attempts::Candidate;
pub use views::{Gauges, LogPart};
