//! Rules: `workflow:rules`, a job's `rules` (`if`, `changes`, `exists`, and what a matching
//! rule sets; nested lists from `!reference` flattened), `when`, and the older
//! `only`/`except`.

use globset::Glob;

use super::keywords::{expect_str, parse_allow_failure, string_list};
use super::variables::read_variables;
use super::{Ctx, key_name, normalize_path};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::expr::Expr;
use crate::graph::{AllowFailure, Origin, When};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

/// Whether the pipeline runs at all: `workflow:rules` (the first matching rule decides, and its
/// `variables` join `base`).
pub(super) fn workflow_runs(ctx: &mut Ctx<'_>, root: &Node, base: &mut Vars) -> bool {
    let mut runs = true;
    if let Some(w) = root.get("workflow") {
        for (k, v) in w.as_map().unwrap_or_default() {
            let name = key_name(k);
            if !["rules", "name", "auto_cancel"].contains(&name.as_str()) {
                ctx.error(
                    &k.span,
                    format!(
                        "unknown workflow keyword `{name}` (expected rules, name, auto_cancel)"
                    ),
                );
            }
            if name == "rules" && v.as_seq().is_none_or(<[Node]>::is_empty) {
                if v.is_null() || v.as_seq().is_some() {
                    ctx.error(&v.span, "workflow:rules config can't be blank");
                } else {
                    ctx.error(
                        &v.span,
                        format!("workflow:rules must be a list, found {}", v.kind()),
                    );
                }
            }
        }
        if let Some(rules) = w.get("rules").and_then(|r| rule_list(ctx, r, "workflow")) {
            runs = false;
            for r in &rules {
                match eval_rule_conditions(ctx, r, base, "workflow:rules:rule") {
                    Some(true) => {
                        runs = match r.get("when") {
                            Some(w) => {
                                parse_when(
                                    ctx,
                                    w,
                                    &["always", "never"],
                                    "workflow:rules:rule",
                                    true,
                                ) != Some(None)
                            }
                            None => true,
                        };
                        if let Some(v) = r.get("variables") {
                            read_variables(ctx, v, Origin::Workflow, base);
                        }
                        break;
                    }
                    Some(false) => {}
                    None => break,
                }
            }
        }
    }
    runs
}

/// A list flattened the way GitLab flattens nested lists (what `!reference` produces):
/// nested lists up to `max_level` deep are spliced in; a deeper list stays an element.
/// `None` when `n` is not a list.
pub(super) fn flatten_list(n: &Node, max_level: usize) -> Option<Vec<Node>> {
    fn walk(items: &[Node], level: usize, max: usize, out: &mut Vec<Node>) {
        for i in items {
            match &i.value {
                Value::Seq(inner) if level < max => walk(inner, level + 1, max, out),
                _ => out.push(i.clone()),
            }
        }
    }
    let items = n.as_seq()?;
    let mut out = Vec::new();
    walk(items, 0, max_level, &mut out);
    Some(out)
}

/// `rules:` of `owner` (`jobs:NAME` or `workflow`) → the rules, flattened; `None` when blank
/// or malformed (reported with GitLab's messages).
fn rule_list(ctx: &mut Ctx<'_>, rules: &Node, owner: &str) -> Option<Vec<Node>> {
    let list = match &rules.value {
        Value::Seq(_) => flatten_list(rules, 10).unwrap_or_default(),
        Value::Null => Vec::new(),
        _ => {
            ctx.error(
                &rules.span,
                format!("rules must be a list, found {}", rules.kind()),
            );
            return None;
        }
    };
    if list.is_empty() {
        if owner != "workflow" {
            ctx.error(&rules.span, format!("{owner}:rules config can't be blank"));
        }
        return None;
    }
    if let Some(bad) = list.iter().find(|r| r.as_map().is_none()) {
        ctx.error(
            &bad.span,
            format!("{owner} rules should be an array containing hashes and arrays of hashes"),
        );
        return None;
    }
    Some(list)
}

/// The `when` values a job may use (GitLab's `Job::ALLOWED_WHEN`), a trigger job
/// (`Bridge::ALLOWED_WHEN`), and a job's rule.
pub(super) const JOB_WHEN: &[&str] = &["on_success", "on_failure", "always", "manual", "delayed"];
pub(super) const TRIGGER_WHEN: &[&str] = &["on_success", "on_failure", "always", "manual"];
const RULE_WHEN: &[&str] = &[
    "on_success",
    "on_failure",
    "always",
    "never",
    "manual",
    "delayed",
];

/// `when:` → `Some(Some(when))`, `Some(None)` for `never`, `None` when not one of `allowed`
/// (reported as GitLab does: "LOC when should be one of: …" for a job, "LOC when unknown
/// value: …" for a rule).
pub(super) fn parse_when(
    ctx: &mut Ctx<'_>,
    n: &Node,
    allowed: &[&str],
    loc: &str,
    rule: bool,
) -> Option<Option<When>> {
    let s = n.scalar_text().unwrap_or_default();
    if n.as_str().is_some() && allowed.contains(&s.as_str()) {
        return Some(match s.as_str() {
            "on_success" => Some(When::OnSuccess),
            "on_failure" => Some(When::OnFailure),
            "always" => Some(When::Always),
            "manual" => Some(When::Manual),
            "delayed" => Some(When::Delayed),
            _ => None,
        });
    }
    let d = if rule {
        Diagnostic::error(&n.span, format!("{loc} when unknown value: {s}"))
    } else {
        Diagnostic::error(
            &n.span,
            format!("{loc} when should be one of: {}", allowed.join(", ")),
        )
    };
    ctx.diags
        .push(match did_you_mean(&s, allowed.iter().copied()) {
            Some(h) => d.with_hint(format!("did you mean `{h}`?")),
            None if s == "never" => {
                d.with_hint("`when: never` belongs in `rules` (or `workflow:rules`)")
            }
            None => d,
        });
    None
}

/// What a job's `when`, `allow_failure`, `start_in` and `needs` are once its rules are applied.
pub(super) struct RuleOutcome {
    pub(super) when: When,
    /// `None`: not set (manual jobs may fail, others may not).
    pub(super) allow_failure: Option<AllowFailure>,
    pub(super) start_in: Option<String>,
    pub(super) needs: Option<Node>,
}

/// Applies a job's `rules` (or `only`/`except`); `None` when they exclude the job. The
/// matching rule's `variables` are added to `vars`. `job` names the job in messages;
/// `trigger` selects the `when` values of a trigger job.
pub(super) fn job_rules(
    ctx: &mut Ctx<'_>,
    node: &Node,
    vars: &mut Vars,
    job: &str,
    trigger: bool,
) -> Option<RuleOutcome> {
    let loc = format!("jobs:{job}");
    let job_when = if trigger { TRIGGER_WHEN } else { JOB_WHEN };
    let mut when = When::OnSuccess;
    let mut job_level_when = None;
    if let Some(w) = node.get("when")
        && let Some(Some(w)) = parse_when(ctx, w, job_when, &loc, false)
    {
        when = w;
        job_level_when = Some(w);
    }
    let mut allow_failure = node
        .get("allow_failure")
        .map(|a| parse_allow_failure(ctx, a));
    let mut start_in = node
        .get("start_in")
        .and_then(|s| expect_str(ctx, s, "start_in"));
    let mut needs_node = node.get("needs").cloned();

    if let Some(rules) = node.get("rules") {
        let disallowed: Vec<&str> = ["only", "except", "start_in"]
            .into_iter()
            .filter(|k| node.get(k).is_some())
            .collect();
        if !disallowed.is_empty() {
            ctx.error_hint(
                &rules.span,
                format!(
                    "{loc} config key may not be used with `rules`: {}",
                    disallowed.join(", ")
                ),
                "with `rules`, say it in the rules (`when`, `start_in`) instead",
            );
        }
        let list = rule_list(ctx, rules, &loc)?;
        let rule_loc = format!("{loc}:rules:rule");
        let mut matched = false;
        for r in &list {
            match eval_rule_conditions(ctx, r, vars, &rule_loc) {
                Some(true) => {
                    matched = true;
                    // The rule's `when` replaces the job's (default on_success).
                    when = job_level_when.unwrap_or(When::OnSuccess);
                    if let Some(w) = r.get("when") {
                        match parse_when(ctx, w, RULE_WHEN, &rule_loc, true) {
                            Some(Some(w)) => when = w,
                            Some(None) => return None,
                            None => {}
                        }
                    }
                    if let Some(a) = r.get("allow_failure") {
                        allow_failure = Some(parse_allow_failure(ctx, a));
                    }
                    if let Some(v) = r.get("variables") {
                        read_variables(ctx, v, Origin::Rule, vars);
                        for (k, v) in &ctx.context.variables {
                            vars.set(k, v, Origin::Pipeline, false);
                        }
                    }
                    if let Some(n) = r.get("needs") {
                        needs_node = Some(n.clone());
                    }
                    if let Some(s) = r.get("start_in") {
                        start_in = expect_str(ctx, s, "start_in");
                    }
                    break;
                }
                Some(false) => {}
                None => return None,
            }
        }
        if !matched {
            return None;
        }
    } else {
        if let Some(o) = node.get("only")
            && !only_except_matches(ctx, o, vars)
        {
            return None;
        }
        if let Some(e) = node.get("except")
            && only_except_matches(ctx, e, vars)
        {
            return None;
        }
    }
    Some(RuleOutcome {
        when,
        allow_failure,
        start_in,
        needs: needs_node,
    })
}

pub(super) fn glob_match_any(
    ctx: &mut Ctx<'_>,
    patterns: &[String],
    files: &[String],
    span: &Span,
    vars: &Vars,
) -> bool {
    for p in patterns {
        let p = normalize_path(&vars.expand(p));
        match Glob::new(&p) {
            Ok(g) => {
                let m = g.compile_matcher();
                if files.iter().any(|f| m.is_match(f.as_str())) {
                    return true;
                }
            }
            Err(e) => ctx.error(span, format!("invalid file pattern `{p}`: {e}")),
        }
    }
    false
}

/// Whether a rule's conditions (`if`, `changes`, `exists`) hold; `None` if it has a syntax
/// error (reported; `loc` names the rule as GitLab does, e.g. `jobs:build:rules:rule`).
pub(super) fn eval_rule_conditions(
    ctx: &mut Ctx<'_>,
    rule: &Node,
    vars: &Vars,
    loc: &str,
) -> Option<bool> {
    let Some(entries) = rule.as_map() else {
        ctx.error(
            &rule.span,
            format!("each rule must be a mapping, found {}", rule.kind()),
        );
        return None;
    };
    let mut ok = true;
    for (k, v) in entries {
        match key_name(k).as_str() {
            "if" => {
                let Some(text) = v.scalar_text() else {
                    ctx.error(&v.span, "rules:if must be a string expression");
                    return None;
                };
                let expr = match Expr::parse(&text) {
                    Ok(e) => e,
                    Err(e) => {
                        ctx.error_hint(
                            &v.span,
                            format!("{loc} if invalid expression syntax"),
                            format!("in `{text}`: {e}"),
                        );
                        return None;
                    }
                };
                match expr.eval(&|n| vars.get(n)) {
                    Ok(b) => ok &= b,
                    Err(e) => {
                        ctx.error(&v.span, format!("rules:if `{text}`: {e}"));
                        return None;
                    }
                }
            }
            "changes" => {
                let patterns = match (&v.value, v.get("paths")) {
                    (Value::Map(_), Some(p)) => string_list(ctx, p, "rules:changes:paths"),
                    _ => string_list(ctx, v, "rules:changes"),
                };
                if let Some(changed) = &ctx.context.changed_files {
                    let changed = changed.clone();
                    ok &= glob_match_any(ctx, &patterns, &changed, &v.span, vars);
                }
            }
            "exists" => {
                let patterns = match (&v.value, v.get("paths")) {
                    (Value::Map(_), Some(p)) => string_list(ctx, p, "rules:exists:paths"),
                    _ => string_list(ctx, v, "rules:exists"),
                };
                let files = ctx.context.repo_files.clone();
                ok &= glob_match_any(ctx, &patterns, &files, &v.span, vars);
            }
            "when" | "allow_failure" | "variables" | "needs" | "start_in" | "interruptible" => {}
            other => {
                let hint = did_you_mean(
                    other,
                    [
                        "if",
                        "changes",
                        "exists",
                        "when",
                        "allow_failure",
                        "variables",
                        "needs",
                        "start_in",
                    ],
                );
                let d = Diagnostic::error(&k.span, format!("unknown rule keyword `{other}`"));
                ctx.diags.push(match hint {
                    Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                    None => d,
                });
            }
        }
    }
    Some(ok)
}

/// `only`/`except` (the predecessors of `rules`): refs and keywords, and `variables`.
pub(super) fn only_except_matches(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> bool {
    let c = ctx.context;
    let ref_name = c
        .tag
        .clone()
        .or_else(|| c.branch.clone())
        .unwrap_or_default();
    let matches_ref = |ctx: &mut Ctx<'_>, r: &str| -> bool {
        match r {
            "branches" => c.tag.is_none() && c.branch.is_some(),
            "tags" => c.tag.is_some(),
            "merge_requests" => c.source == "merge_request_event",
            "pushes" => c.source == "push",
            "schedules" => c.source == "schedule",
            "web" => c.source == "web",
            "api" => c.source == "api",
            "triggers" => c.source == "trigger",
            "pipelines" => c.source == "pipeline",
            "external" => c.source == "external",
            "chat" => c.source == "chat",
            r if r.starts_with('/') && r.len() > 1 => {
                let end = r.rfind('/').unwrap_or(r.len());
                let (pat, flags) = if end > 0 {
                    (&r[1..end], &r[end + 1..])
                } else {
                    (&r[1..], "")
                };
                let full = if flags.contains('i') {
                    format!("(?i){pat}")
                } else {
                    pat.to_owned()
                };
                match regex::Regex::new(&full) {
                    Ok(re) => re.is_match(&ref_name),
                    Err(e) => {
                        ctx.error(&n.span, format!("invalid only/except pattern {r}: {e}"));
                        false
                    }
                }
            }
            r => r == ref_name,
        }
    };
    match &n.value {
        Value::Seq(_) | Value::Str(_) => string_list(ctx, n, "only/except")
            .iter()
            .any(|r| matches_ref(ctx, r)),
        Value::Map(entries) => {
            let mut ok = true;
            for (k, v) in entries {
                match key_name(k).as_str() {
                    "refs" => {
                        ok &= string_list(ctx, v, "only:refs")
                            .iter()
                            .any(|r| matches_ref(ctx, r))
                    }
                    "variables" => {
                        let exprs = string_list(ctx, v, "only:variables");
                        ok &= exprs.iter().any(|e| match Expr::parse(e) {
                            Ok(x) => x.eval(&|n| vars.get(n)).unwrap_or(false),
                            Err(err) => {
                                ctx.error(
                                    &v.span,
                                    format!("invalid only:variables expression `{e}`: {err}"),
                                );
                                false
                            }
                        });
                    }
                    "changes" => {
                        if let Some(changed) = &ctx.context.changed_files {
                            let changed = changed.clone();
                            let pats = string_list(ctx, v, "only:changes");
                            ok &= glob_match_any(ctx, &pats, &changed, &v.span, vars);
                        }
                    }
                    other => ctx.error(
                        &k.span,
                        format!("only/except:{other} is not supported; use rules instead"),
                    ),
                }
            }
            ok
        }
        _ => {
            ctx.error(&n.span, "only/except must be a list of refs or a mapping");
            true
        }
    }
}
