//! `archway pipeline run|list|show|cancel|retry` and `archway job log|show|retry|cancel|play`:
//! the commands that talk to an `archway server` (`pipeline run` starts one in this process
//! when none is configured: see [`super::local`]).
//!
//! The server and token come from `--server`/`--token`, else `ARCHWAY_SERVER`/`ARCHWAY_TOKEN`,
//! else the file `archway server login` writes (~/.config/archway/client.json).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use archway_api::{
    ApiClient, JobDefinition, JobStatus, JobView, PipelineStatus, PipelineView, SubmitPipeline,
};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::common::{Format, print_json};
use super::pipeline::{ContextArgs, discover, plan_file, print_diagnostics};

/// Where the server is, as saved by `archway server login`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    pub server: String,
    pub token: String,
}

impl ClientConfig {
    fn path() -> PathBuf {
        std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("archway")
            .join("client.json")
    }

    /// Saves the file with mode 0600; returns where.
    pub fn save(server: &str, token: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = archway_oci::atomic_file::temp_path_for(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(
            serde_json::to_string_pretty(&ClientConfig {
                server: server.to_owned(),
                token: token.to_owned(),
            })?
            .as_bytes(),
        )?;
        f.sync_all()?;
        archway_oci::atomic_file::commit(&tmp, &path)?;
        Ok(path)
    }

    fn load() -> Option<ClientConfig> {
        let text = std::fs::read_to_string(Self::path()).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// How to reach the server.
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// The Archway server (default: ARCHWAY_SERVER, else `archway server login`'s).
    #[arg(long, env = "ARCHWAY_SERVER", value_name = "URL")]
    server: Option<String>,
    /// An admin token (default: ARCHWAY_TOKEN, else `archway server login`'s).
    #[arg(
        long,
        env = "ARCHWAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

impl ServerArgs {
    /// Whether a server is named (flag, environment or saved login).
    pub fn configured(&self) -> bool {
        self.server.is_some() || ClientConfig::load().is_some()
    }

    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let saved = ClientConfig::load();
        let server = self
            .server
            .clone()
            .or_else(|| saved.as_ref().map(|c| c.server.clone()))
            .context(
                "no Archway server configured: pass --server URL, set ARCHWAY_SERVER, or run \
                 `archway server login URL --token-stdin`",
            )?;
        let token = self
            .token
            .clone()
            .or_else(|| {
                saved
                    .as_ref()
                    .filter(|c| c.server == server)
                    .map(|c| c.token.clone())
            })
            .context("no token for the server: pass --token, set ARCHWAY_TOKEN, or run `archway server login`")?;
        Ok(ApiClient::new(&server, Some(token))?)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Run the pipeline of this repository: on this machine, or on an Archway server.
    ///
    /// Plans the pipeline file here (refusing it with positioned errors if `archway lint`
    /// would), then follows it: a line per job state change, the log tail of a failed job, a
    /// final table (job, stage, runner and platform, time, result). Exits 0 only if the
    /// pipeline passed.
    ///
    /// With no server configured (or with --local) the whole system runs in this process: a
    /// coordinator and the built-in registry under .archway/ (kept between runs; the registry
    /// is the jobs' CI_REGISTRY), and one runner per platform this host can run, so a
    /// `tags: [arm64]` job runs on arm64 (through qemu-user on an x86_64 host). The working
    /// tree runs, uncommitted changes included.
    ///
    /// With a server (--server, ARCHWAY_SERVER or `archway server login`) it uploads a
    /// snapshot of the source (HEAD, or the working tree with --dirty) and submits the job
    /// graph to the server's runners.
    ///
    /// Examples:
    ///   archway pipeline run
    ///   archway pipeline run --job test --platform linux/arm64
    ///   archway pipeline run --registry-mirror docker.io=127.0.0.1:5000/hub
    ///   archway pipeline run --server http://127.0.0.1:8700
    ///   archway pipeline run .gitlab-ci.yml --var DEPLOY=1 --masked-var API_KEY=$API_KEY
    ///   archway pipeline run --dirty --detach --format json --server http://127.0.0.1:8700
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// List recent pipelines.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a pipeline and its jobs.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a pipeline: jobs not started are canceled, running ones are stopped.
    Cancel {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a finished pipeline's failed and canceled jobs again.
    Retry {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file (default: .archway-ci.yml, .gitlab-ci.yml or the CodeCatalyst workflow).
    file: Option<PathBuf>,
    /// Pipeline variables, branch and tag as for `archway plan`.
    #[command(flatten)]
    context: ContextArgs,
    /// A secret variable (repeatable), KEY=VALUE: given to the jobs, shown as [MASKED] in
    /// logs, never stored in the plan. Values must be at least 8 characters, as in GitLab.
    #[arg(long = "masked-var", value_name = "KEY=VALUE")]
    masked: Vec<String>,
    /// A variable of type `file` (repeatable), as GitLab's: jobs get the path of a file
    /// holding the value. `KEY=VALUE`, `KEY=@PATH` (the value read from a local file), or
    /// `KEY` alone to make a variable given otherwise (--var, --masked-var, the YAML) a file.
    #[arg(long = "file-var", value_name = "KEY[=VALUE|=@PATH]")]
    file_vars: Vec<String>,
    /// Send the working tree as it is (tracked and untracked files that git does not
    /// ignore) instead of the committed HEAD.
    #[arg(long)]
    dirty: bool,
    /// The project (`group/name`; the registry path of CI_REGISTRY_IMAGE). Default: from the
    /// `origin` remote, else the directory name.
    #[arg(long)]
    project: Option<String>,
    /// Submit and return at once (print the pipeline id).
    #[arg(long)]
    detach: bool,
    /// Run only this job and the jobs it `needs` (repeatable).
    #[arg(long = "job", value_name = "NAME")]
    jobs: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    local: LocalArgs,
}

/// Running without a server: the whole system in this process.
#[derive(Debug, Args)]
#[command(next_help_heading = "Local runs (no server configured, or --local)")]
pub struct LocalArgs {
    /// Run here even if a server is configured: a coordinator on SQLite and the built-in
    /// registry under .archway/ (kept between runs), one runner per platform this host runs
    /// (arm64 through qemu-user on x86_64, and the reverse). The working tree is what runs.
    #[arg(long, conflicts_with = "server")]
    local: bool,
    /// Where the local state lives (default: .archway/ at the repository's root).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Start runners only for these platforms (repeatable); jobs for others are left out,
    /// with the jobs that need them.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// Pull job images, service images and Dockerfile `FROM` images of REGISTRY from a
    /// mirror (repeatable), `REGISTRY=HOST[/PREFIX]`, e.g. `docker.io=127.0.0.1:5000/hub`.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[/PREFIX]")]
    mirrors: Vec<archway_client::mirror::Mirror>,
    /// Run jobs whose image is Kaniko's executor, docker, podman, buildah or manifest-tool
    /// in the real image instead of Archway's toolbox (which serves `/kaniko/executor`,
    /// `docker build|buildx|push|manifest`, `podman manifest`… with Archway's builder).
    #[arg(long)]
    no_toolbox: bool,
    /// Keep the local server (API and registry) running after the pipeline, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// The OCI runtime for job sandboxes (default: the first of crun, runc found).
    #[arg(long, value_name = "NAME")]
    runtime: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Print a job's log (every attempt); -f follows it while the job runs.
    Log {
        id: i64,
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a job: status, attempts, runners.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a finished job again.
    Retry {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a job (a running one is stopped within a second).
    Cancel {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Download a job's artifacts: the archive (a gzipped tar) to a file, or unpacked.
    ///
    /// Examples:
    ///   archway job artifacts 12 -o build.tar.gz
    ///   archway job artifacts 12 --extract out/
    #[command(verbatim_doc_comment)]
    Artifacts {
        id: i64,
        /// Write the archive here (default: artifacts-JOB.tar.gz; `-` for stdout).
        #[arg(short, long, value_name = "FILE", conflicts_with = "extract")]
        output: Option<PathBuf>,
        /// Unpack into this directory instead.
        #[arg(long, value_name = "DIR")]
        extract: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start a manual job (or a delayed one now).
    Play {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn pipeline(cmd: PipelineCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match cmd {
        PipelineCommand::Run(a) => rt.block_on(run(*a)),
        PipelineCommand::List {
            project,
            limit,
            format,
            server,
        } => rt.block_on(async {
            let list = server
                .client()?
                .pipelines(project.as_deref(), limit)
                .await?;
            match format {
                Format::Json => print_json(&list)?,
                Format::Text => {
                    println!(
                        "{:<6} {:<10} {:<28} {:<20} CREATED",
                        "ID", "STATUS", "PROJECT", "REF"
                    );
                    for p in list {
                        println!(
                            "{:<6} {:<10} {:<28} {:<20} {}",
                            p.id,
                            p.status,
                            p.project,
                            p.git_ref,
                            when(p.created_at_ms)
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        PipelineCommand::Show { id, format, server } => rt.block_on(async {
            let p = server.client()?.pipeline(id).await?;
            show_pipeline(&p, format)?;
            Ok(ExitCode::SUCCESS)
        }),
        PipelineCommand::Cancel { id, format, server } => rt.block_on(async {
            let p = server.client()?.cancel_pipeline(id).await?;
            show_pipeline(&p, format)?;
            Ok(ExitCode::SUCCESS)
        }),
        PipelineCommand::Retry { id, format, server } => rt.block_on(async {
            let p = server.client()?.retry_pipeline(id).await?;
            show_pipeline(&p, format)?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

pub fn job(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let (client, id, action, format) = match cmd {
            JobCommand::Log { id, follow, server } => {
                let mut stream = server.client()?.job_log(id, follow).await?;
                let mut out = std::io::stdout().lock();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.context("reading the log from the server")?;
                    out.write_all(&chunk)?;
                    out.flush()?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            JobCommand::Artifacts {
                id,
                output,
                extract,
                server,
            } => return download_artifacts(&server.client()?, id, output, extract).await,
            JobCommand::Show { id, format, server } => (server.client()?, id, None, format),
            JobCommand::Retry { id, format, server } => {
                (server.client()?, id, Some("retry"), format)
            }
            JobCommand::Cancel { id, format, server } => {
                (server.client()?, id, Some("cancel"), format)
            }
            JobCommand::Play { id, format, server } => (server.client()?, id, Some("play"), format),
        };
        let j = match action {
            Some(a) => client.job_action(id, a).await?,
            None => client.job(id).await?,
        };
        match format {
            Format::Json => print_json(&j)?,
            Format::Text => print_job(&j),
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn download_artifacts(
    client: &ApiClient,
    id: i64,
    output: Option<PathBuf>,
    extract: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut stream = client.job_artifacts(id).await?;
    let to_stdout = output.as_deref() == Some(Path::new("-"));
    let (path, tmp) = match (&extract, &output) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let t = dir.join(format!(".artifacts-{id}.tar.gz.part"));
            (t.clone(), t)
        }
        (None, Some(f)) if !to_stdout => (f.clone(), archway_oci::atomic_file::temp_path_for(f)),
        (None, None) => {
            let f = PathBuf::from(format!("artifacts-{id}.tar.gz"));
            let t = archway_oci::atomic_file::temp_path_for(&f);
            (f, t)
        }
        _ => (PathBuf::new(), PathBuf::new()),
    };
    if to_stdout {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.context("downloading the artifacts")?)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut size = 0u64;
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(anyhow::anyhow!(e).context("downloading the artifacts"));
                }
            };
            size += chunk.len() as u64;
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    match extract {
        Some(dir) => {
            let r = archway_runner::artifacts::unpack(&tmp, &dir);
            let _ = std::fs::remove_file(&tmp);
            r.with_context(|| format!("unpacking the artifacts into {}", dir.display()))?;
            eprintln!(
                "unpacked the artifacts of job {id} ({} KiB) into {}",
                size.div_ceil(1024),
                dir.display()
            );
        }
        None => {
            archway_oci::atomic_file::commit(&tmp, &path)?;
            eprintln!(
                "saved the artifacts of job {id} ({} KiB) as {}",
                size.div_ceil(1024),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn duration(j: &JobView) -> String {
    match (j.started_at_ms, j.finished_at_ms) {
        (Some(s), Some(f)) if f >= s => format!("{:.1}s", (f - s) as f64 / 1000.0),
        (Some(_), None) => "…".into(),
        _ => "-".into(),
    }
}

fn runner_of(j: &JobView) -> String {
    if let Some(child) = j.downstream_pipeline_id {
        return format!("child pipeline {child}");
    }
    j.attempts
        .last()
        .map(|a| {
            format!(
                "{} ({}{})",
                a.runner.name,
                a.platform,
                if a.emulated { ", emulated" } else { "" }
            )
        })
        .unwrap_or_else(|| "-".into())
}

fn result_of(j: &JobView) -> String {
    let mut s = j.status.to_string();
    if j.failure_allowed {
        s.push_str(" (allowed)");
    }
    if let Some(r) = j.failure_reason.filter(|_| j.status == JobStatus::Failed) {
        s.push_str(&format!(": {r}"));
    }
    s
}

fn print_table(p: &PipelineView) {
    println!(
        "{:<28} {:<10} {:<34} {:>8}  RESULT",
        "JOB", "STAGE", "RUNNER (PLATFORM)", "TIME"
    );
    for j in &p.jobs {
        println!(
            "{:<28} {:<10} {:<34} {:>8}  {}",
            j.name,
            j.stage,
            runner_of(j),
            duration(j),
            result_of(j)
        );
        if let Some(n) = &j.note {
            println!("    {n}");
        }
    }
    print_tests(p);
}

/// The pipeline's JUnit results (GitLab's Tests tab): totals, then the failing cases.
fn print_tests(p: &PipelineView) {
    let with: Vec<&JobView> = p.jobs.iter().filter(|j| j.tests.is_some()).collect();
    if with.is_empty() {
        return;
    }
    let mut total = archway_api::TestSummary::default();
    for t in with.iter().filter_map(|j| j.tests.as_ref()) {
        total.total += t.total;
        total.failed += t.failed;
        total.errors += t.errors;
        total.skipped += t.skipped;
    }
    println!(
        "\ntests: {} total, {} passed, {} failed, {} errors, {} skipped (from {} jobs' JUnit reports)",
        total.total,
        total.passed(),
        total.failed,
        total.errors,
        total.skipped,
        with.len()
    );
    for j in with {
        let Some(t) = &j.tests else { continue };
        for f in &t.failures {
            let msg = if f.message.is_empty() {
                String::new()
            } else {
                format!(": {}", f.message)
            };
            println!("  FAILED {} › {} › {}{msg}", j.name, f.suite, f.name);
        }
        let listed = t.failures.len() as u64;
        if t.failed + t.errors > listed {
            println!(
                "  … and {} more failing cases in {}",
                t.failed + t.errors - listed,
                j.name
            );
        }
    }
}

fn show_pipeline(p: &PipelineView, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(p)?,
        Format::Text => {
            println!(
                "pipeline {} · {} · {} @ {} · {}",
                p.id,
                p.status,
                p.project,
                p.git_ref,
                if p.sha.is_empty() {
                    "working tree"
                } else {
                    &p.sha[..p.sha.len().min(8)]
                }
            );
            print_table(p);
        }
    }
    Ok(())
}

fn print_job(j: &JobView) {
    println!(
        "job {} · {} · stage {} · {}",
        j.id,
        j.name,
        j.stage,
        result_of(j)
    );
    if !j.tags.is_empty() {
        println!("tags: {}", j.tags.join(", "));
    }
    if let Some(n) = &j.note {
        println!("{n}");
    }
    if let Some(a) = &j.artifacts {
        if !a.digest.is_empty() {
            println!(
                "artifacts: {} KiB ({}){} — archway job artifacts {}",
                a.size.div_ceil(1024),
                a.digest,
                a.expires_at_ms
                    .map(|e| format!(", expire {}", when(e)))
                    .unwrap_or_default(),
                j.id
            );
        }
        if !a.dotenv.is_empty() {
            println!("dotenv: {}", a.dotenv.join(", "));
        }
    }
    for a in &j.attempts {
        println!(
            "  attempt {} on {} ({}{}): {}{}",
            a.number,
            a.runner.name,
            a.platform,
            if a.emulated { ", emulated" } else { "" },
            a.state,
            a.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
}

// --- pipeline run ----------------------------------------------------------------------------

pub(crate) fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `group/name` from the origin remote (`git@host:group/name.git`,
/// `https://host/group/name.git`), else the directory name; lowercased to a valid repository
/// path.
fn project_name(root: &Path) -> String {
    let from_remote = git(root, &["remote", "get-url", "origin"]).and_then(|u| {
        let u = u.trim_end_matches('/').trim_end_matches(".git");
        let path = match u.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map(|(_, p)| p.to_owned()),
            None => u.split_once(':').map(|(_, p)| p.to_owned()),
        }?;
        (!path.is_empty()).then_some(path)
    });
    let raw = from_remote.unwrap_or_else(|| {
        std::fs::canonicalize(root)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "project".into())
    });
    raw.split('/')
        .map(|c| {
            let s: String = c
                .to_ascii_lowercase()
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
                        ch
                    } else {
                        '-'
                    }
                })
                .collect();
            s.trim_matches(|ch: char| !ch.is_ascii_alphanumeric())
                .to_owned()
        })
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// A gzipped tar of the source: `git archive HEAD`, or the working tree's files.
fn snapshot(root: &Path, dirty: bool, in_git: bool) -> anyhow::Result<Vec<u8>> {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    if in_git && !dirty {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["archive", "--format=tar", "HEAD"])
            .output()
            .context("running git archive")?;
        if !out.status.success() {
            bail!(
                "git archive HEAD failed: {} (a repository without commits? pass --dirty to send the working tree)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        gz.write_all(&out.stdout)?;
    } else {
        let files: Vec<String> = if in_git {
            git(root, &["ls-files", "-co", "--exclude-standard", "-z"])
                .unwrap_or_default()
                .split('\0')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            super::pipeline::list_files(root)
        };
        let mut sorted = files;
        sorted.sort();
        let mut tar = tar::Builder::new(&mut gz);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        for f in sorted {
            let path = root.join(&f);
            if path.symlink_metadata().is_ok() {
                tar.append_path_with_name(&path, &f)
                    .with_context(|| format!("adding {f} to the source snapshot"))?;
            }
        }
        tar.finish()?;
    }
    Ok(gz.finish()?)
}

async fn run(mut a: RunArgs) -> anyhow::Result<ExitCode> {
    let local = a.local.local || !a.server.configured();
    if local && a.detach {
        bail!(
            "--detach needs a server: a local run's runners live in this process (use --keep to \
             leave its server up after the pipeline, or pass --server)"
        );
    }
    let current = git(Path::new("."), &["symbolic-ref", "--short", "-q", "HEAD"]);
    a.context.default_branch_to(current);
    let file = match &a.file {
        Some(f) => f.clone(),
        None => {
            let found = discover()?;
            if found.len() > 1 {
                bail!(
                    "several workflows found ({}); pass the one to run",
                    found
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            found.into_iter().next().unwrap_or_default()
        }
    };
    let (pipeline, diags) = plan_file(&file, &a.context)?;
    print_diagnostics(&diags);
    if diags
        .iter()
        .any(|d| d.severity == archway_pipeline::Severity::Error)
    {
        eprintln!(
            "{}: the pipeline has errors; nothing was {}",
            file.display(),
            if local { "run" } else { "submitted" }
        );
        return Ok(ExitCode::FAILURE);
    }
    let Some(pipeline) = pipeline else {
        return Ok(ExitCode::FAILURE);
    };
    // Jobs the coordinator cannot run (dynamic children, other projects' pipelines):
    // submitting the rest would silently drop them.
    let refused: Vec<String> = pipeline
        .jobs
        .iter()
        .filter_map(archway_api::plan::not_submittable)
        .collect();
    if !refused.is_empty() {
        for why in &refused {
            eprintln!("{}: {why}", file.display());
        }
        eprintln!(
            "{}: the server cannot run {}, so nothing was submitted",
            file.display(),
            if refused.len() == 1 {
                "this job"
            } else {
                "these jobs"
            }
        );
        eprintln!(
            "  hint: `archway plan` shows the child pipelines; run these jobs in this pipeline meanwhile"
        );
        return Ok(ExitCode::FAILURE);
    }
    if !pipeline.runs || pipeline.jobs.is_empty() {
        eprintln!(
            "{}: no jobs to run (workflow:rules or every job's rules excluded them)",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut jobs = archway_api::plan::job_definitions(&pipeline);
    if !a.jobs.is_empty() {
        jobs = select_jobs(jobs, &a.jobs)?;
    }
    for fv in &a.file_vars {
        let Some((k, v)) = fv.split_once('=') else {
            continue;
        };
        let value = match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--file-var {k}: reading {path}"))?,
            None => v.to_owned(),
        };
        for j in &mut jobs {
            j.variables.retain(|x| x.name != k);
            j.variables.push(archway_api::VarDef {
                name: k.to_owned(),
                value: value.clone(),
            });
        }
    }
    let mut secrets = std::collections::BTreeMap::new();
    for kv in &a.masked {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--masked-var `{kv}` is not KEY=VALUE"))?;
        if v.len() < 8 {
            bail!(
                "--masked-var {k}: masked values must be at least 8 characters (as in GitLab), or they would mask ordinary output"
            );
        }
        secrets.insert(k.to_owned(), v.to_owned());
    }
    let root = git(Path::new("."), &["rev-parse", "--show-toplevel"])
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let in_git = git(&root, &["rev-parse", "HEAD"]).is_some();
    // A local run tests the working tree, as it is.
    let dirty = a.dirty || local;

    let mut local_system = None;
    let client = if local {
        let offers = super::local::offers(&a.local.platforms)?;
        if !a.local.platforms.is_empty() {
            let (kept, left_out) = keep_platforms(jobs, &offers);
            if !left_out.is_empty() && a.format == Format::Text {
                eprintln!(
                    "left out (not for {}): {}",
                    a.local.platforms.join(", "),
                    left_out.join(", ")
                );
            }
            jobs = kept;
            if jobs.is_empty() {
                bail!(
                    "no job of the pipeline runs on {}",
                    a.local.platforms.join(", ")
                );
            }
        }
        super::local::place_jobs(&mut jobs, &offers)?;
        let mut tags: Vec<String> = jobs.iter().flat_map(|j| j.tags.clone()).collect();
        tags.sort();
        tags.dedup();
        let data = a
            .local
            .data
            .clone()
            .unwrap_or_else(|| root.join(".archway"));
        let sys = super::local::Local::start(super::local::LocalOptions {
            data: data.clone(),
            offers,
            mirrors: a.local.mirrors.clone(),
            tags,
            runtime: a.local.runtime.clone(),
            toolbox: !a.local.no_toolbox,
        })
        .await?;
        if a.format == Format::Text {
            let runners: Vec<String> = sys
                .offers
                .iter()
                .map(|o| {
                    format!(
                        "{}{}",
                        o.platform,
                        if o.emulated {
                            " (emulated with qemu)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            eprintln!(
                "local run: state in {}, registry {} (CI_REGISTRY), runners for {}",
                data.display(),
                sys.registry,
                runners.join(", ")
            );
        }
        let c = sys.client.clone();
        local_system = Some(sys);
        c
    } else {
        a.server.client()?
    };
    let outcome = submit_and_follow(
        &a, &client, &root, in_git, dirty, &file, &pipeline, jobs, secrets, local,
    )
    .await;
    if let Some(sys) = local_system {
        if a.local.keep && outcome.is_ok() {
            eprintln!(
                "\nthe local server keeps running; Ctrl-C stops it.\n  \
                 API:      archway pipeline list --server {} --token {}\n  \
                 registry: {} (user archway, password: the token above), e.g.\n            \
                 skopeo inspect --tls-verify=false --creds archway:{} docker://{}/<project>/<image>:<tag>",
                sys.url, sys.admin_token, sys.registry, sys.admin_token, sys.registry
            );
            let _ = tokio::signal::ctrl_c().await;
        }
        sys.stop().await?;
    }
    outcome
}

/// `jobs` restricted to `names` and every job they need (transitively).
fn select_jobs(jobs: Vec<JobDefinition>, names: &[String]) -> anyhow::Result<Vec<JobDefinition>> {
    let mut wanted: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut stack: Vec<String> = Vec::new();
    for n in names {
        // A matrix job's name selects all its instances (`build` → `build: [amd64]`, …).
        let matching: Vec<&JobDefinition> = jobs
            .iter()
            .filter(|j| &j.name == n || j.name.starts_with(&format!("{n}: [")))
            .collect();
        if matching.is_empty() {
            let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            bail!(
                "--job {n}: the pipeline has no such job (its jobs: {})",
                known.join(", ")
            );
        }
        stack.extend(matching.iter().map(|j| j.name.clone()));
    }
    while let Some(n) = stack.pop() {
        if !wanted.insert(n.clone()) {
            continue;
        }
        if let Some(j) = jobs.iter().find(|j| j.name == n) {
            stack.extend(j.needs.iter().flatten().cloned());
        }
    }
    Ok(jobs
        .into_iter()
        .filter(|j| wanted.contains(&j.name))
        .collect())
}

/// Splits `jobs` into those that run on one of `offers` (and need only such jobs) and the
/// names of the rest. A job without a platform runs on any.
fn keep_platforms(
    jobs: Vec<JobDefinition>,
    offers: &[archway_api::PlatformOffer],
) -> (Vec<JobDefinition>, Vec<String>) {
    let mut out: std::collections::BTreeSet<String> = jobs
        .iter()
        .filter(|j| {
            j.platform
                .as_ref()
                .is_some_and(|p| !offers.iter().any(|o| &o.platform == p))
        })
        .map(|j| j.name.clone())
        .collect();
    loop {
        let more: Vec<String> = jobs
            .iter()
            .filter(|j| !out.contains(&j.name))
            .filter(|j| j.needs.iter().flatten().any(|n| out.contains(n)))
            .map(|j| j.name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    let left_out = jobs
        .iter()
        .filter(|j| out.contains(&j.name))
        .map(|j| j.name.clone())
        .collect();
    (
        jobs.into_iter()
            .filter(|j| !out.contains(&j.name))
            .collect(),
        left_out,
    )
}

#[allow(clippy::too_many_arguments)]
async fn submit_and_follow(
    a: &RunArgs,
    client: &ApiClient,
    root: &Path,
    in_git: bool,
    dirty: bool,
    file: &Path,
    pipeline: &archway_pipeline::Pipeline,
    jobs: Vec<JobDefinition>,
    secrets: std::collections::BTreeMap<String, String>,
    local: bool,
) -> anyhow::Result<ExitCode> {
    // The commit (for a working tree, the commit it is based on, as gitlab-ci-local does);
    // outside git, the snapshot's digest stands in, so `$CI_COMMIT_SHORT_SHA` tags are never
    // empty.
    let data = snapshot(root, dirty, in_git)?;
    let digest = archway_oci::Digest::sha256(&data).to_string();
    let head = if in_git {
        git(root, &["rev-parse", "HEAD"]).unwrap_or_default()
    } else {
        String::new()
    };
    let message = if head.is_empty() {
        String::new()
    } else {
        git(root, &["log", "-1", "--format=%B"]).unwrap_or_default()
    };
    let sha = if head.is_empty() {
        digest.rsplit(':').next().unwrap_or_default()[..40].to_owned()
    } else {
        head
    };
    let project = a.project.clone().unwrap_or_else(|| project_name(root));
    // CI_COMMIT_TIMESTAMP: the commit's (HEAD's for a working tree), else now.
    let timestamp = in_git
        .then(|| git(root, &["log", "-1", "--format=%cI"]))
        .flatten()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
        });
    let mut jobs = jobs;
    for j in &mut jobs {
        j.variables.insert(
            0,
            archway_api::VarDef {
                name: "CI_COMMIT_TIMESTAMP".into(),
                value: timestamp.clone(),
            },
        );
    }
    if !client.has_source(&digest).await? {
        if !local {
            eprintln!("uploading the source ({} KiB)…", data.len() / 1024);
        }
        client.upload_source(&digest, data).await?;
    }
    let (git_ref, tag) = match &a.context.tag_name() {
        Some(t) => (t.clone(), true),
        None => (a.context.branch_name(), false),
    };
    let submit = SubmitPipeline {
        project,
        git_ref,
        tag,
        sha,
        commit_message: message,
        source: Some(digest),
        file: file.display().to_string(),
        stages: pipeline.stages.clone(),
        jobs,
        variables: archway_api::plan::pipeline_variables(pipeline),
        masked: secrets.keys().cloned().collect(),
        secrets,
        file_variables: a
            .file_vars
            .iter()
            .map(|f| f.split_once('=').map_or(f.as_str(), |(k, _)| k).to_owned())
            .collect(),
    };
    let p = client.submit_pipeline(&submit).await?;
    if a.detach && !local {
        match a.format {
            Format::Json => print_json(&p)?,
            Format::Text => println!("{}", p.id),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.format == Format::Text {
        eprintln!(
            "pipeline {} {} ({} jobs, project {})",
            p.id,
            if local {
                "started".to_owned()
            } else {
                format!("submitted to {}", client.base_url())
            },
            p.jobs.len(),
            p.project
        );
    }
    let print = a.format == Format::Text;
    let done = if local {
        // Ctrl-C cancels the local pipeline (its jobs are stopped) before the system stops.
        tokio::select! {
            r = follow(client, p.id, print) => r?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: canceling pipeline {}…", p.id);
                client.cancel_pipeline(p.id).await?;
                tokio::time::timeout(Duration::from_secs(60), follow(client, p.id, print))
                    .await
                    .context("the pipeline's jobs did not stop within a minute")??
            }
        }
    } else {
        follow(client, p.id, print).await?
    };
    match a.format {
        Format::Json => print_json(&done)?,
        Format::Text => {
            for j in done
                .jobs
                .iter()
                .filter(|j| j.status == JobStatus::Failed && !j.failure_allowed)
            {
                eprintln!("--- log tail of {} (job {}) ---", j.name, j.id);
                let tail = log_tail(client, j.id, 20).await.unwrap_or_default();
                eprintln!("{tail}");
            }
            println!();
            print_table(&done);
            println!("pipeline {} {}", done.id, done.status);
        }
    }
    Ok(if done.status == PipelineStatus::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn log_tail(client: &ApiClient, job: i64, lines: usize) -> anyhow::Result<String> {
    let mut s = client.job_log(job, false).await?;
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c?);
    }
    let text = String::from_utf8_lossy(&all);
    let v: Vec<&str> = text.lines().collect();
    Ok(v[v.len().saturating_sub(lines)..].join("\n"))
}

/// Follows a pipeline until it is over (or waits for a person), printing job changes.
async fn follow(client: &ApiClient, id: i64, print: bool) -> anyhow::Result<PipelineView> {
    let mut seen: HashMap<i64, (JobStatus, usize)> = HashMap::new();
    let mut failures = 0;
    loop {
        let p = match client.pipeline(id).await {
            Ok(p) => {
                failures = 0;
                p
            }
            Err(e) if e.is_transient() && failures < 60 => {
                failures += 1;
                if print && failures == 1 {
                    eprintln!("lost the server ({e}); retrying…");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if print {
            for j in &p.jobs {
                let key = (j.status, j.attempts.len());
                if seen.get(&j.id) != Some(&key) {
                    seen.insert(j.id, key);
                    if j.status == JobStatus::Created {
                        continue;
                    }
                    let detail = match j.status {
                        JobStatus::Running => format!(" on {}", runner_of(j)),
                        JobStatus::Pending => j
                            .note
                            .as_ref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default(),
                        JobStatus::Manual => format!(" (start it: archway job play {})", j.id),
                        _ => {
                            if j.status.is_final() {
                                format!(" {}", duration(j))
                            } else {
                                String::new()
                            }
                        }
                    };
                    let now =
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                    eprintln!("{} {:<28} {}{detail}", &now[11..19], j.name, result_of(j));
                }
            }
        }
        if p.status.is_final() || p.status == PipelineStatus::Manual {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
