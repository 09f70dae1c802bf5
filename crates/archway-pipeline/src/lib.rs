//! Pipeline definitions users already have, read as they are and turned into one validated
//! job graph for the coordinator.
//!
//! Pure: text in, a typed [`Pipeline`] plus positioned [`Diagnostic`]s out. The only input
//! besides the text is a [`FileSource`] for included files (local, remote, templates, other
//! projects', a parent job's artifacts: the caller fetches them) and the [`Context`] the
//! pipeline is evaluated in (branch, tag, source, variables, inputs, changed and existing
//! files).
//!
//! * [`yaml`]: YAML with positions, anchors, aliases, merge keys and tags;
//! * [`expr`]: GitLab's `rules:if` expressions;
//! * [`vars`]: variable precedence and `$VAR` expansion;
//! * [`gitlab`]: the `.gitlab-ci.yml` front end;
//! * [`codecatalyst`]: the CodeCatalyst workflow front end;
//! * [`graph`]: the job graph both produce.

pub mod codecatalyst;
/// Positioned diagnostics (from `archway-diag`).
pub mod diag {
    pub use archway_diag::*;
}
pub mod expr;
pub mod gitlab;
pub mod graph;
pub mod vars;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};

pub use diag::{Diagnostic, Severity, Span};
pub use graph::{ChildPipeline, Context, Job, Pipeline, SourceFormat, Trigger};

/// Why a remote include (`include: remote:`) could not be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteError {
    /// The server answered with this HTTP error status.
    Status(u16),
    /// No answer in time.
    Timeout,
    /// Any other failure (name resolution, connection, TLS, size), as text.
    Failed(String),
    /// Offline, and the file is not in the include cache.
    NotCached,
    /// This caller cannot fetch remote files at all.
    Unavailable,
}

/// Where included files come from. The caller decides (a directory, a git tree, an HTTP
/// cache, a test's strings) and does any I/O; the front end only asks.
pub trait FileSource {
    /// The content of `path` (relative to the repository root), if it exists.
    fn read(&self, path: &str) -> Option<String>;

    /// `include: remote:`: the content at `url`.
    fn remote(&self, url: &str) -> Result<String, RemoteError> {
        let _ = url;
        Err(RemoteError::Unavailable)
    }

    /// `include: template:`: a GitLab CI template by name (`Jobs/Build.gitlab-ci.yml`), from
    /// the templates directory the user or the server configured.
    fn template(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }

    /// Whether a templates directory is configured at all (for a useful message when a
    /// template is missing).
    fn has_templates(&self) -> bool {
        false
    }

    /// `include: project:`: a file of another project on the server (`ref` `None`: its default
    /// branch). Only a server that hosts the project can answer.
    fn project_file(&self, project: &str, git_ref: Option<&str>, path: &str) -> Option<String> {
        let _ = (project, git_ref, path);
        None
    }

    /// `trigger: include: artifact:`: a file from the artifacts of `job` in the parent
    /// pipeline. Only the coordinator can answer, when it creates a dynamic child pipeline.
    fn artifact(&self, job: &str, path: &str) -> Option<String> {
        let _ = (job, path);
        None
    }
}

/// Files held in memory. Keys are repository paths, except: a key starting with `http://` or
/// `https://` is a remote file (any other URL answers 404), `template:NAME` a template,
/// `project:PROJECT:PATH` another project's file and `artifact:JOB:PATH` a parent job's
/// artifact.
#[derive(Debug, Default, Clone)]
pub struct MemoryFiles(pub HashMap<String, String>);

impl FileSource for MemoryFiles {
    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path.trim_start_matches('/')).cloned()
    }

    fn remote(&self, url: &str) -> Result<String, RemoteError> {
        self.0.get(url).cloned().ok_or(RemoteError::Status(404))
    }

    fn template(&self, name: &str) -> Option<String> {
        self.0.get(&format!("template:{name}")).cloned()
    }

    fn has_templates(&self) -> bool {
        self.0.keys().any(|k| k.starts_with("template:"))
    }

    fn project_file(&self, project: &str, _git_ref: Option<&str>, path: &str) -> Option<String> {
        let path = path.trim_start_matches('/');
        self.0.get(&format!("project:{project}:{path}")).cloned()
    }

    fn artifact(&self, job: &str, path: &str) -> Option<String> {
        self.0.get(&format!("artifact:{job}:{path}")).cloned()
    }
}

/// The syntax of a pipeline file, judged by its path and content.
pub fn detect_format(path: &str, text: &str) -> SourceFormat {
    if path.contains(".codecatalyst/") {
        return SourceFormat::Codecatalyst;
    }
    let top_level_keys = || {
        text.lines()
            .filter(|l| !l.starts_with([' ', '\t', '#', '-']) && l.contains(':'))
    };
    let has = |k: &str| top_level_keys().any(|l| l.starts_with(k));
    if has("SchemaVersion:") && has("Actions:") {
        SourceFormat::Codecatalyst
    } else {
        SourceFormat::GitlabCi
    }
}

/// Plans a pipeline file: the graph (unless the file could not be read at all) and every
/// diagnostic, sorted by position.
pub fn plan(
    path: &str,
    text: &str,
    files: &dyn FileSource,
    context: &Context,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let (pipeline, mut diags) = match detect_format(path, text) {
        SourceFormat::GitlabCi => gitlab::plan(path, text, files, context),
        SourceFormat::Codecatalyst => codecatalyst::plan(path, text, context),
    };
    sort_diagnostics(&mut diags);
    (pipeline, diags)
}

/// Plans a child pipeline at the moment its trigger job starts: the coordinator's half of
/// parent-child pipelines (the contract is on [`graph::ChildPipeline`]).
///
/// `parent` is the parent pipeline's context ([`Pipeline::context`]); `variables` are the
/// child's variables ([`ChildPipeline::variables`]) with their values expanded the way the
/// trigger job sees them (so `$CI_PIPELINE_ID` is the parent's id); `files` reads the
/// repository at the parent's commit and, for a dynamic child, answers
/// [`FileSource::artifact`] from the generating job's artifacts.
pub fn plan_child(
    parent: &Context,
    child: &ChildPipeline,
    variables: BTreeMap<String, String>,
    files: &dyn FileSource,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let (pipeline, mut diags) = gitlab::plan_child(parent, child, variables, files);
    sort_diagnostics(&mut diags);
    (pipeline, diags)
}

fn sort_diagnostics(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        (&a.span.file, a.span.line, a.span.col).cmp(&(&b.span.file, b.span.line, b.span.col))
    });
    diags.dedup();
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}
