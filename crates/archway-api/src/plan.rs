//! A planned pipeline (`archway-pipeline`'s job graph) → the jobs the coordinator runs.
//!
//! Pure. The front end has already expanded matrices, resolved `needs` to concrete job names
//! and evaluated rules; this only keeps what scheduling and execution need.
//!
//! A trigger job of a child pipeline planned ahead of time (`trigger: include:` of local,
//! template or remote files) goes with its child's job definitions
//! ([`TriggerDefinition`]); the coordinator creates the child when the trigger job starts.
//! A dynamic child pipeline (`include: artifact:`) goes with what the coordinator needs to
//! plan it when its trigger job starts ([`DynamicChild`]).
//! Jobs the coordinator cannot run yet — another project's pipeline (`trigger: project:`),
//! a job that mirrors an upstream pipeline — are left out: callers must check
//! [`not_submittable`] and refuse (as `archway pipeline run` does) rather than submit a
//! pipeline with jobs missing.

use archway_pipeline::graph::{self, Pipeline};

use crate::types::{
    ArtifactsDef, CacheDef, DynamicChild, ImageDef, JobDefinition, ServiceDef, TriggerDefinition,
    VarDef, When,
};

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

/// Whether a planned job is one a runner executes (not a trigger job, not an upstream
/// pipeline's mirror).
pub fn runs_on_a_runner(job: &graph::Job) -> bool {
    job.trigger.is_none()
        && !job
            .external_needs
            .iter()
            .any(|n| matches!(n, graph::ExternalNeed::Upstream { .. }))
}

/// Why the coordinator cannot run `job` (or a job of the child pipeline it triggers), if
/// it cannot: a sentence naming the job.
pub fn not_submittable(job: &graph::Job) -> Option<String> {
    for need in &job.external_needs {
        match need {
            graph::ExternalNeed::Upstream { project } => {
                return Some(format!(
                    "job `{}` mirrors the upstream pipeline of project `{project}`, which needs a server that hosts that project",
                    job.name
                ));
            }
            graph::ExternalNeed::Project {
                project,
                job: other,
                ..
            } => {
                return Some(format!(
                    "job `{}` needs job `{other}` of project `{project}`, which needs a server that hosts that project",
                    job.name
                ));
            }
            graph::ExternalNeed::Pipeline {
                job: other,
                artifacts: true,
                ..
            } => {
                return Some(format!(
                    "job `{}` needs the artifacts of job `{other}` of another pipeline, which the server does not pass between pipelines yet",
                    job.name
                ));
            }
            graph::ExternalNeed::Pipeline { .. } => {}
        }
    }
    match &job.trigger {
        None => None,
        Some(graph::Trigger::Project(p)) => Some(format!(
            "job `{}` triggers a pipeline of project `{}`, which needs a server that hosts that project",
            job.name, p.project
        )),
        Some(graph::Trigger::Child(c)) if c.is_dynamic() => None,
        Some(graph::Trigger::Child(c)) => match &c.pipeline {
            None => Some(format!(
                "job `{}`: its child pipeline could not be planned ({})",
                job.name,
                c.not_planned.as_deref().unwrap_or("no reason given")
            )),
            Some(child) => child.jobs.iter().find_map(|j| {
                not_submittable(j)
                    .map(|why| format!("in the child pipeline of `{}`: {why}", job.name))
            }),
        },
    }
}

/// The jobs of `pipeline` the coordinator runs, trigger jobs of planned child pipelines
/// included, ready to submit (see the module comment for the jobs left out).
///
/// Each job also gets the predefined variables only the plan knows, before its own (which
/// override them): `CI_PIPELINE_SOURCE`, `CI_DEFAULT_BRANCH`, and `CI_NODE_INDEX` /
/// `CI_NODE_TOTAL` for the instances of a `parallel:` or `parallel:matrix` job.
pub fn job_definitions(pipeline: &Pipeline) -> Vec<JobDefinition> {
    pipeline
        .jobs
        .iter()
        .filter(|j| not_submittable(j).is_none())
        .map(|job| {
            let mut def = job_definition(job);
            if let Some(t) = def.trigger.as_mut()
                && let Some(graph::Trigger::Child(c)) = &job.trigger
                && c.is_dynamic()
            {
                t.dynamic = Some(Box::new(DynamicChild {
                    context: pipeline.context.clone(),
                    child: (**c).clone(),
                }));
            }
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

/// A trigger job's child, if it is one the coordinator can create.
fn trigger_definition(job: &graph::Job) -> Option<Box<TriggerDefinition>> {
    let Some(graph::Trigger::Child(c)) = &job.trigger else {
        return None;
    };
    // A dynamic child is planned by the coordinator (`job_definitions` fills `dynamic`).
    let (stages, jobs) = match c.pipeline.as_deref() {
        Some(child) if child.runs => (child.stages.clone(), job_definitions(child)),
        Some(child) => (child.stages.clone(), Vec::new()),
        None if c.is_dynamic() => (Vec::new(), Vec::new()),
        None => return None,
    };
    Some(Box::new(TriggerDefinition {
        dynamic: None,
        depend: c.strategy.is_some(),
        file: c
            .include
            .iter()
            .map(graph::ChildInclude::describe)
            .collect::<Vec<_>>()
            .join(", "),
        stages,
        jobs,
        variables: c
            .variables
            .iter()
            .map(|v| VarDef {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect(),
    }))
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
            user: i.user.clone(),
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
                fallback_keys: c.fallback_keys.clone(),
            })
            .collect(),
        services: job
            .services
            .iter()
            .map(|s| ServiceDef {
                name: s.name.clone(),
                alias: s.alias.clone(),
                entrypoint: s.entrypoint.clone(),
                command: s.command.clone(),
                variables: s
                    .variables
                    .iter()
                    .map(|(k, v)| VarDef {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })
            .collect(),
        trigger: trigger_definition(job),
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

    fn plan_with(text: &str, files: &[(&str, &str)]) -> Pipeline {
        let files = MemoryFiles(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let (p, diags) =
            archway_pipeline::plan(".gitlab-ci.yml", text, &files, &Context::push_to("main"));
        assert!(
            diags
                .iter()
                .all(|d| d.severity != archway_pipeline::Severity::Error),
            "{diags:?}"
        );
        p.expect("a pipeline")
    }

    #[test]
    fn a_static_child_goes_with_its_trigger_job() {
        let p = plan_with(
            r#"
stages: [build, test]
build:
  stage: build
  script: [make]
child:
  stage: test
  variables:
    PARENT_PIPELINE_ID: $CI_PIPELINE_ID
  trigger:
    include: ci/child.yml
    strategy: depend
nowait:
  stage: test
  trigger:
    include: [{local: ci/empty.yml}]
"#,
            &[
                (
                    "ci/child.yml",
                    "unit:\n  script: [make test]\nlint:\n  stage: build\n  script: [make lint]\n",
                ),
                (
                    "ci/empty.yml",
                    "never:\n  script: [x]\n  rules: [{if: $NOPE}]\n",
                ),
            ],
        );
        assert!(p.jobs.iter().all(|j| not_submittable(j).is_none()));
        let jobs = job_definitions(&p);
        assert_eq!(jobs.len(), 3);
        let child = jobs.iter().find(|j| j.name == "child").unwrap();
        assert!(child.script.is_empty());
        let t = child.trigger.as_deref().unwrap();
        assert!(t.depend);
        assert_eq!(t.file, "ci/child.yml");
        let mut names: Vec<_> = t.jobs.iter().map(|j| j.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["lint", "unit"]);
        assert!(
            t.variables
                .iter()
                .any(|v| v.name == "PARENT_PIPELINE_ID" && v.value == "$CI_PIPELINE_ID")
        );
        // The passed-down variable reaches the child's jobs as planned, for the coordinator
        // to expand.
        let unit = t.jobs.iter().find(|j| j.name == "unit").unwrap();
        assert!(
            unit.variables
                .iter()
                .any(|v| v.name == "PARENT_PIPELINE_ID" && v.value == "$CI_PIPELINE_ID")
        );
        // A child whose rules leave no job goes with no jobs (the trigger job fails there).
        let nowait = jobs.iter().find(|j| j.name == "nowait").unwrap();
        let t = nowait.trigger.as_deref().unwrap();
        assert!(!t.depend);
        assert!(t.jobs.is_empty());
        assert!(
            jobs.iter()
                .find(|j| j.name == "build")
                .unwrap()
                .trigger
                .is_none()
        );
    }

    #[test]
    fn unrunnable_jobs_are_named_and_dynamic_children_carry_their_plan_inputs() {
        let p = plan_with(
            r#"
stages: [generate, run]
generate:
  stage: generate
  script: [./gen.sh]
  artifacts: {paths: [child.yml]}
dynamic:
  stage: run
  needs: [generate]
  trigger:
    include: [{artifact: child.yml, job: generate}]
other-project:
  stage: run
  trigger: group/docs
cross-project:
  stage: run
  needs: [{project: group/config, job: render, ref: main}]
  script: [./deploy.sh]
"#,
            &[],
        );
        let why = |n: &str| not_submittable(p.job(n).unwrap());
        assert_eq!(why("generate"), None);
        // A dynamic child goes to the coordinator with what it needs to plan it.
        assert_eq!(why("dynamic"), None);
        assert!(
            why("other-project")
                .unwrap()
                .contains("project `group/docs`")
        );
        assert!(
            why("cross-project")
                .unwrap()
                .contains("job `render` of project `group/config`")
        );
        let defs = job_definitions(&p);
        let names: Vec<_> = defs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["generate", "dynamic"]);
        let t = defs[1].trigger.as_ref().unwrap();
        assert!(t.jobs.is_empty());
        let d = t.dynamic.as_ref().unwrap();
        assert!(d.child.is_dynamic());
        assert_eq!(d.context.source, "push");
        // It survives the wire (the coordinator reads the job spec back).
        let back: JobDefinition =
            serde_json::from_str(&serde_json::to_string(&defs[1]).unwrap()).unwrap();
        assert_eq!(back.trigger.unwrap().dynamic, t.dynamic);
    }
}
