//! `archway dev __supervise ENV-DIR CONTAINER`: the process that keeps one container of a
//! dev environment running after `archway dev up` has exited.
//!
//! `dev up` starts it through `setsid --fork` (a new session, no terminal; stdin from
//! /dev/null, stdout and stderr appended to the container's `log`). It writes its own
//! identity (`supervisor.json`), holds a lease on the build store (so a prune keeps the
//! container's root filesystem) and a scratch run directory in it, and runs the container
//! through [`Sandbox::run_observed`]: the sandbox's process tree is tied to this process
//! (`pdeathsig`), so killing the supervisor stops the container, and the container ending
//! ends the supervisor. Once the runtime reports the container running it writes the
//! [`RunningHandle`](archway_sandbox::RunningHandle) (`running.json`) that `dev exec`, `dev
//! ls` and `dev stop` use; when the run ends, how it ended (`exit.json`).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use archway_oci::Platform;
use archway_sandbox::{Exit, ExtraMount, Network, ProcessId, RunSpec, RunningHandle, Sandbox};

use super::state::{ContainerDir, ExitRecord, write_json};

/// Runs the container named in `dir`'s `launch.json` until it ends.
pub fn supervise(dir: &ContainerDir) -> anyhow::Result<ExitCode> {
    let me = ProcessId::current().context("reading this process's start time from /proc")?;
    write_json(&dir.supervisor_path(), &me)?;
    let _ = std::fs::remove_file(dir.running_path());
    let _ = std::fs::remove_file(dir.exit_path());
    let result = run(dir);
    let record = match &result {
        Ok(Exit::Code(c)) => ExitRecord {
            code: Some(*c),
            error: None,
            stopped: false,
        },
        Ok(Exit::Canceled | Exit::TimedOut) => ExitRecord {
            code: None,
            error: None,
            stopped: true,
        },
        Err(e) => ExitRecord {
            code: None,
            error: Some(format!("{e:#}")),
            stopped: false,
        },
    };
    // A newer supervisor may have taken the container over (`dev up` after this one's
    // container died): its records are not ours to write.
    if dir.supervisor().is_some_and(|p| p == me) {
        write_json(&dir.exit_path(), &record)?;
    }
    match result {
        Ok(Exit::Code(c)) => {
            eprintln!("archway: the container's process exited with code {c}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn run(dir: &ContainerDir) -> anyhow::Result<Exit> {
    let spec = dir
        .launch()
        .with_context(|| format!("reading {}", dir.launch_path().display()))?;
    let platform: Platform = spec.platform.parse()?;
    let store = archway_build::Store::open(&spec.store)
        .with_context(|| format!("opening the build store at {}", spec.store.display()))?;
    // While this lease lives, a prune keeps what `dev up` touched for this container.
    let _lease = store.lease()?;
    let work = store.scratch_dir()?;
    let sandbox = Sandbox::detect(spec.runtime.as_deref())?;
    let log = Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.log_path())
            .with_context(|| format!("opening {}", dir.log_path().display()))?,
    );
    let mounts: Vec<ExtraMount> = spec.mounts.iter().map(ExtraMount::from).collect();
    for m in &mounts {
        if let ExtraMount::Bind { host, .. } = m
            && !host.exists()
        {
            std::fs::create_dir_all(host)
                .with_context(|| format!("creating the volume directory {}", host.display()))?;
        }
    }
    let run_spec = RunSpec {
        platform: &platform,
        rootfs: &spec.rootfs,
        dir: work.path(),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        mounts,
        network: Network::Host,
        timeout: None,
        collect_changes: false,
    };
    let running_path = dir.running_path();
    let on_running = |h: &RunningHandle| {
        if let Err(e) = write_json(&running_path, h) {
            eprintln!("archway: {e:#}");
        }
    };
    let out = sandbox.run_observed(
        &run_spec,
        &|line: &str| {
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{line}");
            }
        },
        None,
        &on_running,
    )?;
    Ok(out.exit)
}

/// Starts the supervisor of `container` in the environment at `env_dir`, detached.
pub fn spawn(env_dir: &Path, container: &ContainerDir) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the archway binary")?;
    std::fs::create_dir_all(&container.dir)
        .with_context(|| format!("creating {}", container.dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(container.log_path())
        .with_context(|| format!("opening {}", container.log_path().display()))?;
    let status = std::process::Command::new("setsid")
        .arg("--fork")
        .arg(exe)
        .args(["dev", "__supervise"])
        .arg(env_dir)
        .arg(container.name())
        .current_dir(env_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("starting the container's supervisor with setsid (util-linux)")?;
    if !status.success() {
        anyhow::bail!(
            "setsid failed ({status}) starting the supervisor of {}",
            container.name()
        );
    }
    Ok(())
}
