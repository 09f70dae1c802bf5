//! `archway dev`: dev environments from a devfile.yaml or devcontainer.json, as rootless
//! sandboxes on this machine.
//!
//! * `up` loads the file (the `archway-devfile` front end), pulls or builds each container's
//!   image for the platform, and starts each container as a long-lived sandbox under its own
//!   detached supervisor process ([`supervise`]); all of them on the host's network, so they
//!   reach each other on `localhost` and endpoints are host ports. Running it again restarts
//!   only the containers whose definition (fingerprint), image or platform changed.
//! * `exec`, `shell` enter a running container ([`archway_sandbox::Sandbox::exec`]); `ls`
//!   reports what runs (checked against the live processes); `stop` and `down` end it.
//!
//! State lives under the repository's `.archway/dev/<name>/` ([`state`]); [`plan`] turns the
//! model into launches; [`exec`] runs commands.

mod exec;
mod plan;
mod state;
mod supervise;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use archway_build::{ImageStore, PulledImage, RegistrySource};
use archway_client::Location;
use archway_devfile::{Environment, Filesystem, ImageSource, LoadError};
use archway_oci::Platform;
use archway_sandbox::{Emulation, ProcessId, Sandbox};
use clap::{Args, Subcommand};
use serde_json::json;

use self::exec::{Invocation, Runner};
use self::state::{ContainerDir, ContainerState, EnvDir, EnvRecord, ExitRecord, write_json};
use super::common::{Format, RegistryArgs, block_on, print_json};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start the dev environment (or bring it up to date with the file).
    ///
    /// Reads devfile.yaml (schema 2.0-2.3) or .devcontainer/devcontainer.json, pulls (or
    /// builds) every container's image for the platform — another architecture runs
    /// through qemu-user — and starts each container as a rootless sandbox that keeps
    /// running after this command returns. The containers share the host's network: they
    /// reach each other on localhost, and endpoints are ports of this machine. The
    /// repository is mounted at $PROJECT_SOURCE (/projects/<name> for a devfile, the
    /// workspaceFolder for a devcontainer.json); postStart (and postCreate) commands run.
    ///
    /// Running it again restarts only the containers whose definition, image or platform
    /// changed, and starts those that stopped or died.
    ///
    /// Examples:
    ///   archway dev up
    ///   archway dev up --platform linux/arm64          # an arm64 environment, through qemu
    ///   archway dev up -f .devcontainer/devcontainer.json --name web
    ///   archway dev up --registry-mirror docker.io=127.0.0.1:5000/hub
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Run a command in a running container: a command the file defines, or any command line.
    ///
    /// With an id, runs that devfile command (exec: its command line in its container,
    /// working directory and environment; composite: its commands in order or in
    /// parallel). After `--`, runs the command line in the tools container (or -c NAME) in
    /// the project's directory. Gets a terminal when stdin is one.
    ///
    /// Examples:
    ///   archway dev exec build                         # the devfile's `build` command
    ///   archway dev exec -- make test
    ///   archway dev exec -c db -- sh -c 'echo $PORT'
    ///   archway dev exec -e DEBUG=1 -w /tmp -- env
    #[command(verbatim_doc_comment)]
    Exec(ExecArgs),
    /// Open a shell (bash if the image has it, else sh) in the tools container.
    ///
    /// Examples:
    ///   archway dev shell
    ///   archway dev shell -c db
    #[command(verbatim_doc_comment)]
    Shell(ShellArgs),
    /// List this repository's dev environments and the state of their containers.
    ///
    /// States are checked against the running processes: a container whose process died
    /// (or a machine that restarted) shows as exited or stopped, never as running.
    ///
    /// Examples:
    ///   archway dev ls
    ///   archway dev ls --format json
    #[command(verbatim_doc_comment)]
    Ls(LsArgs),
    /// Stop the containers (preStop commands first); state and volumes are kept.
    ///
    /// Examples:
    ///   archway dev stop
    ///   archway dev stop --name web --time 2s
    #[command(verbatim_doc_comment)]
    Stop(StopArgs),
    /// Stop the containers and remove the environment's state (persistent volumes are
    /// kept unless --volumes).
    ///
    /// Examples:
    ///   archway dev down
    ///   archway dev down --volumes
    #[command(verbatim_doc_comment)]
    Down(DownArgs),
    /// Keeps one container running (started by `dev up`, detached).
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
}

/// Which environment.
#[derive(Debug, Args, Clone)]
pub struct Select {
    /// The devfile or devcontainer.json, relative to the repository (default: the first of
    /// devfile.yaml, .devfile.yaml, devfile.yml, .devcontainer/devcontainer.json,
    /// .devcontainer.json).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The environment's name (default: the file's name, else the repository directory's;
    /// with one environment in the repository, that one).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    select: Select,
    /// The platform of every container (default: this machine's, or the one the environment
    /// was started with); another architecture runs through qemu-user.
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Pull images of a registry from a mirror first (repeatable), `REGISTRY=HOST[/PREFIX]`,
    /// e.g. `docker.io=127.0.0.1:5000/hub` (default: the mirrors the environment was
    /// started with).
    #[arg(
        long = "registry-mirror",
        value_name = "REGISTRY=HOST[/PREFIX]",
        env = "ARCHWAY_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    registry_mirrors: Vec<archway_client::mirror::Mirror>,
    /// How long to wait for each container to run and its endpoints to listen.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m", value_name = "DURATION")]
    timeout: Duration,
    /// OCI runtime: crun, runc or a path (default: chosen by `archway doctor`'s rules).
    #[arg(long, env = "ARCHWAY_RUNTIME")]
    runtime: Option<String>,
    /// Local store for images and unpacked root filesystems (default: ~/.cache/archway/build).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    select: Select,
    /// A command the file defines (`archway dev exec` with no argument lists them).
    #[arg(value_name = "COMMAND-ID")]
    id: Option<String>,
    /// The command line to run (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    argv: Vec<String>,
    /// The container for `-- COMMAND` (default: the tools container).
    #[arg(short = 'c', long, value_name = "NAME")]
    container: Option<String>,
    /// Environment variable for the command (repeatable), KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory (default: the project's directory in the container).
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as this user (`name`, `uid`, `uid:gid`).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// No terminal, even when stdin is one.
    #[arg(short = 'T', long)]
    no_tty: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    select: Select,
    /// The container (default: the tools container).
    #[arg(short = 'c', long, value_name = "NAME")]
    container: Option<String>,
    /// Run as this user (`name`, `uid`, `uid:gid`).
    #[arg(short = 'u', long)]
    user: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    select: Select,
    /// How long a container may take to exit after SIGTERM before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    time: Duration,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    select: Select,
    /// Remove the persistent volumes too.
    #[arg(long)]
    volumes: bool,
    /// How long a container may take to exit after SIGTERM before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    time: Duration,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    env_dir: PathBuf,
    container: String,
}

pub fn run(cmd: DevCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DevCommand::Up(a) => up(a),
        DevCommand::Exec(a) => exec_cmd(a),
        DevCommand::Shell(a) => shell(a),
        DevCommand::Ls(a) => ls(a),
        DevCommand::Stop(a) => stop(a),
        DevCommand::Down(a) => down(a),
        DevCommand::Supervise(a) => supervise::supervise(&ContainerDir {
            dir: a.env_dir.join("containers").join(&a.container),
        }),
    }
}

/// The repository: git's top level, else the current directory.
fn project_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let top = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let root = top.unwrap_or(cwd);
    std::fs::canonicalize(&root).with_context(|| format!("resolving {}", root.display()))
}

/// Loads the file, printing warnings; errors are printed and refused.
fn load(root: &Path, file: Option<&Path>) -> anyhow::Result<archway_devfile::Loaded> {
    match archway_devfile::load(root, file, &Filesystem) {
        Ok(l) => {
            for d in &l.diagnostics {
                eprintln!("{d}");
            }
            Ok(l)
        }
        Err(LoadError::Invalid { file, diagnostics }) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            let n = diagnostics.iter().filter(|d| d.is_error()).count();
            bail!(
                "{file} has {n} error{}; nothing was started (fix {} and run `archway dev up` again)",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" }
            )
        }
        Err(e @ LoadError::NotFound { .. }) => Err(anyhow::Error::new(e).context(
            "no dev environment file: write a devfile.yaml (see `archway dev up --help` and the README's \"Dev environments\") or pass one with -f",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A valid environment name (a directory under `.archway/dev/`).
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.starts_with('_')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!(
            "`{name}` is not a valid environment name: use letters, digits, `-`, `_` and `.`, not first"
        );
    }
    Ok(())
}

/// Finds the environment a command (other than `up`) acts on.
fn select(s: &Select) -> anyhow::Result<(PathBuf, EnvDir, EnvRecord)> {
    let root = project_root()?;
    let names = state::environments(&root);
    let name = match (&s.name, names.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, []) => bail!(
            "no dev environment in {}: start one with `archway dev up`",
            root.display()
        ),
        (None, [only]) if s.file.is_none() => only.clone(),
        (None, _) => {
            let from_file = archway_devfile::load(&root, s.file.as_deref(), &Filesystem)
                .ok()
                .map(|l| l.env.name);
            match from_file {
                Some(n) if names.contains(&n) => n,
                _ => bail!(
                    "several dev environments here ({}): pick one with --name",
                    names.join(", ")
                ),
            }
        }
    };
    check_name(&name)?;
    let envdir = EnvDir::new(&root, &name);
    let record = envdir.record().with_context(|| {
        if names.is_empty() {
            format!("no dev environment `{name}` here: start it with `archway dev up`")
        } else {
            format!(
                "no dev environment `{name}` here (there is {}); start it with `archway dev up`",
                names.join(", ")
            )
        }
    })?;
    Ok((root, envdir, record))
}

/// `--name NAME ` when the user must repeat it for later commands.
fn name_flag(record: &EnvRecord, root: &Path) -> String {
    if state::environments(root).len() > 1 {
        format!(" --name {}", record.name)
    } else {
        String::new()
    }
}

/// Whether anything could listen on `port`; why not.
fn port_problem(port: u16) -> Option<String> {
    for addr in ["0.0.0.0", "127.0.0.1"] {
        match std::net::TcpListener::bind((addr, port)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Some(format!(
                    "port {port} is already in use on this host (find what listens with `ss -ltnp 'sport = :{port}'`)"
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Some(format!(
                    "port {port} needs privileges to listen on (below net.ipv4.ip_unprivileged_port_start); use a port above 1023"
                ));
            }
            Err(e) => return Some(format!("port {port} cannot be listened on: {e}")),
        }
    }
    None
}

fn listens(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// An image, ready for a container.
struct ReadyImage {
    reference: String,
    digest: String,
    image: PulledImage,
    rootfs: PathBuf,
}

fn has_shell(rootfs: &Path) -> bool {
    ["bin/sh", "usr/bin/sh"]
        .iter()
        .any(|p| std::fs::symlink_metadata(rootfs.join(p)).is_ok())
}

fn has_bash(rootfs: &Path) -> bool {
    ["bin/bash", "usr/bin/bash"]
        .iter()
        .any(|p| std::fs::symlink_metadata(rootfs.join(p)).is_ok())
}

/// Builds an `image` component for `platform` with the builder, as `archway build` does.
async fn build_image(
    images: &ImageStore,
    source: Arc<RegistrySource>,
    env: &Environment,
    name: &str,
    root: &Path,
    platform: &Platform,
    runtime: Option<&str>,
) -> anyhow::Result<ReadyImage> {
    let Some(b) = env.images.iter().find(|i| i.name == name) else {
        bail!("no image build `{name}` in the file");
    };
    if b.root_required {
        eprintln!(
            "warning: image `{name}` says it needs root to build; building it rootless anyway"
        );
    }
    let dockerfile = root.join(&b.dockerfile);
    let text = std::fs::read_to_string(&dockerfile)
        .with_context(|| format!("reading {} (image `{name}`)", dockerfile.display()))?;
    let (df, diags) = archway_build::dockerfile::parse(&b.dockerfile, &text);
    for d in &diags {
        eprintln!("{d}");
    }
    let Some(df) = df.filter(|_| !diags.iter().any(|d| d.is_error())) else {
        bail!("{} has errors; image `{name}` was not built", b.dockerfile);
    };
    let req = archway_build::BuildRequest {
        context: root.join(&b.context),
        dockerfile: df,
        platforms: vec![platform.clone()],
        build_args: b
            .args
            .iter()
            .map(|a| (a.name.clone(), a.value.to_string()))
            .collect(),
        target: b.target.clone(),
        labels: BTreeMap::new(),
        no_cache: false,
        secrets: BTreeMap::new(),
        source_date_epoch: 0,
    };
    let progress: archway_build::ProgressSink = Arc::new(|e| match e {
        archway_build::BuildEvent::Warning(w) => eprintln!("warning: {w}"),
        archway_build::BuildEvent::Step {
            platform,
            stage,
            text,
            cached,
        } => eprintln!(
            "[{platform} {stage}]{} {text}",
            if cached { " CACHED" } else { "" }
        ),
        archway_build::BuildEvent::Output { platform, line } => eprintln!("[{platform}] {line}"),
        _ => {}
    });
    let mut builder = archway_build::Builder::new(images.store().clone(), source)
        .with_progress(progress)
        .with_unpacking(super::sandbox::unpacking());
    if let Ok(r) = super::sandbox::runner(runtime, None) {
        builder = builder.with_runner(r);
    }
    let result = match builder.build(&req).await {
        Ok(r) => r,
        Err(archway_build::BuildError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            bail!("{} has errors; image `{name}` was not built", b.dockerfile);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("building image `{name}`"))),
    };
    let from = Location::Layout {
        path: result.layout.clone(),
        tag: Some(result.tag.clone()),
    };
    let image = images.pull(&from, platform).await?;
    let rootfs = images.unpack(&image).await?;
    Ok(ReadyImage {
        reference: format!("build:{name}"),
        digest: image.manifest.digest.to_string(),
        image,
        rootfs,
    })
}

/// `archway dev up`
fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let root = project_root()?;
    let loaded = load(&root, a.select.file.as_deref())?;
    let env = loaded.env;
    let name = a.select.name.clone().unwrap_or_else(|| env.name.clone());
    check_name(&name)?;
    let envdir = EnvDir::new(&root, &name);
    let previous = envdir.record();
    let platform: Platform = match (&a.platform, &previous) {
        (Some(p), _) => p.parse().with_context(|| format!("--platform {p}"))?,
        (None, Some(r)) => r.platform.parse()?,
        (None, None) => Platform::host(),
    };
    let runtime = a
        .runtime
        .clone()
        .or_else(|| previous.as_ref().and_then(|r| r.runtime.clone()));
    let sandbox = Sandbox::detect(runtime.as_deref())
        .context("dev environments need an OCI runtime (see `archway doctor`)")?;
    sandbox.check_platform(&platform)?;
    let host = Platform::host();
    let emulation = archway_sandbox::binfmt::emulation(
        Path::new(archway_sandbox::binfmt::BINFMT_DIR),
        &host,
        &platform,
    );
    if env.containers.is_empty() {
        bail!("{} defines no containers: nothing to start", loaded.file);
    }

    // State directory (never committed).
    let dot = root.join(".archway");
    std::fs::create_dir_all(envdir.dir.join("containers"))
        .with_context(|| format!("creating {}", envdir.dir.display()))?;
    let ignore = dot.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# Archway's local state (pipeline runs, dev environments)\n*\n",
        )
        .with_context(|| format!("writing {}", ignore.display()))?;
    }

    // Images, once per distinct source.
    let registries: Vec<String> = env
        .containers
        .iter()
        .filter_map(|c| match &c.image {
            ImageSource::Pull(r) => r.parse::<archway_oci::Reference>().ok().map(|r| r.registry),
            ImageSource::Build(_) => None,
        })
        .collect();
    let client = a
        .registry
        .client(&registries.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mirrors: Vec<archway_client::mirror::Mirror> = if a.registry_mirrors.is_empty() {
        previous
            .iter()
            .flat_map(|p| &p.registry_mirrors)
            .filter_map(|m| m.parse().ok())
            .collect()
    } else {
        a.registry_mirrors.clone()
    };
    let source = Arc::new(RegistrySource::new(client).with_mirrors(mirrors.clone()));
    let store = super::sandbox::open_store(a.cache_dir.as_deref())?;
    let images =
        ImageStore::new(store.clone(), source.clone()).with_unpacking(super::sandbox::unpacking());
    let lease = images.lease()?;
    let mut ready: BTreeMap<String, ReadyImage> = BTreeMap::new();
    for c in &env.containers {
        let key = plan::image_name(c);
        if ready.contains_key(&key) {
            continue;
        }
        let r = match &c.image {
            ImageSource::Pull(reference) => {
                eprintln!(
                    "pulling {reference} ({platform}) for container `{}`",
                    c.name
                );
                let location = Location::parse(reference).with_context(|| {
                    format!(
                        "container `{}`: image `{reference}` is not a valid reference",
                        c.name
                    )
                })?;
                block_on(async {
                    let image = images.pull(&location, &platform).await?;
                    let rootfs = images.unpack(&image).await?;
                    anyhow::Ok(ReadyImage {
                        reference: reference.clone(),
                        digest: image.manifest.digest.to_string(),
                        image,
                        rootfs,
                    })
                })?
                .with_context(|| {
                    format!(
                        "pulling image `{reference}` ({platform}) for container `{}`: check the name and tag, and that this machine can reach its registry (or give --registry-mirror)",
                        c.name
                    )
                })?
            }
            ImageSource::Build(b) => {
                eprintln!(
                    "building image `{b}` ({platform}) for container `{}`",
                    c.name
                );
                block_on(build_image(
                    &images,
                    source.clone(),
                    &env,
                    b,
                    &root,
                    &platform,
                    runtime.as_deref(),
                ))??
            }
        };
        ready.insert(key, r);
    }

    // What each container runs.
    let env_id = plan::env_id(&root, &name);
    let host_env = |k: &str| std::env::var(k).ok();
    let ctx = plan::Context {
        project: &root,
        env_id: env_id.clone(),
        local_env: &host_env,
    };
    let volume_dir = |v: &str| envdir.volume(&plan::volume_dir_name(v, &ctx));
    let inputs = plan::LaunchInputs {
        platform: platform.to_string(),
        store: store.root().to_owned(),
        runtime: runtime.clone(),
        volume_dir: &volume_dir,
    };
    let mut launches = BTreeMap::new();
    for c in &env.containers {
        let img = &ready[&plan::image_name(c)];
        let facts = plan::ImageFacts {
            reference: img.reference.clone(),
            digest: img.digest.clone(),
            config: img.image.config.config.as_ref(),
            rootfs: img.rootfs.clone(),
            has_shell: has_shell(&img.rootfs),
        };
        let (launch, warnings) =
            plan::launch_spec(&env, c, &facts, &ctx, &inputs).map_err(anyhow::Error::msg)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        launches.insert(c.name.clone(), launch);
    }

    // What changes.
    let current: BTreeMap<String, (Option<String>, bool)> = envdir
        .containers()
        .iter()
        .map(|c| {
            (
                c.name(),
                (c.launch().map(|l| l.fingerprint), c.state().is_running()),
            )
        })
        .collect();
    let wanted: BTreeMap<String, String> = launches
        .iter()
        .map(|(n, l)| (n.clone(), l.fingerprint.clone()))
        .collect();
    let changes = plan::changes(&wanted, &current);
    // Stopped first: what changed or left the file, and the supervisors of containers that
    // just died and are still writing down how (so no old record lands on a new run).
    let to_stop: Vec<String> = changes
        .restart
        .iter()
        .chain(&changes.remove)
        .filter(|n| current.get(*n).is_some_and(|(_, running)| *running))
        .chain(changes.start.iter().filter(|n| {
            envdir
                .container(n)
                .supervisor()
                .is_some_and(|p| p.is_alive())
        }))
        .cloned()
        .collect();
    if !to_stop.is_empty() {
        eprintln!("stopping {}", to_stop.join(", "));
        stop_containers(&sandbox, &envdir, &to_stop, Duration::from_secs(10))?;
    }
    for n in &changes.remove {
        let dir = envdir.container(n);
        std::fs::remove_dir_all(&dir.dir)
            .with_context(|| format!("removing {}", dir.dir.display()))?;
    }
    let starting: Vec<String> = changes
        .restart
        .iter()
        .chain(&changes.start)
        .cloned()
        .collect();

    // Ports: every endpoint of a container about to start must be free.
    for n in &starting {
        for e in &launches[n].endpoints {
            if matches!(e.protocol, archway_devfile::Protocol::Udp) {
                continue;
            }
            if let Some(why) = port_problem(e.port) {
                bail!(
                    "endpoint `{}` of container `{n}`: {why}. The containers use the host's network, so each endpoint is a port of this machine: stop what holds it or change the endpoint's targetPort; nothing was started",
                    e.name
                );
            }
        }
    }

    let record = EnvRecord {
        name: name.clone(),
        file: loaded.file.clone(),
        project: root.clone(),
        platform: platform.to_string(),
        created: previous.as_ref().is_some_and(|p| p.created),
        registry_mirrors: mirrors.iter().map(ToString::to_string).collect(),
        runtime: runtime.clone(),
        environment: env.clone(),
    };
    write_json(&envdir.record_path(), &record)?;

    // Start.
    for n in &starting {
        let dir = envdir.container(n);
        std::fs::create_dir_all(&dir.dir)
            .with_context(|| format!("creating {}", dir.dir.display()))?;
        for p in [dir.running_path(), dir.exit_path(), dir.supervisor_path()] {
            let _ = std::fs::remove_file(p);
        }
        for m in &launches[n].mounts {
            if let state::MountRecord::Bind { host, .. } = m
                && host.starts_with(envdir.dir.join("volumes"))
            {
                std::fs::create_dir_all(host)
                    .with_context(|| format!("creating the volume {}", host.display()))?;
            }
        }
        write_json(&dir.launch_path(), &launches[n])?;
        supervise::spawn(&envdir.dir, &dir)?;
    }
    let deadline = Instant::now() + a.timeout;
    for n in &starting {
        wait_running(&envdir.container(n), deadline)?;
    }
    // The supervisors hold their own leases now: touch the root filesystems again under
    // them, then let ours go.
    block_on(async {
        for r in ready.values() {
            let _ = images.unpack(&r.image).await;
        }
    })?;
    drop(lease);

    // Endpoints of the service containers (a tools container's ports are for what its
    // user will start in it).
    let mut silent = Vec::new();
    for n in starting.iter().filter(|n| !launches[*n].tools) {
        for e in &launches[n].endpoints {
            if matches!(e.protocol, archway_devfile::Protocol::Udp) {
                continue;
            }
            while !listens(e.port)
                && Instant::now() < deadline
                && envdir.container(n).state().is_running()
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !listens(e.port) {
                silent.push((n.clone(), e.clone()));
            }
        }
    }
    for (n, e) in &silent {
        let dir = envdir.container(n);
        eprintln!(
            "warning: container `{n}` ({}) does not listen on port {} (endpoint `{}`). Its last output:\n{}",
            dir.state().label(),
            e.port,
            e.name,
            dir.log_tail(15)
        );
    }

    // Lifecycle commands.
    let runner = Runner {
        sandbox: &sandbox,
        envdir: &envdir,
        env: &env,
        project: &root,
        env_id,
    };
    let mut failed = Vec::new();
    if !record.created {
        for (event, ids) in [
            ("onCreate", &env.events.on_create),
            ("updateContent", &env.events.update_content),
            ("postCreate", &env.events.post_create),
        ] {
            run_event(&runner, event, ids, &mut failed);
        }
        let mut done = record.clone();
        done.created = true;
        write_json(&envdir.record_path(), &done)?;
    }
    let post_start: Vec<String> = env
        .events
        .post_start
        .iter()
        .filter(|id| {
            commands_containers(&env, id)
                .iter()
                .any(|c| starting.contains(c))
        })
        .cloned()
        .collect();
    run_event(&runner, "postStart", &post_start, &mut failed);

    // Report.
    let record = envdir.record().unwrap_or(record);
    let flag = name_flag(&record, &root);
    println!(
        "Dev environment `{name}` from {} is up on {platform}.",
        loaded.file
    );
    match &emulation {
        Emulation::Native => {}
        Emulation::Qemu { .. } => println!(
            "Emulated: {platform} runs through qemu-user on this {host} machine, so commands run slower than natively."
        ),
        Emulation::Missing { reason, .. } => println!("Emulation problem: {reason}"),
    }
    println!();
    print_containers(&envdir, &env, &changes);
    let endpoints: Vec<_> = env.endpoints().collect();
    if !endpoints.is_empty() {
        println!();
        println!(
            "{:<16} {:<16} {:>6}  {:<9} {:<9} URL",
            "ENDPOINT", "CONTAINER", "PORT", "PROTOCOL", "EXPOSURE"
        );
        for (c, e) in &endpoints {
            println!(
                "{:<16} {:<16} {:>6}  {:<9} {:<9} {}",
                e.name,
                c.name,
                e.port,
                word(&e.protocol),
                word(&e.exposure),
                url(e)
            );
        }
        println!(
            "The containers share this machine's network: endpoints are its ports, and containers reach each other on localhost."
        );
    }
    println!();
    println!("Enter it:  archway dev shell{flag}");
    let ids: Vec<&str> = env.commands.iter().map(|c| c.id.as_str()).collect();
    if ids.is_empty() {
        println!("Run:       archway dev exec{flag} -- COMMAND");
    } else {
        println!(
            "Run:       archway dev exec{flag} ID (one of: {}) or -- COMMAND",
            ids.join(", ")
        );
    }
    println!("Stop:      archway dev stop{flag}   (remove: archway dev down{flag})");
    if !failed.is_empty() {
        eprintln!(
            "error: {} failed; the environment is running: fix and rerun them with `archway dev exec{flag} ID`",
            failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The serde name of a lowercase enum.
fn word(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn url(e: &archway_devfile::Endpoint) -> String {
    use archway_devfile::Protocol;
    let scheme = match e.protocol {
        Protocol::Http => "http",
        Protocol::Https => "https",
        Protocol::Ws => "ws",
        Protocol::Wss => "wss",
        Protocol::Tcp | Protocol::Udp => return format!("localhost:{}", e.port),
    };
    format!(
        "{scheme}://localhost:{}{}",
        e.port,
        e.path.as_deref().unwrap_or("/")
    )
}

/// The containers a command runs in (composites: all of theirs).
fn commands_containers(env: &Environment, id: &str) -> Vec<String> {
    fn walk(env: &Environment, id: &str, out: &mut Vec<String>, depth: usize) {
        if depth > 32 {
            return;
        }
        match env.command(id).map(|c| &c.action) {
            Some(archway_devfile::Action::Exec { container, .. }) => out.push(container.clone()),
            Some(archway_devfile::Action::Composite { commands, .. }) => {
                for c in commands {
                    walk(env, c, out, depth + 1);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(env, id, &mut out, 0);
    out
}

/// Runs an event's commands in order; failures are collected.
fn run_event(runner: &Runner<'_>, event: &str, ids: &[String], failed: &mut Vec<String>) {
    for id in ids {
        eprintln!("==> {event}: {id}");
        match runner.run_command(id, false) {
            Ok(0) => {}
            Ok(code) => {
                eprintln!("{event} command `{id}` exited with code {code}");
                failed.push(format!("{event} command `{id}` (exit {code})"));
            }
            Err(e) => {
                eprintln!("{event} command `{id}`: {e:#}");
                failed.push(format!("{event} command `{id}`"));
            }
        }
    }
}

/// Waits for a supervisor to report its container running.
fn wait_running(dir: &ContainerDir, deadline: Instant) -> anyhow::Result<()> {
    let name = dir.name();
    let spawned = Instant::now();
    loop {
        match dir.state() {
            ContainerState::Running { .. } => return Ok(()),
            ContainerState::Starting => {}
            ContainerState::Missing | ContainerState::Exited { code: None }
                if dir.supervisor().is_none() && spawned.elapsed() < Duration::from_secs(10) => {}
            ContainerState::Failed { error } => bail!(
                "container `{name}` could not start: {error}\n(its log: {})",
                dir.log_path().display()
            ),
            other => bail!(
                "container `{name}` stopped as it started ({}). Its last output:\n{}\n(the whole log: {}; a container must keep running: give it a long-running command)",
                other.label(),
                dir.log_tail(20),
                dir.log_path().display()
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "container `{name}` did not start within the --timeout. Its last output:\n{}",
                dir.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops containers: SIGTERM through the runtime, up to `grace` to exit, then the supervisor
/// is killed (which takes the whole sandbox with it). Records them as stopped.
fn stop_containers(
    sandbox: &Sandbox,
    envdir: &EnvDir,
    names: &[String],
    grace: Duration,
) -> anyhow::Result<()> {
    let dirs: Vec<ContainerDir> = names.iter().map(|n| envdir.container(n)).collect();
    let kill_supervisor = |d: &ContainerDir| {
        if let Some(p) = d.supervisor().filter(ProcessId::is_alive)
            && let Some(pid) = rustix::process::Pid::from_raw(p.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    };
    for d in &dirs {
        if let Some(h) = d.live_handle() {
            // A main process without a SIGTERM handler is the PID 1 of its namespace, which
            // the kernel does not let SIGTERM end: no point waiting for it.
            let main = h.main_pid();
            if main.and_then(|p| archway_sandbox::running::catches_signal(p, 15)) == Some(false) {
                kill_supervisor(d);
            } else {
                let _ = sandbox.signal(&h, "TERM");
            }
        }
    }
    let alive = |d: &ContainerDir| {
        d.supervisor().is_some_and(|p| p.is_alive()) || d.live_handle().is_some()
    };
    let deadline = Instant::now() + grace;
    while dirs.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for d in &dirs {
        kill_supervisor(d);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while dirs.iter().any(alive) {
        if Instant::now() >= deadline {
            let left: Vec<String> = dirs
                .iter()
                .filter(|d| alive(d))
                .map(ContainerDir::name)
                .collect();
            bail!(
                "{} did not stop within 15 s of being killed",
                left.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for d in &dirs {
        if d.launch().is_some() {
            write_json(
                &d.exit_path(),
                &ExitRecord {
                    code: d.exit().and_then(|e| e.code),
                    error: None,
                    stopped: true,
                },
            )?;
        }
    }
    Ok(())
}

/// Runs preStop commands, then stops every running container.
fn stop_env(
    root: &Path,
    envdir: &EnvDir,
    record: &EnvRecord,
    grace: Duration,
) -> anyhow::Result<Vec<String>> {
    let running: Vec<String> = envdir
        .containers()
        .iter()
        .filter(|c| c.state().is_running())
        .map(ContainerDir::name)
        .collect();
    if running.is_empty() {
        return Ok(running);
    }
    let sandbox = Sandbox::detect(record.runtime.as_deref())?;
    let runner = Runner {
        sandbox: &sandbox,
        envdir,
        env: &record.environment,
        project: root,
        env_id: plan::env_id(root, &record.name),
    };
    let mut failed = Vec::new();
    run_event(
        &runner,
        "preStop",
        &record.environment.events.pre_stop,
        &mut failed,
    );
    for f in &failed {
        eprintln!("warning: {f} failed; stopping anyway");
    }
    stop_containers(&sandbox, envdir, &running, grace)?;
    Ok(running)
}

/// `archway dev stop`
fn stop(a: StopArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, record) = select(&a.select)?;
    let stopped = stop_env(&root, &envdir, &record, a.time)?;
    if stopped.is_empty() {
        println!("Dev environment `{}` is not running.", record.name);
    } else {
        println!(
            "Stopped {} of `{}`; start again with `archway dev up{}`.",
            stopped.join(", "),
            record.name,
            name_flag(&record, &root)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `archway dev down`
fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, record) = select(&a.select)?;
    stop_env(&root, &envdir, &record, a.time)?;
    let entries = std::fs::read_dir(&envdir.dir)
        .with_context(|| format!("reading {}", envdir.dir.display()))?;
    let mut kept_volumes = false;
    for e in entries.flatten() {
        if e.file_name() == "volumes" && !a.volumes {
            kept_volumes = std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some());
            continue;
        }
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("removing {}", p.display()))?;
    }
    if !kept_volumes {
        let _ = std::fs::remove_dir_all(&envdir.dir);
    }
    println!(
        "Removed dev environment `{}`{}.",
        record.name,
        if kept_volumes {
            format!(
                " (its persistent volumes stay in {}; `archway dev down --volumes` removes them)",
                envdir.dir.join("volumes").display()
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The container table `up` prints.
fn print_containers(envdir: &EnvDir, env: &Environment, changes: &plan::Changes) {
    println!(
        "{:<16} {:<12} {:>8}  {:<28} NOTE",
        "CONTAINER", "STATE", "PID", "IMAGE"
    );
    for c in &env.containers {
        let dir = envdir.container(&c.name);
        let state = dir.state();
        let pid = match state {
            ContainerState::Running { pid: Some(p) } => p.to_string(),
            _ => "-".into(),
        };
        let note = if changes.keep.contains(&c.name) {
            "unchanged, kept running"
        } else if changes.restart.contains(&c.name) {
            "changed, restarted"
        } else {
            "started"
        };
        let tools = if c.tools { " (tools)" } else { "" };
        println!(
            "{:<16} {:<12} {:>8}  {:<28} {note}{tools}",
            c.name,
            state.label(),
            pid,
            plan::image_name(c)
        );
    }
}

/// `archway dev ls`
fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let root = project_root()?;
    let mut out = Vec::new();
    for name in state::environments(&root) {
        let envdir = EnvDir::new(&root, &name);
        let Some(record) = envdir.record() else {
            continue;
        };
        let mut containers = Vec::new();
        for c in &record.environment.containers {
            let dir = envdir.container(&c.name);
            let state = dir.state();
            let launch = dir.launch();
            containers.push(json!({
                "name": c.name,
                "tools": c.tools,
                "state": state.word(),
                "exit_code": match &state { ContainerState::Exited { code } => json!(code), _ => json!(null) },
                "error": match &state { ContainerState::Failed { error } => json!(error), _ => json!(null) },
                "pid": match &state { ContainerState::Running { pid } => json!(pid), _ => json!(null) },
                "image": plan::image_name(c),
                "image_digest": launch.as_ref().map(|l| l.image_digest.clone()),
                "platform": launch.as_ref().map(|l| l.platform.clone()).unwrap_or(record.platform.clone()),
                "endpoints": c.endpoints.iter().map(|e| json!({
                    "name": e.name,
                    "port": e.port,
                    "protocol": word(&e.protocol),
                    "exposure": word(&e.exposure),
                    "url": url(e),
                })).collect::<Vec<_>>(),
                "label": state.label(),
            }));
        }
        out.push(json!({
            "name": record.name,
            "file": record.file,
            "project": record.project,
            "platform": record.platform,
            "state_dir": envdir.dir,
            "containers": containers,
        }));
    }
    if a.format == Format::Json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        println!(
            "No dev environments in {}; start one with `archway dev up`.",
            root.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<16} {:<12} {:>8}  {:<12} {:<28} ENDPOINTS",
        "ENVIRONMENT", "CONTAINER", "STATE", "PID", "PLATFORM", "IMAGE"
    );
    for e in &out {
        for (i, c) in e["containers"].as_array().into_iter().flatten().enumerate() {
            let endpoints: Vec<String> = c["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} {}/{}",
                        p["name"].as_str().unwrap_or(""),
                        p["port"],
                        p["protocol"].as_str().unwrap_or("")
                    )
                })
                .collect();
            println!(
                "{:<16} {:<16} {:<12} {:>8}  {:<12} {:<28} {}",
                if i == 0 {
                    e["name"].as_str().unwrap_or("")
                } else {
                    ""
                },
                c["name"].as_str().unwrap_or(""),
                c["label"].as_str().unwrap_or(""),
                c["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                c["platform"].as_str().unwrap_or(""),
                c["image"].as_str().unwrap_or(""),
                if endpoints.is_empty() {
                    "-".into()
                } else {
                    endpoints.join(", ")
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The container a command line goes to.
fn container_for(record: &EnvRecord, given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(c) => Ok(c.to_owned()),
        None => record
            .environment
            .tools_container()
            .map(|c| c.name.clone())
            .with_context(|| {
                let names: Vec<&str> = record
                    .environment
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                format!(
                    "this environment has no tools container (one that mounts the sources): name one with -c ({})",
                    names.join(", ")
                )
            }),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `archway dev exec`
fn exec_cmd(a: ExecArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, record) = select(&a.select)?;
    let sandbox = Sandbox::detect(record.runtime.as_deref())?;
    let runner = Runner {
        sandbox: &sandbox,
        envdir: &envdir,
        env: &record.environment,
        project: &root,
        env_id: plan::env_id(&root, &record.name),
    };
    let tty = !a.no_tty && std::io::stdin().is_terminal();
    for kv in &a.env {
        if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            bail!("--env `{kv}` is not KEY=VALUE");
        }
    }
    let code = match (&a.id, a.argv.is_empty()) {
        (Some(id), true) => {
            if a.container.is_some() || a.workdir.is_some() || a.user.is_some() || !a.env.is_empty()
            {
                bail!(
                    "-c, -w, -u and -e apply to `-- COMMAND`; command `{id}` runs as the file defines it"
                );
            }
            runner.run_command(id, tty)?
        }
        (None, false) => {
            let container = container_for(&record, a.container.as_deref())?;
            runner.run_in(
                &container,
                &Invocation {
                    argv: a.argv.clone(),
                    env: with_term(a.env.clone(), tty),
                    cwd: a.workdir.clone(),
                    user: a.user.clone(),
                    tty,
                },
            )?
        }
        (Some(id), false) => bail!(
            "give a command id or `-- COMMAND`, not both (got `{id}` and `{}`)",
            a.argv.join(" ")
        ),
        (None, true) => {
            let ids: Vec<&str> = record
                .environment
                .commands
                .iter()
                .map(|c| c.id.as_str())
                .collect();
            if ids.is_empty() {
                bail!(
                    "nothing to run: give a command line after `--`, e.g. `archway dev exec -- ls`"
                );
            }
            bail!(
                "nothing to run: give a command id ({}) or a command line after `--`",
                ids.join(", ")
            );
        }
    };
    Ok(exit_code(code))
}

/// A terminal's programs want to know what it is.
fn with_term(mut env: Vec<String>, tty: bool) -> Vec<String> {
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.insert(
            0,
            format!(
                "TERM={}",
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
            ),
        );
    }
    env
}

/// `archway dev shell`
fn shell(a: ShellArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, record) = select(&a.select)?;
    let sandbox = Sandbox::detect(record.runtime.as_deref())?;
    let container = container_for(&record, a.container.as_deref())?;
    let handle = envdir.container(&container).live_handle();
    let bash = handle.as_ref().is_some_and(|h| has_bash(&h.rootfs));
    let runner = Runner {
        sandbox: &sandbox,
        envdir: &envdir,
        env: &record.environment,
        project: &root,
        env_id: plan::env_id(&root, &record.name),
    };
    let tty = std::io::stdin().is_terminal();
    let code = runner.run_in(
        &container,
        &Invocation {
            argv: vec![if bash { "bash" } else { "/bin/sh" }.to_owned()],
            env: with_term(Vec::new(), tty),
            cwd: None,
            user: a.user.clone(),
            tty,
        },
    )?;
    Ok(exit_code(code))
}
