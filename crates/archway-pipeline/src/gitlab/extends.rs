//! `extends:` → each job deep-merged over its parents, with loop and depth limits.

use std::collections::HashMap;

use super::{Ctx, deep_merge, remove_key};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::yaml::{Node, Value};

pub(super) const MAX_EXTENDS_DEPTH: usize = 11;

pub(super) fn resolve_extends(ctx: &mut Ctx<'_>, jobs: &[(String, Node)]) -> Vec<(String, Node)> {
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
                    format!("{name}: unknown keys in `extends` ({pname})"),
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
