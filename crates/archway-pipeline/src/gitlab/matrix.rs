//! `parallel: N` and `parallel:matrix`: one job definition → its instances, named as GitLab
//! names them (`job 2/3`, `job: [amd64, 1.22]`).

use std::collections::BTreeMap;

use super::keywords::expect_str;
use super::{Ctx, key_name};
use crate::diag::Span;
use crate::yaml::{Node, Value};

/// GitLab's limit on jobs a `parallel:matrix` may produce.
pub const MAX_MATRIX_JOBS: usize = 200;

/// One instance of a job before its edges are known.
pub(super) struct Instance {
    pub(super) name: String,
    pub(super) base: String,
    pub(super) matrix: BTreeMap<String, String>,
    pub(super) node_index: Option<(usize, usize)>,
    pub(super) node: Node,
}

pub(super) fn matrix_instances(ctx: &mut Ctx<'_>, name: &str, node: &Node) -> Vec<Instance> {
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
