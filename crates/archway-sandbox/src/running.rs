//! Entering a run that is going on: what a long-lived sandbox (a dev environment's container)
//! needs so that other processes — started later, by other commands — can run commands in
//! it, ask whether it still runs, and signal it.
//!
//! A run's first process (the `sh` that `unshare --fork` starts, first of the run's PID
//! namespace; the *holder*) sits in every namespace the runtime was started in: the user
//! namespace of a rootless run, the private mount namespace holding the overlay and the
//! runtime's `/proc`, and the PID namespace in which the runtime's state records pids. The
//! runtime's own `exec`, `state` and `kill` work there, so entering a run is
//! `nsenter --target HOLDER [--user --preserve-credentials] --mount --pid -- RUNTIME
//! --root RUN/state …` ([`OciRuntime::control_command`](crate::OciRuntime::control_command)).
//! That needs no privilege beyond what started the run: the user namespace of a rootless run
//! belongs to the user who started it, so that user (and root) may enter it.
//!
//! A [`RunningHandle`] names all of that and is plain data (serde), so the process that
//! started the run can write it to a file and exit-independent processes can read it. It
//! records the holder's start time and the boot id with its pid, so a handle never mistakes
//! a recycled pid (or a reboot) for the run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Outcome, RunSpec, Sandbox, SandboxError};

/// A process, identified so that pid reuse and reboots are noticed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Its start time (clock ticks after boot, `/proc/PID/stat` field 22).
    pub start: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was recorded.
    pub boot_id: String,
}

impl ProcessId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcessId> {
        Some(ProcessId {
            pid,
            start: start_time(pid)?,
            boot_id: boot_id(),
        })
    }

    /// This process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    /// Whether that very process still exists (same boot, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && start_time(self.pid) == Some(self.start)
            && state(self.pid).is_some_and(|s| s != 'Z' && s != 'X')
    }
}

/// The kernel's id of this boot (empty when unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `/proc/PID/stat` after the command name (which may hold spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Field 3 (state), the first after the name.
fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Field 22 (starttime): index 19 after the name.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Field 4 (ppid).
fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Every process's parent, from `/proc`.
fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect()
}

/// All descendants of `pid` (not itself), parents before children.
fn descendants(pid: u32) -> Vec<u32> {
    let all = parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in all.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

/// The pid of `pid` in each PID namespace from the host's down (`NSpid:` of
/// `/proc/PID/status`).
fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn namespace(pid: &str, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// A run that is going on, as other processes can find and enter it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningHandle {
    /// The runtime's container id.
    pub id: String,
    /// The run directory (its `state/` is the runtime's root).
    pub dir: PathBuf,
    /// The runtime that started it (`crun`, `runc`).
    pub runtime: String,
    /// The run's first process: its namespaces are the run's.
    pub holder: ProcessId,
    /// The root filesystem (read-only lower layer; for user lookups).
    pub rootfs: PathBuf,
    /// The platform it runs as (`linux/arm64`).
    pub platform: String,
}

impl RunningHandle {
    /// Whether the run is still going (its first process lives; when it ends, everything in
    /// the run is gone).
    pub fn is_alive(&self) -> bool {
        self.holder.is_alive()
    }

    /// Whether entering the run means joining its user namespace (a rootless run, and we are
    /// not in that namespace already).
    fn needs_user_namespace(&self) -> bool {
        let theirs = namespace(&self.holder.pid.to_string(), "user");
        let ours = namespace("self", "user");
        theirs.is_some() && theirs != ours
    }

    /// The host pid of the container's main process (the PID 1 of the container), found among
    /// the run's processes; `None` when it is not running.
    pub fn main_pid(&self) -> Option<u32> {
        if !self.is_alive() {
            return None;
        }
        // The holder is PID 1 of its namespace; the container's main process is PID 1 of a
        // namespace one level further down.
        let depth = ns_pids(self.holder.pid).len();
        descendants(self.holder.pid).into_iter().find(|p| {
            let ns = ns_pids(*p);
            ns.len() == depth + 1 && ns.last() == Some(&1)
        })
    }
}

/// Whether process `pid` has a handler for signal number `signal` (`SigCgt:` of
/// `/proc/PID/status`); `None` when it cannot be read.
pub fn catches_signal(pid: u32, signal: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some((1..=64).contains(&signal) && mask & (1 << (signal - 1)) != 0)
}

/// A process to run in a running container (like `docker exec`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the container's environment.
    pub env: Vec<String>,
    /// The working directory (default: the container's).
    pub cwd: Option<String>,
    /// `USER` syntax (`name`, `uid`, `uid:gid`), looked up in the image; default: the
    /// container's user.
    pub user: Option<String>,
    /// Give it a terminal (the caller's stdin must be one).
    pub tty: bool,
}

/// Where an exec'd process's input and output go.
#[derive(Debug)]
pub struct ExecStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl ExecStdio {
    /// The caller's own.
    pub fn inherit() -> ExecStdio {
        ExecStdio {
            stdin: Stdio::inherit(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }
}

/// What the runtime says about a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    /// `creating`, `created`, `running`, `stopped`, as the runtime says it.
    pub status: String,
}

/// Where a waiting `run_observed` watcher is.
#[derive(Default)]
struct Spawned {
    pid: Mutex<Option<u32>>,
}

impl Sandbox {
    /// [`Sandbox::run_cancellable`], telling `on_running` once the process runs (the runtime
    /// reports the container `running`) with the [`RunningHandle`] other processes can use to
    /// enter it. Blocking until the process ends, like `run_cancellable`; a caller that wants
    /// the run to outlive it starts a process of its own for this (the run dies with the
    /// thread that started it).
    pub fn run_observed(
        &self,
        spec: &RunSpec<'_>,
        on_output: &(dyn Fn(&str) + Sync),
        cancel: Option<&AtomicBool>,
        on_running: &(dyn Fn(&RunningHandle) + Sync),
    ) -> Result<Outcome, SandboxError> {
        let spawned = Spawned::default();
        let done = AtomicBool::new(false);
        let ids: Mutex<Option<(String, PathBuf)>> = Mutex::new(None);
        let on_spawn = |pid: u32| {
            if let Ok(mut p) = spawned.pid.lock() {
                *p = Some(pid);
            }
        };
        let on_prepared = |id: &str, rootfs: &Path| {
            if let Ok(mut i) = ids.lock() {
                *i = Some((id.to_owned(), rootfs.to_owned()));
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let started = || -> Option<(u32, String, PathBuf)> {
                    let pid = (*spawned.pid.lock().ok()?)?;
                    let (id, rootfs) = ids.lock().ok()?.clone()?;
                    Some((pid, id, rootfs))
                };
                // Wait for the spawn, then for the run's first process, then for `running`.
                let (outer, id, rootfs) = loop {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(x) = started() {
                        break x;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                let holder = loop {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(h) = descendants(outer).first().and_then(|p| ProcessId::of(*p)) {
                        break h;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                let handle = RunningHandle {
                    id,
                    dir: spec.dir.to_owned(),
                    runtime: self.runtime.name(),
                    holder,
                    rootfs,
                    platform: spec.platform.to_string(),
                };
                let mut pause = Duration::from_millis(10);
                while !done.load(Ordering::Relaxed) {
                    if self.status(&handle).is_ok_and(|s| s.status == "running") {
                        on_running(&handle);
                        return;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            });
            let out = self.run_inner(spec, on_output, cancel, Some(&on_spawn), Some(&on_prepared));
            done.store(true, Ordering::Relaxed);
            out
        })
    }

    fn control(&self, handle: &RunningHandle) -> Result<Command, SandboxError> {
        if handle.runtime != self.runtime.name() {
            return Err(SandboxError::Runtime {
                runtime: self.runtime.name(),
                message: format!(
                    "the container {} was started with {}; use that runtime (--runtime {}) to enter it",
                    handle.id, handle.runtime, handle.runtime
                ),
            });
        }
        if !handle.is_alive() {
            return Err(SandboxError::NotRunning {
                id: handle.id.clone(),
            });
        }
        self.runtime.control(handle, handle.needs_user_namespace())
    }

    /// What the runtime says about the container (`running`, …).
    pub fn status(&self, handle: &RunningHandle) -> Result<ContainerStatus, SandboxError> {
        let mut cmd = self.control(handle)?;
        cmd.args(["state", &handle.id]);
        let out = output(cmd, &self.runtime.name())?;
        let v: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| SandboxError::Runtime {
                runtime: self.runtime.name(),
                message: format!("unreadable `state` answer: {e}"),
            })?;
        Ok(ContainerStatus {
            status: v["status"].as_str().unwrap_or("unknown").to_owned(),
        })
    }

    /// Sends `signal` (`TERM`, `KILL`, …) to the container's main process, through the runtime.
    pub fn signal(&self, handle: &RunningHandle, signal: &str) -> Result<(), SandboxError> {
        let mut cmd = self.control(handle)?;
        cmd.args(["kill", &handle.id, signal]);
        output(cmd, &self.runtime.name()).map(|_| ())
    }

    /// Runs a process in the running container and waits for it; its exit code (128 + the
    /// signal when one killed it). Failures of the runtime itself (no such program, a bad
    /// working directory or user) are errors with the runtime's reason, not exit codes.
    pub fn exec(
        &self,
        handle: &RunningHandle,
        exec: &Exec,
        stdio: ExecStdio,
    ) -> Result<i32, SandboxError> {
        if exec.argv.is_empty() {
            return Err(SandboxError::Spec("exec: no command given".into()));
        }
        let mut cmd = self.control(handle)?;
        let log = handle
            .dir
            .join(format!("exec-{}.log", uuid::Uuid::new_v4().simple()));
        // The global flags go before the subcommand.
        cmd.arg(format!("--log={}", log.display()));
        cmd.args(["--log-format=json", "exec"]);
        if exec.tty {
            cmd.arg("--tty");
        }
        if let Some(cwd) = &exec.cwd {
            cmd.arg(format!("--cwd={cwd}"));
        }
        if let Some(user) = exec.user.as_deref().filter(|u| !u.is_empty()) {
            let id = crate::users::resolve(&handle.rootfs, user).map_err(SandboxError::User)?;
            cmd.arg(format!("--user={}:{}", id.uid, id.gid));
            if !id.additional_gids.is_empty() {
                for g in &id.additional_gids {
                    cmd.arg(format!("--additional-gids={g}"));
                }
            }
        }
        for e in &exec.env {
            cmd.arg(format!("--env={e}"));
        }
        cmd.arg(&handle.id);
        cmd.args(&exec.argv);
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let status = cmd.status().map_err(|e| SandboxError::Start {
            what: "nsenter (util-linux)".into(),
            message: e.to_string(),
        });
        let errors = crate::runtime::runtime_errors(&log);
        let _ = std::fs::remove_file(&log);
        let status = status?;
        let code = status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        });
        if code != 0 && !errors.is_empty() {
            return Err(SandboxError::Exec {
                runtime: self.runtime.name(),
                message: errors.join("; "),
            });
        }
        Ok(code)
    }
}

/// Runs a control command and returns its stdout, or the runtime's complaint.
fn output(mut cmd: Command, runtime: &str) -> Result<Vec<u8>, SandboxError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SandboxError::Start {
        what: "nsenter (util-linux)".into(),
        message: e.to_string(),
    })?;
    let mut err = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Some(mut e) = child.stderr.take() {
        let mut o = child.stdout.take();
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Some(o) = o.as_mut() {
                    let _ = o.read_to_end(&mut out);
                }
            });
            let _ = e.read_to_end(&mut err);
        });
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Runtime {
                    runtime: runtime.to_owned(),
                    message: "did not answer within 30 s".into(),
                });
            }
            Err(e) => {
                return Err(SandboxError::Start {
                    what: runtime.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    };
    if !status.success() {
        return Err(SandboxError::Runtime {
            runtime: runtime.to_owned(),
            message: String::from_utf8_lossy(&err).trim().to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_stale_record_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        let reused = ProcessId {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive(), "another start time is another process");
        let rebooted = ProcessId {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert!(!rebooted.is_alive(), "a pid from another boot is gone");
        assert_eq!(ProcessId::of(u32::MAX), None);
    }

    #[test]
    fn signal_handlers_are_read_from_proc() {
        // The test harness installs no SIGTERM handler; `sh` with a trap does.
        assert_eq!(catches_signal(std::process::id(), 15), Some(false));
        let mut child = Command::new("sh")
            .args([
                "-c",
                "trap 'exit 0' TERM; while sleep 1 & wait $!; do :; done",
            ])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while catches_signal(child.id(), 15) != Some(true) {
            assert!(Instant::now() < deadline, "sh never trapped TERM");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(catches_signal(u32::MAX, 15), None);
    }

    #[test]
    fn descendants_are_found_through_proc() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let found = descendants(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(!ns_pids(std::process::id()).is_empty());
    }
}
