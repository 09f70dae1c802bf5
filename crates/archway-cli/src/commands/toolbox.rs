//! The toolbox commands: `archway` called as `/kaniko/executor`, `docker`, `podman`,
//! `buildah` or `manifest-tool` does what the pipeline asked of that tool with Archway's
//! builder and registry client (see `archway_runner::toolbox` for how a runner serves them).
//!
//! Each tool's command line is translated into [`Action`]s: an `archway` subcommand (run as a
//! child of this binary), or a build. Inside a runner's toolbox sandbox (`$ARCHWAY_TOOLBOX_SOCKET`
//! set) builds go to the runner over its socket; elsewhere `archway build` runs here. Images
//! `docker build` makes without pushing are kept in an image store (an OCI layout per name) for
//! `docker push` and `docker tag`. Credentials are the Docker config file's
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), which every tool's `login`
//! writes, as podman does with docker's file.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use archway_runner::toolbox::{
    self, BuildCall, FRAME_EXIT, FRAME_OUTPUT, IMAGES, SOCKET_ENV, read_frame, store_key,
};

/// The tool `argv0` names, if it is one the toolbox serves.
pub fn tool_name(argv0: &str) -> Option<&'static str> {
    let base = Path::new(argv0).file_name()?.to_str()?;
    toolbox::COMMANDS.iter().copied().find(|c| *c == base)
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `archway ARGS…`.
    Archway(Vec<String>),
    /// A build.
    Build(BuildPlan),
    /// Print this and succeed.
    Say(String),
}

/// A build as a tool asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildPlan {
    pub context: PathBuf,
    pub dockerfile: Option<PathBuf>,
    /// `archway build` flags naming no path.
    pub flags: Vec<String>,
    /// Keep the result in the image store under this name.
    pub store_as: Option<String>,
    pub tar_path: Option<PathBuf>,
}

/// Where a tool's process runs: its working directory and environment.
#[derive(Clone, Debug)]
pub struct Env {
    pub cwd: PathBuf,
    pub vars: std::collections::BTreeMap<String, String>,
}

impl Env {
    fn from_process() -> Env {
        Env {
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            vars: std::env::vars().collect(),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn abs(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.cwd.join(p)
        }
    }

    /// The Docker client config every tool shares.
    pub fn docker_config(&self) -> PathBuf {
        match self.var("DOCKER_CONFIG") {
            Some(d) => Path::new(d).join("config.json"),
            None => Path::new(self.var("HOME").unwrap_or("/root")).join(".docker/config.json"),
        }
    }

    /// The image store: the runner's in a toolbox sandbox, else under the user's data dir.
    pub fn images(&self) -> PathBuf {
        if self.var(SOCKET_ENV).is_some() {
            return PathBuf::from(IMAGES);
        }
        match self.var("XDG_DATA_HOME") {
            Some(d) => Path::new(d).join("archway/images"),
            None => {
                Path::new(self.var("HOME").unwrap_or("/root")).join(".local/share/archway/images")
            }
        }
    }

    fn stored(&self, reference: &str) -> String {
        format!(
            "oci:{}:latest",
            self.images()
                .join(store_key(&normalise(reference)))
                .display()
        )
    }
}

/// `name` as docker spells it fully (`busybox` → `docker.io/library/busybox:latest`), so
/// `docker tag x y` and `docker push y` meet under the same store key.
fn normalise(reference: &str) -> String {
    let r = reference.trim_start_matches("docker://");
    match r.parse::<archway_oci::Reference>() {
        Ok(mut p) => {
            if p.tag.is_none() && p.digest.is_none() {
                p.tag = Some("latest".into());
            }
            p.to_string()
        }
        Err(_) => r.to_owned(),
    }
}

/// Splits `--flag=value` / `--flag value` argument lists.
struct Args<'a> {
    items: &'a [String],
    i: usize,
}

impl<'a> Args<'a> {
    fn new(items: &'a [String]) -> Self {
        Args { items, i: 0 }
    }

    /// The next argument: (name, inline value) for a flag, or a positional one.
    fn next(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let a = self.items.get(self.i)?;
        self.i += 1;
        if a.starts_with("--")
            && let Some((k, v)) = a.split_once('=')
        {
            return Some((k, Some(v)));
        }
        Some((a.as_str(), None))
    }

    /// The value of the flag just read.
    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> anyhow::Result<&'a str> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self
            .items
            .get(self.i)
            .with_context(|| format!("{flag} needs a value"))?;
        self.i += 1;
        Ok(v)
    }

    fn rest(&self) -> &'a [String] {
        &self.items[self.i.min(self.items.len())..]
    }
}

/// Kaniko's executor flags (https://github.com/GoogleContainerTools/kaniko#additional-flags).
pub fn kaniko(args: &[String], env: &Env) -> anyhow::Result<Vec<Action>> {
    let mut it = Args::new(args);
    let mut context = "/workspace/".to_owned();
    let mut dockerfile: Option<String> = None;
    let mut plan = BuildPlan::default();
    let mut destinations = 0;
    let mut no_push = false;
    while let Some((flag, inline)) = it.next() {
        match flag {
            "--context" | "-c" => {
                let v = it.value(flag, inline)?;
                context = match v.split_once("://") {
                    None => v.to_owned(),
                    Some(("dir", p)) => p.to_owned(),
                    Some((scheme, _)) => bail!(
                        "--context {v}: only directory contexts (dir://) are served by Archway's toolbox, not {scheme}://"
                    ),
                };
            }
            "--dockerfile" | "-f" => dockerfile = Some(it.value(flag, inline)?.to_owned()),
            "--destination" | "-d" => {
                destinations += 1;
                plan.flags
                    .extend(["--destination".into(), it.value(flag, inline)?.to_owned()]);
            }
            "--build-arg" | "--target" | "--label" | "--cache-repo" => {
                plan.flags
                    .extend([flag.to_owned(), it.value(flag, inline)?.to_owned()]);
            }
            "--custom-platform" => {
                plan.flags
                    .extend(["--platform".into(), it.value(flag, inline)?.to_owned()]);
            }
            "--registry-mirror" => {
                let v = it.value(flag, inline)?;
                plan.flags.extend([
                    "--registry-mirror".into(),
                    if v.contains('=') {
                        v.to_owned()
                    } else {
                        format!("docker.io={v}")
                    },
                ]);
            }
            "--cache" => {
                let v = inline.unwrap_or("true");
                plan.flags.push(format!("--cache={v}"));
            }
            "--no-push" => {
                if inline.is_none_or(|v| v == "true") {
                    no_push = true;
                    plan.flags.push("--no-push".into());
                }
            }
            "--tar-path" => plan.tar_path = Some(env.abs(it.value(flag, inline)?)),
            "--digest-file"
            | "--image-name-with-digest-file"
            | "--image-name-tag-with-digest-file"
            | "--oci-layout-path" => bail!(
                "{flag} is not supported by Archway's toolbox yet; `archway image inspect --format json IMAGE` gives the digest"
            ),
            // Flags that change how Kaniko works, not what it makes: Archway's builds are
            // always reproducible, snapshot what changed, and clean up.
            "--reproducible"
            | "--single-snapshot"
            | "--use-new-run"
            | "--cleanup"
            | "--compressed-caching"
            | "--skip-unused-stages"
            | "--force"
            | "--ignore-var-run"
            | "--cache-copy-layers"
            | "--cache-run-layers"
            | "--skip-tls-verify"
            | "--skip-tls-verify-pull"
            | "--insecure"
            | "--insecure-pull"
            | "--log-timestamp"
            | "--no-push-cache" => {}
            "--snapshot-mode"
            | "--cache-ttl"
            | "--cache-dir"
            | "--verbosity"
            | "-v"
            | "--log-format"
            | "--push-retry"
            | "--image-fs-extract-retry"
            | "--ignore-path"
            | "--kaniko-dir"
            | "--insecure-registry"
            | "--skip-tls-verify-registry"
            | "--compression"
            | "--compression-level" => {
                it.value(flag, inline)?;
            }
            f if f.starts_with('-') => bail!(
                "Kaniko flag {f} is not supported by Archway's toolbox (see `archway build --help` for what builds can do)"
            ),
            p => bail!("unexpected argument `{p}` (Kaniko takes flags only)"),
        }
    }
    if destinations == 0 && !no_push {
        bail!("you must provide --destination, or use --no-push (as Kaniko says)");
    }
    plan.context = env.abs(&context);
    plan.dockerfile = Some(match dockerfile {
        None => plan.context.join("Dockerfile"),
        // Kaniko: a relative Dockerfile is looked up here, then in the context.
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) if env.cwd.join(&d).exists() => env.cwd.join(d),
        Some(d) => plan.context.join(d),
    });
    Ok(vec![Action::Build(plan)])
}

/// `docker build`, `docker buildx build`, `podman build`, `buildah bud`.
fn build(args: &[String], env: &Env, tool: &str) -> anyhow::Result<Vec<Action>> {
    let mut it = Args::new(args);
    let mut plan = BuildPlan::default();
    let mut tags: Vec<String> = Vec::new();
    let mut push = false;
    let mut context: Option<String> = None;
    while let Some((flag, inline)) = it.next() {
        match flag {
            "-t" | "--tag" => tags.push(it.value(flag, inline)?.to_owned()),
            "-f" | "--file" => plan.dockerfile = Some(env.abs(it.value(flag, inline)?)),
            "--build-arg" | "--target" | "--label" | "--platform" => {
                plan.flags
                    .extend([flag.to_owned(), it.value(flag, inline)?.to_owned()]);
            }
            "--push" => push = inline.is_none_or(|v| v == "true"),
            "--no-cache" => plan.flags.push("--no-cache".into()),
            "-q" | "--quiet" => plan.flags.push("--quiet".into()),
            "--output" | "-o" => {
                let v = it.value(flag, inline)?;
                let kv: Vec<(&str, &str)> = v
                    .split(',')
                    .map(|p| p.split_once('=').unwrap_or((p, "")))
                    .collect();
                let get = |k: &str| kv.iter().find(|(x, _)| *x == k).map(|(_, v)| *v);
                match get("type") {
                    Some("registry") => push = true,
                    Some("image") if get("push") == Some("true") => push = true,
                    Some("image" | "docker") => {}
                    Some("oci") => match get("dest") {
                        Some(d) => plan.tar_path = Some(env.abs(d)),
                        None => bail!("--output {v}: type=oci needs dest=FILE"),
                    },
                    _ => bail!(
                        "--output {v}: Archway's toolbox writes type=registry, type=image, type=docker and type=oci,dest=FILE"
                    ),
                }
            }
            // Builder selection, daemon-side and attestation options: Archway's builder has
            // none of these knobs (provenance and SBOM are not attached).
            "--load" | "--pull" | "--rm" | "--force-rm" | "--layers" | "--no-cache-filter" => {}
            "--progress" | "--builder" | "--network" | "--provenance" | "--sbom"
            | "--cache-from" | "--cache-to" | "--add-host" | "--isolation" | "--format"
            | "--jobs" | "--shm-size" | "--ulimit" | "--memory" | "-m" | "--cpu-shares"
            | "--annotation" | "--tls-verify" | "--storage-driver" | "--userns" => {
                if flag == "--tls-verify" && inline.is_some() {
                    continue;
                }
                it.value(flag, inline)?;
            }
            "--secret" | "--ssh" | "--iidfile" | "--metadata-file" | "--manifest" => {
                bail!("{tool} build {flag} is not supported by Archway's toolbox yet")
            }
            f if f.starts_with('-') => {
                bail!("{tool} build {f} is not supported by Archway's toolbox")
            }
            p => {
                if context.is_some() {
                    bail!("{tool} build takes one context, got `{p}` too");
                }
                context = Some(p.to_owned());
            }
        }
    }
    let Some(context) = context else {
        bail!("{tool} build needs a context directory (e.g. `.`)");
    };
    if context == "-" || context.contains("://") {
        bail!("{tool} build {context}: Archway's toolbox builds directory contexts only");
    }
    plan.context = env.abs(&context);
    let mut out = Vec::new();
    if push {
        if tags.is_empty() {
            bail!("{tool} build --push needs a name: -t REGISTRY/NAME:TAG");
        }
        plan.flags.push("--push".into());
        for t in &tags {
            plan.flags.extend(["--tag".into(), t.clone()]);
        }
    }
    // Kept for `push` and `tag` either way, as docker --load and podman do.
    plan.store_as = tags.first().map(|t| store_key(&normalise(t)));
    out.push(Action::Build(plan));
    if let Some(first) = tags.first() {
        for t in &tags[1..] {
            out.push(Action::Archway(vec![
                "image".into(),
                "copy".into(),
                "--quiet".into(),
                "--all".into(),
                env.stored(first),
                env.stored(t),
            ]));
        }
    }
    Ok(out)
}

fn login(verb: &str, args: &[String], env: &Env) -> Vec<Action> {
    let mut out = vec![verb.to_owned()];
    let mut it = Args::new(args);
    while let Some((flag, inline)) = it.next() {
        match (flag, inline) {
            // podman's spellings.
            ("--tls-verify", Some(v)) => out.push(format!("--tls-verify={v}")),
            ("--get-login" | "--all" | "-a", _) => {}
            ("--authfile", _) => {
                let _ = it.value(flag, inline);
            }
            (f, Some(v)) => out.push(format!("{f}={v}")),
            (f, None) => out.push(f.to_owned()),
        }
    }
    out.extend([
        "--authfile".into(),
        env.docker_config().to_string_lossy().into_owned(),
    ]);
    vec![Action::Archway(out)]
}

fn authfile(env: &Env) -> [String; 2] {
    [
        "--authfile".into(),
        env.docker_config().to_string_lossy().into_owned(),
    ]
}

/// `docker|podman|buildah push SRC [DEST]`.
fn push(args: &[String], env: &Env, tool: &str) -> anyhow::Result<Vec<Action>> {
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (src, dest) = match names.as_slice() {
        [s] => (s.as_str(), s.as_str()),
        [s, d] if tool != "docker" => (s.as_str(), d.as_str()),
        _ => bail!("usage: {tool} push NAME[:TAG]"),
    };
    let dest = dest.trim_start_matches("docker://");
    let stored = env.images().join(store_key(&normalise(src)));
    if !stored.is_dir() {
        bail!("no image {src} here: build it first (`{tool} build -t {src} .`)");
    }
    let mut a = vec![
        "image".into(),
        "copy".into(),
        "--all".into(),
        env.stored(src),
        format!("docker://{dest}"),
    ];
    a.extend(authfile(env));
    Ok(vec![Action::Archway(a)])
}

fn tag(args: &[String], env: &Env, tool: &str) -> anyhow::Result<Vec<Action>> {
    let [src, dests @ ..] = args else {
        bail!("usage: {tool} tag SOURCE TARGET");
    };
    if dests.is_empty() {
        bail!("usage: {tool} tag SOURCE TARGET");
    }
    if !env.images().join(store_key(&normalise(src))).is_dir() {
        bail!("no image {src} here: build or pull it first");
    }
    Ok(dests
        .iter()
        .map(|d| {
            Action::Archway(vec![
                "image".into(),
                "copy".into(),
                "--quiet".into(),
                "--all".into(),
                env.stored(src),
                env.stored(d),
            ])
        })
        .collect())
}

fn pull(args: &[String], env: &Env) -> anyhow::Result<Vec<Action>> {
    let mut it = Args::new(args);
    let mut platform = env.var("ARCHWAY_PLATFORM").map(str::to_owned);
    let mut name = None;
    while let Some((flag, inline)) = it.next() {
        match flag {
            "--platform" => platform = Some(it.value(flag, inline)?.to_owned()),
            "-q" | "--quiet" | "-a" | "--all-tags" => {}
            f if f.starts_with('-') => bail!("pull {f} is not supported by Archway's toolbox"),
            n => name = Some(n.to_owned()),
        }
    }
    let Some(name) = name else {
        bail!("usage: pull NAME[:TAG]");
    };
    let mut a = vec!["image".into(), "copy".into()];
    match platform {
        Some(p) => a.extend(["--platform".into(), p]),
        None => a.push("--all".into()),
    }
    a.extend([
        format!("docker://{}", name.trim_start_matches("docker://")),
        env.stored(&name),
    ]);
    a.extend(authfile(env));
    Ok(vec![Action::Archway(a)])
}

/// `docker manifest …` / `podman manifest …` / `buildah manifest …` → `archway manifest …`.
fn manifest(args: &[String], env: &Env) -> anyhow::Result<Vec<Action>> {
    let Some((verb, rest)) = args.split_first() else {
        bail!("usage: manifest create|add|annotate|inspect|push|rm …");
    };
    let mut a = vec!["manifest".to_owned()];
    let verb = match verb.as_str() {
        "remove" => "remove",
        "exists" => bail!("manifest exists is not supported by Archway's toolbox"),
        v => v,
    };
    a.push(verb.to_owned());
    for r in rest {
        match r.as_str() {
            // docker's `manifest push -p` is `--purge`; `--insecure` and `--tls-verify` pass.
            "-p" if verb == "push" => a.push("--purge".into()),
            "-a" if verb == "create" => a.push("--amend".into()),
            _ => a.push(r.clone()),
        }
    }
    if matches!(verb, "create" | "add" | "inspect" | "push") {
        a.extend(authfile(env));
    }
    Ok(vec![Action::Archway(a)])
}

fn version(tool: &str) -> Vec<Action> {
    vec![Action::Say(format!(
        "{tool}: Archway {} toolbox (builds with Archway's builder, no daemon)",
        env!("CARGO_PKG_VERSION")
    ))]
}

/// docker's global options before the command.
fn docker_globals<'a>(args: &'a [String], env: &mut Env) -> anyhow::Result<&'a [String]> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--config" => {
                let v = args.get(i + 1).context("--config needs a directory")?;
                env.vars.insert(
                    "DOCKER_CONFIG".into(),
                    env.abs(v).to_string_lossy().into_owned(),
                );
                i += 2;
            }
            "-H" | "--host" | "--context" | "-c" | "-l" | "--log-level" | "--tlscacert"
            | "--tlscert" | "--tlskey" => i += 2,
            "-D" | "--debug" | "--tls" | "--tlsverify" => i += 1,
            s if s.starts_with("--config=") => {
                let v = &s["--config=".len()..];
                env.vars.insert(
                    "DOCKER_CONFIG".into(),
                    env.abs(v).to_string_lossy().into_owned(),
                );
                i += 1;
            }
            s if s.starts_with("--") && s.contains('=') => i += 1,
            _ => break,
        }
    }
    Ok(&args[i.min(args.len())..])
}

pub fn docker(args: &[String], env: &mut Env) -> anyhow::Result<Vec<Action>> {
    let args = docker_globals(args, env)?;
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(version("docker"));
    };
    let served = "served: build, buildx build|imagetools, login, logout, push, pull, tag, manifest, version, info";
    match cmd.as_str() {
        "version" | "info" | "--version" | "-v" => Ok(version("docker")),
        "login" | "logout" => Ok(login(cmd, rest, env)),
        "build" => build(rest, env, "docker"),
        "image" | "builder" if rest.first().is_some_and(|s| s == "build") => {
            build(&rest[1..], env, "docker")
        }
        "buildx" => buildx(rest, env),
        "image" if rest.first().is_some_and(|s| s == "push") => push(&rest[1..], env, "docker"),
        "image" if rest.first().is_some_and(|s| s == "tag") => tag(&rest[1..], env, "docker"),
        "push" => push(rest, env, "docker"),
        "tag" => tag(rest, env, "docker"),
        "pull" => pull(rest, env),
        "manifest" => manifest(rest, env),
        "run" | "exec" | "create" | "start" => bail!(
            "docker {cmd} is not served by Archway's toolbox: to run a command in an image, give a job `image: IMAGE` (it runs there, on its platform)"
        ),
        other => bail!("docker {other} is not served by Archway's toolbox ({served})"),
    }
}

fn buildx(args: &[String], env: &Env) -> anyhow::Result<Vec<Action>> {
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(version("docker buildx"));
    };
    match cmd.as_str() {
        "build" | "b" => build(rest, env, "docker buildx"),
        "create" | "use" | "rm" | "stop" | "inspect" | "ls" | "prune" | "du" => {
            Ok(vec![Action::Say(format!(
                "docker buildx {cmd}: not needed, Archway's builder builds every platform (qemu for the emulated ones)"
            ))])
        }
        "version" => Ok(version("docker buildx")),
        "imagetools" => {
            let Some((sub, rest)) = rest.split_first() else {
                bail!("usage: docker buildx imagetools create|inspect");
            };
            match sub.as_str() {
                "inspect" => {
                    let mut a = vec!["manifest".into(), "inspect".into()];
                    a.extend(rest.iter().filter(|r| !r.starts_with('-')).cloned());
                    a.extend(authfile(env));
                    Ok(vec![Action::Archway(a)])
                }
                "create" => {
                    let mut it = Args::new(rest);
                    let mut tags = Vec::new();
                    let mut sources = Vec::new();
                    while let Some((flag, inline)) = it.next() {
                        match flag {
                            "-t" | "--tag" => tags.push(it.value(flag, inline)?.to_owned()),
                            "--dry-run" | "--append" => {
                                bail!("imagetools create {flag} is not supported")
                            }
                            f if f.starts_with('-') => {
                                it.value(f, inline)?;
                            }
                            s => sources.push(s.to_owned()),
                        }
                    }
                    let Some(first) = tags.first() else {
                        bail!("imagetools create needs -t NAME");
                    };
                    let mut create = vec![
                        "manifest".into(),
                        "create".into(),
                        "--amend".into(),
                        "--all".into(),
                        first.clone(),
                    ];
                    create.extend(sources);
                    create.extend(authfile(env));
                    let mut out = vec![Action::Archway(create)];
                    for t in &tags {
                        let mut p = vec![
                            "manifest".into(),
                            "push".into(),
                            first.clone(),
                            format!("docker://{t}"),
                        ];
                        p.extend(authfile(env));
                        out.push(Action::Archway(p));
                    }
                    Ok(out)
                }
                s => bail!("docker buildx imagetools {s} is not served by Archway's toolbox"),
            }
        }
        other => bail!(
            "docker buildx {other} is not served by Archway's toolbox (build, imagetools, and no-op create/use)"
        ),
    }
}

pub fn podman(args: &[String], env: &Env, tool: &str) -> anyhow::Result<Vec<Action>> {
    // Global options.
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--log-level" | "--storage-driver" | "--root" | "--runroot" | "--cgroup-manager" => {
                i += 2
            }
            s if s.starts_with("--") && (s.contains('=') || s == "--debug") => i += 1,
            _ => break,
        }
    }
    let args = &args[i.min(args.len())..];
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(version(tool));
    };
    match cmd.as_str() {
        "version" | "info" | "--version" => Ok(version(tool)),
        "login" | "logout" => Ok(login(cmd, rest, env)),
        "build" | "bud" => build(rest, env, tool),
        "push" => push(rest, env, tool),
        "tag" => tag(rest, env, tool),
        "pull" => pull(rest, env),
        "manifest" => manifest(rest, env),
        other => bail!(
            "{tool} {other} is not served by Archway's toolbox (served: build, bud, login, logout, push, pull, tag, manifest, version)"
        ),
    }
}

/// manifest-tool (https://github.com/estesp/manifest-tool): `push from-args`, `push
/// from-spec` is not served, `inspect`.
pub fn manifest_tool(args: &[String], env: &Env) -> anyhow::Result<Vec<Action>> {
    let mut it = Args::new(args);
    let mut creds: Option<(String, String)> = None;
    let mut user = None;
    let mut pass = None;
    let mut env = env.clone();
    let mut cmd = Vec::new();
    while let Some((flag, inline)) = it.next() {
        match flag {
            "--username" => user = Some(it.value(flag, inline)?.to_owned()),
            "--password" => pass = Some(it.value(flag, inline)?.to_owned()),
            "--docker-cfg" => {
                let d = it.value(flag, inline)?;
                env.vars.insert("DOCKER_CONFIG".into(), d.to_owned());
            }
            "--insecure" | "--debug" | "-d" | "--plain-http" => {}
            _ => {
                cmd.push(flag.to_owned());
                cmd.extend(it.rest().iter().cloned());
                break;
            }
        }
    }
    if let (Some(u), Some(p)) = (user, pass) {
        creds = Some((u, p));
    }
    let auth: Vec<String> = match &creds {
        Some((u, p)) => vec!["--creds".into(), format!("{u}:{p}")],
        None => authfile(&env).to_vec(),
    };
    match cmd.first().map(String::as_str) {
        Some("inspect") => {
            let mut a = vec!["manifest".into(), "inspect".into()];
            a.extend(cmd[1..].iter().filter(|r| !r.starts_with('-')).cloned());
            a.extend(auth);
            Ok(vec![Action::Archway(a)])
        }
        Some("push") if cmd.get(1).is_some_and(|s| s == "from-args") => {
            let mut it = Args::new(&cmd[2..]);
            let (mut platforms, mut template, mut target, mut tags) =
                (None, None, None, Vec::new());
            let mut ignore_missing = false;
            while let Some((flag, inline)) = it.next() {
                match flag {
                    "--platforms" => platforms = Some(it.value(flag, inline)?.to_owned()),
                    "--template" => template = Some(it.value(flag, inline)?.to_owned()),
                    "--target" => target = Some(it.value(flag, inline)?.to_owned()),
                    "--tags" => tags.extend(it.value(flag, inline)?.split(',').map(str::to_owned)),
                    "--ignore-missing" => ignore_missing = true,
                    "--type" => {
                        it.value(flag, inline)?;
                    }
                    f => bail!("manifest-tool push from-args {f} is not supported"),
                }
            }
            let (Some(platforms), Some(template), Some(target)) = (platforms, template, target)
            else {
                bail!("manifest-tool push from-args needs --platforms, --template and --target");
            };
            if ignore_missing {
                bail!("--ignore-missing is not supported by Archway's toolbox");
            }
            let mut create = vec![
                "manifest".into(),
                "create".into(),
                "--amend".into(),
                target.clone(),
            ];
            for p in platforms.split(',') {
                let mut parts = p.trim().split('/');
                let os = parts.next().unwrap_or_default();
                let arch = parts.next().unwrap_or_default();
                let variant = parts.next().unwrap_or_default();
                create.push(
                    template
                        .replace("OS", os)
                        .replace("ARCH", arch)
                        .replace("VARIANT", variant),
                );
            }
            create.extend(auth.iter().cloned());
            let mut out = vec![Action::Archway(create)];
            let repo = target
                .rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map_or(target.as_str(), |(r, _)| r);
            let dests: Vec<String> = std::iter::once(target.clone())
                .chain(tags.iter().map(|t| format!("{repo}:{t}")))
                .collect();
            for d in dests {
                let mut p = vec![
                    "manifest".into(),
                    "push".into(),
                    target.clone(),
                    format!("docker://{d}"),
                ];
                p.extend(auth.iter().cloned());
                out.push(Action::Archway(p));
            }
            Ok(out)
        }
        Some("push") => bail!(
            "manifest-tool push {}: Archway's toolbox serves `push from-args` (from-spec: use `archway manifest create/annotate/push`)",
            cmd.get(1).map(String::as_str).unwrap_or("")
        ),
        Some("--version" | "-v" | "version") | None => Ok(version("manifest-tool")),
        Some(other) => bail!("manifest-tool {other} is not served by Archway's toolbox"),
    }
}

/// The actions for `tool ARGS` (pure: tests call this).
pub fn translate(tool: &str, args: &[String], env: &mut Env) -> anyhow::Result<Vec<Action>> {
    match tool {
        "executor" => kaniko(args, env),
        "docker" => docker(args, env),
        "podman" | "buildah" => podman(args, env, tool),
        "manifest-tool" => manifest_tool(args, env),
        other => bail!("{other} is not a toolbox command"),
    }
}

/// Runs `archway ARGS` and returns its exit status.
fn archway(args: &[String]) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the archway binary")?;
    let status = Command::new(exe)
        .arg0("archway")
        .args(args)
        .status()
        .context("running archway")?;
    Ok(status.code().unwrap_or(1))
}

fn run_build(plan: &BuildPlan, env: &Env) -> anyhow::Result<i32> {
    let Some(sock) = env.var(SOCKET_ENV) else {
        // Outside a runner: build here.
        let mut a = vec![
            "build".to_owned(),
            "--context".into(),
            plan.context.to_string_lossy().into_owned(),
        ];
        if let Some(f) = &plan.dockerfile {
            a.extend(["--file".into(), f.to_string_lossy().into_owned()]);
        }
        if let Some(p) = env.var("ARCHWAY_PLATFORM")
            && !plan.flags.iter().any(|f| f == "--platform")
        {
            a.extend(["--platform".into(), p.to_owned()]);
        }
        a.extend(plan.flags.iter().cloned());
        if let Some(k) = &plan.store_as {
            let dir = env.images();
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            a.extend([
                "--output".into(),
                format!("oci:{}:latest", dir.join(k).display()),
            ]);
        }
        if let Some(t) = &plan.tar_path {
            a.extend(["--output".into(), format!("tar:{}", t.display())]);
        }
        a.extend(authfile(env));
        return archway(&a);
    };
    let config = env.docker_config();
    let docker_config = match std::fs::read_to_string(&config) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("reading {}: {e}", config.display()),
    };
    let call = BuildCall {
        context: plan.context.to_string_lossy().into_owned(),
        dockerfile: plan
            .dockerfile
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        flags: plan.flags.clone(),
        store_as: plan.store_as.clone(),
        tar_path: plan
            .tar_path
            .as_ref()
            .map(|t| t.to_string_lossy().into_owned()),
        docker_config,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to the runner's toolbox at {sock}"))?;
    let mut line = serde_json::to_vec(&call)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut out = std::io::stderr().lock();
    loop {
        match read_frame(&mut conn)? {
            Some((FRAME_OUTPUT, data)) => {
                out.write_all(&data)?;
            }
            Some((FRAME_EXIT, code)) => {
                return Ok(std::str::from_utf8(&code)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1));
            }
            Some(_) => bail!("the runner's toolbox sent an unknown frame"),
            None => bail!("the runner's toolbox closed the connection before the build ended"),
        }
    }
}

/// `archway` called as a toolbox command.
pub fn main(tool: &str, args: &[String]) -> ExitCode {
    let mut env = Env::from_process();
    let result = translate(tool, args, &mut env).and_then(|actions| {
        for a in actions {
            let code = match a {
                Action::Say(s) => {
                    println!("{s}");
                    0
                }
                Action::Archway(args) => archway(&args)?,
                Action::Build(plan) => run_build(&plan, &env)?,
            };
            if code != 0 {
                return Ok(code);
            }
        }
        Ok(0)
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        Err(e) => {
            eprintln!("{tool}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            cwd: PathBuf::from("/builds/group/app"),
            vars: [
                ("HOME", "/root"),
                (SOCKET_ENV, "/archway-toolbox/run/toolbox.sock"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_kaniko_seed_command_becomes_a_build() {
        let mut e = env();
        e.vars
            .insert("DOCKER_CONFIG".into(), "/kaniko/.docker".into());
        let a = translate(
            "executor",
            &s(&[
                "--context",
                "/builds/group/app",
                "--dockerfile",
                "/builds/group/app/Dockerfile",
                "--destination",
                "reg:5000/group/app:abc-arm64",
            ]),
            &mut e,
        )
        .unwrap();
        assert_eq!(
            a,
            vec![Action::Build(BuildPlan {
                context: "/builds/group/app".into(),
                dockerfile: Some("/builds/group/app/Dockerfile".into()),
                flags: s(&["--destination", "reg:5000/group/app:abc-arm64"]),
                store_as: None,
                tar_path: None,
            })]
        );
        assert_eq!(e.docker_config(), Path::new("/kaniko/.docker/config.json"));
        // Kaniko's rule: a destination, or --no-push.
        assert!(kaniko(&s(&["--context", "dir:///w"]), &env()).is_err());
        assert!(kaniko(&s(&["--context=dir:///w", "--no-push"]), &env()).is_ok());
        assert!(kaniko(&s(&["--context", "s3://b/c.tgz", "--no-push"]), &env()).is_err());
        let e = kaniko(&s(&["--no-push", "--frobnicate"]), &env()).unwrap_err();
        assert!(e.to_string().contains("--frobnicate"), "{e}");
        // Flags that do not change the result are accepted.
        assert!(
            kaniko(
                &s(&[
                    "--no-push",
                    "--snapshot-mode=redo",
                    "--cache=true",
                    "--verbosity",
                    "debug"
                ]),
                &env()
            )
            .is_ok()
        );
    }

    #[test]
    fn the_dind_seed_commands() {
        let mut e = env();
        let a = translate(
            "docker",
            &s(&["buildx", "create", "--use", "--driver-opt", "network=host"]),
            &mut e,
        )
        .unwrap();
        assert!(matches!(&a[..], [Action::Say(_)]));
        let a = translate(
            "docker",
            &s(&["login", "-u", "u", "reg:5000", "--password-stdin"]),
            &mut e,
        )
        .unwrap();
        assert_eq!(
            a,
            vec![Action::Archway(s(&[
                "login",
                "-u",
                "u",
                "reg:5000",
                "--password-stdin",
                "--authfile",
                "/root/.docker/config.json"
            ]))]
        );
        let a = translate(
            "docker",
            &s(&[
                "buildx",
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "--provenance",
                "false",
                "-t",
                "reg:5000/g/app",
                "resources/python-code",
                "--push",
            ]),
            &mut e,
        )
        .unwrap();
        let Action::Build(plan) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(
            plan.context,
            Path::new("/builds/group/app/resources/python-code")
        );
        assert_eq!(
            plan.flags,
            s(&[
                "--platform",
                "linux/amd64,linux/arm64",
                "--push",
                "--tag",
                "reg:5000/g/app"
            ])
        );
        archway_runner::toolbox::check_flags(&plan.flags).unwrap();
    }

    #[test]
    fn docker_build_then_tag_and_push_meet_in_the_store() {
        let mut e = env();
        let a = translate(
            "docker",
            &s(&["build", "-t", "reg/app:1", "-t", "reg/app:latest", "."]),
            &mut e,
        )
        .unwrap();
        let Action::Build(plan) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(
            plan.store_as.as_deref(),
            Some(store_key(&normalise("reg/app:1")).as_str())
        );
        assert!(matches!(&a[1], Action::Archway(c) if c[1] == "copy"));
        // Same name spelled two ways, same key.
        assert_eq!(
            normalise("busybox"),
            normalise("docker.io/library/busybox:latest")
        );
        // Pushing what was never built is refused with the reason.
        let err = translate("docker", &s(&["push", "reg/nothing:1"]), &mut e).unwrap_err();
        assert!(err.to_string().contains("build it first"), "{err}");
        assert!(translate("docker", &s(&["run", "busybox"]), &mut e).is_err());
        assert!(translate("docker", &s(&["build"]), &mut e).is_err());
    }

    #[test]
    fn manifests_from_docker_podman_and_manifest_tool() {
        let mut e = env();
        let a = translate(
            "docker",
            &s(&[
                "manifest",
                "annotate",
                "--arch",
                "arm64",
                "reg/app",
                "reg/app:arm64",
            ]),
            &mut e,
        )
        .unwrap();
        assert_eq!(
            a,
            vec![Action::Archway(s(&[
                "manifest",
                "annotate",
                "--arch",
                "arm64",
                "reg/app",
                "reg/app:arm64"
            ]))]
        );
        let a = translate(
            "podman",
            &s(&["manifest", "push", "reg/app:1", "docker://reg/app:1"]),
            &mut e,
        )
        .unwrap();
        assert!(
            matches!(&a[0], Action::Archway(c) if c.ends_with(&s(&["--authfile", "/root/.docker/config.json"])))
        );
        let a = translate(
            "manifest-tool",
            &s(&[
                "--username",
                "u",
                "--password",
                "p",
                "push",
                "from-args",
                "--platforms",
                "linux/amd64,linux/arm64",
                "--template",
                "reg/app:1-ARCH",
                "--target",
                "reg/app:1",
                "--tags",
                "latest",
            ]),
            &mut e,
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[0],
            Action::Archway(s(&[
                "manifest",
                "create",
                "--amend",
                "reg/app:1",
                "reg/app:1-amd64",
                "reg/app:1-arm64",
                "--creds",
                "u:p"
            ]))
        );
        assert!(
            matches!(&a[2], Action::Archway(c) if c.contains(&"docker://reg/app:latest".to_owned()))
        );
    }

    #[test]
    fn names_dispatch_on_the_basename() {
        assert_eq!(tool_name("/kaniko/executor"), Some("executor"));
        assert_eq!(tool_name("docker"), Some("docker"));
        assert_eq!(tool_name("/usr/local/bin/archway"), None);
    }
}
