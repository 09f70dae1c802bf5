//! The coordinator's half of parent-child pipelines: `plan_child` plans a child when its
//! trigger job starts — a dynamic child from the generating job's artifact, with the
//! variables the trigger job passes down.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use archway_pipeline::graph::{ChildInclude, Trigger};
use archway_pipeline::{Context, MemoryFiles, has_errors, plan, plan_child};

const PARENT: &str = r#"
stages: [generate, run]
generate:
  stage: generate
  script: [./gen.sh > child.yml]
  artifacts:
    paths: [child.yml]
run:
  stage: run
  needs: [generate]
  variables:
    PARENT_PIPELINE_ID: $CI_PIPELINE_ID
    TARGET: arm64
  trigger:
    include:
      - artifact: child.yml
        job: generate
        inputs:
          suffix: fast
    strategy: depend
"#;

const GENERATED: &str = r#"
spec:
  inputs:
    suffix:
---
workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == "parent_pipeline"
test-$[[ inputs.suffix ]]:
  tags: [$TARGET]
  needs:
    - pipeline: $PARENT_PIPELINE_ID
      job: generate
  script: [make test]
"#;

fn child_of(files: &MemoryFiles) -> (Context, Box<archway_pipeline::ChildPipeline>) {
    let (p, diags) = plan(".gitlab-ci.yml", PARENT, files, &Context::push_to("main"));
    assert!(!has_errors(&diags), "{diags:?}");
    let p = p.unwrap();
    let run = p.job("run").unwrap();
    let Some(Trigger::Child(child)) = run.trigger.clone() else {
        panic!("no child trigger: {run:?}");
    };
    (p.context, child)
}

#[test]
fn a_dynamic_child_is_planned_from_the_generating_jobs_artifact() {
    let mut files = MemoryFiles::default();
    let (context, child) = child_of(&files);
    assert!(child.is_dynamic() && !child.is_static());
    assert!(child.pipeline.is_none());
    assert!(
        matches!(child.include[0], ChildInclude::Artifact { ref job, .. } if job == "generate")
    );

    // The coordinator expands what the trigger job passes down, then plans the child.
    let variables: BTreeMap<String, String> = child
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.value.replace("$CI_PIPELINE_ID", "4242")))
        .collect();
    files.0 = HashMap::from([("artifact:generate:child.yml".into(), GENERATED.into())]);
    let (p, diags) = plan_child(&context, &child, variables, &files);
    assert!(!has_errors(&diags), "{diags:?}");
    let p = p.unwrap();
    assert!(
        p.runs,
        "the child's workflow sees CI_PIPELINE_SOURCE=parent_pipeline"
    );
    assert_eq!(p.context.child_depth, 1);
    let job = p.job("test-fast").unwrap();
    assert_eq!(job.platform.as_deref(), Some("linux/arm64"));
    let id = job
        .variables
        .iter()
        .find(|v| v.name == "PARENT_PIPELINE_ID")
        .unwrap();
    assert_eq!(id.value, "4242");
    assert_eq!(job.external_needs.len(), 1);
}

#[test]
fn a_missing_artifact_fails_the_child_with_gitlabs_message() {
    let files = MemoryFiles::default();
    let (context, child) = child_of(&files);
    let (p, diags) = plan_child(&context, &child, BTreeMap::new(), &files);
    assert!(p.is_none() || has_errors(&diags));
    assert!(
        diags.iter().any(|d| d.message
            == "Job `generate` not found in parent pipeline or does not have artifacts!"),
        "{diags:?}"
    );
}

#[test]
fn a_static_childs_ahead_of_time_plan_is_what_plan_child_makes() {
    let parent = "child:\n  trigger:\n    include: ci/child.yml\n";
    let files = MemoryFiles(HashMap::from([(
        "ci/child.yml".to_owned(),
        "job:\n  script: [echo]\n".to_owned(),
    )]));
    let (p, diags) = plan(".gitlab-ci.yml", parent, &files, &Context::push_to("main"));
    assert!(!has_errors(&diags), "{diags:?}");
    let p = p.unwrap();
    let Some(Trigger::Child(child)) = &p.job("child").unwrap().trigger else {
        panic!("no child");
    };
    assert!(child.is_static());
    let (again, diags) = plan_child(&p.context, child, BTreeMap::new(), &files);
    assert!(!has_errors(&diags), "{diags:?}");
    assert_eq!(again.unwrap().jobs, child.pipeline.as_ref().unwrap().jobs);
}
