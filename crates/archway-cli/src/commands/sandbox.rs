//! `archway run` (a command in an image, through the sandbox), `archway doctor` (what this host
//! can run), and the bridge that lets the builder run RUN steps in the sandbox.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use archway_build::{
    ImageStore, RegistrySource, RunOutput, RunRequest, StepRunner, Store, Unpacking,
};
use archway_client::Location;
use archway_oci::Platform;
use archway_oci::run_config::{RunConfigError, RunOverrides, resolve_run};
use archway_sandbox::doctor::Report;
use archway_sandbox::{Emulation, Exit, ExtraMount, Network, RunSpec, Sandbox};
use clap::Args;

use super::common::{Format, RegistryArgs, block_on, print_json};

/// Runs RUN steps in the sandbox.
struct SandboxRunner {
    sandbox: Sandbox,
    timeout: Option<Duration>,
}

impl StepRunner for SandboxRunner {
    fn check(&self, platform: &Platform) -> Result<(), String> {
        self.sandbox
            .check_platform(platform)
            .map_err(|e| e.to_string())
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        on_output: &(dyn Fn(&str) + Sync),
    ) -> Result<RunOutput, Box<dyn std::error::Error + Send + Sync>> {
        let mut mounts: Vec<ExtraMount> = req
            .mounts
            .iter()
            .map(|m| ExtraMount::Bind {
                host: m.host.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
            })
            .collect();
        mounts.extend(
            req.tmpfs
                .iter()
                .map(|t| ExtraMount::Tmpfs { target: t.clone() }),
        );
        let spec = RunSpec {
            platform: req.platform,
            rootfs: req.rootfs,
            dir: req.work,
            argv: req.argv.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            user: req.user.clone(),
            mounts,
            network: if req.network_host {
                Network::Host
            } else {
                Network::None
            },
            timeout: self.timeout,
            collect_changes: true,
        };
        let out = self.sandbox.run(&spec, on_output)?;
        let (exit_code, mut output) = match out.exit {
            Exit::Code(c) => (c, out.output_tail),
            Exit::Canceled => (130, out.output_tail),
            Exit::TimedOut => (
                124,
                format!(
                    "{}\n(killed: the step ran longer than {})",
                    out.output_tail,
                    humantime::format_duration(self.timeout.unwrap_or_default())
                ),
            ),
        };
        if output.ends_with('\n') {
            output.pop();
        }
        Ok(RunOutput {
            exit_code,
            output,
            changes: out.changes,
        })
    }
}

/// The sandbox for RUN steps, or why there is none.
pub fn runner(
    runtime: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Arc<dyn StepRunner>, String> {
    let sandbox = Sandbox::detect(runtime).map_err(|e| e.to_string())?;
    Ok(Arc::new(SandboxRunner { sandbox, timeout }))
}

/// The build store at `--cache-dir`, or the default one.
pub fn open_store(cache_dir: Option<&std::path::Path>) -> anyhow::Result<Arc<Store>> {
    let dir = cache_dir
        .map(ToOwned::to_owned)
        .unwrap_or_else(Store::default_dir);
    let store = Store::open(&dir)
        .with_context(|| format!("opening the build store at {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// How much of a layer's ownership unpacking keeps here: everything as root; owners and
/// setuid bits as root of a user namespace that maps more than one id (subordinate ids, see
/// [`rerun_with_subordinate_ids`]); nothing rootless with one id.
pub fn unpacking() -> Unpacking {
    let root = rustix::process::geteuid().is_root();
    if root && !archway_sandbox::userns::in_user_namespace() {
        Unpacking::Privileged
    } else if root && archway_sandbox::userns::maps_many_ids() {
        Unpacking::MappedIds
    } else {
        Unpacking::Caller
    }
}

/// Rootless: runs this very command again in a user namespace mapping the user's subordinate
/// ids (`/etc/subuid`, `/etc/subgid`, through `newuidmap`/`newgidmap`, as rootless podman
/// does), so files owned by other users in base images keep their owners and RUN steps can
/// switch users. `Ok(Some(code))`: it ran there and this is its exit code; `Ok(None)`: go on
/// here (as root, already mapped, or without a range; then `note` says what that costs).
pub fn rerun_with_subordinate_ids(note: Option<&str>) -> anyhow::Result<Option<ExitCode>> {
    use archway_sandbox::userns::{self, SubordinateIds};
    if rustix::process::geteuid().is_root() || userns::in_mapped_namespace() {
        return Ok(None);
    }
    match SubordinateIds::for_current_user() {
        Ok(ids) => {
            let exe =
                std::env::current_exe().context("finding the archway binary to run it again")?;
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            let status = ids
                .rerun(&exe, &args)
                .context("running in a user namespace with the subordinate ids")?;
            let code = status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            });
            Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(1))))
        }
        Err(why) => {
            if let Some(what) = note {
                eprintln!(
                    "note: {what} runs rootless with a single id mapping ({why}): files that base images give to other users belong to root, and RUN steps cannot switch to another user. Give the user a range in /etc/subuid and /etc/subgid (and install uidmap) to keep owners, as rootless podman does."
                );
            }
            Ok(None)
        }
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// `archway doctor`
pub fn doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let r: Report = archway_sandbox::doctor::report();
    if a.format == Format::Json {
        print_json(&r)?;
        return Ok(if r.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!(
        "host        {} ({}, cgroups {:?})",
        r.host,
        if r.rootless { "rootless" } else { "root" },
        r.cgroups
    );
    for c in &r.checks {
        println!(
            "{} {:<16} {}",
            if c.ok { "ok " } else { "NO " },
            c.name,
            c.detail
        );
        if let Some(fix) = c.fix.as_ref().filter(|_| !c.ok) {
            println!("    fix: {fix}");
        }
    }
    println!("emulation (RUN steps for other architectures):");
    for (p, e) in &r.emulation {
        match e {
            Emulation::Native => println!("ok  {p:<16} native"),
            Emulation::Qemu {
                handler,
                interpreter,
            } => println!("ok  {p:<16} qemu ({handler}: {interpreter})"),
            Emulation::Missing { reason, fix } => {
                println!("NO  {p:<16} {reason}");
                println!("    fix: {fix}");
            }
        }
    }
    if r.ok() {
        println!(
            "RUN steps can run here with {}.",
            r.runtime.as_deref().unwrap_or("?")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("RUN steps cannot run here until the problems above are fixed.");
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  archway run --platform linux/arm64 oci:./out:1.0 uname -m
  archway run -e GREETING=hi localhost:5000/app:1.0 -- sh -c 'echo $GREETING'
  archway run --network host -v $PWD:/src:ro --workdir /src localhost:5000/tools:1 make test")]
pub struct RunArgs {
    /// The image: REGISTRY/NAME:TAG or oci:DIR[:TAG].
    image: String,
    /// The command (default: the image's ENTRYPOINT and CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// Which platform's image to run (default: this machine's); others run through qemu-user.
    #[arg(long)]
    platform: Option<String>,
    /// Environment variable (repeatable), KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Run as this user (`name`, `uid`, `uid:gid`; default: the image's USER).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory (default: the image's WORKDIR).
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Bind mount HOST:CONTAINER[:ro] (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volumes: Vec<String>,
    /// tmpfs mount (repeatable).
    #[arg(long, value_name = "PATH")]
    tmpfs: Vec<String>,
    /// `none` (loopback only) or `host`.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    network: String,
    /// Kill the process after this long (e.g. 30s, 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// OCI runtime: crun, runc or a path (default: chosen by `archway doctor`'s rules).
    #[arg(long, env = "ARCHWAY_RUNTIME")]
    runtime: Option<String>,
    /// Local store for images and unpacked root filesystems (default: ~/.cache/archway/build).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `archway run`
pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let platform: Platform = match &a.platform {
        Some(p) => p.parse()?,
        None => Platform::host(),
    };
    let source = Location::parse(&a.image)?;
    let sandbox = Sandbox::detect(a.runtime.as_deref())?;
    sandbox.check_platform(&platform)?;
    let mut mounts = Vec::new();
    for v in &a.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, target, readonly) = match parts.as_slice() {
            [h, t] => (h, t, false),
            [h, t, "ro"] => (h, t, true),
            [h, t, "rw"] => (h, t, false),
            _ => bail!("--volume `{v}`: expected HOST:CONTAINER[:ro]"),
        };
        let host = std::fs::canonicalize(host).with_context(|| format!("--volume {v}: {host}"))?;
        if !target.starts_with('/') {
            bail!("--volume {v}: the container path must be absolute");
        }
        mounts.push(ExtraMount::Bind {
            host,
            target: (*target).to_owned(),
            readonly,
        });
    }
    mounts.extend(
        a.tmpfs
            .iter()
            .map(|t| ExtraMount::Tmpfs { target: t.clone() }),
    );

    let regs: Vec<String> = match &source {
        Location::Registry(r) => vec![r.registry.clone()],
        _ => Vec::new(),
    };
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let images = ImageStore::new(
        open_store(a.cache_dir.as_deref())?,
        Arc::new(RegistrySource::new(client)),
    )
    .with_unpacking(unpacking());
    // What this run pulls and unpacks stays while it runs, whatever `build prune` does.
    let _lease = images.lease()?;
    let (image, rootfs) = block_on(async {
        let image = images.pull(&source, &platform).await?;
        let rootfs = images.unpack(&image).await?;
        anyhow::Ok((image, rootfs))
    })??;
    let resolved = resolve_run(
        image.config.config.as_ref(),
        &RunOverrides {
            entrypoint: None,
            command: a.command.clone(),
            env: a.env.clone(),
            user: a.user.clone(),
            workdir: a.workdir.clone(),
        },
    )
    .map_err(|e| match e {
        RunConfigError::NoCommand => anyhow::anyhow!(
            "{} has no ENTRYPOINT or CMD; give a command: archway run {} -- COMMAND",
            a.image,
            a.image
        ),
        RunConfigError::BadEnv(kv) => anyhow::anyhow!("--env `{kv}` is not KEY=VALUE"),
    })?;
    let work = images.scratch_dir()?;
    let spec = RunSpec {
        platform: &platform,
        rootfs: &rootfs,
        dir: work.path(),
        argv: resolved.argv,
        env: resolved.env,
        cwd: resolved.cwd,
        user: resolved.user,
        mounts,
        network: if a.network == "host" {
            Network::Host
        } else {
            Network::None
        },
        timeout: a.timeout,
        collect_changes: false,
    };
    let out = sandbox.run(&spec, &|line: &str| println!("{line}"))?;
    match out.exit {
        Exit::Code(0) => Ok(ExitCode::SUCCESS),
        Exit::Code(c) => Ok(ExitCode::from(u8::try_from(c).unwrap_or(1))),
        Exit::Canceled => Ok(ExitCode::from(130)),
        Exit::TimedOut => {
            eprintln!(
                "error: killed after {}",
                humantime::format_duration(a.timeout.unwrap_or_default())
            );
            Ok(ExitCode::from(124))
        }
    }
}
