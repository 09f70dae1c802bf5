//! `archway server`, `archway runner` and `archway pipeline`/`job` as real processes on
//! loopback, with the sandbox executor and busybox images: a three-stage multi-arch pipeline
//! over a native amd64 runner and an emulated arm64 runner, kill -9 of a runner and of the
//! server mid-pipeline, drain, cancel, masking, and the errors a user meets first.
//!
//! The database is SQLite, and also PostgreSQL for the tests marked so when
//! `ARCHWAY_TEST_POSTGRES` names a cluster (`scripts/test.sh` starts one).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{UserEnv, archway, busybox_layout};

/// A running `archway server`. Killed when dropped.
struct ServerProcess {
    child: Option<Child>,
    addr: String,
    data: PathBuf,
    database: Option<String>,
    extra: Vec<String>,
    admin: String,
    registration: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn postgres_database() -> Option<String> {
    let admin = std::env::var("ARCHWAY_TEST_POSTGRES").ok()?;
    let name = format!("it_{}", rand::random::<u64>());
    let out = Command::new("psql")
        .arg(&admin)
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(format!("{}/{name}", admin.rsplit_once('/').unwrap().0))
}

impl ServerProcess {
    fn start(extra: &[&str]) -> ServerProcess {
        Self::start_on(None, extra)
    }

    fn start_on(database: Option<String>, extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut init = archway();
        init.args(["server", "init", "--format", "json", "--data"])
            .arg(&data);
        if let Some(db) = &database {
            init.args(["--database", db]);
        }
        let tokens: serde_json::Value = serde_json::from_str(&ok(&mut init)).unwrap();
        let mut s = ServerProcess {
            child: None,
            addr: "127.0.0.1:0".into(),
            data,
            database,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            admin: tokens["admin_token"].as_str().unwrap().into(),
            registration: tokens["registration_token"].as_str().unwrap().into(),
            log: dir.path().join("server.log"),
            dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = fs::File::create(&self.log).unwrap();
        let mut cmd = archway();
        cmd.args(["server", "--listen", &self.addr, "--data"])
            .arg(&self.data)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(db) = &self.database {
            cmd.args(["--database", db]);
        }
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            // The line may be half written when read: only a whole line counts.
            if let Some(rest) = text.split("listening on http://").nth(1)
                && rest.contains('\n')
                && let Some(addr) = rest.split_whitespace().next()
            {
                self.addr = addr.to_owned();
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("archway server exited with {st}:\n{text}");
            }
            assert!(Instant::now() < deadline, "server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Another server on this one's database and flags (its own data directory): a replica.
    fn replica(&self) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ServerProcess {
            child: None,
            addr: "127.0.0.1:0".into(),
            data: dir.path().join("data"),
            database: self.database.clone(),
            extra: self.extra.clone(),
            admin: self.admin.clone(),
            registration: self.registration.clone(),
            log: dir.path().join("server.log"),
            dir,
        };
        s.spawn();
        s
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An `archway` command that talks to this server as admin.
    fn cli(&self) -> Command {
        let mut c = archway();
        c.env("ARCHWAY_SERVER", self.url())
            .env("ARCHWAY_TOKEN", &self.admin)
            .env("HOME", self.dir.path())
            .env_remove("ARCHWAY_LOG");
        c
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut c = self.cli();
        c.args(args).args(["--format", "json"]);
        serde_json::from_str(&ok(&mut c)).unwrap()
    }

    fn job(&self, id: i64) -> serde_json::Value {
        self.json(&["job", "show", &id.to_string()])
    }

    fn log(&self, id: i64) -> String {
        ok(self.cli().args(["job", "log", &id.to_string()]))
    }

    /// Polls `job` until `pred` holds.
    fn wait_job(
        &self,
        id: i64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let j = self.job(id);
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: gave up waiting for {what}: {j:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn push_busybox(&self) -> String {
        let env = UserEnv::new();
        env.ok(&[
            "image",
            "copy",
            "--all",
            "--quiet",
            "--creds",
            &format!("admin:{}", self.admin),
            &format!("oci:{}:1.35", busybox_layout().display()),
            &format!("{}/library/busybox:1.35", self.addr),
        ]);
        format!("{}/library/busybox:1.35", self.addr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `archway runner run`. Killed when dropped.
struct RunnerProcess {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl RunnerProcess {
    fn register(server: &ServerProcess, name: &str, args: &[&str]) -> PathBuf {
        let config = server.dir.path().join(format!("{name}.json"));
        ok(archway()
            .args([
                "runner",
                "register",
                "--server",
                &server.url(),
                "--token",
                &server.registration,
            ])
            .args(["--name", name, "--config"])
            .arg(&config)
            .arg("--cache-dir")
            .arg(server.dir.path().join("runner-cache"))
            .args(args));
        config
    }

    fn start(server: &ServerProcess, name: &str, args: &[&str]) -> RunnerProcess {
        let config = Self::register(server, name, args);
        Self::run(&config, &[])
    }

    fn run(config: &Path, args: &[&str]) -> RunnerProcess {
        let log = config.with_extension(format!("log-{}", rand::random::<u32>()));
        let child = archway()
            .args(["runner", "run", "--config"])
            .arg(config)
            .args(args)
            .env_remove("ARCHWAY_LOG")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        RunnerProcess {
            child: Some(child),
            config: config.to_owned(),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A git repository holding `files`, committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.email=ci@example.com", "-c", "user.name=CI"])
            .args(args))
    };
    git(&["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "test pipeline"]);
    dir
}

fn pipeline_run(server: &ServerProcess, repo: &Path, args: &[&str]) -> Output {
    server
        .cli()
        .current_dir(repo)
        .args(["pipeline", "run"])
        .args(args)
        .output()
        .unwrap()
}

/// Submits without waiting; returns the pipeline as JSON.
fn submit(server: &ServerProcess, repo: &Path, args: &[&str]) -> serde_json::Value {
    let out = pipeline_run(
        server,
        repo,
        &[&["--detach", "--format", "json"], args].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn job_id(p: &serde_json::Value, name: &str) -> i64 {
    p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {p:#}"))["id"]
        .as_i64()
        .unwrap()
}

const MULTIARCH: &str = r#"
stages: [build, test, assemble]
variables:
  IMAGE: $CI_REGISTRY/library/busybox:1.35
build:
  stage: build
  image: $IMAGE
  tags: [$BUILD_ARCH]
  parallel:
    matrix:
      - BUILD_ARCH: [amd64, arm64]
  script:
    - echo "built on $(uname -m) for $BUILD_ARCH emulated=$ARCHWAY_EMULATED"
    - test -f "$CI_PROJECT_DIR/app.txt"
test:
  stage: test
  image: $IMAGE
  tags: [amd64]
  script:
    - cat app.txt
    - echo "tested $CI_COMMIT_SHORT_SHA in $CI_PROJECT_DIR"
assemble:
  stage: assemble
  image: $IMAGE
  script:
    - echo "assembled for $CI_REGISTRY_IMAGE"
"#;

fn three_stage_pipeline(server: ServerProcess) {
    server.push_busybox();
    let _amd = RunnerProcess::start(&server, "amd-1", &["--platform", "linux/amd64"]);
    let _arm = RunnerProcess::start(&server, "arm-1", &["--platform", "linux/arm64"]);
    let r = repo(&[(".gitlab-ci.yml", MULTIARCH), ("app.txt", "the app\n")]);
    let out = pipeline_run(&server, r.path(), &["--project", "team/app"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 1 success"), "{stdout}");
    // A line per state change while it ran.
    assert!(
        stderr.contains("build: [arm64]")
            && stderr.contains("running on arm-1 (linux/arm64, emulated)"),
        "{stderr}"
    );
    let p = server.json(&["pipeline", "show", "1"]);
    let runner = |name: &str| {
        let j = server.job(job_id(&p, name));
        (
            j["attempts"][0]["runner"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
            j["attempts"][0]["emulated"].as_bool().unwrap(),
        )
    };
    assert_eq!(runner("build: [amd64]"), ("amd-1".into(), false));
    assert_eq!(runner("build: [arm64]"), ("arm-1".into(), true));
    assert_eq!(runner("test"), ("amd-1".into(), false));
    let arm_log = server.log(job_id(&p, "build: [arm64]"));
    assert!(
        arm_log.contains("built on aarch64 for arm64 emulated=true"),
        "{arm_log}"
    );
    let amd_log = server.log(job_id(&p, "build: [amd64]"));
    assert!(
        amd_log.contains("built on x86_64 for amd64 emulated=false"),
        "{amd_log}"
    );
    let test_log = server.log(job_id(&p, "test"));
    assert!(test_log.contains("the app"), "{test_log}");
    assert!(test_log.contains("in /builds/team/app"), "{test_log}");
    let assemble_log = server.log(job_id(&p, "assemble"));
    assert!(
        assemble_log.contains(&format!("assembled for {}/team/app", server.addr)),
        "{assemble_log}"
    );
    // Stage order.
    let t = |name: &str, field: &str| server.job(job_id(&p, name))[field].as_i64().unwrap();
    assert!(t("build: [arm64]", "finished_at_ms") <= t("test", "started_at_ms"));
    assert!(t("test", "finished_at_ms") <= t("assemble", "started_at_ms"));
}

#[test]
fn a_three_stage_pipeline_runs_each_job_on_its_architecture() {
    three_stage_pipeline(ServerProcess::start(&[]));
}

#[test]
fn a_three_stage_pipeline_runs_on_postgresql() {
    let Some(db) = postgres_database() else {
        eprintln!("SKIPPED: ARCHWAY_TEST_POSTGRES is not set (scripts/test.sh starts a cluster)");
        return;
    };
    three_stage_pipeline(ServerProcess::start_on(Some(db), &[]));
}

const SLOW: &str = r#"
slow:
  image: $CI_REGISTRY/library/busybox:1.35
  tags: [slow]
  script:
    - echo "$CI_JOB_TOKEN" > token.txt
    - echo "started attempt"
    - sleep 4
    - echo "finished"
"#;

#[test]
fn a_killed_runners_job_is_requeued_to_another_runner_and_the_old_attempt_is_fenced() {
    let server = ServerProcess::start(&["--lease-ttl", "3s"]);
    server.push_busybox();
    let mut a = RunnerProcess::start(
        &server,
        "victim",
        &["--platform", "linux/amd64", "--tags", "slow"],
    );
    let r = repo(&[(".gitlab-ci.yml", SLOW)]);
    let p = submit(&server, r.path(), &[]);
    let id = job_id(&p, "slow");
    let j = server.wait_job(id, "its script to start", |j| {
        j["status"] == "running" && server.log(id).contains("started attempt")
    });
    let old_attempt = j["attempts"][0]["id"].as_i64().unwrap();
    a.kill9();
    // The killed runner's job directory is left behind; it holds the old job token.
    let work = a.config.parent().unwrap().join(format!(
        "runner-{}-work/attempt-{old_attempt}/src/token.txt",
        serde_json::from_str::<serde_json::Value>(&fs::read_to_string(&a.config).unwrap()).unwrap()
            ["id"]
    ));
    let old_token = fs::read_to_string(&work).unwrap().trim().to_owned();
    let _b = RunnerProcess::start(
        &server,
        "rescuer",
        &["--platform", "linux/amd64", "--tags", "slow"],
    );
    let j = server.wait_job(id, "success on the rescuer", |j| j["status"] == "success");
    let attempts = j["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{j:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[0]["runner"]["name"], "victim");
    assert_eq!(attempts[1]["runner"]["name"], "rescuer");
    assert_eq!(attempts[1]["state"], "success");
    let log = server.log(id);
    let first = log.find("attempt 1 of job").unwrap();
    let lost = log.find("attempt 1 lost").unwrap();
    let second = log.find("attempt 2 of job").unwrap();
    assert!(first < lost && lost < second, "{log}");
    assert_eq!(log.matches("\nfinished\n").count(), 1, "{log}");
    // The dead runner restarted cannot report on the old attempt.
    let _a2 = RunnerProcess::run(&a.config, &[]);
    let client = reqwest::blocking::Client::new();
    let resp = client
        .patch(format!(
            "{}/api/v1/runner/attempts/{old_attempt}/log?offset=0",
            server.url()
        ))
        .bearer_auth(&old_token)
        .body("late output\n")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 410, "{:?}", resp.text());
    let resp = client
        .post(format!(
            "{}/api/v1/runner/attempts/{old_attempt}/finish",
            server.url()
        ))
        .bearer_auth(&old_token)
        .json(&serde_json::json!({"outcome": "failed", "exit_code": 1}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 410);
    assert_eq!(server.job(id)["status"], "success");
    assert!(!server.log(id).contains("late output"));
}

const TWO_STAGES: &str = r#"
stages: [first, second]
first:
  stage: first
  image: $CI_REGISTRY/library/busybox:1.35
  script:
    - echo "first begins"
    - sleep 4
    - echo "first ends"
second:
  stage: second
  image: $CI_REGISTRY/library/busybox:1.35
  script:
    - echo "second runs"
"#;

fn server_kill9_mid_pipeline(mut server: ServerProcess) {
    server.push_busybox();
    let runner = RunnerProcess::start(&server, "steady", &["--platform", "linux/amd64"]);
    let r = repo(&[(".gitlab-ci.yml", TWO_STAGES)]);
    let p = submit(&server, r.path(), &[]);
    let first = job_id(&p, "first");
    server.wait_job(first, "the first job to run", |_| {
        server.log(first).contains("first begins")
    });
    server.kill9();
    std::thread::sleep(Duration::from_secs(2));
    server.spawn(); // same data, same address
    let pid = p["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let v = server.json(&["pipeline", "show", &pid.to_string()]);
        if v["status"] == "success" || v["status"] == "failed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "{v:#}\nrunner log:\n{}",
            runner.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["status"], "success", "{done:#}");
    // The running job carried on: one attempt, one success, its whole log.
    let j = server.job(first);
    assert_eq!(j["attempts"].as_array().unwrap().len(), 1, "{j:#}");
    let log = server.log(first);
    assert_eq!(log.matches("\nfirst ends\n").count(), 1, "{log}");
    assert!(server.log(job_id(&p, "second")).contains("second runs"));
}

#[test]
fn the_server_killed_mid_pipeline_restarts_and_the_pipeline_completes_once() {
    server_kill9_mid_pipeline(ServerProcess::start(&[]));
}

#[test]
fn the_server_killed_mid_pipeline_restarts_on_postgresql() {
    let Some(db) = postgres_database() else {
        eprintln!("SKIPPED: ARCHWAY_TEST_POSTGRES is not set (scripts/test.sh starts a cluster)");
        return;
    };
    server_kill9_mid_pipeline(ServerProcess::start_on(Some(db), &[]));
}

const DRAIN: &str = r#"
quick:
  image: $CI_REGISTRY/library/busybox:1.35
  tags: [drain]
  script: [sleep 1, echo quick done]
endless:
  image: $CI_REGISTRY/library/busybox:1.35
  tags: [drain]
  script: [echo endless begins, sleep 600]
"#;

#[test]
fn a_drained_runner_finishes_short_jobs_and_hands_back_the_rest() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let mut runner = RunnerProcess::start(
        &server,
        "spot",
        &[
            "--platform",
            "linux/amd64",
            "--tags",
            "drain",
            "--concurrency",
            "2",
        ],
    );
    let r = repo(&[(".gitlab-ci.yml", DRAIN)]);
    let p = submit(&server, r.path(), &[]);
    let (quick, endless) = (job_id(&p, "quick"), job_id(&p, "endless"));
    server.wait_job(endless, "both jobs to run", |j| {
        j["status"] == "running" && server.log(endless).contains("endless begins")
    });
    let out = ok(archway()
        .args(["runner", "drain", "--deadline", "3s", "--config"])
        .arg(&runner.config));
    assert!(out.contains("draining"), "{out}");
    assert!(out.contains("the runner has stopped"), "{out}");
    let status = runner.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", runner.log_text());
    assert_eq!(server.job(quick)["status"], "success");
    let e = server.job(endless);
    assert_eq!(e["status"], "pending", "{e:#}");
    assert_eq!(e["attempts"][0]["state"], "handed_back");
    ok(server
        .cli()
        .args(["pipeline", "cancel", &p["id"].to_string()]));
}

#[test]
fn sigterm_drains_too() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let config = RunnerProcess::register(
        &server,
        "spot",
        &["--platform", "linux/amd64", "--tags", "drain"],
    );
    let mut runner = RunnerProcess::run(&config, &["--drain-deadline", "2s"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "endless:\n  image: $CI_REGISTRY/library/busybox:1.35\n  tags: [drain]\n  script: [echo endless begins, sleep 600]\n",
    )]);
    let p = submit(&server, r.path(), &[]);
    let id = job_id(&p, "endless");
    server.wait_job(id, "the job to run", |_| {
        server.log(id).contains("endless begins")
    });
    let mut child = runner.child.take().unwrap();
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", runner.log_text());
    assert!(t.elapsed() < Duration::from_secs(30));
    let j = server.job(id);
    assert_eq!(j["status"], "pending");
    assert_eq!(j["attempts"][0]["state"], "handed_back");
    assert!(
        server.log(id).contains("handing this job back"),
        "{}",
        server.log(id)
    );
}

#[test]
fn cancel_stops_the_jobs_process() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "long:\n  image: $CI_REGISTRY/library/busybox:1.35\n  script: [echo long begins, sleep 600, echo never]\n  after_script: ['echo \"after_script saw $CI_JOB_STATUS\"']\n",
    )]);
    let p = submit(&server, r.path(), &[]);
    let id = job_id(&p, "long");
    server.wait_job(id, "the job to run", |_| {
        server.log(id).contains("long begins")
    });
    ok(server.cli().args(["job", "cancel", &id.to_string()]));
    let j = server.wait_job(id, "canceled", |j| j["status"] == "canceled");
    assert_eq!(j["attempts"][0]["state"], "canceled");
    // after_script runs on cancel too, and knows why.
    server.wait_job(id, "after_script to run", |_| {
        server.log(id).contains("after_script saw canceled")
    });
    let log = server.log(id);
    assert!(log.contains("Job canceled"), "{log}");
    assert!(!log.contains("never"), "{log}");
}

#[test]
fn a_child_pipeline_runs_and_its_depend_trigger_job_takes_its_status() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[
        (
            ".gitlab-ci.yml",
            "stages: [build, child, deploy]\ndefault:\n  image: $CI_REGISTRY/library/busybox:1.35\nbuild:\n  stage: build\n  script: [echo built]\nchild:\n  stage: child\n  variables:\n    PARENT_PIPELINE_ID: $CI_PIPELINE_ID\n  trigger:\n    include: ci/child.yml\n    strategy: depend\ndeploy:\n  stage: deploy\n  script: [echo deployed]\n",
        ),
        (
            "ci/child.yml",
            "default:\n  image: $CI_REGISTRY/library/busybox:1.35\nchild-test:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"parent_pipeline\"\n  script: ['echo \"child of $PARENT_PIPELINE_ID in $CI_PIPELINE_ID\"']\n",
        ),
    ]);
    let out = pipeline_run(&server, r.path(), &["--project", "team/app"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 1 success"), "{stdout}");
    assert!(stdout.contains("child pipeline 2"), "{stdout}");
    let p = server.json(&["pipeline", "show", "1"]);
    let child = server.job(job_id(&p, "child"));
    assert_eq!(child["status"], "success");
    assert_eq!(child["downstream_pipeline_id"], 2);
    let c = server.json(&["pipeline", "show", "2"]);
    assert_eq!(c["status"], "success");
    assert_eq!(c["parent_job_id"], child["id"]);
    let log = server.log(job_id(&c, "child-test"));
    assert!(log.contains("child of 1 in 2"), "{log}");
}

#[test]
fn masked_variables_never_reach_the_log() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "leak:\n  image: $CI_REGISTRY/library/busybox:1.35\n  script:\n    - echo \"key=$API_KEY\"\n    - printf '%s' \"$API_KEY\" | base64\n    - echo \"token=$CI_JOB_TOKEN\"\n",
    )]);
    let out = pipeline_run(
        &server,
        r.path(),
        &["--masked-var", "API_KEY=s3cr3t-value-42"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = server.json(&["pipeline", "show", "1"]);
    let log = server.log(job_id(&p, "leak"));
    assert!(log.contains("key=[MASKED]"), "{log}");
    assert!(log.contains("token=[MASKED]"), "{log}");
    assert!(!log.contains("s3cr3t-value-42"), "{log}");
    assert!(
        !log.contains("czNjcjN0LXZhbHVlLTQy"),
        "base64 leaked: {log}"
    );
    // Short masked values are refused before anything runs.
    let out = pipeline_run(&server, r.path(), &["--masked-var", "PIN=1234"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"));
}

#[test]
fn an_image_that_cannot_be_pulled_fails_the_job_not_the_runner() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "stages: [a, b]\nmissing:\n  stage: a\n  image: $CI_REGISTRY/library/nope:1\n  allow_failure: true\n  script: [echo hi]\nafter:\n  stage: b\n  image: $CI_REGISTRY/library/busybox:1.35\n  script: [echo still alive]\n",
    )]);
    let out = pipeline_run(&server, r.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = server.json(&["pipeline", "show", "1"]);
    let m = server.job(job_id(&p, "missing"));
    assert_eq!(m["status"], "failed");
    assert_eq!(m["failure_reason"], "image_pull_failure");
    assert!(server.log(job_id(&p, "missing")).contains("cannot pull"));
    assert!(server.log(job_id(&p, "after")).contains("still alive"));
    drop(runner);
}

#[test]
fn a_job_no_runner_can_take_waits_and_says_why() {
    let server = ServerProcess::start(&[]);
    let _runner = RunnerProcess::start(&server, "amd-only", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "gpu:\n  tags: [gpu, arm64]\n  script: [nvidia-smi]\n",
    )]);
    let p = submit(&server, r.path(), &[]);
    let id = job_id(&p, "gpu");
    let j = server.wait_job(id, "a note", |j| j["note"].is_string());
    let note = j["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "no runner with tags [arm64, gpu] for linux/arm64; connected: amd-only [amd64, x86_64"
        ),
        "{note}"
    );
    let text = ok(server
        .cli()
        .args(["pipeline", "show", &p["id"].to_string()]));
    assert!(text.contains("no runner with tags [arm64, gpu]"), "{text}");
}

#[test]
fn errors_say_what_failed_and_what_to_do() {
    let r = repo(&[(".gitlab-ci.yml", "a:\n  script: [true]\n")]);
    // Nothing listens on port 1.
    let out = archway()
        .current_dir(r.path())
        .env("HOME", r.path())
        .args([
            "pipeline",
            "run",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "awa_x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the Archway server at http://127.0.0.1:1"),
        "{err}"
    );
    let server = ServerProcess::start(&[]);
    let out = archway()
        .current_dir(r.path())
        .env("HOME", r.path())
        .args([
            "pipeline",
            "run",
            "--server",
            &server.url(),
            "--token",
            &format!("awa_{}", "0".repeat(64)),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    // No server configured at all.
    let out = archway()
        .current_dir(r.path())
        .env("HOME", r.path())
        .env_remove("ARCHWAY_SERVER")
        .env_remove("ARCHWAY_TOKEN")
        .args(["pipeline", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Archway server configured"));
    // A bad registration token.
    let out = archway()
        .args([
            "runner",
            "register",
            "--server",
            &server.url(),
            "--token",
            "awr_nope",
        ])
        .arg("--config")
        .arg(r.path().join("r.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("registration token is unknown or revoked"),
        "{err}"
    );
    // A pipeline `archway lint` rejects is refused before anything is submitted.
    let bad = repo(&[(".gitlab-ci.yml", "a:\n  stage: nope\n  script: [true]\n")]);
    let out = pipeline_run(&server, bad.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".gitlab-ci.yml:2:"), "{err}");
    assert!(err.contains("nothing was submitted"), "{err}");
    assert_eq!(
        server.json(&["pipeline", "list"]).as_array().unwrap().len(),
        0
    );
    // Plain HTTP on a public address needs consent.
    let out = archway()
        .args(["server", "--listen", "0.0.0.0:0", "--data"])
        .arg(r.path().join("d"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-insecure"));
}

#[test]
fn job_log_follow_streams_until_the_job_ends() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "tick:\n  image: $CI_REGISTRY/library/busybox:1.35\n  script:\n    - for i in 1 2 3; do echo tick $i; sleep 1; done\n",
    )]);
    let p = submit(&server, r.path(), &[]);
    let id = job_id(&p, "tick");
    let out = server
        .cli()
        .args(["job", "log", "-f", &id.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for i in 1..=3 {
        assert!(text.contains(&format!("tick {i}")), "{text}");
    }
    assert!(text.contains("attempt 1 success"), "{text}");
    assert_eq!(server.job(id)["status"], "success");
}

#[test]
fn a_job_that_outlives_its_timeout_fails_with_job_execution_timeout() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "slow:\n  image: $CI_REGISTRY/library/busybox:1.35\n  timeout: 3 seconds\n  script: [echo slow begins, sleep 120, echo never]\n",
    )]);
    let t = Instant::now();
    let out = pipeline_run(&server, r.path(), &[]);
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(60));
    let p = server.json(&["pipeline", "show", "1"]);
    let j = server.job(job_id(&p, "slow"));
    assert_eq!(j["status"], "failed");
    assert_eq!(j["failure_reason"], "job_execution_timeout");
    let log = server.log(job_id(&p, "slow"));
    assert!(log.contains("timed out after 3s"), "{log}");
    // The failed job's log tail is shown by `pipeline run`.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("log tail of slow"), "{stderr}");
}

#[test]
fn a_job_token_pushes_to_its_own_project_only_and_dies_with_its_attempt() {
    let server = ServerProcess::start(&["--public-repos", "library/*"]);
    server.push_busybox();
    let runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(
        ".gitlab-ci.yml",
        "hold:\n  image: $CI_REGISTRY/library/busybox:1.35\n  script:\n    - echo \"$CI_JOB_TOKEN\" > token.txt\n    - sleep 6\n",
    )]);
    let p = submit(&server, r.path(), &["--project", "team/app"]);
    let id = job_id(&p, "hold");
    let j = server.wait_job(id, "the token file", |j| {
        j["status"] == "running" && j["attempts"][0]["log_bytes"].as_u64().unwrap_or(0) > 0
    });
    let attempt = j["attempts"][0]["id"].as_i64().unwrap();
    let runner_id =
        serde_json::from_str::<serde_json::Value>(&fs::read_to_string(&runner.config).unwrap())
            .unwrap()["id"]
            .clone();
    let token_file = runner.config.parent().unwrap().join(format!(
        "runner-{runner_id}-work/attempt-{attempt}/src/token.txt"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !token_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no token file at {}",
            token_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = fs::read_to_string(&token_file).unwrap().trim().to_owned();
    assert!(token.starts_with("awj_"), "{token}");
    let env = UserEnv::new();
    let creds = format!("gitlab-ci-token:{token}");
    let src = format!("oci:{}:1.35", busybox_layout().display());
    let copy = |dest: &str| {
        env.archway()
            .args([
                "image", "copy", "--all", "--quiet", "--creds", &creds, &src, dest,
            ])
            .output()
            .unwrap()
    };
    // Its own project: push works (and pulling what it pushed).
    let own = copy(&format!("{}/team/app/base:1", server.addr));
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    // Another project: refused.
    let other = copy(&format!("{}/other/app:1", server.addr));
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("denied")
            || err.contains("401")
            || err.contains("403")
            || err.contains("not authorized"),
        "{err}"
    );
    // Public repositories: anyone pulls; private ones need credentials.
    let anon = UserEnv::new();
    anon.ok(&[
        "image",
        "inspect",
        &format!("{}/library/busybox:1.35", server.addr),
    ]);
    let denied = anon.fails(&[
        "image",
        "inspect",
        &format!("{}/team/app/base:1", server.addr),
    ]);
    assert!(!denied.is_empty());
    // After the job ends, its token opens nothing.
    server.wait_job(id, "the job to end", |j| j["status"] == "success");
    let late = env
        .archway()
        .args([
            "image",
            "inspect",
            "--creds",
            &creds,
            &format!("{}/team/app/base:1", server.addr),
        ])
        .output()
        .unwrap();
    assert!(
        !late.status.success(),
        "a finished attempt's token still pulls"
    );
}

#[test]
fn metrics_need_the_admin_token_and_their_labels_stay_bounded() {
    let server = ServerProcess::start(&[]);
    let client = reqwest::blocking::Client::new();
    let anon = client
        .get(format!("{}/metrics", server.url()))
        .send()
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let scrape = || {
        client
            .get(format!("{}/metrics", server.url()))
            .bearer_auth(&server.admin)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let before = scrape().len();
    // Hostile clients: invented paths and methods, no credentials.
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, format!("{}/api/v1/made-up-{i}/x{i}", server.url()))
            .send()
            .unwrap();
        let _ = client
            .get(format!("{}/api/v1/jobs/{i}", server.url()))
            .send()
            .unwrap();
    }
    let text = scrape();
    assert!(
        text.contains(
            "archway_api_requests_total{method=\"other\",route=\"/api/v1/{*rest}\",status=\"4xx\"}"
        ),
        "{text}"
    );
    assert!(text.contains("route=\"/api/v1/jobs/{id}\""), "{text}");
    assert!(
        !text.contains("made-up"),
        "a client-chosen path became a label"
    );
    // A few new series at most, however many distinct requests.
    assert!(
        text.len() < before + 16 * 1024,
        "{} → {} bytes",
        before,
        text.len()
    );
    // The coordinator's own series are there, alongside the registry's.
    for series in [
        "archway_jobs_running 0",
        "archway_job_requeues_total{reason=\"runner_system_failure\"} 0",
        "archway_job_pickup_seconds_count 0",
        "archway_registry_uploads_in_progress 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

#[test]
fn a_revoked_runner_stops_with_a_clear_error() {
    let server = ServerProcess::start(&[]);
    let mut runner = RunnerProcess::start(&server, "doomed", &["--platform", "linux/amd64"]);
    let id =
        serde_json::from_str::<serde_json::Value>(&fs::read_to_string(&runner.config).unwrap())
            .unwrap()["id"]
            .to_string();
    // Online first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .json(&["runner", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["online"] == true)
    {
        assert!(Instant::now() < deadline, "the runner never came online");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut revoke = archway();
    revoke
        .args(["server", "token", "revoke-runner", &id, "--data"])
        .arg(&server.data);
    ok(&mut revoke);
    let mut child = runner.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked runner kept running:\n{}",
            runner.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = runner.log_text();
    assert!(log.contains("refused this runner's token"), "{log}");
    assert!(log.contains("register the runner again"), "{log}");
}

/// Objects under `prefix` in the test bucket (the S3 server answers unsigned listings).
fn bucket_keys(location: &str, prefix: &str) -> Vec<String> {
    let (bucket, base) = location
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let text = reqwest::blocking::Client::new()
        .get(format!("{endpoint}/{bucket}"))
        .query(&[("list-type", "2"), ("prefix", &format!("{base}/{prefix}"))])
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap().to_owned())
        .collect()
}

#[test]
fn two_servers_on_one_bucket_and_one_database_run_a_pipeline_as_one() {
    let Some(db) = postgres_database() else {
        crate::support::skip("ARCHWAY_TEST_POSTGRES is not set (scripts/test.sh starts a cluster)");
        return;
    };
    let Some(crate::support::Backend::S3(location)) = crate::support::Backend::s3() else {
        return;
    };
    let mut a = ServerProcess::start_on(Some(db), &["--storage", &location]);
    let b = a.replica();
    // The image goes in through A, the runner pulls it (and the source snapshot the pipeline
    // uploads to A) through B, and reports its log to B.
    a.push_busybox();
    let runner = RunnerProcess::start(&b, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[
        ("app.txt", "the application\n"),
        (
            ".gitlab-ci.yml",
            "show:\n  image: $CI_REGISTRY/library/busybox:1.35\n  script:\n    - cat app.txt\n    - seq 1 20000 | sed 's/^/line /'\n",
        ),
    ]);
    let p = submit(&a, r.path(), &[]);
    let id = job_id(&p, "show");
    let j = a.wait_job(id, "success", |j| {
        j["status"] != "pending" && j["status"] != "running"
    });
    assert_eq!(
        j["status"],
        "success",
        "{j:#}\nrunner log:\n{}",
        runner.log_text()
    );
    assert_eq!(j["attempts"][0]["runner"]["name"], "r");
    // The finished log leaves the database for the bucket (whichever server archives it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while bucket_keys(&location, "logs/sha256/").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no archived log in {location}/logs/"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bucket_keys(&location, "sources/sha256/").len(), 1);
    let log = a.log(id);
    assert!(log.contains("the application"), "{log:.2000}");
    assert!(
        log.contains("line 1\n") && log.contains("line 20000\n"),
        "{log:.2000}"
    );
    // A gone, B serves the same log, from the bucket.
    a.kill9();
    assert_eq!(b.log(id), log);
    drop(runner);
}

/// Artifacts passed between jobs and a dynamic child pipeline planned from one, on two
/// servers sharing a bucket: the artifacts live in the bucket, not in a server's directory.
const SHARED_ARTIFACTS_PIPELINE: &str = r#"
stages: [build, test, child]
default:
  image: $CI_REGISTRY/library/busybox:1.35
build:
  stage: build
  script:
    - mkdir -p dist
    - echo "the binary" > dist/app
    - |
      cat > generated.yml <<'YAML'
      include: ci/common.yml
      child-job:
        image: $CI_REGISTRY/library/busybox:1.35
        script: ['echo "child sees $COMMON"']
      YAML
  artifacts:
    paths: [dist/, generated.yml]
use:
  stage: test
  needs: [build]
  script:
    - cat dist/app
run-child:
  stage: child
  trigger:
    include:
      - artifact: generated.yml
        job: build
    strategy: depend
"#;

#[test]
fn two_servers_on_one_bucket_share_artifacts_and_plan_dynamic_children_from_them() {
    let Some(db) = postgres_database() else {
        crate::support::skip("ARCHWAY_TEST_POSTGRES is not set (scripts/test.sh starts a cluster)");
        return;
    };
    let Some(crate::support::Backend::S3(location)) = crate::support::Backend::s3() else {
        return;
    };
    let mut a = ServerProcess::start_on(Some(db), &["--storage", &location]);
    let b = a.replica();
    a.push_busybox();
    // The runner uploads and downloads artifacts through B; the pipeline is run through A.
    let runner = RunnerProcess::start(&b, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[
        (".gitlab-ci.yml", SHARED_ARTIFACTS_PIPELINE),
        ("ci/common.yml", "variables:\n  COMMON: shared-value\n"),
    ]);
    let out = pipeline_run(&a, r.path(), &["--project", "team/app"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nrunner log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        runner.log_text()
    );
    assert!(stdout.contains("child pipeline 2"), "{stdout}");
    let p = a.json(&["pipeline", "show", "1"]);
    let build = job_id(&p, "build");
    let use_log = a.log(job_id(&p, "use"));
    assert!(use_log.contains("the binary"), "{use_log}");
    let c = a.json(&["pipeline", "show", "2"]);
    assert_eq!(c["status"], "success", "{c:#}");
    let child_log = a.log(job_id(&c, "child-job"));
    assert!(child_log.contains("child sees shared-value"), "{child_log}");
    // The archive is in the bucket, under its digest, and nowhere under either data directory.
    let digest = a.job(build)["artifacts"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let keys = bucket_keys(&location, "artifacts/sha256/");
    assert!(
        keys.iter().any(|k| k.ends_with(&format!("/{hex}.tar.gz"))),
        "{keys:?}"
    );
    for server in [&a, &b] {
        let local = server.data.join("artifacts/sha256");
        assert!(!local.join(format!("{hex}.tar.gz")).exists(), "{local:?}");
    }
    // A, which never received the upload, serves the archive from the bucket; so does B once
    // A is gone.
    let dl = tempfile::tempdir().unwrap();
    ok(a.cli()
        .args(["job", "artifacts", &build.to_string(), "-o"])
        .arg(dl.path().join("from-a.tar.gz")));
    a.kill9();
    ok(b.cli()
        .args(["job", "artifacts", &build.to_string(), "-o"])
        .arg(dl.path().join("from-b.tar.gz")));
    for name in ["from-a.tar.gz", "from-b.tar.gz"] {
        let bytes = fs::read(dl.path().join(name)).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), digest, "{name}");
    }
    drop(runner);
}

const ARTIFACT_PIPELINE: &str = r#"
stages: [build, test]
build:
  stage: build
  image: $CI_REGISTRY/library/busybox:1.35
  script:
    - mkdir -p dist
    - echo "the binary" > dist/app
    - echo "RELEASE=7" > vars.env
  artifacts:
    paths: [dist/]
    expire_in: 1 week
    reports:
      dotenv: vars.env
use:
  stage: test
  image: $CI_REGISTRY/library/busybox:1.35
  needs: [build]
  script:
    - cat dist/app
    - echo "release $RELEASE"
"#;

#[test]
fn artifacts_are_stored_by_the_server_passed_by_needs_and_downloadable() {
    let server = ServerProcess::start(&[]);
    server.push_busybox();
    let _runner = RunnerProcess::start(&server, "r", &["--platform", "linux/amd64"]);
    let r = repo(&[(".gitlab-ci.yml", ARTIFACT_PIPELINE)]);
    let out = pipeline_run(&server, r.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = server.json(&["pipeline", "show", "1"]);
    let build = job_id(&p, "build");
    let use_log = server.log(job_id(&p, "use"));
    assert!(
        use_log.contains("Downloading the artifacts of build"),
        "{use_log}"
    );
    assert!(use_log.contains("the binary"), "{use_log}");
    assert!(use_log.contains("release 7"), "{use_log}");
    let j = server.job(build);
    assert!(
        j["artifacts"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{j}"
    );
    assert_eq!(j["artifacts"]["dotenv"], serde_json::json!(["RELEASE"]));
    assert!(j["artifacts"]["expires_at_ms"].as_i64().unwrap() > 0);
    let shown = ok(server.cli().args(["job", "show", &build.to_string()]));
    assert!(
        shown.contains(&format!("archway job artifacts {build}")),
        "{shown}"
    );

    // Downloaded as an archive, and unpacked.
    let dl = tempfile::tempdir().unwrap();
    let archive = dl.path().join("a.tar.gz");
    ok(server
        .cli()
        .args(["job", "artifacts", &build.to_string(), "-o"])
        .arg(&archive));
    let bytes = fs::read(&archive).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&bytes)),
        j["artifacts"]["digest"].as_str().unwrap()
    );
    ok(server
        .cli()
        .args(["job", "artifacts", &build.to_string(), "--extract"])
        .arg(dl.path().join("x")));
    assert_eq!(
        fs::read_to_string(dl.path().join("x/dist/app")).unwrap(),
        "the binary\n"
    );
    assert!(dl.path().join("x/vars.env").is_file());
    // A job without artifacts says so.
    let out = server
        .cli()
        .args(["job", "artifacts", &job_id(&p, "use").to_string()])
        .current_dir(dl.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no artifacts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_hex(data: &[u8]) -> String {
    archway_oci::Digest::sha256(data).hex().to_owned()
}
