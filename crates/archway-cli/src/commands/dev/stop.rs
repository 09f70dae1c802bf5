//! `archway dev stop` and `down`: preStop commands, then SIGTERM through the runtime, a grace
//! period, and the supervisor killed (which takes the sandbox with it); `down` then removes
//! the state, keeping persistent volumes unless asked.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use archway_sandbox::{ProcessId, Sandbox};

use super::exec::Runner;
use super::state::{ContainerDir, EnvDir, EnvRecord, ExitRecord, write_json};
use super::{DownArgs, StopArgs, name_flag, plan, run_event, select};

/// Stops containers: SIGTERM through the runtime, up to `grace` to exit, then the supervisor
/// is killed (which takes the whole sandbox with it). Records them as stopped.
pub fn stop_containers(
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
pub fn stop(a: StopArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, _) = select(&a.select)?;
    let _lock = envdir.lock()?;
    let record = envdir
        .record()
        .context("the environment was removed meanwhile")?;
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
pub fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let (root, envdir, _) = select(&a.select)?;
    let _lock = envdir.lock()?;
    let record = envdir
        .record()
        .context("the environment was removed meanwhile")?;
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
