//! Keywords: which ones exist where (top level, jobs, `default:`), the shapes of scalar values,
//! and the parsers of the job keywords that are more than a string (`allow_failure`,
//! `retry`, `image`, `services`, `artifacts`, `cache`, durations).

use archway_oci::duration::parse_duration;

use super::{Ctx, key_name, unknown_keys};
use crate::diag::{Diagnostic, did_you_mean};
use crate::graph::{AllowFailure, Artifacts, Cache, Image, Retry, Service};
use crate::vars::Vars;
use crate::yaml::{Node, Value};

/// Top-level keys that are not jobs.
pub(super) const GLOBAL_KEYS: &[&str] = &[
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
pub(super) const JOB_KEYWORDS: &[&str] = &[
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
pub(super) const IGNORED_KEYWORDS: &[&str] = &[
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
pub(super) const DEFAULT_KEYWORDS: &[&str] = &[
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

// ---- scalars and shapes -----------------------------------------------------------------

pub(super) fn expect_str(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<String> {
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

pub(super) fn expect_bool(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<bool> {
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

pub(super) fn string_list(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Vec<String> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| expect_str(ctx, i, what))
            .collect(),
        Value::Null => Vec::new(),
        _ => expect_str(ctx, n, what).into_iter().collect(),
    }
}

/// A script: a string or a list of strings, nested lists (from `!reference`) flattened up to
/// GitLab's 10 levels. `loc` names the keyword as GitLab does (`jobs:build script`).
pub(super) fn script_lines(ctx: &mut Ctx<'_>, n: &Node, what: &str, loc: &str) -> Vec<String> {
    fn flat(
        ctx: &mut Ctx<'_>,
        n: &Node,
        what: &str,
        loc: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        match &n.value {
            Value::Seq(items) if depth < 10 => {
                for i in items {
                    flat(ctx, i, what, loc, depth + 1, out);
                }
            }
            Value::Seq(_) => ctx.error(
                &n.span,
                format!("{loc} config should be a string or a nested array of strings up to 10 levels deep"),
            ),
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
    flat(ctx, n, what, loc, 0, &mut out);
    out
}

/// A list of strings whose items may be nested lists (`!reference` in `tags`, `stages`),
/// flattened up to GitLab's 10 levels.
pub(super) fn nested_string_list(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Vec<String> {
    match super::rules::flatten_list(n, 10) {
        Some(items) => items
            .iter()
            .filter_map(|i| expect_str(ctx, i, what))
            .collect(),
        None => string_list(ctx, n, what),
    }
}

pub(super) fn parse_allow_failure(ctx: &mut Ctx<'_>, n: &Node) -> AllowFailure {
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

pub(super) const RETRY_WHEN: &[&str] = &[
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

pub(super) fn parse_retry(ctx: &mut Ctx<'_>, n: &Node, loc: &str) -> Retry {
    // GitLab: `retry: 3` is "retry config …", `retry: {max: 3}` is "retry max …".
    let check_max = |ctx: &mut Ctx<'_>, m: &Node| match m.value {
        Value::Int(i) if (0..=2).contains(&i) => i as u32,
        Value::Int(i) => {
            let what = if std::ptr::eq(m, n) { "config" } else { "max" };
            let bound = if i < 0 {
                "greater than or equal to 0"
            } else {
                "less than or equal to 2"
            };
            ctx.error(&m.span, format!("{loc} {what} must be {bound}"));
            0
        }
        _ => {
            let what = if std::ptr::eq(m, n) { "config" } else { "max" };
            ctx.error_hint(
                &m.span,
                format!("{loc} {what} is not a number"),
                "retry is 0, 1 or 2 (or `{max: 2, when: [...]}`)",
            );
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
            let unknown: Vec<&str> = when
                .iter()
                .map(String::as_str)
                .filter(|w| !RETRY_WHEN.contains(w))
                .collect();
            if !unknown.is_empty() {
                let d = Diagnostic::error(
                    &n.span,
                    format!("{loc} when contains unknown values: {}", unknown.join(", ")),
                );
                ctx.diags
                    .push(match did_you_mean(unknown[0], RETRY_WHEN.iter().copied()) {
                        Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                        None => d,
                    });
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

pub(super) fn parse_image(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Option<Image> {
    match &n.value {
        // Variables the pipeline does not define (CI_REGISTRY, …) are the runner's to expand.
        Value::Str(s) => Some(Image {
            name: vars.expand_known(s),
            entrypoint: None,
            platform: None,
            user: None,
        }),
        Value::Map(_) => {
            let name = n
                .get("name")
                .and_then(Node::as_str)
                .map(|s| vars.expand_known(s));
            let Some(name) = name else {
                ctx.error(&n.span, "image as a mapping needs `name`");
                return None;
            };
            let entrypoint = n
                .get("entrypoint")
                .map(|e| string_list(ctx, e, "image:entrypoint"));
            let (mut platform, mut user) = (None, None);
            if let Some(d) = n.get("docker") {
                for (k, v) in d.as_map().unwrap_or_default() {
                    match key_name(k).as_str() {
                        "platform" => {
                            let raw = v.scalar_text().map(|p| vars.expand(&p)).unwrap_or_default();
                            let normalised = crate::graph::platform_for_tag(&raw)
                                .map(str::to_owned)
                                .or_else(|| {
                                    raw.parse::<archway_oci::Platform>()
                                        .ok()
                                        .map(|p| p.to_string())
                                });
                            match normalised {
                                Some(p) => platform = Some(p),
                                None => ctx.error(
                                    &v.span,
                                    format!(
                                        "image:docker:platform `{raw}` is not a platform (e.g. linux/arm64, amd64)"
                                    ),
                                ),
                            }
                        }
                        "user" => user = v.scalar_text().map(|u| vars.expand(&u)),
                        other => ctx.error(
                            &k.span,
                            format!("image:docker config contains unknown keys: {other}"),
                        ),
                    }
                }
            }
            Some(Image {
                name,
                entrypoint,
                platform,
                user,
            })
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

pub(super) fn parse_services(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars) -> Vec<Service> {
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
                variables: Default::default(),
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
                    variables: i
                        .get("variables")
                        .and_then(Node::as_map)
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| {
                                    Some((k.scalar_text()?, vars.expand(&v.scalar_text()?)))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
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

/// `artifacts:reports`: dotenv and junit are used; GitLab's other report types are accepted
/// (their files are kept only if `paths` names them).
fn parse_reports(ctx: &mut Ctx<'_>, n: &Node, a: &mut Artifacts) {
    let Some(entries) = n.as_map() else {
        ctx.error(
            &n.span,
            format!("artifacts:reports must be a mapping, found {}", n.kind()),
        );
        return;
    };
    for (k, v) in entries {
        match key_name(k).as_str() {
            "dotenv" => a.dotenv = string_list(ctx, v, "artifacts:reports:dotenv"),
            "junit" => a.junit = string_list(ctx, v, "artifacts:reports:junit"),
            _ => {}
        }
    }
}

pub(super) fn parse_artifacts(
    ctx: &mut Ctx<'_>,
    n: &Node,
    vars: &Vars,
    loc: &str,
) -> Option<Artifacts> {
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
                    ctx.diags.push(
                        Diagnostic::error(&v.span, format!("{loc} expire in should be a duration"))
                            .with_hint(format!(
                                "`{s}` is not one; e.g. `1 week`, `30 days`, `never`"
                            )),
                    );
                }
                a.expire_in = Some(s);
            }
            "when" => {
                let s = expect_str(ctx, v, "artifacts:when").unwrap_or_default();
                if !["on_success", "on_failure", "always"].contains(&s.as_str()) {
                    ctx.error(
                        &v.span,
                        format!("{loc} when should be on_success, on_failure or always"),
                    );
                }
                a.when = s;
            }
            "name" => a.name = expect_str(ctx, v, "artifacts:name").map(|s| vars.expand(&s)),
            "untracked" => {
                a.untracked = expect_bool(ctx, v, "artifacts:untracked").unwrap_or(false)
            }
            "reports" => parse_reports(ctx, v, &mut a),
            "expose_as" | "public" | "access" => {}
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

/// GitLab's `KeyValidator`: a cache key (as written, `%2F` counting as `/`) may not contain
/// `/` nor be `.` or `..`.
fn check_cache_key(ctx: &mut Ctx<'_>, key: &str, n: &Node, loc: &str) {
    let unescaped = percent_decode(key);
    if unescaped.contains('/') {
        ctx.error_hint(
            &n.span,
            format!("{loc}:key config cannot contain the \"/\" character"),
            "the key names a directory of the cache; use `-` or `_` instead",
        );
    } else if unescaped == "." || unescaped == ".." {
        ctx.error(
            &n.span,
            format!("{loc}:key config cannot be \".\" or \"..\""),
        );
    }
}

/// `%XX` escapes decoded (and `+` as a space), as Ruby's `CGI.unescape`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `cache:` (one mapping or a list of them). `loc` names it as GitLab does: `jobs:build:cache`
/// or `default:cache`.
/// GitLab's `ci_max_caches_per_job` default.
const MAX_CACHES: usize = 4;

pub(super) fn parse_cache(ctx: &mut Ctx<'_>, n: &Node, vars: &Vars, loc: &str) -> Vec<Cache> {
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
    if items.len() > MAX_CACHES {
        ctx.error(
            &n.span,
            format!("{loc} config no more than {MAX_CACHES} caches can be created"),
        );
    }
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
                        if let Some(d) = unknown_keys(
                            v,
                            &["files", "prefix", "files_commits"],
                            &format!("{loc}:key"),
                        ) {
                            ctx.diags.push(d);
                        }
                        let files_node = v.get("files").or_else(|| v.get("files_commits"));
                        let files = match files_node {
                            None => {
                                ctx.error(
                                    &v.span,
                                    format!("{loc}:key config missing required keys: files"),
                                );
                                Vec::new()
                            }
                            Some(f) => {
                                let which = if v.get("files").is_some() {
                                    "files"
                                } else {
                                    "files_commits"
                                };
                                let floc = format!("{loc}:key:{which}");
                                match f.as_seq() {
                                    None => {
                                        ctx.error(
                                            &f.span,
                                            format!("{floc} config should be an array of strings"),
                                        );
                                        Vec::new()
                                    }
                                    Some(items) if items.iter().any(|x| x.as_str().is_none()) => {
                                        ctx.error(
                                            &f.span,
                                            format!("{floc} config should be an array of strings"),
                                        );
                                        Vec::new()
                                    }
                                    Some([]) => {
                                        ctx.error(
                                            &f.span,
                                            format!("{floc} config requires at least 1 item"),
                                        );
                                        Vec::new()
                                    }
                                    Some(items) if items.len() > MAX_CACHE_KEY_FILES => {
                                        ctx.error_hint(
                                            &f.span,
                                            format!("{floc} config has too many items (maximum is {MAX_CACHE_KEY_FILES})"),
                                            "GitLab builds the key from at most two files",
                                        );
                                        Vec::new()
                                    }
                                    Some(items) => items
                                        .iter()
                                        .filter_map(Node::as_str)
                                        .map(|s| s.trim_start_matches('/').to_owned())
                                        .collect(),
                                }
                            }
                        };
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
                        let raw = expect_str(ctx, v, "cache:key").unwrap_or_default();
                        check_cache_key(ctx, &raw, v, loc);
                        c.key = vars.expand(&raw);
                    }
                },
                "paths" => {
                    if v.as_seq()
                        .is_none_or(|s| s.iter().any(|x| x.as_str().is_none()))
                    {
                        ctx.error_hint(
                            &v.span,
                            format!("{loc}:paths config should be an array of strings"),
                            "write `paths: [node_modules/]`",
                        );
                    } else {
                        c.paths = string_list(ctx, v, "cache:paths");
                    }
                }
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
                "fallback_keys" => {
                    if v.as_seq()
                        .is_none_or(|s| s.iter().any(|x| x.as_str().is_none()))
                    {
                        ctx.error(
                            &v.span,
                            format!("{loc}:fallback_keys config should be an array of strings"),
                        );
                    } else {
                        let keys = string_list(ctx, v, "cache:fallback_keys");
                        if keys.len() > 5 {
                            ctx.error(
                                &v.span,
                                format!(
                                    "{loc}:fallback_keys config has too many entries (maximum 5)"
                                ),
                            );
                        }
                        for k in &keys {
                            check_cache_key(ctx, k, v, loc);
                        }
                        c.fallback_keys = keys.iter().map(|k| vars.expand(k)).collect();
                    }
                }
                "untracked" | "unprotect" => {}
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

/// GitLab's limit on `cache:key:files` (its `Entry::Files::DEFAULT_MAX_SIZE`).
pub(super) const MAX_CACHE_KEY_FILES: usize = 2;

/// Every keyword of job `name` is one GitLab defines (else an error with a suggestion); the
/// ones Archway ignores are warned about.
pub(super) fn check_job_keywords(ctx: &mut Ctx<'_>, name: &str, node: &Node) {
    for (k, _) in node.as_map().unwrap_or_default() {
        let kw = key_name(k);
        if !JOB_KEYWORDS.contains(&kw.as_str()) {
            let d = Diagnostic::error(
                &k.span,
                format!("jobs:{name} config contains unknown keys: {kw}"),
            );
            ctx.diags
                .push(match did_you_mean(&kw, JOB_KEYWORDS.iter().copied()) {
                    Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                    None => d.with_hint("see https://docs.gitlab.com/ci/yaml/ for job keywords"),
                });
        } else if IGNORED_KEYWORDS.contains(&kw.as_str()) {
            ctx.warn(
                &k.span,
                format!("`{kw}` in job `{name}` is accepted but not used by Archway yet"),
            );
        }
    }
}
