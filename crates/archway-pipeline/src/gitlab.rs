//! The GitLab CI front end: `.gitlab-ci.yml` → [`Pipeline`].
//!
//! The order follows GitLab's own: load YAML (anchors, aliases, merge keys), merge
//! `include: local` files, resolve `!reference` tags, resolve `extends` (deep merge), apply
//! `default:`, evaluate `workflow:rules`, expand `parallel` / `parallel:matrix`, evaluate each
//! job's `rules`, then resolve stages, `needs` and `dependencies` into edges.
//!
//! Every problem becomes a positioned [`Diagnostic`]; a job is never dropped silently.

use std::collections::{BTreeMap, HashMap, HashSet};

use globset::Glob;

use crate::FileSource;
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::expr::Expr;
use crate::graph::{
    AllowFailure, Artifacts, Cache, Context, Image, Job, Need, Origin, Pipeline, Retry, Service,
    SourceFormat, Variable, When, platform_for_tag,
};
use crate::vars::Vars;
use crate::yaml::{self, Node, Value};

/// GitLab's limit on jobs a `parallel:matrix` may produce.
pub const MAX_MATRIX_JOBS: usize = 200;
const MAX_INCLUDES: usize = 150;
const MAX_EXTENDS_DEPTH: usize = 11;
const MAX_REFERENCE_DEPTH: usize = 10;

/// Top-level keys that are not jobs.
const GLOBAL_KEYS: &[&str] = &[
    "stages",
    "types",
    "variables",
    "default",
    "workflow",
    "include",
    "image",
    "services",
    "before_script",
    "after_script",
    "cache",
    "spec",
];

/// Job keywords GitLab defines.
const JOB_KEYWORDS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "release",
    "resource_group",
    "retry",
    "rules",
    "script",
    "run",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "when",
];

/// Keywords accepted but not used by Archway (a warning says so).
const IGNORED_KEYWORDS: &[&str] = &[
    "coverage",
    "dast_configuration",
    "hooks",
    "id_tokens",
    "identity",
    "pages",
    "release",
    "secrets",
    "manual_confirmation",
];

/// Keywords `default:` may set.
const DEFAULT_KEYWORDS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

struct Ctx<'a> {
    file: &'a str,
    files: &'a dyn FileSource,
    context: &'a Context,
    diags: Vec<Diagnostic>,
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
}

fn key_name(k: &Node) -> String {
    k.scalar_text().unwrap_or_default()
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

// ---- includes ---------------------------------------------------------------------------

fn load_file(ctx: &mut Ctx<'_>, path: &str, text: &str) -> Option<Node> {
    match yaml::load(text, path) {
        Ok((root, warnings)) => {
            ctx.diags.extend(warnings);
            Some(root)
        }
        Err(e) => {
            ctx.diags.push(e);
            None
        }
    }
}

fn normalize_path(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// Merges `include:` files into `root` (included first, the including file on top).
fn resolve_includes(
    ctx: &mut Ctx<'_>,
    root: Node,
    seen: &mut Vec<String>,
    count: &mut usize,
) -> Node {
    let Some(include) = root.get("include").cloned() else {
        return root;
    };
    let items: Vec<Node> = match &include.value {
        Value::Seq(s) => s.clone(),
        Value::Null => Vec::new(),
        _ => vec![include.clone()],
    };
    let mut base: Option<Node> = None;
    for item in items {
        let (local, span) = match &item.value {
            Value::Str(s) if s.starts_with("http://") || s.starts_with("https://") => {
                ctx.error_hint(
                    &item.span,
                    format!("include of remote file `{s}` is not supported yet"),
                    "vendor the file into the repository and use `include: local`",
                );
                continue;
            }
            Value::Str(s) => (s.clone(), item.span.clone()),
            Value::Map(_) => {
                if let Some(l) = item.get("local") {
                    if let Some(rules) = item.get("rules")
                        && !include_rules_match(ctx, rules)
                    {
                        continue;
                    }
                    match l.as_str() {
                        Some(s) => (s.to_owned(), l.span.clone()),
                        None => {
                            ctx.error(
                                &l.span,
                                format!("include:local must be a path, found {}", l.kind()),
                            );
                            continue;
                        }
                    }
                } else {
                    let kind = item
                        .as_map()
                        .and_then(|m| m.first())
                        .map(|(k, _)| key_name(k))
                        .unwrap_or_default();
                    match kind.as_str() {
                        "remote" | "project" | "template" | "component" => ctx.error_hint(
                            &item.span,
                            format!("include:{kind} is not supported yet"),
                            "copy the file into this repository and use `include: local`",
                        ),
                        other => ctx.error_hint(
                            &item.span,
                            format!("unknown include type `{other}`"),
                            "use `include: local: path/to/file.yml`",
                        ),
                    }
                    continue;
                }
            }
            _ => {
                ctx.error(
                    &item.span,
                    format!(
                        "include entries are paths or mappings, found {}",
                        item.kind()
                    ),
                );
                continue;
            }
        };
        let pattern = normalize_path(&local);
        let paths: Vec<String> = if pattern.contains('*') {
            match Glob::new(&pattern) {
                Ok(g) => {
                    let m = g.compile_matcher();
                    let mut v: Vec<String> = ctx
                        .context
                        .repo_files
                        .iter()
                        .filter(|f| m.is_match(f.as_str()))
                        .cloned()
                        .collect();
                    v.sort();
                    v
                }
                Err(e) => {
                    ctx.error(&span, format!("invalid include pattern `{local}`: {e}"));
                    continue;
                }
            }
        } else {
            vec![pattern]
        };
        for path in paths {
            *count += 1;
            if *count > MAX_INCLUDES {
                ctx.error(&span, format!("more than {MAX_INCLUDES} included files"));
                return root;
            }
            if seen.contains(&path) {
                ctx.error(
                    &span,
                    format!(
                        "`{path}` is included recursively ({} → {path})",
                        seen.join(" → ")
                    ),
                );
                continue;
            }
            let Some(text) = ctx.files.read(&path) else {
                ctx.error_hint(
                    &span,
                    format!("included file `{path}` does not exist"),
                    "include:local paths are relative to the repository root",
                );
                continue;
            };
            let Some(node) = load_file(ctx, &path, &text) else {
                continue;
            };
            if node.as_map().is_none() {
                if !node.is_null() {
                    ctx.error(
                        &node.span,
                        format!("an included file must be a mapping, found {}", node.kind()),
                    );
                }
                continue;
            }
            seen.push(path);
            let node = resolve_includes(ctx, node, seen, count);
            seen.pop();
            let node = remove_key(&node, "include");
            base = Some(match base {
                Some(b) => deep_merge(&b, &node),
                None => node,
            });
        }
    }
    let root = remove_key(&root, "include");
    match base {
        Some(b) => deep_merge(&b, &root),
        None => root,
    }
}

fn include_rules_match(ctx: &mut Ctx<'_>, rules: &Node) -> bool {
    let mut vars = Vars::default();
    predefined(&mut vars, ctx.context);
    for (k, v) in &ctx.context.variables {
        vars.set(k, v, Origin::Pipeline, false);
    }
    let Some(list) = rules.as_seq() else {
        return true;
    };
    for r in list {
        if let Some(m) = eval_rule_conditions(ctx, r, &vars) {
            return m && r.get("when").and_then(Node::as_str) != Some("never");
        }
    }
    false
}

// ---- !reference -------------------------------------------------------------------------

fn resolve_references(ctx: &mut Ctx<'_>, root: &Node) -> Node {
    /// Most nodes `!reference` expansion may produce (a guard against exponential blow-up).
    const MAX_EXPANDED: usize = 1_000_000;
    struct Walk<'r> {
        root: &'r Node,
        /// Reference paths being expanded right now (to catch loops).
        stack: Vec<Vec<String>>,
        expanded: usize,
        exhausted: bool,
    }
    fn walk(ctx: &mut Ctx<'_>, w: &mut Walk<'_>, node: &Node) -> Node {
        if w.exhausted {
            return Node::new(Value::Null, node.span.clone());
        }
        w.expanded += 1;
        if w.expanded > MAX_EXPANDED {
            w.exhausted = true;
            ctx.error(&node.span, "!reference tags expand to too many nodes");
            return Node::new(Value::Null, node.span.clone());
        }
        if node.tag.as_deref() == Some("!reference") {
            if w.stack.len() >= MAX_REFERENCE_DEPTH {
                ctx.error(
                    &node.span,
                    format!("!reference nested more than {MAX_REFERENCE_DEPTH} levels"),
                );
                return Node::new(Value::Null, node.span.clone());
            }
            let path: Option<Vec<String>> = node
                .as_seq()
                .map(|s| s.iter().filter_map(Node::scalar_text).collect());
            let Some(path) = path.filter(|p| !p.is_empty()) else {
                ctx.error(
                    &node.span,
                    "!reference needs a list: `!reference [job, key, ...]`",
                );
                return Node::new(Value::Null, node.span.clone());
            };
            if w.stack.contains(&path) {
                ctx.error(
                    &node.span,
                    format!("!reference [{}] refers to itself", path.join(", ")),
                );
                return Node::new(Value::Null, node.span.clone());
            }
            let mut target = w.root;
            for (i, part) in path.iter().enumerate() {
                match target.get(part) {
                    Some(t) => target = t,
                    None => {
                        let what = if i == 0 {
                            format!("there is no job or key `{part}`")
                        } else {
                            format!("`{}` has no `{part}`", path[..i].join("."))
                        };
                        ctx.error_hint(&node.span, format!("unresolvable !reference [{}]: {what}", path.join(", ")), "!reference names a top-level key (a job, often hidden like `.setup`) and keys inside it");
                        return Node::new(Value::Null, node.span.clone());
                    }
                }
            }
            let target = target.clone();
            w.stack.push(path);
            let out = walk(ctx, w, &target);
            w.stack.pop();
            return out;
        }
        match &node.value {
            Value::Seq(items) => Node {
                value: Value::Seq(items.iter().map(|i| walk(ctx, w, i)).collect()),
                span: node.span.clone(),
                tag: node.tag.clone(),
            },
            Value::Map(entries) => Node {
                value: Value::Map(
                    entries
                        .iter()
                        .map(|(k, v)| (k.clone(), walk(ctx, w, v)))
                        .collect(),
                ),
                span: node.span.clone(),
                tag: node.tag.clone(),
            },
            _ => node.clone(),
        }
    }
    let mut w = Walk {
        root,
        stack: Vec::new(),
        expanded: 0,
        exhausted: false,
    };
    walk(ctx, &mut w, root)
}

// ---- extends ----------------------------------------------------------------------------

fn resolve_extends(ctx: &mut Ctx<'_>, jobs: &[(String, Node)]) -> Vec<(String, Node)> {
    let by_name: HashMap<&str, &Node> = jobs.iter().map(|(n, j)| (n.as_str(), j)).collect();
    let mut done: HashMap<String, Node> = HashMap::new();
    fn resolve(
        ctx: &mut Ctx<'_>,
        name: &str,
        by_name: &HashMap<&str, &Node>,
        done: &mut HashMap<String, Node>,
        stack: &mut Vec<String>,
    ) -> Option<Node> {
        if let Some(n) = done.get(name) {
            return Some(n.clone());
        }
        let node = *by_name.get(name)?;
        let Some(ext) = node.get("extends") else {
            done.insert(name.to_owned(), node.clone());
            return Some(node.clone());
        };
        let parents: Vec<Node> = match &ext.value {
            Value::Str(_) => vec![ext.clone()],
            Value::Seq(s) => s.clone(),
            _ => {
                ctx.error(
                    &ext.span,
                    format!(
                        "extends must be a job name or a list of them, found {}",
                        ext.kind()
                    ),
                );
                return Some(remove_key(node, "extends"));
            }
        };
        if stack.len() >= MAX_EXTENDS_DEPTH {
            ctx.error(
                &ext.span,
                format!(
                    "extends nested more than {MAX_EXTENDS_DEPTH} levels ({})",
                    stack.join(" → ")
                ),
            );
            return Some(remove_key(node, "extends"));
        }
        stack.push(name.to_owned());
        let mut merged: Option<Node> = None;
        for p in parents {
            let Some(pname) = p.as_str() else {
                ctx.error(
                    &p.span,
                    format!("extends entries are job names, found {}", p.kind()),
                );
                continue;
            };
            if stack.iter().any(|s| s == pname) {
                ctx.error(
                    &p.span,
                    format!("extends loop: {} → {pname}", stack.join(" → ")),
                );
                continue;
            }
            if !by_name.contains_key(pname) {
                let hint = did_you_mean(pname, by_name.keys().copied())
                    .map(|m| format!("did you mean `{m}`?"));
                let d = Diagnostic::error(
                    &p.span,
                    format!("`{name}` extends `{pname}`, which is not defined"),
                );
                ctx.diags.push(match hint {
                    Some(h) => d.with_hint(h),
                    None => d,
                });
                continue;
            }
            if let Some(parent) = resolve(ctx, pname, by_name, done, stack) {
                merged = Some(match merged {
                    Some(m) => deep_merge(&m, &parent),
                    None => parent,
                });
            }
        }
        stack.pop();
        let own = remove_key(node, "extends");
        let result = match merged {
            Some(m) => {
                let mut r = deep_merge(&m, &own);
                r.span = node.span.clone();
                r
            }
            None => own,
        };
        done.insert(name.to_owned(), result.clone());
        Some(result)
    }
    jobs.iter()
        .map(|(name, _)| {
            let mut stack = Vec::new();
            let node = resolve(ctx, name, &by_name, &mut done, &mut stack)
                .unwrap_or_else(|| Node::new(Value::Null, Span::default()));
            (name.clone(), node)
        })
        .collect()
}

// ---- scalars and shapes -----------------------------------------------------------------

fn expect_str(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => n.scalar_text(),
        _ => {
            ctx.error(
                &n.span,
                format!("{what} must be a string, found {}", n.kind()),
            );
            None
        }
    }
}

fn expect_bool(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<bool> {
    match &n.value {
        Value::Bool(b) => Some(*b),
        _ => {
            ctx.error(
                &n.span,
                format!("{what} must be true or false, found {}", n.kind()),
            );
            None
        }
    }
}

fn string_list(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Vec<String> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| expect_str(ctx, i, what))
            .collect(),
        Value::Null => Vec::new(),
        _ => expect_str(ctx, n, what).into_iter().collect(),
    }
}

/// A script: a string or a list of strings, nested lists (from `!reference`) flattened.
fn script_lines(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Vec<String> {
    fn flat(ctx: &mut Ctx<'_>, n: &Node, what: &str, depth: usize, out: &mut Vec<String>) {
        match &n.value {
            Value::Seq(items) if depth < 10 => {
                for i in items {
                    flat(ctx, i, what, depth + 1, out);
                }
            }
            Value::Str(s) => out.push(s.clone()),
            Value::Null => {}
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                out.push(n.scalar_text().unwrap_or_default())
            }
            _ => ctx.error(
                &n.span,
                format!("{what} lines must be strings, found {}", n.kind()),
            ),
        }
    }
    let mut out = Vec::new();
    flat(ctx, n, what, 0, &mut out);
    out
}

/// Parses GitLab durations: `3600`, `90 minutes`, `1h 30m`, `1 hour 30 minutes`, `2d`.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut unit = String::new();
    let mut any = false;
    let flush = |num: &mut String, unit: &mut String, total: &mut u64| -> Option<()> {
        if num.is_empty() {
            return if unit.is_empty() || unit == "and" {
                Some(())
            } else {
                None
            };
        }
        let n: f64 = num.parse().ok()?;
        let mult = match unit.as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" | "" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "wk" | "week" | "weeks" => 604800.0,
            _ => return None,
        };
        *total += (n * mult) as u64;
        num.clear();
        unit.clear();
        Some(())
    };
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total)?;
            }
            num.push(c);
            any = true;
        } else if c.is_ascii_alphabetic() {
            unit.push(c);
        } else if c.is_whitespace() || c == ',' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut num, &mut unit, &mut total)?;
    any.then_some(total)
}

// ---- variables ----------------------------------------------------------------------------

fn slug(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_owned()
}

fn predefined(vars: &mut Vars, c: &Context) {
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
fn read_variables(ctx: &mut Ctx<'_>, n: &Node, origin: Origin, vars: &mut Vars) {
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

// ---- rules --------------------------------------------------------------------------------

fn glob_match_any(
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
fn eval_rule_conditions(ctx: &mut Ctx<'_>, rule: &Node, vars: &Vars) -> Option<bool> {
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

fn parse_when(ctx: &mut Ctx<'_>, n: &Node, allow_never: bool) -> Option<Option<When>> {
    let s = n.as_str().unwrap_or_default();
    Some(Some(match s {
        "on_success" => When::OnSuccess,
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        "manual" => When::Manual,
        "delayed" => When::Delayed,
        "never" if allow_never => return Some(None),
        _ => {
            let options = [
                "on_success",
                "on_failure",
                "always",
                "manual",
                "delayed",
                "never",
            ];
            let d = Diagnostic::error(
                &n.span,
                format!(
                    "`{s}` is not a valid `when` (expected {})",
                    options.join(", ")
                ),
            );
            ctx.diags.push(match did_you_mean(s, options) {
                Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                None => d,
            });
            return None;
        }
    }))
}

fn parse_allow_failure(ctx: &mut Ctx<'_>, n: &Node) -> AllowFailure {
    match &n.value {
        Value::Bool(b) => AllowFailure {
            allowed: *b,
            exit_codes: Vec::new(),
        },
        Value::Map(_) => {
            let codes = match n.get("exit_codes") {
                Some(c) => match &c.value {
                    Value::Int(i) => vec![*i],
                    Value::Seq(s) => s
                        .iter()
                        .filter_map(|x| match x.value {
                            Value::Int(i) => Some(i),
                            _ => {
                                ctx.error(&x.span, "allow_failure:exit_codes must be integers");
                                None
                            }
                        })
                        .collect(),
                    _ => {
                        ctx.error(
                            &c.span,
                            "allow_failure:exit_codes must be an integer or a list of integers",
                        );
                        Vec::new()
                    }
                },
                None => {
                    ctx.error(&n.span, "allow_failure as a mapping needs `exit_codes`");
                    Vec::new()
                }
            };
            AllowFailure {
                allowed: true,
                exit_codes: codes,
            }
        }
        _ => {
            ctx.error(
                &n.span,
                format!(
                    "allow_failure must be true, false or {{exit_codes: ...}}, found {}",
                    n.kind()
                ),
            );
            AllowFailure::default()
        }
    }
}

const RETRY_WHEN: &[&str] = &[
    "always",
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
];

fn parse_retry(ctx: &mut Ctx<'_>, n: &Node) -> Retry {
    let check_max = |ctx: &mut Ctx<'_>, m: &Node| match m.value {
        Value::Int(i) if (0..=2).contains(&i) => i as u32,
        _ => {
            ctx.error(&m.span, "retry must be 0, 1 or 2");
            0
        }
    };
    match &n.value {
        Value::Int(_) => Retry {
            max: check_max(ctx, n),
            when: Vec::new(),
        },
        Value::Map(_) => {
            let max = n.get("max").map(|m| check_max(ctx, m)).unwrap_or(0);
            let when = n
                .get("when")
                .map(|w| string_list(ctx, w, "retry:when"))
                .unwrap_or_default();
            for w in &when {
                if !RETRY_WHEN.contains(&w.as_str()) {
                    let d = Diagnostic::error(&n.span, format!("`{w}` is not a valid retry:when"));
                    ctx.diags
                        .push(match did_you_mean(w, RETRY_WHEN.iter().copied()) {
                            Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                            None => d,
                        });
                }
            }
            Retry { max, when }
        }
        _ => {
            ctx.error(
                &n.span,
                format!("retry must be an integer or a mapping, found {}", n.kind()),
            );
            Retry::default()
        }
    }
}

fn parse_image(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Option<Image> {
    match &n.value {
        Value::Str(s) => Some(Image {
            name: vars.expand(s),
            entrypoint: None,
        }),
        Value::Map(_) => {
            let name = n.get("name").and_then(Node::as_str).map(|s| vars.expand(s));
            let Some(name) = name else {
                ctx.error(&n.span, "image as a mapping needs `name`");
                return None;
            };
            let entrypoint = n
                .get("entrypoint")
                .map(|e| string_list(ctx, e, "image:entrypoint"));
            Some(Image { name, entrypoint })
        }
        _ => {
            ctx.error(
                &n.span,
                format!("image must be a string or a mapping, found {}", n.kind()),
            );
            None
        }
    }
}

fn parse_services(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Vec<Service> {
    let Some(items) = n.as_seq() else {
        ctx.error(
            &n.span,
            format!("services must be a list, found {}", n.kind()),
        );
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| match &i.value {
            Value::Str(s) => Some(Service {
                name: vars.expand(s),
                alias: None,
                entrypoint: None,
                command: None,
            }),
            Value::Map(_) => {
                let name = i.get("name").and_then(Node::as_str).map(|s| vars.expand(s));
                let Some(name) = name else {
                    ctx.error(&i.span, "a service as a mapping needs `name`");
                    return None;
                };
                Some(Service {
                    name,
                    alias: i.get("alias").and_then(Node::scalar_text),
                    entrypoint: i
                        .get("entrypoint")
                        .map(|e| string_list(ctx, e, "services:entrypoint")),
                    command: i
                        .get("command")
                        .map(|e| string_list(ctx, e, "services:command")),
                })
            }
            _ => {
                ctx.error(
                    &i.span,
                    format!(
                        "a service must be a string or a mapping, found {}",
                        i.kind()
                    ),
                );
                None
            }
        })
        .collect()
}

fn parse_artifacts(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Option<Artifacts> {
    let Some(entries) = n.as_map() else {
        ctx.error(
            &n.span,
            format!("artifacts must be a mapping, found {}", n.kind()),
        );
        return None;
    };
    let mut a = Artifacts {
        when: "on_success".to_owned(),
        ..Artifacts::default()
    };
    for (k, v) in entries {
        match key_name(k).as_str() {
            "paths" => a.paths = string_list(ctx, v, "artifacts:paths"),
            "exclude" => a.exclude = string_list(ctx, v, "artifacts:exclude"),
            "expire_in" => {
                let s = expect_str(ctx, v, "artifacts:expire_in").unwrap_or_default();
                if s != "never" && parse_duration(&s).is_none() {
                    ctx.error(&v.span, format!("artifacts:expire_in `{s}` is not a duration (e.g. `1 week`, `30 days`, `never`)"));
                }
                a.expire_in = Some(s);
            }
            "when" => {
                let s = expect_str(ctx, v, "artifacts:when").unwrap_or_default();
                if !["on_success", "on_failure", "always"].contains(&s.as_str()) {
                    ctx.error(
                        &v.span,
                        format!(
                            "artifacts:when must be on_success, on_failure or always, not `{s}`"
                        ),
                    );
                }
                a.when = s;
            }
            "name" => a.name = expect_str(ctx, v, "artifacts:name").map(|s| vars.expand(&s)),
            "untracked" | "reports" | "expose_as" | "public" | "access" => {}
            other => {
                let options = [
                    "paths",
                    "exclude",
                    "expire_in",
                    "when",
                    "name",
                    "untracked",
                    "reports",
                    "expose_as",
                    "public",
                    "access",
                ];
                let d = Diagnostic::error(&k.span, format!("unknown artifacts keyword `{other}`"));
                ctx.diags.push(match did_you_mean(other, options) {
                    Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                    None => d,
                });
            }
        }
    }
    Some(a)
}

fn parse_cache(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Vec<Cache> {
    let items: Vec<&Node> = match &n.value {
        Value::Seq(s) => s.iter().collect(),
        Value::Map(_) => vec![n],
        _ => {
            ctx.error(
                &n.span,
                format!(
                    "cache must be a mapping or a list of them, found {}",
                    n.kind()
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for i in items {
        let Some(entries) = i.as_map() else {
            ctx.error(&i.span, "each cache must be a mapping");
            continue;
        };
        let mut c = Cache {
            key: "default".to_owned(),
            policy: "pull-push".to_owned(),
            when: "on_success".to_owned(),
            ..Cache::default()
        };
        for (k, v) in entries {
            match key_name(k).as_str() {
                "key" => match &v.value {
                    Value::Map(_) => {
                        let files = v
                            .get("files")
                            .map(|f| string_list(ctx, f, "cache:key:files"))
                            .unwrap_or_default();
                        let prefix = v
                            .get("prefix")
                            .and_then(Node::scalar_text)
                            .map(|p| vars.expand(&p));
                        c.key = match prefix {
                            Some(p) => format!("{p}-files:{}", files.join(",")),
                            None => format!("files:{}", files.join(",")),
                        };
                    }
                    _ => {
                        c.key = expect_str(ctx, v, "cache:key")
                            .map(|s| vars.expand(&s))
                            .unwrap_or_default()
                    }
                },
                "paths" => c.paths = string_list(ctx, v, "cache:paths"),
                "policy" => {
                    let p = expect_str(ctx, v, "cache:policy").unwrap_or_default();
                    let p = vars.expand(&p);
                    if !["pull", "push", "pull-push"].contains(&p.as_str()) {
                        ctx.error(
                            &v.span,
                            format!("cache:policy must be pull, push or pull-push, not `{p}`"),
                        );
                    }
                    c.policy = p;
                }
                "when" => c.when = expect_str(ctx, v, "cache:when").unwrap_or_default(),
                "untracked" | "unprotect" | "fallback_keys" => {}
                other => {
                    let d = Diagnostic::error(&k.span, format!("unknown cache keyword `{other}`"));
                    ctx.diags.push(
                        match did_you_mean(
                            other,
                            [
                                "key",
                                "paths",
                                "policy",
                                "when",
                                "untracked",
                                "unprotect",
                                "fallback_keys",
                            ],
                        ) {
                            Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                            None => d,
                        },
                    );
                }
            }
        }
        out.push(c);
    }
    out
}

// ---- jobs ---------------------------------------------------------------------------------

/// One instance of a job before its edges are known.
struct Instance {
    name: String,
    base: String,
    matrix: BTreeMap<String, String>,
    node_index: Option<(usize, usize)>,
    node: Node,
}

fn matrix_instances(ctx: &mut Ctx<'_>, name: &str, node: &Node) -> Vec<Instance> {
    let single = || Instance {
        name: name.to_owned(),
        base: name.to_owned(),
        matrix: BTreeMap::new(),
        node_index: None,
        node: node.clone(),
    };
    let Some(p) = node.get("parallel") else {
        return vec![single()];
    };
    match &p.value {
        Value::Int(n) => {
            let n = *n;
            if !(1..=MAX_MATRIX_JOBS as i64).contains(&n) {
                ctx.error(
                    &p.span,
                    format!("parallel must be between 1 and {MAX_MATRIX_JOBS}, not {n}"),
                );
                return vec![single()];
            }
            let n = n as usize;
            (1..=n)
                .map(|i| Instance {
                    name: format!("{name} {i}/{n}"),
                    base: name.to_owned(),
                    matrix: BTreeMap::new(),
                    node_index: Some((i, n)),
                    node: node.clone(),
                })
                .collect()
        }
        Value::Map(_) => {
            let Some(m) = p.get("matrix") else {
                ctx.error(&p.span, "parallel as a mapping needs `matrix`");
                return vec![single()];
            };
            let Some(rows) = m.as_seq() else {
                ctx.error(
                    &m.span,
                    format!(
                        "parallel:matrix must be a list of mappings, found {}",
                        m.kind()
                    ),
                );
                return vec![single()];
            };
            let mut combos: Vec<(Vec<(String, String)>, Span)> = Vec::new();
            for row in rows {
                let Some(entries) = row.as_map() else {
                    ctx.error(
                        &row.span,
                        "each parallel:matrix entry must be a mapping of VARIABLE: value(s)",
                    );
                    continue;
                };
                let mut partial: Vec<Vec<(String, String)>> = vec![Vec::new()];
                for (k, v) in entries {
                    let var = key_name(k);
                    let values: Vec<String> = match &v.value {
                        Value::Seq(s) => s
                            .iter()
                            .filter_map(|x| expect_str(ctx, x, "parallel:matrix values"))
                            .collect(),
                        _ => expect_str(ctx, v, "parallel:matrix values")
                            .into_iter()
                            .collect(),
                    };
                    let mut next = Vec::with_capacity(partial.len() * values.len().max(1));
                    for p in &partial {
                        for val in &values {
                            let mut q = p.clone();
                            q.push((var.clone(), val.clone()));
                            next.push(q);
                        }
                    }
                    partial = next;
                    if partial.len() > MAX_MATRIX_JOBS {
                        break;
                    }
                }
                combos.extend(partial.into_iter().map(|c| (c, row.span.clone())));
                if combos.len() > MAX_MATRIX_JOBS {
                    break;
                }
            }
            if combos.len() > MAX_MATRIX_JOBS {
                ctx.error_hint(
                    &m.span,
                    format!("parallel:matrix of `{name}` makes more than {MAX_MATRIX_JOBS} jobs"),
                    "GitLab allows at most 200 jobs per matrix; split the job or reduce the values",
                );
                return Vec::new();
            }
            combos
                .into_iter()
                .map(|(c, _)| Instance {
                    name: format!(
                        "{name}: [{}]",
                        c.iter()
                            .map(|(_, v)| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    base: name.to_owned(),
                    matrix: c.into_iter().collect(),
                    node_index: None,
                    node: node.clone(),
                })
                .collect()
        }
        _ => {
            ctx.error(
                &p.span,
                format!(
                    "parallel must be a number or {{matrix: [...]}}, found {}",
                    p.kind()
                ),
            );
            vec![single()]
        }
    }
}

/// `inherit:` settings: which defaults and global variables a job takes.
struct Inherit {
    default: Option<HashSet<String>>,
    default_all: bool,
    variables: Option<HashSet<String>>,
    variables_all: bool,
}

fn parse_inherit(ctx: &mut Ctx<'_>, node: &Node) -> Inherit {
    let mut inh = Inherit {
        default: None,
        default_all: true,
        variables: None,
        variables_all: true,
    };
    let Some(n) = node.get("inherit") else {
        return inh;
    };
    for (k, v) in n.as_map().unwrap_or_default() {
        let (all, list) = match &v.value {
            Value::Bool(b) => (*b, None),
            Value::Seq(_) => (
                true,
                Some(
                    string_list(ctx, v, "inherit")
                        .into_iter()
                        .collect::<HashSet<_>>(),
                ),
            ),
            _ => {
                ctx.error(&v.span, "inherit values are true, false or a list of names");
                continue;
            }
        };
        match key_name(k).as_str() {
            "default" => {
                inh.default_all = all;
                inh.default = list;
            }
            "variables" => {
                inh.variables_all = all;
                inh.variables = list;
            }
            other => ctx.error(
                &k.span,
                format!("unknown inherit key `{other}` (expected default or variables)"),
            ),
        }
    }
    inh
}

fn apply_default(job: &Node, default: Option<&Node>, inh: &Inherit) -> Node {
    let Some(default) = default else {
        return job.clone();
    };
    if !inh.default_all {
        return job.clone();
    }
    let mut out = job.as_map().map(<[_]>::to_vec).unwrap_or_default();
    for (k, v) in default.as_map().unwrap_or_default() {
        let name = key_name(k);
        if !DEFAULT_KEYWORDS.contains(&name.as_str()) {
            continue;
        }
        if inh.default.as_ref().is_some_and(|l| !l.contains(&name)) {
            continue;
        }
        if !out.iter().any(|(jk, _)| key_name(jk) == name) {
            out.push((k.clone(), v.clone()));
        }
    }
    Node {
        value: Value::Map(out),
        span: job.span.clone(),
        tag: job.tag.clone(),
    }
}

/// `only`/`except` (the predecessors of `rules`): refs and keywords, and `variables`.
fn only_except_matches(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> bool {
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

/// A `needs:` entry before it is resolved against the pipeline's jobs.
struct RawNeed {
    job: String,
    artifacts: bool,
    optional: bool,
    /// `parallel:matrix` filter: rows of variable → accepted values.
    matrix: Option<Vec<BTreeMap<String, Vec<String>>>>,
    span: Span,
}

/// Parses a `needs:` list (job-level or from a rule).
fn parse_needs(ctx: &mut Ctx<'_>, n: &Node) -> Vec<RawNeed> {
    let Some(items) = n.as_seq() else {
        ctx.error(&n.span, format!("needs must be a list, found {}", n.kind()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in items {
        match &i.value {
            Value::Str(s) => out.push(RawNeed {
                job: s.clone(),
                artifacts: true,
                optional: false,
                matrix: None,
                span: i.span.clone(),
            }),
            Value::Map(_) => {
                if i.get("pipeline").is_some() || i.get("project").is_some() {
                    ctx.error_hint(
                        &i.span,
                        "needs on other pipelines or projects is not supported yet",
                        "depend on jobs of this pipeline",
                    );
                    continue;
                }
                let Some(job) = i.get("job").and_then(Node::scalar_text) else {
                    ctx.error(&i.span, "a needs entry as a mapping needs `job`");
                    continue;
                };
                let artifacts = i
                    .get("artifacts")
                    .and_then(|a| expect_bool(ctx, a, "needs:artifacts"))
                    .unwrap_or(true);
                let optional = i
                    .get("optional")
                    .and_then(|a| expect_bool(ctx, a, "needs:optional"))
                    .unwrap_or(false);
                let matrix = i.get("parallel").and_then(|p| p.get("matrix")).map(|m| {
                    m.as_seq()
                        .unwrap_or_default()
                        .iter()
                        .map(|row| {
                            row.as_map()
                                .unwrap_or_default()
                                .iter()
                                .map(|(k, v)| {
                                    let vals = match &v.value {
                                        Value::Seq(s) => {
                                            s.iter().filter_map(Node::scalar_text).collect()
                                        }
                                        _ => v.scalar_text().into_iter().collect(),
                                    };
                                    (key_name(k), vals)
                                })
                                .collect()
                        })
                        .collect()
                });
                out.push(RawNeed {
                    job,
                    artifacts,
                    optional,
                    matrix,
                    span: i.span.clone(),
                });
            }
            _ => ctx.error(
                &i.span,
                format!(
                    "needs entries are job names or mappings, found {}",
                    i.kind()
                ),
            ),
        }
    }
    out
}

struct Planned {
    job: Job,
    needs_raw: Option<Vec<RawNeed>>,
    deps_raw: Option<(Vec<String>, Span)>,
    stage_span: Span,
}

/// Plans a `.gitlab-ci.yml`.
pub fn plan(
    file: &str,
    text: &str,
    files: &dyn FileSource,
    context: &Context,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut ctx = Ctx {
        file,
        files,
        context,
        diags: Vec::new(),
    };
    let Some(root) = load_file(&mut ctx, file, text) else {
        return (None, ctx.diags);
    };
    if root.is_null() {
        ctx.error(
            &root.span,
            "the pipeline file is empty; define at least one job with a `script`",
        );
        return (None, ctx.diags);
    }
    if root.as_map().is_none() {
        ctx.error(
            &root.span,
            format!(
                "the pipeline file must be a mapping of jobs and keywords, found {}",
                root.kind()
            ),
        );
        return (None, ctx.diags);
    }
    let mut seen = vec![normalize_path(file)];
    let mut count = 0;
    let root = resolve_includes(&mut ctx, root, &mut seen, &mut count);
    let root = resolve_references(&mut ctx, &root);
    let pipeline = build(&mut ctx, &root);
    (pipeline, ctx.diags)
}

fn build(ctx: &mut Ctx<'_>, root: &Node) -> Option<Pipeline> {
    let file = ctx.file.to_owned();
    let entries = root.as_map().unwrap_or_default().to_vec();
    // Stages.
    let stages_node = root.get("stages").or_else(|| root.get("types"));
    let mut stages: Vec<String> = match stages_node {
        Some(s) => string_list(ctx, s, "stages"),
        None => vec!["build".into(), "test".into(), "deploy".into()],
    };
    stages.retain(|s| s != ".pre" && s != ".post");
    stages.insert(0, ".pre".into());
    stages.push(".post".into());

    // Globals: `default:` plus the deprecated top-level defaults.
    let mut default = root.get("default").cloned();
    if let Some(d) = &default
        && d.as_map().is_none()
        && !d.is_null()
    {
        ctx.error(
            &d.span,
            format!("default must be a mapping, found {}", d.kind()),
        );
        default = None;
    }
    for key in [
        "image",
        "services",
        "before_script",
        "after_script",
        "cache",
    ] {
        if let Some(v) = root.get(key) {
            let entry = (Node::new(Value::Str(key.into()), v.span.clone()), v.clone());
            let mut d = default
                .take()
                .unwrap_or_else(|| Node::new(Value::Map(Vec::new()), v.span.clone()));
            if d.get(key).is_none()
                && let Value::Map(m) = &mut d.value
            {
                m.push(entry);
            }
            default = Some(d);
        }
    }
    if let Some(d) = &default {
        for (k, _) in d.as_map().unwrap_or_default() {
            let name = key_name(k);
            if !DEFAULT_KEYWORDS.contains(&name.as_str()) {
                let d = Diagnostic::error(&k.span, format!("`{name}` cannot be set in `default:`"));
                ctx.diags.push(
                    match did_you_mean(&name, DEFAULT_KEYWORDS.iter().copied()) {
                        Some(h) if h != name => d.with_hint(format!("did you mean `{h}`?")),
                        _ => {
                            d.with_hint(format!("default: accepts {}", DEFAULT_KEYWORDS.join(", ")))
                        }
                    },
                );
            }
        }
    }

    // Pipeline-level variables.
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
        let mut scratch = Ctx {
            file: ctx.file,
            files: ctx.files,
            context: ctx.context,
            diags: Vec::new(),
        };
        read_variables(&mut scratch, v, Origin::Global, &mut globals_only);
    }

    // Workflow.
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
                match eval_rule_conditions(ctx, r, &base) {
                    Some(true) => {
                        runs = r.get("when").and_then(Node::as_str) != Some("never");
                        if let Some(v) = r.get("variables") {
                            read_variables(ctx, v, Origin::Workflow, &mut base);
                        }
                        break;
                    }
                    Some(false) => {}
                    None => break,
                }
            }
        }
    }

    // Jobs, in document order.
    let mut raw_jobs: Vec<(String, Node)> = Vec::new();
    for (k, v) in &entries {
        let name = key_name(k);
        if GLOBAL_KEYS.contains(&name.as_str()) {
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
            ctx.diags
                .push(match did_you_mean(&name, GLOBAL_KEYS.iter().copied()) {
                    Some(h) => d.with_hint(format!("did you mean the keyword `{h}`?")),
                    None => d,
                });
            continue;
        }
        raw_jobs.push((name, v.clone()));
    }
    let resolved = resolve_extends(ctx, &raw_jobs);

    let mut planned: Vec<Planned> = Vec::new();
    let mut defined_names: Vec<String> = Vec::new();
    let mut excluded: HashSet<String> = HashSet::new();
    for (name, node) in &resolved {
        if name.starts_with('.') || node.as_map().is_none() {
            continue;
        }
        defined_names.push(name.clone());
        // Keyword validation.
        for (k, _) in node.as_map().unwrap_or_default() {
            let kw = key_name(k);
            if !JOB_KEYWORDS.contains(&kw.as_str()) {
                let d =
                    Diagnostic::error(&k.span, format!("unknown keyword `{kw}` in job `{name}`"));
                ctx.diags
                    .push(match did_you_mean(&kw, JOB_KEYWORDS.iter().copied()) {
                        Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                        None => {
                            d.with_hint("see https://docs.gitlab.com/ci/yaml/ for job keywords")
                        }
                    });
            } else if IGNORED_KEYWORDS.contains(&kw.as_str()) {
                ctx.warn(
                    &k.span,
                    format!("`{kw}` in job `{name}` is accepted but not used by Archway yet"),
                );
            }
        }
        if node.get("trigger").is_some() {
            ctx.error_hint(&node.span, format!("job `{name}` uses `trigger` (child or multi-project pipelines), which is not supported yet"), "run the child pipeline's jobs in this pipeline");
            continue;
        }
        let inherit = parse_inherit(ctx, node);
        let node = apply_default(node, default.as_ref(), &inherit);
        if node.get("script").is_none() && node.get("run").is_none() {
            ctx.error_hint(&node.span, format!("job `{name}` has no `script`"), "every job needs a script; a job meant only as a template should be hidden: `.name:`");
            continue;
        }
        for inst in matrix_instances(ctx, name, &node) {
            if let Some(p) = plan_instance(ctx, inst, &base, &globals_only, &inherit) {
                planned.push(p);
            } else {
                excluded.insert(name.clone());
            }
        }
    }
    if defined_names.is_empty() && !ctx.diags.iter().any(Diagnostic::is_error) {
        ctx.error(
            &root.span,
            "the pipeline defines no jobs (hidden `.jobs` do not run)",
        );
    }
    // GitLab creates no pipeline when the rules leave no job to run.
    if planned.is_empty() {
        runs = false;
    }

    // Stages exist.
    for p in &planned {
        if !stages.contains(&p.job.stage) {
            let d = Diagnostic::error(
                &p.stage_span,
                format!(
                    "job `{}` is in stage `{}`, which is not in `stages`",
                    p.job.base_name, p.job.stage
                ),
            );
            ctx.diags.push(
                match did_you_mean(&p.job.stage, stages.iter().map(String::as_str)) {
                    Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                    None => d.with_hint(format!("stages are: {}", stages.join(", "))),
                },
            );
        }
    }
    let stage_index = |s: &str| stages.iter().position(|x| x == s).unwrap_or(usize::MAX);

    // Edges.
    let names: Vec<(String, String, BTreeMap<String, String>, String)> = planned
        .iter()
        .map(|p| {
            (
                p.job.name.clone(),
                p.job.base_name.clone(),
                p.job.matrix.clone(),
                p.job.stage.clone(),
            )
        })
        .collect();
    for p in &mut planned {
        let my_stage = stage_index(&p.job.stage);
        if let Some(needs) = p.needs_raw.take() {
            let mut resolved_needs = Vec::new();
            for RawNeed {
                job,
                artifacts,
                optional,
                matrix,
                span,
            } in needs
            {
                let targets: Vec<&(String, String, BTreeMap<String, String>, String)> = names
                    .iter()
                    .filter(|(n, b, m, _)| {
                        if n == &job {
                            return true;
                        }
                        if b != &job {
                            return false;
                        }
                        match &matrix {
                            None => true,
                            Some(rows) => rows.iter().any(|row| {
                                row.iter()
                                    .all(|(k, vals)| m.get(k).is_some_and(|v| vals.contains(v)))
                            }),
                        }
                    })
                    .collect();
                if targets.is_empty() {
                    if optional {
                        continue;
                    }
                    if excluded.contains(&job) || defined_names.contains(&job) {
                        ctx.error_hint(&span, format!("job `{}` needs `{job}`, which is not in this pipeline (its rules exclude it)", p.job.name), "mark the need `optional: true`, or align the rules");
                    } else {
                        let d = Diagnostic::error(
                            &span,
                            format!("job `{}` needs `{job}`, which is not defined", p.job.name),
                        );
                        ctx.diags.push(
                            match did_you_mean(&job, defined_names.iter().map(String::as_str)) {
                                Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                                None => d,
                            },
                        );
                    }
                    continue;
                }
                for t in targets {
                    if t.0 == p.job.name {
                        ctx.error(&span, format!("job `{}` needs itself", p.job.name));
                        continue;
                    }
                    if stage_index(&t.3) > my_stage {
                        ctx.error(
                            &span,
                            format!(
                                "job `{}` (stage {}) needs `{}`, which is in the later stage {}",
                                p.job.name, p.job.stage, t.0, t.3
                            ),
                        );
                        continue;
                    }
                    resolved_needs.push(Need {
                        job: t.0.clone(),
                        artifacts,
                        optional,
                    });
                }
            }
            p.job.depends_on = resolved_needs.iter().map(|n| n.job.clone()).collect();
            p.job.needs = Some(resolved_needs);
        } else {
            p.job.depends_on = names
                .iter()
                .filter(|(_, _, _, s)| stage_index(s) < my_stage)
                .map(|(n, ..)| n.clone())
                .collect();
        }
        if let Some((deps, span)) = p.deps_raw.take() {
            let mut out = Vec::new();
            for d in deps {
                let matching: Vec<&String> = names
                    .iter()
                    .filter(|(n, b, ..)| n == &d || b == &d)
                    .map(|(n, ..)| n)
                    .collect();
                if matching.is_empty() {
                    let msg = format!(
                        "job `{}` lists `{d}` in dependencies, which is not in this pipeline",
                        p.job.name
                    );
                    let dd = Diagnostic::error(&span, msg);
                    ctx.diags.push(
                        match did_you_mean(&d, defined_names.iter().map(String::as_str)) {
                            Some(h) => dd.with_hint(format!("did you mean `{h}`?")),
                            None => dd,
                        },
                    );
                    continue;
                }
                for m in matching {
                    let st = names
                        .iter()
                        .find(|(n, ..)| n == m)
                        .map(|x| x.3.clone())
                        .unwrap_or_default();
                    if stage_index(&st) >= my_stage && p.job.needs.is_none() {
                        ctx.error(
                            &span,
                            format!(
                                "job `{}` depends on `{m}`, which is not in an earlier stage",
                                p.job.name
                            ),
                        );
                    }
                    out.push(m.clone());
                }
            }
            p.job.dependencies = Some(out);
        }
    }
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
        variables: base.list(Origin::Global),
        context: ctx.context.clone(),
    })
}

/// Plans one job instance; `None` when its rules exclude it.
fn plan_instance(
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
    // Variables: predefined < global (as inherited) < workflow < job < matrix < rules < pipeline.
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
    vars.set("CI_JOB_STAGE", &stage, Origin::Predefined, false);
    if let Some((i, n)) = inst.node_index {
        vars.set("CI_NODE_INDEX", &i.to_string(), Origin::Predefined, false);
        vars.set("CI_NODE_TOTAL", &n.to_string(), Origin::Predefined, false);
    }
    if let Some(v) = node.get("variables") {
        read_variables(ctx, v, Origin::Job, &mut vars);
    }
    for (k, v) in &inst.matrix {
        vars.set(k, v, Origin::Matrix, true);
    }
    for (k, v) in &ctx.context.variables {
        vars.set(k, v, Origin::Pipeline, false);
    }

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
            match eval_rule_conditions(ctx, r, &vars) {
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
                        && let Some(Some(jw)) = parse_when(
                            &mut Ctx {
                                file: ctx.file,
                                files: ctx.files,
                                context: ctx.context,
                                diags: Vec::new(),
                            },
                            w,
                            true,
                        )
                    {
                        when = jw;
                    }
                    if let Some(a) = r.get("allow_failure") {
                        allow_failure = Some(parse_allow_failure(ctx, a));
                    }
                    if let Some(v) = r.get("variables") {
                        read_variables(ctx, v, Origin::Rule, &mut vars);
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
            && !only_except_matches(ctx, o, &vars)
        {
            return None;
        }
        if let Some(e) = node.get("except")
            && only_except_matches(ctx, e, &vars)
        {
            return None;
        }
    }
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
                inst.name
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
                            inst.name,
                            tags.join(", ")
                        ),
                    );
                }
                _ => platform = Some(p),
            }
        }
    }

    let retry = node
        .get("retry")
        .map(|r| parse_retry(ctx, r))
        .unwrap_or_default();
    let timeout = node.get("timeout").and_then(|t| {
        let s = expect_str(ctx, t, "timeout")?;
        let d = parse_duration(&s);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Some(3600));
        assert_eq!(parse_duration("1h 30m"), Some(5400));
        assert_eq!(parse_duration("1 hour 30 minutes"), Some(5400));
        assert_eq!(parse_duration("90 minutes"), Some(5400));
        assert_eq!(parse_duration("2 days"), Some(172_800));
        assert_eq!(parse_duration("1 week"), Some(604_800));
        assert_eq!(parse_duration("10 lightyears"), None);
        assert_eq!(parse_duration(""), None);
    }
}
