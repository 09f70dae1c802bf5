//! Where a dev environment's state lives and what it says: under the repository's
//! `.archway/dev/<env>/`,
//!
//! ```text
//! environment.json            the environment as started (model, file, platform, options)
//! containers/<name>/
//!     launch.json             what the supervisor starts (image, root filesystem, argv, env, mounts)
//!     supervisor.json         the supervisor's pid, start time and boot id (it writes it)
//!     running.json            the sandbox's RunningHandle, once the container runs
//!     exit.json               how the last run ended (the supervisor's record, or `stopped`)
//!     log                     the container's output and the supervisor's messages
//! volumes/<name>/             persistent volumes (kept by `down` unless --volumes)
//! ```
//!
//! Every file is replaced atomically (temporary file + rename). A container's state is read
//! from these records *and* the processes they name: a recorded pid counts only if that very
//! process (same start time, same boot) is alive, so `kill -9` and reboots are seen.

use std::path::{Path, PathBuf};

use anyhow::Context;
use archway_devfile::{Endpoint, Environment};
use archway_sandbox::{ExtraMount, ProcessId, RunningHandle};
use serde::{Deserialize, Serialize};

/// The directory holding every dev environment of the repository at `root`.
pub fn dev_root(root: &Path) -> PathBuf {
    root.join(".archway").join("dev")
}

/// Writes JSON atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    archway_oci::atomic_file::write(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads JSON, `None` when the file is missing (or unreadable: a record being replaced is
/// never half-written, so an unreadable one is treated as absent).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `environment.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvRecord {
    pub name: String,
    /// The file it was loaded from, relative to the repository.
    pub file: String,
    /// The repository on the host.
    pub project: PathBuf,
    pub platform: String,
    /// `onCreate`/`postCreate` commands have run (they run once per environment).
    pub created: bool,
    /// Registry mirrors given to `up` (`REGISTRY=HOST[/PREFIX]`), used again by the next
    /// `up` that gives none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_mirrors: Vec<String>,
    /// OCI runtime chosen with --runtime, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The environment as it was started (commands and events run from this).
    pub environment: Environment,
}

/// A mount, as `launch.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountRecord {
    Bind {
        host: PathBuf,
        target: String,
        #[serde(default)]
        readonly: bool,
    },
    Tmpfs {
        target: String,
    },
}

impl From<&MountRecord> for ExtraMount {
    fn from(m: &MountRecord) -> ExtraMount {
        match m {
            MountRecord::Bind {
                host,
                target,
                readonly,
            } => ExtraMount::Bind {
                host: host.clone(),
                target: target.clone(),
                readonly: *readonly,
            },
            MountRecord::Tmpfs { target } => ExtraMount::Tmpfs {
                target: target.clone(),
            },
        }
    }
}

/// `launch.json`: one container, resolved (images pulled, templates expanded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub container: String,
    pub tools: bool,
    /// Changes exactly when the container must be restarted: the definition's
    /// [`archway_devfile::fingerprint`], the image's digest, the platform, the repository.
    pub fingerprint: String,
    /// The image as the file names it (or `build:NAME` for a built one).
    pub image: String,
    pub image_digest: String,
    pub platform: String,
    /// The build store holding the root filesystem.
    pub store: PathBuf,
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<MountRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Where commands start by default (the project source, or the workspace folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_dir: Option<String>,
    /// Added to the environment of commands run in the container (devcontainer `remoteEnv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_env: Vec<String>,
    /// The user commands run as (devcontainer `remoteUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// `exit.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The main process's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Why the sandbox could not run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stopped by `archway dev stop` (or a restart).
    #[serde(default)]
    pub stopped: bool,
}

/// A container's state, from its records and the processes they name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Its main process runs (host pid when it could be found).
    Running { pid: Option<u32> },
    /// The supervisor is starting it.
    Starting,
    /// Its main process ended on its own (code unknown when the supervisor did not live to
    /// record it: killed, or the machine restarted).
    Exited { code: Option<i32> },
    /// Stopped by `archway dev stop`.
    Stopped,
    /// The sandbox could not run it.
    Failed { error: String },
    /// Never started (or its state was removed).
    Missing,
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            ContainerState::Running { .. } | ContainerState::Starting
        )
    }

    /// `running`, `exited(137)`, …
    pub fn label(&self) -> String {
        match self {
            ContainerState::Running { .. } => "running".into(),
            ContainerState::Starting => "starting".into(),
            ContainerState::Exited { code: Some(c) } => format!("exited({c})"),
            ContainerState::Exited { code: None } => "exited(?)".into(),
            ContainerState::Stopped => "stopped".into(),
            ContainerState::Failed { .. } => "failed".into(),
            ContainerState::Missing => "missing".into(),
        }
    }

    /// The word `--format json` uses.
    pub fn word(&self) -> &'static str {
        match self {
            ContainerState::Running { .. } => "running",
            ContainerState::Starting => "starting",
            ContainerState::Exited { .. } => "exited",
            ContainerState::Stopped => "stopped",
            ContainerState::Failed { .. } => "failed",
            ContainerState::Missing => "missing",
        }
    }
}

/// One environment's directory.
#[derive(Clone, Debug)]
pub struct EnvDir {
    pub dir: PathBuf,
}

impl EnvDir {
    pub fn new(root: &Path, name: &str) -> EnvDir {
        EnvDir {
            dir: dev_root(root).join(name),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join("environment.json")
    }

    pub fn record(&self) -> Option<EnvRecord> {
        read_json(&self.record_path())
    }

    pub fn container(&self, name: &str) -> ContainerDir {
        ContainerDir {
            dir: self.dir.join("containers").join(name),
        }
    }

    /// The containers that have a directory, by name.
    pub fn containers(&self) -> Vec<ContainerDir> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("containers"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.iter().map(|n| self.container(n)).collect()
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// Serialises the commands that change the environment (`up`, `stop`, `down`): an
    /// `flock` on `.lock`, held until the file is dropped; waits (saying so) for another.
    pub fn lock(&self) -> anyhow::Result<std::fs::File> {
        use rustix::fs::{FlockOperation, flock};
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(".lock");
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            eprintln!("waiting for another `archway dev` command on this environment to finish");
            flock(&f, FlockOperation::LockExclusive)
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(f)
    }
}

/// One container's directory.
#[derive(Clone, Debug)]
pub struct ContainerDir {
    pub dir: PathBuf,
}

impl ContainerDir {
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn launch_path(&self) -> PathBuf {
        self.dir.join("launch.json")
    }
    pub fn supervisor_path(&self) -> PathBuf {
        self.dir.join("supervisor.json")
    }
    pub fn running_path(&self) -> PathBuf {
        self.dir.join("running.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn launch(&self) -> Option<LaunchSpec> {
        read_json(&self.launch_path())
    }
    pub fn supervisor(&self) -> Option<ProcessId> {
        read_json(&self.supervisor_path())
    }
    pub fn running(&self) -> Option<RunningHandle> {
        read_json(&self.running_path())
    }
    pub fn exit(&self) -> Option<ExitRecord> {
        read_json(&self.exit_path())
    }

    /// The running handle, if the container runs right now.
    pub fn live_handle(&self) -> Option<RunningHandle> {
        self.running().filter(RunningHandle::is_alive)
    }

    /// What state the container is in: the records, checked against the live processes.
    pub fn state(&self) -> ContainerState {
        let supervisor_alive = self.supervisor().is_some_and(|p| p.is_alive());
        let running = self.running();
        let exit = self.exit();
        if supervisor_alive {
            return match (running, exit) {
                (Some(h), _) if h.is_alive() => ContainerState::Running { pid: h.main_pid() },
                // It ended; the supervisor is writing down how.
                (Some(_), Some(e)) | (None, Some(e)) if e.code.is_some() => {
                    ContainerState::Exited { code: e.code }
                }
                (Some(_), _) => ContainerState::Exited { code: None },
                (None, _) => ContainerState::Starting,
            };
        }
        match exit {
            Some(e) if e.stopped => ContainerState::Stopped,
            Some(ExitRecord {
                error: Some(error), ..
            }) => ContainerState::Failed { error },
            Some(e) => ContainerState::Exited { code: e.code },
            None if self.launch_path().exists() => {
                // The supervisor vanished without a word: killed, or the machine restarted.
                ContainerState::Exited { code: None }
            }
            None => ContainerState::Missing,
        }
    }

    /// The last lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The names of the environments recorded under `root`.
pub fn environments(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dev_root(root))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("environment.json").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, ContainerDir) {
        let t = tempfile::tempdir().unwrap();
        let c = ContainerDir {
            dir: t.path().join("containers/tools"),
        };
        std::fs::create_dir_all(&c.dir).unwrap();
        (t, c)
    }

    fn dead() -> ProcessId {
        let mut me = ProcessId::current().unwrap();
        me.start += 1;
        me
    }

    #[test]
    fn states_follow_the_records_and_the_live_processes() {
        let (_t, c) = dir();
        assert_eq!(c.state(), ContainerState::Missing);
        // A supervisor that is alive and no handle yet: starting.
        write_json(&c.supervisor_path(), &ProcessId::current().unwrap()).unwrap();
        assert_eq!(c.state(), ContainerState::Starting);
        // Recorded as running, but the run's process is gone: not running.
        let handle = RunningHandle {
            id: "x".into(),
            dir: "/nowhere".into(),
            runtime: "runc".into(),
            holder: dead(),
            rootfs: "/".into(),
            platform: "linux/amd64".into(),
        };
        write_json(&c.running_path(), &handle).unwrap();
        assert_eq!(c.state(), ContainerState::Exited { code: None });
        // The supervisor is gone too (kill -9, reboot): exited, code unknown.
        write_json(&c.supervisor_path(), &dead()).unwrap();
        write_json(&c.launch_path(), &serde_json::json!({})).unwrap();
        assert_eq!(c.state(), ContainerState::Exited { code: None });
        write_json(
            &c.exit_path(),
            &ExitRecord {
                code: Some(137),
                error: None,
                stopped: false,
            },
        )
        .unwrap();
        assert_eq!(c.state(), ContainerState::Exited { code: Some(137) });
        assert_eq!(c.state().label(), "exited(137)");
        write_json(
            &c.exit_path(),
            &ExitRecord {
                code: None,
                error: None,
                stopped: true,
            },
        )
        .unwrap();
        assert_eq!(c.state(), ContainerState::Stopped);
    }

    #[test]
    fn mounts_record_as_tagged_objects() {
        let m = MountRecord::Bind {
            host: "/repo".into(),
            target: "/projects/repo".into(),
            readonly: false,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"bind","host":"/repo","target":"/projects/repo","readonly":false}"#
        );
        assert_eq!(
            ExtraMount::from(&MountRecord::Tmpfs {
                target: "/t".into()
            }),
            ExtraMount::Tmpfs {
                target: "/t".into()
            }
        );
    }
}
