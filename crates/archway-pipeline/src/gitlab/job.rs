//! One job instance → a [`Job`] (its edges come later, in `needs`): stage, variables, rules,
//! scripts, tags and platform, and every other keyword.

use super::Ctx;
use archway_oci::duration::parse_duration;

use super::defaults::Inherit;
use super::keywords::{
    expect_bool, expect_str, parse_artifacts, parse_cache, parse_image, parse_retry,
    parse_services, script_lines, string_list,
};
use super::matrix::Instance;
use super::needs::{RawNeed, parse_needs};
use super::rules::{RuleOutcome, job_rules};
use super::variables::job_variables;
use crate::diag::Span;
use crate::graph::{AllowFailure, Job, Origin, Variable, When, platform_for_tag};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

/// A planned job with its `needs` and `dependencies` still unresolved.
pub(super) struct Planned {
    pub(super) job: Job,
    pub(super) needs_raw: Option<Vec<RawNeed>>,
    pub(super) deps_raw: Option<(Vec<String>, Span)>,
    pub(super) stage_span: Span,
}

/// Plans one job instance; `None` when its rules exclude it.
pub(super) fn plan_instance(
    ctx: &mut Ctx<'_>,
    inst: Instance,
    base: &Vars,
    globals: &Vars,
    inherit: &Inherit,
) -> Option<Planned> {
    let node = &inst.node;
    let stage = node
        .get("stage")
        .and_then(|s| expect_str(ctx, s, "stage"))
        .unwrap_or_else(|| "test".into());
    let stage_span = node
        .get("stage")
        .map_or_else(|| node.span.clone(), |s| s.span.clone());
    let mut vars = job_variables(ctx, &inst, &stage, base, globals, inherit);
    let RuleOutcome {
        when,
        allow_failure,
        start_in,
        needs: needs_node,
    } = job_rules(ctx, node, &mut vars)?;
    if when == When::Delayed && start_in.is_none() {
        ctx.error(
            &node.span,
            format!(
                "job `{}` is `when: delayed` but has no `start_in`",
                inst.name
            ),
        );
    }
    if let Some(s) = &start_in
        && parse_duration(s).is_none()
    {
        ctx.error(&node.span, format!("start_in `{s}` is not a duration"));
    }
    // Manual jobs may fail by default, as in GitLab.
    let allow_failure = allow_failure.unwrap_or(AllowFailure {
        allowed: when == When::Manual,
        exit_codes: Vec::new(),
    });

    let script_node = node.get("script").or_else(|| node.get("run"));
    let script = script_node
        .map(|s| script_lines(ctx, s, "script"))
        .unwrap_or_default();
    if script.is_empty()
        && let Some(s) = script_node
    {
        ctx.error(&s.span, format!("job `{}` has an empty script", inst.name));
    }
    let before_script = node
        .get("before_script")
        .map(|s| script_lines(ctx, s, "before_script"))
        .unwrap_or_default();
    let after_script = node
        .get("after_script")
        .map(|s| script_lines(ctx, s, "after_script"))
        .unwrap_or_default();

    let (tags, platform) = job_tags(ctx, node, &vars, &inst.name);

    let retry = node
        .get("retry")
        .map(|r| parse_retry(ctx, r))
        .unwrap_or_default();
    let timeout = node.get("timeout").and_then(|t| {
        let s = expect_str(ctx, t, "timeout")?;
        let d = parse_duration(&s).map(|d| d.as_secs());
        if d.is_none() {
            ctx.error(
                &t.span,
                format!("timeout `{s}` is not a duration (e.g. `1h 30m`, `90 minutes`)"),
            );
        }
        d
    });
    let interruptible = node
        .get("interruptible")
        .and_then(|i| expect_bool(ctx, i, "interruptible"))
        .unwrap_or(false);
    let image = node.get("image").and_then(|i| parse_image(ctx, i, &vars));
    let services = node
        .get("services")
        .map(|s| parse_services(ctx, s, &vars))
        .unwrap_or_default();
    let artifacts = node
        .get("artifacts")
        .and_then(|a| parse_artifacts(ctx, a, &vars));
    let cache = node
        .get("cache")
        .map(|c| parse_cache(ctx, c, &vars))
        .unwrap_or_default();
    let resource_group = node
        .get("resource_group")
        .and_then(|r| expect_str(ctx, r, "resource_group"))
        .map(|r| vars.expand(&r));
    let environment = node
        .get("environment")
        .and_then(|e| match &e.value {
            Value::Map(_) => e.get("name").and_then(Node::scalar_text),
            _ => expect_str(ctx, e, "environment"),
        })
        .map(|e| vars.expand(&e));
    let needs_raw = needs_node.as_ref().map(|n| parse_needs(ctx, n));
    let deps_raw = node
        .get("dependencies")
        .map(|d| (string_list(ctx, d, "dependencies"), d.span.clone()));

    let variables: Vec<Variable> = vars.list(Origin::Global);
    Some(Planned {
        job: Job {
            name: inst.name,
            base_name: inst.base,
            matrix: inst.matrix,
            stage,
            image,
            services,
            before_script,
            script,
            after_script,
            variables,
            tags,
            platform: platform.map(str::to_owned),
            needs: None,
            dependencies: None,
            depends_on: Vec::new(),
            when,
            start_in,
            allow_failure,
            retry,
            timeout,
            interruptible,
            artifacts,
            cache,
            resource_group,
            environment,
            span: node.span.clone(),
        },
        needs_raw,
        deps_raw,
        stage_span,
    })
}

/// A job's `tags` (expanded; empty ones warned about and dropped) and the platform they ask for.
fn job_tags(
    ctx: &mut Ctx<'_>,
    node: &Node,
    vars: &Vars,
    job: &str,
) -> (Vec<String>, Option<&'static str>) {
    let tags: Vec<String> = node
        .get("tags")
        .map(|t| {
            if t.as_seq().is_none() {
                ctx.error_hint(
                    &t.span,
                    format!("tags must be a list, found {}", t.kind()),
                    "write `tags: [amd64]`",
                );
                return Vec::new();
            }
            string_list(ctx, t, "tags")
        })
        .unwrap_or_default()
        .into_iter()
        .map(|t| vars.expand(&t))
        .collect();
    let tags_span = node
        .get("tags")
        .map_or_else(|| node.span.clone(), |t| t.span.clone());
    if tags.iter().any(String::is_empty) {
        ctx.warn(
            &tags_span,
            format!(
                "a tag of job `{}` expands to nothing (is its variable defined?)",
                job
            ),
        );
    }
    let tags: Vec<String> = tags.into_iter().filter(|t| !t.is_empty()).collect();
    let mut platform: Option<&str> = None;
    for t in &tags {
        if let Some(p) = platform_for_tag(t) {
            match platform {
                Some(existing) if existing != p => {
                    ctx.error(
                        &tags_span,
                        format!(
                            "job `{}` asks for both {existing} and {p} runners (tags: {})",
                            job,
                            tags.join(", ")
                        ),
                    );
                }
                _ => platform = Some(p),
            }
        }
    }
    (tags, platform)
}
