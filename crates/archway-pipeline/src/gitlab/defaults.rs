//! `default:` (and the deprecated top-level `image`, `services`, `before_script`,
//! `after_script`, `cache`) and each job's `inherit:`: which defaults a job takes.

use std::collections::HashSet;

use super::keywords::{DEFAULT_KEYWORDS, string_list};
use super::{Ctx, key_name};
use crate::diag::{Diagnostic, did_you_mean};
use crate::yaml::{Node, Value};

/// The pipeline's defaults: `default:` plus the deprecated top-level keywords.
pub(super) fn global_default(ctx: &mut Ctx<'_>, root: &Node) -> Option<Node> {
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
                let d = Diagnostic::error(
                    &k.span,
                    format!("default config contains unknown keys: {name}"),
                );
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
    default
}

/// `inherit:` settings: which defaults and global variables a job takes.
pub(super) struct Inherit {
    pub(super) default: Option<HashSet<String>>,
    pub(super) default_all: bool,
    pub(super) variables: Option<HashSet<String>>,
    pub(super) variables_all: bool,
}

pub(super) fn parse_inherit(ctx: &mut Ctx<'_>, node: &Node) -> Inherit {
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

pub(super) fn apply_default(job: &Node, default: Option<&Node>, inh: &Inherit) -> Node {
    apply_default_only(job, default, inh, None)
}

/// [`apply_default`], limited to the keywords in `only` when given (a trigger job takes only
/// `interruptible`).
pub(super) fn apply_default_only(
    job: &Node,
    default: Option<&Node>,
    inh: &Inherit,
    only: Option<&[&str]>,
) -> Node {
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
        if only.is_some_and(|o| !o.contains(&name.as_str())) {
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
