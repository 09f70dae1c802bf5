//! The coordinator behind `archway server`: pipelines and jobs in SQLite or PostgreSQL,
//! arch-aware dispatch to long-polling runners, leases that requeue the jobs of dead runners,
//! fenced attempts, logs, and the built-in registry on the same port.
//!
//! * [`db`]: the database (one code path for SQLite and PostgreSQL) and its migrations;
//! * [`schedule`]: GitLab's scheduling rules as pure functions;
//! * [`coordinator`]: every state change, one transaction each;
//! * [`dispatch`]: waiting runners and the rounds that hand them jobs;
//! * [`events`]: wake-ups, within a server and across servers (PostgreSQL `NOTIFY`);
//! * [`api`]: the HTTP handlers of `/api/v1/…`;
//! * [`sources`]: source snapshots by digest;
//! * [`metrics`], [`tokens`], [`error`].
//!
//! The library never prints; the CLI shows the bootstrap tokens it returns.

pub mod api;
pub mod coordinator;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod registry_auth;
pub mod schedule;
pub mod sources;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, header};

use archway_registry::storage::s3::{S3Config, S3Storage};
use archway_registry::{FsStorage, Registry, RegistryConfig, Storage};

pub use coordinator::{Coordinator, CoordinatorConfig, Principal};
pub use db::{Db, DbError};
pub use error::CoordError;

/// How often expired artifacts are swept.
const ARTIFACT_SWEEP_EVERY: Duration = Duration::from_secs(300);
/// How long an unreferenced archive is kept (an upload may be about to record it).
const ARTIFACT_GRACE: Duration = Duration::from_secs(3600);

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Holds `coordinator.db` (SQLite), and `registry/`, `sources/`, `artifacts/` and `logs/`
    /// unless they are on an object store.
    pub data_dir: PathBuf,
    /// `postgres://…`; SQLite under `data_dir` when `None`.
    pub database_url: Option<String>,
    pub coordinator: CoordinatorConfig,
    /// How long a runner's poll waits for work before answering empty.
    pub poll_wait: Duration,
    pub max_source_bytes: u64,
    /// Serve `/metrics` without a token (when it is on a separate, private listener).
    pub open_metrics: bool,
    /// The registry's content, the source snapshots, the job artifacts and the archived job
    /// logs on an object store (shared by every replica) instead of under `data_dir`.
    pub object_store: Option<S3Config>,
    /// Registry repositories anyone may pull (globs, `*` matches `/` too), e.g. `library/*`.
    pub public_repos: Vec<String>,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            database_url: None,
            coordinator: CoordinatorConfig::default(),
            poll_wait: archway_api::client::POLL_WAIT,
            max_source_bytes: 1024 * 1024 * 1024,
            open_metrics: false,
            object_store: None,
            public_repos: Vec::new(),
        }
    }
}

/// A running coordinator's parts.
#[derive(Debug)]
pub struct Server {
    pub coord: Arc<Coordinator>,
    pub dispatcher: Arc<dispatch::Dispatcher>,
    pub sources: sources::SourceStore,
    /// Job artifact archives, by digest.
    pub artifacts: sources::SourceStore,
    /// Job logs: in the database while their attempt runs, archived afterwards.
    pub logs: logs::JobLogs,
    pub registry: Arc<Registry>,
    pub poll_wait: Duration,
    pub open_metrics: bool,
}

/// Tokens created on first start (shown once).
#[derive(Debug)]
pub struct Bootstrap {
    pub admin_token: String,
    pub registration_token: String,
}

/// Errors opening a server.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("opening the registry storage under {path}: {message}")]
    Registry { path: String, message: String },
    #[error("opening the object store {location}: {message}")]
    ObjectStore { location: String, message: String },
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Server {
    /// Opens (or creates) the server's state; on first start also returns the bootstrap
    /// tokens.
    pub async fn open(config: ServerConfig) -> Result<(Arc<Server>, Option<Bootstrap>), OpenError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let db = match &config.database_url {
            Some(url) => Db::open(url).await?,
            None => Db::open_sqlite(&config.data_dir).await?,
        };
        let events = events::Events::new();
        let metrics = Arc::new(metrics::Metrics::new());
        let coord = Arc::new(Coordinator::new(
            db.clone(),
            config.coordinator.clone(),
            events.clone(),
            metrics,
        ));
        let bootstrap = coord.bootstrap().await?.map(|(a, r)| Bootstrap {
            admin_token: a,
            registration_token: r,
        });
        let extended = coord.grant_restart_grace().await?;
        if extended > 0 {
            tracing::info!(
                attempts = extended,
                "gave running attempts a lease period to reconnect after a restart"
            );
        }
        let (storage, sources, artifacts, log_archive): (Arc<dyn Storage>, _, _, _) =
            match &config.object_store {
                Some(s3) => {
                    let failed = |message: String| OpenError::ObjectStore {
                        location: s3.location.to_string(),
                        message,
                    };
                    let storage = S3Storage::open(s3).map_err(|e| failed(e.to_string()))?;
                    let (client, prefix) = storage.client();
                    let sources = sources::SourceStore::on_object_store(
                        client.clone(),
                        &prefix,
                        sources::SOURCES,
                        config.max_source_bytes,
                    );
                    let artifacts = sources::SourceStore::on_object_store(
                        client.clone(),
                        &prefix,
                        sources::ARTIFACTS,
                        config.coordinator.max_artifact_bytes,
                    );
                    let logs: Arc<dyn logs::LogArchive> =
                        Arc::new(logs::ObjectLogArchive::new(client, &prefix));
                    (Arc::new(storage), sources, artifacts, logs)
                }
                None => {
                    let reg_root = config.data_dir.join("registry");
                    let storage = FsStorage::open(&reg_root).map_err(|e| OpenError::Registry {
                        path: reg_root.display().to_string(),
                        message: e.to_string(),
                    })?;
                    let sources =
                        sources::SourceStore::open(&config.data_dir, config.max_source_bytes)?;
                    let artifacts = sources::SourceStore::open_artifacts(
                        &config.data_dir,
                        config.coordinator.max_artifact_bytes,
                    )?;
                    let logs: Arc<dyn logs::LogArchive> =
                        Arc::new(logs::FsLogArchive::open(&config.data_dir)?);
                    (Arc::new(storage), sources, artifacts, logs)
                }
            };
        let auth = registry_auth::registry_auth(coord.clone(), &config.public_repos).map_err(
            |message| OpenError::Registry {
                path: "--public-repos".into(),
                message,
            },
        )?;
        let registry = Arc::new(Registry::new(
            storage,
            Some(auth),
            RegistryConfig::default(),
        ));
        coord.set_archives(sources.clone(), artifacts.clone());
        let logs = logs::JobLogs::new(coord.clone(), log_archive);
        let server = Arc::new(Server {
            coord,
            logs,
            dispatcher: dispatch::Dispatcher::new(),
            sources,
            artifacts,
            registry,
            poll_wait: config.poll_wait,
            open_metrics: config.open_metrics,
        });
        Ok((server, bootstrap))
    }

    /// Starts the background work: dispatch rounds, the lease reaper, the job log archiver,
    /// and (PostgreSQL) the listener for other servers' events.
    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(self.dispatcher.clone().run(self.coord.clone()));
        let coord = self.coord.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match coord.reap_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        attempts = n,
                        "requeued the jobs of runners that stopped renewing their leases"
                    ),
                    Err(e) => tracing::warn!(error = %e, "reaping expired leases"),
                }
            }
        });
        tokio::spawn(self.logs.clone().run_archiver(Duration::from_secs(5)));
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ARTIFACT_SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.sweep_artifacts(ARTIFACT_GRACE).await {
                    Ok((0, 0)) => {}
                    Ok((jobs, files)) => tracing::info!(
                        jobs,
                        files,
                        "removed expired artifacts (artifacts:expire_in)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "sweeping expired artifacts"),
                }
            }
        });
        if self.coord.db.url.is_some() {
            tokio::spawn(self.coord.events.clone().listen(self.coord.db.clone()));
        }
    }

    /// Deletes what expired artifacts leave behind: jobs past their `artifacts:expire_in`
    /// lose the reference to their archive, then archives no job refers to any more are
    /// removed once older than `grace` — an upload of the same bytes refreshes the file's
    /// time, so an archive is never removed under a job about to record it. Safe with
    /// several servers on one database (each checks the database before removing).
    /// Returns (jobs expired, archives removed).
    pub async fn sweep_artifacts(&self, grace: Duration) -> Result<(u64, usize), CoordError> {
        let jobs = self.coord.expire_artifacts(db::now_ms()).await?;
        let mut removed = 0;
        for digest in self.artifacts.older_than(grace).await? {
            if !self.coord.artifact_in_use(&digest).await? {
                self.artifacts.remove(&digest).await?;
                removed += 1;
            }
        }
        Ok((jobs, removed))
    }

    /// The HTTP application: `/api/v1/…`, `/metrics`, and the registry for everything else.
    pub fn router(self: &Arc<Self>) -> Router {
        let registry = self.registry.clone().router();
        api::router(self.clone())
            .merge(
                Router::new()
                    .route("/metrics", get(metrics_handler))
                    .with_state(self.clone()),
            )
            .fallback_service(registry)
    }

    /// Just `/metrics` (for a separate listener).
    pub fn metrics_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(self.clone())
    }
}

async fn metrics_handler(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if !s.open_metrics {
        let ok = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.split_once(' '))
        {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => matches!(
                s.coord.authenticate(token.trim()).await,
                Ok(Principal::Admin { .. })
            ),
            _ => false,
        };
        if !ok {
            return CoordError::Unauthorized(
                "/metrics needs an admin token (or serve it on a private --metrics-listen address)"
                    .into(),
            )
            .into_response();
        }
    }
    match s.coord.gauges().await {
        Ok(g) => s.coord.metrics.set_gauges(&g),
        Err(e) => tracing::warn!(error = %e, "reading gauges"),
    }
    let mut text = s.coord.metrics.encode();
    text.push_str(&s.registry.metrics.encode());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, with the shared HTTP layer's
/// limits (header, body and write timeouts, connection cap, request ids); requests in flight
/// (long polls, followed logs) get 10 s to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, router, None, shutdown).await
}

/// [`serve`], over HTTPS when `tls` is given (HTTP/2 offered through ALPN; the certificate
/// and key are reloaded on `SIGHUP` without dropping connections).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<archway_http::TlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = archway_http::ServeConfig {
        shutdown_grace: Duration::from_secs(10),
        tls,
        ..archway_http::ServeConfig::default()
    };
    archway_http::serve(listener, router, config, shutdown).await
}
