//! The job graph: the contract between the pipeline front ends and the coordinator.
//!
//! Every job is concrete (matrix and `parallel` expanded, `extends`/`default`/`!reference`
//! resolved, rules evaluated), with the runner tags it needs and the platform they imply, and
//! the edges the scheduler must respect (`depends_on`).
//!
//! A job with a [`trigger`](Job::trigger) runs no script: it starts a downstream pipeline.
//! For a child pipeline ([`Trigger::Child`]) the graph carries where the child's
//! configuration comes from, what is passed down, and — when the configuration is in the
//! repository — the child planned now; [`ChildPipeline`] documents what the coordinator does
//! with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::diag::Span;

/// Which syntax a pipeline was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    GitlabCi,
    Codecatalyst,
}

/// What a pipeline was evaluated with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Pipeline inputs (`--input NAME=VALUE`, or what a server run passes) for the main file's
    /// `spec:inputs` header, typed as JSON (`true` is a boolean, `"true"` a string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// 0 for a pipeline, 1 for a child pipeline, 2 for a child's child (GitLab's deepest).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub child_depth: u32,
    /// Branch being built (`CI_COMMIT_BRANCH`); none for tag pipelines.
    pub branch: Option<String>,
    /// Tag being built (`CI_COMMIT_TAG`).
    pub tag: Option<String>,
    /// `CI_PIPELINE_SOURCE`: push, web, schedule, merge_request_event, api, trigger, …
    pub source: String,
    pub default_branch: String,
    /// Pipeline variables (`--var K=V`): the highest precedence.
    pub variables: BTreeMap<String, String>,
    /// Files changed by the push, for `rules:changes`; `None` means unknown (then `changes`
    /// rules match, as GitLab does for pipelines without a push diff).
    pub changed_files: Option<Vec<String>>,
    /// Files of the repository, for `rules:exists`.
    pub repo_files: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Context {
    /// A push to `main`.
    pub fn push_to(branch: &str) -> Context {
        Context {
            branch: Some(branch.to_owned()),
            tag: None,
            source: "push".to_owned(),
            default_branch: "main".to_owned(),
            ..Context::default()
        }
    }
}

/// Where a variable's value came from, lowest precedence first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Predefined,
    Global,
    Workflow,
    Job,
    Matrix,
    Rule,
    Pipeline,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub value: String,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
    Manual,
    Delayed,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Manual => "manual",
            When::Delayed => "delayed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllowFailure {
    pub allowed: bool,
    /// Exit codes that are allowed to fail (empty: any, when `allowed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retry {
    pub max: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Image {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `image:docker:platform`, normalised (`linux/arm64`): the platform to pull and run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `image:docker:user`: the user the job runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `services:variables` (for the service only).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub variables: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Artifacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_in: Option<String>,
    /// on_success (default), on_failure or always.
    pub when: String,
    /// Also every file git does not track (`artifacts:untracked`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
    /// `artifacts:reports:dotenv` files: their variables go to later jobs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dotenv: Vec<String>,
    /// `artifacts:reports:junit` files: kept with the artifacts and summarised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub junit: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cache {
    pub key: String,
    pub paths: Vec<String>,
    /// pull-push (default), pull or push.
    pub policy: String,
    pub when: String,
    /// Keys tried in order when `key` has no cache yet (`cache:fallback_keys`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_keys: Vec<String>,
}

/// A dependency declared with `needs` (or CodeCatalyst's `DependsOn`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Need {
    pub job: String,
    pub artifacts: bool,
    pub optional: bool,
}

/// One concrete job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Unique name, e.g. `build: [arm64]` for a matrix instance, `test 2/3` for `parallel: 3`.
    pub name: String,
    /// The name written in the file.
    pub base_name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_script: Vec<String>,
    /// Effective variables, sorted by name, with their origin.
    pub variables: Vec<Variable>,
    /// Runner tags required (variables expanded).
    pub tags: Vec<String>,
    /// The platform the tags (or CodeCatalyst's fleet) imply, e.g. `linux/arm64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Explicit `needs`; `None` means stage ordering applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<Need>>,
    /// `dependencies` (whose artifacts to fetch); `None` means all earlier jobs'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// Jobs that must finish before this one starts (from `needs`, else earlier stages).
    pub depends_on: Vec<String>,
    pub when: When,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_in: Option<String>,
    pub allow_failure: AllowFailure,
    pub retry: Retry,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    pub interruptible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// What this job triggers instead of running a script (`trigger:`); such a job has no
    /// script, image, tags or platform, and never goes to a runner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Needs outside this pipeline (`needs:pipeline`, `needs:project`), which `depends_on`
    /// does not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_needs: Vec<ExternalNeed>,
    /// Where the job is defined.
    pub span: Span,
}

/// A need on a job of another pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExternalNeed {
    /// `needs: [{pipeline: $PARENT_PIPELINE_ID, job: build}]`: the artifacts of `job` in
    /// another pipeline of the same parent-child hierarchy. `pipeline` is as written (a
    /// variable the coordinator expands in this job's context).
    Pipeline {
        pipeline: String,
        job: String,
        artifacts: bool,
    },
    /// `needs: [{project: group/app, job: build, ref: main}]`: the artifacts of `job` in the
    /// latest successful pipeline of another project for `ref`.
    Project {
        project: String,
        job: String,
        #[serde(rename = "ref")]
        git_ref: String,
        artifacts: bool,
    },
    /// `needs: [{pipeline: group/app}]` (a job with no script): the job mirrors the status of
    /// the upstream pipeline of `project` that triggered this one.
    Upstream { project: String },
}

/// What a trigger job starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A child pipeline of this project (`trigger: include:`).
    Child(Box<ChildPipeline>),
    /// A pipeline of another project (`trigger: project:`): only a server that hosts that
    /// project can run it.
    Project(ProjectTrigger),
}

/// How a trigger job's status follows its downstream pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerStrategy {
    /// `strategy: depend`: the trigger job waits and takes the downstream pipeline's status.
    Depend,
    /// `strategy: mirror`: as `depend`, and the job also mirrors running/manual states.
    Mirror,
}

/// `trigger:forward`: what is passed down besides the trigger job's own variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The trigger job's YAML variables (global and job-level) are passed down (default).
    pub yaml_variables: bool,
    /// The parent pipeline's own variables (`--var`, a schedule's, a manual run's) too.
    pub pipeline_variables: bool,
}

impl Default for Forward {
    fn default() -> Self {
        Forward {
            yaml_variables: true,
            pipeline_variables: false,
        }
    }
}

/// Where a child pipeline's configuration comes from: one entry of `trigger: include:`.
/// `inputs` are the values for that file's `spec:inputs`, typed as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChildInclude {
    /// A file of this repository.
    Local {
        path: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
    /// A GitLab CI template.
    Template {
        name: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
    /// A file fetched over HTTP(S).
    Remote {
        url: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
    /// A file of another project on the server.
    Project {
        project: String,
        file: String,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        git_ref: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
    /// A CI/CD component (from a project on the server).
    Component {
        component: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
    /// A file generated by an earlier job of the parent pipeline: a dynamic child pipeline.
    Artifact {
        job: String,
        path: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, serde_json::Value>,
    },
}

impl ChildInclude {
    /// A short description: `ci/child.yml`, `artifact generated.yml of job generate`, …
    pub fn describe(&self) -> String {
        match self {
            ChildInclude::Local { path, .. } => path.clone(),
            ChildInclude::Template { name, .. } => format!("template {name}"),
            ChildInclude::Remote { url, .. } => url.clone(),
            ChildInclude::Project { project, file, .. } => format!("{project}:{file}"),
            ChildInclude::Component { component, .. } => format!("component {component}"),
            ChildInclude::Artifact { job, path, .. } => {
                format!("artifact {path} of job {job}")
            }
        }
    }
}

/// A child pipeline (`trigger: include:`), as the coordinator needs it.
///
/// **Contract.** The trigger job is scheduled like any job (stage, `needs`, `rules`, `when`)
/// but never goes to a runner. When it starts, the coordinator:
///
/// 1. expands [`variables`](Self::variables) with the trigger job's variables (predefined
///    ones included: `PARENT_PIPELINE_ID: $CI_PIPELINE_ID` becomes the parent's id);
/// 2. takes the child's plan: [`pipeline`](Self::pipeline), made ahead of time, for a child
///    that is not dynamic; for a dynamic one, [`crate::plan_child`] (parent context, this
///    value, the expanded variables, a [`crate::FileSource`] over the parent's commit that
///    also answers `artifact()` from the generating job's artifacts);
/// 3. creates the child pipeline from that plan (same project, commit and ref; the plan's
///    context says `CI_PIPELINE_SOURCE=parent_pipeline`); if planning failed (an error
///    diagnostic) or the child has no jobs, the trigger job fails with the diagnostics as its
///    reason; a child's own trigger jobs are handled the same way, one level deeper;
/// 4. with a [`strategy`](Self::strategy), keeps the trigger job running until the child
///    finishes and gives it the child's status (success, failed, canceled); without one,
///    the trigger job succeeds once the child is created.
///
/// Canceling the parent cancels its children; retrying the trigger job creates a new child.
/// In the child, a job's [`ExternalNeed::Pipeline`] (`needs:pipeline:job`) names a job of
/// the parent (or a sibling) by pipeline id: the coordinator expands `pipeline` with that
/// job's variables and gives it the named job's artifacts.
///
/// Archway's coordinator (`archway-server`, fed by `archway_api::plan`) does all of this,
/// expanding in step 1 the trigger job's ids (`CI_PIPELINE_ID`, `CI_PIPELINE_IID`,
/// `CI_JOB_ID`, `CI_JOB_NAME`, `CI_JOB_STAGE`) only; a dynamic child is planned from the
/// generating job's artifact archive and the parent's source snapshot (the plan carries this
/// value and the parent's context for it). `needs:pipeline:job` artifacts are not passed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildPipeline {
    /// The child's configuration, merged in this order (at most 3 entries).
    pub include: Vec<ChildInclude>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<TriggerStrategy>,
    pub forward: Forward,
    /// The child's pipeline variables (highest precedence there): the trigger job's YAML
    /// variables (if forwarded) and the parent's pipeline variables (if forwarded), values
    /// expanded as far as the plan knows them; references to variables only the trigger job
    /// knows at run time (`$CI_PIPELINE_ID`) are kept for the coordinator to expand.
    pub variables: Vec<Variable>,
    /// The child planned now; `None` for a dynamic child (an `artifact` include), a child
    /// nested deeper than GitLab allows, or when planning it failed (see `not_planned`).
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub pipeline: Option<Box<Pipeline>>,
    /// Why `pipeline` is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_planned: Option<String>,
}

impl ChildPipeline {
    /// Whether the child's configuration is generated by a job (an `artifact` include).
    pub fn is_dynamic(&self) -> bool {
        self.include
            .iter()
            .any(|i| matches!(i, ChildInclude::Artifact { .. }))
    }

    /// Whether the plan made ahead of time is the child as it will run: not dynamic, and no
    /// variable passed down waits for a run-time value.
    pub fn is_static(&self) -> bool {
        self.pipeline.is_some()
            && !self.is_dynamic()
            && self.variables.iter().all(|v| !v.value.contains('$'))
    }
}

/// A pipeline of another project (`trigger: project:` or `trigger: group/app`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectTrigger {
    pub project: String,
    /// The branch to run (default: the project's default branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<TriggerStrategy>,
    pub forward: Forward,
    /// Passed down as that pipeline's variables (as for [`ChildPipeline::variables`]).
    pub variables: Vec<Variable>,
    /// That pipeline's inputs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, serde_json::Value>,
}

/// A planned pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pipeline {
    pub format: SourceFormat,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// False when `workflow:rules` decided not to run a pipeline.
    pub runs: bool,
    pub stages: Vec<String>,
    pub jobs: Vec<Job>,
    /// Pipeline-wide variables (predefined, global, workflow, pipeline).
    pub variables: Vec<Variable>,
    pub context: Context,
}

/// Maps a runner tag to the platform it names, if it names one: the whole tag
/// (`amd64`, `x86_64`, `x86-64`, `x86`, `arm64`, `aarch64`), or one of its `-`/`_`/`.`
/// separated words, as in GitLab's hosted `saas-linux-small-arm64` or a team's
/// `sandbox-amd64`.
pub fn platform_for_tag(tag: &str) -> Option<&'static str> {
    fn word(w: &str) -> Option<&'static str> {
        match w {
            "amd64" | "x86_64" | "x86-64" | "x86" | "x64" | "linux/amd64" => Some("linux/amd64"),
            "arm64" | "aarch64" | "arm64v8" | "linux/arm64" | "graviton" => Some("linux/arm64"),
            _ => None,
        }
    }
    let t = tag.to_ascii_lowercase();
    if let Some(p) = word(&t) {
        return Some(p);
    }
    let t = t.replace("x86_64", "amd64").replace("x86-64", "amd64");
    let mut found = None;
    for w in t.split(['-', '_', '.', '/', ':']) {
        if let Some(p) = word(w) {
            if found.is_some_and(|f| f != p) {
                return None; // names both: no single platform
            }
            found = Some(p);
        }
    }
    found
}

/// A cycle in `depends_on`, as the names along it (first repeated at the end).
pub fn find_cycle(jobs: &[Job]) -> Option<Vec<String>> {
    let index: std::collections::HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    // Iterative depth-first search: 0 = new, 1 = on the path, 2 = done.
    let mut state = vec![0u8; jobs.len()];
    for start in 0..jobs.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let deps = &jobs[node].depends_on;
            if *next == deps.len() {
                state[node] = 2;
                path.pop();
                continue;
            }
            let dep = &deps[*next];
            *next += 1;
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            match state[j] {
                0 => {
                    state[j] = 1;
                    path.push((j, 0));
                }
                1 => {
                    let from = path.iter().position(|&(x, _)| x == j).unwrap_or(0);
                    let mut c: Vec<String> = path[from..]
                        .iter()
                        .map(|&(x, _)| jobs[x].name.clone())
                        .collect();
                    c.push(jobs[j].name.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
    }
    None
}

impl Pipeline {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// A readable summary: stages, jobs with their platform and edges, child pipelines
    /// indented under their trigger jobs.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.text_into(&mut out, "", false);
        out
    }

    fn text_into(&self, out: &mut String, indent: &str, child: bool) {
        let kind = match self.format {
            SourceFormat::GitlabCi => "GitLab CI",
            SourceFormat::Codecatalyst => "CodeCatalyst workflow",
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        if child {
            let _ = writeln!(out, "{indent}child pipeline {}{name}", self.file);
        } else {
            let _ = writeln!(out, "{indent}{} ({kind}){name}", self.file);
        }
        if !self.runs {
            let _ = writeln!(out, "{indent}workflow:rules: no pipeline for this context");
            return;
        }
        let plural = |n: usize, w: &str| {
            if n == 1 {
                format!("1 {w}")
            } else {
                format!("{n} {w}s")
            }
        };
        let _ = writeln!(
            out,
            "{indent}{} in {}",
            plural(self.jobs.len(), "job"),
            plural(self.stages.len(), "stage")
        );
        for stage in &self.stages {
            let jobs: Vec<&Job> = self.jobs.iter().filter(|j| &j.stage == stage).collect();
            if jobs.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{indent}stage {stage}");
            for j in jobs {
                let mut line = format!("{indent}  {}", j.name);
                if let Some(p) = &j.platform {
                    line.push_str(&format!("  [{p}]"));
                }
                if !j.tags.is_empty() {
                    line.push_str(&format!("  tags: {}", j.tags.join(", ")));
                }
                if let Some(t) = &j.trigger {
                    line.push_str(&format!("  trigger: {}", t.describe()));
                }
                if j.when != When::OnSuccess {
                    line.push_str(&format!("  when: {}", j.when.as_str()));
                }
                if j.allow_failure.allowed {
                    line.push_str("  allow_failure");
                }
                let _ = writeln!(out, "{line}");
                if !j.depends_on.is_empty() {
                    let via = if j.needs.is_some() { "needs" } else { "after" };
                    let _ = writeln!(out, "{indent}    {via}: {}", j.depends_on.join(", "));
                }
                for n in &j.external_needs {
                    let _ = writeln!(out, "{indent}    needs {}", n.describe());
                }
                if let Some(Trigger::Child(c)) = &j.trigger {
                    let inner = format!("{indent}    ");
                    match (&c.pipeline, &c.not_planned) {
                        (Some(p), _) => p.text_into(out, &inner, true),
                        (None, Some(why)) => {
                            let _ = writeln!(out, "{inner}child pipeline not planned: {why}");
                        }
                        (None, None) => {}
                    }
                }
            }
        }
    }

    /// A Mermaid flowchart of the graph; a child pipeline is a subgraph its trigger job
    /// points to (dotted), a dynamic child or another project's pipeline a single node.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        self.mermaid_into(&mut out, "");
        out
    }

    fn mermaid_into(&self, out: &mut String, prefix: &str) {
        let sanitize = |name: &str| -> String {
            name.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        let id = |name: &str| format!("{prefix}j_{}", sanitize(name));
        let label = |s: &str| s.replace('"', "'");
        for stage in &self.stages {
            let jobs: Vec<&Job> = self.jobs.iter().filter(|j| &j.stage == stage).collect();
            if jobs.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "  subgraph {}[\"{}\"]",
                id(&format!("stage {stage}")),
                label(stage)
            );
            for j in jobs {
                let text = match &j.platform {
                    Some(p) => format!("{}<br/>{p}", j.name),
                    None => j.name.clone(),
                };
                let _ = writeln!(out, "    {}[\"{}\"]", id(&j.name), label(&text));
            }
            let _ = writeln!(out, "  end");
        }
        for j in &self.jobs {
            for d in &j.depends_on {
                let _ = writeln!(out, "  {} --> {}", id(d), id(&j.name));
            }
        }
        for j in &self.jobs {
            let Some(t) = &j.trigger else {
                continue;
            };
            let target = format!("{prefix}t_{}", sanitize(&j.name));
            match t {
                Trigger::Child(c) if c.pipeline.is_some() => {
                    if let Some(p) = &c.pipeline {
                        let _ = writeln!(
                            out,
                            "  subgraph {target}[\"child pipeline {}\"]",
                            label(&p.file)
                        );
                        p.mermaid_into(out, &format!("{target}_"));
                        let _ = writeln!(out, "  end");
                    }
                }
                _ => {
                    let _ = writeln!(out, "  {target}[[\"{}\"]]", label(&t.describe()));
                }
            }
            let _ = writeln!(out, "  {} -.-> {target}", id(&j.name));
        }
    }
}

impl Trigger {
    /// A short description: `child pipeline ci/child.yml (strategy: depend)`, …
    pub fn describe(&self) -> String {
        let strategy = |s: &Option<TriggerStrategy>| match s {
            Some(TriggerStrategy::Depend) => " (strategy: depend)",
            Some(TriggerStrategy::Mirror) => " (strategy: mirror)",
            None => "",
        };
        match self {
            Trigger::Child(c) => {
                let from: Vec<String> = c.include.iter().map(ChildInclude::describe).collect();
                let kind = if c.is_dynamic() {
                    "dynamic child pipeline"
                } else {
                    "child pipeline"
                };
                format!("{kind} {}{}", from.join(" + "), strategy(&c.strategy))
            }
            Trigger::Project(p) => format!(
                "project {}{}{}",
                p.project,
                p.branch
                    .as_ref()
                    .map(|b| format!(" branch {b}"))
                    .unwrap_or_default(),
                strategy(&p.strategy)
            ),
        }
    }
}

impl ExternalNeed {
    /// A short description: `job build of pipeline $PARENT_PIPELINE_ID`, …
    pub fn describe(&self) -> String {
        match self {
            ExternalNeed::Pipeline { pipeline, job, .. } => {
                format!("job {job} of pipeline {pipeline}")
            }
            ExternalNeed::Project {
                project,
                job,
                git_ref,
                ..
            } => format!("job {job} of project {project} (ref {git_ref})"),
            ExternalNeed::Upstream { project } => format!("the upstream pipeline of {project}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_tags() {
        for t in ["amd64", "x86_64", "x86-64", "X86", "AMD64"] {
            assert_eq!(platform_for_tag(t), Some("linux/amd64"), "{t}");
        }
        for t in ["arm64", "aarch64", "ARM64"] {
            assert_eq!(platform_for_tag(t), Some("linux/arm64"), "{t}");
        }
        assert_eq!(platform_for_tag("docker"), None);
        assert_eq!(
            platform_for_tag("saas-linux-small-arm64"),
            Some("linux/arm64")
        );
        assert_eq!(
            platform_for_tag("redacted-sandbox-amd64"),
            Some("linux/amd64")
        );
        assert_eq!(platform_for_tag("builder_x86_64"), Some("linux/amd64"));
        assert_eq!(platform_for_tag("armada"), None);
        assert_eq!(platform_for_tag("amd64-to-arm64"), None);
    }
}
