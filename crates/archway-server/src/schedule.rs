//! GitLab's scheduling rules as pure functions: when a created job becomes ready (or is
//! skipped), what a pipeline's status is, whether a failed attempt is retried, and which
//! waiting runner a ready job goes to.
//!
//! Nothing here touches the database or the clock; the coordinator loads rows, calls these,
//! and writes the decisions back in the same transaction.

use std::collections::{BTreeSet, HashMap};

use archway_api::{FailureReason, JobStatus, PipelineStatus, When};

/// What the readiness rules need to know about one job of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub id: i64,
    pub stage_idx: i64,
    pub status: JobStatus,
    /// Explicit `needs` (job ids); `None`: every job of the earlier stages.
    pub needs: Option<Vec<i64>>,
    pub when: When,
    pub allow_failure: bool,
    /// Failed, but allowed to.
    pub failure_allowed: bool,
}

/// Whether `dep` no longer holds up a job that depends on it.
fn settled(dep: &JobState, through_needs: bool) -> bool {
    match dep.status {
        s if s.is_final() => true,
        // A manual job that may fail does not block later stages (GitLab: "optional manual
        // job"); a job that `needs` it waits until it has run.
        JobStatus::Manual => !through_needs && dep.allow_failure,
        _ => false,
    }
}

/// Whether `dep` counts as a failure for the jobs after it.
fn failed(dep: &JobState) -> bool {
    match dep.status {
        JobStatus::Failed => !dep.failure_allowed,
        JobStatus::Canceled => true,
        _ => false,
    }
}

/// The transitions the created jobs of a pipeline can take now: each to `Pending`,
/// `Manual`, `Scheduled` or `Skipped`. Applied in order, repeatedly until nothing changes
/// (a skip can settle the next stage), so the result is complete.
pub fn advance(jobs: &[JobState]) -> Vec<(i64, JobStatus)> {
    let mut jobs: Vec<JobState> = jobs.to_vec();
    let index: HashMap<i64, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
    let mut out = Vec::new();
    loop {
        // Per stage: are all jobs settled, did any fail?
        let mut stages: Vec<i64> = jobs.iter().map(|j| j.stage_idx).collect();
        stages.sort_unstable();
        stages.dedup();
        // prefix[i] = (all settled, any failed) over stages < stages[i]
        let mut prefix: HashMap<i64, (bool, bool)> = HashMap::new();
        let (mut all_settled, mut any_failed) = (true, false);
        for s in &stages {
            prefix.insert(*s, (all_settled, any_failed));
            for j in jobs.iter().filter(|j| j.stage_idx == *s) {
                all_settled &= settled(j, false);
                any_failed |= failed(j);
            }
        }
        let mut changed = Vec::new();
        for j in jobs.iter().filter(|j| j.status == JobStatus::Created) {
            let (ready, upstream_failed) = match &j.needs {
                None => prefix.get(&j.stage_idx).copied().unwrap_or((true, false)),
                Some(needs) => {
                    let deps: Vec<&JobState> = needs
                        .iter()
                        .filter_map(|id| index.get(id).map(|&i| &jobs[i]))
                        .collect();
                    (
                        deps.iter().all(|d| settled(d, true)),
                        deps.iter().any(|d| failed(d)),
                    )
                }
            };
            if !ready {
                continue;
            }
            let next = match (j.when, upstream_failed) {
                (When::OnFailure, true) | (When::Always, _) | (When::OnSuccess, false) => {
                    JobStatus::Pending
                }
                (When::Manual, false) => JobStatus::Manual,
                (When::Delayed, false) => JobStatus::Scheduled,
                _ => JobStatus::Skipped,
            };
            changed.push((j.id, next));
        }
        if changed.is_empty() {
            return out;
        }
        for (id, status) in &changed {
            jobs[index[id]].status = *status;
        }
        out.extend(changed);
    }
}

/// A pipeline's status from its jobs' (GitLab's composite status, simplified).
pub fn pipeline_status(jobs: &[JobState], cancel_requested: bool) -> PipelineStatus {
    use JobStatus as S;
    let any = |f: &dyn Fn(&JobState) -> bool| jobs.iter().any(f);
    if any(&|j| matches!(j.status, S::Running | S::Canceling)) {
        return PipelineStatus::Running;
    }
    if any(&|j| matches!(j.status, S::Pending | S::Scheduled)) {
        return if any(&|j| j.status.is_final() && j.status != S::Skipped) {
            PipelineStatus::Running
        } else {
            PipelineStatus::Pending
        };
    }
    // Nothing runs or waits for a runner: what is left waits for a person, or is done.
    if any(&|j| {
        (j.status == S::Manual && !j.allow_failure) || (j.status == S::Created && !cancel_requested)
    }) {
        return PipelineStatus::Manual;
    }
    if cancel_requested || any(&|j| j.status == S::Canceled) {
        return PipelineStatus::Canceled;
    }
    if any(&|j| j.status == S::Failed && !j.failure_allowed) {
        return PipelineStatus::Failed;
    }
    if jobs.is_empty()
        || jobs
            .iter()
            .all(|j| matches!(j.status, S::Skipped | S::Manual))
    {
        return PipelineStatus::Skipped;
    }
    PipelineStatus::Success
}

/// Whether a failure with `reason` is retried under `retry: {max, when}`, given how many
/// times the user's retry budget has been used.
pub fn should_retry(reason: FailureReason, used: u32, max: u32, when: &[String]) -> bool {
    if used >= max {
        return false;
    }
    when.is_empty() || when.iter().any(|w| w == "always" || w == reason.as_str())
}

/// Whether a failed job's failure is allowed (`allow_failure`, `allow_failure:exit_codes`).
pub fn failure_allowed(allow_failure: bool, exit_codes: &[i64], exit_code: Option<i32>) -> bool {
    if !allow_failure {
        return false;
    }
    exit_codes.is_empty() || exit_code.is_some_and(|c| exit_codes.contains(&i64::from(c)))
}

/// A runner waiting for work, as the dispatcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerOffer {
    pub runner_id: i64,
    /// User tags plus the architecture tags of every platform offered.
    pub tags: BTreeSet<String>,
    /// (platform, emulated)
    pub platforms: Vec<(String, bool)>,
    pub run_untagged: bool,
}

impl RunnerOffer {
    /// The platform a runner would run a job on, and whether emulated; `None` if it cannot
    /// take the job (GitLab's rule: the runner has every tag of the job; an untagged job only
    /// on a runner that runs untagged jobs).
    pub fn fit(&self, tags: &[String], platform: Option<&str>) -> Option<(String, bool)> {
        if tags.is_empty() {
            if !self.run_untagged {
                return None;
            }
        } else if !tags.iter().all(|t| self.tags.contains(t)) {
            return None;
        }
        match platform {
            Some(p) => self
                .platforms
                .iter()
                .find(|(q, _)| q == p)
                .map(|(q, e)| (q.clone(), *e)),
            // No platform asked for: the runner's native one (else whatever it offers first).
            None => self
                .platforms
                .iter()
                .find(|(_, e)| !e)
                .or(self.platforms.first())
                .cloned(),
        }
    }
}

/// Picks the runner for a job among `offers` (index, offer): a native fit before an emulated
/// one, earlier offers (longer waiting) first. Returns the index and the platform to run on.
pub fn pick_runner<'a>(
    offers: impl IntoIterator<Item = (usize, &'a RunnerOffer)>,
    tags: &[String],
    platform: Option<&str>,
) -> Option<(usize, String, bool)> {
    let mut emulated = None;
    for (i, o) in offers {
        if let Some((p, e)) = o.fit(tags, platform) {
            if !e {
                return Some((i, p, false));
            }
            if emulated.is_none() {
                emulated = Some((i, p, true));
            }
        }
    }
    emulated
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus as S;

    fn job(id: i64, stage: i64, status: JobStatus, when: When) -> JobState {
        JobState {
            id,
            stage_idx: stage,
            status,
            needs: None,
            when,
            allow_failure: false,
            failure_allowed: false,
        }
    }

    #[test]
    fn stages_run_in_order_and_failures_skip_on_success_jobs() {
        // build (stage 0) ─ test (stage 1) ─ deploy (2), cleanup: on_failure (2)
        let mut jobs = vec![
            job(1, 0, S::Pending, When::OnSuccess),
            job(2, 1, S::Created, When::OnSuccess),
            job(3, 2, S::Created, When::OnSuccess),
            job(4, 2, S::Created, When::OnFailure),
            job(5, 2, S::Created, When::Always),
        ];
        assert_eq!(advance(&jobs), vec![]);
        jobs[0].status = S::Success;
        assert_eq!(advance(&jobs), vec![(2, S::Pending)]);
        jobs[1].status = S::Failed;
        let mut got = advance(&jobs);
        got.sort();
        assert_eq!(got, vec![(3, S::Skipped), (4, S::Pending), (5, S::Pending)]);
    }

    #[test]
    fn allowed_failures_do_not_count_and_skips_cascade() {
        let mut jobs = vec![
            job(1, 0, S::Failed, When::OnSuccess),
            job(2, 1, S::Created, When::OnSuccess),
            job(3, 2, S::Created, When::OnSuccess),
            job(4, 3, S::Created, When::OnFailure),
        ];
        jobs[0].allow_failure = true;
        jobs[0].failure_allowed = true;
        assert_eq!(advance(&jobs), vec![(2, S::Pending)]);
        jobs[0].failure_allowed = false;
        // Skip of 2 settles stage 1, then 3 is skipped too, and 4 (on_failure) runs.
        assert_eq!(
            advance(&jobs),
            vec![(2, S::Skipped), (3, S::Skipped), (4, S::Pending)]
        );
    }

    #[test]
    fn needs_make_a_dag_independent_of_stages() {
        let mut jobs = vec![
            job(1, 0, S::Running, When::OnSuccess),
            job(2, 0, S::Success, When::OnSuccess),
            job(3, 1, S::Created, When::OnSuccess),
            job(4, 1, S::Created, When::OnSuccess),
        ];
        jobs[2].needs = Some(vec![2]);
        jobs[3].needs = Some(vec![]);
        let mut got = advance(&jobs);
        got.sort();
        assert_eq!(got, vec![(3, S::Pending), (4, S::Pending)]);
    }

    #[test]
    fn manual_and_delayed_jobs_wait_and_optional_manual_jobs_do_not_block() {
        let mut jobs = vec![
            job(1, 0, S::Success, When::OnSuccess),
            job(2, 1, S::Created, When::Manual),
            job(3, 1, S::Created, When::Delayed),
            job(4, 2, S::Created, When::OnSuccess),
            job(5, 2, S::Created, When::OnSuccess),
        ];
        jobs[1].allow_failure = true; // GitLab's default for `when: manual` outside rules
        jobs[4].needs = Some(vec![2]);
        let got = advance(&jobs);
        assert_eq!(got, vec![(2, S::Manual), (3, S::Scheduled)]);
        jobs[1].status = S::Manual;
        jobs[2].status = S::Success;
        // 4 goes past the optional manual job; 5 needs it, so it waits.
        assert_eq!(advance(&jobs), vec![(4, S::Pending)]);
        // A blocking manual job (allow_failure: false) holds up the next stage.
        jobs[1].allow_failure = false;
        assert_eq!(advance(&jobs), vec![]);
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Manual);
    }

    #[test]
    fn pipeline_status_follows_its_jobs() {
        let mut jobs = vec![
            job(1, 0, S::Pending, When::OnSuccess),
            job(2, 1, S::Created, When::OnSuccess),
        ];
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Pending);
        jobs[0].status = S::Running;
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Running);
        jobs[0].status = S::Success;
        jobs[1].status = S::Pending;
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Running);
        jobs[1].status = S::Failed;
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Failed);
        jobs[1].allow_failure = true;
        jobs[1].failure_allowed = true;
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Success);
        jobs[1].status = S::Canceled;
        assert_eq!(pipeline_status(&jobs, false), PipelineStatus::Canceled);
        assert_eq!(pipeline_status(&[], false), PipelineStatus::Skipped);
    }

    #[test]
    fn retry_follows_max_and_when() {
        let r = FailureReason::ScriptFailure;
        assert!(should_retry(r, 0, 2, &[]));
        assert!(should_retry(r, 1, 2, &[]));
        assert!(!should_retry(r, 2, 2, &[]));
        assert!(!should_retry(r, 0, 0, &[]));
        let only_system = vec!["runner_system_failure".to_owned()];
        assert!(!should_retry(r, 0, 2, &only_system));
        assert!(should_retry(
            FailureReason::RunnerSystemFailure,
            0,
            2,
            &only_system
        ));
        assert!(should_retry(r, 0, 1, &["always".to_owned()]));
    }

    #[test]
    fn exit_codes_narrow_allow_failure() {
        assert!(failure_allowed(true, &[], Some(1)));
        assert!(failure_allowed(true, &[], None));
        assert!(failure_allowed(true, &[137, 3], Some(3)));
        assert!(!failure_allowed(true, &[137, 3], Some(1)));
        assert!(!failure_allowed(true, &[3], None));
        assert!(!failure_allowed(false, &[], Some(1)));
    }

    fn offer(id: i64, tags: &[&str], platforms: &[(&str, bool)], untagged: bool) -> RunnerOffer {
        RunnerOffer {
            runner_id: id,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platforms: platforms.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
            run_untagged: untagged,
        }
    }

    #[test]
    fn runners_need_every_tag_and_native_runners_come_first() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let amd = offer(
            1,
            &["amd64", "x86_64", "arm64", "aarch64", "docker"],
            &[("linux/amd64", false), ("linux/arm64", true)],
            false,
        );
        let arm = offer(2, &["arm64", "aarch64"], &[("linux/arm64", false)], true);
        let offers = [amd.clone(), arm.clone()];
        // arm64: the native arm runner, although the emulating one waits longer.
        assert_eq!(
            pick_runner(
                offers.iter().enumerate(),
                &tags(&["arm64"]),
                Some("linux/arm64")
            ),
            Some((1, "linux/arm64".into(), false))
        );
        // Only the emulating runner free: it takes the job, emulated.
        assert_eq!(
            pick_runner(
                std::iter::once((0, &amd)),
                &tags(&["arm64"]),
                Some("linux/arm64")
            ),
            Some((0, "linux/arm64".into(), true))
        );
        // Every tag: `docker` only on runner 1.
        assert_eq!(
            pick_runner(
                offers.iter().enumerate(),
                &tags(&["docker", "amd64"]),
                Some("linux/amd64")
            ),
            Some((0, "linux/amd64".into(), false))
        );
        assert_eq!(
            pick_runner(offers.iter().enumerate(), &tags(&["gpu"]), None),
            None
        );
        // Untagged jobs: only runners that take them, on their native platform.
        assert_eq!(
            pick_runner(offers.iter().enumerate(), &[], None),
            Some((1, "linux/arm64".into(), false))
        );
        assert_eq!(pick_runner(std::iter::once((0, &amd)), &[], None), None);
    }
}
