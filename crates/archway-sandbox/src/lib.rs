//! Runs one process inside an image's root filesystem, the way a build step or a CI job needs:
//! an overlay over a read-only snapshot (so the snapshot is reused and the changes can be read
//! back as a layer), an OCI runtime (crun or runc) in private namespaces, the image's own users,
//! bind/tmpfs mounts, no network or the host's, a time limit, output as it arrives, and qemu-user
//! for foreign architectures. As root or rootless (a user namespace that maps the caller to root).
//! A run can also be long-lived and entered by other processes while it goes on (see
//! [`running`]: `exec`, status, signals), as a dev environment's containers are.

pub mod binfmt;
pub mod changes;
pub mod doctor;
pub mod running;
pub mod runtime;
pub mod spec;
pub mod userns;
pub mod users;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archway_oci::Platform;
use archway_oci::layer::LayerEntry;

pub use binfmt::Emulation;
pub use running::{ContainerStatus, Exec, ExecStdio, ProcessId, RunningHandle};
pub use runtime::{
    Exit, Launch, OciRuntime, RecordedLaunch, RecordingRuntime, Runtime, RuntimeKind,
};
pub use spec::ExtraMount;

/// What went wrong starting or running a sandbox (not the process's own failure: that is an
/// [`Exit`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no OCI runtime: {0}")]
    NoRuntime(String),
    #[error("cannot run {platform} binaries on this host: {reason}\n  to enable it: {fix}")]
    Emulation {
        platform: String,
        reason: String,
        fix: String,
    },
    #[error("{0}")]
    User(String),
    #[error("building the runtime configuration: {0}")]
    Spec(String),
    #[error("starting {what}: {message}")]
    Start { what: String, message: String },
    #[error("{runtime} failed: {message}")]
    Runtime { runtime: String, message: String },
    /// The run a [`RunningHandle`] names has ended.
    #[error("container {id} is not running")]
    NotRunning { id: String },
    /// The runtime could not start a process in a running container (no such program, bad
    /// working directory or user).
    #[error("{runtime} could not run the command: {message}")]
    Exec { runtime: String, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// The process's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with only loopback.
    None,
    /// The host's network (and its `/etc/resolv.conf`).
    Host,
}

/// One process to run.
#[derive(Clone, Debug)]
pub struct RunSpec<'a> {
    pub platform: &'a Platform,
    /// The root filesystem; never written (changes land in the run directory).
    pub rootfs: &'a Path,
    /// An empty directory owned by the caller for this run (removed by the caller).
    pub dir: &'a Path,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `USER` syntax: `name`, `uid`, `name:group`, `uid:gid`; empty is root.
    pub user: String,
    pub mounts: Vec<ExtraMount>,
    pub network: Network,
    pub timeout: Option<Duration>,
    /// Read back what the process changed.
    pub collect_changes: bool,
}

/// How it went.
#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    /// The last 64 KiB of output (for error messages).
    pub output_tail: String,
    /// What changed, as layer entries (file entries point into the run directory).
    pub changes: BTreeMap<String, LayerEntry>,
}

const TAIL: usize = 64 * 1024;

/// Told the container id and the canonical root filesystem just before the runtime starts.
type OnPrepared<'a> = dyn Fn(&str, &Path) + Sync + 'a;
const HOSTNAME: &str = "archway";

/// Runs processes through one runtime.
#[derive(Clone, Debug)]
pub struct Sandbox {
    runtime: Arc<dyn Runtime>,
    rootless: bool,
    /// Rootless by a namespace of our own (`unshare --map-root-user`); off when this process
    /// is already root of a user namespace (subordinate ids, or a container).
    map_root: bool,
    binfmt_dir: PathBuf,
    host: Platform,
}

impl Sandbox {
    /// A sandbox over `runtime`; rootless when we are not root, or root only of a user
    /// namespace (then runs stay in that namespace: with subordinate ids it maps many users).
    pub fn new(runtime: Arc<dyn Runtime>) -> Sandbox {
        let root = rustix::process::geteuid().is_root();
        Sandbox {
            runtime,
            rootless: !root || userns::in_user_namespace(),
            map_root: !root,
            binfmt_dir: PathBuf::from(binfmt::BINFMT_DIR),
            host: Platform::host(),
        }
    }

    /// The best runtime on this host (see [`doctor::choose_runtime`]), or `name` (crun, runc or
    /// a path) when given.
    pub fn detect(name: Option<&str>) -> Result<Sandbox, SandboxError> {
        Ok(Sandbox::new(Arc::new(doctor::choose_runtime(name)?)))
    }

    pub fn with_rootless(mut self, rootless: bool) -> Sandbox {
        self.rootless = rootless;
        self.map_root = rootless;
        self
    }

    pub fn with_binfmt_dir(mut self, dir: impl Into<PathBuf>) -> Sandbox {
        self.binfmt_dir = dir.into();
        self
    }

    pub fn rootless(&self) -> bool {
        self.rootless
    }

    pub fn runtime_name(&self) -> String {
        self.runtime.name()
    }

    /// Fail early (before any work) when `platform` cannot run here.
    pub fn check_platform(&self, platform: &Platform) -> Result<(), SandboxError> {
        match binfmt::emulation(&self.binfmt_dir, &self.host, platform) {
            Emulation::Missing { reason, fix } => Err(SandboxError::Emulation {
                platform: platform.to_string(),
                reason,
                fix,
            }),
            _ => Ok(()),
        }
    }

    /// Run one process; `on_output` receives each line of its stdout and stderr.
    pub fn run(
        &self,
        spec: &RunSpec<'_>,
        on_output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, SandboxError> {
        self.run_cancellable(spec, on_output, None)
    }

    /// [`Sandbox::run`], stopped (with [`Exit::Canceled`]) within 100 ms of `cancel` being
    /// set. Blocking: call it from a blocking thread.
    pub fn run_cancellable(
        &self,
        spec: &RunSpec<'_>,
        on_output: &(dyn Fn(&str) + Sync),
        cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Outcome, SandboxError> {
        self.run_inner(spec, on_output, cancel, None, None)
    }

    /// The run itself; `on_spawn` gets the runtime's outermost pid, `on_prepared` the
    /// container id and the canonical root filesystem before the runtime starts.
    fn run_inner(
        &self,
        spec: &RunSpec<'_>,
        on_output: &(dyn Fn(&str) + Sync),
        cancel: Option<&std::sync::atomic::AtomicBool>,
        on_spawn: Option<&(dyn Fn(u32) + Sync)>,
        on_prepared: Option<&OnPrepared<'_>>,
    ) -> Result<Outcome, SandboxError> {
        self.check_platform(spec.platform)?;
        let identity = users::resolve(spec.rootfs, &spec.user).map_err(SandboxError::User)?;
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", identity.home));
        }
        let dir = spec.dir;
        for d in ["upper", "ovl", "merged", "state", "bundle"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io(dir.join(d).display().to_string()))?;
        }
        let rootfs =
            std::fs::canonicalize(spec.rootfs).map_err(io(spec.rootfs.display().to_string()))?;
        std::os::unix::fs::symlink(&rootfs, dir.join("lower"))
            .map_err(io(dir.join("lower").display().to_string()))?;
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, spec::hosts_file(HOSTNAME))
            .map_err(io(hosts.display().to_string()))?;
        // Bind sources are resolved here: the runtime would take a relative one from the bundle.
        let mut mounts = Vec::new();
        for m in &spec.mounts {
            mounts.push(match m {
                ExtraMount::Bind {
                    host,
                    target,
                    readonly,
                } => ExtraMount::Bind {
                    host: std::fs::canonicalize(host).map_err(io(format!(
                        "bind mount source {} (for {target})",
                        host.display()
                    )))?,
                    target: target.clone(),
                    readonly: *readonly,
                },
                m => m.clone(),
            });
        }
        // A caller's own `/etc/hosts` (a CI job's service aliases) replaces the generated one.
        if !spec.mounts.iter().any(|m| m.target() == "/etc/hosts") {
            mounts.push(ExtraMount::Bind {
                host: hosts,
                target: "/etc/hosts".into(),
                readonly: true,
            });
        }
        if spec.network == Network::Host && Path::new("/etc/resolv.conf").exists() {
            mounts.push(ExtraMount::Bind {
                host: "/etc/resolv.conf".into(),
                target: "/etc/resolv.conf".into(),
                readonly: true,
            });
        }
        let merged = std::fs::canonicalize(dir.join("merged"))
            .map_err(io(dir.join("merged").display().to_string()))?;
        let config = spec::build(&spec::SpecInput {
            rootfs: &merged,
            argv: &spec.argv,
            env: &env,
            cwd: &spec.cwd,
            identity: &identity,
            network: spec.network,
            rootless: self.rootless,
            hostname: HOSTNAME,
            mounts: &mounts,
        })?;
        config
            .save(dir.join("bundle/config.json"))
            .map_err(|e| SandboxError::Spec(e.to_string()))?;

        let id = format!("archway-{}", uuid::Uuid::new_v4().simple());
        if let Some(f) = on_prepared {
            f(&id, &rootfs);
        }
        let state = Mutex::new(LineState::default());
        let emit = |bytes: &[u8]| {
            let Ok(mut s) = state.lock() else { return };
            s.push(bytes, on_output);
        };
        let exit = self
            .runtime
            .run(
                &Launch {
                    id: &id,
                    dir,
                    rootless: self.rootless,
                    map_root: self.map_root,
                    timeout: spec.timeout,
                    cancel,
                    on_spawn,
                },
                &emit,
            )
            .map_err(|e| match e {
                // The runtime's own complaint is often only in what it printed.
                SandboxError::Runtime { runtime, message } => {
                    let tail = state
                        .lock()
                        .map(|s| String::from_utf8_lossy(&s.tail).trim().to_owned())
                        .unwrap_or_default();
                    let message = if tail.is_empty() || message.contains(&tail) {
                        message
                    } else if tail.contains(&message) {
                        tail
                    } else {
                        format!("{message}\n{tail}")
                    };
                    SandboxError::Runtime { runtime, message }
                }
                e => e,
            })?;
        let output_tail = {
            let mut s = state
                .lock()
                .map_err(|_| SandboxError::Spec("output lock poisoned".into()))?;
            s.flush(on_output);
            String::from_utf8_lossy(&s.tail).into_owned()
        };

        let mut changes = BTreeMap::new();
        if spec.collect_changes {
            let upper = dir.join("upper");
            let mut targets: Vec<String> =
                ["/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            targets.extend(spec.mounts.iter().map(|m| m.target().to_owned()));
            changes::prune_mount_points(&rootfs, &upper, &targets)
                .map_err(io("reading the step's changes"))?;
            let owners = if self.rootless {
                changes::OwnerMap::Rootless {
                    uid: rustix::process::geteuid().as_raw(),
                    gid: rustix::process::getegid().as_raw(),
                }
            } else {
                changes::OwnerMap::Identity
            };
            changes = changes::collect(&upper, owners).map_err(io("reading the step's changes"))?;
        }
        Ok(Outcome {
            exit,
            output_tail,
            changes,
        })
    }
}

/// Splits output into lines and keeps a bounded tail.
#[derive(Default)]
struct LineState {
    partial: Vec<u8>,
    tail: Vec<u8>,
}

impl LineState {
    fn push(&mut self, bytes: &[u8], on_line: &(dyn Fn(&str) + Sync)) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TAIL {
            let cut = self.tail.len() - TAIL;
            self.tail.drain(..cut);
        }
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            on_line(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r'));
        }
        // A long line without a newline is passed on in pieces.
        if self.partial.len() > TAIL {
            on_line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }

    fn flush(&mut self, on_line: &(dyn Fn(&str) + Sync)) {
        if !self.partial.is_empty() {
            on_line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests;
