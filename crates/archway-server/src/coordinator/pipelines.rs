//! Pipelines in (submission, auto-cancel of redundant ones) and the user's actions on them
//! and their jobs (cancel, retry, play).

use super::*;

impl Coordinator {
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
        let header = PipelineHeader {
            project: req.project.clone(),
            git_ref: req.git_ref.clone(),
            is_tag: req.tag,
            sha: req.sha.clone(),
            commit_message: req.commit_message.clone(),
            source: req.source.clone(),
            masked: json(&req.masked),
            secrets: json(&req.secrets),
            file_vars: json(&req.file_variables),
        };
        let pipeline_id = insert_pipeline_tx(
            &mut tx,
            &header,
            &req.file,
            &req.stages,
            &req.variables,
            &req.jobs,
            None,
            now,
        )
        .await?;
        // Auto-cancel redundant pipelines (GitLab's `conservative` rule): an older active
        // pipeline of this ref is canceled if none of its non-interruptible jobs started.
        let mut canceled_runners = Vec::new();
        if !req.tag {
            let older: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM pipelines WHERE project = $1 AND git_ref = $2 AND is_tag = 0 \
                 AND id < $3 AND parent_job_id IS NULL \
                 AND status IN ('created','pending','running','manual')",
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

    // --- user actions ----------------------------------------------------------------------

    /// Cancels what has not run and asks runners to stop what runs; returns their runner ids.
    pub(super) async fn cancel_pipeline_tx(
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
        let mut runners = runners;
        sqlx::query(
            "UPDATE jobs SET status = 'canceling' WHERE pipeline_id = $1 AND status = 'running'",
        )
        .bind(pipeline_id)
        .execute(&mut **tx)
        .await?;
        // Child pipelines go with their parent (a `depend` trigger job then takes their
        // `canceled`).
        let children: Vec<i64> = sqlx::query_scalar(
            "SELECT p.id FROM pipelines p JOIN jobs j ON j.id = p.parent_job_id \
             WHERE j.pipeline_id = $1 AND p.status IN ('created','pending','running','manual')",
        )
        .bind(pipeline_id)
        .fetch_all(&mut **tx)
        .await?;
        for child in children {
            runners.extend(Box::pin(self.cancel_pipeline_tx(tx, child)).await?);
        }
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
                // A `depend` trigger job runs as long as its child: cancel the child.
                let children: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM pipelines WHERE parent_job_id = $1 \
                     AND status IN ('created','pending','running','manual')",
                )
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?;
                for child in children {
                    runners.extend(self.cancel_pipeline_tx(&mut tx, child).await?);
                }
                runners.extend(
                    sqlx::query_scalar::<_, i64>(
                        "SELECT runner_id FROM attempts WHERE job_id = $1 AND state = 'running'",
                    )
                    .bind(job_id)
                    .fetch_all(&mut *tx)
                    .await?,
                );
                sqlx::query("UPDATE attempts SET cancel_requested = 1 WHERE job_id = $1 AND state = 'running'")
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE jobs SET status = 'canceling' WHERE id = $1 AND status = 'running'",
                )
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

    pub(super) async fn retry_jobs_tx(
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
    let total = count_jobs(&req.jobs, 0)?;
    if total > max_jobs {
        return bad(format!(
            "{total} jobs (child pipelines' included) is more than the limit of {max_jobs}"
        ));
    }
    validate_jobs(&req.stages, &req.jobs)
}

/// Jobs in `jobs` and in the child pipelines they trigger; refuses children nested deeper
/// than GitLab allows (2 levels).
fn count_jobs(jobs: &[JobDefinition], depth: usize) -> Result<usize, CoordError> {
    let mut n = jobs.len();
    for j in jobs {
        if let Some(t) = &j.trigger {
            if depth >= 2 {
                return Err(CoordError::BadRequest(format!(
                    "job `{}` would start a child pipeline 3 levels deep; GitLab allows 2",
                    j.name
                )));
            }
            n += count_jobs(&t.jobs, depth + 1)?;
        }
    }
    Ok(n)
}

/// The checks of [`validate_pipeline`] that also apply to a child pipeline's jobs.
fn validate_jobs(stage_list: &[String], jobs: &[JobDefinition]) -> Result<(), CoordError> {
    let bad = |m: String| Err(CoordError::BadRequest(m));
    let stages: HashSet<&str> = stage_list.iter().map(String::as_str).collect();
    let mut names = HashSet::new();
    for j in jobs {
        if !names.insert(j.name.as_str()) {
            return bad(format!("two jobs are named `{}`", j.name));
        }
        if !stages.contains(j.stage.as_str()) {
            return bad(format!(
                "job `{}` is in stage `{}`, which `stages` does not list",
                j.name, j.stage
            ));
        }
        match &j.trigger {
            Some(t) => {
                if !j.script.is_empty() {
                    return bad(format!("job `{}` has both a script and a trigger", j.name));
                }
                validate_jobs(&t.stages, &t.jobs).map_err(|e| match e {
                    CoordError::BadRequest(m) => {
                        CoordError::BadRequest(format!("the child pipeline of `{}`: {m}", j.name))
                    }
                    e => e,
                })?;
            }
            None if j.script.is_empty() => {
                return bad(format!("job `{}` has no script", j.name));
            }
            None => {}
        }
        if let Some(p) = &j.platform {
            p.parse::<archway_oci::Platform>().map_err(|e| {
                CoordError::BadRequest(format!("job `{}`: platform `{p}`: {e}", j.name))
            })?;
        }
    }
    for j in jobs {
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
    let index: HashMap<&str, &JobDefinition> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let mut state: HashMap<&str, u8> = HashMap::new();
    for start in jobs.iter().map(|j| j.name.as_str()) {
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

/// What a pipeline shares with the child pipelines it creates.
pub(super) struct PipelineHeader {
    pub(super) project: String,
    pub(super) git_ref: String,
    pub(super) is_tag: bool,
    pub(super) sha: String,
    pub(super) commit_message: String,
    pub(super) source: Option<String>,
    /// JSON, as stored.
    pub(super) masked: String,
    /// JSON, as stored.
    pub(super) secrets: String,
    /// JSON, as stored.
    pub(super) file_vars: String,
}

/// Stores a pipeline (a child when `parent_job_id` is given) and its jobs, all `created`;
/// returns its id.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_pipeline_tx(
    tx: &mut Transaction<'static, Any>,
    header: &PipelineHeader,
    file: &str,
    stages: &[String],
    variables: &[archway_api::VarDef],
    jobs: &[JobDefinition],
    parent_job_id: Option<i64>,
    now: i64,
) -> Result<i64, CoordError> {
    let pipeline_id: i64 = sqlx::query_scalar(
        "INSERT INTO pipelines (project, git_ref, is_tag, sha, commit_message, source, file, \
         stages, variables, masked, secrets, status, created_ms, parent_job_id, file_vars) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'created', $12, $13, $14) \
         RETURNING id",
    )
    .bind(&header.project)
    .bind(&header.git_ref)
    .bind(i64::from(header.is_tag))
    .bind(&header.sha)
    .bind(&header.commit_message)
    .bind(header.source.clone())
    .bind(file)
    .bind(json(&stages))
    .bind(json(&variables))
    .bind(&header.masked)
    .bind(&header.secrets)
    .bind(now)
    .bind(parent_job_id)
    .bind(&header.file_vars)
    .fetch_one(&mut **tx)
    .await?;
    let stage_idx: HashMap<&str, i64> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as i64))
        .collect();
    let mut ids: HashMap<&str, i64> = HashMap::new();
    for j in jobs {
        let mut tags = j.tags.clone();
        tags.sort();
        tags.dedup();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (pipeline_id, name, stage, stage_idx, status, spec, tags, \
             platform, when_run, allow_failure, interruptible, resource_group, created_ms, \
             is_trigger) \
             VALUES ($1, $2, $3, $4, 'created', $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
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
        .bind(i64::from(j.trigger.is_some()))
        .fetch_one(&mut **tx)
        .await?;
        ids.insert(&j.name, id);
    }
    for j in jobs {
        if let Some(needs) = &j.needs {
            let need_ids: Vec<i64> = needs
                .iter()
                .filter_map(|n| ids.get(n.as_str()).copied())
                .collect();
            sqlx::query("UPDATE jobs SET needs = $1 WHERE id = $2")
                .bind(json(&need_ids))
                .bind(ids[j.name.as_str()])
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(pipeline_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use archway_api::TriggerDefinition;

    fn job(name: &str, stage: &str) -> JobDefinition {
        JobDefinition {
            name: name.into(),
            stage: stage.into(),
            script: vec!["true".into()],
            ..JobDefinition::default()
        }
    }

    fn trigger(name: &str, jobs: Vec<JobDefinition>) -> JobDefinition {
        let mut j = job(name, "test");
        j.script.clear();
        j.trigger = Some(Box::new(TriggerDefinition {
            depend: true,
            file: "ci/child.yml".into(),
            stages: vec!["test".into()],
            jobs,
            variables: vec![],
            dynamic: None,
        }));
        j
    }

    fn submit(jobs: Vec<JobDefinition>) -> SubmitPipeline {
        SubmitPipeline {
            project: "team/app".into(),
            git_ref: "main".into(),
            tag: false,
            sha: String::new(),
            commit_message: String::new(),
            source: None,
            file: ".gitlab-ci.yml".into(),
            stages: vec!["test".into()],
            jobs,
            variables: vec![],
            masked: vec![],
            secrets: Default::default(),
            file_variables: vec![],
        }
    }

    fn refused(req: &SubmitPipeline, max_jobs: usize) -> String {
        match validate_pipeline(req, max_jobs) {
            Err(CoordError::BadRequest(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn trigger_jobs_and_their_children_are_checked_like_pipelines() {
        // Two levels of children are GitLab's limit; a third is refused.
        let grandchild = trigger("to-grandchild", vec![job("leaf", "test")]);
        let ok = submit(vec![trigger("to-child", vec![grandchild.clone()])]);
        validate_pipeline(&ok, 100).unwrap();
        let too_deep = submit(vec![trigger(
            "to-child",
            vec![trigger(
                "to-grandchild",
                vec![trigger("deeper", vec![job("leaf", "test")])],
            )],
        )]);
        assert!(refused(&too_deep, 100).contains("3 levels deep"));
        // The job limit counts the children's jobs.
        assert!(refused(&ok, 2).contains("3 jobs (child pipelines' included)"));
        // A trigger job runs no script; a child's jobs are checked as a pipeline's are.
        let mut both = trigger("both", vec![job("leaf", "test")]);
        both.script = vec!["echo".into()];
        assert!(refused(&submit(vec![both]), 100).contains("both a script and a trigger"));
        let bad_child = submit(vec![trigger("t", vec![job("leaf", "nowhere")])]);
        assert_eq!(
            refused(&bad_child, 100),
            "the child pipeline of `t`: job `leaf` is in stage `nowhere`, which `stages` does not list"
        );
        // A child with no jobs is accepted: its trigger job fails when it starts, as in GitLab.
        validate_pipeline(&submit(vec![trigger("empty", vec![])]), 100).unwrap();
    }
}
