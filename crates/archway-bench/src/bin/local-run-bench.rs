//! `archway pipeline run` (a local run: no server, no daemon) side by side with
//! `gitlab-ci-local` 4.70 (Node 20) and Debian's docker engine as its executor: the same
//! pipelines in the same kind of git repository, the same images loaded into each tool's store,
//! on the same machine, in the same run. Run `scripts/bench-local-run-setup.sh` first (as root:
//! it installs the peer, starts the docker engine and loads busybox into it), then
//! `cargo build --release -p archway-cli -p archway-bench && target/release/local-run-bench`.
//!
//! Scenarios (the tools alternate run by run; each tool's first run is a warm-up, not counted;
//! each tool keeps its state between runs: `.archway/`, `.gitlab-ci-local/`):
//! * `(a) 10 echo jobs`: fixtures/local-run/echo-10, ten `echo` jobs in busybox:1.35, 3 stages;
//! * `(b) hello-multiarch, amd64`: a copy of examples/hello-multiarch with the example's
//!   pipeline restricted to amd64 (fixtures/local-run/hello-amd64), its image built beforehand
//!   with `archway build --platform linux/amd64` and given to both tools (Archway pulls it from
//!   the bench's registry, docker gets it with `skopeo copy … docker-daemon:`), same name.
//!
//! Feature row (once per tool): fixtures/local-run/arm64-tag, a `tags: [arm64]` job printing
//! `uname -m`; gitlab-ci-local ignores tags, so this is reported as what each printed, not as a
//! ratio.
//!
//! Measured per run: wall time from spawn to exit; peak RSS of the tool's process tree (the sum
//! over the process and all its descendants, sampled every 20 ms; for Archway that is
//! everything, job containers (runc) included; for gitlab-ci-local node, the docker CLIs, git
//! and rsync); the CPU time of that tree (user+sys of the descendants it waited for); and the
//! peak RSS growth, over its level just before the run, of the service the tool leans on:
//! for gitlab-ci-local the docker engine (dockerd, its containerd, the shims and the job
//! containers under them), for Archway the bench's registry it pulls images from (a stand-in
//! for Docker Hub, which docker does not need here: its images are loaded beforehand).
//! Goal (the issue): Archway's median wall time ≤ 0.5x gitlab-ci-local's.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use archway_bench::proc::{archway_binary, start_archway_registry};
use archway_bench::stats::median;
use archway_bench::table;
use clap::Parser;

/// Compare `archway pipeline run` with gitlab-ci-local on the same pipelines.
#[derive(Debug, Parser)]
#[command(name = "local-run-bench")]
struct Args {
    /// The archway binary (default: next to this program).
    #[arg(long)]
    archway: Option<PathBuf>,
    /// Counted runs per tool and scenario (after one warm-up run each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these scenarios (comma-separated: echo-10, hello-amd64, arm64-tag).
    #[arg(long)]
    only: Option<String>,
    /// The docker engine gitlab-ci-local runs its jobs on.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///tmp/bench-docker.sock"
    )]
    docker_host: String,
    /// The gitlab-ci-local program.
    #[arg(long, default_value = "gitlab-ci-local")]
    gitlab_ci_local: String,
    /// The two-platform busybox image as an OCI layout, tag 1.35 (default: the repository's
    /// fixture).
    #[arg(long)]
    busybox_layout: Option<PathBuf>,
    /// Keep the work directory (repositories, logs, registry) for inspection.
    #[arg(long)]
    keep_work: bool,
}

const SETUP_HINT: &str = "run `scripts/bench-local-run-setup.sh` (as root) first: it installs \
    rsync, docker.io and skopeo with apt-get, gitlab-ci-local with \
    `npm install -g gitlab-ci-local@4.70.1` (4.70 runs on Node 20; later releases need Node \
    22), starts Debian's dockerd on unix:///tmp/bench-docker.sock and loads busybox:1.35 \
    (amd64) into it from the repository's OCI fixture";

/// The image the example's pipeline runs (its `APP_IMAGE` default), in both tools' stores.
const APP_IMAGE: &str = "registry.example.com/demo/hello:1.0";
/// gitlab-ci-local's helper container only runs `sh -c 'chown … && chmod …'` for these
/// pipelines (no artifacts, no caches); its default (firecow/gitlab-ci-local-util) would be
/// pulled from Docker Hub, which this machine cannot reach.
const GCL_HELPER: &str = "busybox:1.35";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Archway,
    Gcl,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Archway => "archway pipeline run",
            Tool::Gcl => "gitlab-ci-local",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tool::Archway => "archway",
            Tool::Gcl => "gcl",
        }
    }
}

struct Bench {
    archway: PathBuf,
    gcl: String,
    docker_host: String,
    registry: String,
    registry_pid: u32,
    work: PathBuf,
    home: PathBuf,
    fixtures: PathBuf,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Measure {
    wall: Duration,
    /// Peak RSS of the tool's process tree, bytes.
    tree_rss: u64,
    /// Peak RSS growth of the service the tool leans on, bytes.
    side_rss: u64,
    /// User+sys CPU of the descendants the tool waited for.
    cpu: Duration,
}

struct Scenario {
    key: &'static str,
    label: &'static str,
    /// Pipelines this many jobs, all of which must pass.
    jobs: usize,
    /// A directory copied into the repository before the pipeline file (the application).
    app: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let archway = archway_binary(args.archway.clone())?;
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo_root = manifest_dir.join("../..");
    let fixtures = manifest_dir.join("fixtures/local-run");
    let layout = args
        .busybox_layout
        .clone()
        .unwrap_or_else(|| repo_root.join("testdata/busybox-oci"));
    let examples = repo_root.join("examples/hello-multiarch");

    let versions = check_peer(&args)?;
    let wanted = |s: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == s))
    };

    let work = tempfile::Builder::new()
        .prefix("archway-local-run-bench")
        .tempdir_in("/var/tmp")?;
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let registry = start_archway_registry(&archway, &work.path().join("registry"))?;
    let bench = Bench {
        archway: archway.clone(),
        gcl: args.gitlab_ci_local.clone(),
        docker_host: args.docker_host.clone(),
        registry: registry.addr.to_string(),
        registry_pid: registry.pid(),
        work: work.path().to_owned(),
        home,
        fixtures,
    };
    eprintln!(
        "seeding the bench registry {} with busybox:1.35",
        bench.registry
    );
    run_ok(
        bench.archway_cmd().args([
            "image",
            "copy",
            "--all",
            "--quiet",
            &format!("oci:{}:1.35", layout.display()),
            &format!("{}/hub/library/busybox:1.35", bench.registry),
        ]),
        "seeding the registry with the busybox fixture",
    )?;
    let archway_version = output_of(bench.archway_cmd().arg("--version"))?;

    let mut results: Vec<(&Scenario, [Vec<Measure>; 2])> = Vec::new();
    let scenarios = [
        Scenario {
            key: "echo-10",
            label: "(a) 10 echo jobs, busybox",
            jobs: 10,
            app: None,
        },
        Scenario {
            key: "hello-amd64",
            label: "(b) examples/hello-multiarch, amd64",
            jobs: 2,
            app: Some(examples.clone()),
        },
    ];
    let mut app_digest = None;
    for sc in &scenarios {
        if !wanted(sc.key) {
            continue;
        }
        if sc.app.is_some() {
            app_digest = Some(bench.prepare_app_image(&examples)?);
        }
        eprintln!("{}", sc.label);
        let repos = [bench.repo(sc, Tool::Archway)?, bench.repo(sc, Tool::Gcl)?];
        let mut ms: [Vec<Measure>; 2] = Default::default();
        for run in 0..=args.runs {
            let order = if run % 2 == 0 {
                [Tool::Archway, Tool::Gcl]
            } else {
                [Tool::Gcl, Tool::Archway]
            };
            for tool in order {
                let i = tool as usize;
                let m = bench.measure(tool, &repos[i], sc, run)?;
                eprintln!(
                    "  run {run}{} {:<22} {:>7.3} s  {:>6.1} MiB",
                    if run == 0 { " (warm-up)" } else { "" },
                    tool.name(),
                    m.wall.as_secs_f64(),
                    mib(m.tree_rss)
                );
                if run > 0 {
                    ms[i].push(m);
                }
            }
        }
        results.push((sc, ms));
    }
    let feature = if wanted("arm64-tag") {
        eprintln!("feature: a `tags: [arm64]` job");
        Some([bench.arm64_archway()?, bench.arm64_gcl()?])
    } else {
        None
    };

    // The report.
    println!(
        "local-run-bench: {} runs per tool and scenario after one warm-up each",
        args.runs
    );
    println!("  {archway_version}; gitlab-ci-local {}", versions.gcl);
    println!(
        "  node {}; docker engine {} at {}; {} CPUs; load average at start {}",
        versions.node,
        versions.docker,
        args.docker_host,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        versions.load
    );
    println!();
    let mut rows = vec![vec![
        "scenario".to_owned(),
        "tool".into(),
        "runs".into(),
        "wall median".into(),
        "wall min/max".into(),
        "peak RSS (tree)".into(),
        "service +RSS".into(),
        "CPU (tree)".into(),
        "archway/peer".into(),
    ]];
    let mut json = Vec::new();
    for (sc, ms) in &results {
        let walls: [Vec<Duration>; 2] = [
            ms[0].iter().map(|m| m.wall).collect(),
            ms[1].iter().map(|m| m.wall).collect(),
        ];
        let ratio = median(&walls[0]).as_secs_f64() / median(&walls[1]).as_secs_f64().max(1e-9);
        for tool in [Tool::Archway, Tool::Gcl] {
            let i = tool as usize;
            let w = &walls[i];
            let min = w.iter().min().copied().unwrap_or_default();
            let max = w.iter().max().copied().unwrap_or_default();
            let rss = ms[i].iter().map(|m| m.tree_rss).max().unwrap_or(0);
            let side = ms[i].iter().map(|m| m.side_rss).max().unwrap_or(0);
            let cpus: Vec<Duration> = ms[i].iter().map(|m| m.cpu).collect();
            rows.push(vec![
                sc.label.to_owned(),
                tool.name().to_owned(),
                w.len().to_string(),
                format!("{:.3} s", median(w).as_secs_f64()),
                format!("{:.3}/{:.3} s", min.as_secs_f64(), max.as_secs_f64()),
                format!("{:.1} MiB", mib(rss)),
                format!(
                    "{:.1} MiB {}",
                    mib(side),
                    if tool == Tool::Archway {
                        "(registry)"
                    } else {
                        "(docker)"
                    }
                ),
                format!("{:.2} s", median(&cpus).as_secs_f64()),
                if tool == Tool::Archway {
                    format!(
                        "{ratio:.2}x ({})",
                        if ratio <= 0.5 {
                            "≤ 0.5x: met"
                        } else {
                            "≤ 0.5x: NOT met"
                        }
                    )
                } else {
                    String::new()
                },
            ]);
            json.push(serde_json::json!({
                "scenario": sc.key, "tool": tool.key(),
                "wall_s": w.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "median_s": median(w).as_secs_f64(),
                "peak_tree_rss_bytes": rss, "peak_service_rss_growth_bytes": side,
                "median_cpu_s": median(&cpus).as_secs_f64(),
            }));
        }
    }
    if let Some([a, g]) = &feature {
        for (tool, f) in [(Tool::Archway, a), (Tool::Gcl, g)] {
            rows.push(vec![
                "feature: `tags: [arm64]` honoured".into(),
                tool.name().into(),
                "1".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                f.verdict(),
            ]);
            json.push(serde_json::json!({
                "scenario": "arm64-tag", "tool": tool.key(),
                "uname_m": f.uname, "where": f.place, "honoured": f.honoured(),
            }));
        }
    }
    println!("{}", table::render(&rows));
    println!("wall: spawn to exit of the tool; archway/peer: ratio of the wall medians.");
    println!(
        "peak RSS (tree): the most, over the counted runs, of the summed RSS of the tool's \
         process and all its descendants (sampled every 20 ms): Archway's one process with its \
         job containers (runc); for gitlab-ci-local node, the docker CLIs, git and rsync."
    );
    println!(
        "service +RSS: peak growth over the level just before the run of what the tool leans \
         on: for gitlab-ci-local the docker engine (dockerd, containerd, shims and the job \
         containers under them); for Archway the bench's registry it pulls images from (the \
         stand-in for Docker Hub; docker has its images loaded beforehand)."
    );
    println!(
        "CPU (tree): median user+sys time of the descendants the tool waited for (not the \
         docker engine's)."
    );
    println!(
        "same for both: the pipeline file, a git repository with an `origin` remote, warm state \
         kept between runs, images already in each tool's store (docker: loaded with skopeo; \
         gitlab-ci-local runs with --pull-policy if-not-present --helper-image {GCL_HELPER})."
    );
    if let Some([a, g]) = &feature {
        println!(
            "feature: a `tags: [arm64]` job printing `uname -m` (fixtures/local-run/arm64-tag), \
             read from its log; Archway ran it on {}; gitlab-ci-local ran it in {}.",
            a.place, g.place
        );
    }
    if let Some(d) = &app_digest {
        println!(
            "(b): the example's .gitlab-ci.yml with its matrix restricted to `ARCH: [amd64]`; \
             the app image {APP_IMAGE} built once by `archway build --platform linux/amd64` \
             ({d}): Archway pulls it via --registry-mirror registry.example.com=<bench \
             registry>, docker has it loaded under the same name. The example's arm64 half has \
             no equivalent under gitlab-ci-local: it ignores `tags: [$ARCH]` and would run the \
             arm64 instance on this host's architecture, failing its own `built for arm64` and \
             `uname -m` checks; see the feature row."
        );
    }
    println!("JSON {}", serde_json::Value::Array(json));
    if args.keep_work {
        let kept = work.keep();
        eprintln!("work directory kept: {}", kept.display());
    }
    drop(registry);
    Ok(())
}

/// What the peer's side reports about itself.
struct Versions {
    gcl: String,
    node: String,
    docker: String,
    load: String,
}

/// Everything gitlab-ci-local needs here, or an error saying how to get it.
fn check_peer(args: &Args) -> anyhow::Result<Versions> {
    let gcl = match Command::new(&args.gitlab_ci_local)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => bail!(
            "the peer is missing: `{}` does not run.\n{SETUP_HINT}",
            args.gitlab_ci_local
        ),
    };
    let node = output_of(Command::new("node").arg("--version")).unwrap_or_default();
    if Command::new("rsync").arg("--version").output().is_err() {
        bail!("gitlab-ci-local needs rsync, which is missing.\n{SETUP_HINT}");
    }
    let docker = output_of(
        Command::new("docker")
            .env("DOCKER_HOST", &args.docker_host)
            .args(["version", "--format", "{{.Server.Version}}"]),
    )
    .map_err(|e| {
        anyhow!(
            "no docker engine answers at {} ({e:#}).\n{SETUP_HINT}",
            args.docker_host
        )
    })?;
    if output_of(
        Command::new("docker")
            .env("DOCKER_HOST", &args.docker_host)
            .args(["image", "inspect", "--format", "{{.Id}}", "busybox:1.35"]),
    )
    .is_err()
    {
        bail!(
            "the docker engine at {} has no busybox:1.35 image.\n{SETUP_HINT}",
            args.docker_host
        );
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        bail!("skopeo (to load the example's image into docker) is missing.\n{SETUP_HINT}");
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Versions {
        gcl,
        node,
        docker,
        load,
    })
}

impl Bench {
    fn archway_cmd(&self) -> Command {
        let mut c = Command::new(&self.archway);
        c.env("HOME", &self.home)
            .env_remove("ARCHWAY_SERVER")
            .env_remove("ARCHWAY_TOKEN");
        c
    }

    fn gcl_cmd(&self) -> Command {
        let mut c = Command::new(&self.gcl);
        c.env("HOME", &self.home)
            .env("DOCKER_HOST", &self.docker_host)
            .args([
                "--pull-policy",
                "if-not-present",
                "--helper-image",
                GCL_HELPER,
            ]);
        c
    }

    /// `archway pipeline run` with the bench's registry as Docker Hub's (and the example
    /// registry's) mirror.
    fn archway_run(&self) -> Command {
        let mut c = self.archway_cmd();
        c.args([
            "pipeline",
            "run",
            "--local",
            "--registry-mirror",
            &format!("docker.io={}/hub", self.registry),
            "--registry-mirror",
            &format!("registry.example.com={}", self.registry),
        ]);
        c
    }

    /// Builds the example for linux/amd64 into the bench's registry and loads it into docker,
    /// both as APP_IMAGE; returns its digest.
    fn prepare_app_image(&self, examples: &Path) -> anyhow::Result<String> {
        eprintln!("building {APP_IMAGE} (linux/amd64) with archway build");
        let pushed = format!("{}/demo/hello:1.0", self.registry);
        let out = output_of(
            self.archway_cmd()
                .arg("build")
                .arg(examples)
                .args([
                    "--quiet",
                    "--platform",
                    "linux/amd64",
                    "--build-arg",
                    &format!("BASE={}/hub/library/busybox:1.35", self.registry),
                    "-t",
                    &pushed,
                    "--push",
                    "--cache-dir",
                ])
                .arg(self.work.join("build-cache")),
        )?;
        let digest = out.lines().last().unwrap_or_default().trim().to_owned();
        eprintln!("loading it into the docker engine with skopeo");
        run_ok(
            Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-daemon-host",
                &self.docker_host,
                &format!("docker://{pushed}"),
                &format!("docker-daemon:{APP_IMAGE}"),
            ]),
            "loading the app image into docker",
        )?;
        Ok(digest)
    }

    /// A git repository holding the scenario's pipeline (and application), one per tool.
    fn repo(&self, sc: &Scenario, tool: Tool) -> anyhow::Result<PathBuf> {
        let dir = self
            .work
            .join("repos")
            .join(format!("{}-{}", sc.key, tool.key()));
        self.make_repo(&dir, sc.key, sc.app.as_deref())?;
        Ok(dir)
    }

    fn make_repo(&self, dir: &Path, fixture: &str, app: Option<&Path>) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        if let Some(app) = app {
            copy_dir(app, dir)?;
        }
        std::fs::copy(
            self.fixtures.join(fixture).join(".gitlab-ci.yml"),
            dir.join(".gitlab-ci.yml"),
        )
        .with_context(|| format!("copying the {fixture} pipeline"))?;
        let url = format!("https://gitlab.example.com/bench/{fixture}.git");
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["remote", "add", "origin", &url],
            &["add", "-A"],
            &["commit", "-qm", "bench pipeline"],
            // As in a clone: origin/main and origin/HEAD exist (gitlab-ci-local asks for them).
            &["update-ref", "refs/remotes/origin/main", "HEAD"],
            &[
                "symbolic-ref",
                "refs/remotes/origin/HEAD",
                "refs/remotes/origin/main",
            ],
        ] {
            run_ok(
                Command::new("git")
                    .env("HOME", &self.home)
                    .args([
                        "-c",
                        "user.name=bench",
                        "-c",
                        "user.email=bench@example.com",
                    ])
                    .args(args)
                    .current_dir(dir),
                "preparing the git repository",
            )?;
        }
        Ok(())
    }

    /// One run of `tool` in `repo`: wall time, memory and CPU. The warm-up run (0) also checks
    /// that every job ran and passed.
    fn measure(
        &self,
        tool: Tool,
        repo: &Path,
        sc: &Scenario,
        run: usize,
    ) -> anyhow::Result<Measure> {
        let mut cmd = match tool {
            Tool::Archway => {
                let mut c = self.archway_run();
                if run == 0 {
                    c.args(["--format", "json"]);
                }
                c
            }
            Tool::Gcl => self.gcl_cmd(),
        };
        let logs = self.work.join("logs");
        std::fs::create_dir_all(&logs)?;
        let base = logs.join(format!("{}-{}-{run}", sc.key, tool.key()));
        let out_path = base.with_extension("out");
        let err_path = base.with_extension("err");
        cmd.current_dir(repo)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?);
        let side = match tool {
            Tool::Archway => Side::Pid(self.registry_pid),
            Tool::Gcl => Side::Docker(docker_socket_path(&self.docker_host)),
        };
        let side_before = side_rss(&scan_procs(), &side);
        let cpu_before = children_cpu();
        let t = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let sampler = TreeSampler::start(child.id(), side);
        let status = child.wait()?;
        let wall = t.elapsed();
        let (tree_rss, side_peak) = sampler.finish();
        let cpu = children_cpu().saturating_sub(cpu_before);
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!(
                "{} failed ({status}) in {}:\n{}\n{}",
                tool.name(),
                repo.display(),
                tail(&stdout, 30),
                tail(&stderr, 30)
            );
        }
        if run == 0 {
            let passed = match tool {
                Tool::Archway => {
                    let v: serde_json::Value = serde_json::from_str(&stdout)
                        .context("reading archway's JSON pipeline report")?;
                    v["jobs"]
                        .as_array()
                        .map_or(0, |j| j.iter().filter(|j| j["status"] == "success").count())
                }
                Tool::Gcl => strip_ansi(&stdout)
                    .lines()
                    .filter(|l| l.trim_start().starts_with("PASS "))
                    .count(),
            };
            if passed != sc.jobs {
                bail!(
                    "{} passed {passed} jobs of {} in {}; see {}",
                    tool.name(),
                    sc.jobs,
                    repo.display(),
                    out_path.display()
                );
            }
        }
        Ok(Measure {
            wall,
            tree_rss,
            side_rss: side_peak.saturating_sub(side_before),
            cpu,
        })
    }

    /// The arm64-tag job under Archway: the run is kept alive (`--keep`) to read the job's log
    /// with `archway job log`, as a user would.
    fn arm64_archway(&self) -> anyhow::Result<Feature> {
        let dir = self.work.join("repos/arm64-tag-archway");
        self.make_repo(&dir, "arm64-tag", None)?;
        let out_path = self.work.join("logs/arm64-tag-archway.out");
        let mut child = self
            .archway_run()
            .args(["--keep", "--format", "json"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = String::new();
        let mut server = None;
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            seen.push_str(&line);
            seen.push('\n');
            if let (Some(url), Some(token)) =
                (word_after(&line, "--server"), word_after(&line, "--token"))
            {
                server = Some((url, token));
                break;
            }
        }
        let result = (|| {
            let (url, token) = server.ok_or_else(|| {
                anyhow!(
                    "archway pipeline run --keep did not keep its server:\n{}",
                    tail(&seen, 30)
                )
            })?;
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&out_path)?)
                    .context("reading archway's JSON pipeline report")?;
            let job = &report["jobs"][0];
            let id = job["id"].as_i64().context("no job in the report")?;
            let attempt = &job["attempts"][0];
            let place = format!(
                "runner {} ({}{})",
                attempt["runner"]["name"].as_str().unwrap_or("?"),
                attempt["platform"].as_str().unwrap_or("?"),
                if attempt["emulated"] == true {
                    ", emulated"
                } else {
                    ""
                }
            );
            let log = output_of(self.archway_cmd().args([
                "job",
                "log",
                &id.to_string(),
                "--server",
                &url,
                "--token",
                &token,
            ]))?;
            let log = strip_ansi(&log);
            let mut lines = log.lines();
            lines
                .by_ref()
                .find(|l| l.trim_end().ends_with("$ uname -m"))
                .context("no `$ uname -m` in the job's log")?;
            let uname = lines.next().unwrap_or_default().trim().to_owned();
            Ok(Feature { uname, place })
        })();
        // Ctrl-C ends the kept run.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let stop = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > stop {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        result
    }

    /// The arm64-tag job under gitlab-ci-local: its output carries the job's log.
    fn arm64_gcl(&self) -> anyhow::Result<Feature> {
        let dir = self.work.join("repos/arm64-tag-gcl");
        self.make_repo(&dir, "arm64-tag", None)?;
        let out = output_of(self.gcl_cmd().current_dir(&dir))?;
        let out = strip_ansi(&out);
        let uname = out
            .lines()
            .filter(|l| l.starts_with("arm64-job"))
            .find_map(|l| l.split_once(" > ").map(|(_, v)| v.trim().to_owned()))
            .context("no output of `uname -m` in gitlab-ci-local's log")?;
        Ok(Feature {
            uname,
            place: "a docker container on this host (it does not use tags)".into(),
        })
    }
}

/// What `uname -m` printed in the `tags: [arm64]` job, and where it ran.
struct Feature {
    uname: String,
    place: String,
}

impl Feature {
    fn honoured(&self) -> bool {
        self.uname == "aarch64"
    }
    fn verdict(&self) -> String {
        format!(
            "{} (uname -m: {})",
            if self.honoured() { "yes" } else { "no" },
            self.uname
        )
    }
}

/// The service whose RSS growth is reported next to a tool's.
#[derive(Clone)]
enum Side {
    /// One process (and its descendants).
    Pid(u32),
    /// The docker engine at this socket: its dockerd and descendants, plus the containerd shims
    /// of its `moby` namespace and theirs.
    Docker(String),
}

fn docker_socket_path(host: &str) -> String {
    host.strip_prefix("unix://").unwrap_or(host).to_owned()
}

#[derive(Debug, Clone)]
struct ProcInfo {
    pid: u32,
    ppid: u32,
    rss: u64,
    comm: String,
}

/// Every process's parent, resident memory and name, from /proc/*/stat.
fn scan_procs() -> Vec<ProcInfo> {
    const PAGE: u64 = 4096;
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: field 3 (state) is f[0]; ppid (4) is f[1]; rss (24) is f[21].
        let (Some(ppid), Some(rss)) = (
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(21).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        v.push(ProcInfo {
            pid,
            ppid,
            rss: rss * PAGE,
            comm,
        });
    }
    v
}

/// The summed RSS of `roots` and all their descendants.
fn tree_rss(procs: &[ProcInfo], roots: &[u32]) -> u64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
        rss.insert(p.pid, p.rss);
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut sum = 0;
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        sum += rss.get(&pid).copied().unwrap_or(0);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    sum
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn side_rss(procs: &[ProcInfo], side: &Side) -> u64 {
    match side {
        Side::Pid(pid) => tree_rss(procs, &[*pid]),
        Side::Docker(sock) => {
            let dockerds: Vec<u32> = procs
                .iter()
                .filter(|p| p.comm == "dockerd")
                .map(|p| p.pid)
                .collect();
            // The dockerd serving this socket, else every dockerd.
            let mine: Vec<u32> = dockerds
                .iter()
                .copied()
                .filter(|p| cmdline(*p).contains(sock.as_str()))
                .collect();
            let mut roots = if mine.is_empty() { dockerds } else { mine };
            roots.extend(
                procs
                    .iter()
                    .filter(|p| {
                        p.comm.starts_with("containerd-shim")
                            && cmdline(p.pid).contains("-namespace moby")
                    })
                    .map(|p| p.pid),
            );
            tree_rss(procs, &roots)
        }
    }
}

/// Samples the peak RSS of a process tree and of a side service every 20 ms.
struct TreeSampler {
    stop: Arc<AtomicBool>,
    tree: Arc<AtomicU64>,
    side: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TreeSampler {
    fn start(root: u32, side: Side) -> TreeSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let tree = Arc::new(AtomicU64::new(0));
        let side_peak = Arc::new(AtomicU64::new(0));
        let (s, t, sp) = (stop.clone(), tree.clone(), side_peak.clone());
        let handle = std::thread::spawn(move || {
            loop {
                let procs = scan_procs();
                t.fetch_max(tree_rss(&procs, &[root]), Ordering::Relaxed);
                sp.fetch_max(side_rss(&procs, &side), Ordering::Relaxed);
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        TreeSampler {
            stop,
            tree,
            side: side_peak,
            handle: Some(handle),
        }
    }

    /// Stops sampling; the peaks (tree, side service), in bytes.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.tree.load(Ordering::Relaxed),
            self.side.load(Ordering::Relaxed),
        )
    }
}

/// User+sys time of this process's waited-for descendants (cutime + cstime).
fn children_cpu() -> Duration {
    const TICKS_PER_SEC: u64 = 100; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    // cutime is field 16 (f[13]), cstime 17 (f[14]).
    let ticks: u64 = [13, 14]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|s| s.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Runs `cmd`; its stdout, or an error with its output.
fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 20),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    output_of(cmd).with_context(|| what.to_owned())?;
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The word after `flag` in `line`.
fn word_after(line: &str, flag: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next().map(str::to_owned)
}

/// `s` without ANSI escape sequences (colours).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}
