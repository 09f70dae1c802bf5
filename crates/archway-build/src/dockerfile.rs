//! The Dockerfile front end: text → a typed [`Dockerfile`] with positioned diagnostics.
//!
//! Syntax comes from the `parse-dockerfile` crate (instructions, flags, heredocs, exec and
//! shell forms, escapes); this module adds what BuildKit checks on top: flags per instruction,
//! `ARG`/`ENV`/`LABEL` pairs, `RUN --mount` specs, stage references (`FROM <stage>`,
//! `COPY --from`) and their cycles. Values stay unexpanded: they depend on the platform being
//! built (`TARGETARCH` …) and are expanded by [`crate::eval`].
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use archway_diag::{Diagnostic, Span, did_you_mean};
use serde::Serialize;

use crate::expand::{split_pairs, split_words};

/// Automatic platform arguments BuildKit defines.
pub const AUTOMATIC_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    /// Raw (unexpanded) default.
    pub default: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CommandForm {
    /// JSON array: run as is.
    Exec(Vec<String>),
    /// A string run through the stage's `SHELL` (default `/bin/sh -c`).
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    pub content: String,
    pub expand: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CopySource {
    Path(String),
    Heredoc(Heredoc),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopySpec {
    pub sources: Vec<CopySource>,
    pub dest: String,
    /// `--from`: a stage name/index or an image reference (raw).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
    /// ADD only: expected checksum of a remote source.
    pub checksum: Option<String>,
    /// ADD only: `--keep-git-dir` for a git source (`None` when not given).
    pub keep_git_dir: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Cache,
    Secret,
    Bind,
    Tmpfs,
}

/// A `RUN --mount=...` spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunMount {
    pub kind: MountKind,
    pub target: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    pub readonly: bool,
    pub required: bool,
    pub sharing: Option<String>,
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub env: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: Option<CommandForm>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepKind {
    Run {
        command: CommandForm,
        mounts: Vec<RunMount>,
        network: Option<String>,
        heredocs: Vec<Heredoc>,
    },
    Copy(CopySpec),
    Add(CopySpec),
    Env {
        pairs: Vec<(String, String)>,
    },
    Arg {
        args: Vec<ArgDecl>,
    },
    Label {
        pairs: Vec<(String, String)>,
    },
    Workdir {
        path: String,
    },
    User {
        user: String,
    },
    Expose {
        ports: Vec<String>,
    },
    Volume {
        paths: Vec<String>,
    },
    Cmd {
        command: CommandForm,
    },
    Entrypoint {
        command: CommandForm,
    },
    Shell {
        shell: Vec<String>,
    },
    Healthcheck {
        check: Option<Healthcheck>,
    },
    Stopsignal {
        signal: String,
    },
    Onbuild {
        instruction: String,
    },
    Maintainer {
        name: String,
    },
}

/// One instruction of a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub kind: StepKind,
    /// The instruction as written (for history and cache keys).
    pub text: String,
    pub span: Span,
}

/// One `FROM` … up to the next `FROM`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    pub index: usize,
    pub name: Option<String>,
    /// The base as written: an image reference, a stage name, or `scratch` (unexpanded).
    pub from: String,
    /// `FROM --platform=...` (unexpanded).
    pub platform: Option<String>,
    pub steps: Vec<Step>,
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub file: String,
    pub escape: char,
    /// `ARG`s before the first `FROM`.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The stage a `--target` names (by name or index); the last stage without one.
    pub fn target(&self, target: Option<&str>) -> Option<usize> {
        match target {
            None => self.stages.len().checked_sub(1),
            Some(t) => self.stage_index(t),
        }
    }

    /// A stage by name (case-insensitive) or number.
    pub fn stage_index(&self, r: &str) -> Option<usize> {
        let lower = r.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| r.parse::<usize>().ok().filter(|i| *i < self.stages.len()))
    }
}

/// Byte offset → 1-based line and column.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn span(&self, file: &str, text: &str, offset: usize) -> Span {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = text
            .get(start..offset.min(text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        Span::new(file, line, col)
    }
}

const FLAGS: &[(&str, &[&str])] = &[
    ("FROM", &["platform"]),
    (
        "COPY",
        &["from", "chown", "chmod", "link", "exclude", "parents"],
    ),
    (
        "ADD",
        &[
            "chown",
            "chmod",
            "link",
            "checksum",
            "keep-git-dir",
            "exclude",
        ],
    ),
    ("RUN", &["mount", "network", "security"]),
    (
        "HEALTHCHECK",
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
    ),
];

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    lines: Lines,
    escape: char,
    diags: Vec<Diagnostic>,
}

type Flags<'f, 'a> = &'f [parse_dockerfile::Flag<'a>];

impl Parser<'_> {
    fn span(&self, offset: usize) -> Span {
        self.lines.span(self.file, self.text, offset)
    }

    fn error(&mut self, offset: usize, msg: impl Into<String>) {
        let span = self.span(offset);
        self.diags.push(Diagnostic::error(&span, msg));
    }

    fn error_hint(&mut self, offset: usize, msg: impl Into<String>, hint: impl Into<String>) {
        let span = self.span(offset);
        self.diags
            .push(Diagnostic::error(&span, msg).with_hint(hint));
    }

    /// Checks flag names against what the instruction accepts.
    fn check_flags(&mut self, instruction: &str, flags: Flags<'_, '_>) {
        let allowed = FLAGS
            .iter()
            .find(|(i, _)| *i == instruction)
            .map_or(&[][..], |(_, f)| *f);
        for f in flags {
            let name = f.name.value.as_ref();
            if !allowed.contains(&name) {
                let msg = format!("{instruction} does not accept --{name}");
                let hint = match did_you_mean(name, allowed.iter().copied()) {
                    Some(h) => format!("did you mean --{h}?"),
                    None if allowed.is_empty() => format!("{instruction} takes no flags"),
                    None => format!(
                        "{instruction} accepts {}",
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.error_hint(f.span().start, msg, hint);
            }
        }
    }

    fn flag(&self, flags: Flags<'_, '_>, name: &str) -> Option<String> {
        flags.iter().rev().find(|f| f.name.value == name).map(|f| {
            f.value
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_else(|| "true".to_owned())
        })
    }

    fn flag_bool(&mut self, flags: Flags<'_, '_>, name: &str) -> bool {
        match self.flag(flags, name).as_deref() {
            None | Some("false") => false,
            Some("true") | Some("") => true,
            Some(other) => {
                let at = flags
                    .iter()
                    .find(|f| f.name.value == name)
                    .map_or(0, |f| f.span().start);
                self.error(at, format!("--{name} takes true or false, not `{other}`"));
                false
            }
        }
    }

    fn command(&self, c: &parse_dockerfile::Command<'_>) -> CommandForm {
        match c {
            parse_dockerfile::Command::Exec(args) => {
                CommandForm::Exec(args.value.iter().map(|a| a.value.to_string()).collect())
            }
            parse_dockerfile::Command::Shell(s) => CommandForm::Shell(s.value.to_string()),
            _ => CommandForm::Shell(String::new()),
        }
    }

    fn pairs(
        &mut self,
        raw: &str,
        offset: usize,
        what: &str,
        legacy: bool,
    ) -> Vec<(String, Option<String>)> {
        match split_pairs(raw, self.escape, legacy) {
            Ok(p) => p,
            Err(e) => {
                self.error(offset, format!("{what}: {e}"));
                Vec::new()
            }
        }
    }

    fn mount(&mut self, value: &str, offset: usize) -> Option<RunMount> {
        let mut m = RunMount {
            kind: MountKind::Bind,
            target: None,
            id: None,
            source: None,
            from: None,
            readonly: false,
            required: false,
            sharing: None,
            mode: None,
            uid: None,
            gid: None,
            env: None,
        };
        let mut kind_given = false;
        let mut rw_given = false;
        for part in value.split(',') {
            let (k, v) = part
                .split_once('=')
                .map_or((part, None), |(k, v)| (k, Some(v)));
            let v = v.map(|v| v.trim_matches('"').to_owned());
            match k {
                "type" => {
                    kind_given = true;
                    m.kind = match v.as_deref() {
                        Some("cache") => MountKind::Cache,
                        Some("secret") => MountKind::Secret,
                        Some("bind") => MountKind::Bind,
                        Some("tmpfs") => MountKind::Tmpfs,
                        Some("ssh") => {
                            self.error(offset, "RUN --mount=type=ssh is not supported yet");
                            return None;
                        }
                        other => {
                            self.error_hint(
                                offset,
                                format!("unknown mount type `{}`", other.unwrap_or("")),
                                "use cache, secret, bind or tmpfs",
                            );
                            return None;
                        }
                    };
                }
                "target" | "dst" | "destination" => m.target = v,
                "id" => m.id = v,
                "source" | "src" => m.source = v,
                "from" => m.from = v,
                "ro" | "readonly" => m.readonly = v.as_deref() != Some("false"),
                "rw" | "readwrite" => {
                    rw_given = true;
                    m.readonly = v.as_deref() == Some("false");
                }
                "required" => m.required = v.as_deref() != Some("false"),
                "sharing" => {
                    if !matches!(v.as_deref(), Some("shared" | "private" | "locked")) {
                        let got = v.clone().unwrap_or_default();
                        self.error(
                            offset,
                            format!("mount sharing must be shared, private or locked, not `{got}`"),
                        );
                    }
                    m.sharing = v;
                }
                "mode" => m.mode = v,
                "uid" => m.uid = v,
                "gid" => m.gid = v,
                "env" => m.env = v,
                "size" => {}
                other => {
                    let opts = [
                        "type", "target", "id", "source", "from", "ro", "rw", "required",
                        "sharing", "mode", "uid", "gid", "env", "size",
                    ];
                    let hint = did_you_mean(other, opts).map_or_else(
                        || format!("mount options are {}", opts.join(", ")),
                        |h| format!("did you mean `{h}`?"),
                    );
                    self.error_hint(offset, format!("unknown mount option `{other}`"), hint);
                }
            }
        }
        if !kind_given {
            m.kind = MountKind::Bind;
        }
        // Bind mounts are read-only unless `rw` is given (writes are discarded anyway).
        if m.kind == MountKind::Bind && !rw_given {
            m.readonly = true;
        }
        if m.target.is_none() && m.kind != MountKind::Secret {
            self.error(offset, "RUN --mount needs target=<path>");
            return None;
        }
        if m.kind == MountKind::Secret && m.id.is_none() && m.target.is_none() {
            self.error(offset, "a secret mount needs id=<name> (or a target)");
            return None;
        }
        Some(m)
    }

    fn copy_spec(
        &mut self,
        instruction: &str,
        flags: Flags<'_, '_>,
        src: &[parse_dockerfile::Source<'_>],
        dest: &str,
    ) -> CopySpec {
        self.check_flags(instruction, flags);
        if let Some(f) = flags.iter().find(|f| f.name.value == "parents") {
            self.error_hint(
                f.span().start,
                format!("{instruction} --parents is not supported yet"),
                "copy each directory with its own COPY, or the common parent directory",
            );
        }
        let sources = src
            .iter()
            .map(|s| match s {
                parse_dockerfile::Source::Path(p) => CopySource::Path(p.value.to_string()),
                parse_dockerfile::Source::HereDoc(h) => CopySource::Heredoc(Heredoc {
                    content: h.value.to_string(),
                    expand: h.expand,
                }),
                _ => CopySource::Path(String::new()),
            })
            .collect();
        CopySpec {
            sources,
            dest: dest.to_owned(),
            from: self.flag(flags, "from"),
            chown: self.flag(flags, "chown"),
            chmod: self.flag(flags, "chmod"),
            link: self.flag_bool(flags, "link"),
            exclude: flags
                .iter()
                .filter(|f| f.name.value == "exclude")
                .filter_map(|f| f.value.as_ref().map(|v| v.value.to_string()))
                .collect(),
            checksum: self.flag(flags, "checksum"),
            keep_git_dir: flags
                .iter()
                .any(|f| f.name.value == "keep-git-dir")
                .then(|| self.flag_bool(flags, "keep-git-dir")),
        }
    }
}

/// Whether a `COPY --from` / `FROM` value looks like an image reference rather than a stage
/// name: it has a registry, a path, a tag or a digest.
fn looks_like_image(s: &str) -> bool {
    s.contains(['/', ':', '@', '.'])
}

/// Parses a Dockerfile.
pub fn parse(file: &str, text: &str) -> (Option<Dockerfile>, Vec<Diagnostic>) {
    let parsed = match parse_dockerfile::parse(text) {
        Ok(p) => p,
        Err(e) => {
            let span = Span::new(file, e.line(), e.column());
            let msg = e.to_string();
            // The crate's message already carries its position; keep the reason only.
            let reason = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            let mut d = Diagnostic::error(&span, reason.clone());
            if reason.contains("unknown instruction") {
                d = d.with_hint("instructions are FROM, RUN, COPY, ADD, ENV, ARG, LABEL, WORKDIR, USER, EXPOSE, VOLUME, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, STOPSIGNAL, ONBUILD");
            }
            return (None, vec![d]);
        }
    };
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |e| e.value.value);
    let mut p = Parser {
        file,
        text,
        lines: Lines::new(text),
        escape,
        diags: Vec::new(),
    };
    let mut global_args = Vec::new();
    let mut global_spans = Vec::new();
    for a in parsed.global_args() {
        for (name, default) in p.pairs(&a.arguments.value, a.arguments.span.start, "ARG", false) {
            global_args.push(ArgDecl { name, default });
            global_spans.push(p.span(a.arguments.span.start));
        }
    }
    let globals: Vec<(&ArgDecl, Span)> = global_args.iter().zip(global_spans).collect();
    check_arg_cycles(&mut p.diags, &globals);
    let mut stages: Vec<Stage> = Vec::new();
    for (index, s) in parsed.stages().enumerate() {
        let from = s.from;
        p.check_flags("FROM", &from.options);
        let name = from.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase());
        let span = p.span(from.from.span.start);
        let mut steps = Vec::new();
        for inst in s.instructions {
            if let Some(step) = convert(&mut p, inst) {
                steps.push(step);
            }
        }
        stages.push(Stage {
            index,
            name,
            from: from.image.value.to_string(),
            platform: p.flag(&from.options, "platform"),
            steps,
            span,
        });
    }
    let df = Dockerfile {
        file: file.to_owned(),
        escape,
        global_args,
        stages,
    };
    check_stage_references(&mut p, &df);
    for stage in &df.stages {
        let decls: Vec<(&ArgDecl, Span)> = stage
            .steps
            .iter()
            .filter_map(|st| match &st.kind {
                StepKind::Arg { args } => Some(args.iter().map(move |a| (a, st.span.clone()))),
                _ => None,
            })
            .flatten()
            .collect();
        check_arg_cycles(&mut p.diags, &decls);
    }
    (Some(df), p.diags)
}

/// The variables a raw value refers to (`$NAME`, `${NAME...}`; `\$` escapes).
fn referenced_vars(raw: &str) -> Vec<String> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'$' => {
                let braced = b.get(i + 1) == Some(&b'{');
                let start = if braced { i + 2 } else { i + 1 };
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                if end > start {
                    out.push(raw[start..end].to_owned());
                }
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// ARGs are evaluated top to bottom, so `ARG A=$B` with `B` declared below uses an empty `B`.
/// When `B` in turn uses `A`, the author meant the two to define each other: an ARG cycle,
/// which can never have the intended value. Reported at the first ARG of the cycle.
fn check_arg_cycles(diags: &mut Vec<Diagnostic>, decls: &[(&ArgDecl, Span)]) {
    let index_of = |name: &str| decls.iter().position(|(d, _)| d.name == name);
    // Edges by name reference, in either direction.
    let refs: Vec<Vec<usize>> = decls
        .iter()
        .map(|(d, _)| {
            d.default
                .as_deref()
                .map(referenced_vars)
                .unwrap_or_default()
                .iter()
                .filter_map(|n| index_of(n))
                .collect()
        })
        .collect();
    let mut reported = BTreeSet::new();
    for (i, targets) in refs.iter().enumerate() {
        for &j in targets.iter().filter(|&&j| j > i) {
            // Is there a path from j back to i?
            let mut stack = vec![(j, vec![i, j])];
            let mut seen = BTreeSet::new();
            while let Some((k, path)) = stack.pop() {
                if !seen.insert(k) {
                    continue;
                }
                for &n in &refs[k] {
                    if n == i {
                        if reported.insert(i) {
                            let names: Vec<&str> = path
                                .iter()
                                .chain([&i])
                                .map(|&x| decls[x].0.name.as_str())
                                .collect();
                            diags.push(
                                Diagnostic::error(&decls[i].1, format!("ARG cycle: {}", names.join(" → ")))
                                    .with_hint(format!("ARGs are read top to bottom: `{}` is still empty where `{}` uses it; give one of them a literal default", decls[j].0.name, decls[i].0.name)),
                            );
                        }
                    } else {
                        let mut p2 = path.clone();
                        p2.push(n);
                        stack.push((n, p2));
                    }
                }
            }
        }
    }
}

fn instruction_text(p: &Parser<'_>, start: usize) -> String {
    let rest = &p.text[start..];
    let line_end = rest.find('\n').unwrap_or(rest.len());
    rest[..line_end].trim().to_owned()
}

fn convert(p: &mut Parser<'_>, inst: &parse_dockerfile::Instruction<'_>) -> Option<Step> {
    use parse_dockerfile::Instruction as I;
    let start = match inst {
        I::Add(i) => i.add.span.start,
        I::Arg(i) => i.arg.span.start,
        I::Cmd(i) => i.cmd.span.start,
        I::Copy(i) => i.copy.span.start,
        I::Entrypoint(i) => i.entrypoint.span.start,
        I::Env(i) => i.env.span.start,
        I::Expose(i) => i.expose.span.start,
        I::From(i) => i.from.span.start,
        I::Healthcheck(i) => i.healthcheck.span.start,
        I::Label(i) => i.label.span.start,
        I::Maintainer(i) => i.maintainer.span.start,
        I::Onbuild(i) => i.onbuild.span.start,
        I::Run(i) => i.run.span.start,
        I::Shell(i) => i.shell.span.start,
        I::Stopsignal(i) => i.stopsignal.span.start,
        I::User(i) => i.user.span.start,
        I::Volume(i) => i.volume.span.start,
        I::Workdir(i) => i.workdir.span.start,
        _ => 0,
    };
    let span = p.span(start);
    let text = instruction_text(p, start);
    let kind = match inst {
        I::Run(r) => {
            p.check_flags("RUN", &r.options);
            let mut mounts = Vec::new();
            for f in r.options.iter().filter(|f| f.name.value == "mount") {
                let v = f
                    .value
                    .as_ref()
                    .map(|v| v.value.to_string())
                    .unwrap_or_default();
                if let Some(m) = p.mount(&v, f.span().start) {
                    mounts.push(m);
                }
            }
            let network = p.flag(&r.options, "network");
            if let Some(n) = &network
                && !matches!(n.as_str(), "default" | "none" | "host")
            {
                let at = r
                    .options
                    .iter()
                    .find(|f| f.name.value == "network")
                    .map_or(start, |f| f.span().start);
                p.error(
                    at,
                    format!("RUN --network must be default, none or host, not `{n}`"),
                );
            }
            if p.flag(&r.options, "security")
                .is_some_and(|s| s == "insecure")
            {
                p.error(start, "RUN --security=insecure is not supported (Archway never runs privileged steps)");
            }
            StepKind::Run {
                command: p.command(&r.arguments),
                mounts,
                network,
                heredocs: r
                    .here_docs
                    .iter()
                    .map(|h| Heredoc {
                        content: h.value.to_string(),
                        expand: h.expand,
                    })
                    .collect(),
            }
        }
        I::Copy(c) => StepKind::Copy(p.copy_spec("COPY", &c.options, &c.src, &c.dest.value)),
        I::Add(a) => StepKind::Add(p.copy_spec("ADD", &a.options, &a.src, &a.dest.value)),
        I::Env(e) => {
            let pairs = p.pairs(&e.arguments.value, e.arguments.span.start, "ENV", true);
            let mut out = Vec::new();
            for (k, v) in pairs {
                match v {
                    Some(v) => out.push((k, v)),
                    None => p.error(
                        e.arguments.span.start,
                        format!("ENV {k} needs a value: ENV {k}=value"),
                    ),
                }
            }
            StepKind::Env { pairs: out }
        }
        I::Arg(a) => StepKind::Arg {
            args: p
                .pairs(&a.arguments.value, a.arguments.span.start, "ARG", false)
                .into_iter()
                .map(|(name, default)| ArgDecl { name, default })
                .collect(),
        },
        I::Label(l) => {
            // `LABEL key value with spaces`, the legacy one-pair form, as ENV (BuildKit parses
            // both with `parseNameVal`).
            let pairs = p.pairs(&l.arguments.value, l.arguments.span.start, "LABEL", true);
            let mut out = Vec::new();
            for (k, v) in pairs {
                match v {
                    Some(v) => out.push((k, v)),
                    None => p.error(start, format!("LABEL {k} needs a value: LABEL {k}=value")),
                }
            }
            StepKind::Label { pairs: out }
        }
        I::Workdir(w) => StepKind::Workdir {
            path: w.arguments.value.to_string(),
        },
        I::User(u) => StepKind::User {
            user: u.arguments.value.to_string(),
        },
        I::Expose(e) => StepKind::Expose {
            ports: e.arguments.iter().map(|a| a.value.to_string()).collect(),
        },
        I::Volume(v) => StepKind::Volume {
            paths: match &v.arguments {
                parse_dockerfile::JsonOrStringArray::Json(j) => {
                    j.value.iter().map(|a| a.value.to_string()).collect()
                }
                parse_dockerfile::JsonOrStringArray::String(s) => {
                    s.iter().map(|a| a.value.to_string()).collect()
                }
            },
        },
        I::Cmd(c) => StepKind::Cmd {
            command: p.command(&c.arguments),
        },
        I::Entrypoint(e) => StepKind::Entrypoint {
            command: p.command(&e.arguments),
        },
        I::Shell(s) => StepKind::Shell {
            shell: s.arguments.iter().map(|a| a.value.to_string()).collect(),
        },
        I::Healthcheck(h) => {
            p.check_flags("HEALTHCHECK", &h.options);
            StepKind::Healthcheck {
                check: match &h.arguments {
                    parse_dockerfile::HealthcheckArguments::None { .. } => None,
                    parse_dockerfile::HealthcheckArguments::Cmd { arguments, .. } => {
                        Some(Healthcheck {
                            test: Some(p.command(arguments)),
                            interval: p.flag(&h.options, "interval"),
                            timeout: p.flag(&h.options, "timeout"),
                            start_period: p.flag(&h.options, "start-period"),
                            start_interval: p.flag(&h.options, "start-interval"),
                            retries: p.flag(&h.options, "retries"),
                        })
                    }
                    _ => None,
                },
            }
        }
        I::Stopsignal(s) => StepKind::Stopsignal {
            signal: s.arguments.value.to_string(),
        },
        I::Onbuild(o) => {
            let t = instruction_text(p, start);
            let _ = o;
            StepKind::Onbuild {
                instruction: t
                    .split_once(char::is_whitespace)
                    .map_or(String::new(), |(_, r)| r.trim().to_owned()),
            }
        }
        I::Maintainer(m) => StepKind::Maintainer {
            name: m.name.value.to_string(),
        },
        I::From(_) => return None,
        _ => {
            p.error(start, "unsupported instruction");
            return None;
        }
    };
    Some(Step { kind, text, span })
}

/// `FROM <stage>` and `COPY --from` must name an earlier stage (or an image); no cycles.
fn check_stage_references(p: &mut Parser<'_>, df: &Dockerfile) {
    let names: BTreeMap<&str, usize> = df
        .stages
        .iter()
        .filter_map(|s| s.name.as_deref().map(|n| (n, s.index)))
        .collect();
    for s in &df.stages {
        if let Some(n) = &s.name {
            if let Some(first) = df
                .stages
                .iter()
                .find(|o| o.name.as_deref() == Some(n.as_str()) && o.index < s.index)
            {
                let span = s.span.clone();
                p.diags.push(Diagnostic::error(
                    &span,
                    format!("stage name `{n}` is already used by stage {}", first.index),
                ));
            }
            if n.parse::<usize>().is_ok() {
                p.diags.push(Diagnostic::error(
                    &s.span,
                    format!("stage name `{n}` is a number; names must not be numbers"),
                ));
            }
        }
        let base = s.from.to_ascii_lowercase();
        if let Some(&i) = names.get(base.as_str())
            && i >= s.index
        {
            p.diags.push(
                Diagnostic::error(
                    &s.span,
                    format!(
                        "stage {} is built FROM `{base}`, which is not an earlier stage",
                        s.index
                    ),
                )
                .with_hint("a stage can only start from a stage defined above it"),
            );
        }
        for step in &s.steps {
            let from = match &step.kind {
                StepKind::Copy(c) => c.from.as_deref(),
                StepKind::Run { mounts, .. } => mounts.iter().find_map(|m| m.from.as_deref()),
                _ => None,
            };
            let Some(from) = from else { continue };
            if from.contains('$') {
                continue; // depends on build arguments; checked when evaluated
            }
            let lower = from.to_ascii_lowercase();
            let target = names
                .get(lower.as_str())
                .copied()
                .or_else(|| lower.parse::<usize>().ok());
            match target {
                Some(i) if i >= df.stages.len() => p.diags.push(Diagnostic::error(&step.span, format!("--from={from}: there is no stage {i}"))),
                Some(i) if i == s.index => p.diags.push(Diagnostic::error(&step.span, format!("--from={from} refers to the stage it is in"))),
                Some(i) if i > s.index => p.diags.push(
                    Diagnostic::error(&step.span, format!("--from={from} refers to a later stage ({i}); stages can only use earlier ones"))
                        .with_hint("move the stage above, or this instruction below it"),
                ),
                Some(_) => {}
                None if looks_like_image(from) => {}
                None => {
                    let hint = did_you_mean(&lower, names.keys().copied())
                        .map(|h| format!("did you mean `{h}`?"))
                        .unwrap_or_else(|| "to copy from an image, write its full reference (e.g. docker.io/library/alpine:3.19)".to_owned());
                    p.diags.push(Diagnostic::error(&step.span, format!("--from={from}: no stage is named `{from}`")).with_hint(hint));
                }
            }
        }
    }
}

/// All `$NAME` references in a raw word (for unused/undeclared argument checks).
pub fn referenced_names(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' {
            let braced = b.get(i + 1) == Some(&'{');
            let start = if braced { i + 2 } else { i + 1 };
            let n = b[start..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .count();
            if n > 0 {
                out.push(b[start..start + n].iter().collect());
            }
            i = start + n;
        } else {
            i += 1;
        }
    }
    out
}

/// Splits a raw word list (EXPOSE, shell words) without expanding.
pub fn words(s: &str, escape: char) -> Vec<String> {
    split_words(s, escape).unwrap_or_else(|_| vec![s.to_owned()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Dockerfile {
        let (df, diags) = parse("Dockerfile", text);
        assert!(diags.is_empty(), "{diags:?}");
        df.unwrap()
    }

    fn errors(text: &str) -> Vec<String> {
        let (_, diags) = parse("Dockerfile", text);
        diags.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn stages_args_and_steps() {
        let df = ok(
            "ARG BASE=alpine:3.19\nFROM --platform=$BUILDPLATFORM $BASE AS build\nARG TARGETARCH\nRUN --mount=type=cache,target=/root/.cache echo $TARGETARCH\nFROM scratch\nCOPY --from=build --chmod=755 /out/app /app\nENTRYPOINT [\"/app\"]\n",
        );
        assert_eq!(
            df.global_args,
            vec![ArgDecl {
                name: "BASE".into(),
                default: Some("alpine:3.19".into())
            }]
        );
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].platform.as_deref(), Some("$BUILDPLATFORM"));
        let StepKind::Run { mounts, .. } = &df.stages[0].steps[1].kind else {
            panic!()
        };
        assert_eq!(mounts[0].kind, MountKind::Cache);
        let StepKind::Copy(c) = &df.stages[1].steps[0].kind else {
            panic!()
        };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.chmod.as_deref(), Some("755"));
        assert_eq!(df.stages[1].steps[0].span.line, 6);
        assert_eq!(df.target(None), Some(1));
        assert_eq!(df.target(Some("BUILD")), Some(0));
    }

    #[test]
    fn arg_cycles() {
        let (_, d) = parse(
            "Dockerfile",
            "ARG A=${B}-x\nARG B=$A\nFROM scratch\nARG C=$D\nARG D=${E:-$C}\nARG E\nARG F=$F\n",
        );
        let errs: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("Dockerfile:1:5: error: ARG cycle: A → B → A"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("Dockerfile:4:1: error: ARG cycle: C → D → C"),
            "{errs:?}"
        );
        // Escaped dollars and backward references are fine.
        let (_, d) = parse(
            "Dockerfile",
            "ARG A=1\nARG B=$A\\$C\nARG C=$B\nFROM scratch\n",
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn heredocs() {
        let df = ok(
            "FROM alpine\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<EOT /etc/motd\nhello $USER\nEOT\n",
        );
        let StepKind::Run { heredocs, .. } = &df.stages[0].steps[0].kind else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "echo one\necho two\n");
        let StepKind::Copy(c) = &df.stages[0].steps[1].kind else {
            panic!()
        };
        assert!(matches!(&c.sources[0], CopySource::Heredoc(h) if h.content == "hello $USER\n"));
    }

    #[test]
    fn positioned_errors() {
        let e = errors("FROM alpine\nRUNN echo\n");
        assert!(
            e[0].starts_with("Dockerfile:2:1: error:") && e[0].contains("unknown instruction"),
            "{e:?}"
        );
        let e = errors("FROM alpine\nCOPY --form=x a b\n");
        assert!(
            e[0].contains("COPY does not accept --form") && e[0].contains("did you mean --from?"),
            "{e:?}"
        );
        let e = errors("FROM alpine AS a\nCOPY --from=biuld /x /y\nFROM alpine AS build\n");
        assert!(
            e.iter()
                .any(|x| x
                    .contains("Dockerfile:2:1: error: --from=biuld: no stage is named `biuld`")),
            "{e:?}"
        );
        let e = errors("FROM alpine AS a\nCOPY --from=b /x /y\nFROM alpine AS b\n");
        assert!(
            e.iter().any(|x| x.contains("refers to a later stage")),
            "{e:?}"
        );
        let e = errors("FROM b AS a\nFROM a AS b\n");
        assert!(
            e.iter().any(|x| x.contains("not an earlier stage")),
            "{e:?}"
        );
        let e = errors("FROM alpine\nRUN --mount=type=cache echo\n");
        assert!(e.iter().any(|x| x.contains("needs target=")), "{e:?}");
        let e = errors("FROM alpine\nRUN --network=bridge echo\n");
        assert!(e.iter().any(|x| x.contains("--network must be")), "{e:?}");
        let e = errors("FROM alpine\nENV ONLYKEY\n");
        assert!(
            e.iter().any(|x| x.contains("ENV ONLYKEY needs a value")),
            "{e:?}"
        );
        // An image reference in --from is fine.
        ok("FROM alpine\nCOPY --from=docker.io/library/busybox:1.36 /bin/busybox /bin/\n");
    }

    #[test]
    fn finds_references() {
        assert_eq!(referenced_names("$A-${B:-x}/$C_D"), vec!["A", "B", "C_D"]);
    }
}
