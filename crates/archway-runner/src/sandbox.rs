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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use archway_api::{ArtifactsDef, FailureReason, JobPayload};
use archway_build::{ImageStore, RegistrySource, Store};
use archway_client::mirror::Mirror;
use archway_client::{Client, ClientOptions, Credentials, Location};
use archway_oci::{Digest, Platform};
use archway_sandbox::{Exit, ExtraMount, Network, RunSpec, Sandbox};

use crate::executor::{ExecResult, Executor, JobIo, LogSink};
use crate::toolbox::{self, Toolbox};

mod services;
use crate::{artifacts, cache, junit};

/// How long `after_script` may run (gitlab-runner's default).
const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs jobs in sandboxes.
#[derive(Debug)]
pub struct SandboxExecutor {
    sandbox: Sandbox,
    store: Arc<Store>,
    /// Source snapshots fetched before, by digest.
    sources_dir: PathBuf,
    /// Job caches (`cache:`), per project and key.
    caches_dir: PathBuf,
    /// Used when a job names no image.
    pub default_image: Option<String>,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The coordinator's registry (`host:port`, default: the job's `CI_REGISTRY`): job images
    /// are pulled from it with the runner's own token (which may pull any repository there),
    /// else with the job token (its own project and public repositories only).
    pub ci_registry: Option<String>,
    pub runner_token: Option<String>,
    /// Pulls of these registries go to their mirrors (`docker.io=HOST/PREFIX`).
    pub mirrors: Vec<Mirror>,
    /// Serve Kaniko, docker, podman, buildah and manifest-tool images with Archway's own
    /// commands (see [`crate::toolbox`]); `None` pulls the real images.
    pub toolbox: Option<Toolbox>,
    cache_root: PathBuf,
    privileged: bool,
}

impl SandboxExecutor {
    pub fn new(sandbox: Sandbox, store: Arc<Store>, cache_dir: &Path) -> SandboxExecutor {
        SandboxExecutor {
            sandbox,
            store,
            sources_dir: cache_dir.join("sources"),
            caches_dir: cache_dir.join("caches"),
            default_image: None,
            insecure_registries: Vec::new(),
            ci_registry: None,
            runner_token: None,
            mirrors: Vec::new(),
            toolbox: None,
            cache_root: cache_dir.to_owned(),
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

    /// The mirror reference to pull instead of `image`, if a mirror serves its registry.
    fn mirrored(&self, image: &str) -> Option<String> {
        match Location::parse(image).ok()? {
            Location::Registry(r) => {
                archway_client::mirror::rewrite(&self.mirrors, &r).map(|m| m.to_string())
            }
            Location::Layout { .. } => None,
        }
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
        let image = job
            .image
            .as_ref()
            .map(|i| expand(&i.name, job))
            .or_else(|| self.default_image.clone());
        // A job with no image (and no default image on this runner) runs in the toolbox: the
        // host's tools, read-only, with docker & co. served by Archway — what a CodeCatalyst
        // build action's runtime image offers.
        let tool = match (&self.toolbox, &image) {
            (Some(t), Some(i)) => toolbox::tool_for_image(i).map(|tool| (t, tool)),
            (Some(t), None) => Some((t, toolbox::Tool::Docker)),
            (None, _) => None,
        };
        if image.is_none() && tool.is_none() {
            io.log.note(
                "the job has no `image:` and this runner has no default image \
                 (archway runner register --default-image IMAGE)",
            );
            return fail(FailureReason::ScriptFailure);
        }
        let image = image.unwrap_or_else(|| "(no image)".to_owned());
        let (rootfs, config, run_platform) = if let Some((tb, tool)) = tool {
            if job.image.is_none() && self.default_image.is_none() {
                io.log.note(&format!(
                    "Archway toolbox: the job names no image; it runs with this host's tools (read-only) and {}",
                    tool.describe()
                ));
            } else {
                io.log.note(&format!(
                    "Archway toolbox: {image} is not pulled; {} (runner option --no-toolbox pulls real images)",
                    tool.describe()
                ));
            }
            match tb.rootfs(&self.cache_root) {
                Ok(r) => (
                    r,
                    archway_oci::config::ImageConfig::default(),
                    Platform::host(),
                ),
                Err(e) => {
                    io.log.note(&format!("cannot prepare the toolbox: {e}"));
                    return fail(FailureReason::RunnerSystemFailure);
                }
            }
        } else {
            let image = match self.mirrored(&image) {
                Some(m) => {
                    io.log.note(&format!(
                        "Pulling {image} for {platform} from the mirror {m}"
                    ));
                    m
                }
                None => {
                    io.log.note(&format!("Pulling {image} for {platform}"));
                    image
                }
            };
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
            (rootfs, config, platform.clone())
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
        // What the checkout had (for `artifacts:untracked`), then earlier jobs' artifacts.
        let checked_out: BTreeSet<String> = if job.artifacts.as_ref().is_some_and(|a| a.untracked) {
            artifacts::list(&src).into_iter().collect()
        } else {
            BTreeSet::new()
        };
        for dep in &job.dependencies {
            io.log.note(&format!(
                "Downloading the artifacts of {} (job {}, {} KiB)",
                dep.job_name,
                dep.job_id,
                dep.size.div_ceil(1024)
            ));
            tokio::select! {
                r = self.download_artifacts(&io, dep.job_id, &src) => if let Err(e) = r {
                    io.log.note(&format!("cannot download the artifacts of {}: {e}", dep.job_name));
                    return fail(FailureReason::ApiFailure);
                },
                () = io.cancel.cancelled() => return ExecResult::Canceled,
            }
        }
        // Caches, restored before the script.
        let mut caches = Vec::new();
        for def in &job.cache {
            match cache::resolve_key(def, &src) {
                Ok(key) => {
                    let path = cache::archive_path(&self.caches_dir, &job.project, &key);
                    if cache::restores(def) {
                        let from = cache::restore_from(
                            &self.caches_dir,
                            &job.project,
                            def,
                            &key,
                            job.var("CACHE_FALLBACK_KEY"),
                            &src,
                        );
                        let dest = src.clone();
                        let restored = tokio::task::spawn_blocking(move || {
                            from.map(|(k, p)| (k, artifacts::unpack(&p, &dest)))
                        })
                        .await;
                        match restored {
                            Ok(Some((k, Ok(())))) if k == key => {
                                io.log.note(&format!("Restored the cache {key}"))
                            }
                            Ok(Some((k, Ok(())))) => io.log.note(&format!(
                                "No cache {key} yet; restored the fallback cache {k}"
                            )),
                            Ok(None) => io.log.note(&format!("No cache {key} yet")),
                            Ok(Some((_, Err(e)))) => io
                                .log
                                .note(&format!("WARNING: cannot restore the cache {key}: {e}")),
                            Err(e) => io
                                .log
                                .note(&format!("WARNING: cannot restore the cache {key}: {e}")),
                        }
                    }
                    caches.push((def.clone(), key, path));
                }
                Err(e) => io
                    .log
                    .note(&format!("WARNING: {e}; this cache is not used")),
            }
        }
        let scripts = io.work_dir.join("scripts");
        let bash = if tool.is_some() {
            Path::new("/usr/bin/bash").exists()
        } else {
            has_bash(&rootfs)
        };
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
        let job_toolbox = match tool {
            Some((tb, t)) => {
                match tb.start(
                    t,
                    &io.work_dir.join("toolbox"),
                    &project_dir,
                    &src,
                    &job.platform,
                ) {
                    Ok(j) => Some(j),
                    Err(e) => {
                        io.log.note(&format!("cannot start the toolbox: {e}"));
                        return fail(FailureReason::RunnerSystemFailure);
                    }
                }
            }
            None => None,
        };
        for e in job_toolbox.iter().flat_map(|j| &j.env) {
            if let Some((k, _)) = e.split_once('=') {
                env.retain(|x| !x.starts_with(&format!("{k}=")));
            }
            env.push(e.clone());
        }
        // `file` variables: the value goes into a file (0600) under `<project dir>.tmp/`, as
        // gitlab-runner writes them, and the variable holds its path.
        let files_dir = io.work_dir.join("file-vars");
        let files_at = format!("{project_dir}.tmp");
        let mut any_file = false;
        for v in &job.variables {
            env.retain(|e| !e.starts_with(&format!("{}=", v.name)));
            if v.file {
                let written = std::fs::create_dir_all(&files_dir).and_then(|()| {
                    use std::io::Write as _;
                    use std::os::unix::fs::OpenOptionsExt as _;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(files_dir.join(&v.name))?
                        .write_all(v.value.as_bytes())
                });
                if let Err(e) = written {
                    io.log
                        .note(&format!("cannot write the file variable {}: {e}", v.name));
                    return fail(FailureReason::RunnerSystemFailure);
                }
                any_file = true;
                env.push(format!("{}={files_at}/{}", v.name, v.name));
            } else {
                env.push(format!("{}={}", v.name, v.value));
            }
        }
        let mut mounts: Vec<ExtraMount> = job_toolbox
            .iter()
            .flat_map(|j| j.mounts.iter().cloned())
            .collect();
        let (services, aliases) = tokio::select! {
            r = self.start_services(job, &io, &platform, tool.is_some()) => match r {
                Ok(x) => x,
                Err(e) => {
                    io.log.note(&e);
                    return fail(FailureReason::ImagePullFailure);
                }
            },
            () = io.cancel.cancelled() => return ExecResult::Canceled,
        };
        if !aliases.is_empty() {
            let hosts = io.work_dir.join("hosts");
            if let Err(e) = std::fs::write(
                &hosts,
                archway_sandbox::spec::hosts_file_with("archway", &aliases),
            ) {
                io.log
                    .note(&format!("cannot write the job's /etc/hosts: {e}"));
                services::stop(services, &io).await;
                return fail(FailureReason::RunnerSystemFailure);
            }
            mounts.push(ExtraMount::Bind {
                host: hosts,
                target: "/etc/hosts".into(),
                readonly: true,
            });
        }
        mounts.extend([
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
        ]);
        if any_file {
            mounts.push(ExtraMount::Bind {
                host: files_dir.clone(),
                target: files_at.clone(),
                readonly: true,
            });
        }
        let user = job
            .image
            .as_ref()
            .and_then(|i| i.user.clone())
            .or_else(|| cfg.user.clone())
            .unwrap_or_default();
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
                &run_platform,
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
        // after_script runs after success, failure and cancelation alike (gitlab-runner 17),
        // in its own shell with its own timeout; a canceled job's after_script gets a fresh
        // stop flag, since the job's is already set.
        if !job.after_script.is_empty() {
            let (status, cancel) = match result {
                ExecResult::Success => ("success", cancel.clone()),
                ExecResult::Canceled => ("canceled", Arc::new(AtomicBool::new(false))),
                _ => ("failed", cancel.clone()),
            };
            io.log.note(&format!("Running after_script (job {status})"));
            let mut env = env;
            env.push(format!("CI_JOB_STATUS={status}"));
            let after = self
                .shell(
                    &run_platform,
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
        services::stop(services, &io).await;
        drop(job_toolbox);
        if result != ExecResult::Canceled {
            for (def, key, path) in caches {
                if cache::saves(&def, result == ExecResult::Success) {
                    self.save_cache(&io, &def, &key, &path, &src).await;
                }
            }
        }
        // JUnit reports are read whatever the outcome (GitLab collects test reports from
        // failed jobs too).
        if let Some(a) = &job.artifacts
            && !a.junit.is_empty()
            && result != ExecResult::Canceled
        {
            let only = ArtifactsDef {
                junit: a.junit.clone(),
                ..ArtifactsDef::default()
            };
            let files = artifacts::select(&src, &only, &BTreeSet::new()).files;
            let (summary, warnings) = junit::summarise(&src, &files);
            for w in warnings {
                io.log
                    .note(&format!("WARNING: artifacts:reports:junit {w}"));
            }
            if files.is_empty() {
                io.log
                    .note("WARNING: artifacts:reports:junit matched no files");
            } else {
                io.log.note(&format!(
                    "Test report: {} tests, {} passed, {} failed, {} errors, {} skipped",
                    summary.total,
                    summary.passed(),
                    summary.failed,
                    summary.errors,
                    summary.skipped
                ));
                if let Ok(mut t) = io.tests.lock() {
                    *t = Some(summary);
                }
            }
        }
        match &job.artifacts {
            Some(a) if result != ExecResult::Canceled => {
                self.keep_artifacts(job, &io, a, &src, &checked_out, result)
                    .await
            }
            _ => result,
        }
    }
}

impl SandboxExecutor {
    /// Saves the cache `key` (its `paths` in the project directory); a failure is a warning.
    async fn save_cache(
        &self,
        io: &JobIo,
        def: &archway_api::CacheDef,
        key: &str,
        path: &Path,
        project: &Path,
    ) {
        let selection_def = ArtifactsDef {
            paths: def.paths.clone(),
            ..ArtifactsDef::default()
        };
        let (project, path) = (project.to_owned(), path.to_owned());
        let r = tokio::task::spawn_blocking(move || {
            let s = artifacts::select(&project, &selection_def, &BTreeSet::new());
            if s.files.is_empty() {
                return Ok((s, 0));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = archway_oci::atomic_file::temp_path_for(&path);
            let size = artifacts::archive(&project, &s.files, &tmp)?;
            archway_oci::atomic_file::commit(&tmp, &path)?;
            Ok::<_, std::io::Error>((s, size))
        })
        .await;
        match r {
            Ok(Ok((s, size))) => {
                for w in &s.warnings {
                    io.log.note(&format!("WARNING: cache: {w}"));
                }
                if s.files.is_empty() {
                    io.log.note(&format!(
                        "WARNING: no files matched the cache paths ({}); the cache {key} is not saved",
                        def.paths.join(", ")
                    ));
                } else {
                    io.log.note(&format!(
                        "Saved the cache {key}: {} files, {} KiB",
                        s.files.len(),
                        size.div_ceil(1024)
                    ));
                }
            }
            Ok(Err(e)) => io
                .log
                .note(&format!("WARNING: cannot save the cache {key}: {e}")),
            Err(e) => io
                .log
                .note(&format!("WARNING: cannot save the cache {key}: {e}")),
        }
    }

    /// Downloads job `job_id`'s artifacts and unpacks them into the project directory.
    async fn download_artifacts(&self, io: &JobIo, job_id: i64, dest: &Path) -> Result<(), String> {
        let tmp = io.work_dir.join(format!("artifacts-of-{job_id}.tar.gz"));
        let mut stream = io
            .api
            .fetch_artifacts(job_id)
            .await
            .map_err(|e| e.to_string())?;
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("downloading: {e}"))?;
            f.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        f.flush().await.map_err(|e| e.to_string())?;
        drop(f);
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || {
            let r = artifacts::unpack(&tmp, &dest).map_err(|e| format!("unpacking: {e}"));
            let _ = std::fs::remove_file(&tmp);
            r
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Keeps the job's artifacts (if `artifacts:when` says so for `result`) and reads its
    /// dotenv reports; returns the job's result, failed if keeping them failed.
    async fn keep_artifacts(
        &self,
        job: &JobPayload,
        io: &JobIo,
        def: &ArtifactsDef,
        project: &Path,
        checked_out: &BTreeSet<String>,
        result: ExecResult,
    ) -> ExecResult {
        let succeeded = result == ExecResult::Success;
        let wanted = match def.when.as_str() {
            "always" => true,
            "on_failure" => !succeeded,
            _ => succeeded,
        };
        if !wanted {
            return result;
        }
        let failed = |reason| {
            if succeeded {
                ExecResult::Failed {
                    exit_code: None,
                    reason,
                }
            } else {
                result.clone()
            }
        };
        io.log.note("Keeping the artifacts");
        let (selection, archive) = {
            let project = project.to_owned();
            let def = def.clone();
            let checked_out = checked_out.clone();
            let out = io.work_dir.join("artifacts.tar.gz");
            let r = tokio::task::spawn_blocking(move || {
                let s = artifacts::select(&project, &def, &checked_out);
                if s.files.is_empty() {
                    return Ok((s, None));
                }
                let size = artifacts::archive(&project, &s.files, &out)?;
                let digest = artifacts::sha256_file(&out)?;
                Ok::<_, std::io::Error>((s, Some((out, size, digest))))
            })
            .await;
            match r {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    io.log.note(&format!("cannot archive the artifacts: {e}"));
                    return failed(FailureReason::RunnerSystemFailure);
                }
                Err(e) => {
                    io.log.note(&format!("cannot archive the artifacts: {e}"));
                    return failed(FailureReason::RunnerSystemFailure);
                }
            }
        };
        for w in &selection.warnings {
            io.log.note(&format!("WARNING: {w}"));
        }
        let Some((path, size, digest)) = archive else {
            io.log.note(&format!(
                "WARNING: no files matched the artifacts' paths ({}); nothing kept",
                def.paths.join(", ")
            ));
            return result;
        };
        if job.max_artifact_bytes > 0 && size > job.max_artifact_bytes {
            io.log.note(&format!(
                "the artifacts are {} MiB, more than the server keeps ({} MiB)",
                size.div_ceil(1024 * 1024),
                job.max_artifact_bytes / (1024 * 1024)
            ));
            return failed(FailureReason::ScriptFailure);
        }
        io.log.note(&format!(
            "Uploading {} files ({} KiB) as {digest}",
            selection.files.len(),
            size.div_ceil(1024)
        ));
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                io.log
                    .note(&format!("cannot read the artifact archive: {e}"));
                return failed(FailureReason::RunnerSystemFailure);
            }
        };
        if let Err(e) = io
            .api
            .upload_artifacts(
                job.attempt_id,
                &digest.to_string(),
                file,
                def.expire_in_secs,
            )
            .await
        {
            io.log.note(&format!("cannot upload the artifacts: {e}"));
            return failed(FailureReason::ApiFailure);
        }
        let _ = tokio::fs::remove_file(&path).await;
        if succeeded && !def.dotenv.is_empty() {
            let mut vars = Vec::new();
            for f in &def.dotenv {
                let p = project.join(f.trim_start_matches("./"));
                if !selection
                    .files
                    .iter()
                    .any(|s| Path::new(s) == Path::new(f.trim_start_matches("./")))
                {
                    io.log
                        .note(&format!("WARNING: the dotenv report {f} was not found"));
                    continue;
                }
                let text = match tokio::fs::read(&p).await {
                    Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                    Err(e) => {
                        io.log
                            .note(&format!("WARNING: cannot read the dotenv report {f}: {e}"));
                        continue;
                    }
                };
                match artifacts::parse_dotenv(f, &text) {
                    Ok(v) => vars.extend(v),
                    Err(e) => {
                        io.log.note(&format!("the dotenv report is invalid: {e}"));
                        return failed(FailureReason::ScriptFailure);
                    }
                }
            }
            if !vars.is_empty() {
                io.log.note(&format!(
                    "dotenv: {} for the jobs after this one",
                    vars.iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if let Ok(mut d) = io.dotenv.lock() {
                *d = vars;
            }
        }
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
