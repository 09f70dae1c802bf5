//! `archway dev` vs the Dev Containers CLI (`devcontainer`, npm `@devcontainers/cli`, over a
//! Docker engine) on the same devcontainer.json: the busybox fixture as the image, served to
//! archway by an Archway registry on loopback (`--registry-mirror`) and loaded into the
//! Docker engine beforehand, so both start from a warm image cache.
//!
//! Scenarios (the tools alternate run by run; the table shows medians):
//! * `up to a ready prompt`: `archway dev up` after `archway dev down` vs `devcontainer up`
//!   after the previous container was removed (`docker rm -f`, not timed);
//! * `exec round trip`: `archway dev exec -- true` vs `devcontainer exec … true`.
//!
//! The Docker engine: the one `docker` reaches, else a private `dockerd --iptables=false
//! --bridge=none` with its data under the work directory (containers then need
//! `--network=host`, which the devcontainer.json's `runArgs` gives; archway warns that it
//! ignores `runArgs` and uses the host's network anyway). When the devcontainer side cannot
//! run here, the table says why instead of a number.
//!
//! Run: `cargo build --release -p archway-cli -p archway-bench && target/release/dev-bench`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use archway_bench::proc::{archway_binary, start_archway_registry, time_command};
use archway_bench::stats::median;
use archway_bench::table;
use clap::Parser;

/// Compare archway dev with the Dev Containers CLI on the same devcontainer.json.
#[derive(Debug, Parser)]
#[command(name = "dev-bench")]
struct Args {
    /// The archway binary (default: next to this program).
    #[arg(long)]
    archway: Option<PathBuf>,
    /// `up` runs per tool.
    #[arg(long, default_value_t = 5)]
    up_runs: usize,
    /// `exec` runs per tool.
    #[arg(long, default_value_t = 21)]
    exec_runs: usize,
    /// The two-platform busybox image as an OCI layout (default: the repository's fixture).
    #[arg(long)]
    base_layout: Option<PathBuf>,
}

const DEVCONTAINER_JSON: &str = r#"{
  "name": "bench",
  "image": "busybox:1.35",
  "runArgs": ["--network=host"]
}
"#;

/// A private Docker engine, stopped when dropped.
struct Dockerd {
    child: Child,
    exec_root: PathBuf,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // dockerd leaves its network namespace mounted; the work directory goes after this.
        let _ = Command::new("umount")
            .arg(self.exec_root.join("netns/default"))
            .stderr(Stdio::null())
            .status();
    }
}

fn answers(docker_host: Option<&str>) -> bool {
    let mut c = Command::new("docker");
    if let Some(h) = docker_host {
        c.env("DOCKER_HOST", h);
    }
    c.args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Docker engine to use: `(DOCKER_HOST, the engine if we started it)`, or why there is none.
fn docker_engine(work: &Path) -> Result<(String, Option<Dockerd>), String> {
    if Command::new("docker").arg("--version").output().is_err() {
        return Err("no docker CLI (apt-get install -y docker.io)".into());
    }
    if answers(None) {
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        return Ok((host, None));
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        return Err(
            "no Docker engine answers and dockerd is not installed (apt-get install -y docker.io)"
                .into(),
        );
    }
    let dir = work.join("dockerd");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = format!("unix://{}/docker.sock", dir.display());
    let log = std::fs::File::create(dir.join("dockerd.log")).map_err(|e| e.to_string())?;
    let child = Command::new("dockerd")
        .args(["--iptables=false", "--bridge=none", "--host", &sock])
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("docker.pid"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting dockerd: {e}"))?;
    let d = Dockerd {
        child,
        exec_root: dir.join("exec"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(Some(&sock)) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(format!(
                "dockerd did not start within 60 s: {}",
                last.join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((sock, Some(d)))
}

fn run_quiet(mut c: Command) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("{c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Everything the devcontainer side needs, or why it cannot run.
struct DevcontainerSide {
    docker_host: String,
    workspace: PathBuf,
    _engine: Option<Dockerd>,
}

impl DevcontainerSide {
    fn prepare(work: &Path, layout: &Path) -> Result<DevcontainerSide, String> {
        let version = Command::new("devcontainer")
            .arg("--version")
            .output()
            .map_err(|_| {
                "the Dev Containers CLI is not installed (npm install -g @devcontainers/cli)"
                    .to_owned()
            })?;
        if !version.status.success() {
            return Err("`devcontainer --version` failed".into());
        }
        let (docker_host, engine) = docker_engine(work)?;
        // The image, loaded into the engine: a warm cache, as archway's store is.
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--insecure-policy",
                "--dest-daemon-host",
                &docker_host,
            ])
            .arg(format!("oci:{}:1.35", layout.display()))
            .arg("docker-daemon:busybox:1.35")
            .output()
            .map_err(|e| format!("skopeo (to load the image into Docker): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "loading busybox:1.35 into Docker failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let workspace = work.join("ws-devcontainer");
        std::fs::create_dir_all(workspace.join(".devcontainer")).map_err(|e| e.to_string())?;
        std::fs::write(
            workspace.join(".devcontainer/devcontainer.json"),
            DEVCONTAINER_JSON,
        )
        .map_err(|e| e.to_string())?;
        let side = DevcontainerSide {
            docker_host,
            workspace,
            _engine: engine,
        };
        time_command(side.up()).map_err(|e| format!("devcontainer up failed: {e:#}"))?;
        time_command(side.exec()).map_err(|e| format!("devcontainer exec failed: {e:#}"))?;
        Ok(side)
    }

    fn devcontainer(&self, sub: &str) -> Command {
        let mut c = Command::new("devcontainer");
        c.env("DOCKER_HOST", &self.docker_host)
            .arg(sub)
            .arg("--workspace-folder")
            .arg(&self.workspace);
        c
    }

    fn up(&self) -> Command {
        self.devcontainer("up")
    }

    fn exec(&self) -> Command {
        let mut c = self.devcontainer("exec");
        c.arg("true");
        c
    }

    /// Removes the workspace's container (not timed).
    fn remove(&self) -> anyhow::Result<()> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", &self.docker_host)
            .args(["ps", "-aq", "--filter"])
            .arg(format!(
                "label=devcontainer.local_folder={}",
                self.workspace.display()
            ))
            .output()?;
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let mut c = Command::new("docker");
            c.env("DOCKER_HOST", &self.docker_host)
                .args(["rm", "-f", id]);
            run_quiet(c)?;
        }
        Ok(())
    }
}

struct ArchwaySide {
    archway: PathBuf,
    home: PathBuf,
    repo: PathBuf,
    mirror: String,
}

impl ArchwaySide {
    fn dev(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.archway);
        c.env("HOME", &self.home)
            .env_remove("ARCHWAY_LOG")
            .current_dir(&self.repo)
            .arg("dev")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn up(&self) -> Command {
        self.dev(&["up", "--registry-mirror", &self.mirror])
    }

    fn exec(&self) -> Command {
        self.dev(&["exec", "--", "true"])
    }

    fn down(&self) -> anyhow::Result<()> {
        run_quiet(self.dev(&["down", "--time", "1s"]))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let archway = archway_binary(args.archway)?;
    let layout = args.base_layout.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-oci")
    });
    let work = tempfile::Builder::new()
        .prefix("archway-dev-bench")
        .tempdir_in("/var/tmp")?;
    let registry = start_archway_registry(&archway, &work.path().join("registry"))?;
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let mut seed = Command::new(&archway);
    seed.env("HOME", &home).args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", layout.display()),
        &format!("{}/hub/library/busybox:1.35", registry.addr),
    ]);
    run_quiet(seed).context("seeding the registry with the busybox fixture")?;
    let repo = work.path().join("ws-archway");
    std::fs::create_dir_all(repo.join(".devcontainer"))?;
    std::fs::write(
        repo.join(".devcontainer/devcontainer.json"),
        DEVCONTAINER_JSON,
    )?;
    let aw = ArchwaySide {
        archway: archway.clone(),
        home,
        repo,
        mirror: format!("docker.io={}/hub", registry.addr),
    };
    // Warm: the image pulled and unpacked once.
    time_command(aw.up()).context("archway dev up")?;

    eprintln!("preparing the devcontainer side");
    let dc = DevcontainerSide::prepare(work.path(), &layout);
    if let Err(why) = &dc {
        eprintln!("devcontainer side unavailable: {why}");
    }

    // [archway, devcontainer] times per scenario.
    let mut up_times: [Vec<Duration>; 2] = Default::default();
    let mut exec_times: [Vec<Duration>; 2] = Default::default();
    eprintln!("up to a ready prompt, {} runs each", args.up_runs);
    for run in 0..args.up_runs {
        let archway_first = run % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == archway_first {
                aw.down()?;
                up_times[0].push(time_command(aw.up())?);
            } else if let Ok(dc) = &dc {
                dc.remove()?;
                up_times[1].push(time_command(dc.up())?);
            }
        }
    }
    eprintln!("exec round trip, {} runs each", args.exec_runs);
    for run in 0..args.exec_runs {
        let archway_first = run % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == archway_first {
                exec_times[0].push(time_command(aw.exec())?);
            } else if let Ok(dc) = &dc {
                exec_times[1].push(time_command(dc.exec())?);
            }
        }
    }
    aw.down()?;
    if let Ok(dc) = &dc {
        dc.remove()?;
    }

    let mut rows = vec![vec![
        "scenario".to_owned(),
        "tool".into(),
        "runs".into(),
        "median s".into(),
        "min s".into(),
        "archway/devcontainer".into(),
    ]];
    let mut json = Vec::new();
    for (scenario, times) in [
        ("up to a ready prompt (warm image)", &up_times),
        ("exec round trip (`true`)", &exec_times),
    ] {
        let ratio = (!times[1].is_empty())
            .then(|| median(&times[0]).as_secs_f64() / median(&times[1]).as_secs_f64());
        for (i, tool) in ["archway dev", "devcontainer"].iter().enumerate() {
            if times[i].is_empty() {
                let why = dc.as_ref().err().cloned().unwrap_or_default();
                rows.push(vec![
                    scenario.to_owned(),
                    (*tool).to_owned(),
                    "0".into(),
                    format!("n/a: {why}"),
                    String::new(),
                    String::new(),
                ]);
                json.push(
                    serde_json::json!({"scenario": scenario, "tool": tool, "unavailable": why}),
                );
                continue;
            }
            let m = median(&times[i]);
            let min = times[i].iter().min().copied().unwrap_or_default();
            rows.push(vec![
                scenario.to_owned(),
                (*tool).to_owned(),
                times[i].len().to_string(),
                format!("{:.3}", m.as_secs_f64()),
                format!("{:.3}", min.as_secs_f64()),
                match (i, ratio) {
                    (0, Some(r)) => format!("{r:.3}"),
                    _ => String::new(),
                },
            ]);
            json.push(
                serde_json::json!({"scenario": scenario, "tool": tool, "median_s": m.as_secs_f64(),
                "runs_s": times[i].iter().map(Duration::as_secs_f64).collect::<Vec<_>>()}),
            );
        }
    }
    println!(
        "image: the busybox fixture (archway: from an Archway registry on loopback, store warm; devcontainer: loaded into {})\n",
        match &dc {
            Ok(d) if d._engine.is_some() => "a private dockerd --bridge=none, --network=host",
            Ok(_) => "the Docker engine `docker` reaches",
            Err(_) => "no Docker engine",
        }
    );
    println!("{}", table::render(&rows));
    println!(
        "archway/devcontainer = archway's median wall time / devcontainer's (below 1 means archway is faster)"
    );
    println!("JSON {}", serde_json::Value::Array(json));
    Ok(())
}
