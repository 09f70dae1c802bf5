//! `archway lint` and `archway plan`: read the pipeline definitions users already have
//! (`.gitlab-ci.yml`, CodeCatalyst workflows) and show the job graph Archway would run —
//! child pipelines included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use archway_pipeline::{Context, Diagnostic, Pipeline, Severity};
use clap::{Args, ValueEnum};

use super::includes::SourceArgs;

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum PlanFormat {
    #[default]
    Text,
    Json,
    Mermaid,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum LintFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Pipeline file. Default: `.archway-ci.yml`, else `.gitlab-ci.yml`, else every
    /// `.codecatalyst/workflows/*.yaml` in the current directory.
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: LintFormat,
    #[command(flatten)]
    context: ContextArgs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pipeline file (discovered as for `archway lint` when omitted).
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: PlanFormat,
    #[command(flatten)]
    context: ContextArgs,
}

/// What the pipeline is evaluated for.
#[derive(Debug, Args, Clone)]
pub struct ContextArgs {
    /// Pipeline variable (repeatable), KEY=VALUE: overrides the file's variables.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    vars: Vec<String>,
    /// Branch being built (CI_COMMIT_BRANCH); default `main` (for `pipeline run`: the
    /// checked-out branch).
    #[arg(long, alias = "ref", value_name = "BRANCH")]
    branch: Option<String>,
    /// Build a tag instead of a branch (CI_COMMIT_TAG).
    #[arg(long)]
    tag: Option<String>,
    /// Pipeline source (CI_PIPELINE_SOURCE): push, web, schedule, merge_request_event, api,
    /// trigger, …
    #[arg(long, default_value = "push")]
    source: String,
    /// The project's default branch (CI_DEFAULT_BRANCH).
    #[arg(long, default_value = "main")]
    default_branch: String,
    /// A file changed by the push (repeatable), for `rules:changes`. Without any, `changes`
    /// rules match, as GitLab does when it cannot compute a diff.
    #[arg(long = "changed", value_name = "PATH")]
    changed: Vec<String>,
    /// A pipeline input (repeatable), NAME=VALUE, for the file's `spec:inputs` header. VALUE
    /// is read as JSON when it parses (`true`, `3`, `["a","b"]`, `"quoted text"`), else as
    /// text.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    #[command(flatten)]
    sources: SourceArgs,
}

impl ContextArgs {
    fn context(&self, repo_files: Vec<String>) -> anyhow::Result<Context> {
        let mut variables = BTreeMap::new();
        for kv in &self.vars {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--var `{kv}` is not KEY=VALUE"))?;
            variables.insert(k.to_owned(), v.to_owned());
        }
        let mut inputs = BTreeMap::new();
        for kv in &self.inputs {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--input `{kv}` is not NAME=VALUE"))?;
            let value =
                serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
            inputs.insert(k.to_owned(), value);
        }
        Ok(Context {
            inputs,
            child_depth: 0,
            branch: if self.tag.is_some() {
                None
            } else {
                Some(self.branch_name())
            },
            tag: self.tag.clone(),
            source: self.source.clone(),
            default_branch: self.default_branch.clone(),
            variables,
            changed_files: (!self.changed.is_empty()).then(|| self.changed.clone()),
            repo_files,
        })
    }
}

impl ContextArgs {
    /// The branch built: `--branch`, else `main`.
    pub fn branch_name(&self) -> String {
        self.branch.clone().unwrap_or_else(|| "main".into())
    }

    pub fn tag_name(&self) -> Option<String> {
        self.tag.clone()
    }

    /// Uses `branch` unless `--branch` was given.
    pub fn default_branch_to(&mut self, branch: Option<String>) {
        if self.branch.is_none() {
            self.branch = branch;
        }
    }
}

/// The repository root for a pipeline file: the directory holding `.codecatalyst` for a
/// workflow, else the file's directory.
fn repo_root(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for a in dir.ancestors() {
        if a.file_name().is_some_and(|n| n == ".codecatalyst") {
            return a
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned();
        }
    }
    dir.to_owned()
}

/// Every file under `root` (relative, `/`-separated), skipping VCS and build directories.
pub fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if matches!(n.as_ref(), ".git" | ".archway" | "target" | "node_modules") {
                continue;
            }
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => {
                    if let Ok(rel) = path.strip_prefix(root) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
                Err(_) => {}
            }
            if out.len() > 200_000 {
                return out;
            }
        }
    }
    out.sort();
    out
}

pub fn discover() -> anyhow::Result<Vec<PathBuf>> {
    for name in [".archway-ci.yml", ".gitlab-ci.yml"] {
        if Path::new(name).is_file() {
            return Ok(vec![PathBuf::from(name)]);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(".codecatalyst/workflows")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if found.is_empty() {
        bail!(
            "no pipeline file here: looked for .archway-ci.yml, .gitlab-ci.yml and .codecatalyst/workflows/*.yaml; pass the file to use"
        );
    }
    Ok(found)
}

pub fn plan_file(
    file: &Path,
    ctx: &ContextArgs,
) -> anyhow::Result<(Option<Pipeline>, Vec<Diagnostic>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let root = repo_root(file);
    let context = ctx.context(list_files(&root))?;
    let display = file
        .strip_prefix("./")
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned();
    let files = ctx.sources.files(root);
    Ok(archway_pipeline::plan(&display, &text, &files, &context))
}

pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

fn summary(diags: &[Diagnostic]) -> (usize, usize) {
    (
        diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count(),
        diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count(),
    )
}

pub fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    let files = match &args.file {
        Some(f) => vec![f.clone()],
        None => discover()?,
    };
    let mut all = Vec::new();
    for f in &files {
        let (_, diags) = plan_file(f, &args.context)?;
        all.extend(diags);
    }
    let (errors, warnings) = summary(&all);
    match args.format {
        LintFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "errors": errors,
                "warnings": warnings,
                "diagnostics": all,
            }))?
        ),
        LintFormat::Text => {
            print_diagnostics(&all);
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            if errors == 0 {
                println!("{}: ok ({warnings} warnings)", names.join(", "));
            } else {
                eprintln!("{}: {errors} errors, {warnings} warnings", names.join(", "));
            }
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.file {
        Some(f) => f.clone(),
        None => {
            let found = discover()?;
            if found.len() > 1 {
                bail!(
                    "several workflows found ({}); pass the one to plan",
                    found
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            found.into_iter().next().unwrap_or_default()
        }
    };
    let (pipeline, diags) = plan_file(&file, &args.context)?;
    print_diagnostics(&diags);
    let (errors, _) = summary(&diags);
    if errors > 0 {
        eprintln!(
            "{}: {errors} errors; fix them to get a plan (`archway lint` lists them too)",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let Some(p) = pipeline else {
        return Ok(ExitCode::FAILURE);
    };
    match args.format {
        PlanFormat::Text => print!("{}", p.to_text()),
        PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&p)?),
        PlanFormat::Mermaid => print!("{}", p.to_mermaid()),
    }
    Ok(ExitCode::SUCCESS)
}
