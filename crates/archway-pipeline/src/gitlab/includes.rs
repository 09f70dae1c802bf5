//! `include:` → one document: `local` files (and globs over the repository's files) merged
//! under the including file, with `rules`, recursion and count limits.

use globset::Glob;

use super::rules::eval_rule_conditions;
use super::variables::predefined;
use super::{Ctx, deep_merge, key_name, load_file, normalize_path, remove_key};
use crate::graph::Origin;
use crate::vars::Vars;
use crate::yaml::{Node, Value};

pub(super) const MAX_INCLUDES: usize = 150;

/// Merges `include:` files into `root` (included first, the including file on top).
pub(super) fn resolve_includes(
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

pub(super) fn include_rules_match(ctx: &mut Ctx<'_>, rules: &Node) -> bool {
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
