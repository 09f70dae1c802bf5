//! Registry benchmark: Archway's registry side by side with CNCF distribution 2.8 (Debian's
//! `docker-registry`) on loopback, driven by the same client in the same run, on the
//! filesystem and on S3 (a moto server, `moto[server]` from PyPI, fresh for every run):
//!
//! * `archway fs` vs `distribution fs`: both on a fresh directory;
//! * `archway s3` vs `distribution s3` (its `s3` driver, redirects off): both on the same
//!   kind of S3 server;
//! * pulls only: `archway s3 redirect` (`--storage-redirect`: the registry answers 307 with a
//!   presigned URL, the client fetches from the store) vs `store direct` (the client GETs the
//!   same presigned URLs without asking the registry).
//!
//! For each scenario every server starts fresh, is prepared the same way, then loaded for
//! `--duration` by `concurrency` client tasks. Reported: throughput, p50/p99 latency of one
//! operation, the server's peak RSS, and the ratio to its peer.
//!
//! * push: `POST` + `PATCH` (whole blob) + `PUT ?digest=`, as docker and containers/image do;
//!   every blob is distinct (a shared body with a unique 8-byte tail, so the client's hashing
//!   costs nothing);
//! * pull: `GET` of pre-pushed blobs, body read to the end;
//! * manifest GET: `GET /v2/<name>/manifests/<tag>` of one pre-pushed image.
//!
//! With `--baseline OTHER_ARCHWAY`, a second archway binary (say, a build of the previous
//! commit) runs in the filesystem rows too (`archway baseline`, compared with
//! `distribution fs`), so a change is measured before and after in one run, on the same
//! machine, beside the same distribution.
//!
//! Run: `cargo build --release && target/release/registry-bench` (see `--help`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use archway_bench::proc::{
    S3_BUCKET, S3_KEY, Server, archway_binary, free_port, start_archway_registry,
    start_archway_registry_s3, start_moto,
};
use archway_bench::stats::Samples;
use archway_bench::table;
use archway_oci::{Algorithm, Descriptor, Digest, Digester, ImageManifest, media_type};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const MIB: usize = 1024 * 1024;
/// The row name of the `--baseline` binary.
const BASELINE: &str = "archway baseline";

/// Archway's registry vs distribution 2.8: push/pull throughput, manifest GETs, latency, RSS.
#[derive(Debug, Parser)]
#[command(name = "registry-bench")]
struct Args {
    /// The archway binary (default: next to this program).
    #[arg(long)]
    archway: Option<PathBuf>,
    /// Another archway binary to run in the same scenarios (reported as `archway baseline`),
    /// e.g. a build of the commit before a change.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The distribution binary.
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    /// How long each scenario loads each server.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Only run scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// moto's server program, for the S3 rows (default: $ARCHWAY_TEST_MOTO, else
    /// `moto_server` on PATH; `pip install 'moto[server]'`).
    #[arg(long, env = "ARCHWAY_TEST_MOTO", default_value = "moto_server")]
    moto: PathBuf,
    /// Leave out the S3 rows.
    #[arg(long)]
    no_s3: bool,
}

/// A server (or, for `StoreDirect`, the store itself) under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Contender {
    ArchwayFs,
    /// The `--baseline` binary, on disk.
    BaselineFs,
    DistributionFs,
    ArchwayS3,
    DistributionS3,
    ArchwayS3Redirect,
    StoreDirect,
}

impl Contender {
    const ALL: [Contender; 7] = [
        Contender::ArchwayFs,
        Contender::BaselineFs,
        Contender::DistributionFs,
        Contender::ArchwayS3,
        Contender::DistributionS3,
        Contender::ArchwayS3Redirect,
        Contender::StoreDirect,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::ArchwayFs => "archway fs",
            Contender::BaselineFs => BASELINE,
            Contender::DistributionFs => "distribution fs",
            Contender::ArchwayS3 => "archway s3",
            Contender::DistributionS3 => "distribution s3",
            Contender::ArchwayS3Redirect => "archway s3 redirect",
            Contender::StoreDirect => "store direct",
        }
    }

    /// Whom the ratio column compares it with.
    fn peer(self) -> Option<Contender> {
        match self {
            Contender::ArchwayFs | Contender::BaselineFs => Some(Contender::DistributionFs),
            Contender::ArchwayS3 => Some(Contender::DistributionS3),
            Contender::ArchwayS3Redirect => Some(Contender::StoreDirect),
            _ => None,
        }
    }

    fn s3(self) -> bool {
        !matches!(
            self,
            Contender::ArchwayFs | Contender::BaselineFs | Contender::DistributionFs
        )
    }

    fn runs(self, kind: Kind) -> bool {
        match self {
            Contender::ArchwayS3Redirect | Contender::StoreDirect => matches!(kind, Kind::Pull),
            _ => true,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Push,
    Pull,
    ManifestGet,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    kind: Kind,
    size: usize,
    concurrency: usize,
}

fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for kind in [Kind::Push, Kind::Pull] {
        for size in [MIB, 64 * MIB] {
            for concurrency in [1, 32] {
                let verb = match kind {
                    Kind::Push => "push",
                    _ => "pull",
                };
                v.push(Scenario {
                    name: format!("blob {verb} {} MiB c{concurrency}", size / MIB),
                    kind,
                    size,
                    concurrency,
                });
            }
        }
    }
    v.push(Scenario {
        name: "manifest GET c64".into(),
        kind: Kind::ManifestGet,
        size: 0,
        concurrency: 64,
    });
    v
}

type HttpClient = Client<HttpConnector, BoxBody<Bytes, std::io::Error>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .build(connector)
}

fn empty() -> BoxBody<Bytes, std::io::Error> {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(b: Bytes) -> BoxBody<Bytes, std::io::Error> {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// A blob made of a shared body and a unique tail, with its digest.
#[derive(Clone)]
struct Blob {
    head: Bytes,
    tail: Bytes,
    digest: Digest,
}

impl Blob {
    fn body(&self) -> BoxBody<Bytes, std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(self.head.clone())),
            Ok(Frame::data(self.tail.clone())),
        ];
        BoxBody::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Generates distinct blobs of one size cheaply: the hash state of the shared part is
/// computed once and cloned for each tail.
struct BlobFactory {
    head: Bytes,
    state: Digester,
    counter: AtomicU64,
}

impl BlobFactory {
    fn new(size: usize, seed: u64) -> Self {
        let mut x = seed | 1;
        let head: Vec<u8> = (0..size - 8)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut state = Digester::new(Algorithm::Sha256);
        state.update(&head);
        BlobFactory {
            head: head.into(),
            state,
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> Blob {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tail = Bytes::copy_from_slice(&n.to_le_bytes());
        let mut d = self.state.clone();
        d.update(&tail);
        Blob {
            head: self.head.clone(),
            tail,
            digest: d.finish(),
        }
    }
}

async fn send(
    c: &HttpClient,
    method: Method,
    url: &str,
    body: BoxBody<Bytes, std::io::Error>,
    headers: &[(&str, String)],
) -> anyhow::Result<(StatusCode, http::HeaderMap, u64)> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let resp = c.request(b.body(body)?).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok((status, headers, n))
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// One blob push as docker does it: POST, PATCH with the whole blob, PUT ?digest=.
async fn push_blob(c: &HttpClient, base: &str, repo: &str, blob: &Blob) -> anyhow::Result<()> {
    let (s, h, _) = send(
        c,
        Method::POST,
        &format!("{base}/v2/{repo}/blobs/uploads/"),
        empty(),
        &[],
    )
    .await?;
    if s != StatusCode::ACCEPTED {
        bail!("POST upload: {s}");
    }
    let loc = absolute(base, h.get("location").context("no Location")?.to_str()?);
    let (s, h, _) = send(
        c,
        Method::PATCH,
        &loc,
        blob.body(),
        &[
            ("content-type", "application/octet-stream".into()),
            ("content-length", blob.len().to_string()),
        ],
    )
    .await?;
    if s != StatusCode::ACCEPTED {
        bail!("PATCH: {s}");
    }
    let loc = absolute(base, h.get("location").context("no Location")?.to_str()?);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let (s, _, _) = send(
        c,
        Method::PUT,
        &format!("{loc}{sep}digest={}", blob.digest),
        empty(),
        &[("content-length", "0".into())],
    )
    .await?;
    if s != StatusCode::CREATED {
        bail!("PUT upload: {s}");
    }
    Ok(())
}

struct Prepared {
    /// Where each pull blob is read from: the registry, or (store direct) presigned URLs.
    pull_urls: Vec<String>,
    tag: String,
}

/// A GET that follows one redirect (to the object store); returns status and body length.
async fn get_following(c: &HttpClient, url: &str) -> anyhow::Result<(StatusCode, u64)> {
    let (st, h, n) = send(c, Method::GET, url, empty(), &[]).await?;
    if st != StatusCode::TEMPORARY_REDIRECT {
        return Ok((st, n));
    }
    let location = h
        .get("location")
        .context("redirect without Location")?
        .to_str()?;
    let (st, _, n) = send(c, Method::GET, location, empty(), &[]).await?;
    Ok((st, n))
}

async fn prepare(
    c: &HttpClient,
    base: &str,
    sc: &Scenario,
    direct: bool,
) -> anyhow::Result<Prepared> {
    let mut pull_urls = Vec::new();
    if let Kind::Pull = sc.kind {
        let f = BlobFactory::new(sc.size, 7);
        for _ in 0..8 {
            let b = f.next();
            push_blob(c, base, "bench/pull", &b).await?;
            let url = format!("{base}/v2/bench/pull/blobs/{}", b.digest);
            pull_urls.push(if direct {
                // The presigned URL the registry redirects to, fetched from the store itself.
                let (st, h, _) = send(c, Method::GET, &url, empty(), &[]).await?;
                if st != StatusCode::TEMPORARY_REDIRECT {
                    bail!("expected a redirect for {url}, got {st}");
                }
                h.get("location")
                    .context("no Location")?
                    .to_str()?
                    .to_owned()
            } else {
                url
            });
        }
    }
    let tag = "v1".to_owned();
    if let Kind::ManifestGet = sc.kind {
        let layer = BlobFactory::new(4096, 9).next();
        push_blob(c, base, "bench/manifest", &layer).await?;
        let config = Bytes::from_static(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let cblob = Blob {
            head: config.clone(),
            tail: Bytes::new(),
            digest: Digest::sha256(&config),
        };
        push_blob(c, base, "bench/manifest", &cblob).await?;
        let m = ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.into(),
            artifact_type: None,
            config: Descriptor::new(
                media_type::OCI_CONFIG,
                cblob.digest.clone(),
                config.len() as u64,
            ),
            layers: vec![Descriptor::new(
                media_type::OCI_LAYER_GZIP,
                layer.digest.clone(),
                layer.len() as u64,
            )],
            subject: None,
            annotations: None,
        };
        let (s, _, _) = send(
            c,
            Method::PUT,
            &format!("{base}/v2/bench/manifest/manifests/{tag}"),
            full(m.to_json().into()),
            &[("content-type", media_type::OCI_MANIFEST.into())],
        )
        .await?;
        if s != StatusCode::CREATED {
            bail!("manifest PUT: {s}");
        }
    }
    Ok(Prepared { pull_urls, tag })
}

async fn run_load(
    base: String,
    sc: Scenario,
    prepared: Prepared,
    duration: Duration,
) -> anyhow::Result<Samples> {
    let c = client();
    let factory = Arc::new(BlobFactory::new(sc.size.max(16), 42));
    let prepared = Arc::new(prepared);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..sc.concurrency {
        let (c, base, factory, prepared, sc) = (
            c.clone(),
            base.clone(),
            factory.clone(),
            prepared.clone(),
            sc.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = worker;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match sc.kind {
                    Kind::Push => {
                        let b = factory.next();
                        push_blob(&c, &base, "bench/push", &b).await?;
                        s.bytes += b.len() as u64;
                    }
                    Kind::Pull => {
                        let url = &prepared.pull_urls[i % prepared.pull_urls.len()];
                        let (st, n) = get_following(&c, url).await?;
                        if st != StatusCode::OK || n != sc.size as u64 {
                            bail!("pull: {st}, {n} bytes");
                        }
                        s.bytes += n;
                    }
                    Kind::ManifestGet => {
                        let (st, _, n) = send(
                            &c,
                            Method::GET,
                            &format!("{base}/v2/bench/manifest/manifests/{}", prepared.tag),
                            empty(),
                            &[("accept", media_type::OCI_MANIFEST.into())],
                        )
                        .await?;
                        if st != StatusCode::OK {
                            bail!("manifest GET: {st}");
                        }
                        s.bytes += n;
                    }
                }
                s.latencies.push(t0.elapsed());
                i += 1;
            }
            Ok::<Samples, anyhow::Error>(s)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await??);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

struct Result1 {
    samples: Samples,
    peak_rss: u64,
}

/// distribution on a directory, or (with `s3`, an endpoint) on the S3 server with its `s3`
/// driver, redirects off, blob descriptors cached in memory in both cases.
fn start_distribution(
    bin: &PathBuf,
    root: &std::path::Path,
    s3: Option<&str>,
) -> anyhow::Result<Server> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config = root.with_extension("yml");
    std::fs::create_dir_all(root)?;
    let driver = match s3 {
        None => format!("  filesystem:\n    rootdirectory: {}\n", root.display()),
        Some(endpoint) => format!(
            "  s3:\n    accesskey: {S3_KEY}\n    secretkey: {S3_KEY}\n    region: us-east-1\n    regionendpoint: {endpoint}\n    bucket: {S3_BUCKET}\n    rootdirectory: /distribution\n    secure: false\n    v4auth: true\n  redirect:\n    disable: true\n"
        ),
    };
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n{driver}  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg(&config);
    // The AWS SDK in distribution refuses to start when AWS_CA_BUNDLE is set (its HTTP
    // transport cannot take one); the store here is plain HTTP on loopback anyway.
    cmd.env_remove("AWS_CA_BUNDLE");
    Server::start("distribution", cmd, addr)
}

fn run_one(
    rt: &tokio::runtime::Runtime,
    server: Server,
    sc: &Scenario,
    duration: Duration,
    direct: bool,
) -> anyhow::Result<Result1> {
    let base = format!("http://{}", server.addr);
    let c = client();
    let prepared = rt
        .block_on(prepare(&c, &base, sc, direct))
        .with_context(|| format!("preparing {} for {}", server.name, sc.name))?;
    let sampler = server.sample_rss();
    let samples = rt
        .block_on(run_load(base, sc.clone(), prepared, duration))
        .with_context(|| format!("{} on {}", sc.name, server.name))?;
    let peak_rss = sampler.finish();
    drop(server);
    Ok(Result1 { samples, peak_rss })
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let archway = archway_binary(args.archway)?;
    let baseline = match args.baseline {
        Some(b) if !b.exists() => bail!("baseline {} not found", b.display()),
        b => b,
    };
    if !args.distribution.exists() {
        bail!(
            "{} not found; install it with `apt-get install docker-registry`",
            args.distribution.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work = tempfile::tempdir()?;
    let mut rows = vec![vec![
        "scenario".to_owned(),
        "server".into(),
        "ops".into(),
        "ops/s".into(),
        "MiB/s".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "peak RSS MiB".into(),
        "throughput ratio".into(),
        "p99 ratio".into(),
    ]];
    let mut json = Vec::new();
    let s3 = !args.no_s3;
    if s3 && !archway_bench::proc::on_path(&args.moto) {
        bail!(
            "{} not found: install moto's server (`pip install 'moto[server]'`), pass --moto, or --no-s3",
            args.moto.display()
        );
    }
    for (i, sc) in scenarios().into_iter().enumerate() {
        if let Some(only) = &args.only
            && !sc.name.contains(only.as_str())
        {
            continue;
        }
        eprintln!(
            "running: {} ({} each)",
            sc.name,
            humantime::format_duration(args.duration)
        );
        let mut order: Vec<Contender> = Contender::ALL
            .into_iter()
            .filter(|c| c.runs(sc.kind) && (s3 || !c.s3()))
            .filter(|c| *c != Contender::BaselineFs || baseline.is_some())
            .collect();
        // Alternate which server goes first so none always runs on a warmer machine.
        if i % 2 == 1 {
            order.reverse();
        }
        let mut results = std::collections::HashMap::new();
        for who in order {
            let root = work
                .path()
                .join(format!("{}-{i}", who.name().replace(' ', "-")));
            // Every S3 run gets a fresh store; it lives as long as the run.
            let moto = if who.s3() {
                Some(start_moto(&args.moto)?)
            } else {
                None
            };
            let endpoint = moto.as_ref().map(|m| format!("http://{}", m.addr));
            let server = match who {
                Contender::ArchwayFs => start_archway_registry(&archway, &root)?,
                Contender::BaselineFs => match &baseline {
                    Some(b) => start_archway_registry(b, &root)?,
                    None => continue,
                },
                Contender::DistributionFs => start_distribution(&args.distribution, &root, None)?,
                Contender::ArchwayS3 => {
                    start_archway_registry_s3(&archway, endpoint.as_deref().unwrap_or(""), false)?
                }
                Contender::DistributionS3 => {
                    start_distribution(&args.distribution, &root, endpoint.as_deref())?
                }
                Contender::ArchwayS3Redirect | Contender::StoreDirect => {
                    start_archway_registry_s3(&archway, endpoint.as_deref().unwrap_or(""), true)?
                }
            };
            let direct = who == Contender::StoreDirect;
            results.insert(who, run_one(&rt, server, &sc, args.duration, direct)?);
            drop(moto);
            let _ = std::fs::remove_dir_all(&root);
        }
        let throughput = |r: &Result1| match sc.kind {
            Kind::ManifestGet => r.samples.ops_per_sec(),
            _ => r.samples.mib_per_sec(),
        };
        for who in Contender::ALL {
            let Some(r) = results.get(&who) else {
                continue;
            };
            let peer = who.peer().and_then(|p| results.get(&p));
            let (ratio, p99_ratio) = match peer {
                Some(p) => (
                    format!("{:.2}x", throughput(r) / throughput(p).max(1e-9)),
                    format!(
                        "{:.2}",
                        r.samples.quantile(0.99).as_secs_f64()
                            / p.samples.quantile(0.99).as_secs_f64().max(1e-12)
                    ),
                ),
                None => (String::new(), String::new()),
            };
            rows.push(vec![
                sc.name.clone(),
                who.name().to_owned(),
                r.samples.ops().to_string(),
                format!("{:.0}", r.samples.ops_per_sec()),
                format!("{:.1}", r.samples.mib_per_sec()),
                fmt_ms(r.samples.quantile(0.5)),
                fmt_ms(r.samples.quantile(0.99)),
                format!("{:.1}", r.peak_rss as f64 / MIB as f64),
                ratio,
                p99_ratio,
            ]);
            json.push(serde_json::json!({
                "scenario": sc.name, "server": who.name(), "ops": r.samples.ops(),
                "ops_per_sec": r.samples.ops_per_sec(), "mib_per_sec": r.samples.mib_per_sec(),
                "p50_ms": r.samples.quantile(0.5).as_secs_f64() * 1000.0,
                "p99_ms": r.samples.quantile(0.99).as_secs_f64() * 1000.0,
                "peak_rss_bytes": r.peak_rss,
            }));
        }
    }
    println!("{}", table::render(&rows));
    println!(
        "throughput ratio = against the peer: archway fs (and archway baseline) / distribution fs, archway s3 / distribution s3, archway s3 redirect / store direct (MiB/s for blobs, requests/s for manifests); p99 ratio likewise (lower is better). Peak RSS is the registry's (for store direct, the idle registry's)."
    );
    let line = serde_json::Value::Array(json);
    println!("JSON {line}");
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&line)?)?;
    }
    Ok(())
}
