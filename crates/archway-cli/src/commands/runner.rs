//! `archway runner register|run|drain|list`: a machine that runs jobs for a server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use archway_api::{ApiClient, RegisterRunner};
use archway_runner::agent::{Agent, AgentEvent, AgentOptions};
use archway_runner::config::{RunnerConfig, detect_platforms};
use archway_runner::control;
use archway_runner::sandbox::SandboxExecutor;
use archway_runner::{Executor, NoopExecutor};
use clap::{Args, Subcommand, ValueEnum};

use super::common::{Format, print_json};
use super::registry::{LogFormat, init_logging};

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Register this machine with a server and write the runner's configuration.
    ///
    /// Architecture tags are automatic: a runner offering linux/arm64 has the tags `arm64`
    /// and `aarch64`. Platforms this host only emulates through qemu-user are offered as
    /// emulated; the server prefers a native runner when one is free.
    ///
    /// Examples:
    ///   archway runner register --server http://ci:8700 --token awr_…
    ///   archway runner register --server http://ci:8700 --token awr_… \
    ///       --platform linux/arm64 --tags docker,gpu --concurrency 4
    #[command(verbatim_doc_comment)]
    Register(RegisterArgs),
    /// Serve jobs until stopped. SIGTERM (or `archway runner drain`) drains: no new jobs,
    /// running ones get the drain deadline to finish, the rest are handed back to be run
    /// elsewhere.
    Run(RunArgs),
    /// Drain a running runner (for a spot interruption: two minutes' notice).
    Drain(DrainArgs),
    /// List the server's runners (admin token).
    List {
        #[command(flatten)]
        server: super::remote::ServerArgs,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ExecutorKind {
    /// Each job in an ephemeral sandbox made from its `image:`.
    Sandbox,
    /// Jobs succeed at once without running (for measuring the coordinator).
    Noop,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The server's URL.
    #[arg(long, env = "ARCHWAY_SERVER")]
    server: String,
    /// The runner registration token the server printed at first start.
    #[arg(long, env = "ARCHWAY_REGISTRATION_TOKEN", hide_env_values = true)]
    token: String,
    /// A name for this runner (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Extra tags, comma-separated (architecture tags are added automatically).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// A platform to offer (repeatable); default: this host's and what qemu-user emulates.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Take jobs without tags (default: yes if no --tags, as gitlab-runner).
    #[arg(long)]
    run_untagged: Option<bool>,
    /// Image for jobs that name none.
    #[arg(long)]
    default_image: Option<String>,
    #[arg(long, value_enum, default_value = "sandbox")]
    executor: ExecutorKind,
    /// Where jobs' directories go (default: beside the configuration).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Image and source cache (default: ~/.cache/archway/runner).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Registries to reach over plain HTTP (besides loopback ones), comma-separated.
    #[arg(long, value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// Pull job images of REGISTRY from a mirror (repeatable), `REGISTRY=HOST[/PREFIX]`,
    /// e.g. `docker.io=mirror.internal:5000/hub` (as dockerd's `registry-mirrors`).
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[/PREFIX]")]
    registry_mirrors: Vec<archway_client::mirror::Mirror>,
    /// Run jobs whose image is Kaniko's executor, docker, podman, buildah or manifest-tool
    /// with the real image, instead of Archway's toolbox (which serves those commands with
    /// Archway's builder, unprivileged and without a daemon).
    #[arg(long)]
    no_toolbox: bool,
    /// Configuration file to write.
    #[arg(long, default_value_os_t = RunnerConfig::default_path())]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The runner's configuration (from `archway runner register`).
    #[arg(long, default_value_os_t = RunnerConfig::default_path())]
    config: PathBuf,
    /// Running jobs may take this long to finish after SIGTERM before they are handed back.
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_deadline: Option<Duration>,
    /// OCI runtime: crun, runc or a path (default: chosen as `archway doctor` says).
    #[arg(long, env = "ARCHWAY_RUNTIME")]
    runtime: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// How long running jobs may go on before they are handed back.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Return at once instead of waiting for the runner to stop.
    #[arg(long)]
    no_wait: bool,
    #[arg(long, default_value_os_t = RunnerConfig::default_path())]
    config: PathBuf,
}

pub fn run(cmd: RunnerCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cmd {
        RunnerCommand::Register(a) => rt.block_on(register(a)),
        RunnerCommand::Run(a) => rt.block_on(serve(a)),
        RunnerCommand::Drain(a) => rt.block_on(async {
            let wait = if a.no_wait {
                Duration::ZERO
            } else {
                a.deadline + Duration::from_secs(60)
            };
            let (answer, stopped) =
                control::request_drain(&control::socket_path(&a.config), a.deadline, wait).await?;
            println!("{answer}");
            if answer.starts_with("error") {
                return Ok(ExitCode::FAILURE);
            }
            if !a.no_wait {
                if stopped {
                    println!("the runner has stopped");
                } else {
                    bail!("the runner did not stop within the deadline and a minute");
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        RunnerCommand::List { server, format } => rt.block_on(async {
            let runners = server.client()?.runners().await?;
            match format {
                Format::Json => print_json(&runners)?,
                Format::Text => {
                    println!(
                        "{:<5} {:<20} {:<8} {:<8} {:<40} TAGS",
                        "ID", "NAME", "STATE", "RUNNING", "PLATFORMS"
                    );
                    for r in runners {
                        let platforms: Vec<String> = r
                            .platforms
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}{}",
                                    p.platform,
                                    if p.emulated { " (emulated)" } else { "" }
                                )
                            })
                            .collect();
                        println!(
                            "{:<5} {:<20} {:<8} {:<8} {:<40} {}",
                            r.id,
                            r.name,
                            if r.draining {
                                "draining"
                            } else if r.online {
                                "online"
                            } else {
                                "offline"
                            },
                            r.running,
                            platforms.join(", "),
                            r.tags.join(",")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "runner".into())
}

async fn register(a: RegisterArgs) -> anyhow::Result<ExitCode> {
    let platforms = detect_platforms(
        &a.platforms,
        std::path::Path::new(archway_sandbox::binfmt::BINFMT_DIR),
    )?;
    if platforms.is_empty() {
        bail!("this host can run no platform (see `archway doctor`)");
    }
    let name = a.name.clone().unwrap_or_else(hostname);
    let run_untagged = a.run_untagged.unwrap_or(a.tags.is_empty());
    let client = ApiClient::new(&a.server, None)?;
    let reg = client
        .register_runner(&RegisterRunner {
            registration_token: a.token.clone(),
            name: name.clone(),
            tags: a.tags.clone(),
            platforms: platforms.clone(),
            concurrency: a.concurrency.max(1),
            run_untagged,
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .with_context(|| format!("registering with {}", a.server))?;
    let config = RunnerConfig {
        server: a.server.clone(),
        id: reg.id,
        token: reg.token,
        name: name.clone(),
        tags: a.tags.clone(),
        platforms: a.platforms.clone(),
        concurrency: a.concurrency.max(1),
        run_untagged,
        default_image: a.default_image.clone(),
        work_dir: a.work_dir.clone(),
        cache_dir: a.cache_dir.clone(),
        executor: match a.executor {
            ExecutorKind::Sandbox => "sandbox".into(),
            ExecutorKind::Noop => "noop".into(),
        },
        drain_deadline_secs: 90,
        insecure_registries: a.insecure_registry.clone(),
        registry_mirrors: a.registry_mirrors.iter().map(ToString::to_string).collect(),
        toolbox: !a.no_toolbox,
    };
    config.save(&a.config)?;
    let offered: Vec<String> = platforms
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.platform,
                if p.emulated {
                    " (emulated with qemu)"
                } else {
                    ""
                }
            )
        })
        .collect();
    println!(
        "registered runner {} ({name}) with {}: platforms {}; configuration in {}\nstart it with: archway runner run{}",
        reg.id,
        a.server,
        offered.join(", "),
        a.config.display(),
        if a.config == RunnerConfig::default_path() {
            String::new()
        } else {
            format!(" --config {}", a.config.display())
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(a.log_format, false);
    let config = RunnerConfig::load(&a.config)?;
    let platforms = detect_platforms(
        &config.platforms,
        std::path::Path::new(archway_sandbox::binfmt::BINFMT_DIR),
    )?;
    let executor: Arc<dyn Executor> = match config.executor.as_str() {
        "noop" => Arc::new(NoopExecutor),
        "sandbox" => {
            let sandbox = archway_sandbox::Sandbox::detect(a.runtime.as_deref())
                .context("the sandbox executor needs an OCI runtime (see `archway doctor`)")?;
            let cache = config.cache_dir();
            let store = archway_build::Store::open(&cache.join("images"))
                .with_context(|| format!("opening the image store under {}", cache.display()))?;
            let mut e = SandboxExecutor::new(sandbox, Arc::new(store), &cache);
            e.default_image = config.default_image.clone();
            e.insecure_registries = config.insecure_registries.clone();
            e.mirrors = config
                .registry_mirrors
                .iter()
                .map(|m| m.parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("in {}", a.config.display()))?;
            e.runner_token = Some(config.token.clone());
            if config.toolbox {
                e.toolbox = Some(archway_runner::toolbox::Toolbox {
                    exe: std::env::current_exe().context("finding the archway binary")?,
                    store_dir: cache.join("images"),
                    runtime: a.runtime.clone(),
                    mirrors: e.mirrors.clone(),
                });
            }
            Arc::new(e)
        }
        other => bail!(
            "unknown executor `{other}` in {} (sandbox or noop)",
            a.config.display()
        ),
    };
    let drain_deadline = a
        .drain_deadline
        .unwrap_or(Duration::from_secs(config.drain_deadline_secs));
    let agent = Agent::new(
        AgentOptions {
            server: config.server.clone(),
            token: config.token.clone(),
            name: config.name.clone(),
            platforms: platforms.clone(),
            concurrency: config.concurrency,
            work_dir: config.work_dir(&a.config),
            drain_deadline,
            version: env!("CARGO_PKG_VERSION").into(),
        },
        executor.clone(),
        Arc::new(|e| match e {
            AgentEvent::Connected => tracing::info!("connected"),
            AgentEvent::Disconnected(why) => tracing::warn!(%why, "lost the server; reconnecting"),
            AgentEvent::JobStarted { attempt, job, name } => {
                tracing::info!(attempt, job, %name, "job started")
            }
            AgentEvent::JobFinished { attempt, outcome } => {
                tracing::info!(attempt, ?outcome, "job finished")
            }
            AgentEvent::Fenced { attempt } => {
                tracing::warn!(
                    attempt,
                    "the server no longer accepts this attempt (its lease was lost or it was canceled); stopped it"
                )
            }
            AgentEvent::Draining { running } => tracing::info!(running, "draining"),
            AgentEvent::Stopped => tracing::info!("stopped"),
        }),
    )?;
    let drain = agent.drain_handle();
    let sock = control::socket_path(&a.config);
    {
        let drain = drain.clone();
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Err(e) = control::serve(sock.clone(), drain).await {
                tracing::warn!(error = %e, path = %sock.display(), "the drain control socket is unavailable");
            }
        });
    }
    {
        let drain = drain.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!(deadline = ?drain_deadline, "signal received: draining");
            drain.drain(drain_deadline);
        });
    }
    let offered: Vec<String> = platforms
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.platform,
                if p.emulated { " (emulated)" } else { "" }
            )
        })
        .collect();
    eprintln!(
        "archway runner {} ({}) serving {} with the {} executor: {} (concurrency {})",
        config.id,
        config.name,
        config.server,
        executor.name(),
        offered.join(", "),
        config.concurrency
    );
    let result = agent.run().await;
    let _ = std::fs::remove_file(&sock);
    result?;
    Ok(ExitCode::SUCCESS)
}
