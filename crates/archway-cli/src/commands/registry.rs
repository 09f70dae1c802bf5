//! `archway registry serve` and `archway registry gc`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use archway_registry::gc::{self, GcOptions};
use archway_registry::storage::s3::location::S3Location;
use archway_registry::storage::s3::{S3Config, S3Storage};
use archway_registry::{
    AccessPolicy, Auth, FsStorage, Htpasswd, MetricsAccess, Registry, RegistryConfig, Storage,
};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the OCI Distribution API (v1.1) from a directory.
    ///
    /// Examples:
    ///
    ///   archway registry serve --listen 127.0.0.1:5000 --root ./registry
    ///
    ///   htpasswd -Bbc users.htpasswd alice s3cret
    ///   archway registry serve --listen 0.0.0.0:5000 --root /var/lib/archway \
    ///       --htpasswd users.htpasswd --tls-cert registry.crt --tls-key registry.key
    ///
    ///   # On S3 (any number of replicas may share the bucket and prefix):
    ///   AWS_REGION=eu-west-1 archway registry serve --storage s3://my-bucket/registry \
    ///       --storage-redirect --htpasswd users.htpasswd --listen 0.0.0.0:5000
    ///
    /// Clients: `skopeo copy --dest-tls-verify=false oci:dir:tag docker://127.0.0.1:5000/x:tag`,
    /// `podman push --tls-verify=false`, `docker push 127.0.0.1:5000/x:tag` (docker treats
    /// loopback registries as plain HTTP).
    #[command(verbatim_doc_comment)]
    Serve(Box<ServeArgs>),
    /// Delete blobs and manifests that no tag reaches.
    ///
    /// Marks from every tag (an index keeps its per-platform manifests; a manifest keeps its
    /// config, layers and referrers), then removes unreachable content unused for longer than
    /// the grace period. Safe to run while the registry serves pushes, as long as the grace
    /// period is longer than any push takes (and at least 10 minutes).
    ///
    /// Examples: archway registry gc --root ./registry --dry-run
    ///           archway registry gc --storage s3://my-bucket/registry
    #[command(verbatim_doc_comment)]
    Gc(GcArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR")]
    listen: SocketAddr,
    #[command(flatten)]
    storage: StorageArgs,
    /// Answer blob GETs with a redirect to a short-lived presigned URL of the content, so
    /// that the bytes flow from the object store to the client directly (needs --storage;
    /// clients must be able to reach the store's endpoint).
    #[arg(long, requires = "storage")]
    storage_redirect: bool,
    /// Require authentication: users from an htpasswd file with bcrypt hashes
    /// (`htpasswd -B`). Enables Docker's token flow at /token.
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Access list: lines of `<user|*|anonymous> <repository-glob> <pull,push,delete|*>`;
    /// the first matching line decides. Without it, every authenticated user may do everything.
    #[arg(long, value_name = "FILE", requires = "htpasswd")]
    access: Option<PathBuf>,
    /// With --htpasswd and no access list: let anonymous clients pull.
    #[arg(long, requires = "htpasswd")]
    anonymous_pull: bool,
    /// Serve without authentication on a non-loopback address (refused by default).
    #[arg(long, conflicts_with = "htpasswd")]
    allow_unauthenticated: bool,
    /// Serve HTTPS with this certificate (PEM, intermediates after it); needs --tls-key.
    /// `kill -HUP` reloads both files without dropping connections. HTTP/2 is offered.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --htpasswd on a non-loopback address, serve plain HTTP anyway (passwords and
    /// tokens then cross the network in clear; refused by default: use --tls-cert/--tls-key).
    #[arg(long)]
    allow_insecure: bool,
    /// Accept indexes whose child manifests, and manifests whose blobs, this registry does not
    /// have (off by default; what `archway image copy --platform … --keep-index` needs).
    #[arg(long)]
    allow_sparse: bool,
    /// Token realm announced to clients (default: http://<the request's Host>/token, https
    /// when a --trusted-proxy says so).
    #[arg(long, value_name = "URL")]
    token_realm: Option<String>,
    /// A reverse proxy whose X-Forwarded-Proto and X-Forwarded-For are believed (repeatable).
    #[arg(long, value_name = "IP")]
    trusted_proxy: Vec<IpAddr>,
    /// Service name carried in tokens.
    #[arg(long, default_value = "archway-registry")]
    service: String,
    /// Largest manifest accepted, in bytes (larger → 413 MANIFEST_INVALID).
    #[arg(long, default_value_t = archway_registry::DEFAULT_MAX_MANIFEST_SIZE)]
    max_manifest_size: usize,
    /// Serve /metrics on this separate address, without credentials (and not on --listen).
    /// Without it, /metrics is on --listen and, with --htpasswd, needs a user's credentials.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Remove upload sessions idle for longer than this (files are never held open between
    /// requests, whatever this is).
    #[arg(long, default_value = "168h", value_parser = humantime::parse_duration)]
    upload_expiry: Duration,
    /// A non-distributable layer may point at URLs matching this regular expression instead
    /// of being pushed (repeatable; default: no foreign layers).
    #[arg(long, value_name = "REGEX")]
    foreign_layer_url: Vec<regex::Regex>,
    /// Drop a client that sends no request body data for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
    /// Drop a client that reads nothing of a response for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    write_timeout: Duration,
    /// A client must send its request headers within this time; idle keep-alive connections
    /// close after it too.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Connections served at once (more wait to be accepted).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Access log format (one line per request on stderr).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Do not write the access log.
    #[arg(long)]
    quiet: bool,
}

/// Where the registry keeps its content: a directory, or an object store.
#[derive(Debug, Args, Clone)]
pub struct StorageArgs {
    /// Directory holding blobs, repositories and uploads (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "storage",
        conflicts_with = "storage"
    )]
    root: Option<PathBuf>,
    /// S3-compatible object storage instead of a directory: s3://BUCKET[/PREFIX]. Endpoint,
    /// region and credentials come from the AWS environment variables (AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, …) and files
    /// (~/.aws/credentials, ~/.aws/config); a custom endpoint is addressed path-style.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub storage: Option<S3Location>,
}

/// What the storage is opened for: serving needs conditional writes; collecting garbage
/// while others serve needs conditional deletes too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageUse {
    Serve,
    Collect,
}

impl StorageArgs {
    /// `root DIR` or `storage s3://…`, for messages.
    pub fn describe(&self) -> String {
        match (&self.storage, &self.root) {
            (Some(l), _) => format!("storage {l}"),
            (None, Some(r)) => format!("root {}", r.display()),
            (None, None) => "no storage".into(),
        }
    }

    /// Opens the storage; an object store is probed for the conditional requests the
    /// replica protocol relies on (see ARCHITECTURE.md).
    pub async fn open(
        &self,
        redirect: bool,
        usage: StorageUse,
    ) -> anyhow::Result<Arc<dyn Storage>> {
        if let Some(location) = &self.storage {
            let mut config = S3Config::new(location.clone());
            config.redirect = redirect;
            let storage = S3Storage::open(&config)
                .with_context(|| format!("opening the registry storage at {location}"))?;
            open_checked(storage, usage).await
        } else {
            let root = self
                .root
                .as_ref()
                .context("pass --root DIR or --storage s3://BUCKET")?;
            if usage == StorageUse::Collect && !root.join("blobs").is_dir() {
                bail!(
                    "{} is not an archway registry root (no blobs/ directory); pass the directory given to `archway registry serve --root`",
                    root.display()
                );
            }
            let storage = FsStorage::open(root)
                .with_context(|| format!("opening registry storage at {}", root.display()))?;
            Ok(Arc::new(storage))
        }
    }
}

/// Probes an object store and refuses one that would break the registry's guarantees.
pub async fn open_checked(
    storage: S3Storage,
    usage: StorageUse,
) -> anyhow::Result<Arc<dyn Storage>> {
    let location = storage.location().clone();
    let caps = storage.capabilities().await.with_context(|| {
        format!(
            "cannot use {location}: check the bucket exists and the credentials may read, write and delete in it"
        )
    })?;
    if !caps.conditional_put {
        bail!(
            "{location}: the object store ignores conditional writes (PUT with If-None-Match / If-Match), \
             which replicas sharing a bucket rely on so that no update is lost; use AWS S3 or an \
             S3-compatible server that supports them"
        );
    }
    if usage == StorageUse::Collect && !caps.conditional_delete {
        eprintln!(
            "warning: {location}: the object store ignores conditional deletes (DELETE with If-Match); garbage \
             collection then cannot tell a blob re-used by a concurrent push in the last moment — run it \
             while no client pushes"
        );
    }
    Ok(Arc::new(storage))
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Only report what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Never delete content used more recently than this (e.g. 30m, 1h, 2days).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Remove upload sessions idle for longer than this.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    upload_max_age: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
}

pub fn run(cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File I/O runs on blocking threads; a bounded pool keeps memory flat under load.
        .max_blocking_threads(64)
        .build()
        .context("starting the async runtime")?;
    match cmd {
        RegistryCommand::Serve(args) => rt.block_on(serve(*args)),
        RegistryCommand::Gc(args) => rt.block_on(run_gc(args)),
    }
}

pub fn init_logging(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("ARCHWAY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, args.quiet);
    if !args.listen.ip().is_loopback() && args.htpasswd.is_none() && !args.allow_unauthenticated {
        bail!(
            "refusing to serve {} without authentication: anyone who can reach it could push and delete images.\n\
             Pass --htpasswd FILE (create one with `htpasswd -Bc FILE USER`), listen on 127.0.0.1, \
             or pass --allow-unauthenticated if the network is trusted.",
            args.listen
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(archway_http::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    if !args.listen.ip().is_loopback()
        && args.htpasswd.is_some()
        && tls.is_none()
        && !args.allow_insecure
    {
        bail!(
            "refusing to serve {} with --htpasswd over plain HTTP: passwords and tokens would cross the network in clear \
             (and docker and podman refuse plain-HTTP registries that are not on loopback).\n\
             Pass --tls-cert FILE --tls-key FILE, listen on 127.0.0.1 behind a TLS-terminating proxy, \
             or pass --allow-insecure if the network is trusted.",
            args.listen
        );
    }
    if let Some(t) = &tls {
        t.load().context("--tls-cert/--tls-key cannot be used")?;
    }
    let storage = args
        .storage
        .open(args.storage_redirect, StorageUse::Serve)
        .await?;
    let auth = match &args.htpasswd {
        None => None,
        Some(path) => {
            let users = Htpasswd::load(path)?;
            let policy = match &args.access {
                Some(p) => AccessPolicy::load(p)?,
                None => AccessPolicy::open_to_users(args.anonymous_pull),
            };
            Some(
                Auth::new(
                    users,
                    policy,
                    args.service.clone(),
                    args.token_realm.clone(),
                )
                .with_trusted_proxies(args.trusted_proxy.clone())
                .with_tls(tls.is_some()),
            )
        }
    };
    let metrics_access = match (&args.metrics_listen, &args.htpasswd) {
        (Some(_), _) => MetricsAccess::Elsewhere,
        (None, Some(_)) => MetricsAccess::Authenticated,
        (None, None) => MetricsAccess::Open,
    };
    let registry = Arc::new(Registry::new(
        storage,
        auth,
        RegistryConfig {
            max_manifest_size: args.max_manifest_size,
            upload_expiry: args.upload_expiry,
            foreign_layer_urls: args.foreign_layer_url.clone(),
            metrics_access,
            allow_sparse: args.allow_sparse,
        },
    ));
    let serve_config = archway_http::ServeConfig {
        header_read_timeout: args.header_timeout,
        body_read_timeout: args.read_timeout,
        write_timeout: args.write_timeout,
        max_connections: args.max_connections,
        tls: tls.clone(),
        ..archway_http::ServeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another registry running there? choose another port with --listen)",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "archway registry listening on {scheme}://{addr} ({}, auth {})",
        args.storage.describe(),
        if args.htpasswd.is_some() {
            "htpasswd + tokens"
        } else {
            "off"
        }
    );
    if let Some(metrics_addr) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {metrics_addr} for metrics"))?;
        eprintln!(
            "archway registry metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        let router = registry.clone().metrics_router();
        // The separate metrics address is private by intent: plain HTTP.
        let config = archway_http::ServeConfig {
            tls: None,
            ..serve_config.clone()
        };
        tokio::spawn(async move {
            if let Err(e) =
                archway_http::serve(metrics_listener, router, config, std::future::pending()).await
            {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let expiry = tokio::spawn(registry.clone().expire_uploads());
    archway_http::serve(
        listener,
        registry.clone().router(),
        serve_config,
        shutdown_signal(),
    )
    .await?;
    expiry.abort();
    eprintln!("archway registry stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn run_gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let storage = args.storage.open(false, StorageUse::Collect).await?;
    let opts = GcOptions {
        grace: args.grace,
        upload_max_age: args.upload_max_age,
        dry_run: args.dry_run,
    };
    if opts.grace_is_unsafe_for_live_registry() {
        eprintln!(
            "warning: a grace period of {} is shorter than 10 minutes; run this only while no client is pushing",
            humantime::format_duration(opts.grace)
        );
    }
    let report = gc::collect(storage.as_ref(), &opts)
        .await
        .context("garbage collection failed; nothing after the failing step was removed")?;
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            let verb = if report.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for (repo, d) in &report.manifests_removed {
                println!("{verb} manifest {repo}@{d}");
            }
            for (repo, d) in &report.blob_links_removed {
                println!("{verb} blob link {repo}@{d}");
            }
            for d in &report.blobs_removed {
                println!("{verb} blob {d}");
            }
            println!(
                "{} repositories; kept {} manifests and {} blobs; {verb} {} manifests, {} blobs ({} bytes), {} stale uploads",
                report.repositories,
                report.manifests_kept,
                report.blobs_kept,
                report.manifests_removed.len(),
                report.blobs_removed.len(),
                report.bytes_freed,
                report.uploads_removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
