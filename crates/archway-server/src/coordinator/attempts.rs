//! Attempts: dispatch claims and the payload a runner receives, log appends, attempt ends,
//! lost leases, delayed jobs, the restart grace.

use super::*;
use base64::Engine as _;

impl Coordinator {
    // --- dispatch --------------------------------------------------------------------------

    /// Pending jobs, oldest first, that are not held back by a busy resource group.
    pub async fn candidates(&self, limit: i64) -> Result<Vec<Candidate>, CoordError> {
        let rows = sqlx::query(
            "SELECT j.id, j.tags, j.platform, j.resource_group, p.project FROM jobs j \
             JOIN pipelines p ON p.id = j.pipeline_id \
             WHERE j.status = 'pending' AND j.is_trigger = 0 ORDER BY j.id LIMIT $1",
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
            let Some(row) = sqlx::query(
                "UPDATE jobs SET status = 'running', started_ms = $1, \
                 attempt_count = attempt_count + 1, failure_reason = NULL, exit_code = NULL, \
                 artifact_digest = NULL, artifact_size = NULL, artifact_expires_ms = NULL, \
                 dotenv = NULL, test_summary = NULL \
                 WHERE id = $2 AND status = 'pending' \
                 RETURNING spec, attempt_count, queued_ms, pipeline_id, stage_idx",
            )
            .bind(now)
            .bind(c.job_id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                continue; // another server took it
            };
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
            let fixed = self.pipeline_fixed(pipeline_id).await?;
            let runner = self.runner_fixed(c.runner_id).await?;
            let spec: String = row.try_get("spec")?;
            let def: JobDefinition = parse_json(&spec, "job spec")?;
            let stage_idx: i64 = row.try_get("stage_idx")?;
            let (artifacts, dotenv) = if fixed.has_artifacts {
                self.dependencies(&mut tx, pipeline_id, &def, stage_idx)
                    .await?
            } else {
                (Vec::new(), Vec::new())
            };
            let mut payload = self.payload(
                def,
                pipeline_id,
                &fixed,
                c,
                attempt_id,
                number,
                token,
                &runner.tags,
                dotenv,
            )?;
            payload.dependencies = artifacts;
            out.push((c.runner_id, payload));
        }
        tx.commit().await?;
        // Outside the claim's transaction, so a claim never holds a pipeline row while
        // holding job rows (the order every other change takes the other way round).
        for p in pipelines {
            if self.marked_running.get(&p).is_some() {
                continue;
            }
            sqlx::query(
                "UPDATE pipelines SET status = 'running' WHERE id = $1 AND status IN ('created','pending')",
            )
            .bind(p)
            .execute(&self.db.write)
            .await?;
            self.marked_running.insert(p, ());
        }
        if !out.is_empty() {
            self.events.state_changed();
        }
        Ok(out)
    }

    /// The artifacts and dotenv variables of the jobs `def` depends on (`dependencies:`,
    /// `needs:`, else every job of the earlier stages), from their successful runs.
    async fn dependencies(
        &self,
        tx: &mut Transaction<'static, Any>,
        pipeline_id: i64,
        def: &JobDefinition,
        stage_idx: i64,
    ) -> Result<(Vec<ArtifactRef>, Vec<VarDef>), CoordError> {
        let mut artifacts = Vec::new();
        let mut dotenv: Vec<VarDef> = Vec::new();
        if def.dependencies.as_ref().is_some_and(Vec::is_empty) {
            return Ok((artifacts, dotenv));
        }
        let rows = sqlx::query(
            "SELECT id, name, stage_idx, artifact_digest, artifact_size, artifact_expires_ms, \
             dotenv FROM jobs WHERE pipeline_id = $1 AND status = 'success' \
             AND (artifact_digest IS NOT NULL OR dotenv IS NOT NULL) ORDER BY stage_idx, id",
        )
        .bind(pipeline_id)
        .fetch_all(&mut **tx)
        .await?;
        let now = now_ms();
        for r in rows {
            let name: String = r.try_get("name")?;
            let wanted = match &def.dependencies {
                Some(names) => names.iter().any(|n| archway_api::plan::names_job(n, &name)),
                None => r.try_get::<i64, _>("stage_idx")? < stage_idx,
            };
            if !wanted {
                continue;
            }
            let expired = r
                .try_get::<Option<i64>, _>("artifact_expires_ms")?
                .is_some_and(|e| e <= now);
            if r.try_get::<Option<String>, _>("artifact_digest")?.is_some() && !expired {
                artifacts.push(ArtifactRef {
                    job_id: r.try_get("id")?,
                    job_name: name,
                    size: r.try_get::<Option<i64>, _>("artifact_size")?.unwrap_or(0) as u64,
                });
            }
            if let Some(d) = r.try_get::<Option<String>, _>("dotenv")? {
                dotenv.extend(parse_json::<Vec<VarDef>>(&d, "dotenv variables")?);
            }
        }
        Ok((artifacts, dotenv))
    }

    /// Records the artifact archive `digest` (already in the artifact store) as the job's
    /// artifacts, if `attempt_id` still runs.
    pub async fn set_artifacts(
        &self,
        attempt_id: i64,
        digest: &str,
        size: u64,
        expire_in_secs: Option<u64>,
    ) -> Result<(), CoordError> {
        let expires = expire_in_secs.map(|s| now_ms() + (s as i64).saturating_mul(1000));
        let n = sqlx::query(
            "UPDATE jobs SET artifact_digest = $1, artifact_size = $2, artifact_expires_ms = $3 \
             WHERE id = (SELECT job_id FROM attempts WHERE id = $4 AND state = 'running')",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(expires)
        .bind(attempt_id)
        .execute(&self.db.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(CoordError::Fenced(format!(
                "attempt {attempt_id} no longer runs; its artifacts are not kept"
            )));
        }
        Ok(())
    }

    /// Jobs whose artifacts expired lose their archive reference (the expiry time stays, so
    /// readers are told they expired). Returns how many.
    pub async fn expire_artifacts(&self, now: i64) -> Result<u64, CoordError> {
        let n = sqlx::query(
            "UPDATE jobs SET artifact_digest = NULL, artifact_size = NULL \
             WHERE artifact_digest IS NOT NULL AND artifact_expires_ms IS NOT NULL \
             AND artifact_expires_ms <= $1",
        )
        .bind(now)
        .execute(&self.db.write)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Whether some job still refers to the archive `digest`.
    pub async fn artifact_in_use(&self, digest: &str) -> Result<bool, CoordError> {
        Ok(
            sqlx::query("SELECT id FROM jobs WHERE artifact_digest = $1 LIMIT 1")
                .bind(digest)
                .fetch_optional(&self.db.read)
                .await?
                .is_some(),
        )
    }

    /// The artifact archive of job `job_id`, for readers allowed to see it: `(digest, size)`.
    pub async fn job_artifacts(&self, job_id: i64) -> Result<(String, u64, i64), CoordError> {
        let row = sqlx::query(
            "SELECT pipeline_id, artifact_digest, artifact_size, artifact_expires_ms \
             FROM jobs WHERE id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.db.read)
        .await?
        .ok_or_else(|| CoordError::NotFound(format!("no job {job_id}")))?;
        if row
            .try_get::<Option<i64>, _>("artifact_expires_ms")?
            .is_some_and(|e| e <= now_ms())
        {
            return Err(CoordError::NotFound(format!(
                "the artifacts of job {job_id} have expired (artifacts:expire_in)"
            )));
        }
        let Some(digest) = row.try_get::<Option<String>, _>("artifact_digest")? else {
            return Err(CoordError::NotFound(format!(
                "job {job_id} has no artifacts"
            )));
        };
        Ok((
            digest,
            row.try_get::<Option<i64>, _>("artifact_size")?.unwrap_or(0) as u64,
            row.try_get("pipeline_id")?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn payload(
        &self,
        def: JobDefinition,
        pipeline_id: i64,
        fixed: &PipelineFixed,
        c: &Claim,
        attempt_id: i64,
        number: i64,
        token: String,
        runner_tags: &[String],
        dotenv: Vec<VarDef>,
    ) -> Result<JobPayload, CoordError> {
        let PipelineFixed {
            project,
            git_ref,
            is_tag,
            sha,
            commit_message,
            source,
            masked,
            secrets,
            file_vars,
            has_artifacts: _,
        } = fixed.clone();
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
            ("CI_COMMIT_MESSAGE".into(), commit_message),
            ("CI_RUNNER_TAGS".into(), json(&runner_tags)),
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
        // Dotenv reports of the jobs it depends on override the YAML's variables (as on
        // GitLab); their values are taken literally, as are secrets, which win over all.
        vars.extend(dotenv.into_iter().map(|v| (v.name, v.value)));
        vars.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let always_masked = ["CI_JOB_TOKEN", "CI_REGISTRY_PASSWORD"];
        let variables = vars
            .into_iter()
            .map(|(name, value)| JobVariable {
                masked: always_masked.contains(&name.as_str())
                    || masked.contains(&name)
                    || secrets.contains_key(&name),
                file: file_vars.contains(&name),
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
            source,
            max_log_bytes: self.config.max_log_bytes,
            artifacts: def.artifacts,
            cache: def.cache,
            services: def.services,
            dependencies: Vec::new(),
            max_artifact_bytes: self.config.max_artifact_bytes,
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
        let ack = self
            .append_log_tx(&mut tx, attempt_id, offset, data)
            .await?;
        tx.commit().await?;
        self.events.log_appended(&self.db).await;
        Ok(ack)
    }

    /// [`Coordinator::append_log`] inside a transaction (also used by an attempt's end, which
    /// may carry the last bytes of its log).
    pub(super) async fn append_log_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        attempt_id: i64,
        offset: u64,
        data: &[u8],
    ) -> Result<LogAck, CoordError> {
        let row = sqlx::query(
            "SELECT state, log_received, log_stored, log_truncated FROM attempts WHERE id = $1",
        )
        .bind(attempt_id)
        .fetch_optional(&mut **tx)
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
                .execute(&mut **tx)
                .await?;
            new_stored += keep.len() as u64;
        }
        if keep.len() < fresh.len() && !truncated {
            let marker = format!(
                "\n[archway] the job log reached the {} limit; the rest was dropped\n",
                human_bytes(self.config.max_log_bytes)
            );
            let len = marker.len() as u64;
            sqlx::query("INSERT INTO log_chunks (attempt_id, pos, data) VALUES ($1, $2, $3)")
                .bind(attempt_id)
                .bind(new_stored as i64)
                .bind(marker.into_bytes())
                .execute(&mut **tx)
                .await?;
            new_stored += len;
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
        .execute(&mut **tx)
        .await?;
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
        // The end report may carry the log's last bytes (one request for a short job).
        let mut appended = false;
        if let Some(tail) = &report.log_tail {
            let data = base64::engine::general_purpose::STANDARD
                .decode(&tail.data)
                .map_err(|e| CoordError::BadRequest(format!("log_tail is not base64: {e}")))?;
            if data.len() > 1024 * 1024 {
                return Err(CoordError::TooLarge("log_tail may be at most 1 MiB".into()));
            }
            self.append_log_tx(&mut tx, attempt_id, tail.offset, &data)
                .await?;
            appended = !data.is_empty();
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
        if !report.dotenv.is_empty() && outcome != AttemptOutcome::HandedBack {
            check_dotenv(&report.dotenv)?;
            sqlx::query("UPDATE jobs SET dotenv = $1 WHERE id = $2")
                .bind(json(&report.dotenv))
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(t) = &report.tests
            && outcome != AttemptOutcome::HandedBack
        {
            // A runner's summary is bounded like any other input.
            let t = t.clone().bounded();
            sqlx::query("UPDATE jobs SET test_summary = $1 WHERE id = $2")
                .bind(json(&t))
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
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
        if appended {
            self.events.log_appended(&self.db).await;
        }
        self.after_commit(ready, &[]).await;
        Ok(())
    }

    /// A failed attempt: retried under the user's `retry:`, else the job fails (allowed or not).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn job_failed(
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

    pub(super) async fn requeue(
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

/// GitLab's limits for dotenv reports: at most 50 variables (GitLab.com's default is 50 on
/// paid tiers, 20 on free), names of letters, digits and `_`, 5 KiB in all.
pub(crate) fn check_dotenv(vars: &[VarDef]) -> Result<(), CoordError> {
    if vars.len() > 50 {
        return Err(CoordError::BadRequest(format!(
            "a dotenv report may set at most 50 variables, not {}",
            vars.len()
        )));
    }
    let mut total = 0;
    for v in vars {
        if v.name.is_empty()
            || !v
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(CoordError::BadRequest(format!(
                "dotenv variable name `{}` is not letters, digits and _",
                v.name
            )));
        }
        total += v.name.len() + v.value.len();
    }
    if total > 5 * 1024 {
        return Err(CoordError::BadRequest(
            "a dotenv report may be at most 5 KiB".into(),
        ));
    }
    Ok(())
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
    fn dotenv_reports_are_checked_again_on_the_server() {
        let v = |n: &str, val: &str| VarDef {
            name: n.into(),
            value: val.into(),
        };
        assert!(check_dotenv(&[v("A_1", "x"), v("B", "")]).is_ok());
        for bad in [
            vec![v("", "x")],
            vec![v("A B", "x")],
            vec![v("$(id)", "x")],
            vec![v("A", &"x".repeat(6000))],
            (0..51).map(|i| v(&format!("V{i}"), "x")).collect(),
        ] {
            assert!(
                matches!(check_dotenv(&bad), Err(CoordError::BadRequest(_))),
                "{:?}",
                bad.first().map(|x| &x.name)
            );
        }
    }
}
