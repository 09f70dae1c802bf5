//! A planned pipeline (`archway-pipeline`'s job graph) → the jobs the coordinator runs.
//!
//! Pure. The front end has already expanded matrices, resolved `needs` to concrete job names
//! and evaluated rules; this only keeps what scheduling and execution need.

use archway_pipeline::graph::{self, Pipeline};

use crate::types::{ArtifactsDef, CacheDef, ImageDef, JobDefinition, VarDef, When};

/// Whether `job` (a concrete job name) is the job `name` refers to in `needs:` or
/// `dependencies:`: the same name, or an instance of it (`build: [arm64]` of a matrix,
/// `test 2/3` of `parallel: 3`).
pub fn names_job(name: &str, job: &str) -> bool {
    if job == name {
        return true;
    }
    let Some(rest) = job.strip_prefix(name) else {
        return false;
    };
    if rest.starts_with(": [") {
        return true;
    }
    rest.strip_prefix(' ')
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(i, n)| {
            !i.is_empty()
                && !n.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
                && n.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The jobs of `pipeline`, ready to submit, and the pipeline-wide variables.
///
/// Each job also gets the predefined variables only the plan knows, before its own (which
/// override them): `CI_PIPELINE_SOURCE`, `CI_DEFAULT_BRANCH`, and `CI_NODE_INDEX` /
/// `CI_NODE_TOTAL` for the instances of a `parallel:` or `parallel:matrix` job.
pub fn job_definitions(pipeline: &Pipeline) -> Vec<JobDefinition> {
    pipeline
        .jobs
        .iter()
        .map(|job| {
            let mut def = job_definition(job);
            let mut pre = vec![
                VarDef {
                    name: "CI_PIPELINE_SOURCE".into(),
                    value: pipeline.context.source.clone(),
                },
                VarDef {
                    name: "CI_DEFAULT_BRANCH".into(),
                    value: pipeline.context.default_branch.clone(),
                },
            ];
            let siblings: Vec<&graph::Job> = pipeline
                .jobs
                .iter()
                .filter(|j| j.base_name == job.base_name)
                .collect();
            if siblings.len() > 1 || job.name != job.base_name {
                let index = siblings
                    .iter()
                    .position(|j| j.name == job.name)
                    .unwrap_or(0);
                pre.push(VarDef {
                    name: "CI_NODE_INDEX".into(),
                    value: (index + 1).to_string(),
                });
                pre.push(VarDef {
                    name: "CI_NODE_TOTAL".into(),
                    value: siblings.len().to_string(),
                });
            }
            pre.append(&mut def.variables);
            def.variables = pre;
            def
        })
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
        artifacts: job.artifacts.as_ref().map(|a| ArtifactsDef {
            paths: a.paths.clone(),
            exclude: a.exclude.clone(),
            untracked: a.untracked,
            when: a.when.clone(),
            expire_in_secs: a
                .expire_in
                .as_deref()
                .filter(|e| *e != "never")
                .and_then(archway_oci::duration::parse_duration)
                .map(|d| d.as_secs()),
            name: a.name.clone(),
            dotenv: a.dotenv.clone(),
            junit: a.junit.clone(),
        }),
        // `dependencies:` names them; else `needs:` with `artifacts: true` (the default);
        // else every job of the earlier stages.
        dependencies: match (&job.dependencies, &job.needs) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(needs)) => Some(
                needs
                    .iter()
                    .filter(|n| n.artifacts)
                    .map(|n| n.job.clone())
                    .collect(),
            ),
            (None, None) => None,
        },
        cache: job
            .cache
            .iter()
            .map(|c| CacheDef {
                key: c.key.clone(),
                paths: c.paths.clone(),
                policy: c.policy.clone(),
                when: c.when.clone(),
            })
            .collect(),
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
    fn jobs_get_the_predefined_variables_only_the_plan_knows() {
        let p = plan("build:\n  parallel: 3\n  script: [x]\nlint:\n  script: [x]\n");
        let jobs = job_definitions(&p);
        let var = |j: &JobDefinition, n: &str| {
            j.variables
                .iter()
                .find(|v| v.name == n)
                .map(|v| v.value.clone())
        };
        let second = jobs.iter().find(|j| j.name == "build 2/3").unwrap();
        assert_eq!(var(second, "CI_NODE_INDEX").as_deref(), Some("2"));
        assert_eq!(var(second, "CI_NODE_TOTAL").as_deref(), Some("3"));
        assert_eq!(var(second, "CI_PIPELINE_SOURCE").as_deref(), Some("push"));
        assert_eq!(var(second, "CI_DEFAULT_BRANCH").as_deref(), Some("main"));
        let lint = jobs.iter().find(|j| j.name == "lint").unwrap();
        assert_eq!(var(lint, "CI_NODE_INDEX"), None);
    }

    #[test]
    fn dependency_names_match_their_instances_only() {
        assert!(names_job("build", "build"));
        assert!(names_job("build", "build: [arm64]"));
        assert!(names_job("test", "test 2/3"));
        assert!(!names_job("build", "build-docs"));
        assert!(!names_job("build", "build 2"));
        assert!(!names_job("test", "test a/b"));
        assert!(!names_job("build: [arm64]", "build"));
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
