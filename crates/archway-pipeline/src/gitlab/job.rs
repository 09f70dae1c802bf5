//! One job instance → a [`Job`] (its edges come later, in `needs`): stage, variables, rules,
//! scripts, tags and platform, and every other keyword — or, for a trigger job, what it
//! triggers ([`super::trigger`]).

use super::Ctx;
use archway_oci::duration::parse_duration;

use super::defaults::Inherit;
use super::keywords::{
    expect_bool, expect_str, nested_string_list, parse_artifacts, parse_cache, parse_image,
    parse_retry, parse_services, script_lines, string_list,
};
use super::matrix::Instance;
use super::needs::{RawNeed, parse_needs};
use super::rules::{RuleOutcome, job_rules};
use super::trigger::{RawTrigger, plan_trigger};
use super::variables::job_variables;
use crate::diag::{Diagnostic, Span};
use crate::graph::{AllowFailure, ExternalNeed, Job, Origin, When, platform_for_tag};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

/// A planned job with its `needs` and `dependencies` still unresolved.
pub(super) struct Planned {
    pub(super) job: Job,
    pub(super) needs_raw: Option<Vec<RawNeed>>,
    pub(super) deps_raw: Option<(Vec<String>, Span)>,
    pub(super) stage_span: Span,
}

/// What kind of job an instance is.
#[derive(Clone, Copy)]
pub(super) enum Kind<'a> {
    /// Runs a script on a runner.
    Script,
    /// Triggers a downstream pipeline (`trigger:`).
    Trigger(&'a RawTrigger),
    /// Only mirrors an upstream pipeline's status (`needs: [{pipeline: group/app}]`, no
    /// script).
    Mirror,
}

/// The job names a job-level `needs:` writes (for the `dependencies` check).
fn written_needs(n: &Node) -> Vec<String> {
    let items = super::rules::flatten_list(n, 256).unwrap_or_else(|| vec![n.clone()]);
    items
        .iter()
        .filter(|i| i.get("pipeline").is_none() && i.get("project").is_none())
        .filter_map(|i| match &i.value {
            Value::Str(s) => Some(s.clone()),
            Value::Map(_) => i.get("job").and_then(Node::scalar_text),
            _ => None,
        })
        .collect()
}

/// GitLab's `Job` validation: with `needs`, every `dependencies` entry must be needed too.
fn check_dependencies_in_needs(ctx: &mut Ctx<'_>, node: &Node, job: &str) {
    let (Some(needs), Some(deps)) = (node.get("needs"), node.get("dependencies")) else {
        return;
    };
    let needed = written_needs(needs);
    if needed.is_empty() {
        return;
    }
    let missing: Vec<String> = deps
        .as_seq()
        .unwrap_or_default()
        .iter()
        .filter_map(Node::scalar_text)
        .filter(|d| !needed.contains(d))
        .collect();
    if !missing.is_empty() {
        ctx.error_hint(
            &deps.span,
            format!(
                "jobs:{job} dependencies the {} should be part of needs",
                missing.join(", ")
            ),
            "with `needs`, a job gets artifacts only from the jobs it needs: add them to `needs`",
        );
    }
}

/// Plans one job instance; `None` when its rules exclude it.
pub(super) fn plan_instance(
    ctx: &mut Ctx<'_>,
    inst: Instance,
    base: &Vars,
    globals: &Vars,
    inherit: &Inherit,
    kind: Kind<'_>,
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
    check_dependencies_in_needs(ctx, node, &inst.base);
    let RuleOutcome {
        when,
        allow_failure,
        start_in,
        needs: needs_node,
    } = job_rules(
        ctx,
        node,
        &mut vars,
        &inst.base,
        !matches!(kind, Kind::Script),
    )?;
    let loc = format!("jobs:{}", inst.base);
    if when == When::Delayed && start_in.is_none() {
        ctx.diags.push(
            Diagnostic::error(&node.span, format!("{loc} start in can't be blank"))
                .with_hint("`when: delayed` needs `start_in`, e.g. `start_in: 30 minutes`"),
        );
    }
    if let Some(s) = &start_in {
        match parse_duration(s) {
            None => ctx.diags.push(
                Diagnostic::error(&node.span, format!("{loc} start in should be a duration"))
                    .with_hint(format!("`{s}` is not one; e.g. `30 minutes`, `1 day`")),
            ),
            // GitLab's limit on a delay.
            Some(d) if d.as_secs() > 7 * 24 * 3600 => ctx.error(
                &node.span,
                format!("{loc} start in should not exceed the limit"),
            ),
            Some(_) => {}
        }
    }
    if when != When::Delayed
        && matches!(kind, Kind::Script)
        && node.get("rules").is_none()
        && let Some(s) = node.get("start_in")
    {
        ctx.error_hint(
            &s.span,
            format!("{loc} start in must be blank"),
            "`start_in` goes with `when: delayed`",
        );
    }
    // Manual jobs may fail by default, as in GitLab.
    let allow_failure = allow_failure.unwrap_or(AllowFailure {
        allowed: when == When::Manual,
        exit_codes: Vec::new(),
    });

    let needs = needs_node.as_ref().map(|n| parse_needs(ctx, n, &inst.name));
    let (needs_raw, external_needs) = match needs {
        Some(n) => (Some(n.local), n.external),
        None => (None, Vec::new()),
    };
    let interruptible = node
        .get("interruptible")
        .and_then(|i| expect_bool(ctx, i, "interruptible"))
        .unwrap_or(false);
    let resource_group = node
        .get("resource_group")
        .and_then(|r| expect_str(ctx, r, "resource_group"))
        .map(|r| vars.expand(&r));
    let environment = node
        .get("environment")
        .and_then(|e| match &e.value {
            Value::Map(_) => {
                let eloc = format!("jobs:{}:environment", inst.base);
                if let Some(a) = e.get("action")
                    && let Some(action) = a.scalar_text()
                    && !ENVIRONMENT_ACTIONS.contains(&action.as_str())
                {
                    ctx.error(
                        &a.span,
                        format!("{eloc} action should be start, stop, prepare, verify, or access"),
                    );
                }
                let name = e.get("name").and_then(Node::scalar_text);
                if name.as_deref().is_none_or(str::is_empty) {
                    ctx.error(&e.span, format!("{eloc} name can't be blank"));
                }
                name
            }
            _ => expect_str(ctx, e, "environment"),
        })
        .map(|e| vars.expand(&e));
    let mut job = Job {
        name: inst.name.clone(),
        base_name: inst.base.clone(),
        matrix: inst.matrix.clone(),
        stage,
        image: None,
        services: Vec::new(),
        before_script: Vec::new(),
        script: Vec::new(),
        after_script: Vec::new(),
        variables: Vec::new(),
        tags: Vec::new(),
        platform: None,
        needs: None,
        dependencies: None,
        depends_on: Vec::new(),
        when,
        start_in,
        allow_failure,
        retry: Default::default(),
        timeout: None,
        interruptible,
        artifacts: None,
        cache: Vec::new(),
        resource_group,
        environment,
        trigger: None,
        external_needs,
        span: node.span.clone(),
    };
    let mut deps_raw = None;
    match kind {
        Kind::Trigger(raw) => job.trigger = Some(plan_trigger(ctx, &inst.name, raw, &vars)),
        Kind::Mirror => {}
        Kind::Script => {
            if job
                .external_needs
                .iter()
                .any(|n| matches!(n, ExternalNeed::Upstream { .. }))
            {
                ctx.error_hint(
                    &node.span,
                    format!("jobs:{}:needs config uses invalid types: bridge", inst.base),
                    "a job that mirrors an upstream pipeline (`needs: [{pipeline: group/app}]`) runs no script",
                );
            }
            plan_script_job(ctx, &inst, node, &vars, &mut job);
            deps_raw = node
                .get("dependencies")
                .map(|d| (string_list(ctx, d, "dependencies"), d.span.clone()));
        }
    }
    job.variables = vars.list(Origin::Global);
    Some(Planned {
        job,
        needs_raw,
        deps_raw,
        stage_span,
    })
}

/// The keywords of a job that runs a script: scripts, tags and platform, image, services,
/// retry, timeout, artifacts, cache.
fn plan_script_job(ctx: &mut Ctx<'_>, inst: &Instance, node: &Node, vars: &Vars, job: &mut Job) {
    let loc = format!("jobs:{}", inst.base);
    let script_node = node.get("script").or_else(|| node.get("run"));
    let before = ctx.diags.len();
    job.script = script_node
        .map(|s| script_lines(ctx, s, "script", &format!("{loc}:script")))
        .unwrap_or_default();
    if job.script.is_empty()
        && ctx.diags.len() == before
        && let Some(s) = script_node
    {
        ctx.error(&s.span, format!("job `{}` has an empty script", inst.name));
    }
    job.before_script = node
        .get("before_script")
        .map(|s| script_lines(ctx, s, "before_script", &format!("{loc}:before_script")))
        .unwrap_or_default();
    job.after_script = node
        .get("after_script")
        .map(|s| script_lines(ctx, s, "after_script", &format!("{loc}:after_script")))
        .unwrap_or_default();

    let (tags, platform) = job_tags(ctx, node, vars, &inst.name);
    job.tags = tags;
    job.platform = platform.map(str::to_owned);

    job.retry = node
        .get("retry")
        .map(|r| parse_retry(ctx, r, &format!("{loc}:retry")))
        .unwrap_or_default();
    job.timeout = node.get("timeout").and_then(|t| {
        let s = expect_str(ctx, t, "timeout")?;
        let d = parse_duration(&s).map(|d| d.as_secs());
        if d.is_none() {
            ctx.diags.push(
                Diagnostic::error(&t.span, format!("{loc} timeout should be a duration"))
                    .with_hint(format!("`{s}` is not one; e.g. `1h 30m`, `90 minutes`")),
            );
        }
        d
    });
    job.image = node.get("image").and_then(|i| parse_image(ctx, i, vars));
    // `image:docker:platform` chooses the platform too (a runner that runs it).
    if let Some(p) = job.image.as_ref().and_then(|i| i.platform.clone()) {
        match &job.platform {
            Some(t) if *t != p => ctx.error(
                &node
                    .get("image")
                    .map_or_else(|| node.span.clone(), |i| i.span.clone()),
                format!(
                    "job `{}`: image:docker:platform {p} contradicts its tags, which ask for {t}",
                    inst.name
                ),
            ),
            _ => job.platform = Some(p),
        }
    }
    job.services = node
        .get("services")
        .map(|s| parse_services(ctx, s, vars))
        .unwrap_or_default();
    job.artifacts = node
        .get("artifacts")
        .and_then(|a| parse_artifacts(ctx, a, vars, &format!("{loc}:artifacts")));
    job.cache = node
        .get("cache")
        .map(|c| {
            // A cache from `default:` is reported as GitLab names it there.
            let loc = if ctx.default_cache_span.as_ref() == Some(&c.span) {
                "default:cache".to_owned()
            } else {
                format!("{loc}:cache")
            };
            parse_cache(ctx, c, vars, &loc)
        })
        .unwrap_or_default();
}
/// `environment:action` values GitLab accepts.
const ENVIRONMENT_ACTIONS: [&str; 5] = ["start", "stop", "prepare", "verify", "access"];

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
                    format!("jobs:{job}:tags config should be an array of strings"),
                    "write `tags: [amd64]`",
                );
                return Vec::new();
            }
            nested_string_list(ctx, t, "tags")
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
