//! Starting a prepared bundle with an OCI runtime.
//!
//! A run directory holds `lower` (a symlink to the read-only root filesystem), `upper` and `ovl`
//! (the overlay's upper and work directories), `merged` (the mount point), `bundle/config.json`
//! and `state/` (the runtime's state root, private to this run). The runtime's job is to mount
//! the overlay in a private mount namespace and run the bundle there.
//!
//! The process tree is tied to ours: `setpriv --pdeathsig KILL` kills `unshare` when the thread
//! that started it dies (even on `kill -9` of the builder), `unshare --kill-child` then kills the
//! first process of a new PID namespace, and the kernel kills everything else in that namespace.
//! Mounts vanish with the mount namespace; only the run directory is left, and its owner removes
//! it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::SandboxError;

/// Which OCI runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Crun,
    Runc,
}

impl RuntimeKind {
    pub fn binary(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }
}

/// One run, as the runtime sees it.
pub struct Launch<'a> {
    /// The container id (unique per run).
    pub id: &'a str,
    /// The run directory (layout above).
    pub dir: &'a Path,
    /// Run in a user namespace (overlay with `userxattr`): a new one mapping the caller to
    /// root when [`Launch::map_root`], else the one this process is in already.
    pub rootless: bool,
    /// With `rootless`: create the user namespace (`unshare --user --map-root-user`). Off
    /// when this process is root of a namespace with subordinate ids already.
    pub map_root: bool,
    pub timeout: Option<Duration>,
    /// Set by someone else to stop the run now (a canceled CI job).
    pub cancel: Option<&'a AtomicBool>,
    /// Told the process id of the runtime's outermost process (`unshare`) once it is spawned,
    /// so the caller can find the run's namespaces (see [`crate::running`]).
    pub on_spawn: Option<&'a (dyn Fn(u32) + Sync)>,
}

impl std::fmt::Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("rootless", &self.rootless)
            .field("map_root", &self.map_root)
            .field("timeout", &self.timeout)
            .field("cancel", &self.cancel)
            .field("on_spawn", &self.on_spawn.is_some())
            .finish()
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    TimedOut,
    /// Stopped through [`Launch::cancel`].
    Canceled,
}

/// Something that can run a prepared bundle (the real OCI runtimes, or a recording fake).
pub trait Runtime: Send + Sync + std::fmt::Debug {
    fn name(&self) -> String;
    /// Run it; `output` receives the process's stdout and stderr as they arrive.
    fn run(
        &self,
        launch: &Launch<'_>,
        output: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<Exit, SandboxError>;

    /// A command that runs this runtime inside a running container's namespaces, against its
    /// state directory: the caller appends a subcommand (`exec …`, `state ID`, `kill ID SIG`).
    /// `enter_user_namespace`: join the run's user namespace first (a rootless run, entered
    /// from outside it). Runtimes that cannot be entered say so.
    fn control(
        &self,
        running: &crate::running::RunningHandle,
        enter_user_namespace: bool,
    ) -> Result<Command, SandboxError> {
        let _ = (running, enter_user_namespace);
        Err(SandboxError::Runtime {
            runtime: self.name(),
            message: "this runtime cannot enter a running container".into(),
        })
    }
}

/// crun or runc, started through `unshare`.
#[derive(Clone, Debug)]
pub struct OciRuntime {
    pub kind: RuntimeKind,
    pub binary: PathBuf,
}

/// The overlay mount options (redirect_dir and metacopy off, so the upper directory holds whole
/// files and real directories that can be read back as a layer).
pub fn overlay_options(rootless: bool) -> String {
    // In a user namespace `userxattr` already turns both off (and refuses them as options).
    if rootless {
        "userxattr,lowerdir=lower,upperdir=upper,workdir=ovl".into()
    } else {
        "lowerdir=lower,upperdir=upper,workdir=ovl,redirect_dir=off,metacopy=off".into()
    }
}

impl OciRuntime {
    /// The command line for a run (exposed for tests and `--debug` output).
    pub fn command(&self, launch: &Launch<'_>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "unshare"]);
        if launch.rootless && launch.map_root {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
        ]);
        // `sh` stays the namespace's first process (and reaps the runtime's leftovers) instead of
        // exec'ing the runtime, which then cleans up its cgroups without `EBUSY` warnings.
        cmd.args([
            "sh",
            "-ec",
            r#"mount -t overlay overlay -o "$1" merged; : > mounted; shift; "$@""#,
            "sh",
            &overlay_options(launch.rootless),
        ]);
        cmd.arg(&self.binary);
        if self.kind == RuntimeKind::Crun {
            cmd.arg("--cgroup-manager=disabled");
        }
        cmd.args([
            "--log=runtime.log",
            "--log-format=json",
            "--root=state",
            "run",
            "--bundle=bundle",
            launch.id,
        ]);
        cmd.current_dir(launch.dir);
        cmd
    }

    /// The command line that enters a running container (see [`Runtime::control`]): `nsenter`
    /// into the namespaces of the run's first process — its user namespace when rootless, its
    /// mount namespace (where the overlay and the runtime's `/proc` are) and its PID namespace
    /// (where the runtime's recorded pids mean something) — then the runtime with the run's
    /// state directory.
    pub fn control_command(
        &self,
        running: &crate::running::RunningHandle,
        enter_user_namespace: bool,
    ) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", running.holder.pid));
        if enter_user_namespace {
            // Keep our own ids: the rootless map has no room for setgroups/setuid(0).
            cmd.args(["--user", "--preserve-credentials"]);
        }
        cmd.args(["--mount", "--pid", "--"]);
        cmd.arg(&self.binary);
        if self.kind == RuntimeKind::Crun {
            cmd.arg("--cgroup-manager=disabled");
        }
        cmd.arg(format!("--root={}", running.dir.join("state").display()));
        cmd
    }
}

/// Errors the runtime itself logged (not the container's output).
pub(crate) fn runtime_errors(log: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect()
}

impl Runtime for OciRuntime {
    fn name(&self) -> String {
        self.kind.binary().to_owned()
    }

    fn run(
        &self,
        launch: &Launch<'_>,
        output: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<Exit, SandboxError> {
        let mut cmd = self.command(launch);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| SandboxError::Start {
            what: "setpriv/unshare (util-linux)".into(),
            message: e.to_string(),
        })?;
        let pid = child.id();
        if let Some(f) = launch.on_spawn {
            f(pid);
        }
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let status = std::thread::scope(|s| {
            let pump = |r: &mut dyn Read| {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output(&buf[..n]);
                }
            };
            if let Some(o) = out.as_mut() {
                s.spawn(move || pump(o));
            }
            if let Some(e) = err.as_mut() {
                s.spawn(move || pump(e));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = tx.send(child.wait());
            });
            // Wait in short slices so a cancel is seen within 100 ms.
            let started = std::time::Instant::now();
            loop {
                let slice = match launch.timeout {
                    Some(t) => match t.checked_sub(started.elapsed()) {
                        Some(left) => left.min(Duration::from_millis(100)),
                        None => Duration::ZERO,
                    },
                    None => Duration::from_millis(100),
                };
                match rx.recv_timeout(slice) {
                    Ok(r) => break r.map(Ended::Exited),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        break Err(std::io::Error::other("the runtime's waiter vanished"));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
                let canceled = launch.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                let timed_out = launch.timeout.is_some_and(|t| started.elapsed() >= t);
                if canceled || timed_out {
                    kill_group(pid);
                    break rx
                        .recv()
                        .map_err(|e| std::io::Error::other(e.to_string()))
                        .and_then(|r| r)
                        .map(|_| {
                            if canceled {
                                Ended::Canceled
                            } else {
                                Ended::TimedOut
                            }
                        });
                }
            }
        })
        .map_err(|e| SandboxError::Start {
            what: self.name(),
            message: e.to_string(),
        })?;
        let status = match status {
            Ended::Exited(s) => s,
            Ended::TimedOut => return Ok(Exit::TimedOut),
            Ended::Canceled => return Ok(Exit::Canceled),
        };
        let code = status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        });
        if code != 0 {
            let errors = runtime_errors(&launch.dir.join("runtime.log"));
            if !errors.is_empty() {
                return Err(SandboxError::Runtime {
                    runtime: self.name(),
                    message: errors.join("; "),
                });
            }
            if !launch.dir.join("mounted").exists() {
                return Err(SandboxError::Runtime {
                    runtime: self.name(),
                    message: format!(
                        "mounting the overlay root filesystem failed (exit {code}); the kernel's reason is in the output above"
                    ),
                });
            }
        }
        Ok(Exit::Code(code))
    }

    fn control(
        &self,
        running: &crate::running::RunningHandle,
        enter_user_namespace: bool,
    ) -> Result<Command, SandboxError> {
        Ok(self.control_command(running, enter_user_namespace))
    }
}

/// How waiting for the runtime ended.
enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Canceled,
}

fn kill_group(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// A fake that records each launch's `config.json` and lets a test act as the container (write
/// into `upper`, print output, choose the exit code).
#[derive(Default)]
pub struct RecordingRuntime {
    pub launches: Mutex<Vec<RecordedLaunch>>,
    pub behaviour: Option<Behaviour>,
}

impl std::fmt::Debug for RecordingRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingRuntime")
            .field("launches", &self.launches)
            .finish_non_exhaustive()
    }
}

/// What the fake does as the container: gets the upper directory, the config and the output.
pub type Behaviour =
    Box<dyn Fn(&Path, &serde_json::Value, &(dyn Fn(&[u8]) + Sync)) -> Exit + Send + Sync>;

/// What the fake saw.
#[derive(Clone, Debug)]
pub struct RecordedLaunch {
    pub id: String,
    pub rootless: bool,
    pub timeout: Option<Duration>,
    pub config: serde_json::Value,
    /// Where `lower` pointed.
    pub lower: PathBuf,
}

impl Runtime for RecordingRuntime {
    fn name(&self) -> String {
        "recording".into()
    }

    fn run(
        &self,
        launch: &Launch<'_>,
        output: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<Exit, SandboxError> {
        let text = std::fs::read_to_string(launch.dir.join("bundle/config.json"))
            .map_err(|e| SandboxError::Spec(e.to_string()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SandboxError::Spec(e.to_string()))?;
        let lower = std::fs::read_link(launch.dir.join("lower"))
            .map_err(|e| SandboxError::Spec(e.to_string()))?;
        let exit = match &self.behaviour {
            Some(b) => b(&launch.dir.join("upper"), &config, output),
            None => Exit::Code(0),
        };
        self.launches
            .lock()
            .map_err(|_| SandboxError::Spec("poisoned".into()))?
            .push(RecordedLaunch {
                id: launch.id.to_owned(),
                rootless: launch.rootless,
                timeout: launch.timeout,
                config,
                lower,
            });
        Ok(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_ties_the_tree_to_the_caller() {
        let rt = OciRuntime {
            kind: RuntimeKind::Crun,
            binary: "/usr/bin/crun".into(),
        };
        let cmd = rt.command(&Launch {
            id: "archway-1",
            dir: Path::new("/w/run1"),
            rootless: true,
            map_root: true,
            timeout: None,
            cancel: None,
            on_spawn: None,
        });
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "setpriv");
        assert_eq!(&args[..4], ["--pdeathsig", "KILL", "--", "unshare"]);
        for want in [
            "--user",
            "--map-root-user",
            "--pid",
            "--kill-child",
            "--mount-proc",
            "--cgroup-manager=disabled",
            "--bundle=bundle",
            "archway-1",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        assert!(
            args.iter()
                .any(|a| a.starts_with("userxattr,lowerdir=lower"))
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/w/run1")));

        let rt = OciRuntime {
            kind: RuntimeKind::Runc,
            binary: "/usr/sbin/runc".into(),
        };
        let cmd = rt.command(&Launch {
            id: "x",
            dir: Path::new("/w"),
            rootless: false,
            map_root: false,
            timeout: None,
            cancel: None,
            on_spawn: None,
        });
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            !args
                .iter()
                .any(|a| a == "--user" || a == "--cgroup-manager=disabled")
        );
        assert!(args.iter().any(|a| a.starts_with("lowerdir=lower")));
    }

    #[test]
    fn control_enters_the_runs_namespaces_then_runs_the_runtime_on_its_state() {
        let handle = crate::running::RunningHandle {
            id: "archway-1".into(),
            dir: "/w/run1".into(),
            runtime: "crun".into(),
            holder: crate::running::ProcessId {
                pid: 4242,
                start: 1,
                boot_id: "b".into(),
            },
            rootfs: "/snap".into(),
            platform: "linux/amd64".into(),
        };
        let rt = OciRuntime {
            kind: RuntimeKind::Crun,
            binary: "/usr/bin/crun".into(),
        };
        let args = |cmd: &Command| -> Vec<String> {
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let cmd = rt.control_command(&handle, true);
        assert_eq!(cmd.get_program(), "nsenter");
        assert_eq!(
            args(&cmd),
            [
                "--target=4242",
                "--user",
                "--preserve-credentials",
                "--mount",
                "--pid",
                "--",
                "/usr/bin/crun",
                "--cgroup-manager=disabled",
                "--root=/w/run1/state"
            ]
        );
        let rt = OciRuntime {
            kind: RuntimeKind::Runc,
            binary: "/usr/sbin/runc".into(),
        };
        assert_eq!(
            args(&rt.control_command(&handle, false)),
            [
                "--target=4242",
                "--mount",
                "--pid",
                "--",
                "/usr/sbin/runc",
                "--root=/w/run1/state"
            ]
        );
    }

    #[test]
    fn runtime_log_errors() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("runtime.log");
        std::fs::write(&log, "{\"level\":\"warning\",\"msg\":\"meh\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}\nnot json\n").unwrap();
        assert_eq!(
            runtime_errors(&log),
            ["exec: \"nope\": executable file not found in $PATH"]
        );
        assert!(runtime_errors(&d.path().join("missing")).is_empty());
    }
}
