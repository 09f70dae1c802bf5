//! Options and output shared by the commands that talk to registries: TLS/credential flags,
//! the client they configure, progress display and output formats.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use archway_client::copy::{BlobOutcome, Event, ProgressSink};
use archway_client::{Client, ClientOptions, Credentials, DockerConfig};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Flags for reaching registries.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Use plain HTTP or unverified HTTPS for every registry this command talks to
    /// (loopback registries always use plain HTTP, as with docker).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// podman/skopeo spelling of --insecure: `--tls-verify=false`.
    #[arg(long, value_name = "BOOL", global = true, hide = true)]
    pub tls_verify: Option<bool>,
    /// Docker client config holding credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE", global = true)]
    pub authfile: Option<PathBuf>,
    /// Credentials for every registry of this command, as USER:PASSWORD (instead of the
    /// config file).
    #[arg(long, value_name = "USER:PASSWORD", global = true)]
    pub creds: Option<String>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 6, global = true)]
    pub concurrency: usize,
    /// Upload large blobs in chunks of this many bytes (for proxies that limit request
    /// sizes); by default a large blob streams in one request.
    #[arg(long, value_name = "BYTES", global = true)]
    pub chunk_size: Option<u64>,
}

impl RegistryArgs {
    pub fn docker_config(&self) -> DockerConfig {
        match &self.authfile {
            Some(p) => DockerConfig::at(p),
            None => DockerConfig::default_location(),
        }
    }

    /// A client configured by these flags; `registries` are those the command will use
    /// (for `--creds`).
    pub fn client(&self, registries: &[&str]) -> anyhow::Result<Client> {
        let mut opts = ClientOptions {
            docker_config: self.docker_config(),
            chunk_size: self.chunk_size.filter(|n| *n > 0),
            ..ClientOptions::default()
        };
        if self.insecure || self.tls_verify == Some(false) {
            opts.insecure.push("*".into());
        }
        if let Some(c) = &self.creds {
            let Some((u, p)) = c.split_once(':') else {
                bail!("--creds must be USER:PASSWORD");
            };
            let creds = Credentials::password(u, p);
            opts.credentials = registries
                .iter()
                .map(|r| ((*r).to_owned(), creds.clone()))
                .collect::<HashMap<_, _>>();
        }
        Client::new(opts).context("setting up the registry client")
    }
}

/// Output format for commands scripts read.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub fn short(d: &archway_oci::Digest) -> String {
    format!("{}:{}", d.algorithm(), &d.hex()[..12])
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Progress on stderr: bars on a terminal, one line per finished item otherwise.
pub fn progress(quiet: bool) -> Option<ProgressSink> {
    if quiet {
        return None;
    }
    if std::io::stderr().is_terminal() {
        let multi = MultiProgress::new();
        let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Some(Arc::new(move |e: Event| {
            let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
            match e {
                Event::BlobStart { digest, size } => {
                    let b = multi.add(ProgressBar::new(size));
                    b.set_style(style.clone());
                    b.set_prefix(short(&digest));
                    bars.insert(digest.to_string(), b);
                }
                Event::BlobProgress { digest, done } => {
                    if let Some(b) = bars.get(&digest.to_string()) {
                        b.set_position(done);
                    }
                }
                Event::BlobDone {
                    digest,
                    size,
                    outcome,
                } => {
                    let msg = line_for_blob(&digest, size, outcome);
                    if let Some(b) = bars.remove(&digest.to_string()) {
                        b.finish_and_clear();
                    }
                    let _ = multi.println(msg);
                }
                other => {
                    if let Some(l) = line_for(&other) {
                        let _ = multi.println(l);
                    }
                }
            }
        }))
    } else {
        Some(Arc::new(|e: Event| {
            let line = match &e {
                Event::BlobDone {
                    digest,
                    size,
                    outcome,
                } => Some(line_for_blob(digest, *size, *outcome)),
                other => line_for(other),
            };
            if let Some(l) = line {
                eprintln!("{l}");
            }
        }))
    }
}

fn line_for_blob(digest: &archway_oci::Digest, size: u64, outcome: BlobOutcome) -> String {
    let what = match outcome {
        BlobOutcome::Copied => "copied",
        BlobOutcome::Exists => "exists",
        BlobOutcome::Mounted => "mounted",
    };
    format!("blob {} {:>10}  {what}", short(digest), human_bytes(size))
}

fn line_for(e: &Event) -> Option<String> {
    match e {
        Event::Resolved {
            digest,
            media_type,
            platforms,
        } => Some(if platforms.is_empty() {
            format!("source {} ({media_type})", short(digest))
        } else {
            format!(
                "source {} ({media_type}): {}",
                short(digest),
                platforms.join(", ")
            )
        }),
        Event::ManifestDone { digest, tag, .. } => Some(match tag {
            Some(t) => format!("manifest {} tagged {t}", short(digest)),
            None => format!("manifest {}", short(digest)),
        }),
        _ => None,
    }
}

/// Runs a future on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f))
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
