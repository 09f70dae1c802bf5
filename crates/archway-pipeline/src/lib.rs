//! Pipeline definitions users already have, read as they are and turned into one validated
//! job graph for the coordinator.
//!
//! Pure: text in, a typed [`Pipeline`] plus positioned [`Diagnostic`]s out. The only input
//! besides the text is a [`FileSource`] for `include: local` files and the [`Context`] the
//! pipeline is evaluated in (branch, tag, source, variables, changed and existing files).
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

use std::collections::HashMap;

pub use diag::{Diagnostic, Severity, Span};
pub use graph::{Context, Job, Pipeline, SourceFormat};

/// Where `include: local` files come from (the caller decides: a directory, a git tree, a
/// test's strings).
pub trait FileSource {
    /// The content of `path` (relative to the repository root), if it exists.
    fn read(&self, path: &str) -> Option<String>;
}

/// Files held in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryFiles(pub HashMap<String, String>);

impl FileSource for MemoryFiles {
    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path.trim_start_matches('/')).cloned()
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
    diags.sort_by(|a, b| {
        (&a.span.file, a.span.line, a.span.col).cmp(&(&b.span.file, b.span.line, b.span.col))
    });
    diags.dedup();
    (pipeline, diags)
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}
