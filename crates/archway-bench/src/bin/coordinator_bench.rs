//! The coordinator under load: a real `archway server` process (SQLite, and PostgreSQL when
//! `ARCHWAY_TEST_POSTGRES` or `--postgres` names a cluster), runners as in-process agents
//! speaking the real long-poll protocol over loopback, and real `archway runner` processes for
//! memory and kill -9.
//!
//! Measures: job pickup latency (submit → a waiting runner starts the job) with 1, 10 and 100
//! waiting runners; dispatch throughput with 100 runners and an executor that does nothing;
//! idle memory of the server and of a runner process; time from a runner's `kill -9` to its
//! job being requeued.
//!
//! Goals (issue 11): pickup p50 ≤ 20 ms and p99 ≤ 100 ms at 100 runners; ≥ 1,000 jobs/s on
//! SQLite with 2 cores; idle server ≤ 40 MB, runner ≤ 20 MB; requeue ≤ 30 s in every trial.
//! For reference: gitlab-runner polls every 3 s by default; Woodpecker's agent lease is 1 min.
//!
//! Run: `cargo build --release && target/release/coordinator-bench`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use archway_api::{
    ApiClient, JobDefinition, JobPayload, JobStatus, PipelineStatus, PlatformOffer, RegisterRunner,
    SubmitPipeline,
};
use archway_bench::proc::{self, Server};
use archway_bench::stats::Samples;
use archway_bench::table;
use archway_runner::agent::{Agent, AgentOptions};
use archway_runner::{ExecResult, Executor, JobIo};
use clap::Parser;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "coordinator-bench")]
struct Args {
    /// The archway binary (default: next to this program).
    #[arg(long)]
    archway: Option<PathBuf>,
    /// Pickup trials per runner count.
    #[arg(long, default_value_t = 200)]
    pickups: usize,
    /// Jobs for the throughput run (in pipelines of 250 parallel jobs).
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// kill -9 trials for the requeue measurement (each waits out a lease).
    #[arg(long, default_value_t = 20)]
    requeue_trials: usize,
    /// A PostgreSQL URL to create the benchmark's database through (default:
    /// ARCHWAY_TEST_POSTGRES); without one the PostgreSQL rows are skipped.
    #[arg(long, env = "ARCHWAY_TEST_POSTGRES")]
    postgres: Option<String>,
    /// Only these measurements (repeatable): memory, pickup, log, throughput, requeue.
    #[arg(long)]
    only: Vec<String>,
    /// Skip PostgreSQL even when a cluster is configured.
    #[arg(long)]
    sqlite_only: bool,
}

impl Args {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

/// Reports when each job starts, and does nothing.
#[derive(Debug)]
struct Stopwatch {
    started: mpsc::UnboundedSender<Instant>,
}

#[async_trait::async_trait]
impl Executor for Stopwatch {
    fn name(&self) -> &'static str {
        "stopwatch"
    }
    async fn run(&self, _job: &JobPayload, _io: JobIo) -> ExecResult {
        let _ = self.started.send(Instant::now());
        ExecResult::Success
    }
}

/// Writes numbered lines at a steady pace, remembering when each was written.
#[derive(Debug)]
struct Ticker {
    written: Arc<std::sync::Mutex<Vec<Instant>>>,
    lines: usize,
    every: Duration,
}

#[async_trait::async_trait]
impl Executor for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }
    async fn run(&self, _job: &JobPayload, io: JobIo) -> ExecResult {
        for i in 0..self.lines {
            if let Ok(mut w) = self.written.lock() {
                w.push(Instant::now());
            }
            io.log.write(format!("tick {i}\n").as_bytes());
            tokio::time::sleep(self.every).await;
        }
        ExecResult::Success
    }
}

/// From a job writing a line to `archway job log -f`'s stream delivering it.
async fn log_latency(c: &Coordinator, lines: usize) -> anyhow::Result<Samples> {
    use futures_util::StreamExt;
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let exec = Arc::new(Ticker {
        written: written.clone(),
        lines,
        every: Duration::from_millis(20),
    });
    let p = c
        .admin
        .submit_pipeline(&pipeline(vec![job("ticker")], &["ticker"]))
        .await?;
    let mut stream = c.admin.job_log(p.jobs[0].id, true).await?;
    let anon = ApiClient::new(&c.url, None)?;
    let platforms = vec![PlatformOffer {
        platform: "linux/amd64".into(),
        emulated: false,
    }];
    let reg = anon
        .register_runner(&RegisterRunner {
            registration_token: c.registration.clone(),
            name: "ticker".into(),
            tags: vec!["ticker".into()],
            platforms: platforms.clone(),
            concurrency: 1,
            run_untagged: false,
            version: "bench".into(),
        })
        .await?;
    let agent = Agent::new(
        AgentOptions {
            server: c.url.clone(),
            token: reg.token,
            name: "ticker".into(),
            platforms,
            concurrency: 1,
            work_dir: tempfile::tempdir()?.keep(),
            drain_deadline: Duration::from_secs(1),
            version: "bench".into(),
        },
        exec,
        Arc::new(|_| {}),
    )?;
    let task = tokio::spawn(async move {
        let _ = agent.run().await;
    });
    let mut received: Vec<(usize, Instant)> = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let now = Instant::now();
        text.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            if let Some(n) = line
                .trim()
                .strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
            {
                received.push((n, now));
            }
        }
        if received.len() == lines {
            break;
        }
    }
    task.abort();
    let written = written.lock().map(|w| w.clone()).unwrap_or_default();
    let mut s = Samples::default();
    for (n, at) in received {
        if let Some(w) = written.get(n) {
            s.latencies.push(at.saturating_duration_since(*w));
        }
    }
    if s.latencies.len() != lines {
        bail!("{} of {lines} lines arrived", s.latencies.len());
    }
    Ok(s)
}

struct Coordinator {
    server: Server,
    url: String,
    admin: ApiClient,
    admin_token: String,
    registration: String,
    _dir: tempfile::TempDir,
}

fn start_server(archway: &Path, database: Option<&str>) -> anyhow::Result<Coordinator> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut init = Command::new(archway);
    init.args(["server", "init", "--format", "json", "--data"])
        .arg(&data);
    if let Some(db) = database {
        init.args(["--database", db]);
    }
    let out = init.output()?;
    if !out.status.success() {
        bail!(
            "archway server init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tokens: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", proc::free_port()?).parse()?;
    let mut cmd = Command::new(archway);
    cmd.env("ARCHWAY_LOG", "warn")
        .args(["server", "--listen", &addr.to_string(), "--data"])
        .arg(&data);
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let server = Server::start("archway server", cmd, addr)?;
    let url = format!("http://{addr}");
    Ok(Coordinator {
        admin: ApiClient::new(&url, tokens["admin_token"].as_str().map(str::to_owned))?,
        admin_token: tokens["admin_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        registration: tokens["registration_token"]
            .as_str()
            .context("no registration token")?
            .to_owned(),
        url,
        server,
        _dir: dir,
    })
}

fn job(name: &str) -> JobDefinition {
    JobDefinition {
        name: name.into(),
        stage: "run".into(),
        script: vec!["true".into()],
        ..JobDefinition::default()
    }
}

fn pipeline(jobs: Vec<JobDefinition>, tags: &[&str]) -> SubmitPipeline {
    SubmitPipeline {
        project: "bench/app".into(),
        git_ref: format!("b{}", rand_suffix()),
        tag: false,
        sha: String::new(),
        commit_message: String::new(),
        source: None,
        file: ".gitlab-ci.yml".into(),
        stages: vec!["run".into()],
        jobs: jobs
            .into_iter()
            .map(|mut j| {
                j.tags = tags.iter().map(|t| t.to_string()).collect();
                j
            })
            .collect(),
        variables: vec![],
        masked: vec![],
        secrets: Default::default(),
        file_variables: vec![],
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Starts `n` in-process runners with the stopwatch executor.
async fn runners(
    c: &Coordinator,
    n: usize,
    concurrency: u32,
) -> anyhow::Result<(
    Vec<tokio::task::JoinHandle<()>>,
    mpsc::UnboundedReceiver<Instant>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let exec = Arc::new(Stopwatch { started: tx });
    let anon = ApiClient::new(&c.url, None)?;
    let mut tasks = Vec::new();
    let work = tempfile::tempdir()?.keep();
    for i in 0..n {
        let platforms = vec![PlatformOffer {
            platform: "linux/amd64".into(),
            emulated: false,
        }];
        let reg = anon
            .register_runner(&RegisterRunner {
                registration_token: c.registration.clone(),
                name: format!("bench-{i}"),
                tags: vec![],
                platforms: platforms.clone(),
                concurrency,
                run_untagged: true,
                version: "bench".into(),
            })
            .await?;
        let agent = Agent::new(
            AgentOptions {
                server: c.url.clone(),
                token: reg.token,
                name: format!("bench-{i}"),
                platforms,
                concurrency,
                work_dir: work.join(format!("r{i}")),
                drain_deadline: Duration::from_secs(1),
                version: "bench".into(),
            },
            exec.clone(),
            Arc::new(|_| {}),
        )?;
        tasks.push(tokio::spawn(async move {
            let _ = agent.run().await;
        }));
    }
    // Let every runner reach its long poll.
    tokio::time::sleep(Duration::from_millis(500 + 10 * n as u64)).await;
    Ok((tasks, rx))
}

async fn wait_pipelines(c: &Coordinator, ids: &[i64], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for id in ids {
        loop {
            let p = c.admin.pipeline(*id).await?;
            if p.status.is_final() {
                if p.status != PipelineStatus::Success {
                    bail!("pipeline {id} ended {}", p.status);
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("pipeline {id} still {} after {timeout:?}", p.status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Submit → a waiting runner starts the job, `trials` times with `n` runners waiting.
async fn pickup(c: &Coordinator, n: usize, trials: usize) -> anyhow::Result<Samples> {
    let (tasks, mut started) = runners(c, n, 1).await?;
    let mut s = Samples::default();
    let t_all = Instant::now();
    for i in 0..trials {
        let t0 = Instant::now();
        let p = c
            .admin
            .submit_pipeline(&pipeline(vec![job(&format!("p{i}"))], &[]))
            .await?;
        let t1 = tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .context("no runner started the job within 30 s")?
            .context("runners gone")?;
        s.latencies.push(t1.duration_since(t0));
        wait_pipelines(c, &[p.id], Duration::from_secs(30)).await?;
        // Let the runner that took it get back to its long poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.elapsed = t_all.elapsed();
    for t in tasks {
        t.abort();
    }
    Ok(s)
}

/// Jobs per second through `runners` runners that finish jobs at once.
async fn throughput(c: &Coordinator, total: usize, n: usize) -> anyhow::Result<(f64, Duration)> {
    let (tasks, mut started) = runners(c, n, 1).await?;
    let per = 250;
    let pipelines = total.div_ceil(per);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    let mut submits = Vec::new();
    for k in 0..pipelines {
        let admin = c.admin.clone();
        let jobs: Vec<JobDefinition> = (0..per).map(|i| job(&format!("j{k}-{i}"))).collect();
        submits.push(tokio::spawn(async move {
            admin.submit_pipeline(&pipeline(jobs, &[])).await
        }));
    }
    for s in submits {
        ids.push(s.await??.id);
    }
    // Watch through the light list view (no jobs), so watching costs the server little.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = c.admin.pipelines(Some("bench/app"), 1000).await?;
        let done = ids
            .iter()
            .all(|id| list.iter().any(|p| p.id == *id && p.status.is_final()));
        if done {
            if let Some(p) = list
                .iter()
                .find(|p| ids.contains(&p.id) && p.status != PipelineStatus::Success)
            {
                bail!("pipeline {} ended {}", p.id, p.status);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the throughput pipelines did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed();
    let mut ran = 0;
    while started.try_recv().is_ok() {
        ran += 1;
    }
    if ran != pipelines * per {
        bail!("{ran} jobs started, expected {}", pipelines * per);
    }
    for t in tasks {
        t.abort();
    }
    Ok((ran as f64 / elapsed.as_secs_f64(), elapsed))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A real `archway runner run` process registered with `tags`.
fn runner_process(
    archway: &Path,
    c: &Coordinator,
    dir: &Path,
    name: &str,
    tags: &str,
    executor: &str,
) -> anyhow::Result<Child> {
    let config = dir.join(format!("{name}.json"));
    let out = Command::new(archway)
        .args([
            "runner",
            "register",
            "--server",
            &c.url,
            "--token",
            &c.registration,
        ])
        .args(["--name", name, "--tags", tags, "--platform", "linux/amd64"])
        .args([
            "--executor",
            executor,
            "--run-untagged",
            "false",
            "--config",
        ])
        .arg(&config)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .output()?;
    if !out.status.success() {
        bail!(
            "archway runner register: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Command::new(archway)
        .env("ARCHWAY_LOG", "warn")
        .args(["runner", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// kill -9 of a runner mid-job → its job is requeued: seconds, per trial.
async fn requeue_trials(
    archway: &Path,
    c: &Coordinator,
    trials: usize,
) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let image = format!(
        "{}/library/busybox:1.35",
        c.url.trim_start_matches("http://")
    );
    let fixture = std::env::current_dir()?.join("testdata/busybox-oci");
    let copy = Command::new(archway)
        .args(["image", "copy", "--all", "--creds"])
        .arg(format!("admin:{}", c.admin_token))
        .arg(format!("oci:{}:1.35", fixture.display()))
        .arg(&image)
        .output()?;
    if !copy.status.success() {
        bail!(
            "pushing the busybox fixture (run from the repository root): {}",
            String::from_utf8_lossy(&copy.stderr)
        );
    }
    let mut out = Vec::new();
    for t in 0..trials {
        let tag = format!("trial{t}");
        let mut child = runner_process(archway, c, dir.path(), &tag, &tag, "sandbox")?;
        let mut j = job("sleeper");
        j.image = Some(archway_api::ImageDef {
            name: image.clone(),
            entrypoint: None,
            user: None,
        });
        j.script = vec!["sleep 3600".into()];
        let p = c.admin.submit_pipeline(&pipeline(vec![j], &[&tag])).await?;
        let id = p.jobs[0].id;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = c.admin.job(id).await?;
            // Running, and its script started (the log shows the command).
            if v.status == JobStatus::Running && v.attempts.first().is_some_and(|a| a.log_bytes > 0)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("trial {t}: the job did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        child.kill()?; // SIGKILL
        let killed = Instant::now();
        let _ = child.wait();
        loop {
            let v = c.admin.job(id).await?;
            if v.attempts.first().is_some_and(|a| a.state == "lost") {
                out.push(killed.elapsed());
                break;
            }
            if killed.elapsed() > Duration::from_secs(120) {
                bail!("trial {t}: not requeued within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.admin.cancel_pipeline(p.id).await?;
        eprintln!("  requeue trial {}: {:.1} s", t + 1, out[t].as_secs_f64());
    }
    Ok(out)
}

async fn create_pg_database(admin: &str) -> anyhow::Result<String> {
    let name = format!("bench_{}", rand_suffix());
    let out = Command::new("psql")
        .arg(admin)
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "creating a database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let archway = proc::archway_binary(args.archway.clone())?;
    let mut rows = vec![vec![
        "measure".to_string(),
        "database".into(),
        "result".into(),
        "goal".into(),
        "met".into(),
    ]];
    let mut json = serde_json::Map::new();
    let add = |rows: &mut Vec<Vec<String>>,
               m: &str,
               db: &str,
               r: String,
               goal: &str,
               met: Option<bool>| {
        rows.push(vec![
            m.into(),
            db.into(),
            r,
            goal.into(),
            met.map(|b| if b { "yes" } else { "NO" }.to_string())
                .unwrap_or_default(),
        ]);
    };

    let mut databases: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    match args.postgres.as_ref().filter(|_| !args.sqlite_only) {
        Some(admin) => databases.push(("postgres", Some(create_pg_database(admin).await?))),
        None => eprintln!(
            "no PostgreSQL (set ARCHWAY_TEST_POSTGRES or --postgres): PostgreSQL rows skipped"
        ),
    }

    for (db_name, url) in &databases {
        eprintln!("== {db_name}");
        let c = start_server(&archway, url.as_deref())?;
        // Idle memory: the server with one runner connected, nothing to do.
        if *db_name == "sqlite" && args.wants("memory") {
            let (tasks, _rx) = runners(&c, 1, 1).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss = proc::rss_bytes(c.server.pid()).unwrap_or(0);
            add(
                &mut rows,
                "idle server RSS",
                db_name,
                mib(rss),
                "≤ 40 MB",
                Some(rss <= 40_000_000),
            );
            json.insert("idle_server_rss_bytes".into(), rss.into());
            for t in tasks {
                t.abort();
            }
            let dir = tempfile::tempdir()?;
            let mut child = runner_process(&archway, &c, dir.path(), "idle", "idle", "noop")?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let rss = proc::rss_bytes(child.id()).unwrap_or(0);
            let _ = child.kill();
            let _ = child.wait();
            add(
                &mut rows,
                "idle runner RSS",
                "-",
                mib(rss),
                "≤ 20 MB",
                Some(rss <= 20_000_000),
            );
            json.insert("idle_runner_rss_bytes".into(), rss.into());
        }
        for n in [1usize, 10, 100]
            .into_iter()
            .filter(|_| args.wants("pickup"))
        {
            eprintln!("  pickup with {n} waiting runners…");
            let s = pickup(&c, n, args.pickups).await?;
            let (p50, p99) = (s.quantile(0.5), s.quantile(0.99));
            let goal = n == 100;
            add(
                &mut rows,
                &format!("pickup p50, {n} runners"),
                db_name,
                ms(p50),
                if goal { "≤ 20 ms" } else { "" },
                goal.then_some(p50 <= Duration::from_millis(20)),
            );
            add(
                &mut rows,
                &format!("pickup p99, {n} runners"),
                db_name,
                ms(p99),
                if goal { "≤ 100 ms" } else { "" },
                goal.then_some(p99 <= Duration::from_millis(100)),
            );
            json.insert(
                format!("{db_name}_pickup_p50_ms_{n}"),
                (p50.as_secs_f64() * 1000.0).into(),
            );
            json.insert(
                format!("{db_name}_pickup_p99_ms_{n}"),
                (p99.as_secs_f64() * 1000.0).into(),
            );
        }
        if args.wants("log") {
            eprintln!("  log follow latency…");
            let s = log_latency(&c, 200).await?;
            let (p50, p99) = (s.quantile(0.5), s.quantile(0.99));
            add(
                &mut rows,
                "log line → job log -f, p50",
                db_name,
                ms(p50),
                "",
                None,
            );
            add(
                &mut rows,
                "log line → job log -f, p99",
                db_name,
                ms(p99),
                "≤ 100 ms",
                Some(p99 <= Duration::from_millis(100)),
            );
            json.insert(
                format!("{db_name}_log_p50_ms"),
                (p50.as_secs_f64() * 1000.0).into(),
            );
            json.insert(
                format!("{db_name}_log_p99_ms"),
                (p99.as_secs_f64() * 1000.0).into(),
            );
        }
        if args.wants("throughput") {
            eprintln!("  throughput: {} jobs over 100 runners…", args.jobs);
            let sampler = c.server.sample_rss();
            let (rate, took) = throughput(&c, args.jobs, 100).await?;
            let peak = sampler.finish();
            let sqlite = *db_name == "sqlite";
            add(
                &mut rows,
                "dispatch, 100 runners, no-op",
                db_name,
                format!("{rate:.0} jobs/s ({:.1} s)", took.as_secs_f64()),
                if sqlite { "≥ 1,000 jobs/s" } else { "" },
                sqlite.then_some(rate >= 1000.0),
            );
            add(
                &mut rows,
                "server peak RSS under load",
                db_name,
                mib(peak),
                "",
                None,
            );
            json.insert(format!("{db_name}_jobs_per_sec"), rate.into());
            json.insert(format!("{db_name}_peak_rss_bytes"), peak.into());
        }
        if *db_name == "sqlite" && args.requeue_trials > 0 && args.wants("requeue") {
            eprintln!(
                "  requeue after kill -9 ({} trials; each waits out a 15 s lease)…",
                args.requeue_trials
            );
            let t = requeue_trials(&archway, &c, args.requeue_trials).await?;
            let mut sorted = t.clone();
            sorted.sort();
            let p50 = sorted[sorted.len() / 2];
            let max = *sorted.last().unwrap_or(&Duration::ZERO);
            add(
                &mut rows,
                "requeue after kill -9, p50",
                db_name,
                format!("{:.1} s", p50.as_secs_f64()),
                "",
                None,
            );
            add(
                &mut rows,
                &format!("requeue after kill -9, max of {}", t.len()),
                db_name,
                format!("{:.1} s", max.as_secs_f64()),
                "≤ 30 s",
                Some(max <= Duration::from_secs(30)),
            );
            json.insert("requeue_p50_s".into(), p50.as_secs_f64().into());
            json.insert("requeue_max_s".into(), max.as_secs_f64().into());
        }
    }
    println!("{}", table::render(&rows));
    println!("JSON {}", serde_json::Value::Object(json));
    Ok(())
}
