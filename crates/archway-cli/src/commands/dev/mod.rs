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
//! State lives under the repository's `.archway/dev/<name>/` ([`state`]); [`up`] starts and
//! updates an environment, [`plan`] turns the model into launches, [`exec`] runs commands in
//! the containers, [`stop`] ends them.

mod exec;
mod plan;
mod state;
mod stop;
mod supervise;
mod up;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use archway_devfile::{Filesystem, LoadError};
use archway_sandbox::Sandbox;
use clap::{Args, Subcommand};
use serde_json::json;

use self::exec::{Invocation, Runner};
use self::state::{ContainerDir, ContainerState, EnvDir, EnvRecord};
use super::common::{Format, RegistryArgs, print_json};

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
        DevCommand::Up(a) => up::up(a),
        DevCommand::Exec(a) => exec_cmd(a),
        DevCommand::Shell(a) => shell(a),
        DevCommand::Ls(a) => ls(a),
        DevCommand::Stop(a) => stop::stop(a),
        DevCommand::Down(a) => stop::down(a),
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

fn has_bash(rootfs: &Path) -> bool {
    ["bin/bash", "usr/bin/bash"]
        .iter()
        .any(|p| std::fs::symlink_metadata(rootfs.join(p)).is_ok())
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
