//! Evaluates a [`Dockerfile`] for one target platform: which stages the target needs, what
//! each `FROM` names, and every instruction with `ARG`/`ENV` expanded as BuildKit would.
//!
//! Pure. `archway build --check` runs this for every platform and prints the diagnostics;
//! the builder runs it once per platform and executes the result.

use std::collections::{BTreeMap, BTreeSet};

use archway_diag::{Diagnostic, Span};
use archway_oci::Platform;

use crate::dockerfile::{
    AUTOMATIC_ARGS, CommandForm, CopySource, Dockerfile, Healthcheck, Heredoc, MountKind, StepKind,
};
use crate::expand::{self, ExpandError};
use crate::source::{RemoteSource, classify};

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// An image reference (expanded), pulled for `platform`.
    Image {
        reference: String,
        platform: Platform,
    },
    /// An earlier stage.
    Stage(usize),
}

/// Where a COPY takes its files from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyFrom {
    Context,
    Stage(usize),
    Image(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalCopy {
    /// Paths (in the context or the `--from` tree) and heredocs.
    pub sources: Vec<CopySource>,
    /// ADD only: URLs and git repositories.
    pub remote: Vec<RemoteSource>,
    pub dest: String,
    pub from: CopyFrom,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    pub link: bool,
    pub exclude: Vec<String>,
    pub add: bool,
    /// ADD `--checksum` of its one remote source (a digest for a URL, a commit for git).
    pub checksum: Option<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalMount {
    pub kind: MountKind,
    pub target: String,
    pub id: Option<String>,
    pub source: Option<String>,
    pub from: Option<CopyFrom>,
    pub readonly: bool,
    pub required: bool,
    pub sharing: String,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// An instruction ready to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalStep {
    Run {
        command: CommandForm,
        heredocs: Vec<Heredoc>,
        mounts: Vec<EvalMount>,
        network: String,
        /// ARG values in scope, passed to the command's environment (not kept in the image).
        args: Vec<(String, String)>,
    },
    Copy(EvalCopy),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    Healthcheck(Option<Healthcheck>),
    Stopsignal(String),
    Onbuild(String),
    /// ARG: nothing to execute, but recorded in history for cache keys.
    Arg(Vec<(String, String)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalInstruction {
    pub step: EvalStep,
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalStage {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    pub instructions: Vec<EvalInstruction>,
}

/// The stages one platform's build needs, dependencies first, the target last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluated {
    pub platform: Platform,
    pub stages: Vec<EvalStage>,
    pub target: usize,
    /// Build arguments given but never declared by an `ARG` (BuildKit warns about these).
    pub unused_build_args: Vec<String>,
}

/// Inputs of an evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions<'a> {
    pub platform: &'a Platform,
    pub build_platform: &'a Platform,
    pub build_args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
}

fn platform_args(prefix: &str, p: &Platform) -> Vec<(String, String)> {
    vec![
        (format!("{prefix}PLATFORM"), p.to_string()),
        (format!("{prefix}OS"), p.os.clone()),
        (format!("{prefix}ARCH"), p.architecture.clone()),
        (
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ),
    ]
}

struct Scope<'a> {
    /// Values visible to expansion: ARGs in scope then ENV (ENV wins).
    args: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    opts: &'a EvalOptions<'a>,
    automatic: BTreeMap<String, String>,
    escape: char,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| self.args.get(name)).cloned()
    }

    fn expand(&self, raw: &str) -> Result<String, ExpandError> {
        expand::process(raw, &|n| self.lookup(n), self.escape, true)
    }

    /// Declares an ARG: the build argument if given, else the default (expanded), else the
    /// automatic value, else the global value.
    fn declare(
        &mut self,
        name: &str,
        default: Option<&str>,
        globals: &BTreeMap<String, String>,
    ) -> Result<String, ExpandError> {
        let value = if let Some(v) = self.opts.build_args.get(name) {
            v.clone()
        } else if let Some(d) = default {
            self.expand(d)?
        } else if let Some(v) = self.automatic.get(name) {
            v.clone()
        } else {
            globals.get(name).cloned().unwrap_or_default()
        };
        self.args.insert(name.to_owned(), value.clone());
        Ok(value)
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// Evaluates `df` for one platform.
pub fn evaluate(df: &Dockerfile, opts: &EvalOptions<'_>) -> (Option<Evaluated>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let Some(target) = df.target(opts.target) else {
        let names: Vec<String> = df
            .stages
            .iter()
            .map(|s| s.name.clone().unwrap_or_else(|| s.index.to_string()))
            .collect();
        let span = Span::new(&df.file, 1, 1);
        diags.push(
            Diagnostic::error(
                &span,
                format!("--target {}: no such stage", opts.target.unwrap_or("")),
            )
            .with_hint(format!("stages are: {}", names.join(", "))),
        );
        return (None, diags);
    };
    let mut automatic: BTreeMap<String, String> =
        platform_args("TARGET", opts.platform).into_iter().collect();
    automatic.extend(platform_args("BUILD", opts.build_platform));
    // Global scope: ARGs before the first FROM, plus the automatic ones.
    let mut global_scope = Scope {
        args: automatic.clone(),
        env: BTreeMap::new(),
        opts,
        automatic: automatic.clone(),
        escape: df.escape,
    };
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let empty = BTreeMap::new();
    for a in &df.global_args {
        declared.insert(a.name.clone());
        if let Err(e) = global_scope.declare(&a.name, a.default.as_deref(), &empty) {
            diags.push(Diagnostic::error(
                &Span::new(&df.file, 1, 1),
                format!("ARG {}: {e}", a.name),
            ));
        }
    }
    let globals = global_scope.args.clone();

    // Which stages the target needs.
    let mut bases: Vec<Base> = Vec::new();
    let mut stages_out: Vec<EvalStage> = Vec::new();
    for stage in &df.stages {
        let err =
            |d: &mut Vec<Diagnostic>, msg: String| d.push(Diagnostic::error(&stage.span, msg));
        let from = match global_scope.expand(&stage.from) {
            Ok(f) => f,
            Err(e) => {
                err(&mut diags, format!("FROM {}: {e}", stage.from));
                String::new()
            }
        };
        let platform = match &stage.platform {
            Some(p) => match global_scope.expand(p) {
                Ok(s) => match s.parse::<Platform>() {
                    Ok(p) => p,
                    Err(e) => {
                        err(&mut diags, format!("FROM --platform={s}: {e}"));
                        opts.platform.clone()
                    }
                },
                Err(e) => {
                    err(&mut diags, format!("FROM --platform: {e}"));
                    opts.platform.clone()
                }
            },
            None => opts.platform.clone(),
        };
        let lower = from.to_ascii_lowercase();
        let base = if lower == "scratch" {
            Base::Scratch
        } else if let Some(i) = df
            .stages
            .iter()
            .take(stage.index)
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            Base::Stage(i)
        } else if from.is_empty() {
            err(
                &mut diags,
                format!("FROM `{}` expands to nothing", stage.from),
            );
            Base::Scratch
        } else {
            Base::Image {
                reference: from.clone(),
                platform: platform.clone(),
            }
        };
        bases.push(base.clone());

        // Stage scope: nothing but what ARG re-declares (plus ENV from a stage base).
        let mut scope = Scope {
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            opts,
            automatic: automatic.clone(),
            escape: df.escape,
        };
        // A stage built on another inherits its ENV.
        if let Base::Stage(i) = &base
            && let Some(parent) = stages_out.iter().find(|s| s.index == *i)
        {
            for ins in &parent.instructions {
                if let EvalStep::Env(pairs) = &ins.step {
                    for (k, v) in pairs {
                        scope.env.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for step in &stage.steps {
            let fail = |d: &mut Vec<Diagnostic>, what: &str, e: ExpandError| {
                d.push(Diagnostic::error(&step.span, format!("{what}: {e}")));
            };
            let ev = match &step.kind {
                StepKind::Arg { args } => {
                    let mut pairs = Vec::new();
                    for a in args {
                        declared.insert(a.name.clone());
                        match scope.declare(&a.name, a.default.as_deref(), &globals) {
                            Ok(v) => pairs.push((a.name.clone(), v)),
                            Err(e) => fail(&mut diags, &format!("ARG {}", a.name), e),
                        }
                    }
                    EvalStep::Arg(pairs)
                }
                StepKind::Env { pairs } => {
                    let mut out_pairs = Vec::new();
                    for (k, v) in pairs {
                        match scope.expand(v) {
                            Ok(v) => {
                                scope.env.insert(k.clone(), v.clone());
                                out_pairs.push((k.clone(), v));
                            }
                            Err(e) => fail(&mut diags, &format!("ENV {k}"), e),
                        }
                    }
                    EvalStep::Env(out_pairs)
                }
                StepKind::Label { pairs } => {
                    let mut out_pairs = Vec::new();
                    for (k, v) in pairs {
                        match (scope.expand(k), scope.expand(v)) {
                            (Ok(k), Ok(v)) => out_pairs.push((k, v)),
                            (Err(e), _) | (_, Err(e)) => fail(&mut diags, "LABEL", e),
                        }
                    }
                    EvalStep::Label(out_pairs)
                }
                StepKind::Workdir { path } => match scope.expand(path) {
                    Ok(p) => EvalStep::Workdir(p),
                    Err(e) => {
                        fail(&mut diags, "WORKDIR", e);
                        continue;
                    }
                },
                StepKind::User { user } => match scope.expand(user) {
                    Ok(u) => EvalStep::User(u),
                    Err(e) => {
                        fail(&mut diags, "USER", e);
                        continue;
                    }
                },
                StepKind::Expose { ports } => {
                    let mut out_ports = Vec::new();
                    for p in ports {
                        match scope.expand(p) {
                            Ok(p) => match expose_ports(&p) {
                                Some(ports) => out_ports.extend(ports),
                                None => diags.push(Diagnostic::error(
                                    &step.span,
                                    format!("EXPOSE {p}: expected PORT[-PORT][/tcp|udp|sctp]"),
                                )),
                            },
                            Err(e) => fail(&mut diags, "EXPOSE", e),
                        }
                    }
                    EvalStep::Expose(out_ports)
                }
                StepKind::Volume { paths } => {
                    EvalStep::Volume(paths.iter().filter_map(|p| scope.expand(p).ok()).collect())
                }
                StepKind::Cmd { command } => EvalStep::Cmd(command.clone()),
                StepKind::Entrypoint { command } => EvalStep::Entrypoint(command.clone()),
                StepKind::Shell { shell } => EvalStep::Shell(shell.clone()),
                StepKind::Healthcheck { check } => EvalStep::Healthcheck(check.clone()),
                StepKind::Stopsignal { signal } => match scope.expand(signal) {
                    Ok(s) => EvalStep::Stopsignal(s),
                    Err(e) => {
                        fail(&mut diags, "STOPSIGNAL", e);
                        continue;
                    }
                },
                StepKind::Onbuild { instruction } => EvalStep::Onbuild(instruction.clone()),
                StepKind::Maintainer { name } => {
                    EvalStep::Label(vec![("maintainer".into(), name.clone())])
                }
                StepKind::Run {
                    command,
                    mounts,
                    network,
                    heredocs,
                } => {
                    let mut ms = Vec::new();
                    for m in mounts {
                        let ex =
                            |s: &Option<String>| s.as_deref().map(|v| scope.expand(v)).transpose();
                        let (target, id, source, from) =
                            match (ex(&m.target), ex(&m.id), ex(&m.source), ex(&m.from)) {
                                (Ok(t), Ok(i), Ok(s), Ok(f)) => (t, i, s, f),
                                (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
                                    fail(&mut diags, "RUN --mount", e);
                                    continue;
                                }
                            };
                        let target = target.unwrap_or_else(|| {
                            format!("/run/secrets/{}", id.clone().unwrap_or_default())
                        });
                        let from = from.map(|f| resolve_from(df, stage.index, &f));
                        ms.push(EvalMount {
                            kind: m.kind,
                            target,
                            id,
                            source,
                            from,
                            readonly: m.readonly,
                            required: m.required,
                            sharing: m.sharing.clone().unwrap_or_else(|| "shared".into()),
                            mode: m.mode.as_deref().and_then(parse_mode),
                            uid: m.uid.as_deref().and_then(|u| u.parse().ok()),
                            gid: m.gid.as_deref().and_then(|g| g.parse().ok()),
                        });
                    }
                    EvalStep::Run {
                        command: command.clone(),
                        heredocs: heredocs.clone(),
                        mounts: ms,
                        network: network.clone().unwrap_or_else(|| "default".into()),
                        args: scope
                            .args
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    }
                }
                StepKind::Copy(c) | StepKind::Add(c) => {
                    let add = matches!(step.kind, StepKind::Add(_));
                    let what = if add { "ADD" } else { "COPY" };
                    let mut sources = Vec::new();
                    let mut remote = Vec::new();
                    let mut keep_git_dir = c.keep_git_dir;
                    for s in &c.sources {
                        match s {
                            CopySource::Path(p) => match scope.expand(p) {
                                // Remote sources only from the context: with --from they are
                                // paths in that stage or image, as in BuildKit.
                                Ok(p) if c.from.is_some() => sources.push(CopySource::Path(p)),
                                Ok(p) => match classify(&p) {
                                    Ok(None) => sources.push(CopySource::Path(p)),
                                    Ok(Some(RemoteSource::Http(_))) if !add => diags.push(
                                        Diagnostic::error(
                                            &step.span,
                                            format!("COPY {p}: source can't be a URL for COPY"),
                                        )
                                        .with_hint("use ADD to download a file, or RUN curl/wget"),
                                    ),
                                    Ok(Some(RemoteSource::Git(_))) if !add => diags.push(
                                        Diagnostic::error(
                                            &step.span,
                                            format!("COPY {p}: source can't be a git ref for COPY"),
                                        )
                                        .with_hint("use ADD to add a git repository"),
                                    ),
                                    Ok(Some(RemoteSource::Git(g))) => {
                                        if let (Some(flag), Some(url)) =
                                            (keep_git_dir, g.keep_git_dir)
                                            && flag != url
                                        {
                                            diags.push(Diagnostic::error(
                                                &step.span,
                                                "ADD: inconsistent keep-git-dir configuration (--keep-git-dir and the URL's keep-git-dir= disagree)",
                                            ));
                                        }
                                        keep_git_dir = keep_git_dir.or(g.keep_git_dir);
                                        remote.push(RemoteSource::Git(g));
                                    }
                                    Ok(Some(r)) => remote.push(r),
                                    Err(e) => diags.push(Diagnostic::error(
                                        &step.span,
                                        format!("ADD {p}: {e}"),
                                    )),
                                },
                                Err(e) => fail(&mut diags, &format!("{what} source"), e),
                            },
                            CopySource::Heredoc(h) => {
                                let content = if h.expand {
                                    expand::process(
                                        &h.content,
                                        &|n| scope.lookup(n),
                                        df.escape,
                                        false,
                                    )
                                    .unwrap_or_else(|_| h.content.clone())
                                } else {
                                    h.content.clone()
                                };
                                sources.push(CopySource::Heredoc(Heredoc {
                                    content,
                                    expand: false,
                                }));
                            }
                        }
                    }
                    // `--checksum` (BuildKit's dispatchCopy rules): one source, remote.
                    let checksum = match &c.checksum {
                        None => None,
                        Some(raw) => {
                            match scope.expand(raw) {
                                Ok(sum) => {
                                    if c.sources.len() != 1 {
                                        diags.push(Diagnostic::error(&step.span, "ADD --checksum can't be specified for multiple sources"));
                                    } else if remote.is_empty() {
                                        diags.push(Diagnostic::error(
                                            &step.span,
                                            "ADD --checksum requires HTTP(S) or Git sources",
                                        ));
                                    } else if let Some(RemoteSource::Http(_)) = remote.first()
                                        && let Err(e) = sum.parse::<archway_oci::Digest>()
                                    {
                                        diags.push(
                                        Diagnostic::error(&step.span, format!("ADD --checksum={sum}: {e}"))
                                            .with_hint("give the file's digest, e.g. --checksum=sha256:<64 hex digits>"),
                                    );
                                    } else if let Some(RemoteSource::Git(_)) = remote.first()
                                        && (sum.len() < 7
                                            || !sum.bytes().all(|b| b.is_ascii_hexdigit()))
                                    {
                                        diags.push(Diagnostic::error(&step.span, format!("ADD --checksum={sum}: a git source's checksum is its commit id (at least 7 hex digits)")));
                                    }
                                    Some(sum)
                                }
                                Err(e) => {
                                    fail(&mut diags, "ADD --checksum", e);
                                    None
                                }
                            }
                        }
                    };
                    if let (Some(sum), Some(RemoteSource::Git(g))) = (&checksum, remote.first_mut())
                    {
                        if let Some(in_url) = &g.checksum
                            && in_url != sum
                        {
                            diags.push(Diagnostic::error(
                                &step.span,
                                format!("ADD: checksum mismatch {sum:?} != {in_url:?}"),
                            ));
                        }
                        g.checksum = Some(sum.clone());
                        if g.reference.is_none() {
                            g.reference = Some(sum.clone());
                        }
                    }
                    let dest = match scope.expand(&c.dest) {
                        Ok(d) => d,
                        Err(e) => {
                            fail(&mut diags, "COPY destination", e);
                            continue;
                        }
                    };
                    let from = match &c.from {
                        None => CopyFrom::Context,
                        Some(f) => match scope.expand(f) {
                            Ok(f) => resolve_from(df, stage.index, &f),
                            Err(e) => {
                                fail(&mut diags, "COPY --from", e);
                                continue;
                            }
                        },
                    };
                    let chmod = match &c.chmod {
                        None => None,
                        Some(m) => match parse_mode(m) {
                            Some(m) => Some(m),
                            None => {
                                diags.push(Diagnostic::error(
                                    &step.span,
                                    format!("--chmod={m}: expected an octal mode such as 755"),
                                ));
                                None
                            }
                        },
                    };
                    EvalStep::Copy(EvalCopy {
                        sources,
                        remote,
                        dest,
                        from,
                        chown: c.chown.as_deref().and_then(|v| scope.expand(v).ok()),
                        chmod,
                        link: c.link,
                        exclude: c.exclude.clone(),
                        add,
                        checksum,
                        keep_git_dir: keep_git_dir.unwrap_or(false),
                    })
                }
            };
            out.push(EvalInstruction {
                step: ev,
                text: step.text.clone(),
                span: step.span.clone(),
            });
        }
        stages_out.push(EvalStage {
            index: stage.index,
            name: stage.name.clone(),
            base,
            instructions: out,
        });
    }
    // Keep only the stages the target needs.
    let mut needed = BTreeSet::new();
    let mut work = vec![target];
    while let Some(i) = work.pop() {
        if !needed.insert(i) {
            continue;
        }
        if let Some(Base::Stage(b)) = bases.get(i) {
            work.push(*b);
        }
        for ins in &stages_out[i].instructions {
            match &ins.step {
                EvalStep::Copy(EvalCopy {
                    from: CopyFrom::Stage(s),
                    ..
                }) => work.push(*s),
                EvalStep::Run { mounts, .. } => {
                    for m in mounts {
                        if let Some(CopyFrom::Stage(s)) = &m.from {
                            work.push(*s);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let stages: Vec<EvalStage> = stages_out
        .into_iter()
        .filter(|s| needed.contains(&s.index))
        .collect();
    let unused_build_args = opts
        .build_args
        .keys()
        .filter(|k| !declared.contains(*k) && !AUTOMATIC_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    if diags.iter().any(Diagnostic::is_error) {
        return (None, diags);
    }
    (
        Some(Evaluated {
            platform: opts.platform.clone(),
            stages,
            target,
            unused_build_args,
        }),
        diags,
    )
}

fn resolve_from(df: &Dockerfile, current: usize, f: &str) -> CopyFrom {
    match df.stage_index(f) {
        Some(i) if i < current => CopyFrom::Stage(i),
        _ => CopyFrom::Image(f.to_owned()),
    }
}

/// The `ExposedPorts` keys of one `EXPOSE` argument, as Docker's `nat.ParsePortSpecs` makes
/// them: the protocol defaults to tcp and a range becomes one key per port
/// (`8000-8002/udp` → `8000/udp`, `8001/udp`, `8002/udp`). `None` for a malformed one.
fn expose_ports(spec: &str) -> Option<Vec<String>> {
    let (num, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (start, end) = match num.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let n = num.parse::<u16>().ok()?;
            (n, n)
        }
    };
    if start > end {
        return None;
    }
    Some((start..=end).map(|n| format!("{n}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    #[test]
    fn exposed_port_ranges_become_one_key_per_port_as_in_docker() {
        let cases: [(&str, Option<&[&str]>); 7] = [
            ("80", Some(&["80/tcp"])),
            ("53/udp", Some(&["53/udp"])),
            ("8000-8002/tcp", Some(&["8000/tcp", "8001/tcp", "8002/tcp"])),
            ("9-9/SCTP", Some(&["9/sctp"])),
            ("8002-8000", None),
            ("80/icmp", None),
            ("http", None),
        ];
        for (spec, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(expose_ports(spec), want, "{spec}");
        }
    }

    fn eval(text: &str, platform: &str, args: &[(&str, &str)]) -> Evaluated {
        let (df, d) = parse("Dockerfile", text);
        assert!(d.is_empty(), "{d:?}");
        let p: Platform = platform.parse().unwrap();
        let args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let (e, d) = evaluate(
            &df.unwrap(),
            &EvalOptions {
                platform: &p,
                build_platform: &Platform::linux_amd64(),
                build_args: &args,
                target: None,
            },
        );
        assert!(d.iter().all(|x| !x.is_error()), "{d:?}");
        e.unwrap()
    }

    #[test]
    fn platform_args_and_scoping() {
        let df = "ARG VERSION=1.0\nFROM --platform=$BUILDPLATFORM alpine:${VERSION} AS build\nARG TARGETARCH\nARG VERSION\nENV OUT=/out/$TARGETARCH-$VERSION\nRUN make\nFROM scratch\nCOPY --from=build $OUT /app\n";
        let e = eval(df, "linux/arm64", &[]);
        let build = &e.stages[0];
        assert_eq!(
            build.base,
            Base::Image {
                reference: "alpine:1.0".into(),
                platform: Platform::linux_amd64()
            }
        );
        assert_eq!(
            build.instructions[2].step,
            EvalStep::Env(vec![("OUT".into(), "/out/arm64-1.0".into())])
        );
        let EvalStep::Run { args, .. } = &build.instructions[3].step else {
            panic!()
        };
        assert!(args.contains(&("TARGETARCH".into(), "arm64".into())));
        // ENV of another stage is not visible in `COPY --from` paths of this one.
        let EvalStep::Copy(c) = &e.stages[1].instructions[0].step else {
            panic!()
        };
        assert_eq!(c.from, CopyFrom::Stage(0));
        assert_eq!(c.sources, vec![CopySource::Path(String::new())]);
        let e = eval(df, "linux/amd64", &[("VERSION", "2.0")]);
        assert_eq!(
            e.stages[0].base,
            Base::Image {
                reference: "alpine:2.0".into(),
                platform: Platform::linux_amd64()
            }
        );
    }

    #[test]
    fn only_needed_stages_and_unused_args() {
        let df = "FROM alpine AS a\nRUN a\nFROM alpine AS b\nRUN b\nFROM a\nCOPY --from=a /x /y\n";
        let e = eval(df, "linux/amd64", &[("NOPE", "1")]);
        let idx: Vec<usize> = e.stages.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![0, 2]);
        assert_eq!(e.unused_build_args, vec!["NOPE"]);
    }

    #[test]
    fn expansion_errors_are_positioned() {
        let (df, _) = parse(
            "Dockerfile",
            "FROM alpine\nARG NEED\nENV X=${NEED:?set NEED with --build-arg}\n",
        );
        let p = Platform::linux_amd64();
        let (e, d) = evaluate(
            &df.unwrap(),
            &EvalOptions {
                platform: &p,
                build_platform: &p,
                build_args: &BTreeMap::new(),
                target: None,
            },
        );
        assert!(e.is_none());
        assert_eq!(
            d[0].to_string(),
            "Dockerfile:3:1: error: ENV X: NEED: set NEED with --build-arg"
        );
        let (df, _) = parse("Dockerfile", "FROM alpine\n");
        let (_, d) = evaluate(
            &df.unwrap(),
            &EvalOptions {
                platform: &p,
                build_platform: &p,
                build_args: &BTreeMap::new(),
                target: Some("nope"),
            },
        );
        assert!(d[0].to_string().contains("--target nope: no such stage"));
    }
}
