//! A planned pipeline (`archway-pipeline`'s job graph) → the jobs the coordinator runs.
//!
//! Pure. The front end has already expanded matrices, resolved `needs` to concrete job names
//! and evaluated rules; this only keeps what scheduling and execution need.
//!
//! Jobs that run no script on a runner — trigger jobs (`trigger:`, child or multi-project
//! pipelines) and jobs that only mirror an upstream pipeline — are left out of the job
//! definitions: the wire type has no field for them yet, and the coordinator does not run
//! downstream pipelines. Callers must check [`runs_on_a_runner`] and refuse (as `archway
//! pipeline run` does) rather than submit a pipeline with jobs missing. When the coordinator
//! runs child pipelines it takes them from the graph (`graph::Job::trigger`, see
//! `graph::ChildPipeline` for the contract).

use archway_pipeline::graph::{self, Pipeline};

use crate::types::{ImageDef, JobDefinition, VarDef, When};

/// Whether a planned job is one a runner executes (not a trigger job, not an upstream
/// pipeline's mirror).
pub fn runs_on_a_runner(job: &graph::Job) -> bool {
    job.trigger.is_none()
        && !job
            .external_needs
            .iter()
            .any(|n| matches!(n, graph::ExternalNeed::Upstream { .. }))
}

/// The jobs of `pipeline` a runner executes, ready to submit (see the module comment for
/// the jobs left out).
pub fn job_definitions(pipeline: &Pipeline) -> Vec<JobDefinition> {
    pipeline
        .jobs
        .iter()
        .filter(|j| runs_on_a_runner(j))
        .map(job_definition)
        .collect()
}

fn job_definition(job: &graph::Job) -> JobDefinition {
    let when = match job.when {
        graph::When::OnSuccess => When::OnSuccess,
        graph::When::OnFailure => When::OnFailure,
        graph::When::Always => When::Always,
        graph::When::Manual => When::Manual,
        graph::When::Delayed => When::Delayed,
    };
    JobDefinition {
        name: job.name.clone(),
        stage: job.stage.clone(),
        image: job.image.as_ref().map(|i| ImageDef {
            name: i.name.clone(),
            entrypoint: i.entrypoint.clone(),
        }),
        before_script: job.before_script.clone(),
        script: job.script.clone(),
        after_script: job.after_script.clone(),
        variables: job
            .variables
            .iter()
            .map(|v| VarDef {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect(),
        tags: job.tags.clone(),
        platform: job.platform.clone(),
        // `depends_on` holds `needs` resolved to concrete jobs (matrix instances included).
        needs: job.needs.as_ref().map(|_| job.depends_on.clone()),
        when,
        start_in_secs: job
            .start_in
            .as_deref()
            .and_then(archway_oci::duration::parse_duration)
            .map(|d| d.as_secs()),
        allow_failure: job.allow_failure.allowed,
        allow_failure_exit_codes: job.allow_failure.exit_codes.clone(),
        retry_max: job.retry.max,
        retry_when: job.retry.when.clone(),
        timeout_secs: job.timeout,
        interruptible: job.interruptible,
        resource_group: job.resource_group.clone(),
    }
}

/// Pipeline-wide variables.
pub fn pipeline_variables(pipeline: &Pipeline) -> Vec<VarDef> {
    pipeline
        .variables
        .iter()
        .map(|v| VarDef {
            name: v.name.clone(),
            value: v.value.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use archway_pipeline::{Context, MemoryFiles};

    fn plan(text: &str) -> Pipeline {
        let (p, diags) = archway_pipeline::plan(
            ".gitlab-ci.yml",
            text,
            &MemoryFiles::default(),
            &Context::push_to("main"),
        );
        assert!(
            diags
                .iter()
                .all(|d| d.severity != archway_pipeline::Severity::Error),
            "{diags:?}"
        );
        p.expect("a pipeline")
    }

    #[test]
    fn stage_jobs_have_no_needs_and_dag_jobs_name_concrete_instances() {
        let p = plan(
            r#"
stages: [build, test]
build:
  stage: build
  tags: [$ARCH]
  parallel:
    matrix:
      - ARCH: [amd64, arm64]
  script: [echo build]
test:
  stage: test
  needs: [build]
  script: [echo test]
  retry: { max: 2, when: [runner_system_failure] }
  allow_failure: { exit_codes: [3] }
  timeout: 10 minutes
late:
  stage: test
  when: delayed
  start_in: 30 seconds
  script: [echo late]
"#,
        );
        let jobs = job_definitions(&p);
        let build: Vec<_> = jobs.iter().filter(|j| j.stage == "build").collect();
        assert_eq!(build.len(), 2);
        assert!(build.iter().all(|j| j.needs.is_none()));
        let arm = build
            .iter()
            .find(|j| j.platform.as_deref() == Some("linux/arm64"))
            .unwrap();
        assert_eq!(arm.tags, ["arm64"]);
        let test = jobs.iter().find(|j| j.name == "test").unwrap();
        let mut needs = test.needs.clone().unwrap();
        needs.sort();
        assert_eq!(needs.len(), 2, "{needs:?}");
        assert!(needs.iter().all(|n| n.starts_with("build")));
        assert_eq!(test.retry_max, 2);
        assert_eq!(test.retry_when, ["runner_system_failure"]);
        assert!(test.allow_failure);
        assert_eq!(test.allow_failure_exit_codes, [3]);
        assert_eq!(test.timeout_secs, Some(600));
        let late = jobs.iter().find(|j| j.name == "late").unwrap();
        assert_eq!(late.when, When::Delayed);
        assert_eq!(late.start_in_secs, Some(30));
    }
}
