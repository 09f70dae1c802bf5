//! The data-driven corpus: every directory under `tests/corpus/` is one case.
//!
//! A case holds the pipeline file (`.gitlab-ci.yml`, or `.codecatalyst/workflows/*.yaml`), any
//! files it includes, an optional `context.json` (branch, tag, source, variables, inputs,
//! changed_files; every file of the case counts as a repository file) and `expected.txt`: the
//! diagnostics, the plan summary and every job as JSON (a child pipeline's context left out).
//! Files under `_remote/HOST/PATH` answer `include: remote: https://HOST/PATH`, files under
//! `_templates/NAME` answer `include: template: NAME`; neither is a repository file. Run
//! with `UPDATE_EXPECT=1` to rewrite the expectations, then review the diff.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use archway_pipeline::{Context, MemoryFiles};

fn files_under(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaseContext {
    branch: Option<String>,
    tag: Option<String>,
    source: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    inputs: BTreeMap<String, serde_json::Value>,
    changed_files: Option<Vec<String>>,
}

/// A case's file → its `MemoryFiles` key (`_remote/` and `_templates/` files are not
/// repository files).
fn memory_key(rel: &str) -> String {
    if let Some(rest) = rel.strip_prefix("_remote/") {
        format!("https://{rest}")
    } else if let Some(rest) = rel.strip_prefix("_templates/") {
        format!("template:{rest}")
    } else {
        rel.to_owned()
    }
}

/// Spans, and child pipelines' contexts (they repeat the case's files), are left out of the
/// expectation.
fn drop_noise(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("context");
            m.remove("span");
            m.values_mut().for_each(drop_noise);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_noise),
        _ => {}
    }
}

fn render(case: &Path) -> String {
    let files = files_under(case);
    let main = files
        .iter()
        .find(|(r, _)| r == ".gitlab-ci.yml")
        .or_else(|| {
            files
                .iter()
                .find(|(r, _)| r.starts_with(".codecatalyst/workflows/"))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no .gitlab-ci.yml or .codecatalyst/workflows/*.yaml",
                case.display()
            )
        });
    let ctx_file: CaseContext = match files.iter().find(|(r, _)| r == "context.json") {
        Some((_, p)) => serde_json::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: context.json: {e}", case.display())),
        None => CaseContext::default(),
    };
    let repo_files: Vec<String> = files
        .iter()
        .map(|(r, _)| r.clone())
        .filter(|r| {
            r != "expected.txt"
                && r != "context.json"
                && !r.starts_with("_remote/")
                && !r.starts_with("_templates/")
        })
        .collect();
    let mut context = Context::push_to(ctx_file.branch.as_deref().unwrap_or("main"));
    if ctx_file.tag.is_some() {
        context.branch = None;
        context.tag = ctx_file.tag;
    }
    if let Some(s) = ctx_file.source {
        context.source = s;
    }
    context.variables = ctx_file.variables;
    context.inputs = ctx_file.inputs;
    context.changed_files = ctx_file.changed_files;
    context.repo_files = repo_files;
    let mem: HashMap<String, String> = files
        .iter()
        .map(|(r, p)| {
            (
                memory_key(r),
                std::fs::read_to_string(p).unwrap_or_default(),
            )
        })
        .collect();
    let text = &mem[&main.0];
    let (pipeline, diags) =
        archway_pipeline::plan(&main.0, text, &MemoryFiles(mem.clone()), &context);
    let mut out = String::from("== diagnostics\n");
    for d in &diags {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out.push_str("== plan\n");
    match &pipeline {
        Some(p) if !archway_pipeline::has_errors(&diags) => {
            out.push_str(&p.to_text());
            out.push_str("== jobs\n");
            for j in &p.jobs {
                let mut v = serde_json::to_value(j).unwrap();
                drop_noise(&mut v);
                out.push_str(&serde_json::to_string_pretty(&v).unwrap());
                out.push('\n');
            }
        }
        _ => out.push_str("(none: errors)\n"),
    }
    out
}

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let got = render(case);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "=== {}\n--- expected\n{want}\n--- got\n{got}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus cases differ (UPDATE_EXPECT=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
