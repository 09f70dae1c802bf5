//! `!reference [job, key, ...]` tags → the nodes they name, with loop and size limits.

use super::Ctx;
use crate::yaml::{Node, Value};

pub(super) const MAX_REFERENCE_DEPTH: usize = 10;

pub(super) fn resolve_references(ctx: &mut Ctx<'_>, root: &Node) -> Node {
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
