//! `needs:` and `dependencies:` → edges: each entry resolved against the planned jobs (matrix
//! filters, optional needs, jobs excluded by their rules), checked against stage order.

use std::collections::{BTreeMap, HashSet};

use super::job::Planned;
use super::keywords::expect_bool;
use super::{Ctx, key_name};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::graph::Need;
use crate::yaml::{Node, Value};

/// A `needs:` entry before it is resolved against the pipeline's jobs.
pub(super) struct RawNeed {
    job: String,
    artifacts: bool,
    optional: bool,
    /// `parallel:matrix` filter: rows of variable → accepted values.
    matrix: Option<Vec<BTreeMap<String, Vec<String>>>>,
    span: Span,
}

/// Parses a `needs:` list (job-level or from a rule).
pub(super) fn parse_needs(ctx: &mut Ctx<'_>, n: &Node) -> Vec<RawNeed> {
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

/// Resolves every planned job's `needs` and `dependencies` into `depends_on` edges (without
/// `needs`: every job of the earlier stages).
pub(super) fn resolve_edges(
    ctx: &mut Ctx<'_>,
    planned: &mut [Planned],
    stages: &[String],
    defined_names: &[String],
    excluded: &HashSet<String>,
) {
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
    for p in planned.iter_mut() {
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
}
