//! The coordinator's state changes: pipelines in, attempts out to runners, reports back,
//! leases, cancels, retries. Every change is one database transaction; the scheduling
//! decisions come from [`crate::schedule`].
//!
//! Fencing: an attempt accepts reports (log, finish) only while its row says `running`. A
//! lost lease flips it to `lost` in a conditional update, after which nothing from it is
//! accepted, whatever its runner does later.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Any, Row, Transaction};

use archway_api::{
    AttemptOutcome, AttemptView, FailureReason, FinishAttempt, JobDefinition, JobPayload,
    JobStatus, JobVariable, JobView, LogAck, PipelineStatus, PipelineView, PlatformOffer,
    RegisterRunner, RegisteredRunner, RunnerRef, RunnerView, SubmitPipeline, When,
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
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>, CoordError> {
        Ok(self.db.write.begin().await?)
    }

    // --- tokens ----------------------------------------------------------------------------

    /// On first start: creates the admin and runner registration tokens and returns them
    /// (they are shown once; only their hashes are kept). `None` when they exist.
    pub async fn bootstrap(&self) -> Result<Option<(String, String)>, CoordError> {
        let mut tx = self.begin().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tokens WHERE kind = 'admin'")
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Ok(None);
        }
        let admin = tokens::generate(TokenKind::Admin);
        let reg = tokens::generate(TokenKind::Registration);
        for (kind, name, t) in [
            ("admin", "initial admin", &admin),
            ("registration", "initial", &reg),
        ] {
            sqlx::query(
                "INSERT INTO tokens (kind, name, hash, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(kind)
            .bind(name)
            .bind(tokens::hash(t))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some((admin, reg)))
    }

    /// A new admin or registration token (returned once).
    pub async fn create_token(
        &self,
        kind: TokenKind,
        name: &str,
    ) -> Result<(i64, String), CoordError> {
        if !matches!(kind, TokenKind::Admin | TokenKind::Registration) {
            return Err(CoordError::BadRequest(
                "only admin and registration tokens can be created".into(),
            ));
        }
        let t = tokens::generate(kind);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tokens (kind, name, hash, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(name)
        .bind(tokens::hash(&t))
        .bind(now_ms())
        .fetch_one(&self.db.write)
        .await?;
        Ok((id, t))
    }

    /// (id, kind, name, created, revoked) of every token.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, CoordError> {
        let rows =
            sqlx::query("SELECT id, kind, name, created_ms, revoked_ms FROM tokens ORDER BY id")
                .fetch_all(&self.db.read)
                .await?;
        let mut out = Vec::new();
        for r in rows {
            out.push(TokenInfo {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                created_ms: r.try_get("created_ms")?,
                revoked_ms: r.try_get("revoked_ms")?,
            });
        }
        Ok(out)
    }

    pub async fn revoke_token(&self, id: i64) -> Result<(), CoordError> {
        let n =
            sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.db.write)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(CoordError::NotFound(format!(
                "no active token with id {id} (see `archway server token list`)"
            )));
        }
        Ok(())
    }

    pub async fn revoke_runner(&self, id: i64) -> Result<(), CoordError> {
        let n =
            sqlx::query("UPDATE runners SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.db.write)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(CoordError::NotFound(format!(
                "no active runner with id {id}"
            )));
        }
        Ok(())
    }

    /// Whether admin/registration token `id` is still active.
    pub async fn token_active(&self, id: i64) -> Result<bool, CoordError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tokens WHERE id = $1 AND revoked_ms IS NULL")
                .bind(id)
                .fetch_one(&self.db.read)
                .await?;
        Ok(n > 0)
    }

    /// Whether runner `id` may still work.
    pub async fn runner_active(&self, id: i64) -> Result<bool, CoordError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM runners WHERE id = $1 AND revoked_ms IS NULL")
                .bind(id)
                .fetch_one(&self.db.read)
                .await?;
        Ok(n > 0)
    }

    /// Whether attempt `id` still runs (its job token is valid).
    pub async fn attempt_running(&self, id: i64) -> Result<bool, CoordError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM attempts WHERE id = $1 AND state = 'running'")
                .bind(id)
                .fetch_one(&self.db.read)
                .await?;
        Ok(n > 0)
    }

    /// Who holds `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, CoordError> {
        let bad = || {
            CoordError::Unauthorized(
                "unknown, revoked or expired token; check ARCHWAY_TOKEN / --token".into(),
            )
        };
        let kind = TokenKind::of(token).ok_or_else(bad)?;
        let h = tokens::hash(token);
        match kind {
            TokenKind::Admin | TokenKind::Registration => {
                let row = sqlx::query(
                    "SELECT id, kind FROM tokens WHERE hash = $1 AND revoked_ms IS NULL",
                )
                .bind(&h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                let id: i64 = row.try_get("id")?;
                let k: String = row.try_get("kind")?;
                match (kind, k.as_str()) {
                    (TokenKind::Admin, "admin") => Ok(Principal::Admin { token_id: id }),
                    (TokenKind::Registration, "registration") => {
                        Ok(Principal::Registration { token_id: id })
                    }
                    _ => Err(bad()),
                }
            }
            TokenKind::Runner => {
                let id: i64 = sqlx::query_scalar(
                    "SELECT id FROM runners WHERE token_hash = $1 AND revoked_ms IS NULL",
                )
                .bind(&h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                Ok(Principal::Runner { runner_id: id })
            }
            TokenKind::Job => {
                let row = sqlx::query(
                    "SELECT a.id AS attempt_id, a.job_id, a.state, j.pipeline_id, p.project \
                     FROM attempts a JOIN jobs j ON j.id = a.job_id \
                     JOIN pipelines p ON p.id = j.pipeline_id WHERE a.token_hash = $1",
                )
                .bind(&h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                let state: String = row.try_get("state")?;
                let attempt_id: i64 = row.try_get("attempt_id")?;
                if state != "running" {
                    return Err(CoordError::Fenced(format!(
                        "attempt {attempt_id} is {state}: its job token is no longer valid"
                    )));
                }
                Ok(Principal::Job(JobIdentity {
                    attempt_id,
                    job_id: row.try_get("job_id")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    project: row.try_get("project")?,
                }))
            }
        }
    }

    // --- runners ---------------------------------------------------------------------------

    pub async fn register_runner(
        &self,
        req: &RegisterRunner,
    ) -> Result<RegisteredRunner, CoordError> {
        match self.authenticate(&req.registration_token).await {
            Ok(Principal::Registration { .. }) => {}
            _ => {
                return Err(CoordError::Unauthorized(
                    "the registration token is unknown or revoked (`archway server token list` \
                     on the server shows the active ones)"
                        .into(),
                ));
            }
        }
        if req.name.is_empty() || req.name.len() > 100 {
            return Err(CoordError::BadRequest(
                "runner name must be 1–100 characters".into(),
            ));
        }
        if req.platforms.is_empty() {
            return Err(CoordError::BadRequest(
                "a runner must offer at least one platform".into(),
            ));
        }
        if req.tags.len() > 50 || req.tags.iter().any(|t| t.is_empty() || t.len() > 100) {
            return Err(CoordError::BadRequest(
                "at most 50 tags of 1–100 characters each".into(),
            ));
        }
        validate_platforms(&req.platforms)?;
        let token = tokens::generate(TokenKind::Runner);
        let mut tags = req.tags.clone();
        tags.sort();
        tags.dedup();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runners (name, token_hash, tags, platforms, concurrency, run_untagged, \
             version, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&req.name)
        .bind(tokens::hash(&token))
        .bind(json(&tags))
        .bind(json(&req.platforms))
        .bind(i64::from(req.concurrency.clamp(1, 1000)))
        .bind(i64::from(req.run_untagged))
        .bind(req.version.chars().take(64).collect::<String>())
        .bind(now_ms())
        .fetch_one(&self.db.write)
        .await?;
        tracing::info!(runner = id, name = %req.name, "runner registered");
        Ok(RegisteredRunner { id, token })
    }

    /// What a runner offers to the dispatcher (its tags with the automatic architecture
    /// tags of what it can run now).
    pub async fn runner_offer(
        &self,
        runner_id: i64,
        platforms: &[PlatformOffer],
    ) -> Result<RunnerOffer, CoordError> {
        let row = sqlx::query("SELECT tags, platforms, run_untagged FROM runners WHERE id = $1")
            .bind(runner_id)
            .fetch_one(&self.db.read)
            .await?;
        let mut tags: BTreeSet<String> =
            parse_json::<Vec<String>>(&row.try_get::<String, _>("tags")?, "runner tags")?
                .into_iter()
                .collect();
        let platforms: Vec<PlatformOffer> = if platforms.is_empty() {
            parse_json(&row.try_get::<String, _>("platforms")?, "runner platforms")?
        } else {
            platforms.to_vec()
        };
        for p in &platforms {
            tags.extend(archway_api::arch_tags(&p.platform));
        }
        Ok(RunnerOffer {
            runner_id,
            tags,
            platforms: platforms
                .iter()
                .map(|p| (p.platform.clone(), p.emulated))
                .collect(),
            run_untagged: row.try_get::<i64, _>("run_untagged")? != 0,
        })
    }

    /// The poll's bookkeeping: renew the leases of what the runner runs, lose what it no
    /// longer has, and tell it which of its attempts to stop.
    pub async fn reconcile(
        &self,
        runner_id: i64,
        running: &[i64],
        platforms: &[PlatformOffer],
        draining: bool,
        version: &str,
    ) -> Result<Vec<i64>, CoordError> {
        validate_platforms(platforms)?;
        let rows = sqlx::query(
            "SELECT id, cancel_requested FROM attempts WHERE runner_id = $1 AND state = 'running'",
        )
        .bind(runner_id)
        .fetch_all(&self.db.read)
        .await?;
        let reported: HashSet<i64> = running.iter().copied().collect();
        let mut server_side = HashSet::new();
        let mut cancel = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            server_side.insert(id);
            if r.try_get::<i64, _>("cancel_requested")? != 0 && reported.contains(&id) {
                cancel.push(id);
            }
        }
        // Attempts the runner reports but that are over here (lost, finished, canceled).
        cancel.extend(reported.iter().filter(|id| !server_side.contains(id)));
        // Attempts this runner had but no longer reports: it restarted or dropped them.
        for id in server_side.iter().filter(|id| !reported.contains(id)) {
            self.lose_attempt(*id, "its runner no longer reports it (restarted?)")
                .await?;
        }
        let due = {
            let mut m = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let due = m
                .get(&runner_id)
                .is_none_or(|t| now.duration_since(*t) >= self.config.lease_ttl / 5);
            if due {
                m.insert(runner_id, now);
            }
            due
        };
        if due {
            let now = now_ms();
            let mut tx = self.begin().await?;
            sqlx::query(
                "UPDATE attempts SET lease_expires_ms = $1 WHERE runner_id = $2 AND state = 'running'",
            )
            .bind(now + self.config.lease_ttl.as_millis() as i64)
            .bind(runner_id)
            .execute(&mut *tx)
            .await?;
            let mut q =
                String::from("UPDATE runners SET last_seen_ms = $1, draining = $2, version = $3");
            if !platforms.is_empty() {
                q.push_str(", platforms = $5");
            }
            q.push_str(" WHERE id = $4");
            let mut query = sqlx::query(&q)
                .bind(now)
                .bind(i64::from(draining))
                .bind(version.chars().take(64).collect::<String>())
                .bind(runner_id);
            if !platforms.is_empty() {
                query = query.bind(json(&platforms));
            }
            query.execute(&mut *tx).await?;
            tx.commit().await?;
        }
        cancel.sort_unstable();
        cancel.dedup();
        Ok(cancel)
    }

    // --- pipelines -------------------------------------------------------------------------

    /// Stores a pipeline and its jobs, decides what can run, cancels older interruptible
    /// pipelines of the same ref.
    pub async fn submit(&self, req: &SubmitPipeline) -> Result<PipelineView, CoordError> {
        validate_pipeline(req, self.config.max_jobs)?;
        if let Some(src) = &req.source
            && src.parse::<archway_oci::Digest>().is_err()
        {
            return Err(CoordError::BadRequest(format!(
                "source `{src}` is not a digest"
            )));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let pipeline_id: i64 = sqlx::query_scalar(
            "INSERT INTO pipelines (project, git_ref, is_tag, sha, commit_message, source, file, \
             stages, variables, masked, secrets, status, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'created', $12) RETURNING id",
        )
        .bind(&req.project)
        .bind(&req.git_ref)
        .bind(i64::from(req.tag))
        .bind(&req.sha)
        .bind(&req.commit_message)
        .bind(req.source.clone())
        .bind(&req.file)
        .bind(json(&req.stages))
        .bind(json(&req.variables))
        .bind(json(&req.masked))
        .bind(json(&req.secrets))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let stage_idx: HashMap<&str, i64> = req
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as i64))
            .collect();
        let mut ids: HashMap<&str, i64> = HashMap::new();
        for j in &req.jobs {
            let mut tags = j.tags.clone();
            tags.sort();
            tags.dedup();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (pipeline_id, name, stage, stage_idx, status, spec, tags, \
                 platform, when_run, allow_failure, interruptible, resource_group, created_ms) \
                 VALUES ($1, $2, $3, $4, 'created', $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            )
            .bind(pipeline_id)
            .bind(&j.name)
            .bind(&j.stage)
            .bind(stage_idx.get(j.stage.as_str()).copied().unwrap_or(0))
            .bind(json(j))
            .bind(json(&tags))
            .bind(j.platform.clone())
            .bind(j.when.as_str())
            .bind(i64::from(j.allow_failure))
            .bind(i64::from(j.interruptible))
            .bind(j.resource_group.clone())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.insert(&j.name, id);
        }
        for j in &req.jobs {
            if let Some(needs) = &j.needs {
                let need_ids: Vec<i64> = needs
                    .iter()
                    .filter_map(|n| ids.get(n.as_str()).copied())
                    .collect();
                sqlx::query("UPDATE jobs SET needs = $1 WHERE id = $2")
                    .bind(json(&need_ids))
                    .bind(ids[j.name.as_str()])
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Auto-cancel redundant pipelines (GitLab's `conservative` rule): an older active
        // pipeline of this ref is canceled if none of its non-interruptible jobs started.
        let mut canceled_runners = Vec::new();
        if !req.tag {
            let older: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM pipelines WHERE project = $1 AND git_ref = $2 AND is_tag = 0 \
                 AND id < $3 AND status IN ('created','pending','running','manual')",
            )
            .bind(&req.project)
            .bind(&req.git_ref)
            .bind(pipeline_id)
            .fetch_all(&mut *tx)
            .await?;
            for old in older {
                let started: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs WHERE pipeline_id = $1 AND interruptible = 0 \
                     AND status IN ('running','canceling','success','failed')",
                )
                .bind(old)
                .fetch_one(&mut *tx)
                .await?;
                if started == 0 {
                    tracing::info!(
                        pipeline = old,
                        newer = pipeline_id,
                        "auto-canceling a redundant pipeline"
                    );
                    canceled_runners.extend(self.cancel_pipeline_tx(&mut tx, old).await?);
                }
            }
        }
        let ready = self.advance_tx(&mut tx, pipeline_id).await?;
        tx.commit().await?;
        self.after_commit(ready, &canceled_runners).await;
        self.pipeline(pipeline_id).await
    }

    /// Wakes whoever a committed change concerns.
    async fn after_commit(&self, jobs_ready: bool, canceled_runners: &[i64]) {
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
    async fn lock_pipeline(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<(), CoordError> {
        if self.db.dialect == crate::db::Dialect::Postgres {
            sqlx::query("SELECT id FROM pipelines WHERE id = $1 FOR UPDATE")
                .bind(pipeline_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn advance_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<bool, CoordError> {
        // Two attempts of one pipeline ending at once must not both decide on a snapshot
        // that lacks the other's result (write skew): the pipeline row serialises them. The
        // later one reads after the earlier one committed, so it sees both. (SQLite has one
        // writer at a time already.)
        self.lock_pipeline(tx, pipeline_id).await?;
        let states = load_states(tx, pipeline_id).await?;
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
        let row = sqlx::query("SELECT status, cancel_requested FROM pipelines WHERE id = $1")
            .bind(pipeline_id)
            .fetch_one(&mut **tx)
            .await?;
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
        }
        Ok(ready)
    }

    // --- dispatch --------------------------------------------------------------------------

    /// Pending jobs, oldest first, that are not held back by a busy resource group.
    pub async fn candidates(&self, limit: i64) -> Result<Vec<Candidate>, CoordError> {
        let rows = sqlx::query(
            "SELECT j.id, j.tags, j.platform, j.resource_group, p.project FROM jobs j \
             JOIN pipelines p ON p.id = j.pipeline_id \
             WHERE j.status = 'pending' ORDER BY j.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.db.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut groups = false;
        for r in rows {
            let resource_group: Option<String> = r.try_get("resource_group")?;
            groups |= resource_group.is_some();
            out.push(Candidate {
                job_id: r.try_get("id")?,
                tags: parse_json(&r.try_get::<String, _>("tags")?, "job tags")?,
                platform: r.try_get("platform")?,
                resource_group: resource_group
                    .map(|g| (r.try_get::<String, _>("project").unwrap_or_default(), g)),
            });
        }
        if groups {
            let busy: HashSet<(String, String)> = sqlx::query(
                "SELECT DISTINCT p.project, j.resource_group FROM jobs j \
                 JOIN pipelines p ON p.id = j.pipeline_id \
                 WHERE j.status IN ('running','canceling') AND j.resource_group IS NOT NULL",
            )
            .fetch_all(&self.db.read)
            .await?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.try_get("project").ok()?,
                    r.try_get("resource_group").ok()?,
                ))
            })
            .collect();
            let mut taken = busy;
            out.retain(|c| match &c.resource_group {
                None => true,
                // One job per resource group at a time; the oldest pending one goes first.
                Some(g) => taken.insert(g.clone()),
            });
        }
        Ok(out)
    }

    /// Claims jobs for runners in one transaction; jobs another server claimed first are left
    /// out. Returns the payloads to hand out, keyed by runner.
    pub async fn claim(&self, claims: &[Claim]) -> Result<Vec<(i64, JobPayload)>, CoordError> {
        let now = now_ms();
        let lease = now + self.config.lease_ttl.as_millis() as i64;
        let mut tx = self.begin().await?;
        let mut out = Vec::new();
        let mut pipelines = BTreeSet::new();
        for c in claims {
            let won = sqlx::query(
                "UPDATE jobs SET status = 'running', started_ms = $1, \
                 attempt_count = attempt_count + 1, failure_reason = NULL, exit_code = NULL \
                 WHERE id = $2 AND status = 'pending'",
            )
            .bind(now)
            .bind(c.job_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if won == 0 {
                continue;
            }
            let row = sqlx::query(
                "SELECT j.name, j.stage, j.spec, j.attempt_count, j.queued_ms, j.pipeline_id, \
                 p.project, p.git_ref, p.is_tag, p.sha, p.commit_message, p.source, p.masked, \
                 p.secrets FROM jobs j JOIN pipelines p ON p.id = j.pipeline_id WHERE j.id = $1",
            )
            .bind(c.job_id)
            .fetch_one(&mut *tx)
            .await?;
            let number: i64 = row.try_get("attempt_count")?;
            let token = tokens::generate(TokenKind::Job);
            let attempt_id: i64 = sqlx::query_scalar(
                "INSERT INTO attempts (job_id, number, runner_id, platform, emulated, state, \
                 token_hash, lease_expires_ms, started_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8) RETURNING id",
            )
            .bind(c.job_id)
            .bind(number)
            .bind(c.runner_id)
            .bind(&c.platform)
            .bind(i64::from(c.emulated))
            .bind(tokens::hash(&token))
            .bind(lease)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let pipeline_id: i64 = row.try_get("pipeline_id")?;
            pipelines.insert(pipeline_id);
            if let Some(q) = row.try_get::<Option<i64>, _>("queued_ms")? {
                self.metrics
                    .observe_pickup((now - q).max(0) as f64 / 1000.0);
            }
            let runner_tags: String = sqlx::query_scalar("SELECT tags FROM runners WHERE id = $1")
                .bind(c.runner_id)
                .fetch_one(&mut *tx)
                .await?;
            let payload = self.payload(&row, c, attempt_id, number, token, &runner_tags)?;
            out.push((c.runner_id, payload));
        }
        tx.commit().await?;
        // Outside the claim's transaction, so a claim never holds a pipeline row while
        // holding job rows (the order every other change takes the other way round).
        for p in pipelines {
            sqlx::query(
                "UPDATE pipelines SET status = 'running' WHERE id = $1 AND status IN ('created','pending')",
            )
            .bind(p)
            .execute(&self.db.write)
            .await?;
        }
        if !out.is_empty() {
            self.events.state_changed();
        }
        Ok(out)
    }

    fn payload(
        &self,
        row: &sqlx::any::AnyRow,
        c: &Claim,
        attempt_id: i64,
        number: i64,
        token: String,
        runner_tags: &str,
    ) -> Result<JobPayload, CoordError> {
        let def: JobDefinition = parse_json(&row.try_get::<String, _>("spec")?, "job spec")?;
        let project: String = row.try_get("project")?;
        let git_ref: String = row.try_get("git_ref")?;
        let is_tag = row.try_get::<i64, _>("is_tag")? != 0;
        let sha: String = row.try_get("sha")?;
        let pipeline_id: i64 = row.try_get("pipeline_id")?;
        let masked: Vec<String> = parse_json(&row.try_get::<String, _>("masked")?, "masked")?;
        let secrets: BTreeMap<String, String> =
            parse_json(&row.try_get::<String, _>("secrets")?, "secrets")?;
        let (namespace, name) = project.rsplit_once('/').unwrap_or(("", &project));
        let project_dir = format!("/builds/{project}");
        let server = self.config.server_url.trim_end_matches('/');
        let mut vars: Vec<(String, String)> = vec![
            ("CI".into(), "true".into()),
            ("GITLAB_CI".into(), "true".into()),
            ("ARCHWAY".into(), "true".into()),
            ("CI_SERVER_URL".into(), server.into()),
            ("CI_API_V4_URL".into(), format!("{server}/api/v1")),
            ("CI_PIPELINE_ID".into(), pipeline_id.to_string()),
            ("CI_PIPELINE_IID".into(), pipeline_id.to_string()),
            (
                "CI_PIPELINE_URL".into(),
                format!("{server}/api/v1/pipelines/{pipeline_id}"),
            ),
            ("CI_JOB_ID".into(), c.job_id.to_string()),
            ("CI_JOB_NAME".into(), def.name.clone()),
            ("CI_JOB_STAGE".into(), def.stage.clone()),
            (
                "CI_JOB_URL".into(),
                format!("{server}/api/v1/jobs/{}", c.job_id),
            ),
            ("CI_JOB_TOKEN".into(), token.clone()),
            ("CI_PROJECT_PATH".into(), project.clone()),
            ("CI_PROJECT_NAME".into(), name.into()),
            ("CI_PROJECT_NAMESPACE".into(), namespace.into()),
            ("CI_PROJECT_DIR".into(), project_dir.clone()),
            ("CI_BUILDS_DIR".into(), "/builds".into()),
            ("CI_PROJECT_URL".into(), format!("{server}/{project}")),
            ("CI_REGISTRY".into(), self.config.registry.clone()),
            (
                "CI_REGISTRY_IMAGE".into(),
                format!("{}/{project}", self.config.registry),
            ),
            ("CI_REGISTRY_USER".into(), "gitlab-ci-token".into()),
            ("CI_REGISTRY_PASSWORD".into(), token.clone()),
            ("CI_COMMIT_SHA".into(), sha.clone()),
            ("CI_COMMIT_SHORT_SHA".into(), sha.chars().take(8).collect()),
            ("CI_COMMIT_REF_NAME".into(), git_ref.clone()),
            ("CI_COMMIT_REF_SLUG".into(), ref_slug(&git_ref)),
            ("CI_COMMIT_MESSAGE".into(), row.try_get("commit_message")?),
            ("CI_RUNNER_TAGS".into(), runner_tags.into()),
            ("ARCHWAY_PLATFORM".into(), c.platform.clone()),
            ("ARCHWAY_EMULATED".into(), c.emulated.to_string()),
        ];
        if is_tag {
            vars.push(("CI_COMMIT_TAG".into(), git_ref.clone()));
        } else {
            vars.push(("CI_COMMIT_BRANCH".into(), git_ref.clone()));
        }
        // The plan's variables (global, job, matrix, pipeline) override predefined ones; the
        // secrets given at submission override everything.
        vars.extend(
            def.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        );
        // The plan kept references to variables only the job knows (`$CI_REGISTRY/app`):
        // expand them now, as the runner would, with everything the job has.
        let known: HashMap<String, String> = vars.iter().cloned().collect();
        for (_, value) in vars.iter_mut() {
            if value.contains('$') {
                *value = expand_job_value(value, &known, 0);
            }
        }
        // Secrets are taken literally.
        vars.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let always_masked = ["CI_JOB_TOKEN", "CI_REGISTRY_PASSWORD"];
        let variables = vars
            .into_iter()
            .map(|(name, value)| JobVariable {
                masked: always_masked.contains(&name.as_str())
                    || masked.contains(&name)
                    || secrets.contains_key(&name),
                name,
                value,
            })
            .collect();
        Ok(JobPayload {
            attempt_id,
            attempt: number as u32,
            job_id: c.job_id,
            pipeline_id,
            project,
            name: def.name,
            stage: def.stage,
            token,
            platform: c.platform.clone(),
            emulated: c.emulated,
            image: def.image,
            before_script: def.before_script,
            script: def.script,
            after_script: def.after_script,
            variables,
            timeout_secs: def
                .timeout_secs
                .unwrap_or(self.config.default_timeout.as_secs()),
            source: row.try_get("source")?,
            max_log_bytes: self.config.max_log_bytes,
        })
    }

    /// Undoes claims whose runner went away before receiving them: the attempts never
    /// happened (they are deleted) and their jobs are pending again.
    pub async fn unclaim(&self, attempt_ids: &[i64]) -> Result<(), CoordError> {
        let mut tx = self.begin().await?;
        for id in attempt_ids {
            let job: Option<i64> = sqlx::query_scalar(
                "SELECT job_id FROM attempts WHERE id = $1 AND state = 'running' AND log_received = 0",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(job) = job else { continue };
            sqlx::query("DELETE FROM attempts WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE jobs SET status = 'pending', attempt_count = attempt_count - 1 \
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(job)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.after_commit(true, &[]).await;
        Ok(())
    }

    // --- reports from attempts -------------------------------------------------------------

    /// Appends log bytes the runner sent at stream `offset`; bytes already received are
    /// skipped, a gap is answered with what the server has so the runner resends.
    pub async fn append_log(
        &self,
        attempt_id: i64,
        offset: u64,
        data: &[u8],
    ) -> Result<LogAck, CoordError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT state, log_received, log_stored, log_truncated FROM attempts WHERE id = $1",
        )
        .bind(attempt_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| CoordError::NotFound(format!("no attempt {attempt_id}")))?;
        let state: String = row.try_get("state")?;
        if state != "running" {
            return Err(CoordError::Fenced(format!(
                "attempt {attempt_id} is {state}; its log is closed"
            )));
        }
        let received = row.try_get::<i64, _>("log_received")? as u64;
        let stored = row.try_get::<i64, _>("log_stored")? as u64;
        let truncated = row.try_get::<i64, _>("log_truncated")? != 0;
        if offset > received || offset + (data.len() as u64) <= received {
            // A gap (resend from `received`) or a repeat of what we have.
            return Ok(LogAck { received });
        }
        let fresh = &data[(received - offset) as usize..];
        let room = self.config.max_log_bytes.saturating_sub(stored) as usize;
        let keep = &fresh[..fresh.len().min(room)];
        let mut new_stored = stored;
        let mut new_truncated = truncated;
        if !keep.is_empty() {
            sqlx::query("INSERT INTO log_chunks (attempt_id, pos, data) VALUES ($1, $2, $3)")
                .bind(attempt_id)
                .bind(stored as i64)
                .bind(keep.to_vec())
                .execute(&mut *tx)
                .await?;
            new_stored += keep.len() as u64;
        }
        if keep.len() < fresh.len() && !truncated {
            let marker = format!(
                "\n[archway] the job log reached the {} limit; the rest was dropped\n",
                human_bytes(self.config.max_log_bytes)
            );
            sqlx::query("INSERT INTO log_chunks (attempt_id, pos, data) VALUES ($1, $2, $3)")
                .bind(attempt_id)
                .bind(new_stored as i64)
                .bind(marker.into_bytes())
                .execute(&mut *tx)
                .await?;
            new_stored = sqlx::query_scalar::<_, i64>(
                "SELECT coalesce(sum(length(data)), 0) FROM log_chunks WHERE attempt_id = $1",
            )
            .bind(attempt_id)
            .fetch_one(&mut *tx)
            .await? as u64;
            new_truncated = true;
        }
        let new_received = received + fresh.len() as u64;
        sqlx::query(
            "UPDATE attempts SET log_received = $1, log_stored = $2, log_truncated = $3 WHERE id = $4",
        )
        .bind(new_received as i64)
        .bind(new_stored as i64)
        .bind(i64::from(new_truncated))
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.events.log_appended(&self.db).await;
        Ok(LogAck {
            received: new_received,
        })
    }

    /// Ends an attempt as its runner reports, then moves the job and its pipeline on.
    pub async fn end_attempt(
        &self,
        attempt_id: i64,
        report: &FinishAttempt,
    ) -> Result<(), CoordError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT a.state, a.cancel_requested, a.job_id, j.pipeline_id, j.spec, j.user_retries \
             FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
        )
        .bind(attempt_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| CoordError::NotFound(format!("no attempt {attempt_id}")))?;
        let state: String = row.try_get("state")?;
        if state != "running" {
            return Err(CoordError::Fenced(format!(
                "attempt {attempt_id} is already {state}; this report is ignored"
            )));
        }
        let job_id: i64 = row.try_get("job_id")?;
        let pipeline_id: i64 = row.try_get("pipeline_id")?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        let cancel_requested = row.try_get::<i64, _>("cancel_requested")? != 0;
        let def: JobDefinition = parse_json(&row.try_get::<String, _>("spec")?, "job spec")?;
        let user_retries = row.try_get::<i64, _>("user_retries")? as u32;
        let now = now_ms();
        let outcome = if cancel_requested && report.outcome != AttemptOutcome::Success {
            AttemptOutcome::Canceled
        } else {
            report.outcome
        };
        let attempt_state = match outcome {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Canceled => "canceled",
            AttemptOutcome::HandedBack => "handed_back",
        };
        let reason = match outcome {
            AttemptOutcome::Failed => Some(report.reason.unwrap_or(FailureReason::ScriptFailure)),
            _ => None,
        };
        let n = sqlx::query(
            "UPDATE attempts SET state = $1, finished_ms = $2, exit_code = $3, reason = $4 \
             WHERE id = $5 AND state = 'running'",
        )
        .bind(attempt_state)
        .bind(now)
        .bind(report.exit_code.map(i64::from))
        .bind(reason.map(|r| r.as_str()))
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(CoordError::Fenced(format!(
                "attempt {attempt_id} ended meanwhile"
            )));
        }
        match outcome {
            AttemptOutcome::Success => {
                set_job_final(
                    &mut tx,
                    job_id,
                    JobStatus::Success,
                    None,
                    report.exit_code,
                    false,
                    now,
                )
                .await?
            }
            AttemptOutcome::Canceled => {
                set_job_final(
                    &mut tx,
                    job_id,
                    JobStatus::Canceled,
                    None,
                    report.exit_code,
                    false,
                    now,
                )
                .await?
            }
            AttemptOutcome::HandedBack => {
                self.requeue(&mut tx, job_id, now, None).await?;
                self.metrics.requeue(RequeueReason::HandedBack);
            }
            AttemptOutcome::Failed => {
                let reason = reason.unwrap_or(FailureReason::ScriptFailure);
                self.job_failed(
                    &mut tx,
                    job_id,
                    &def,
                    user_retries,
                    reason,
                    report.exit_code,
                    now,
                )
                .await?;
            }
        }
        let ready = self.advance_tx(&mut tx, pipeline_id).await?
            | matches!(outcome, AttemptOutcome::HandedBack);
        tx.commit().await?;
        self.after_commit(ready, &[]).await;
        Ok(())
    }

    /// A failed attempt: retried under the user's `retry:`, else the job fails (allowed or not).
    #[allow(clippy::too_many_arguments)]
    async fn job_failed(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: i64,
        def: &JobDefinition,
        user_retries: u32,
        reason: FailureReason,
        exit_code: Option<i32>,
        now: i64,
    ) -> Result<(), CoordError> {
        if schedule::should_retry(reason, user_retries, def.retry_max, &def.retry_when) {
            sqlx::query("UPDATE jobs SET user_retries = user_retries + 1 WHERE id = $1")
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
            self.requeue(tx, job_id, now, Some(reason)).await?;
            self.metrics.requeue(RequeueReason::Retry);
            return Ok(());
        }
        let allowed =
            schedule::failure_allowed(def.allow_failure, &def.allow_failure_exit_codes, exit_code);
        set_job_final(
            tx,
            job_id,
            JobStatus::Failed,
            Some(reason),
            exit_code,
            allowed,
            now,
        )
        .await
    }

    async fn requeue(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_id: i64,
        now: i64,
        last_reason: Option<FailureReason>,
    ) -> Result<(), CoordError> {
        sqlx::query(
            "UPDATE jobs SET status = 'pending', queued_ms = $1, failure_reason = $2 WHERE id = $3",
        )
        .bind(now)
        .bind(last_reason.map(|r| r.as_str()))
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// An attempt whose runner is gone: fenced off, and its job requeued within the system
    /// retry budget (else failed with `runner_system_failure`, which `retry:` may retry).
    pub async fn lose_attempt(&self, attempt_id: i64, why: &str) -> Result<(), CoordError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let pipeline: Option<i64> = sqlx::query_scalar(
            "SELECT j.pipeline_id FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
        )
        .bind(attempt_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(pipeline) = pipeline else {
            return Ok(());
        };
        self.lock_pipeline(&mut tx, pipeline).await?;
        let n = sqlx::query(
            "UPDATE attempts SET state = 'lost', finished_ms = $1, reason = 'runner_system_failure' \
             WHERE id = $2 AND state = 'running'",
        )
        .bind(now)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT a.cancel_requested, j.id, j.pipeline_id, j.spec, j.user_retries, j.system_requeues \
             FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
        )
        .bind(attempt_id)
        .fetch_one(&mut *tx)
        .await?;
        let job_id: i64 = row.try_get("id")?;
        let pipeline_id: i64 = row.try_get("pipeline_id")?;
        let requeues = row.try_get::<i64, _>("system_requeues")? as u32;
        let mut ready = false;
        if row.try_get::<i64, _>("cancel_requested")? != 0 {
            set_job_final(&mut tx, job_id, JobStatus::Canceled, None, None, false, now).await?;
        } else if requeues < self.config.system_retries {
            sqlx::query("UPDATE jobs SET system_requeues = system_requeues + 1 WHERE id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            self.requeue(
                &mut tx,
                job_id,
                now,
                Some(FailureReason::RunnerSystemFailure),
            )
            .await?;
            self.metrics.requeue(RequeueReason::RunnerSystemFailure);
            ready = true;
        } else {
            let def: JobDefinition = parse_json(&row.try_get::<String, _>("spec")?, "job spec")?;
            let user_retries = row.try_get::<i64, _>("user_retries")? as u32;
            self.job_failed(
                &mut tx,
                job_id,
                &def,
                user_retries,
                FailureReason::RunnerSystemFailure,
                None,
                now,
            )
            .await?;
        }
        ready |= self.advance_tx(&mut tx, pipeline_id).await?;
        tx.commit().await?;
        tracing::warn!(
            attempt = attempt_id,
            job = job_id,
            reason = why,
            "attempt lost"
        );
        self.after_commit(ready, &[]).await;
        Ok(())
    }

    /// Loses every attempt whose lease ran out; returns how many.
    pub async fn reap_expired(&self) -> Result<usize, CoordError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM attempts WHERE state = 'running' AND lease_expires_ms < $1 ORDER BY id LIMIT 500",
        )
        .bind(now_ms())
        .fetch_all(&self.db.read)
        .await?;
        for id in &ids {
            self.lose_attempt(*id, "lease expired: its runner stopped renewing it")
                .await?;
        }
        Ok(ids.len())
    }

    /// Delayed jobs whose time has come become pending; returns whether any did.
    pub async fn promote_scheduled(&self) -> Result<bool, CoordError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE jobs SET status = 'pending', queued_ms = $1 WHERE status = 'scheduled' AND run_after_ms <= $1",
        )
        .bind(now)
        .execute(&self.db.write)
        .await?
        .rows_affected();
        if n > 0 {
            self.after_commit(true, &[]).await;
        }
        Ok(n > 0)
    }

    /// After a restart of the coordinator, runners need time to reconnect before their
    /// attempts count as lost.
    pub async fn grant_restart_grace(&self) -> Result<u64, CoordError> {
        let until = now_ms() + self.config.lease_ttl.as_millis() as i64;
        Ok(sqlx::query(
            "UPDATE attempts SET lease_expires_ms = $1 WHERE state = 'running' AND lease_expires_ms < $1",
        )
        .bind(until)
        .execute(&self.db.write)
        .await?
        .rows_affected())
    }

    // --- user actions ----------------------------------------------------------------------

    /// Cancels what has not run and asks runners to stop what runs; returns their runner ids.
    async fn cancel_pipeline_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
    ) -> Result<Vec<i64>, CoordError> {
        let now = now_ms();
        sqlx::query("UPDATE pipelines SET cancel_requested = 1 WHERE id = $1")
            .bind(pipeline_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE jobs SET status = 'canceled', finished_ms = $1 WHERE pipeline_id = $2 \
             AND status IN ('created','pending','scheduled','manual')",
        )
        .bind(now)
        .bind(pipeline_id)
        .execute(&mut **tx)
        .await?;
        let runners: Vec<i64> = sqlx::query_scalar(
            "SELECT a.runner_id FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE j.pipeline_id = $1 AND a.state = 'running'",
        )
        .bind(pipeline_id)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE attempts SET cancel_requested = 1 WHERE state = 'running' AND job_id IN \
             (SELECT id FROM jobs WHERE pipeline_id = $1)",
        )
        .bind(pipeline_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET status = 'canceling' WHERE pipeline_id = $1 AND status = 'running'",
        )
        .bind(pipeline_id)
        .execute(&mut **tx)
        .await?;
        self.advance_tx(tx, pipeline_id).await?;
        Ok(runners)
    }

    pub async fn cancel_pipeline(&self, pipeline_id: i64) -> Result<PipelineView, CoordError> {
        let mut tx = self.begin().await?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        let status = pipeline_status_tx(&mut tx, pipeline_id).await?;
        if status.is_final() {
            return Err(CoordError::Conflict(format!(
                "pipeline {pipeline_id} already finished ({status})"
            )));
        }
        let runners = self.cancel_pipeline_tx(&mut tx, pipeline_id).await?;
        tx.commit().await?;
        self.after_commit(false, &runners).await;
        self.pipeline(pipeline_id).await
    }

    pub async fn cancel_job(&self, job_id: i64) -> Result<JobView, CoordError> {
        let mut tx = self.begin().await?;
        let (pipeline_id, status) = job_status_tx(&mut tx, job_id).await?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        let now = now_ms();
        let mut runners = Vec::new();
        match status {
            JobStatus::Created | JobStatus::Pending | JobStatus::Scheduled | JobStatus::Manual => {
                set_job_final(&mut tx, job_id, JobStatus::Canceled, None, None, false, now).await?;
            }
            JobStatus::Running | JobStatus::Canceling => {
                runners = sqlx::query_scalar(
                    "SELECT runner_id FROM attempts WHERE job_id = $1 AND state = 'running'",
                )
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query("UPDATE attempts SET cancel_requested = 1 WHERE job_id = $1 AND state = 'running'")
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE jobs SET status = 'canceling' WHERE id = $1")
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
            }
            s => {
                return Err(CoordError::Conflict(format!(
                    "job {job_id} already finished ({s})"
                )));
            }
        }
        self.advance_tx(&mut tx, pipeline_id).await?;
        tx.commit().await?;
        self.after_commit(false, &runners).await;
        self.job(job_id).await
    }

    pub async fn play_job(&self, job_id: i64) -> Result<JobView, CoordError> {
        let mut tx = self.begin().await?;
        let (pipeline_id, status) = job_status_tx(&mut tx, job_id).await?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        if status != JobStatus::Manual && status != JobStatus::Scheduled {
            return Err(CoordError::Conflict(format!(
                "job {job_id} is {status}; only manual (or delayed) jobs can be played"
            )));
        }
        self.requeue(&mut tx, job_id, now_ms(), None).await?;
        self.advance_tx(&mut tx, pipeline_id).await?;
        tx.commit().await?;
        self.after_commit(true, &[]).await;
        self.job(job_id).await
    }

    /// Runs a finished job again (a new attempt); jobs after it that were skipped or
    /// canceled because of it are decided again.
    pub async fn retry_job(&self, job_id: i64) -> Result<JobView, CoordError> {
        let mut tx = self.begin().await?;
        let (pipeline_id, status) = job_status_tx(&mut tx, job_id).await?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        if !status.is_final() || status == JobStatus::Skipped {
            return Err(CoordError::Conflict(format!(
                "job {job_id} is {status}; only finished jobs can be retried"
            )));
        }
        self.retry_jobs_tx(&mut tx, pipeline_id, &[job_id]).await?;
        tx.commit().await?;
        self.after_commit(true, &[]).await;
        self.job(job_id).await
    }

    pub async fn retry_pipeline(&self, pipeline_id: i64) -> Result<PipelineView, CoordError> {
        let mut tx = self.begin().await?;
        self.lock_pipeline(&mut tx, pipeline_id).await?;
        let status = pipeline_status_tx(&mut tx, pipeline_id).await?;
        if !status.is_final() {
            return Err(CoordError::Conflict(format!(
                "pipeline {pipeline_id} is still {status}; cancel it or wait for it to finish"
            )));
        }
        let jobs: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE pipeline_id = $1 AND status IN ('failed','canceled')",
        )
        .bind(pipeline_id)
        .fetch_all(&mut *tx)
        .await?;
        if jobs.is_empty() {
            return Err(CoordError::Conflict(format!(
                "pipeline {pipeline_id} has no failed or canceled job to retry"
            )));
        }
        self.retry_jobs_tx(&mut tx, pipeline_id, &jobs).await?;
        tx.commit().await?;
        self.after_commit(true, &[]).await;
        self.pipeline(pipeline_id).await
    }

    async fn retry_jobs_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
        jobs: &[i64],
    ) -> Result<(), CoordError> {
        let now = now_ms();
        let states = load_states(tx, pipeline_id).await?;
        // Everything downstream of the retried jobs that was skipped or canceled is undecided again.
        let mut again: HashSet<i64> = jobs.iter().copied().collect();
        loop {
            let before = again.len();
            for s in &states {
                if again.contains(&s.id)
                    || !matches!(s.status, JobStatus::Skipped | JobStatus::Canceled)
                {
                    continue;
                }
                let downstream = match &s.needs {
                    Some(n) => n.iter().any(|d| again.contains(d)),
                    None => states
                        .iter()
                        .any(|d| again.contains(&d.id) && d.stage_idx < s.stage_idx),
                };
                if downstream {
                    again.insert(s.id);
                }
            }
            if again.len() == before {
                break;
            }
        }
        for id in &again {
            let retried = jobs.contains(id);
            sqlx::query(
                "UPDATE jobs SET status = $1, queued_ms = $2, finished_ms = NULL, failure_reason = NULL, \
                 exit_code = NULL, failure_allowed = 0, user_retries = 0, system_requeues = 0 WHERE id = $3",
            )
            .bind(if retried { "pending" } else { "created" })
            .bind(retried.then_some(now))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("UPDATE pipelines SET cancel_requested = 0, finished_ms = NULL WHERE id = $1")
            .bind(pipeline_id)
            .execute(&mut **tx)
            .await?;
        self.advance_tx(tx, pipeline_id).await?;
        Ok(())
    }

    // --- views -----------------------------------------------------------------------------

    pub async fn pipeline(&self, id: i64) -> Result<PipelineView, CoordError> {
        let row = sqlx::query("SELECT * FROM pipelines WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.read)
            .await?
            .ok_or_else(|| CoordError::NotFound(format!("no pipeline {id}")))?;
        let mut view = pipeline_view(&row)?;
        let rows = sqlx::query("SELECT * FROM jobs WHERE pipeline_id = $1 ORDER BY stage_idx, id")
            .bind(id)
            .fetch_all(&self.db.read)
            .await?;
        let attempts = self
            .attempts_of(&format!(
                "a.job_id IN (SELECT id FROM jobs WHERE pipeline_id = {id})"
            ))
            .await?;
        let online = self.online_runners().await?;
        for r in rows {
            let mut j = job_view(&r)?;
            j.attempts = attempts.get(&j.id).cloned().unwrap_or_default();
            if j.status == JobStatus::Pending {
                j.note = pending_note(&j, &online);
            }
            view.jobs.push(j);
        }
        Ok(view)
    }

    pub async fn pipelines(
        &self,
        project: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PipelineView>, CoordError> {
        let rows = match project {
            Some(p) => {
                sqlx::query("SELECT * FROM pipelines WHERE project = $1 ORDER BY id DESC LIMIT $2")
                    .bind(p.to_owned())
                    .bind(limit)
                    .fetch_all(&self.db.read)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM pipelines ORDER BY id DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.db.read)
                    .await?
            }
        };
        rows.iter().map(pipeline_view).collect()
    }

    pub async fn job(&self, id: i64) -> Result<JobView, CoordError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.read)
            .await?
            .ok_or_else(|| CoordError::NotFound(format!("no job {id}")))?;
        let mut j = job_view(&row)?;
        j.attempts = self
            .attempts_of(&format!("a.job_id = {id}"))
            .await?
            .remove(&id)
            .unwrap_or_default();
        if j.status == JobStatus::Pending {
            j.note = pending_note(&j, &self.online_runners().await?);
        }
        Ok(j)
    }

    /// Attempts matching `filter` (built from integers only), grouped by job.
    async fn attempts_of(
        &self,
        filter: &str,
    ) -> Result<HashMap<i64, Vec<AttemptView>>, CoordError> {
        let rows = sqlx::query(&format!(
            "SELECT a.*, r.name AS runner_name FROM attempts a JOIN runners r ON r.id = a.runner_id \
             WHERE {filter} ORDER BY a.job_id, a.number"
        ))
        .fetch_all(&self.db.read)
        .await?;
        let mut out: HashMap<i64, Vec<AttemptView>> = HashMap::new();
        for r in rows {
            let job_id: i64 = r.try_get("job_id")?;
            out.entry(job_id).or_default().push(AttemptView {
                id: r.try_get("id")?,
                number: r.try_get::<i64, _>("number")? as u32,
                runner: RunnerRef {
                    id: r.try_get("runner_id")?,
                    name: r.try_get("runner_name")?,
                },
                platform: r.try_get("platform")?,
                emulated: r.try_get::<i64, _>("emulated")? != 0,
                state: r.try_get("state")?,
                exit_code: r.try_get::<Option<i64>, _>("exit_code")?.map(|c| c as i32),
                reason: r
                    .try_get::<Option<String>, _>("reason")?
                    .map(|s| FailureReason::parse(&s)),
                started_at_ms: r.try_get("started_ms")?,
                finished_at_ms: r.try_get("finished_ms")?,
                log_bytes: r.try_get::<i64, _>("log_stored")? as u64,
            });
        }
        Ok(out)
    }

    /// Runners seen within a lease period.
    pub async fn online_runners(&self) -> Result<Vec<RunnerView>, CoordError> {
        Ok(self
            .runners()
            .await?
            .into_iter()
            .filter(|r| r.online)
            .collect())
    }

    pub async fn runners(&self) -> Result<Vec<RunnerView>, CoordError> {
        let rows = sqlx::query(
            "SELECT r.*, (SELECT count(*) FROM attempts a WHERE a.runner_id = r.id AND a.state = 'running') AS running \
             FROM runners r WHERE r.revoked_ms IS NULL ORDER BY r.id",
        )
        .fetch_all(&self.db.read)
        .await?;
        let horizon = now_ms() - self.config.lease_ttl.as_millis() as i64;
        let mut out = Vec::new();
        for r in rows {
            let last_seen: Option<i64> = r.try_get("last_seen_ms")?;
            out.push(RunnerView {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                tags: parse_json(&r.try_get::<String, _>("tags")?, "runner tags")?,
                platforms: parse_json(&r.try_get::<String, _>("platforms")?, "runner platforms")?,
                concurrency: r.try_get::<i64, _>("concurrency")? as u32,
                run_untagged: r.try_get::<i64, _>("run_untagged")? != 0,
                online: last_seen.is_some_and(|t| t >= horizon),
                draining: r.try_get::<i64, _>("draining")? != 0,
                last_seen_ms: last_seen,
                running: r.try_get::<i64, _>("running")? as u32,
                version: r.try_get("version")?,
            });
        }
        Ok(out)
    }

    /// The attempts of a job, for reading its log: (attempt id, header, stored length, open).
    pub async fn log_parts(&self, job_id: i64) -> Result<(JobStatus, Vec<LogPart>), CoordError> {
        let job = self.job(job_id).await?;
        let parts = job
            .attempts
            .iter()
            .map(|a| LogPart {
                attempt_id: a.id,
                header: format!(
                    "[archway] attempt {} of job {} ({}) on runner {} ({}{})\n",
                    a.number,
                    job.id,
                    job.name,
                    a.runner.name,
                    a.platform,
                    if a.emulated { ", emulated with qemu" } else { "" }
                ),
                footer: match a.state.as_str() {
                    "running" => None,
                    "lost" => Some(format!(
                        "\n[archway] attempt {} lost: runner {} stopped renewing its lease (runner_system_failure)\n",
                        a.number, a.runner.name
                    )),
                    "handed_back" => Some(format!(
                        "\n[archway] attempt {} handed back by draining runner {}; requeued\n",
                        a.number, a.runner.name
                    )),
                    s => Some(format!(
                        "\n[archway] attempt {} {}{}{}\n",
                        a.number,
                        s,
                        a.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default(),
                        a.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    )),
                },
                stored: a.log_bytes,
            })
            .collect();
        Ok((job.status, parts))
    }

    /// Stored log bytes of an attempt from `from`, at most `max`.
    pub async fn log_bytes(
        &self,
        attempt_id: i64,
        from: u64,
        max: usize,
    ) -> Result<Vec<u8>, CoordError> {
        let rows = sqlx::query(
            "SELECT pos, data FROM log_chunks WHERE attempt_id = $1 AND pos + length(data) > $2 ORDER BY pos",
        )
        .bind(attempt_id)
        .bind(from as i64)
        .fetch_all(&self.db.read)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let pos = r.try_get::<i64, _>("pos")? as u64;
            let data: Vec<u8> = r.try_get("data")?;
            let skip = from.saturating_sub(pos) as usize;
            if skip < data.len() {
                out.extend_from_slice(&data[skip..]);
            }
            if out.len() >= max {
                out.truncate(max);
                break;
            }
        }
        Ok(out)
    }

    /// Stored length and whether the attempt still runs.
    pub async fn attempt_log_state(&self, attempt_id: i64) -> Result<(u64, bool), CoordError> {
        let row = sqlx::query("SELECT log_stored, state FROM attempts WHERE id = $1")
            .bind(attempt_id)
            .fetch_one(&self.db.read)
            .await?;
        Ok((
            row.try_get::<i64, _>("log_stored")? as u64,
            row.try_get::<String, _>("state")? == "running",
        ))
    }

    /// Counts for `/metrics`: pending jobs by tag set, running attempts, online runners by
    /// platform.
    pub async fn gauges(&self) -> Result<Gauges, CoordError> {
        let rows = sqlx::query(
            "SELECT tags, count(*) AS n FROM jobs WHERE status = 'pending' GROUP BY tags ORDER BY n DESC",
        )
        .fetch_all(&self.db.read)
        .await?;
        let mut queued = Vec::new();
        for r in rows {
            queued.push((r.try_get::<String, _>("tags")?, r.try_get::<i64, _>("n")?));
        }
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM attempts WHERE state = 'running'")
                .fetch_one(&self.db.read)
                .await?;
        let mut runners: BTreeMap<String, i64> = BTreeMap::new();
        for r in self.online_runners().await? {
            for p in r.platforms {
                *runners
                    .entry(format!(
                        "{}{}",
                        p.platform,
                        if p.emulated { " (emulated)" } else { "" }
                    ))
                    .or_default() += 1;
            }
        }
        Ok(Gauges {
            queued,
            running,
            runners,
        })
    }

    /// The source snapshot of a pipeline.
    pub async fn pipeline_source(&self, pipeline_id: i64) -> Result<Option<String>, CoordError> {
        Ok(
            sqlx::query_scalar("SELECT source FROM pipelines WHERE id = $1")
                .bind(pipeline_id)
                .fetch_one(&self.db.read)
                .await?,
        )
    }

    /// Is there an active job in `pipeline_id` still? (for tests and the CLI)
    pub async fn active_jobs(&self, pipeline_id: i64) -> Result<i64, CoordError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM jobs WHERE pipeline_id = $1 AND status IN {ACTIVE_JOB}"
        ))
        .bind(pipeline_id)
        .fetch_one(&self.db.read)
        .await?)
    }
}

/// One pending job as the dispatcher sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub job_id: i64,
    pub tags: Vec<String>,
    pub platform: Option<String>,
    /// (project, group)
    pub resource_group: Option<(String, String)>,
}

/// A token as `archway server token list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// One attempt's section of a job log.
#[derive(Clone, Debug)]
pub struct LogPart {
    pub attempt_id: i64,
    pub header: String,
    /// Written after the attempt's bytes once it is over.
    pub footer: Option<String>,
    pub stored: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// (JSON tag list, pending jobs)
    pub queued: Vec<(String, i64)>,
    pub running: i64,
    /// platform → online runners
    pub runners: BTreeMap<String, i64>,
}

async fn load_states(
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

async fn set_job_final(
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

async fn job_status_tx(
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

async fn pipeline_status_tx(
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

fn pipeline_view(r: &sqlx::any::AnyRow) -> Result<PipelineView, CoordError> {
    Ok(PipelineView {
        id: r.try_get("id")?,
        project: r.try_get("project")?,
        git_ref: r.try_get("git_ref")?,
        sha: r.try_get("sha")?,
        file: r.try_get("file")?,
        status: r
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e: String| CoordError::Db(DbError::Corrupt(e)))?,
        created_at_ms: r.try_get("created_ms")?,
        finished_at_ms: r.try_get("finished_ms")?,
        stages: parse_json(&r.try_get::<String, _>("stages")?, "stages")?,
        jobs: Vec::new(),
    })
}

fn job_view(r: &sqlx::any::AnyRow) -> Result<JobView, CoordError> {
    Ok(JobView {
        id: r.try_get("id")?,
        pipeline_id: r.try_get("pipeline_id")?,
        name: r.try_get("name")?,
        stage: r.try_get("stage")?,
        status: status_of(&r.try_get::<String, _>("status")?)?,
        when: When::parse(&r.try_get::<String, _>("when_run")?).unwrap_or(When::OnSuccess),
        allow_failure: r.try_get::<i64, _>("allow_failure")? != 0,
        failure_allowed: r.try_get::<i64, _>("failure_allowed")? != 0,
        tags: parse_json(&r.try_get::<String, _>("tags")?, "job tags")?,
        platform: r.try_get("platform")?,
        failure_reason: r
            .try_get::<Option<String>, _>("failure_reason")?
            .map(|s| FailureReason::parse(&s)),
        exit_code: r.try_get::<Option<i64>, _>("exit_code")?.map(|c| c as i32),
        created_at_ms: r.try_get("created_ms")?,
        queued_at_ms: r.try_get("queued_ms")?,
        started_at_ms: r.try_get("started_ms")?,
        finished_at_ms: r.try_get("finished_ms")?,
        run_after_ms: r.try_get("run_after_ms")?,
        attempts: Vec::new(),
        note: None,
    })
}

/// Why a pending job waits, when no online runner could take it.
fn pending_note(job: &JobView, online: &[RunnerView]) -> Option<String> {
    let fits = online.iter().any(|r| {
        let mut tags: BTreeSet<String> = r.tags.iter().cloned().collect();
        for p in &r.platforms {
            tags.extend(archway_api::arch_tags(&p.platform));
        }
        let offer = RunnerOffer {
            runner_id: r.id,
            tags,
            platforms: r
                .platforms
                .iter()
                .map(|p| (p.platform.clone(), p.emulated))
                .collect(),
            run_untagged: r.run_untagged,
        };
        offer.fit(&job.tags, job.platform.as_deref()).is_some()
    });
    if fits {
        return None;
    }
    let connected = if online.is_empty() {
        "none".to_owned()
    } else {
        online
            .iter()
            .map(|r| {
                let mut tags: Vec<String> = r.tags.clone();
                for p in &r.platforms {
                    tags.extend(archway_api::arch_tags(&p.platform));
                }
                if r.run_untagged {
                    tags.push("(untagged jobs)".into());
                }
                format!("{} [{}]", r.name, tags.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Some(if job.tags.is_empty() {
        format!("no runner takes untagged jobs; connected: {connected}")
    } else {
        format!(
            "no runner with tags [{}]{}; connected: {connected}",
            job.tags.join(", "),
            job.platform
                .as_deref()
                .map(|p| format!(" for {p}"))
                .unwrap_or_default()
        )
    })
}

fn validate_platforms(platforms: &[PlatformOffer]) -> Result<(), CoordError> {
    if platforms.len() > 16 {
        return Err(CoordError::BadRequest(
            "at most 16 platforms per runner".into(),
        ));
    }
    for p in platforms {
        p.platform
            .parse::<archway_oci::Platform>()
            .map_err(|e| CoordError::BadRequest(format!("platform `{}`: {e}", p.platform)))?;
    }
    Ok(())
}

/// Refuses pipelines that could not be scheduled: duplicate names, unknown stages or needs,
/// cycles, absurd sizes.
fn validate_pipeline(req: &SubmitPipeline, max_jobs: usize) -> Result<(), CoordError> {
    let bad = |m: String| Err(CoordError::BadRequest(m));
    if req.project.is_empty()
        || req.project.len() > 200
        || archway_registry::names::RepoName::parse(&req.project).is_none()
    {
        return bad(format!(
            "project `{}` must be a registry repository path such as `group/app` \
             (lowercase letters, digits, separators)",
            req.project
        ));
    }
    if req.jobs.is_empty() {
        return bad("the pipeline has no jobs".into());
    }
    if req.jobs.len() > max_jobs {
        return bad(format!(
            "{} jobs is more than the limit of {max_jobs}",
            req.jobs.len()
        ));
    }
    let stages: HashSet<&str> = req.stages.iter().map(String::as_str).collect();
    let mut names = HashSet::new();
    for j in &req.jobs {
        if !names.insert(j.name.as_str()) {
            return bad(format!("two jobs are named `{}`", j.name));
        }
        if !stages.contains(j.stage.as_str()) {
            return bad(format!(
                "job `{}` is in stage `{}`, which `stages` does not list",
                j.name, j.stage
            ));
        }
        if j.script.is_empty() {
            return bad(format!("job `{}` has no script", j.name));
        }
        if let Some(p) = &j.platform {
            p.parse::<archway_oci::Platform>().map_err(|e| {
                CoordError::BadRequest(format!("job `{}`: platform `{p}`: {e}", j.name))
            })?;
        }
    }
    for j in &req.jobs {
        for n in j.needs.iter().flatten() {
            if !names.contains(n.as_str()) {
                return bad(format!(
                    "job `{}` needs `{n}`, which is not in the pipeline",
                    j.name
                ));
            }
        }
    }
    // Cycles through `needs` (stage order cannot cycle).
    let index: HashMap<&str, &JobDefinition> =
        req.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let mut state: HashMap<&str, u8> = HashMap::new();
    for start in req.jobs.iter().map(|j| j.name.as_str()) {
        let mut stack = vec![(start, false)];
        while let Some((n, done)) = stack.pop() {
            if done {
                state.insert(n, 2);
                continue;
            }
            match state.get(n) {
                Some(2) => continue,
                Some(1) => return bad(format!("`needs` form a cycle through job `{n}`")),
                _ => {}
            }
            state.insert(n, 1);
            stack.push((n, true));
            for d in index[n].needs.iter().flatten() {
                match state.get(d.as_str()) {
                    Some(1) => return bad(format!("`needs` form a cycle through job `{d}`")),
                    Some(2) => {}
                    _ => stack.push((d.as_str(), false)),
                }
            }
        }
    }
    Ok(())
}

/// A job variable's value with `$VAR` references to the job's other variables expanded (a
/// bounded number of levels); unknown references expand to nothing, `$$` to `$`.
fn expand_job_value(value: &str, vars: &HashMap<String, String>, depth: usize) -> String {
    archway_pipeline::vars::expand(value, &|name| {
        let v = vars.get(name)?;
        Some(if depth < 5 && v.contains('$') {
            expand_job_value(v, vars, depth + 1)
        } else {
            v.clone()
        })
    })
}

/// GitLab's `CI_COMMIT_REF_SLUG`: lowercase, non-alphanumerics to `-`, at most 63 bytes, no
/// leading or trailing `-`.
pub fn ref_slug(r: &str) -> String {
    let s: String = r
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    s.trim_matches('-').to_owned()
}

fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_slugs_follow_gitlab() {
        assert_eq!(
            ref_slug("feature/Add-ARM64_support"),
            "feature-add-arm64-support"
        );
        assert_eq!(ref_slug("-x-"), "x");
        assert_eq!(ref_slug(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn the_pending_note_names_the_missing_tags_and_who_is_connected() {
        let job = JobView {
            id: 1,
            pipeline_id: 1,
            name: "build".into(),
            stage: "build".into(),
            status: JobStatus::Pending,
            when: When::OnSuccess,
            allow_failure: false,
            failure_allowed: false,
            tags: vec!["arm64".into()],
            platform: Some("linux/arm64".into()),
            failure_reason: None,
            exit_code: None,
            created_at_ms: 0,
            queued_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            run_after_ms: None,
            attempts: vec![],
            note: None,
        };
        let amd = RunnerView {
            id: 1,
            name: "amd-1".into(),
            tags: vec![],
            platforms: vec![PlatformOffer {
                platform: "linux/amd64".into(),
                emulated: false,
            }],
            concurrency: 1,
            run_untagged: true,
            online: true,
            draining: false,
            last_seen_ms: None,
            running: 0,
            version: String::new(),
        };
        let note = pending_note(&job, std::slice::from_ref(&amd)).unwrap();
        assert_eq!(
            note,
            "no runner with tags [arm64] for linux/arm64; connected: amd-1 [amd64, x86_64, (untagged jobs)]"
        );
        let mut arm = amd.clone();
        arm.platforms[0].platform = "linux/arm64".into();
        assert_eq!(pending_note(&job, &[amd, arm]), None);
        assert!(
            pending_note(&job, &[])
                .unwrap()
                .ends_with("connected: none")
        );
    }
}
