//! `archway server`: the coordinator (API, built-in registry and metrics on one port), its
//! tokens, and `archway server login` for the machines that talk to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use archway_server::tokens::TokenKind;
use archway_server::{Coordinator, CoordinatorConfig, Db, Server, ServerConfig};
use clap::{Args, Subcommand, ValueEnum};

use super::common::{Format, print_json};
use super::registry::{LogFormat, StorageUse, init_logging, open_checked, shutdown_signal};
use archway_registry::storage::s3::location::S3Location;
use archway_registry::storage::s3::{S3Config, S3Storage};

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  archway server --listen 127.0.0.1:8700 --data ./archway-data
  archway server --listen 0.0.0.0:8700 --data /var/lib/archway \\
      --database postgres://archway@db/archway --public-url http://ci.example:8700 --allow-insecure
  archway server token list --data ./archway-data
  archway server login http://127.0.0.1:8700 --token-stdin < admin-token.txt

On first start the server prints an admin token and a runner registration token, once."
)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Create the server's database and its first tokens without serving (for provisioning
    /// scripts: `--format json` prints the tokens as JSON).
    Init {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Manage admin and runner registration tokens (works on the server's database directly).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Save a server URL and token for `archway pipeline …`, `archway job …` on this machine
    /// (~/.config/archway/client.json, mode 0600).
    Login(LoginArgs),
}

#[derive(Debug, Args, Clone)]
struct DbArgs {
    /// The server's data directory (its SQLite database lives there).
    #[arg(long, value_name = "DIR", default_value = "./archway-data")]
    data: PathBuf,
    /// A PostgreSQL database instead of SQLite (postgres://USER:PASSWORD@HOST/DB).
    #[arg(long, value_name = "URL", env = "ARCHWAY_DATABASE_URL")]
    database: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token (printed once).
    Create {
        #[arg(value_enum)]
        kind: TokenKindArg,
        /// A name to recognise it by.
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List tokens (never their values).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Revoke a token by id.
    Revoke {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a runner's own token (it can no longer take or report jobs).
    RevokeRunner {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TokenKindArg {
    Admin,
    Registration,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The server's URL, e.g. http://127.0.0.1:8700.
    url: String,
    /// Read the token from standard input (else ARCHWAY_TOKEN).
    #[arg(long)]
    token_stdin: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (API, registry and metrics share it); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:8700", value_name = "ADDR")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// The URL jobs and runners reach this server at (CI_SERVER_URL, CI_REGISTRY); default:
    /// http://<listen address>, https:// with --tls-cert.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Serve plain HTTP on a non-loopback address (tokens then cross the network in clear).
    #[arg(long)]
    allow_insecure: bool,
    /// Serve HTTPS with this certificate (PEM, intermediates after it); needs --tls-key.
    /// `kill -HUP` reloads both files without dropping connections. HTTP/2 is offered.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// An attempt whose runner has not renewed its lease for this long is requeued.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Times a job is requeued after its runner vanished, before it fails with
    /// runner_system_failure (separate from the job's own `retry:`).
    #[arg(long, default_value_t = 2)]
    system_retries: u32,
    /// Log bytes kept per attempt; more is dropped with a marker.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    max_log_size: u64,
    /// Largest artifact archive a job may keep (a larger one fails the job).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    max_artifact_size: u64,
    /// Job timeout when the job sets none.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    default_timeout: Duration,
    /// Keep the registry's content, the source snapshots, job artifacts and finished job logs
    /// on S3-compatible object storage (s3://BUCKET[/PREFIX]) instead of under --data; with
    /// --database on PostgreSQL, any number of servers sharing both behave as one. Endpoint, region and credentials come
    /// from the AWS environment variables and files (see `archway registry serve --help`).
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    storage: Option<S3Location>,
    /// Answer registry blob GETs with a redirect to a presigned URL of the content (needs
    /// --storage; clients must reach the store's endpoint).
    #[arg(long, requires = "storage")]
    storage_redirect: bool,
    /// Registry repositories anyone may pull, without credentials (repeatable glob, `*`
    /// matches `/` too), e.g. `library/*` for shared base images. Other repositories need an
    /// admin token, a runner token (pull) or a job token (its own project).
    #[arg(long = "public-repos", value_name = "GLOB")]
    public_repos: Vec<String>,
    /// Serve /metrics without a token on this separate (private) address instead.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format (stderr).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("`{s}` is not a size (e.g. 4MiB, 512KiB, 1GiB)"))
}

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
        .context("starting the async runtime")?;
    match args.command {
        None => rt.block_on(serve(args.serve)),
        Some(ServerCommand::Token(t)) => rt.block_on(token(t)),
        Some(ServerCommand::Init { db, format }) => rt.block_on(init(db, format)),
        Some(ServerCommand::Login(l)) => login(l),
    }
}

async fn open_coordinator(db: &DbArgs) -> anyhow::Result<Coordinator> {
    let database = match &db.database {
        Some(url) => Db::open(url).await?,
        None => {
            if !db.data.join("coordinator.db").exists() {
                bail!(
                    "no server database in {} (start `archway server --data {}` once, or pass --data/--database)",
                    db.data.display(),
                    db.data.display()
                );
            }
            Db::open_sqlite(&db.data).await?
        }
    };
    Ok(Coordinator::new(
        database,
        CoordinatorConfig::default(),
        archway_server::events::Events::new(),
        std::sync::Arc::new(archway_server::metrics::Metrics::new()),
    ))
}

async fn init(db: DbArgs, format: Format) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&db.data).with_context(|| format!("creating {}", db.data.display()))?;
    let database = match &db.database {
        Some(url) => Db::open(url).await?,
        None => Db::open_sqlite(&db.data).await?,
    };
    let c = Coordinator::new(
        database,
        CoordinatorConfig::default(),
        archway_server::events::Events::new(),
        std::sync::Arc::new(archway_server::metrics::Metrics::new()),
    );
    let Some((admin, registration)) = c.bootstrap().await? else {
        bail!(
            "this server is already initialised (its tokens were shown then); make new ones with \
             `archway server token create admin|registration`"
        );
    };
    match format {
        Format::Json => print_json(&serde_json::json!({
            "admin_token": admin,
            "registration_token": registration,
        }))?,
        Format::Text => println!(
            "admin token:               {admin}\nrunner registration token: {registration}"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            kind,
            name,
            db,
            format,
        } => {
            let c = open_coordinator(&db).await?;
            let kind = match kind {
                TokenKindArg::Admin => TokenKind::Admin,
                TokenKindArg::Registration => TokenKind::Registration,
            };
            let (id, token) = c.create_token(kind, &name).await?;
            match format {
                Format::Json => print_json(
                    &serde_json::json!({"id": id, "kind": kind.as_str(), "token": token}),
                )?,
                Format::Text => println!("{token}"),
            }
        }
        TokenCommand::List { db, format } => {
            let c = open_coordinator(&db).await?;
            let tokens = c.list_tokens().await?;
            match format {
                Format::Json => print_json(&tokens)?,
                Format::Text => {
                    println!("{:<5} {:<13} {:<20} STATE", "ID", "KIND", "NAME");
                    for t in tokens {
                        println!(
                            "{:<5} {:<13} {:<20} {}",
                            t.id,
                            t.kind,
                            t.name,
                            if t.revoked_ms.is_some() {
                                "revoked"
                            } else {
                                "active"
                            }
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { id, db } => {
            open_coordinator(&db).await?.revoke_token(id).await?;
            println!("token {id} revoked");
        }
        TokenCommand::RevokeRunner { id, db } => {
            open_coordinator(&db).await?.revoke_runner(id).await?;
            println!("runner {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn login(l: LoginArgs) -> anyhow::Result<ExitCode> {
    let token = if l.token_stdin {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s.trim().to_owned()
    } else {
        std::env::var("ARCHWAY_TOKEN").context("pass --token-stdin or set ARCHWAY_TOKEN")?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = archway_api::ApiClient::new(&l.url, Some(token.clone()))?;
    rt.block_on(client.runners())
        .with_context(|| format!("checking the token against {}", l.url))?;
    let path = super::remote::ClientConfig::save(&l.url, &token)?;
    println!("logged in to {}; saved to {}", l.url, path.display());
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(a.log_format, false);
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let t = archway_http::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            };
            t.load().context("--tls-cert/--tls-key cannot be used")?;
            Some(t)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if !a.listen.ip().is_loopback() && tls.is_none() && !a.allow_insecure {
        bail!(
            "refusing to serve plain HTTP on {}: tokens and passwords would cross the network in clear.\n\
             Pass --tls-cert FILE --tls-key FILE, listen on 127.0.0.1 (behind a TLS-terminating proxy), \
             or pass --allow-insecure if the network is trusted.",
            a.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (choose another address with --listen)",
                a.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let public = a
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let registry_host = public
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let mut config = ServerConfig::new(a.db.data.clone());
    config.database_url = a.db.database.clone();
    config.coordinator = CoordinatorConfig {
        lease_ttl: a.lease_ttl,
        system_retries: a.system_retries,
        max_log_bytes: a.max_log_size,
        max_artifact_bytes: a.max_artifact_size,
        default_timeout: a.default_timeout,
        server_url: public.clone(),
        registry: registry_host,
        ..CoordinatorConfig::default()
    };
    config.open_metrics = a.metrics_listen.is_some();
    if let Some(location) = &a.storage {
        let mut s3 = S3Config::new(location.clone());
        s3.redirect = a.storage_redirect;
        let probe =
            S3Storage::open(&s3).with_context(|| format!("opening the object store {location}"))?;
        open_checked(probe, StorageUse::Serve).await?;
        config.object_store = Some(s3);
    }
    config.public_repos = a.public_repos.clone();
    let (server, bootstrap) = Server::open(config).await?;
    if let Some(b) = bootstrap {
        eprintln!(
            "First start: created these tokens. They are shown only this once (only their hashes are stored).\n  \
             admin token:               {}\n  runner registration token: {}\n\
             Register a runner:  archway runner register --server {public} --token {}\n\
             Use the API:        archway server login {public} --token-stdin",
            b.admin_token, b.registration_token, b.registration_token
        );
    }
    server.spawn_background();
    if let Some(m) = a.metrics_listen {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("cannot listen on {m} for metrics"))?;
        let router = server.metrics_router();
        tokio::spawn(archway_server::serve(l, router, shutdown_signal()));
        eprintln!("metrics on http://{m}/metrics");
    }
    eprintln!(
        "archway server listening on {scheme}://{addr} (data {}{}, database {}, public URL {public})",
        a.db.data.display(),
        a.storage
            .as_ref()
            .map(|l| format!(", storage {l}"))
            .unwrap_or_default(),
        server.coord.db.display
    );
    archway_server::serve_tls(listener, server.router(), tls, shutdown_signal()).await?;
    eprintln!("archway server stopped");
    Ok(ExitCode::SUCCESS)
}
