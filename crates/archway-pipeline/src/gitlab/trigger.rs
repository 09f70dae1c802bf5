//! `trigger:` → a trigger job's [`Trigger`]. A child pipeline (`trigger: include:`) is
//! planned now when its configuration is in the repository (local files, templates, remote
//! files), or marked dynamic when an earlier job generates it (`artifact:` + `job:`); another
//! project's pipeline (`trigger: project:`) is kept with a warning that only a server
//! hosting that project can run it. What is passed down follows `forward:`.

use std::collections::BTreeMap;

use super::includes::{Item, Location, include_vars, parse_item};
use super::job::Planned;
use super::keywords::JOB_KEYWORDS;
use super::{Ctx, Shared, key_name, plan_document, unknown_keys};
use crate::FileSource;
use crate::diag::{Diagnostic, Span};
use crate::graph::{
    ChildInclude, ChildPipeline, Context, Forward, Origin, Pipeline, ProjectTrigger, Trigger,
    TriggerStrategy, Variable,
};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

/// Keywords a trigger job may use (GitLab's `Bridge`: `trigger`, `parallel` and the keywords
/// every job has).
const TRIGGER_JOB_KEYWORDS: &[&str] = &[
    "trigger",
    "parallel",
    "extends",
    "stage",
    "only",
    "except",
    "rules",
    "variables",
    "inherit",
    "allow_failure",
    "when",
    "needs",
    "resource_group",
    "environment",
    "interruptible",
];

/// GitLab's limits: files in `trigger:include`, levels of child pipelines.
const MAX_TRIGGER_INCLUDES: usize = 3;
const MAX_CHILD_DEPTH: u32 = 2;
/// Child pipelines planned ahead of time per plan (each distinct configuration and set of
/// variables is planned once); past this, children are left to the coordinator.
pub(super) const MAX_CHILD_PLANS: usize = 64;

/// A parsed `trigger:`.
pub(super) struct RawTrigger {
    kind: RawKind,
    strategy: Option<TriggerStrategy>,
    forward: Forward,
}

enum RawKind {
    Child(Vec<(ChildInclude, Span)>),
    Project {
        project: String,
        branch: Option<String>,
        inputs: BTreeMap<String, serde_json::Value>,
    },
}

/// A trigger job runs no script and uses only the keywords GitLab allows a trigger job.
pub(super) fn check_trigger_job_keywords(ctx: &mut Ctx<'_>, name: &str, node: &Node) {
    let entries = node.as_map().unwrap_or_default();
    if let Some((k, _)) = entries
        .iter()
        .find(|(k, _)| matches!(k.as_str(), Some("script" | "run")))
    {
        ctx.error_hint(
            &k.span,
            format!(
                "jobs:{name} config these keys cannot be used together: {}, trigger",
                key_name(k)
            ),
            "a trigger job starts a downstream pipeline instead of running a script",
        );
    }
    let not_allowed: Vec<&Node> = entries
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = key_name(k);
            JOB_KEYWORDS.contains(&k.as_str())
                && !TRIGGER_JOB_KEYWORDS.contains(&k.as_str())
                && !matches!(k.as_str(), "script" | "run")
        })
        .collect();
    if let Some(first) = not_allowed.first() {
        let names: Vec<String> = not_allowed.iter().map(|k| key_name(k)).collect();
        ctx.error_hint(
            &first.span,
            format!(
                "jobs:{name} config contains unknown keys: {}",
                names.join(", ")
            ),
            format!(
                "a trigger job takes only {}",
                TRIGGER_JOB_KEYWORDS.join(", ")
            ),
        );
    }
    if let Some(p) = node.get("parallel")
        && matches!(p.value, Value::Int(_))
    {
        ctx.error(
            &p.span,
            format!("jobs:{name}:parallel a trigger job can only use `parallel:matrix`"),
        );
    }
}

fn parse_strategy(ctx: &mut Ctx<'_>, n: &Node, loc: &str) -> Option<TriggerStrategy> {
    match n.as_str() {
        Some("depend") => Some(TriggerStrategy::Depend),
        Some("mirror") => Some(TriggerStrategy::Mirror),
        _ => {
            ctx.error(
                &n.span,
                format!("{loc} strategy should be depend or mirror"),
            );
            None
        }
    }
}

fn parse_forward(ctx: &mut Ctx<'_>, n: &Node, loc: &str) -> Forward {
    let mut f = Forward::default();
    let Some(entries) = n.as_map() else {
        ctx.error(&n.span, format!("{loc}:forward config should be a hash"));
        return f;
    };
    for (k, v) in entries {
        let key = key_name(k);
        let slot = match key.as_str() {
            "yaml_variables" => &mut f.yaml_variables,
            "pipeline_variables" => &mut f.pipeline_variables,
            other => {
                ctx.error(
                    &k.span,
                    format!("{loc}:forward config contains unknown keys: {other}"),
                );
                continue;
            }
        };
        match v.value {
            Value::Bool(b) => *slot = b,
            _ => ctx.error(
                &v.span,
                format!(
                    "{loc}:forward {} should be a boolean value",
                    key.replace('_', " ")
                ),
            ),
        }
    }
    f
}

fn inputs_json(inputs: &[(String, Node)]) -> BTreeMap<String, serde_json::Value> {
    inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
}

fn child_include(item: Item) -> ChildInclude {
    let inputs = inputs_json(&item.inputs);
    match item.location {
        Location::Local(path) => ChildInclude::Local { path, inputs },
        Location::Remote { url, .. } => ChildInclude::Remote { url, inputs },
        Location::Template(name) => ChildInclude::Template { name, inputs },
        Location::Project {
            project,
            git_ref,
            files,
        } => ChildInclude::Project {
            project,
            // `trigger:include:project` takes one file (GitLab's schema).
            file: files.into_iter().next().unwrap_or_default(),
            git_ref,
            inputs,
        },
        Location::Component(component) => ChildInclude::Component { component, inputs },
        Location::Artifact { job, path } => ChildInclude::Artifact { job, path, inputs },
    }
}

/// `trigger:` of job `name` → what it triggers; `None` when it is malformed (reported).
pub(super) fn parse_trigger(ctx: &mut Ctx<'_>, name: &str, n: &Node) -> Option<RawTrigger> {
    let loc = format!("jobs:{name}:trigger");
    match &n.value {
        Value::Str(project) if !project.is_empty() => {
            return Some(RawTrigger {
                kind: RawKind::Project {
                    project: project.clone(),
                    branch: None,
                    inputs: BTreeMap::new(),
                },
                strategy: None,
                forward: Forward::default(),
            });
        }
        Value::Str(_) | Value::Null => {
            ctx.error(&n.span, format!("{loc} config can't be blank"));
            return None;
        }
        Value::Map(_) => {}
        _ => {
            ctx.error(
                &n.span,
                format!("{loc} has to be either a string or a hash"),
            );
            return None;
        }
    }
    let child = n.get("include").is_some();
    let allowed: &[&str] = if child {
        &["include", "strategy", "forward"]
    } else {
        &["project", "branch", "strategy", "forward", "inputs"]
    };
    if let Some(d) = unknown_keys(n, allowed, &loc) {
        ctx.diags.push(d.with_hint(if child {
            "a child pipeline trigger takes include, strategy and forward"
        } else {
            "a multi-project trigger takes project, branch, strategy, forward and inputs"
        }));
        return None;
    }
    let strategy = match n.get("strategy") {
        Some(s) => Some(parse_strategy(ctx, s, &loc)?),
        None => None,
    };
    let forward = n
        .get("forward")
        .map(|f| parse_forward(ctx, f, &loc))
        .unwrap_or_default();
    let kind = if let Some(include) = n.get("include") {
        let items: Vec<Node> = match &include.value {
            Value::Seq(s) => s.clone(),
            Value::Null => Vec::new(),
            _ => vec![include.clone()],
        };
        if items.is_empty() {
            ctx.error(
                &include.span,
                format!("{loc}:include config can't be blank"),
            );
            return None;
        }
        if items.len() > MAX_TRIGGER_INCLUDES {
            ctx.error_hint(
                &include.span,
                format!(
                    "{loc}:include config has too many items (maximum is {MAX_TRIGGER_INCLUDES})"
                ),
                "GitLab merges at most 3 files into a child pipeline; include the others from one of them",
            );
            return None;
        }
        let vars = include_vars(ctx);
        let mut out = Vec::new();
        for i in &items {
            if i.get("rules").is_some() {
                ctx.error(
                    &i.span,
                    format!("{loc}:include config contains unknown keys: rules"),
                );
                return None;
            }
            let item = parse_item(ctx, i, &vars)?;
            let span = item.span.clone();
            out.push((child_include(item), span));
        }
        RawKind::Child(out)
    } else {
        let Some(project) = n
            .get("project")
            .and_then(Node::as_str)
            .filter(|p| !p.is_empty())
        else {
            ctx.error(&n.span, format!("{loc} project can't be blank"));
            return None;
        };
        let branch = n.get("branch").and_then(Node::scalar_text);
        let inputs = match n.get("inputs") {
            Some(i) if i.as_map().is_some() => inputs_json(
                &i.as_map()
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| (key_name(k), v.clone()))
                    .collect::<Vec<_>>(),
            ),
            Some(i) if !i.is_null() => {
                ctx.error(&i.span, format!("{loc} inputs should be a hash"));
                return None;
            }
            _ => BTreeMap::new(),
        };
        RawKind::Project {
            project: project.to_owned(),
            branch,
            inputs,
        }
    };
    Some(RawTrigger {
        kind,
        strategy,
        forward,
    })
}

/// The variables a trigger job passes down: its YAML variables (global, workflow, job,
/// matrix, rule) if `forward:yaml_variables`, the pipeline's own if
/// `forward:pipeline_variables`.
fn downstream_variables(vars: &Vars, forward: Forward) -> Vec<Variable> {
    vars.list(Origin::Global)
        .into_iter()
        .filter(|v| match v.origin {
            Origin::Pipeline => forward.pipeline_variables,
            _ => forward.yaml_variables,
        })
        .collect()
}

/// A trigger job instance → its [`Trigger`], planning a static child pipeline now.
pub(super) fn plan_trigger(ctx: &mut Ctx<'_>, job: &str, raw: &RawTrigger, vars: &Vars) -> Trigger {
    let variables = downstream_variables(vars, raw.forward);
    match &raw.kind {
        RawKind::Project {
            project,
            branch,
            inputs,
        } => {
            let span = ctx.job_span.clone();
            ctx.diags.push(
                Diagnostic::warning(
                    &span,
                    format!("job `{job}` triggers a pipeline of project `{project}`"),
                )
                .with_hint(format!(
                    "only an Archway server that hosts `{project}` can start that pipeline; elsewhere this job fails, saying so"
                )),
            );
            Trigger::Project(ProjectTrigger {
                project: project.clone(),
                branch: branch.clone(),
                strategy: raw.strategy,
                forward: raw.forward,
                variables,
                inputs: inputs.clone(),
            })
        }
        RawKind::Child(items) => {
            let mut child = ChildPipeline {
                include: items.iter().map(|(i, _)| i.clone()).collect(),
                strategy: raw.strategy,
                forward: raw.forward,
                variables,
                pipeline: None,
                not_planned: None,
            };
            let spans: Vec<Span> = items.iter().map(|(_, s)| s.clone()).collect();
            plan_static_child(ctx, job, &mut child, &spans);
            Trigger::Child(Box::new(child))
        }
    }
}

/// A synthetic root `include: [...]` for a child pipeline's configuration.
fn child_root(include: &[ChildInclude], spans: &[Span], root_span: &Span) -> Node {
    let s = |v: Value, span: &Span| Node::new(v, span.clone());
    let text = |t: &str, span: &Span| s(Value::Str(t.to_owned()), span);
    let items = include
        .iter()
        .enumerate()
        .map(|(i, inc)| {
            let span = spans.get(i).unwrap_or(root_span);
            let (mut entries, inputs) = match inc {
                ChildInclude::Local { path, inputs } => {
                    (vec![(text("local", span), text(path, span))], inputs)
                }
                ChildInclude::Template { name, inputs } => {
                    (vec![(text("template", span), text(name, span))], inputs)
                }
                ChildInclude::Remote { url, inputs } => {
                    (vec![(text("remote", span), text(url, span))], inputs)
                }
                ChildInclude::Project {
                    project,
                    file,
                    git_ref,
                    inputs,
                } => {
                    let mut e = vec![
                        (text("project", span), text(project, span)),
                        (text("file", span), text(file, span)),
                    ];
                    if let Some(r) = git_ref {
                        e.push((text("ref", span), text(r, span)));
                    }
                    (e, inputs)
                }
                ChildInclude::Component { component, inputs } => (
                    vec![(text("component", span), text(component, span))],
                    inputs,
                ),
                ChildInclude::Artifact { job, path, inputs } => (
                    vec![
                        (text("artifact", span), text(path, span)),
                        (text("job", span), text(job, span)),
                    ],
                    inputs,
                ),
            };
            if !inputs.is_empty() {
                let map: serde_json::Map<String, serde_json::Value> =
                    inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                entries.push((
                    text("inputs", span),
                    Node::from_json(&serde_json::Value::Object(map), span),
                ));
            }
            s(Value::Map(entries), span)
        })
        .collect();
    s(
        Value::Map(vec![(
            text("include", root_span),
            s(Value::Seq(items), root_span),
        )]),
        root_span,
    )
}

/// The context a child pipeline is planned in: the parent's commit, ref and files, one level
/// deeper, `parent_pipeline` as its source and the variables passed down as its pipeline
/// variables.
fn child_context(parent: &Context, variables: BTreeMap<String, String>) -> Context {
    Context {
        inputs: BTreeMap::new(),
        child_depth: parent.child_depth + 1,
        source: "parent_pipeline".to_owned(),
        variables,
        ..parent.clone()
    }
}

fn child_label(include: &[ChildInclude]) -> String {
    include
        .iter()
        .map(ChildInclude::describe)
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Plans the child now when its configuration is static; sets `pipeline` or `not_planned`.
fn plan_static_child(ctx: &mut Ctx<'_>, job: &str, child: &mut ChildPipeline, spans: &[Span]) {
    if let Some(ChildInclude::Artifact {
        job: generator,
        path,
        ..
    }) = child
        .include
        .iter()
        .find(|i| matches!(i, ChildInclude::Artifact { .. }))
    {
        child.not_planned = Some(format!(
            "dynamic: generated by job `{generator}` ({path}), planned when `{job}` starts"
        ));
        return;
    }
    if ctx.context.child_depth >= MAX_CHILD_DEPTH {
        let span = ctx.job_span.clone();
        ctx.error_hint(
            &span,
            format!(
                "job `{job}` would start a child pipeline {} levels deep; GitLab allows {MAX_CHILD_DEPTH}",
                ctx.context.child_depth + 1
            ),
            "run these jobs in this pipeline, or trigger them from the parent",
        );
        child.not_planned = Some("nested deeper than GitLab allows".to_owned());
        return;
    }
    let variables: BTreeMap<String, String> = child
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let key = serde_json::json!([child.include, variables, ctx.context.child_depth]).to_string();
    if let Some(planned) = ctx.shared.children.borrow().get(&key) {
        child.pipeline = planned.clone().map(Box::new);
        if child.pipeline.is_none() {
            child.not_planned = Some("its configuration has errors".to_owned());
        }
        return;
    }
    if ctx.shared.children.borrow().len() >= MAX_CHILD_PLANS {
        child.not_planned = Some(format!(
            "more than {MAX_CHILD_PLANS} child pipelines to plan ahead; planned when `{job}` starts"
        ));
        return;
    }
    let context = child_context(ctx.context, variables);
    let label = child_label(&child.include);
    let root = child_root(&child.include, spans, &ctx.job_span);
    let mut sub = Ctx {
        file: &label,
        files: ctx.files,
        context: &context,
        diags: Vec::new(),
        shared: ctx.shared,
        default_cache_span: None,
        job_span: ctx.job_span.clone(),
    };
    // Reserve the slot first, so a child that triggers itself stops at the depth limit
    // instead of being planned again.
    ctx.shared.children.borrow_mut().insert(key.clone(), None);
    let planned = plan_document(&mut sub, root, false);
    let failed = sub.diags.iter().any(Diagnostic::is_error);
    ctx.diags.extend(sub.diags);
    let planned = planned.filter(|_| !failed);
    ctx.shared
        .children
        .borrow_mut()
        .insert(key, planned.clone());
    match planned {
        Some(p) => child.pipeline = Some(Box::new(p)),
        None => child.not_planned = Some("its configuration has errors".to_owned()),
    }
}

/// Plans a child pipeline for the coordinator (see [`crate::plan_child`]).
pub(crate) fn plan_child(
    parent: &Context,
    child: &ChildPipeline,
    variables: BTreeMap<String, String>,
    files: &dyn FileSource,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let label = child_label(&child.include);
    let span = Span::new(&label, 1, 1);
    if parent.child_depth >= MAX_CHILD_DEPTH {
        return (
            None,
            vec![Diagnostic::error(
                &span,
                format!(
                    "a child pipeline {} levels deep; GitLab allows {MAX_CHILD_DEPTH}",
                    parent.child_depth + 1
                ),
            )],
        );
    }
    let context = child_context(parent, variables);
    let shared = Shared::default();
    let mut ctx = Ctx {
        file: &label,
        files,
        context: &context,
        diags: Vec::new(),
        shared: &shared,
        default_cache_span: None,
        job_span: span.clone(),
    };
    let root = child_root(&child.include, &[], &span);
    let pipeline = plan_document(&mut ctx, root, false);
    (pipeline, ctx.diags)
}

/// Dynamic child pipelines, once every job is planned: the generating job must be in the
/// pipeline, run before the trigger job, and keep the file among its artifacts.
pub(super) fn check_dynamic_children(ctx: &mut Ctx<'_>, planned: &[Planned]) {
    for p in planned {
        let Some(Trigger::Child(c)) = &p.job.trigger else {
            continue;
        };
        for inc in &c.include {
            let ChildInclude::Artifact {
                job: generator,
                path,
                ..
            } = inc
            else {
                continue;
            };
            let Some(gen_job) = planned.iter().find(|q| &q.job.name == generator) else {
                ctx.error_hint(
                    &p.job.span,
                    format!("Job `{generator}` not found in parent pipeline or does not have artifacts!"),
                    format!("job `{}` includes a file generated by `{generator}`, which is not in this pipeline", p.job.name),
                );
                continue;
            };
            if !p.job.depends_on.contains(generator) {
                ctx.diags.push(
                    Diagnostic::warning(
                        &p.job.span,
                        format!(
                            "job `{}` includes `{path}` generated by `{generator}`, but does not wait for it",
                            p.job.name
                        ),
                    )
                    .with_hint(format!("add `{generator}` to its `needs`")),
                );
            }
            let covered = gen_job
                .job
                .artifacts
                .as_ref()
                .is_some_and(|a| a.paths.iter().any(|ap| artifact_path_covers(ap, path)));
            if !covered {
                ctx.diags.push(
                    Diagnostic::warning(
                        &gen_job.job.span,
                        format!(
                            "job `{generator}` generates `{path}` for `{}`, but its `artifacts:paths` do not keep it",
                            p.job.name
                        ),
                    )
                    .with_hint(format!("add `{path}` to `artifacts:paths` of `{generator}`")),
                );
            }
        }
    }
}

/// Whether an `artifacts:paths` entry (a file, a directory or a glob) keeps `path`.
fn artifact_path_covers(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./");
    let path = path.trim_start_matches("./");
    if pattern == path || path.starts_with(&format!("{}/", pattern.trim_end_matches('/'))) {
        return true;
    }
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher().is_match(path))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths() {
        assert!(artifact_path_covers("generated.yml", "generated.yml"));
        assert!(artifact_path_covers("out/", "out/child.yml"));
        assert!(artifact_path_covers("out", "out/child.yml"));
        assert!(artifact_path_covers("*.yml", "child.yml"));
        assert!(!artifact_path_covers("other.yml", "child.yml"));
    }
}
