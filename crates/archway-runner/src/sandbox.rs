//! The real executor: a job in an ephemeral sandbox made from its `image:`.
//!
//! 1. The image for the job's platform is pulled through the registry client into the
//!    runner's image store (cached across jobs; the job token authenticates pulls from the
//!    coordinator's own registry) and unpacked once into a read-only snapshot.
//! 2. The pipeline's source snapshot is fetched (cached by digest) and unpacked into the
//!    attempt's directory, mounted at `CI_PROJECT_DIR`.
//! 3. `before_script` + `script` run in one shell that stops at the first failing command
//!    (bash with `pipefail` when the image has bash, else sh), then `after_script` in a shell
//!    of its own whose failure does not fail the job — the way gitlab-runner runs them.
//! 4. The sandbox runs the platform natively or through qemu-user; output streams to the
//!    log as it comes; the job's timeout and cancellation kill the whole process tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use archway_api::{FailureReason, JobPayload};
use archway_build::{ImageStore, RegistrySource, Store};
use archway_client::{Client, ClientOptions, Credentials, Location};
use archway_oci::{Digest, Platform};
use archway_sandbox::{Exit, ExtraMount, Network, RunSpec, Sandbox};

use crate::executor::{ExecResult, Executor, JobIo, LogSink};

/// How long `after_script` may run (gitlab-runner's default).
const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs jobs in sandboxes.
#[derive(Debug)]
pub struct SandboxExecutor {
    sandbox: Sandbox,
    store: Arc<Store>,
    /// Source snapshots fetched before, by digest.
    sources_dir: PathBuf,
    /// Used when a job names no image.
    pub default_image: Option<String>,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The coordinator's registry (`host:port`, default: the job's `CI_REGISTRY`): job images
    /// are pulled from it with the runner's own token (which may pull any repository there),
    /// else with the job token (its own project and public repositories only).
    pub ci_registry: Option<String>,
    pub runner_token: Option<String>,
    privileged: bool,
}

impl SandboxExecutor {
    pub fn new(sandbox: Sandbox, store: Arc<Store>, cache_dir: &Path) -> SandboxExecutor {
        SandboxExecutor {
            sandbox,
            store,
            sources_dir: cache_dir.join("sources"),
            default_image: None,
            insecure_registries: Vec::new(),
            ci_registry: None,
            runner_token: None,
            privileged: rustix::process::geteuid().is_root(),
        }
    }

    fn client(&self, job: &JobPayload, registry: &str) -> Result<Client, String> {
        let mut opts = ClientOptions {
            insecure: self.insecure_registries.clone(),
            ..ClientOptions::default()
        };
        let ci_registry = self
            .ci_registry
            .clone()
            .or_else(|| job.var("CI_REGISTRY").map(str::to_owned));
        if ci_registry.as_deref() == Some(registry) {
            let creds = match &self.runner_token {
                Some(t) => Credentials::password("archway-runner", t),
                None => Credentials::password("gitlab-ci-token", &job.token),
            };
            opts.credentials.insert(registry.to_owned(), creds);
        }
        Client::new(opts).map_err(|e| e.to_string())
    }

    /// Pulls and unpacks the job's image: (root filesystem, image config).
    async fn image(
        &self,
        job: &JobPayload,
        name: &str,
        platform: &Platform,
    ) -> Result<(PathBuf, archway_oci::config::ImageConfig), String> {
        let location = Location::parse(name).map_err(|e| e.to_string())?;
        let registry = match &location {
            Location::Registry(r) => r.registry.clone(),
            _ => String::new(),
        };
        let client = self.client(job, &registry)?;
        let images = ImageStore::new(self.store.clone(), Arc::new(RegistrySource::new(client)))
            .with_privileged(self.privileged);
        let image = images
            .pull(&location, platform)
            .await
            .map_err(|e| archway_oci::error_chain(&e))?;
        let rootfs = images
            .unpack(&image)
            .await
            .map_err(|e| archway_oci::error_chain(&e))?;
        Ok((rootfs, image.config))
    }

    /// Fetches (or reuses) the source snapshot and unpacks it into `dest`.
    async fn checkout(&self, io: &JobIo, digest: &str, dest: &Path) -> Result<(), String> {
        let d: Digest = digest.parse().map_err(|e| format!("source digest: {e}"))?;
        tokio::fs::create_dir_all(&self.sources_dir)
            .await
            .map_err(|e| format!("{}: {e}", self.sources_dir.display()))?;
        let cached = self.sources_dir.join(format!("{}.tar.gz", d.hex()));
        if !cached.exists() {
            let tmp =
                self.sources_dir
                    .join(format!(".{}.{}", d.hex(), uuid::Uuid::new_v4().simple()));
            let mut stream = io
                .api
                .fetch_source(digest)
                .await
                .map_err(|e| e.to_string())?;
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            let mut hasher = archway_oci::digest::Digester::new(d.algorithm());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("downloading the source: {e}"))?;
                hasher.update(&chunk);
                f.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            f.sync_all().await.map_err(|e| e.to_string())?;
            if hasher.finish() != d {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err("the downloaded source does not match its digest".into());
            }
            tokio::fs::rename(&tmp, &cached)
                .await
                .map_err(|e| e.to_string())?;
        }
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
            let f = std::fs::File::open(&cached).map_err(|e| e.to_string())?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
            archive.set_preserve_permissions(true);
            archive.set_overwrite(true);
            // `unpack` refuses entries that would land outside `dest`.
            archive
                .unpack(&dest)
                .map_err(|e| format!("unpacking the source: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    #[allow(clippy::too_many_arguments)]
    async fn shell(
        &self,
        platform: &Platform,
        rootfs: &Path,
        run_dir: PathBuf,
        argv: Vec<String>,
        env: Vec<String>,
        cwd: String,
        user: String,
        mounts: Vec<ExtraMount>,
        timeout: Duration,
        log: Arc<LogSink>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Exit, String> {
        let sandbox = self.sandbox.clone();
        let platform = platform.clone();
        let rootfs = rootfs.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
            let spec = RunSpec {
                platform: &platform,
                rootfs: &rootfs,
                dir: &run_dir,
                argv,
                env,
                cwd,
                user,
                mounts,
                network: Network::Host,
                timeout: Some(timeout),
                collect_changes: false,
            };
            let out = sandbox
                .run_cancellable(
                    &spec,
                    &|line: &str| {
                        let mut l = Vec::with_capacity(line.len() + 1);
                        l.extend_from_slice(line.as_bytes());
                        l.push(b'\n');
                        log.write(&l);
                    },
                    Some(&cancel),
                )
                .map_err(|e| e.to_string());
            let _ = std::fs::remove_dir_all(&run_dir);
            out.map(|o| o.exit)
        })
        .await
        .map_err(|e| format!("the sandbox task failed: {e}"))?
    }
}

/// `$VAR` and `${VAR}` from the job's variables (for `image:` names, as GitLab expands them).
fn expand(s: &str, job: &JobPayload) -> String {
    archway_pipeline::vars::expand(s, &|name| job.var(name).map(str::to_owned))
}

/// The shell script gitlab-runner would run for `commands`: each command echoed (in green,
/// as `$ command`) and run; the first failure ends the script with its status.
pub fn script(commands: &[String], bash: bool) -> String {
    let mut s = String::new();
    if bash {
        s.push_str("set -eo pipefail\n");
    } else {
        s.push_str("set -e\n");
    }
    for c in commands {
        let shown = match c.trim_end().split_once('\n') {
            Some((first, _)) => format!("{first} # collapsed multi-line command"),
            None => c.trim_end().to_owned(),
        };
        s.push_str(&format!(
            "printf '\\033[32;1m$ %s\\033[0;m\\n' {}\n",
            single_quote(&shown)
        ));
        s.push_str(c.trim_end());
        s.push('\n');
    }
    s
}

fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn has_bash(rootfs: &Path) -> bool {
    ["bin/bash", "usr/bin/bash"]
        .iter()
        .any(|p| std::fs::symlink_metadata(rootfs.join(p)).is_ok())
}

#[async_trait]
impl Executor for SandboxExecutor {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn run(&self, job: &JobPayload, io: JobIo) -> ExecResult {
        let fail = |reason| ExecResult::Failed {
            exit_code: None,
            reason,
        };
        let platform: Platform = match job.platform.parse() {
            Ok(p) => p,
            Err(e) => {
                io.log.note(&format!("platform {}: {e}", job.platform));
                return fail(FailureReason::RunnerUnsupported);
            }
        };
        if let Err(e) = self.sandbox.check_platform(&platform) {
            io.log.note(&e.to_string());
            return fail(FailureReason::RunnerUnsupported);
        }
        let Some(image) = job
            .image
            .as_ref()
            .map(|i| expand(&i.name, job))
            .or_else(|| self.default_image.clone())
        else {
            io.log.note(
                "the job has no `image:` and this runner has no default image \
                 (archway runner register --default-image IMAGE)",
            );
            return fail(FailureReason::ScriptFailure);
        };
        io.log.note(&format!("Pulling {image} for {platform}"));
        let (rootfs, config) = tokio::select! {
            r = self.image(job, &image, &platform) => match r {
                Ok(x) => x,
                Err(e) => {
                    io.log.note(&format!("cannot pull {image}: {e}"));
                    return fail(FailureReason::ImagePullFailure);
                }
            },
            () = io.cancel.cancelled() => return ExecResult::Canceled,
        };
        let project_dir = job
            .var("CI_PROJECT_DIR")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("/builds/{}", job.project));
        let src = io.work_dir.join("src");
        if let Some(digest) = &job.source {
            io.log
                .note(&format!("Checking out the source at {project_dir}"));
            if let Err(e) = self.checkout(&io, digest, &src).await {
                io.log.note(&format!("cannot check out the source: {e}"));
                return fail(FailureReason::RunnerSystemFailure);
            }
        } else if let Err(e) = std::fs::create_dir_all(&src) {
            io.log
                .note(&format!("cannot create the project directory: {e}"));
            return fail(FailureReason::RunnerSystemFailure);
        }
        let scripts = io.work_dir.join("scripts");
        let bash = has_bash(&rootfs);
        let shell = if bash { "bash" } else { "sh" };
        let main: Vec<String> = job
            .before_script
            .iter()
            .chain(&job.script)
            .cloned()
            .collect();
        let written = std::fs::create_dir_all(&scripts)
            .and_then(|()| std::fs::write(scripts.join("script.sh"), script(&main, bash)))
            .and_then(|()| {
                std::fs::write(
                    scripts.join("after_script.sh"),
                    script(&job.after_script, bash),
                )
            });
        if let Err(e) = written {
            io.log.note(&format!("cannot write the job script: {e}"));
            return fail(FailureReason::RunnerSystemFailure);
        }
        let cfg = config.config.clone().unwrap_or_default();
        let mut env: Vec<String> = cfg.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        for v in &job.variables {
            env.retain(|e| !e.starts_with(&format!("{}=", v.name)));
            env.push(format!("{}={}", v.name, v.value));
        }
        let mounts = vec![
            ExtraMount::Bind {
                host: src.clone(),
                target: project_dir.clone(),
                readonly: false,
            },
            ExtraMount::Bind {
                host: scripts.clone(),
                target: "/archway".into(),
                readonly: true,
            },
        ];
        let user = cfg.user.clone().unwrap_or_default();
        let cancel = Arc::new(AtomicBool::new(false));
        let watcher = {
            let cancel = cancel.clone();
            let token = io.cancel.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                cancel.store(true, Ordering::SeqCst);
            })
        };
        let exit = self
            .shell(
                &platform,
                &rootfs,
                io.work_dir.join("run"),
                vec![shell.into(), "/archway/script.sh".into()],
                env.clone(),
                project_dir.clone(),
                user.clone(),
                mounts.clone(),
                Duration::from_secs(job.timeout_secs.max(1)),
                io.log.clone(),
                cancel.clone(),
            )
            .await;
        let result = match exit {
            Ok(Exit::Code(0)) => ExecResult::Success,
            Ok(Exit::Code(c)) => ExecResult::Failed {
                exit_code: Some(c),
                reason: FailureReason::ScriptFailure,
            },
            Ok(Exit::TimedOut) => {
                io.log.note(&format!(
                    "the job timed out after {}",
                    humantime::format_duration(Duration::from_secs(job.timeout_secs))
                ));
                fail(FailureReason::JobExecutionTimeout)
            }
            Ok(Exit::Canceled) => ExecResult::Canceled,
            Err(e) => {
                io.log.note(&format!("the sandbox failed: {e}"));
                fail(FailureReason::RunnerSystemFailure)
            }
        };
        if !job.after_script.is_empty() && result != ExecResult::Canceled {
            io.log.note("Running after_script");
            let status = if result == ExecResult::Success {
                "success"
            } else {
                "failed"
            };
            let mut env = env;
            env.push(format!("CI_JOB_STATUS={status}"));
            let after = self
                .shell(
                    &platform,
                    &rootfs,
                    io.work_dir.join("run-after"),
                    vec![shell.into(), "/archway/after_script.sh".into()],
                    env,
                    project_dir,
                    user,
                    mounts,
                    AFTER_SCRIPT_TIMEOUT,
                    io.log.clone(),
                    cancel.clone(),
                )
                .await;
            match after {
                Ok(Exit::Code(0)) => {}
                Ok(e) => io.log.note(&format!(
                    "after_script failed ({e:?}); this does not fail the job"
                )),
                Err(e) => io.log.note(&format!("after_script could not run: {e}")),
            }
        }
        watcher.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_echo_each_command_and_stop_at_the_first_failure() {
        let s = script(
            &["echo 'hi there'".into(), "make\nmake install".into()],
            false,
        );
        assert!(s.starts_with("set -e\n"), "{s}");
        assert!(
            s.contains(r#"printf '\033[32;1m$ %s\033[0;m\n' 'echo '\''hi there'\'''"#),
            "{s}"
        );
        assert!(s.contains("make # collapsed multi-line command"), "{s}");
        assert!(s.contains("\nmake\nmake install\n"), "{s}");
        assert!(script(&[], true).starts_with("set -eo pipefail\n"));
    }

    #[test]
    fn a_generated_script_runs_as_gitlab_runner_runs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(
            &path,
            script(
                &["echo one".into(), "false".into(), "echo never".into()],
                false,
            ),
        )
        .unwrap();
        let out = std::process::Command::new("sh")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1));
        assert!(text.contains("$ echo one"), "{text}");
        assert!(text.contains("one\n"), "{text}");
        assert!(!text.contains("never\n"), "{text}");
    }
}
