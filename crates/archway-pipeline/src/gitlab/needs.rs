//! `needs:` and `dependencies:` → edges: each entry resolved against the planned jobs
//! (`parallel:matrix` selectors named as GitLab names instances, optional needs, jobs
//! excluded by their rules), checked against stage order. Needs on other pipelines and
//! projects are kept as [`ExternalNeed`]s.

use std::collections::HashSet;

use super::Ctx;
use super::job::Planned;
use super::keywords::expect_bool;
use super::rules::flatten_list;
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::graph::{ExternalNeed, Need};
use crate::yaml::{Node, Value};

/// A `needs:` entry before it is resolved against the pipeline's jobs.
pub(super) struct RawNeed {
    pub(super) job: String,
    artifacts: bool,
    optional: bool,
    /// `parallel:matrix` selector: the instance names it forms (`build: [linux, arm64]`).
    matrix: Option<Vec<String>>,
    span: Span,
}

/// A parsed `needs:` list.
#[derive(Default)]
pub(super) struct Needs {
    pub(super) local: Vec<RawNeed>,
    pub(super) external: Vec<ExternalNeed>,
}

/// The instance names a `needs:parallel:matrix` selector forms: each row's values (a list
/// meaning each of them) in the row's order, as GitLab builds the names it then looks up —
/// so the variables must be all of the job's, in its order.
fn selector_names(job: &str, m: &Node) -> Vec<String> {
    let mut names = Vec::new();
    for row in m.as_seq().unwrap_or_default() {
        let mut combos: Vec<Vec<String>> = vec![Vec::new()];
        for (_, v) in row.as_map().unwrap_or_default() {
            let vals: Vec<String> = match &v.value {
                Value::Seq(s) => s.iter().filter_map(Node::scalar_text).collect(),
                _ => v.scalar_text().into_iter().collect(),
            };
            combos = combos
                .iter()
                .flat_map(|c| {
                    vals.iter().map(move |x| {
                        let mut c = c.clone();
                        c.push(x.clone());
                        c
                    })
                })
                .take(super::MAX_MATRIX_JOBS + 1)
                .collect();
        }
        names.extend(
            combos
                .into_iter()
                .map(|c| format!("{job}: [{}]", c.join(", "))),
        );
    }
    names
}

/// Parses a `needs:` list (job-level or from a rule) of job `owner`. Nested lists are
/// flattened and a single mapping is one need, as in GitLab.
pub(super) fn parse_needs(ctx: &mut Ctx<'_>, n: &Node, owner: &str) -> Needs {
    let items: Vec<Node> = match &n.value {
        Value::Seq(_) => flatten_list(n, 256).unwrap_or_default(),
        Value::Map(_) => vec![n.clone()],
        _ => {
            ctx.error(&n.span, format!("needs must be a list, found {}", n.kind()));
            return Needs::default();
        }
    };
    let mut out = Needs::default();
    let server_hint = |project: &str| {
        format!(
            "only an Archway server that hosts `{project}` can provide it; elsewhere this job fails, saying so"
        )
    };
    for i in &items {
        match &i.value {
            Value::Str(s) => out.local.push(RawNeed {
                job: s.clone(),
                artifacts: true,
                optional: false,
                matrix: None,
                span: i.span.clone(),
            }),
            Value::Map(_) => {
                let artifacts = i
                    .get("artifacts")
                    .and_then(|a| expect_bool(ctx, a, "needs:artifacts"))
                    .unwrap_or(true);
                let text = |k: &str| i.get(k).and_then(Node::scalar_text);
                if i.get("project").is_some() || i.get("ref").is_some() {
                    let (Some(project), Some(job), Some(git_ref)) =
                        (text("project"), text("job"), text("ref"))
                    else {
                        ctx.error_hint(
                            &i.span,
                            format!("jobs:{owner}:needs:need config missing required keys: project, job, ref"),
                            "a need on another project names `project`, `job` and `ref`",
                        );
                        continue;
                    };
                    ctx.diags.push(
                        Diagnostic::warning(
                            &i.span,
                            format!("job `{owner}` needs job `{job}` of project `{project}` (ref `{git_ref}`)"),
                        )
                        .with_hint(server_hint(&project)),
                    );
                    out.external.push(ExternalNeed::Project {
                        project,
                        job,
                        git_ref,
                        artifacts,
                    });
                    continue;
                }
                if let Some(pipeline) = text("pipeline") {
                    match text("job") {
                        Some(job) => out.external.push(ExternalNeed::Pipeline {
                            pipeline,
                            job,
                            artifacts,
                        }),
                        None => {
                            ctx.diags.push(
                                Diagnostic::warning(
                                    &i.span,
                                    format!("job `{owner}` mirrors the status of the upstream pipeline of project `{pipeline}`"),
                                )
                                .with_hint(server_hint(&pipeline)),
                            );
                            out.external
                                .push(ExternalNeed::Upstream { project: pipeline });
                        }
                    }
                    continue;
                }
                let Some(job) = text("job") else {
                    ctx.error(&i.span, "a needs entry as a mapping needs `job`");
                    continue;
                };
                let optional = i
                    .get("optional")
                    .and_then(|a| expect_bool(ctx, a, "needs:optional"))
                    .unwrap_or(false);
                let matrix = i
                    .get("parallel")
                    .and_then(|p| p.get("matrix"))
                    .map(|m| selector_names(&job, m));
                out.local.push(RawNeed {
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
    let names: Vec<(String, String, String)> = planned
        .iter()
        .map(|p| {
            (
                p.job.name.clone(),
                p.job.base_name.clone(),
                p.job.stage.clone(),
            )
        })
        .collect();
    for p in planned.iter_mut() {
        let my_stage = stage_index(&p.job.stage);
        if let Some(needs) = p.needs_raw.take() {
            let mut resolved_needs: Vec<Need> = Vec::new();
            let mut duplicated: Vec<String> = Vec::new();
            let mut duplicate_span: Option<Span> = None;
            for RawNeed {
                job,
                artifacts,
                optional,
                matrix,
                span,
            } in needs
            {
                let targets: Vec<&(String, String, String)> = match &matrix {
                    None => names
                        .iter()
                        .filter(|(n, b, _)| n == &job || b == &job)
                        .collect(),
                    Some(selected) => {
                        let mut found = Vec::new();
                        for name in selected {
                            match names.iter().find(|(n, _, _)| n == name) {
                                Some(t) => found.push(t),
                                None if optional => {}
                                None if excluded.contains(&job) => ctx.error_hint(
                                    &span,
                                    format!("'{}' job needs '{name}' job, but '{name}' does not exist in the pipeline. This might be because of the only, except, or rules keywords. To need a job that sometimes does not exist in the pipeline, use needs:optional.", p.job.name),
                                    "mark the need `optional: true`, or align the rules",
                                ),
                                None => {
                                    let d = Diagnostic::error(
                                        &span,
                                        format!("{} job: undefined need: {name}", p.job.name),
                                    );
                                    ctx.diags.push(if defined_names.contains(&job) {
                                        d.with_hint(format!("needs:parallel:matrix must give every matrix variable of `{job}`, in the order `{job}` lists them"))
                                    } else {
                                        d
                                    });
                                }
                            }
                        }
                        if found.is_empty() {
                            continue;
                        }
                        found
                    }
                };
                if targets.is_empty() {
                    if optional {
                        continue;
                    }
                    if excluded.contains(&job) || defined_names.contains(&job) {
                        ctx.error_hint(&span, format!("'{}' job needs '{job}' job, but '{job}' does not exist in the pipeline. This might be because of the only, except, or rules keywords. To need a job that sometimes does not exist in the pipeline, use needs:optional.", p.job.name), "mark the need `optional: true`, or align the rules");
                    } else {
                        let d = Diagnostic::error(
                            &span,
                            format!("{} job: undefined need: {job}", p.job.name),
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
                    if stage_index(&t.2) > my_stage {
                        ctx.error_hint(
                            &span,
                            format!(
                                "{} job: need {} is not defined in current or prior stages",
                                p.job.name, t.0
                            ),
                            format!(
                                "`{}` is in stage `{}`, after this job's stage `{}`",
                                t.0, t.2, p.job.stage
                            ),
                        );
                        continue;
                    }
                    if resolved_needs.iter().any(|n| n.job == t.0) {
                        if !duplicated.contains(&t.0) {
                            duplicated.push(t.0.clone());
                        }
                        duplicate_span.get_or_insert_with(|| span.clone());
                        continue;
                    }
                    resolved_needs.push(Need {
                        job: t.0.clone(),
                        artifacts,
                        optional,
                    });
                }
            }
            if let Some(span) = duplicate_span {
                ctx.error(
                    &span,
                    format!(
                        "{} has the following needs duplicated: {}.",
                        p.job.name,
                        duplicated.join(", ")
                    ),
                );
            }
            p.job.depends_on = resolved_needs.iter().map(|n| n.job.clone()).collect();
            p.job.needs = Some(resolved_needs);
        } else {
            p.job.depends_on = names
                .iter()
                .filter(|(_, _, s)| stage_index(s) < my_stage)
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
                    let msg = format!("{} job: undefined dependency: {d}", p.job.name);
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
                        .map(|x| x.2.clone())
                        .unwrap_or_default();
                    if stage_index(&st) >= my_stage && p.job.needs.is_none() {
                        ctx.diags.push(
                            Diagnostic::error(
                                &span,
                                format!(
                                    "{} job: dependency {m} is not defined in current or prior stages",
                                    p.job.name
                                ),
                            )
                            .with_hint(format!(
                                "`dependencies` names jobs of earlier stages (or jobs in `needs`); `{m}` is in stage `{st}`"
                            )),
                        );
                    }
                    out.push(m.clone());
                }
            }
            p.job.dependencies = Some(out);
        }
    }
}
