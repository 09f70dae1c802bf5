//! Variables: GitLab's predefined ones, `variables:` mappings, and the precedence a job's
//! variables are assembled in (predefined < global (as inherited) < workflow < job < matrix <
//! rules < pipeline).

use std::collections::HashSet;

use super::defaults::Inherit;
use super::keywords::expect_bool;
use super::matrix::Instance;
use super::{Ctx, key_name};
use crate::graph::{Context, Origin};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

pub(super) fn slug(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_owned()
}

pub(super) fn predefined(vars: &mut Vars, c: &Context) {
    let p = Origin::Predefined;
    vars.set("CI", "true", p, false);
    vars.set("GITLAB_CI", "true", p, false);
    vars.set("ARCHWAY", "true", p, false);
    vars.set("CI_PIPELINE_SOURCE", &c.source, p, false);
    vars.set("CI_DEFAULT_BRANCH", &c.default_branch, p, false);
    vars.set("CI_PROJECT_DIR", "/builds/project", p, false);
    vars.set("CI_SERVER", "yes", p, false);
    if let Some(t) = &c.tag {
        vars.set("CI_COMMIT_TAG", t, p, false);
        vars.set("CI_COMMIT_REF_NAME", t, p, false);
        vars.set("CI_COMMIT_REF_SLUG", &slug(t), p, false);
    } else if let Some(b) = &c.branch {
        vars.set("CI_COMMIT_BRANCH", b, p, false);
        vars.set("CI_COMMIT_REF_NAME", b, p, false);
        vars.set("CI_COMMIT_REF_SLUG", &slug(b), p, false);
        if c.source == "merge_request_event" {
            vars.set("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", b, p, false);
        }
    }
}

/// Reads a `variables:` mapping into `vars`.
pub(super) fn read_variables(ctx: &mut Ctx<'_>, n: &Node, origin: Origin, vars: &mut Vars) {
    let Some(entries) = n.as_map() else {
        if !n.is_null() {
            ctx.error(
                &n.span,
                format!(
                    "variables must be a mapping of NAME: value, found {}",
                    n.kind()
                ),
            );
        }
        return;
    };
    for (k, v) in entries {
        let name = key_name(k);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            ctx.error(
                &k.span,
                format!("`{name}` is not a valid variable name (letters, digits, _)"),
            );
            continue;
        }
        match &v.value {
            Value::Map(_) => {
                let mut expand = true;
                for (mk, mv) in v.as_map().unwrap_or_default() {
                    match key_name(mk).as_str() {
                        "value" | "description" | "options" => {}
                        "expand" => expand = expect_bool(ctx, mv, "variables:expand").unwrap_or(true),
                        other => ctx.error(&mk.span, format!("unknown key `{other}` in variable `{name}` (expected value, description, options, expand)")),
                    }
                }
                let value = v
                    .get("value")
                    .and_then(Node::scalar_text)
                    .unwrap_or_default();
                vars.set(&name, &value, origin, expand);
            }
            Value::Seq(_) => ctx.error(
                &v.span,
                format!("variable `{name}` must be a string, found a list"),
            ),
            _ => vars.set(&name, &v.scalar_text().unwrap_or_default(), origin, true),
        }
    }
}

/// The pipeline's variables (`base`: predefined, global, the pipeline's own) and the global
/// ones alone (for jobs that inherit only some of them).
pub(super) fn pipeline_variables(ctx: &mut Ctx<'_>, root: &Node) -> (Vars, Vars) {
    let mut base = Vars::default();
    predefined(&mut base, ctx.context);
    if let Some(v) = root.get("variables") {
        read_variables(ctx, v, Origin::Global, &mut base);
    }
    for (k, v) in &ctx.context.variables {
        base.set(k, v, Origin::Pipeline, false);
    }
    let mut globals_only = Vars::default();
    if let Some(v) = root.get("variables") {
        read_variables(&mut ctx.silent(), v, Origin::Global, &mut globals_only);
    }
    (base, globals_only)
}

/// One job instance's variables before its rules: `base` less the global variables it does
/// not inherit, its predefined `CI_JOB_*`/`CI_NODE_*`, its own `variables:`, its matrix values
/// and the pipeline's variables on top.
pub(super) fn job_variables(
    ctx: &mut Ctx<'_>,
    inst: &Instance,
    stage: &str,
    base: &Vars,
    globals: &Vars,
    inherit: &Inherit,
) -> Vars {
    let mut vars = base.clone();
    if !inherit.variables_all || inherit.variables.is_some() {
        // Rebuild without the global variables the job does not inherit.
        let mut v = Vars::default();
        predefined(&mut v, ctx.context);
        let keep: HashSet<String> = match (&inherit.variables, inherit.variables_all) {
            (Some(list), _) => list.clone(),
            (None, false) => HashSet::new(),
            (None, true) => globals
                .list(Origin::Global)
                .into_iter()
                .map(|x| x.name)
                .collect(),
        };
        for g in globals.list(Origin::Global) {
            if keep.contains(&g.name) {
                v.set(&g.name, &g.value, Origin::Global, true);
            }
        }
        for x in base.list(Origin::Workflow) {
            v.set(&x.name, &x.value, x.origin, false);
        }
        vars = v;
    }
    vars.set("CI_JOB_NAME", &inst.name, Origin::Predefined, false);
    vars.set(
        "CI_JOB_NAME_SLUG",
        &slug(&inst.name),
        Origin::Predefined,
        false,
    );
    vars.set("CI_JOB_STAGE", stage, Origin::Predefined, false);
    if let Some((i, n)) = inst.node_index {
        vars.set("CI_NODE_INDEX", &i.to_string(), Origin::Predefined, false);
        vars.set("CI_NODE_TOTAL", &n.to_string(), Origin::Predefined, false);
    }
    if let Some(v) = inst.node.get("variables") {
        read_variables(ctx, v, Origin::Job, &mut vars);
    }
    for (k, v) in &inst.matrix {
        vars.set(k, v, Origin::Matrix, true);
    }
    for (k, v) in &ctx.context.variables {
        vars.set(k, v, Origin::Pipeline, false);
    }
    vars
}
