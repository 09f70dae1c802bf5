//! Rules: `workflow:rules`, a job's `rules` (`if`, `changes`, `exists`, and what a matching
//! rule sets), and the older `only`/`except`.

use globset::Glob;

use super::keywords::{expect_str, parse_allow_failure, parse_when, string_list};
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
            if name == "rules" && v.as_seq().is_none() {
                ctx.error(
                    &v.span,
                    format!("workflow:rules must be a list, found {}", v.kind()),
                );
            }
        }
        if let Some(rules) = w.get("rules").and_then(Node::as_seq) {
            runs = false;
            for r in rules {
                match eval_rule_conditions(ctx, r, base) {
                    Some(true) => {
                        runs = r.get("when").and_then(Node::as_str) != Some("never");
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

/// What a job's `when`, `allow_failure`, `start_in` and `needs` are once its rules are applied.
pub(super) struct RuleOutcome {
    pub(super) when: When,
    /// `None`: not set (manual jobs may fail, others may not).
    pub(super) allow_failure: Option<AllowFailure>,
    pub(super) start_in: Option<String>,
    pub(super) needs: Option<Node>,
}

/// Applies a job's `rules` (or `only`/`except`); `None` when they exclude the job. The
/// matching rule's `variables` are added to `vars`.
pub(super) fn job_rules(ctx: &mut Ctx<'_>, node: &Node, vars: &mut Vars) -> Option<RuleOutcome> {
    let mut when = When::OnSuccess;
    if let Some(w) = node.get("when") {
        match parse_when(ctx, w, true) {
            Some(Some(w)) => when = w,
            Some(None) => return None,
            None => {}
        }
    }
    let mut allow_failure = node
        .get("allow_failure")
        .map(|a| parse_allow_failure(ctx, a));
    let mut start_in = node
        .get("start_in")
        .and_then(|s| expect_str(ctx, s, "start_in"));
    let mut needs_node = node.get("needs").cloned();

    if let Some(rules) = node.get("rules") {
        if node.get("only").is_some() || node.get("except").is_some() {
            ctx.error(
                &rules.span,
                "a job cannot use `rules` together with `only`/`except`",
            );
        }
        let Some(list) = rules.as_seq() else {
            ctx.error(
                &rules.span,
                format!("rules must be a list, found {}", rules.kind()),
            );
            return None;
        };
        let mut matched = false;
        for r in list {
            match eval_rule_conditions(ctx, r, vars) {
                Some(true) => {
                    matched = true;
                    // The rule's `when` replaces the job's (default on_success).
                    when = When::OnSuccess;
                    if let Some(w) = r.get("when") {
                        match parse_when(ctx, w, true) {
                            Some(Some(w)) => when = w,
                            Some(None) => return None,
                            None => {}
                        }
                    } else if let Some(w) = node.get("when")
                        && let Some(Some(jw)) = parse_when(&mut ctx.silent(), w, true)
                    {
                        when = jw;
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
/// error (reported).
pub(super) fn eval_rule_conditions(ctx: &mut Ctx<'_>, rule: &Node, vars: &Vars) -> Option<bool> {
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
                        ctx.error(&v.span, format!("invalid rules:if `{text}`: {e}"));
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
