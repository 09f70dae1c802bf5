//! What the API shows: pipelines, jobs and their attempts, runners, logs, gauges.

use super::*;

impl Coordinator {
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
        let downstream: HashMap<i64, i64> = sqlx::query(
            "SELECT parent_job_id, max(id) AS child FROM pipelines WHERE parent_job_id IN \
             (SELECT id FROM jobs WHERE pipeline_id = $1 AND is_trigger = 1) GROUP BY parent_job_id",
        )
        .bind(id)
        .fetch_all(&self.db.read)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("parent_job_id")?, r.try_get("child")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        for r in rows {
            let mut j = job_view(&r)?;
            j.downstream_pipeline_id = downstream.get(&j.id).copied();
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
        j.downstream_pipeline_id =
            sqlx::query_scalar("SELECT max(id) FROM pipelines WHERE parent_job_id = $1")
                .bind(id)
                .fetch_one(&self.db.read)
                .await?;
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
    pub(super) async fn attempts_of(
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

pub(super) fn pipeline_view(r: &sqlx::any::AnyRow) -> Result<PipelineView, CoordError> {
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
        parent_job_id: r.try_get("parent_job_id")?,
        jobs: Vec::new(),
    })
}

pub(super) fn job_view(r: &sqlx::any::AnyRow) -> Result<JobView, CoordError> {
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
        // Why the job ended as it did, when the coordinator knows (a dynamic child that
        // could not be planned); a pending job's note is computed when shown.
        note: r.try_get::<Option<String>, _>("message")?,
        artifacts: artifacts_view(r)?,
        downstream_pipeline_id: None,
        tests: match r.try_get::<Option<String>, _>("test_summary")? {
            Some(t) => Some(parse_json(&t, "test summary")?),
            None => None,
        },
    })
}

fn artifacts_view(r: &sqlx::any::AnyRow) -> Result<Option<ArtifactsView>, CoordError> {
    let digest: Option<String> = r.try_get("artifact_digest")?;
    let dotenv: Option<String> = r.try_get("dotenv")?;
    if digest.is_none() && dotenv.is_none() {
        return Ok(None);
    }
    let vars: Vec<VarDef> = match dotenv {
        Some(d) => parse_json(&d, "dotenv variables")?,
        None => Vec::new(),
    };
    Ok(Some(ArtifactsView {
        digest: digest.unwrap_or_default(),
        size: r.try_get::<Option<i64>, _>("artifact_size")?.unwrap_or(0) as u64,
        expires_at_ms: r.try_get("artifact_expires_ms")?,
        dotenv: vars.into_iter().map(|v| v.name).collect(),
    }))
}

/// Why a pending job waits, when no online runner could take it.
pub(super) fn pending_note(job: &JobView, online: &[RunnerView]) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            artifacts: None,
            downstream_pipeline_id: None,
            tests: None,
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
