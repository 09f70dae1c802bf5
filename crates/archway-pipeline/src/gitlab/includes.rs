//! `include:` → one document. Local files (and globs over the repository's files), remote
//! files, templates, other projects' files and — for a child pipeline — a parent job's
//! artifacts, each with its `inputs` (see [`super::inputs`]) and `rules`, merged under the
//! including file, with recursion and count limits. The contents come from the
//! [`FileSource`](crate::FileSource); messages are GitLab's (`config/external/file/*.rb`).

use globset::Glob;

use super::inputs::{self, Caller};
use super::rules::{eval_rule_conditions, flatten_list};
use super::variables::predefined;
use super::{Ctx, deep_merge, key_name, normalize_path, remove_key, unknown_keys};
use crate::RemoteError;
use crate::diag::{Diagnostic, Span};
use crate::graph::Origin;
use crate::vars::Vars;
use crate::yaml::{self, Node, Value};

pub(super) const MAX_INCLUDES: usize = 150;

/// The kinds of include, in GitLab's order (its messages list them so).
const KINDS: &[&str] = &[
    "local",
    "project",
    "remote",
    "template",
    "artifact",
    "component",
];
/// Every key an include entry may have.
const ITEM_KEYS: &[&str] = &[
    "local",
    "project",
    "remote",
    "template",
    "artifact",
    "component",
    "file",
    "ref",
    "job",
    "rules",
    "inputs",
    "with",
    "integrity",
    "cache",
];

/// Where the including file came from, which decides what its own `local` includes mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// This repository.
    Repository,
    /// Another project on the server (its `local` includes are that project's files).
    Project {
        project: String,
        git_ref: Option<String>,
    },
    /// A remote file or a template: no project, so no `local` includes.
    Detached,
}

/// One `include:` entry.
pub(super) enum Location {
    Local(String),
    Remote {
        url: String,
        integrity: Option<String>,
    },
    Template(String),
    Project {
        project: String,
        git_ref: Option<String>,
        files: Vec<String>,
    },
    Component(String),
    Artifact {
        job: String,
        path: String,
    },
}

pub(super) struct Item {
    pub(super) location: Location,
    pub(super) span: Span,
    pub(super) inputs: Vec<(String, Node)>,
}

/// A fetched file: its name in diagnostics, its text, and where its own includes resolve.
struct Fetched {
    label: String,
    text: String,
    source: Source,
}

/// The variables an `include:` may use: predefined and pipeline variables (not the file's).
pub(super) fn include_vars(ctx: &Ctx<'_>) -> Vars {
    let mut vars = Vars::default();
    predefined(&mut vars, ctx.context);
    for (k, v) in &ctx.context.variables {
        vars.set(k, v, Origin::Pipeline, false);
    }
    vars
}

/// Loads `text` as the file `label`, applying its `spec:inputs` header with `args`.
pub(super) fn load_with_inputs(
    ctx: &mut Ctx<'_>,
    label: &str,
    text: &str,
    args: &[(String, Node)],
    caller: &Caller<'_>,
) -> Option<Node> {
    let docs = match yaml::load_documents(text, label) {
        Ok(d) => d,
        Err(e) => {
            ctx.diags.push(e);
            return None;
        }
    };
    let vars = include_vars(ctx);
    inputs::apply(ctx, docs, args, caller, &vars)
}

/// Merges `include:` files into `root` (included first, the including file on top).
pub(super) fn resolve_includes(
    ctx: &mut Ctx<'_>,
    root: Node,
    source: &Source,
    seen: &mut Vec<String>,
    count: &mut usize,
) -> Node {
    let Some(include) = root.get("include").cloned() else {
        return root;
    };
    let items: Vec<Node> = match &include.value {
        Value::Seq(_) => flatten_list(&include, 10).unwrap_or_default(),
        Value::Null => Vec::new(),
        _ => vec![include.clone()],
    };
    let vars = include_vars(ctx);
    let mut base: Option<Node> = None;
    for node in items {
        let Some(item) = parse_item(ctx, &node, &vars) else {
            continue;
        };
        for fetched in fetch(ctx, &item, source) {
            *count += 1;
            if *count > MAX_INCLUDES {
                ctx.error(
                    &item.span,
                    format!("Maximum of {MAX_INCLUDES} nested includes are allowed!"),
                );
                return remove_key(&root, "include");
            }
            if seen.contains(&fetched.label) {
                ctx.error(
                    &item.span,
                    format!(
                        "`{}` is included recursively ({} → {})",
                        fetched.label,
                        seen.join(" → "),
                        fetched.label
                    ),
                );
                continue;
            }
            let caller = Caller {
                site: &item.span,
                prefix: format!("`{}`: ", fetched.label),
                how: "`inputs: {NAME: value}` on the include",
            };
            let Some(node) =
                load_with_inputs(ctx, &fetched.label, &fetched.text, &item.inputs, &caller)
            else {
                continue;
            };
            if node.as_map().is_none() {
                ctx.error_hint(
                    &item.span,
                    format!(
                        "Included file `{}` does not have valid YAML syntax!",
                        fetched.label
                    ),
                    format!(
                        "an included file must be a mapping of jobs and keywords, found {}",
                        node.kind()
                    ),
                );
                continue;
            }
            seen.push(fetched.label);
            let node = resolve_includes(ctx, node, &fetched.source, seen, count);
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

/// An include entry → what to fetch, or `None` (reported, or excluded by its `rules`).
pub(super) fn parse_item(ctx: &mut Ctx<'_>, node: &Node, vars: &Vars) -> Option<Item> {
    let span = node.span.clone();
    let (kind, value) = match &node.value {
        Value::Str(s) if s.starts_with("http://") || s.starts_with("https://") => {
            ("remote", node.clone())
        }
        Value::Str(_) => ("local", node.clone()),
        Value::Map(_) => {
            if let Some(d) = unknown_keys(node, ITEM_KEYS, "include") {
                ctx.diags.push(d);
                return None;
            }
            let kinds: Vec<&str> = KINDS
                .iter()
                .copied()
                .filter(|k| node.get(k).is_some())
                .collect();
            match kinds.as_slice() {
                [k] => (*k, node.get(k).cloned().unwrap_or_else(|| node.clone())),
                [] => {
                    ctx.error(
                        &span,
                        format!(
                            "`{}` does not have a valid subkey for include. Valid subkeys are: `{}`",
                            node.to_json(),
                            KINDS.join("`, `")
                        ),
                    );
                    return None;
                }
                _ => {
                    ctx.error(
                        &span,
                        format!(
                            "Each include must use only one of: `{}`",
                            KINDS.join("`, `")
                        ),
                    );
                    return None;
                }
            }
        }
        _ => {
            ctx.error(
                &span,
                format!(
                    "include entries are paths or mappings, found {}",
                    node.kind()
                ),
            );
            return None;
        }
    };
    if let Some(rules) = node.get("rules")
        && !include_rules_match(ctx, rules)
    {
        return None;
    }
    let inputs = match node.get("inputs").or_else(|| node.get("with")) {
        None => Vec::new(),
        Some(i) => match i.as_map() {
            Some(m) => m.iter().map(|(k, v)| (key_name(k), v.clone())).collect(),
            None if i.is_null() => Vec::new(),
            None => {
                ctx.error(
                    &i.span,
                    format!("include:inputs must be a mapping, found {}", i.kind()),
                );
                return None;
            }
        },
    };
    let string = |ctx: &mut Ctx<'_>, n: &Node| -> Option<String> {
        match n.as_str() {
            // Variables the include cannot know stay as written (and show in messages).
            Some(s) => Some(vars.expand_known(s)),
            None => {
                ctx.error(
                    &n.span,
                    format!("Included file `{}` needs to be a string", n.to_json()),
                );
                None
            }
        }
    };
    let location = match kind {
        "local" => Location::Local(string(ctx, &value)?),
        "remote" => {
            let url = string(ctx, &value)?;
            let host = url
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
                .unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) || host.is_empty() {
                ctx.error(
                    &value.span,
                    format!("Remote file `{url}` does not have a valid address!"),
                );
                return None;
            }
            let integrity = node.get("integrity").and_then(|i| string(ctx, i));
            Location::Remote { url, integrity }
        }
        "template" => {
            let name = string(ctx, &value)?;
            if !name.ends_with(".gitlab-ci.yml") {
                ctx.error_hint(
                    &value.span,
                    format!("Template file `{name}` is not a valid location!"),
                    "template names end in `.gitlab-ci.yml`, e.g. `Jobs/Build.gitlab-ci.yml`",
                );
                return None;
            }
            Location::Template(name)
        }
        "project" => {
            let project = string(ctx, &value)?;
            let files = match node.get("file") {
                Some(f) if f.as_seq().is_some() => {
                    let mut out = Vec::new();
                    for x in f.as_seq().unwrap_or_default() {
                        out.push(string(ctx, x)?);
                    }
                    out
                }
                Some(f) => vec![string(ctx, f)?],
                None => Vec::new(),
            };
            if files.is_empty() {
                ctx.error(&span, "include:project needs `file`");
                return None;
            }
            let git_ref = match node.get("ref") {
                Some(r) => Some(string(ctx, r)?),
                None => None,
            };
            Location::Project {
                project,
                git_ref,
                files,
            }
        }
        "component" => Location::Component(string(ctx, &value)?),
        _ => {
            let path = string(ctx, &value)?;
            let Some(job) = node.get("job") else {
                ctx.error(
                    &span,
                    "Job must be provided when including configs from artifacts",
                );
                return None;
            };
            let job = string(ctx, job)?;
            Location::Artifact { job, path }
        }
    };
    // GitLab checks the extension of every file it fetches (templates end in `.yml` anyway).
    let check = |loc: &str| {
        let base = loc.rsplit('/').next().unwrap_or(loc).to_ascii_lowercase();
        base.len() > 4 && (base.ends_with(".yml") || base.ends_with(".yaml"))
    };
    let names: Vec<&str> = match &location {
        Location::Local(p) => vec![p.as_str()],
        Location::Remote { url, .. } => vec![url.as_str()],
        Location::Project { files, .. } => files.iter().map(String::as_str).collect(),
        Location::Artifact { path, .. } => vec![path.as_str()],
        Location::Template(_) | Location::Component(_) => Vec::new(),
    };
    for n in names {
        if !check(n) {
            ctx.error(
                &value.span,
                format!("Included file `{n}` does not have YAML extension!"),
            );
            return None;
        }
    }
    Some(Item {
        location,
        span: value.span.clone(),
        inputs,
    })
}

/// The files an include entry names, read through the `FileSource`.
fn fetch(ctx: &mut Ctx<'_>, item: &Item, source: &Source) -> Vec<Fetched> {
    let span = &item.span;
    let mut out = Vec::new();
    match &item.location {
        Location::Local(path) => match source {
            Source::Detached => ctx.error_hint(
                span,
                format!("Local file `{path}` does not have project!"),
                "a remote file or a template can include only remote files and templates",
            ),
            Source::Project { project, git_ref } => {
                let path = normalize_path(path);
                match ctx.files.project_file(project, git_ref.as_deref(), &path) {
                    Some(text) => out.push(Fetched {
                        label: format!("{project}:{path}"),
                        text,
                        source: source.clone(),
                    }),
                    None => ctx.error(
                        span,
                        format!("Local file `{path}` does not exist!"),
                    ),
                }
            }
            Source::Repository => {
                let pattern = normalize_path(path);
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
                            ctx.error(span, format!("invalid include pattern `{path}`: {e}"));
                            return out;
                        }
                    }
                } else {
                    vec![pattern]
                };
                for p in paths {
                    match ctx.files.read(&p) {
                        None => ctx.error_hint(
                            span,
                            format!("Local file `{p}` does not exist!"),
                            "include:local paths are relative to the repository root",
                        ),
                        Some(t) if t.trim().is_empty() => {
                            ctx.error(span, format!("Local file `{p}` is empty!"))
                        }
                        Some(text) => out.push(Fetched {
                            label: p,
                            text,
                            source: Source::Repository,
                        }),
                    }
                }
            }
        },
        Location::Remote { url, integrity } => match ctx.files.remote(url) {
            Ok(text) => {
                if let Some(expected) = integrity {
                    let got = sri_sha256(&text);
                    if &got != expected {
                        ctx.error_hint(
                            span,
                            format!("Remote file `{url}` does not match its integrity hash"),
                            format!("the file's hash is {got}; `integrity:` says {expected}"),
                        );
                        return out;
                    }
                }
                if text.trim().is_empty() {
                    ctx.error(
                        span,
                        format!("Included file `{url}` is empty or does not exist!"),
                    );
                } else {
                    out.push(Fetched {
                        label: url.clone(),
                        text,
                        source: Source::Detached,
                    });
                }
            }
            Err(e) => ctx.diags.push(remote_error(span, url, &e)),
        },
        Location::Template(name) => match ctx.files.template(name) {
            Some(text) if !text.trim().is_empty() => out.push(Fetched {
                label: name.clone(),
                text,
                source: Source::Detached,
            }),
            _ => {
                let d = Diagnostic::error(
                    span,
                    format!("Included file `{name}` is empty or does not exist!"),
                );
                ctx.diags.push(if ctx.files.has_templates() {
                    d.with_hint("the templates directory has no such file")
                } else {
                    d.with_hint("pass --templates DIR: a directory of GitLab's CI templates (lib/gitlab/ci/templates in GitLab's repository)")
                });
            }
        },
        Location::Project {
            project,
            git_ref,
            files,
        } => {
            for f in files {
                let path = normalize_path(f);
                match ctx.files.project_file(project, git_ref.as_deref(), &path) {
                    Some(text) => out.push(Fetched {
                        label: format!("{project}:{path}"),
                        text,
                        source: Source::Project {
                            project: project.clone(),
                            git_ref: git_ref.clone(),
                        },
                    }),
                    None => {
                        ctx.error_hint(
                            span,
                            format!("Project `{project}` not found or access denied! Make sure any includes in the pipeline configuration are correctly defined."),
                            format!("include:project reads another project's files: it needs an Archway server that hosts `{project}`"),
                        );
                        break;
                    }
                }
            }
        }
        Location::Component(c) => ctx.error_hint(
            span,
            format!("include:component `{c}` needs an Archway server that hosts the component's project"),
            "components come from another project's catalog; copy the component's template into this repository and include it with `include: local` and `inputs:` meanwhile",
        ),
        Location::Artifact { job, path } => {
            if ctx.context.child_depth == 0 {
                ctx.error(
                    span,
                    "Including configs from artifacts is only allowed when triggering child pipelines",
                );
            } else {
                match ctx.files.artifact(job, path) {
                    None => ctx.error(
                        span,
                        format!("Job `{job}` not found in parent pipeline or does not have artifacts!"),
                    ),
                    Some(t) if t.trim().is_empty() => {
                        ctx.error(span, format!("File `{path}` is empty!"))
                    }
                    Some(text) => out.push(Fetched {
                        label: path.clone(),
                        text,
                        source: Source::Repository,
                    }),
                }
            }
        }
    }
    out
}

/// GitLab's messages for a remote file that could not be fetched.
fn remote_error(span: &Span, url: &str, e: &RemoteError) -> Diagnostic {
    match e {
        RemoteError::Status(code) => Diagnostic::error(
            span,
            format!(
                "Remote file `{url}` could not be fetched because of HTTP code `{code}` error!"
            ),
        ),
        RemoteError::Timeout => Diagnostic::error(
            span,
            format!("Remote file `{url}` could not be fetched because of a timeout error!"),
        ),
        RemoteError::Failed(why) => Diagnostic::error(
            span,
            format!("Remote file could not be fetched because {why}!"),
        ),
        RemoteError::NotCached => Diagnostic::error(
            span,
            format!(
                "Remote file `{url}` is not in the include cache, and --offline forbids fetching it"
            ),
        )
        .with_hint("run once without --offline to fill the cache"),
        RemoteError::Unavailable => {
            Diagnostic::error(span, format!("Remote file `{url}` cannot be fetched here"))
                .with_hint("remote includes are fetched by `archway lint`/`plan`/`pipeline run`")
        }
    }
}

/// A Subresource Integrity value (`sha256-` and the base64 of the digest), as
/// `include:integrity` writes it.
fn sri_sha256(text: &str) -> String {
    use base64::Engine as _;
    let digest = archway_oci::Digest::sha256(text.as_bytes());
    let bytes: Vec<u8> = (0..digest.hex().len() / 2)
        .filter_map(|i| u8::from_str_radix(&digest.hex()[2 * i..2 * i + 2], 16).ok())
        .collect();
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Whether an include's `rules` let it in (`when: never` on the first matching rule does not).
pub(super) fn include_rules_match(ctx: &mut Ctx<'_>, rules: &Node) -> bool {
    let vars = include_vars(ctx);
    let Some(list) = flatten_list(rules, 10) else {
        return true;
    };
    // The first rule that matches decides; an invalid rule keeps the file out (reported).
    for r in &list {
        match eval_rule_conditions(ctx, r, &vars, "include:rules:rule") {
            Some(true) => return r.get("when").and_then(Node::as_str) != Some("never"),
            Some(false) => {}
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_is_subresource_integrity() {
        // `printf 'hello' | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            sri_sha256("hello"),
            "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
    }
}
