//! The job graph: the contract between the pipeline front ends and the coordinator.
//!
//! Every job is concrete (matrix and `parallel` expanded, `extends`/`default`/`!reference`
//! resolved, rules evaluated), with the runner tags it needs and the platform they imply, and
//! the edges the scheduler must respect (`depends_on`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::diag::Span;

/// Which syntax a pipeline was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    GitlabCi,
    Codecatalyst,
}

/// What a pipeline was evaluated with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Context {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// Where the job is defined.
    pub span: Span,
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

    /// A readable summary: stages, jobs with their platform and edges.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let kind = match self.format {
            SourceFormat::GitlabCi => "GitLab CI",
            SourceFormat::Codecatalyst => "CodeCatalyst workflow",
        };
        let _ = writeln!(
            out,
            "{} ({kind}){}",
            self.file,
            self.name
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        if !self.runs {
            let _ = writeln!(out, "workflow:rules: no pipeline for this context");
            return out;
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
            "{} in {}",
            plural(self.jobs.len(), "job"),
            plural(self.stages.len(), "stage")
        );
        for stage in &self.stages {
            let jobs: Vec<&Job> = self.jobs.iter().filter(|j| &j.stage == stage).collect();
            if jobs.is_empty() {
                continue;
            }
            let _ = writeln!(out, "stage {stage}");
            for j in jobs {
                let mut line = format!("  {}", j.name);
                if let Some(p) = &j.platform {
                    line.push_str(&format!("  [{p}]"));
                }
                if !j.tags.is_empty() {
                    line.push_str(&format!("  tags: {}", j.tags.join(", ")));
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
                    let _ = writeln!(out, "    {via}: {}", j.depends_on.join(", "));
                }
            }
        }
        out
    }

    /// A Mermaid flowchart of the graph.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        let id = |name: &str| {
            let mut s = String::from("j_");
            for c in name.chars() {
                s.push(if c.is_ascii_alphanumeric() { c } else { '_' });
            }
            s
        };
        for stage in &self.stages {
            let jobs: Vec<&Job> = self.jobs.iter().filter(|j| &j.stage == stage).collect();
            if jobs.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "  subgraph {}[\"{}\"]",
                id(&format!("stage {stage}")),
                stage.replace('"', "'")
            );
            for j in jobs {
                let label = match &j.platform {
                    Some(p) => format!("{}<br/>{p}", j.name),
                    None => j.name.clone(),
                };
                let _ = writeln!(out, "    {}[\"{}\"]", id(&j.name), label.replace('"', "'"));
            }
            let _ = writeln!(out, "  end");
        }
        for j in &self.jobs {
            for d in &j.depends_on {
                let _ = writeln!(out, "  {} --> {}", id(d), id(&j.name));
            }
        }
        out
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
