//! `archway pipeline run` with no server: the whole system in this process — the coordinator
//! on SQLite and the built-in registry under `.archway/` (they persist between runs), served on
//! a loopback port that jobs reach as `CI_REGISTRY`, and one runner per platform this host can
//! run (native, and qemu-emulated ones marked as such), each honouring the jobs' tags.
//!
//! The runners are registered for this run only (with every tag the pipeline's jobs use, so a
//! job's tags route it by the platform they name) and revoked when it ends, as is the admin
//! token the run talks to its coordinator with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use archway_api::{ApiClient, JobDefinition, PlatformOffer, RegisterRunner};
use archway_client::mirror::Mirror;
use archway_runner::agent::{Agent, AgentError, AgentOptions, DrainHandle};
use archway_runner::executor::Executor;
use archway_runner::sandbox::SandboxExecutor;
use archway_server::coordinator::CoordinatorConfig;
use archway_server::tokens::TokenKind;
use archway_server::{Server, ServerConfig};
use tokio::task::JoinHandle;

/// What the local system is made of.
#[derive(Debug)]
pub struct LocalOptions {
    /// State: `coordinator.db`, `registry/`, `sources/`, `runner/`.
    pub data: PathBuf,
    /// One runner per offer (see [`offers`]).
    pub offers: Vec<PlatformOffer>,
    pub mirrors: Vec<Mirror>,
    /// Every tag the pipeline's jobs use.
    pub tags: Vec<String>,
    /// The OCI runtime (`runc`, `crun`; default: the first found).
    pub runtime: Option<String>,
    /// Serve Kaniko/docker/podman/buildah/manifest-tool images with Archway's toolbox.
    pub toolbox: bool,
}

/// A running local system.
pub struct Local {
    pub client: ApiClient,
    pub url: String,
    /// `host:port` of the registry (CI_REGISTRY).
    pub registry: String,
    pub admin_token: String,
    /// One runner per offer, in this order.
    pub offers: Vec<PlatformOffer>,
    server: Arc<Server>,
    shutdown: Arc<tokio::sync::Notify>,
    serve_task: JoinHandle<std::io::Result<()>>,
    agents: Vec<(DrainHandle, JoinHandle<Result<(), AgentError>>)>,
    runner_ids: Vec<i64>,
    admin_token_id: i64,
}

/// The platforms this host can run, as runner offers (native first).
pub fn offers(requested: &[String]) -> anyhow::Result<Vec<PlatformOffer>> {
    let offers = archway_runner::config::detect_platforms(
        requested,
        Path::new(archway_sandbox::binfmt::BINFMT_DIR),
    )?;
    if offers.is_empty() {
        bail!("this host can run no platform (see `archway doctor`)");
    }
    Ok(offers)
}

/// Gives every job without a platform the host's native one (so emulated runners only take
/// the jobs whose tags name their architecture), and checks every job can run here.
pub fn place_jobs(jobs: &mut [JobDefinition], offers: &[PlatformOffer]) -> anyhow::Result<()> {
    let native = offers
        .iter()
        .find(|o| !o.emulated)
        .or(offers.first())
        .map(|o| o.platform.clone())
        .context("no platform to run on")?;
    let mut missing = Vec::new();
    for j in jobs.iter_mut() {
        let p = j.platform.get_or_insert_with(|| native.clone());
        if !offers.iter().any(|o| &o.platform == p) {
            missing.push(format!("{} ({p})", j.name));
        }
    }
    if !missing.is_empty() {
        let offered: Vec<&str> = offers.iter().map(|o| o.platform.as_str()).collect();
        bail!(
            "these jobs need a platform this run has no runner for: {}\n  runners here: {}\n  \
             to run arm64 jobs on an x86_64 host, install qemu-user-static and binfmt-support \
             (see `archway doctor`); or leave those jobs out with --platform {}",
            missing.join(", "),
            offered.join(", "),
            offered.join(" --platform ")
        );
    }
    Ok(())
}

impl Local {
    pub async fn start(opts: LocalOptions) -> anyhow::Result<Local> {
        std::fs::create_dir_all(&opts.data)
            .with_context(|| format!("creating {}", opts.data.display()))?;
        // Nothing under .archway/ belongs in the repository (or in the source snapshot).
        let ignore = opts.data.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "# Archway's local pipeline state\n*\n")
                .with_context(|| format!("writing {}", ignore.display()))?;
        }
        let offers = opts.offers;
        let sandbox = archway_sandbox::Sandbox::detect(opts.runtime.as_deref())
            .context("running jobs needs an OCI runtime (see `archway doctor`)")?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("listening on a loopback port")?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let mut config = ServerConfig::new(opts.data.clone());
        config.coordinator = CoordinatorConfig {
            server_url: url.clone(),
            registry: addr.to_string(),
            ..CoordinatorConfig::default()
        };
        let (server, _first_start) = Server::open(config)
            .await
            .with_context(|| format!("opening the local state in {}", opts.data.display()))?;
        server.spawn_background();
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let serve_task = {
            let shutdown = shutdown.clone();
            tokio::spawn(archway_server::serve(
                listener,
                server.router(),
                async move { shutdown.notified().await },
            ))
        };

        let coord = &server.coord;
        let (admin_token_id, admin_token) = coord
            .create_token(TokenKind::Admin, "archway pipeline run (local)")
            .await?;
        let (registration_id, registration) = coord
            .create_token(TokenKind::Registration, "archway pipeline run (local)")
            .await?;
        let cache = opts.data.join("runner");
        let store = archway_build::Store::open(&cache.join("images"))
            .with_context(|| format!("opening the image store under {}", cache.display()))?;
        let store = Arc::new(store);
        let slots = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2)
            .max(2);
        let mut tags = opts.tags.clone();
        tags.sort();
        tags.dedup();
        let mut agents = Vec::new();
        let mut runner_ids = Vec::new();
        for offer in &offers {
            let arch = offer.platform.rsplit('/').next().unwrap_or("runner");
            let name = format!("local-{arch}");
            let reg = coord
                .register_runner(&RegisterRunner {
                    registration_token: registration.clone(),
                    name: name.clone(),
                    tags: tags.clone(),
                    platforms: vec![offer.clone()],
                    concurrency: slots,
                    run_untagged: true,
                    version: env!("CARGO_PKG_VERSION").into(),
                })
                .await?;
            runner_ids.push(reg.id);
            let mut e = SandboxExecutor::new(sandbox.clone(), store.clone(), &cache);
            e.runner_token = Some(reg.token.clone());
            e.mirrors = opts.mirrors.clone();
            if opts.toolbox {
                e.toolbox = Some(archway_runner::toolbox::Toolbox {
                    exe: std::env::current_exe().context("finding the archway binary")?,
                    store_dir: cache.join("images"),
                    runtime: opts.runtime.clone(),
                    mirrors: opts.mirrors.clone(),
                });
            }
            let executor: Arc<dyn Executor> = Arc::new(e);
            let agent = Agent::new(
                AgentOptions {
                    server: url.clone(),
                    token: reg.token,
                    name,
                    platforms: vec![offer.clone()],
                    concurrency: slots,
                    work_dir: cache.join("work"),
                    drain_deadline: Duration::from_secs(10),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
                executor,
                Arc::new(|_| {}),
            )?;
            let drain = agent.drain_handle();
            agents.push((drain, tokio::spawn(agent.run())));
        }
        // Registration is done; the token is of no further use.
        coord.revoke_token(registration_id).await?;
        let client = ApiClient::new(&url, Some(admin_token.clone()))?;
        Ok(Local {
            client,
            registry: addr.to_string(),
            url,
            admin_token,
            offers,
            server,
            shutdown,
            serve_task,
            agents,
            runner_ids,
            admin_token_id,
        })
    }

    /// Stops the runners, revokes this run's tokens and stops serving.
    pub async fn stop(self) -> anyhow::Result<()> {
        for (drain, _) in &self.agents {
            drain.drain(Duration::from_secs(5));
        }
        for (_, task) in self.agents {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "a local runner stopped with an error")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "a local runner task failed"),
                Err(_) => tracing::warn!("a local runner did not stop within 30 s"),
            }
        }
        for id in &self.runner_ids {
            self.server.coord.revoke_runner(*id).await?;
        }
        self.server.coord.revoke_token(self.admin_token_id).await?;
        self.shutdown.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.serve_task).await;
        Ok(())
    }
}
