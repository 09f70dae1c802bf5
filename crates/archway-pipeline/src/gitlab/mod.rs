//! The GitLab CI front end: `.gitlab-ci.yml` → [`Pipeline`].
//!
//! The order follows GitLab's own, one module per phase: load YAML (anchors, aliases, merge
//! keys) and apply a `spec:inputs` header ([`inputs`]), merge included files — each
//! interpolated with its own inputs ([`includes`]) — resolve `!reference` tags
//! ([`references`]), resolve `extends` (deep merge, [`extends`]), apply `default:`
//! ([`defaults`]), evaluate `workflow:rules` ([`rules`]), expand `parallel` /
//! `parallel:matrix` ([`matrix`]), evaluate each job's `rules` and read its keywords
//! ([`job`], [`keywords`], [`variables`]; a trigger job's `trigger:` in [`trigger`], which
//! plans static child pipelines by recursion), then resolve stages, `needs` and
//! `dependencies` into edges ([`needs`]).
//!
//! Every problem becomes a positioned [`Diagnostic`]; a job is never dropped silently.
//! Where GitLab has a message for a problem, the diagnostic uses it.

mod defaults;
mod extends;
mod includes;
mod inputs;
mod job;
mod keywords;
mod matrix;
mod needs;
mod references;
mod rules;
mod trigger;
mod variables;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::FileSource;
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::graph::{Context, Job, Pipeline, SourceFormat};
use crate::yaml::{Node, Value};

pub use matrix::MAX_MATRIX_JOBS;
pub(crate) use trigger::plan_child;

/// What one plan shares across the pipelines it plans (the main one and its children).
#[derive(Default)]
struct Shared {
    /// Child pipelines planned ahead of time, by configuration, variables and depth (`None`
    /// while being planned, or when planning failed).
    children: RefCell<HashMap<String, Option<Pipeline>>>,
}

/// The state every phase shares: where we are, what we may read, what we found.
struct Ctx<'a> {
    file: &'a str,
    files: &'a dyn FileSource,
    context: &'a Context,
    diags: Vec<Diagnostic>,
    shared: &'a Shared,
    /// Where `default:cache` is written (so its errors are named `default:cache`).
    default_cache_span: Option<Span>,
    /// The job being planned (for diagnostics about the job as a whole).
    job_span: Span,
}

impl Ctx<'_> {
    fn error(&mut self, span: &Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(span, msg));
    }

    fn error_hint(&mut self, span: &Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(span, msg).with_hint(hint));
    }

    fn warn(&mut self, span: &Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(span, msg));
    }

    /// A context for evaluating something a second time without repeating its diagnostics.
    fn silent(&self) -> Ctx<'_> {
        Ctx {
            file: self.file,
            files: self.files,
            context: self.context,
            diags: Vec::new(),
            shared: self.shared,
            default_cache_span: self.default_cache_span.clone(),
            job_span: self.job_span.clone(),
        }
    }
}

fn key_name(k: &Node) -> String {
    k.scalar_text().unwrap_or_default()
}

/// GitLab's `AllowedKeysValidator`: the keys of mapping `n` outside `allowed`, as its error
/// ("LOC config contains unknown keys: a, b", at `n`, with a did-you-mean hint for the first).
fn unknown_keys(n: &Node, allowed: &[&str], loc: &str) -> Option<Diagnostic> {
    let unknown: Vec<String> = n
        .as_map()
        .unwrap_or_default()
        .iter()
        .map(|(k, _)| key_name(k))
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    let first = unknown.first()?;
    let d = Diagnostic::error(
        &n.span,
        format!("{loc} config contains unknown keys: {}", unknown.join(", ")),
    );
    Some(match did_you_mean(first, allowed.iter().copied()) {
        Some(h) => d.with_hint(format!("did you mean `{h}`?")),
        None => d,
    })
}

/// GitLab's deep merge: mappings merge key by key (recursively), anything else is replaced.
fn deep_merge(base: &Node, over: &Node) -> Node {
    match (&base.value, &over.value) {
        (Value::Map(b), Value::Map(o)) => {
            let mut out: Vec<(Node, Node)> = b.clone();
            for (k, v) in o {
                let name = key_name(k);
                match out.iter_mut().find(|(ek, _)| key_name(ek) == name) {
                    Some(slot) => slot.1 = deep_merge(&slot.1, v),
                    None => out.push((k.clone(), v.clone())),
                }
            }
            Node {
                value: Value::Map(out),
                span: over.span.clone(),
                tag: over.tag.clone(),
            }
        }
        _ => over.clone(),
    }
}

fn remove_key(node: &Node, key: &str) -> Node {
    match &node.value {
        Value::Map(m) => Node {
            value: Value::Map(
                m.iter()
                    .filter(|(k, _)| key_name(k) != key)
                    .cloned()
                    .collect(),
            ),
            span: node.span.clone(),
            tag: node.tag.clone(),
        },
        _ => node.clone(),
    }
}

fn normalize_path(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// Plans a `.gitlab-ci.yml`.
pub fn plan(
    file: &str,
    text: &str,
    files: &dyn FileSource,
    context: &Context,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let shared = Shared::default();
    let start = Span::new(file, 1, 1);
    let mut ctx = Ctx {
        file,
        files,
        context,
        diags: Vec::new(),
        shared: &shared,
        default_cache_span: None,
        job_span: start.clone(),
    };
    // Pipeline inputs arrive typed (JSON) and land where the header declares them.
    let args: Vec<(String, Node)> = context
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), Node::from_json(v, &start)))
        .collect();
    let caller = inputs::Caller {
        site: &start,
        prefix: String::new(),
        how: "--input NAME=VALUE",
    };
    let Some(root) = includes::load_with_inputs(&mut ctx, file, text, &args, &caller) else {
        return (None, ctx.diags);
    };
    let pipeline = plan_document(&mut ctx, root, true);
    (pipeline, ctx.diags)
}

/// A loaded configuration → the pipeline: includes, `!reference`, then [`build`].
/// `from_file`: the configuration is the file `ctx.file` (not a child pipeline's synthetic
/// `include:` list), which therefore may not include itself.
fn plan_document(ctx: &mut Ctx<'_>, root: Node, from_file: bool) -> Option<Pipeline> {
    if root.is_null() {
        ctx.error(
            &root.span,
            "the pipeline file is empty; define at least one job with a `script`",
        );
        return None;
    }
    if root.as_map().is_none() {
        ctx.error(
            &root.span,
            format!(
                "the pipeline file must be a mapping of jobs and keywords, found {}",
                root.kind()
            ),
        );
        return None;
    }
    let mut seen = if from_file {
        vec![normalize_path(ctx.file)]
    } else {
        Vec::new()
    };
    let mut count = 0;
    let root = includes::resolve_includes(
        ctx,
        root,
        &includes::Source::Repository,
        &mut seen,
        &mut count,
    );
    let root = references::resolve_references(ctx, &root);
    build(ctx, &root)
}

/// Whether a job's `needs` mirror an upstream pipeline (`needs: [{pipeline: group/app}]`):
/// such a job needs no script.
fn mirrors_upstream(node: &Node) -> bool {
    let Some(needs) = node.get("needs") else {
        return false;
    };
    rules::flatten_list(needs, 256)
        .unwrap_or_else(|| vec![needs.clone()])
        .iter()
        .any(|n| {
            n.get("pipeline").is_some() && n.get("job").is_none() && n.get("project").is_none()
        })
}

/// The merged, dereferenced document → the pipeline.
fn build(ctx: &mut Ctx<'_>, root: &Node) -> Option<Pipeline> {
    let file = ctx.file.to_owned();
    let stages = read_stages(ctx, root);
    let default = defaults::global_default(ctx, root);
    let (mut base, globals_only) = variables::pipeline_variables(ctx, root);
    let mut runs = rules::workflow_runs(ctx, root, &mut base);

    let raw_jobs = job_definitions(ctx, root);
    let resolved = extends::resolve_extends(ctx, &raw_jobs);
    ctx.default_cache_span = default
        .as_ref()
        .and_then(|d| d.get("cache"))
        .map(|c| c.span.clone());

    let mut planned: Vec<job::Planned> = Vec::new();
    let mut defined_names: Vec<String> = Vec::new();
    let mut excluded: HashSet<String> = HashSet::new();
    for (name, node) in &resolved {
        if name.starts_with('.') || node.as_map().is_none() {
            continue;
        }
        defined_names.push(name.clone());
        ctx.job_span = node.span.clone();
        keywords::check_job_keywords(ctx, name, node);
        let raw_trigger = match node.get("trigger") {
            Some(t) => {
                trigger::check_trigger_job_keywords(ctx, name, node);
                match trigger::parse_trigger(ctx, name, t) {
                    Some(r) => Some(r),
                    None => continue,
                }
            }
            None => None,
        };
        let inherit = defaults::parse_inherit(ctx, node);
        // A trigger job takes nothing from `default:` but `interruptible` (GitLab's bridge).
        let node = match raw_trigger {
            Some(_) => defaults::apply_default_only(
                node,
                default.as_ref(),
                &inherit,
                Some(&["interruptible"]),
            ),
            None => defaults::apply_default(node, default.as_ref(), &inherit),
        };
        let kind = match &raw_trigger {
            Some(r) => job::Kind::Trigger(r),
            None if node.get("script").is_none()
                && node.get("run").is_none()
                && mirrors_upstream(&node) =>
            {
                job::Kind::Mirror
            }
            None => job::Kind::Script,
        };
        if matches!(kind, job::Kind::Script)
            && node.get("script").is_none()
            && node.get("run").is_none()
        {
            ctx.error_hint(&node.span, format!("jobs:{name} config should implement the script:, run:, or trigger: keyword"), "every job needs a script; a job meant only as a template should be hidden: `.name:`");
            continue;
        }
        for inst in matrix::matrix_instances(ctx, name, &node) {
            if let Some(p) = job::plan_instance(ctx, inst, &base, &globals_only, &inherit, kind) {
                planned.push(p);
            } else {
                excluded.insert(name.clone());
            }
        }
    }
    if defined_names.is_empty() && !ctx.diags.iter().any(Diagnostic::is_error) {
        ctx.diags.push(
            Diagnostic::error(
                &root.span,
                "jobs config should contain at least one visible job",
            )
            .with_hint("hidden jobs (`.name:`) are templates and do not run"),
        );
    }
    // GitLab creates no pipeline when the rules leave no job to run.
    if planned.is_empty() {
        runs = false;
    }

    check_stages_exist(ctx, &planned, &stages);
    needs::resolve_edges(ctx, &mut planned, &stages, &defined_names, &excluded);
    trigger::check_dynamic_children(ctx, &planned);

    // Cycles through needs (possible within a stage).
    let jobs: Vec<Job> = planned.into_iter().map(|p| p.job).collect();
    if let Some(cycle) = crate::graph::find_cycle(&jobs) {
        let span = jobs
            .iter()
            .find(|j| j.name == cycle[0])
            .map(|j| j.span.clone())
            .unwrap_or_default();
        ctx.error(&span, format!("needs form a cycle: {}", cycle.join(" → ")));
    }
    let name = root
        .get("workflow")
        .and_then(|w| w.get("name"))
        .and_then(Node::scalar_text)
        .map(|n| base.expand(&n));
    Some(Pipeline {
        format: SourceFormat::GitlabCi,
        file,
        name,
        runs,
        stages,
        jobs: if runs { jobs } else { Vec::new() },
        variables: base.list(crate::graph::Origin::Global),
        context: ctx.context.clone(),
    })
}

/// `stages:` (or the deprecated `types:`), between the implicit `.pre` and `.post`.
fn read_stages(ctx: &mut Ctx<'_>, root: &Node) -> Vec<String> {
    let stages_node = root.get("stages").or_else(|| root.get("types"));
    let mut stages: Vec<String> = match stages_node {
        Some(s) => keywords::nested_string_list(ctx, s, "stages"),
        None => vec!["build".into(), "test".into(), "deploy".into()],
    };
    stages.retain(|s| s != ".pre" && s != ".post");
    stages.insert(0, ".pre".into());
    stages.push(".post".into());
    stages
}

/// The top-level entries that are jobs (hidden ones included), in document order.
fn job_definitions(ctx: &mut Ctx<'_>, root: &Node) -> Vec<(String, Node)> {
    let mut raw_jobs: Vec<(String, Node)> = Vec::new();
    for (k, v) in root.as_map().unwrap_or_default() {
        let name = key_name(k);
        if keywords::GLOBAL_KEYS.contains(&name.as_str()) {
            continue;
        }
        if name.is_empty() {
            ctx.error(&k.span, "a job needs a name");
            continue;
        }
        if v.as_map().is_none() {
            if name.starts_with('.') {
                raw_jobs.push((name, v.clone()));
                continue;
            }
            let d = Diagnostic::error(
                &k.span,
                format!(
                    "`{name}` is not a keyword, and as a job it must be a mapping (found {})",
                    v.kind()
                ),
            );
            ctx.diags.push(
                match did_you_mean(&name, keywords::GLOBAL_KEYS.iter().copied()) {
                    Some(h) => d.with_hint(format!("did you mean the keyword `{h}`?")),
                    None => d,
                },
            );
            continue;
        }
        raw_jobs.push((name, v.clone()));
    }
    raw_jobs
}

/// Every planned job's stage is one of `stages`.
fn check_stages_exist(ctx: &mut Ctx<'_>, planned: &[job::Planned], stages: &[String]) {
    for p in planned {
        if !stages.contains(&p.job.stage) {
            let d = Diagnostic::error(
                &p.stage_span,
                format!(
                    "{} job: chosen stage does not exist; available stages are {}",
                    p.job.name,
                    stages.join(", ")
                ),
            );
            ctx.diags.push(
                match did_you_mean(&p.job.stage, stages.iter().map(String::as_str)) {
                    Some(h) => d.with_hint(format!(
                        "`{}` is not in `stages`; did you mean `{h}`?",
                        p.job.stage
                    )),
                    None => d.with_hint(format!(
                        "add `{}` to `stages`, or put the job in one of them",
                        p.job.stage
                    )),
                },
            );
        }
    }
}
