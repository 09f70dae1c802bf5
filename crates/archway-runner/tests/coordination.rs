//! The coordinator and runners together, in one process over real HTTP on loopback, with the
//! recording executor: routing by tags and platform, stage order, leases lost and requeued,
//! fencing, cancel, manual jobs, allow_failure, retry, drain, masking across chunks.
//!
//! Each test runs on SQLite and on PostgreSQL (`ARCHWAY_TEST_POSTGRES`, a throwaway cluster
//! `scripts/test.sh` starts; without it the PostgreSQL runs say they were skipped).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archway_api::{
    ApiClient, ApiError, AttemptOutcome, FinishAttempt, JobDefinition, JobStatus, PipelineStatus,
    PipelineView, PlatformOffer, RegisterRunner, SubmitPipeline, When,
};
use archway_runner::agent::{Agent, AgentEvent, AgentOptions};
use archway_runner::{Act, ExecResult, RecordingExecutor};
use archway_server::testing::{self, Backend};
use archway_server::{Server, ServerConfig};

struct Harness {
    url: String,
    admin: ApiClient,
    admin_token: String,
    registration: String,
    _dir: tempfile::TempDir,
    server: std::sync::Arc<Server>,
    data_dir: std::path::PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start(backend: Backend, lease: Duration) -> Option<Harness> {
    let url = match backend {
        Backend::Postgres => Some(testing::postgres_database("coordination").await?),
        Backend::Sqlite => None,
    };
    start_on(url, lease, None).await
}

/// A server on `database` (SQLite in its own directory when `None`); `tokens` are the admin
/// and registration tokens when the database already has them (a second server).
async fn start_on(
    database: Option<String>,
    lease: Duration,
    tokens: Option<(String, String)>,
) -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned());
    config.database_url = database;
    config.coordinator.lease_ttl = lease;
    Some(start_in(config, tokens, dir).await)
}

async fn start_with_config(config: ServerConfig, tokens: Option<(String, String)>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    start_in(config, tokens, dir).await
}

async fn start_in(
    mut config: ServerConfig,
    tokens: Option<(String, String)>,
    dir: tempfile::TempDir,
) -> Harness {
    config.poll_wait = Duration::from_secs(2);
    let data_dir = config.data_dir.clone();
    let (server, boot) = Server::open(config).await.unwrap();
    let (admin_token, registration_token) = match (boot, tokens) {
        (Some(b), _) => (b.admin_token, b.registration_token),
        (None, Some(t)) => t,
        (None, None) => panic!("a fresh database gets tokens"),
    };
    server.spawn_background();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let router = server.router();
    tokio::spawn(archway_server::serve(listener, router, async {
        let _ = rx.await;
    }));
    Harness {
        admin: ApiClient::new(&url, Some(admin_token.clone())).unwrap(),
        admin_token,
        url,
        registration: registration_token,
        _dir: dir,
        server,
        data_dir,
        shutdown: Some(tx),
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

struct RunnerHandle {
    name: String,
    exec: Arc<RecordingExecutor>,
    task: tokio::task::JoinHandle<()>,
    drain: archway_runner::DrainHandle,
    events: Arc<Mutex<Vec<AgentEvent>>>,
}

impl Harness {
    async fn runner(
        &self,
        name: &str,
        tags: &[&str],
        platforms: &[(&str, bool)],
        untagged: bool,
    ) -> RunnerHandle {
        let platforms: Vec<PlatformOffer> = platforms
            .iter()
            .map(|(p, e)| PlatformOffer {
                platform: p.to_string(),
                emulated: *e,
            })
            .collect();
        let reg = ApiClient::new(&self.url, None)
            .unwrap()
            .register_runner(&RegisterRunner {
                registration_token: self.registration.clone(),
                name: name.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                platforms: platforms.clone(),
                concurrency: 2,
                run_untagged: untagged,
                version: "test".into(),
            })
            .await
            .unwrap();
        let exec = RecordingExecutor::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let agent = Agent::new(
            AgentOptions {
                server: self.url.clone(),
                token: reg.token,
                name: name.into(),
                platforms,
                concurrency: 2,
                work_dir: self._dir.path().join(format!("work-{name}")),
                drain_deadline: Duration::from_secs(90),
                version: "test".into(),
            },
            exec.clone(),
            Arc::new(move |e| ev.lock().unwrap().push(e)),
        )
        .unwrap();
        let drain = agent.drain_handle();
        let task = tokio::spawn(async move {
            let _ = agent.run().await;
        });
        RunnerHandle {
            name: name.into(),
            exec,
            task,
            drain,
            events,
        }
    }

    async fn wait_pipeline(&self, id: i64, timeout: Duration) -> PipelineView {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.admin.pipeline(id).await.unwrap();
            if p.status.is_final() {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline still {}: {}",
                p.status,
                p.jobs
                    .iter()
                    .map(|j| format!(
                        "{} {} attempts [{}]",
                        j.name,
                        j.status,
                        j.attempts
                            .iter()
                            .map(|a| format!("{}@{}", a.state, a.runner.name))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_job(
        &self,
        id: i64,
        status: JobStatus,
        timeout: Duration,
    ) -> archway_api::JobView {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.admin.job(id).await.unwrap();
            if j.status == status {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is {} not {status}: {j:#?}",
                j.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn log(&self, job: i64) -> String {
        use futures_util::StreamExt;
        let mut s = self.admin.job_log(job, false).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn job(name: &str, stage: &str) -> JobDefinition {
    JobDefinition {
        name: name.into(),
        stage: stage.into(),
        script: vec!["true".into()],
        ..JobDefinition::default()
    }
}

fn pipeline(stages: &[&str], jobs: Vec<JobDefinition>) -> SubmitPipeline {
    SubmitPipeline {
        project: "team/app".into(),
        git_ref: "main".into(),
        tag: false,
        sha: "0123456789abcdef".into(),
        commit_message: "test".into(),
        source: None,
        file: ".gitlab-ci.yml".into(),
        stages: stages.iter().map(|s| s.to_string()).collect(),
        jobs,
        variables: vec![],
        masked: vec![],
        secrets: Default::default(),
        file_variables: vec![],
    }
}

fn arch_job(name: &str, stage: &str, arch: &str) -> JobDefinition {
    let mut j = job(name, stage);
    j.tags = vec![arch.into()];
    j.platform = Some(format!("linux/{arch}"));
    j
}

fn job_id(p: &PipelineView, name: &str) -> i64 {
    p.jobs.iter().find(|j| j.name == name).unwrap().id
}

const T: Duration = Duration::from_secs(20);

async fn jobs_land_on_the_runner_of_their_architecture_in_stage_order(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let amd = h.runner("amd", &[], &[("linux/amd64", false)], true).await;
    let arm = h
        .runner("arm-emulated", &[], &[("linux/arm64", true)], false)
        .await;
    let mut test = job("test", "test");
    test.tags = vec!["amd64".into()];
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["build", "test", "assemble"],
            vec![
                arch_job("build: [amd64]", "build", "amd64"),
                arch_job("build: [arm64]", "build", "arm64"),
                test,
                job("assemble", "assemble"),
            ],
        ))
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success, "{done:#?}");
    let amd_runs = amd.exec.names();
    let arm_runs = arm.exec.names();
    assert_eq!(arm_runs, ["build: [arm64]"]);
    assert_eq!(amd_runs.len(), 3, "{amd_runs:?}");
    assert_eq!(amd_runs[2], "assemble");
    assert!(amd_runs[..2].contains(&"build: [amd64]".to_string()));
    // The arm64 job ran emulated, and knew it.
    let arm_payload = arm.exec.runs.lock().unwrap()[0].clone();
    assert_eq!(arm_payload.platform, "linux/arm64");
    assert!(arm_payload.emulated);
    assert_eq!(arm_payload.var("ARCHWAY_EMULATED"), Some("true"));
    assert_eq!(arm_payload.var("CI_PROJECT_PATH"), Some("team/app"));
    // Order: every build finished before test started; test before assemble.
    let view = |n: &str| done.jobs.iter().find(|j| j.name == n).unwrap().clone();
    let test_start = view("test").started_at_ms.unwrap();
    for b in ["build: [amd64]", "build: [arm64]"] {
        assert!(view(b).finished_at_ms.unwrap() <= test_start);
    }
    assert!(view("test").finished_at_ms.unwrap() <= view("assemble").started_at_ms.unwrap());
    assert_eq!(
        view("build: [arm64]").attempts[0].runner.name,
        "arm-emulated"
    );
    amd.task.abort();
    arm.task.abort();
}

async fn a_job_without_a_fitting_runner_waits_and_says_why(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let amd = h
        .runner("amd", &["docker"], &[("linux/amd64", false)], false)
        .await;
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["build"],
            vec![arch_job("arm", "build", "arm64")],
        ))
        .await
        .unwrap();
    let id = job_id(&p, "arm");
    // Let the runner poll once so it counts as online.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let j = h.admin.job(id).await.unwrap();
    assert_eq!(j.status, JobStatus::Pending);
    let note = j.note.unwrap();
    assert!(
        note.starts_with(
            "no runner with tags [arm64] for linux/arm64; connected: amd [docker, amd64, x86_64]"
        ),
        "{note}"
    );
    amd.task.abort();
}

async fn a_dead_runners_job_is_requeued_elsewhere_and_its_late_reports_are_refused(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(2)).await else {
        return;
    };
    let a = h.runner("a", &[], &[("linux/amd64", false)], true).await;
    a.exec.act(
        "long",
        Act {
            output: vec![b"first attempt output\n".to_vec()],
            duration: Duration::from_secs(3600),
            result: ExecResult::Success,
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["build"], vec![job("long", "build")]))
        .await
        .unwrap();
    let id = job_id(&p, "long");
    h.wait_job(id, JobStatus::Running, T).await;
    // Wait until its output reached the server, then "kill -9" the runner: it stops polling.
    let deadline = Instant::now() + T;
    while !h.log(id).await.contains("first attempt output") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = a.exec.runs.lock().unwrap()[0].clone();
    a.task.abort();
    let killed = Instant::now();
    let b = h.runner("b", &[], &[("linux/amd64", false)], true).await;
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success);
    assert!(killed.elapsed() < Duration::from_secs(15));
    let j = h.admin.job(id).await.unwrap();
    assert_eq!(j.attempts.len(), 2, "{j:#?}");
    assert_eq!(j.attempts[0].state, "lost");
    assert_eq!(j.attempts[0].runner.name, "a");
    assert_eq!(j.attempts[1].state, "success");
    assert_eq!(j.attempts[1].runner.name, "b");
    assert_eq!(b.exec.names(), ["long"]);
    let log = h.log(id).await;
    assert!(log.contains("attempt 1 of job"), "{log}");
    assert!(log.contains("first attempt output"), "{log}");
    assert!(log.contains("attempt 1 lost"), "{log}");
    assert!(log.contains("attempt 2 of job"), "{log}");
    // The dead runner comes back late: nothing from the old attempt is accepted.
    let late = ApiClient::new(&h.url, Some(old.token.clone())).unwrap();
    let e = late
        .append_log(old.attempt_id, 21, bytes::Bytes::from_static(b"late\n"))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Fenced(_)), "{e:?}");
    let e = late
        .finish(
            old.attempt_id,
            &FinishAttempt {
                outcome: AttemptOutcome::Failed,
                exit_code: Some(1),
                reason: None,
                log_bytes: 0,
                log_tail: None,
                dotenv: Vec::new(),
                tests: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Fenced(_)), "{e:?}");
    assert_eq!(h.admin.job(id).await.unwrap().status, JobStatus::Success);
    b.task.abort();
}

async fn cancel_stops_a_running_job_and_the_rest_of_its_pipeline(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "slow",
        Act {
            duration: Duration::from_secs(3600),
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["a", "b"],
            vec![job("slow", "a"), job("after", "b")],
        ))
        .await
        .unwrap();
    let id = job_id(&p, "slow");
    h.wait_job(id, JobStatus::Running, T).await;
    let asked = Instant::now();
    h.admin.cancel_pipeline(p.id).await.unwrap();
    h.wait_job(id, JobStatus::Canceled, T).await;
    // Not a timing assertion of the product's speed: a bound that a broken cancel path
    // (waiting for a poll timeout or a lease) cannot meet.
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Canceled);
    assert_eq!(
        done.jobs.iter().find(|j| j.name == "after").unwrap().status,
        JobStatus::Canceled
    );
    assert!(r.events.lock().unwrap().iter().any(|e| matches!(
        e,
        AgentEvent::JobFinished {
            outcome: AttemptOutcome::Canceled,
            ..
        }
    )));
    r.task.abort();
}

async fn manual_jobs_wait_to_be_played_and_allowed_failures_do_not_fail_the_pipeline(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "flaky",
        Act {
            result: ExecResult::Failed {
                exit_code: Some(3),
                reason: archway_api::FailureReason::ScriptFailure,
            },
            ..Act::default()
        },
    );
    let mut flaky = job("flaky", "test");
    flaky.allow_failure = true;
    flaky.allow_failure_exit_codes = vec![3];
    let mut deploy = job("deploy", "deploy");
    deploy.when = When::Manual;
    deploy.allow_failure = false; // blocking
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["test", "deploy"], vec![flaky, deploy]))
        .await
        .unwrap();
    let deploy_id = job_id(&p, "deploy");
    h.wait_job(deploy_id, JobStatus::Manual, T).await;
    let flaky_view = h.wait_job(job_id(&p, "flaky"), JobStatus::Failed, T).await;
    assert!(flaky_view.failure_allowed);
    assert_eq!(flaky_view.exit_code, Some(3));
    let mid = h.admin.pipeline(p.id).await.unwrap();
    assert_eq!(mid.status, PipelineStatus::Manual);
    assert!(!r.exec.names().contains(&"deploy".to_string()));
    h.admin.job_action(deploy_id, "play").await.unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success, "{done:#?}");
    assert_eq!(r.exec.names(), ["flaky", "deploy"]);
    r.task.abort();
}

async fn retry_runs_a_failed_job_again_up_to_its_max(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "always-fails",
        Act {
            result: ExecResult::Failed {
                exit_code: Some(1),
                reason: archway_api::FailureReason::ScriptFailure,
            },
            ..Act::default()
        },
    );
    let mut j = job("always-fails", "test");
    j.retry_max = 2;
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["test"], vec![j]))
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Failed);
    let v = &done.jobs[0];
    assert_eq!(v.attempts.len(), 3, "{v:#?}");
    assert!(v.attempts.iter().all(|a| a.state == "failed"));
    // A person retries the finished job: a fourth attempt.
    h.admin.job_action(v.id, "retry").await.unwrap();
    let again = h.wait_pipeline(p.id, T).await;
    assert_eq!(again.jobs[0].attempts.len(), 6);
    r.task.abort();
}

async fn masked_values_never_reach_the_log_even_split_across_chunks(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    let secret = "hunter2-super-secret";
    r.exec.act(
        "leaky",
        Act {
            output: vec![
                b"token is hunter2-su".to_vec(),
                b"per-secret and again ".to_vec(),
                b"hunter2-super-secret\n".to_vec(),
            ],
            ..Act::default()
        },
    );
    let mut p = pipeline(&["test"], vec![job("leaky", "test")]);
    p.secrets.insert("API_KEY".into(), secret.into());
    let p = h.admin.submit_pipeline(&p).await.unwrap();
    h.wait_pipeline(p.id, T).await;
    let log = h.log(job_id(&p, "leaky")).await;
    assert!(
        log.contains("token is [MASKED] and again [MASKED]"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    let payload = r.exec.runs.lock().unwrap()[0].clone();
    assert!(
        payload
            .variables
            .iter()
            .any(|v| v.name == "API_KEY" && v.masked)
    );
    assert!(
        payload
            .variables
            .iter()
            .any(|v| v.name == "CI_JOB_TOKEN" && v.masked)
    );
    r.task.abort();
}

async fn a_draining_runner_finishes_what_it_can_and_hands_back_the_rest(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let a = h.runner("a", &[], &[("linux/amd64", false)], true).await;
    a.exec.act(
        "quick",
        Act {
            duration: Duration::from_millis(300),
            ..Act::default()
        },
    );
    a.exec.act(
        "endless",
        Act {
            duration: Duration::from_secs(3600),
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["x"],
            vec![job("quick", "x"), job("endless", "x")],
        ))
        .await
        .unwrap();
    h.wait_job(job_id(&p, "endless"), JobStatus::Running, T)
        .await;
    h.wait_job(job_id(&p, "quick"), JobStatus::Running, T).await;
    a.drain.drain(Duration::from_secs(1));
    // The runner stops by itself once its jobs are done or handed back.
    tokio::time::timeout(T, a.task).await.unwrap().unwrap();
    let quick = h.admin.job(job_id(&p, "quick")).await.unwrap();
    assert_eq!(quick.status, JobStatus::Success);
    let endless = h.admin.job(job_id(&p, "endless")).await.unwrap();
    assert_eq!(endless.status, JobStatus::Pending, "{endless:#?}");
    assert_eq!(endless.attempts[0].state, "handed_back");
    // Another runner takes it; the handed-back attempt did not count as a failure.
    let b = h.runner("b", &[], &[("linux/amd64", false)], true).await;
    b.exec.act("endless", Act::default());
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success);
    assert!(a.events.lock().unwrap().contains(&AgentEvent::Stopped));
    b.task.abort();
    let _ = a.name;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_share_the_queue_and_hand_out_each_job_once() {
    let Some(db) = testing::postgres_database("two servers").await else {
        return;
    };
    let a = start_on(Some(db.clone()), Duration::from_secs(5), None)
        .await
        .unwrap();
    let b = start_on(
        Some(db),
        Duration::from_secs(5),
        Some((a.admin_token.clone(), a.registration.clone())),
    )
    .await
    .unwrap();
    // Runners on both servers; the pipeline goes in through server A only.
    let mut runners = Vec::new();
    for (i, h) in [&a, &b, &a, &b].iter().enumerate() {
        runners.push(
            h.runner(&format!("r{i}"), &[], &[("linux/amd64", false)], true)
                .await,
        );
    }
    let jobs: Vec<JobDefinition> = (0..40)
        .map(|i| {
            let mut j = job(&format!("j{i}"), if i < 20 { "one" } else { "two" });
            j.script = vec![format!("echo {i}")];
            j
        })
        .collect();
    for r in &runners {
        for j in &jobs {
            r.exec.act(
                &j.name,
                Act {
                    duration: Duration::from_millis(20),
                    ..Act::default()
                },
            );
        }
    }
    let p = a
        .admin
        .submit_pipeline(&pipeline(&["one", "two"], jobs))
        .await
        .unwrap();
    let done = b.wait_pipeline(p.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, PipelineStatus::Success);
    // Every job ran exactly once, in all.
    let mut ran: Vec<String> = runners.iter().flat_map(|r| r.exec.names()).collect();
    ran.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("j{i}")).collect();
    want.sort();
    assert_eq!(ran, want);
    assert!(done.jobs.iter().all(|j| j.attempts.len() == 1));
    // Runners of server B took work submitted to server A.
    let on_b: usize = [1, 3].iter().map(|&i| runners[i].exec.names().len()).sum();
    assert!(on_b > 0, "server B's runners ran nothing");
    for r in runners {
        r.task.abort();
    }
}

async fn a_resource_group_runs_one_job_at_a_time(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    let r2 = h.runner("r2", &[], &[("linux/amd64", false)], true).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let mut j = job(&format!("deploy{i}"), "deploy");
        j.resource_group = Some("production".into());
        jobs.push(j);
    }
    for x in [&r, &r2] {
        for i in 0..3 {
            x.exec.act(
                &format!("deploy{i}"),
                Act {
                    duration: Duration::from_millis(300),
                    ..Act::default()
                },
            );
        }
    }
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["deploy"], jobs))
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success);
    // No two deploys overlapped.
    let mut spans: Vec<(i64, i64)> = done
        .jobs
        .iter()
        .map(|j| (j.started_at_ms.unwrap(), j.finished_at_ms.unwrap()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {spans:?}");
    }
    r.task.abort();
    r2.task.abort();
}

async fn a_newer_pipeline_cancels_an_older_interruptible_one(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "lint",
        Act {
            duration: Duration::from_secs(3600),
            ..Act::default()
        },
    );
    let mut lint = job("lint", "test");
    lint.interruptible = true;
    let older = h
        .admin
        .submit_pipeline(&pipeline(
            &["test", "deploy"],
            vec![lint.clone(), job("deploy", "deploy")],
        ))
        .await
        .unwrap();
    h.wait_job(job_id(&older, "lint"), JobStatus::Running, T)
        .await;
    // A newer commit on the same branch: the older pipeline only ran interruptible jobs.
    let mut fast = lint.clone();
    fast.name = "lint".into();
    r.exec.act("lint", Act::default());
    let newer = h
        .admin
        .submit_pipeline(&pipeline(
            &["test", "deploy"],
            vec![fast, job("deploy", "deploy")],
        ))
        .await
        .unwrap();
    let old_done = h.wait_pipeline(older.id, T).await;
    assert_eq!(old_done.status, PipelineStatus::Canceled);
    let new_done = h.wait_pipeline(newer.id, T).await;
    assert_eq!(new_done.status, PipelineStatus::Success);
    // A pipeline that has started a non-interruptible job is left alone.
    r.exec.act(
        "build",
        Act {
            duration: Duration::from_secs(1),
            ..Act::default()
        },
    );
    let guarded = h
        .admin
        .submit_pipeline(&pipeline(&["build"], vec![job("build", "build")]))
        .await
        .unwrap();
    h.wait_job(job_id(&guarded, "build"), JobStatus::Running, T)
        .await;
    let later = h
        .admin
        .submit_pipeline(&pipeline(
            &["test", "deploy"],
            vec![lint, job("deploy", "deploy")],
        ))
        .await
        .unwrap();
    assert_eq!(
        h.wait_pipeline(guarded.id, T).await.status,
        PipelineStatus::Success
    );
    assert_eq!(
        h.wait_pipeline(later.id, T).await.status,
        PipelineStatus::Success
    );
    r.task.abort();
}

async fn delayed_jobs_start_after_their_delay_or_when_played(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    let mut soon = job("soon", "x");
    soon.when = When::Delayed;
    soon.start_in_secs = Some(2);
    let mut later = job("later", "x");
    later.when = When::Delayed;
    later.start_in_secs = Some(3600);
    let submitted = Instant::now();
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["x"], vec![soon, later]))
        .await
        .unwrap();
    let v = h
        .wait_job(job_id(&p, "later"), JobStatus::Scheduled, T)
        .await;
    assert!(v.run_after_ms.is_some());
    h.wait_job(job_id(&p, "soon"), JobStatus::Success, T).await;
    assert!(submitted.elapsed() >= Duration::from_secs(2));
    h.admin
        .job_action(job_id(&p, "later"), "play")
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success);
    r.task.abort();
}

async fn log_appends_are_idempotent_and_the_stored_log_is_capped(b: Backend) {
    let url = match b {
        Backend::Postgres => match testing::postgres_database("logs").await {
            Some(u) => Some(u),
            None => return,
        },
        Backend::Sqlite => None,
    };
    // A tiny cap to see the marker.
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned());
    config.database_url = url;
    config.coordinator.max_log_bytes = 1024;
    let h = start_with_config(config, None).await;
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "talky",
        Act {
            duration: Duration::from_secs(3600),
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["x"], vec![job("talky", "x")]))
        .await
        .unwrap();
    let id = job_id(&p, "talky");
    h.wait_job(id, JobStatus::Running, T).await;
    let deadline = Instant::now() + T;
    while r.exec.runs.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let payload = r.exec.runs.lock().unwrap()[0].clone();
    // The agent's own header line went first; continue the stream from where the server is.
    let job_api = ApiClient::new(&h.url, Some(payload.token.clone())).unwrap();
    let have = job_api
        .append_log(payload.attempt_id, 0, bytes::Bytes::new())
        .await
        .unwrap()
        .received;
    let at = |n: u64| have + n;
    let send = |off: u64, data: &'static [u8]| {
        let api = job_api.clone();
        async move {
            api.append_log(payload.attempt_id, off, bytes::Bytes::from_static(data))
                .await
                .unwrap()
                .received
        }
    };
    assert_eq!(send(at(0), b"abc").await, at(3));
    // A retry that overlaps what the server has: only the new tail counts.
    assert_eq!(send(at(0), b"abcdef").await, at(6));
    assert_eq!(send(at(3), b"def").await, at(6));
    // A gap: nothing stored, the answer says where to resume.
    assert_eq!(send(at(10), b"zzz").await, at(6));
    // Past the cap: accepted (offsets advance) but dropped, with one marker.
    for _ in 0..30 {
        let off = send(at(0), b"").await;
        send(off, b"0123456789012345678901234567890123456789\n").await;
    }
    let log = h.log(id).await;
    assert!(log.contains("abcdef"), "{log}");
    assert!(!log.contains("zzz"), "{log}");
    assert_eq!(log.matches("abcdef").count(), 1, "{log}");
    assert_eq!(
        log.matches("the job log reached the 1 KiB limit").count(),
        1,
        "{log}"
    );
    let stored = h.admin.job(id).await.unwrap().attempts[0].log_bytes;
    assert!(stored < 1024 + 100, "{stored}");
    r.task.abort();
}

async fn a_finished_attempts_log_moves_to_the_archive_and_reads_the_same(b: Backend) {
    let url = match b {
        Backend::Postgres => match testing::postgres_database("archived_logs").await {
            Some(u) => Some(u),
            None => return,
        },
        Backend::Sqlite => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned());
    config.database_url = url;
    let h = start_with_config(config, None).await;
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    // More than one read of the log (256 KiB) and more than one chunk.
    let output: Vec<Vec<u8>> = (0..3)
        .map(|c| {
            (0..4000)
                .map(|i| format!("chunk {c} line {i:05} of a long job log\n"))
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    let all: Vec<u8> = output.concat();
    r.exec.act(
        "long-log",
        Act {
            output,
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["x"], vec![job("long-log", "x")]))
        .await
        .unwrap();
    let id = job_id(&p, "long-log");
    assert_eq!(
        h.wait_pipeline(p.id, T).await.status,
        PipelineStatus::Success
    );
    // The archiver moves the finished attempt's log to DATA/logs/sha256/<hex>.
    let archived = dir.path().join("logs/sha256");
    let deadline = Instant::now() + T;
    let file = loop {
        let files: Vec<_> = std::fs::read_dir(&archived)
            .unwrap()
            .map(|e| e.unwrap().path())
            // Not the temporary file of a write in progress.
            .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
            .collect();
        if let [f] = files.as_slice() {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no archived log in {archived:?}: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        archway_oci::Digest::sha256(&bytes).hex()
    );
    let stored = h.admin.job(id).await.unwrap().attempts[0].log_bytes;
    assert_eq!(bytes.len() as u64, stored);
    assert!(
        bytes.windows(all.len()).any(|w| w == all.as_slice()),
        "the archived log lacks the job's output"
    );
    // Read back through the API: header, the archived bytes, footer.
    let log = h.log(id).await;
    assert!(log.starts_with("[archway] attempt 1 of job"), "{log:.200}");
    assert!(log.contains(std::str::from_utf8(&bytes).unwrap()));
    let last = log.trim_end().rsplit('\n').next().unwrap();
    assert!(last.starts_with("[archway] attempt 1 success"), "{last}");
    r.task.abort();

    // An attempt that wrote nothing is archived too (as the empty log).
    let reg = ApiClient::new(&h.url, None)
        .unwrap()
        .register_runner(&RegisterRunner {
            registration_token: h.registration.clone(),
            name: "mute".into(),
            tags: vec![],
            platforms: vec![PlatformOffer {
                platform: "linux/amd64".into(),
                emulated: false,
            }],
            concurrency: 1,
            run_untagged: true,
            version: "test".into(),
        })
        .await
        .unwrap();
    let mute = ApiClient::new(&h.url, Some(reg.token)).unwrap();
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["x"], vec![job("silent", "x")]))
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    let payload = loop {
        let got = mute
            .poll(&archway_api::PollRequest {
                free_slots: 1,
                platforms: vec![PlatformOffer {
                    platform: "linux/amd64".into(),
                    emulated: false,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(j) = got.jobs.into_iter().next() {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the silent job was not handed out"
        );
    };
    let job_api = ApiClient::new(&h.url, Some(payload.token.clone())).unwrap();
    job_api
        .finish(
            payload.attempt_id,
            &FinishAttempt {
                outcome: AttemptOutcome::Success,
                exit_code: Some(0),
                reason: None,
                log_bytes: 0,
                log_tail: None,
                dotenv: vec![],
                tests: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        h.wait_pipeline(p.id, T).await.status,
        PipelineStatus::Success
    );
    let empty = archived.join(archway_oci::Digest::sha256(b"").hex());
    while !empty.exists() {
        assert!(Instant::now() < deadline, "the empty log was not archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = h.log(job_id(&p, "silent")).await;
    assert!(log.contains("[archway] attempt 1 success"), "{log}");
}

/// A trigger job of a child pipeline with `jobs` (`depend`: it takes the child's status).
fn trigger_job(name: &str, stage: &str, depend: bool, jobs: Vec<JobDefinition>) -> JobDefinition {
    let mut j = job(name, stage);
    j.script = vec![];
    j.trigger = Some(Box::new(archway_api::TriggerDefinition {
        depend,
        file: format!("ci/{name}.yml"),
        stages: vec!["build".into(), "test".into()],
        jobs,
        variables: vec![],
        dynamic: None,
    }));
    j
}

async fn child_pipelines_run_and_a_depend_trigger_job_waits_for_its_child(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "nowait-child-job",
        Act {
            result: ExecResult::Failed {
                exit_code: Some(1),
                reason: archway_api::FailureReason::ScriptFailure,
            },
            ..Act::default()
        },
    );
    // The child's jobs hold the variable passed down as planned (`$CI_PIPELINE_ID`, the
    // parent's id once the trigger job starts); a child job's own use of it is its own.
    let passed = archway_api::VarDef {
        name: "PARENT_PIPELINE_ID".into(),
        value: "$CI_PIPELINE_ID".into(),
    };
    let mut child_build = job("child-build", "build");
    child_build.variables = vec![
        passed.clone(),
        archway_api::VarDef {
            name: "OWN_ID".into(),
            value: "$CI_PIPELINE_ID".into(),
        },
    ];
    let mut child_test = job("child-test", "test");
    child_test.variables = vec![passed.clone()];
    let mut depend = trigger_job("depend", "test", true, vec![child_build, child_test]);
    depend.trigger.as_mut().unwrap().variables = vec![passed];
    let nowait = trigger_job(
        "nowait",
        "test",
        false,
        vec![job("nowait-child-job", "build")],
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["build", "test", "deploy"],
            vec![
                job("build", "build"),
                depend,
                nowait,
                job("deploy", "deploy"),
            ],
        ))
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Success, "{done:#?}");
    let view = |n: &str| done.jobs.iter().find(|j| j.name == n).unwrap().clone();
    // Trigger jobs never reach a runner; each created one child pipeline.
    let ran = r.exec.names();
    assert!(
        !ran.iter().any(|n| n == "depend" || n == "nowait"),
        "{ran:?}"
    );
    assert_eq!(ran.first().map(String::as_str), Some("build"));
    assert_eq!(ran.last().map(String::as_str), Some("deploy"));
    let depend = view("depend");
    assert_eq!(depend.status, JobStatus::Success);
    assert!(depend.attempts.is_empty());
    let child = h
        .admin
        .pipeline(depend.downstream_pipeline_id.unwrap())
        .await
        .unwrap();
    assert_eq!(child.parent_job_id, Some(depend.id));
    assert_eq!(child.status, PipelineStatus::Success);
    assert_eq!(
        (child.project.as_str(), child.sha.as_str()),
        ("team/app", "0123456789abcdef")
    );
    assert_eq!(child.file, "ci/depend.yml");
    // `depend` finished only after its child did, and `deploy` started after that.
    let child_end = child
        .jobs
        .iter()
        .filter_map(|j| j.finished_at_ms)
        .max()
        .unwrap();
    assert!(depend.finished_at_ms.unwrap() >= child_end);
    assert!(view("deploy").started_at_ms.unwrap() >= depend.finished_at_ms.unwrap());
    let runs = r.exec.runs.lock().unwrap().clone();
    let payload = |n: &str| runs.iter().find(|j| j.name == n).unwrap().clone();
    let parent_id = p.id.to_string();
    let child_id = child.id.to_string();
    assert_eq!(
        payload("child-build").var("PARENT_PIPELINE_ID"),
        Some(parent_id.as_str())
    );
    assert_eq!(
        payload("child-test").var("PARENT_PIPELINE_ID"),
        Some(parent_id.as_str())
    );
    assert_eq!(
        payload("child-build").var("CI_PIPELINE_ID"),
        Some(child_id.as_str())
    );
    assert_eq!(
        payload("child-build").var("OWN_ID"),
        Some(child_id.as_str())
    );
    // Without `strategy: depend`, the trigger job succeeded once its child was created,
    // and the child's failure stays the child's.
    let nowait = view("nowait");
    assert_eq!(nowait.status, JobStatus::Success);
    let nowait_child = h
        .admin
        .pipeline(nowait.downstream_pipeline_id.unwrap())
        .await
        .unwrap();
    let nowait_child = h.wait_pipeline(nowait_child.id, T).await;
    assert_eq!(nowait_child.status, PipelineStatus::Failed);
    r.task.abort();
}

async fn a_failed_child_fails_its_depend_trigger_job_until_retried(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "child-fails",
        Act {
            result: ExecResult::Failed {
                exit_code: Some(2),
                reason: archway_api::FailureReason::ScriptFailure,
            },
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["test", "deploy"],
            vec![
                trigger_job("depend", "test", true, vec![job("child-fails", "test")]),
                trigger_job("empty", "test", false, vec![]),
                job("deploy", "deploy"),
            ],
        ))
        .await
        .unwrap();
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Failed, "{done:#?}");
    let view = |p: &PipelineView, n: &str| p.jobs.iter().find(|j| j.name == n).unwrap().clone();
    let depend = view(&done, "depend");
    assert_eq!(depend.status, JobStatus::Failed);
    assert_eq!(view(&done, "deploy").status, JobStatus::Skipped);
    // A child with no job to run fails its trigger job, as in GitLab.
    let empty = view(&done, "empty");
    assert_eq!(empty.status, JobStatus::Failed);
    assert_eq!(
        empty.failure_reason,
        Some(archway_api::FailureReason::DownstreamPipelineCreationFailed)
    );
    assert_eq!(empty.downstream_pipeline_id, None);
    // Retrying the trigger job creates a new child; it fails again, and so does the job.
    let first_child = depend.downstream_pipeline_id.unwrap();
    h.admin.job_action(depend.id, "retry").await.unwrap();
    let again = h.wait_pipeline(p.id, T).await;
    let depend = view(&again, "depend");
    assert_eq!(depend.status, JobStatus::Failed);
    assert!(depend.downstream_pipeline_id.unwrap() > first_child);
    assert_eq!(
        r.exec
            .names()
            .iter()
            .filter(|n| *n == "child-fails")
            .count(),
        2
    );
    r.task.abort();
}

async fn canceling_the_parent_cancels_its_child_pipeline(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(5)).await else {
        return;
    };
    let r = h.runner("r", &[], &[("linux/amd64", false)], true).await;
    r.exec.act(
        "child-slow",
        Act {
            duration: Duration::from_secs(3600),
            ..Act::default()
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(
            &["test", "deploy"],
            vec![
                trigger_job("depend", "test", true, vec![job("child-slow", "build")]),
                job("deploy", "deploy"),
            ],
        ))
        .await
        .unwrap();
    let depend = h
        .wait_job(job_id(&p, "depend"), JobStatus::Running, T)
        .await;
    let child = h
        .admin
        .pipeline(depend.downstream_pipeline_id.unwrap())
        .await
        .unwrap();
    h.wait_job(job_id(&child, "child-slow"), JobStatus::Running, T)
        .await;
    h.admin.cancel_pipeline(p.id).await.unwrap();
    let child = h.wait_pipeline(child.id, T).await;
    assert_eq!(child.status, PipelineStatus::Canceled, "{child:#?}");
    assert_eq!(child.jobs[0].status, JobStatus::Canceled);
    let done = h.wait_pipeline(p.id, T).await;
    assert_eq!(done.status, PipelineStatus::Canceled, "{done:#?}");
    assert!(done.jobs.iter().all(|j| j.status == JobStatus::Canceled));
    r.task.abort();
}

/// Each scenario as a test on both databases.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

async fn artifacts_are_read_only_within_their_pipeline_and_only_a_running_attempt_sets_them(
    b: Backend,
) {
    let Some(h) = start(b, Duration::from_secs(30)).await else {
        return;
    };
    let a = h.runner("a", &[], &[("linux/amd64", false)], true).await;
    let hold = Act {
        output: vec![],
        duration: Duration::from_secs(3600),
        result: ExecResult::Success,
    };
    a.exec.act("one", hold.clone());
    a.exec.act("two", hold);
    let p1 = h
        .admin
        .submit_pipeline(&pipeline(&["build"], vec![job("one", "build")]))
        .await
        .unwrap();
    // On another branch (a newer pipeline on the same branch would cancel the first).
    let mut other = pipeline(&["build"], vec![job("two", "build")]);
    other.git_ref = "feature".into();
    let p2 = h.admin.submit_pipeline(&other).await.unwrap();
    let (one, two) = (job_id(&p1, "one"), job_id(&p2, "two"));
    h.wait_job(one, JobStatus::Running, T).await;
    h.wait_job(two, JobStatus::Running, T).await;
    // The server says running once it handed the job out; the executor records it a moment
    // later.
    let deadline = Instant::now() + T;
    while a.exec.runs.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the runner never started both jobs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let runs = a.exec.runs.lock().unwrap().clone();
    let pay = |name: &str| runs.iter().find(|r| r.name == name).unwrap().clone();
    let (p_one, p_two) = (pay("one"), pay("two"));
    let t_one = ApiClient::new(&h.url, Some(p_one.token.clone())).unwrap();
    let t_two = ApiClient::new(&h.url, Some(p_two.token.clone())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.tar.gz");
    let data = b"artifact bytes".to_vec();
    std::fs::write(&file, &data).unwrap();
    let digest = archway_oci::Digest::sha256(&data).to_string();
    let open = || async { tokio::fs::File::open(&file).await.unwrap() };
    // Bytes that do not hash to the digest are refused, and nothing is recorded.
    let wrong = archway_oci::Digest::sha256(b"other").to_string();
    let e = t_one
        .upload_artifacts(p_one.attempt_id, &wrong, open().await, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
    assert!(h.admin.job(one).await.unwrap().artifacts.is_none());
    // One attempt's token cannot store artifacts for another attempt.
    let e = t_two
        .upload_artifacts(p_one.attempt_id, &digest, open().await, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Forbidden(_)), "{e:?}");
    t_one
        .upload_artifacts(p_one.attempt_id, &digest, open().await, Some(3600))
        .await
        .unwrap();
    let view = h.admin.job(one).await.unwrap().artifacts.unwrap();
    assert_eq!(view.digest, digest);
    assert_eq!(view.size, data.len() as u64);
    // A job of another pipeline cannot read them; the job's own pipeline and admins can.
    let e = match t_two.fetch_artifacts(one).await {
        Err(e) => e,
        Ok(_) => panic!("another pipeline's job token read the artifacts"),
    };
    assert!(matches!(e, ApiError::Forbidden(_)), "{e:?}");
    use futures_util::StreamExt as _;
    let mut got = Vec::new();
    let mut s = t_one.fetch_artifacts(one).await.unwrap();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, data);
    assert!(h.admin.job_artifacts(one).await.is_ok());
    // Once the attempt is over, its token sets nothing.
    h.admin.cancel_pipeline(p1.id).await.unwrap();
    h.wait_job(one, JobStatus::Canceled, T).await;
    let e = t_one
        .upload_artifacts(p_one.attempt_id, &digest, open().await, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Unauthorized(_) | ApiError::Fenced(_) | ApiError::Forbidden(_)
        ),
        "{e:?}"
    );
    h.admin.cancel_pipeline(p2.id).await.unwrap();
}

async fn expired_artifacts_are_swept_and_readers_are_told_they_expired(b: Backend) {
    let Some(h) = start(b, Duration::from_secs(30)).await else {
        return;
    };
    let a = h.runner("a", &[], &[("linux/amd64", false)], true).await;
    a.exec.act(
        "one",
        Act {
            output: vec![],
            duration: Duration::from_secs(3600),
            result: ExecResult::Success,
        },
    );
    let p = h
        .admin
        .submit_pipeline(&pipeline(&["build"], vec![job("one", "build")]))
        .await
        .unwrap();
    let one = job_id(&p, "one");
    h.wait_job(one, JobStatus::Running, T).await;
    let deadline = Instant::now() + T;
    while a.exec.runs.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the runner never started the job"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pay = a.exec.runs.lock().unwrap()[0].clone();
    let t = ApiClient::new(&h.url, Some(pay.token.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.tar.gz");
    let data = b"short-lived artifact".to_vec();
    std::fs::write(&file, &data).unwrap();
    let digest = archway_oci::Digest::sha256(&data).to_string();
    t.upload_artifacts(
        pay.attempt_id,
        &digest,
        tokio::fs::File::open(&file).await.unwrap(),
        Some(1),
    )
    .await
    .unwrap();
    let stored = || {
        std::fs::read_dir(h.data_dir.join("artifacts/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(stored(), 1);
    // Within its grace an unreferenced archive stays; nothing has expired yet.
    assert_eq!(
        h.server
            .sweep_artifacts(Duration::from_secs(3600))
            .await
            .unwrap(),
        (0, 0)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        h.server.sweep_artifacts(Duration::ZERO).await.unwrap(),
        (1, 1)
    );
    assert_eq!(stored(), 0);
    let e = match h.admin.job_artifacts(one).await {
        Err(e) => e,
        Ok(_) => panic!("expired artifacts were served"),
    };
    assert!(e.to_string().contains("have expired"), "{e}");
    h.admin.cancel_pipeline(p.id).await.unwrap();
}

on_both_databases!(
    a_finished_attempts_log_moves_to_the_archive_and_reads_the_same,
    expired_artifacts_are_swept_and_readers_are_told_they_expired,
    jobs_land_on_the_runner_of_their_architecture_in_stage_order,
    a_job_without_a_fitting_runner_waits_and_says_why,
    a_dead_runners_job_is_requeued_elsewhere_and_its_late_reports_are_refused,
    cancel_stops_a_running_job_and_the_rest_of_its_pipeline,
    manual_jobs_wait_to_be_played_and_allowed_failures_do_not_fail_the_pipeline,
    retry_runs_a_failed_job_again_up_to_its_max,
    masked_values_never_reach_the_log_even_split_across_chunks,
    a_draining_runner_finishes_what_it_can_and_hands_back_the_rest,
    a_resource_group_runs_one_job_at_a_time,
    a_newer_pipeline_cancels_an_older_interruptible_one,
    delayed_jobs_start_after_their_delay_or_when_played,
    log_appends_are_idempotent_and_the_stored_log_is_capped,
    artifacts_are_read_only_within_their_pipeline_and_only_a_running_attempt_sets_them,
    child_pipelines_run_and_a_depend_trigger_job_waits_for_its_child,
    a_failed_child_fails_its_depend_trigger_job_until_retried,
    canceling_the_parent_cancels_its_child_pipeline
);
