//! `archway lint` and `archway plan` as a user runs them: discovery, formats, exit codes.

use std::path::Path;
use std::process::Command;

use crate::support::archway;

fn corpus(case: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../archway-pipeline/tests/corpus")
        .join(case)
}

fn in_dir(dir: &Path, args: &[&str]) -> std::process::Output {
    archway().current_dir(dir).args(args).output().unwrap()
}

#[test]
fn plan_discovers_gitlab_ci_and_routes_jobs_by_architecture() {
    let out = in_dir(&corpus("seed-gitlab-eks"), &["plan", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    let platforms: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap(),
                j["platform"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("build-job: [amd64]", "linux/amd64"),
            ("build-job: [arm64]", "linux/arm64"),
            ("test-job: [amd64]", "linux/amd64"),
            ("test-job: [arm64]", "linux/arm64"),
            ("create-manifest-job", "linux/arm64"),
        ]
    );
    let manifest = &jobs[4];
    assert_eq!(manifest["depends_on"].as_array().unwrap().len(), 4);

    let text = in_dir(&corpus("seed-gitlab-eks"), &["plan"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("5 jobs in 5 stages") && text.contains("build-job: [arm64]  [linux/arm64]"),
        "{text}"
    );

    let mermaid = in_dir(&corpus("seed-gitlab-eks"), &["plan", "--format", "mermaid"]);
    let mermaid = String::from_utf8_lossy(&mermaid.stdout);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert!(
        mermaid.contains("j_build_job___arm64_ --> j_create_manifest_job"),
        "{mermaid}"
    );
}

#[test]
fn plan_discovers_codecatalyst_workflows_and_takes_context_flags() {
    let out = in_dir(&corpus("seed-codecatalyst"), &["plan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("docker_build_arm64  [linux/arm64]"), "{text}");
    assert!(
        text.contains("needs: docker_build_arm64, docker_build_amd64"),
        "{text}"
    );

    // --branch / --var feed rules: `release` only exists on release branches.
    let dir = corpus("rules-if");
    let on_main =
        String::from_utf8_lossy(&in_dir(&dir, &["plan", "--branch", "main"]).stdout).into_owned();
    assert!(on_main.contains("release  when: manual"), "{on_main}");
    let on_feature =
        String::from_utf8_lossy(&in_dir(&dir, &["plan", "--branch", "feature/x"]).stdout)
            .into_owned();
    assert!(!on_feature.contains("release"), "{on_feature}");
    let nightly =
        String::from_utf8_lossy(&in_dir(&dir, &["plan", "--var", "FORCE_NIGHTLY=1"]).stdout)
            .into_owned();
    assert!(nightly.contains("nightly"), "{nightly}");
    let scheduled = String::from_utf8_lossy(
        &in_dir(&dir, &["plan", "--source", "schedule", "--var", "SKIP=1"]).stdout,
    )
    .into_owned();
    assert!(!scheduled.contains("nightly"), "{scheduled}");
}

#[test]
fn lint_reports_positioned_errors_and_fails() {
    let dir = corpus("error-unknown-keywords-and-types");
    let out = in_dir(&dir, &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".gitlab-ci.yml:4:3: error: jobs:build config contains unknown keys: scirpt\n  hint: did you mean `script`?"), "{err}");
    assert!(err.contains("errors, 0 warnings"), "{err}");

    let out = in_dir(&dir, &["lint", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["errors"].as_u64().unwrap() >= 10);
    assert_eq!(v["diagnostics"][0]["span"]["line"], 3);
    assert_eq!(v["diagnostics"][0]["severity"], "error");

    // plan refuses to plan a broken file, pointing at lint.
    let out = in_dir(&dir, &["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fix them to get a plan"));

    // A clean file lints clean.
    let out = in_dir(&corpus("seed-gitlab-buildx"), &["lint"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".gitlab-ci.yml: ok"));
}

#[test]
fn missing_pipeline_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = in_dir(dir.path(), &["plan"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no pipeline file here") && err.contains(".gitlab-ci.yml"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["lint", "/nonexistent/ci.yml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/ci.yml"));
}

/// A tiny HTTP server for remote includes: fixed answers by path, a count of requests.
struct FileServer {
    addr: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    fn start(files: &[(&str, &str)]) -> FileServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, b)| (p.to_string(), b.to_string()))
            .collect();
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                h.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                let mut stream = stream;
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, b)) => ("200 OK", b.clone()),
                    None => ("404 Not Found", "not found".to_owned()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FileServer { addr, hits, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn remote_includes_are_fetched_cached_and_read_offline() {
    let server = FileServer::start(&[
        (
            "/ci/shared.yml",
            "spec:\n  inputs:\n    arch:\n---\nremote-build:\n  tags: [\"$[[ inputs.arch ]]\"]\n  script: [make]\n",
        ),
        ("/ci/other.yml", "other:\n  script: [true]\n"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let ci = format!(
        "include:\n  - remote: {}\n    inputs:\n      arch: arm64\n",
        server.url("/ci/shared.yml")
    );
    std::fs::write(dir.path().join(".gitlab-ci.yml"), &ci).unwrap();
    let cache_arg = cache.to_str().unwrap();

    let out = in_dir(dir.path(), &["plan", "--include-cache", cache_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("remote-build  [linux/arm64]  tags: arm64"),
        "{text}"
    );
    assert_eq!(server.hits(), 1);
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one cached file"
    );

    // Offline: from the cache, no request.
    drop(server);
    let out = in_dir(
        dir.path(),
        &["plan", "--offline", "--include-cache", cache_arg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("remote-build"));

    // Offline and never fetched: a positioned error that says how to fill the cache.
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        "include:\n  - remote: https://ci.example.invalid/never.yml\njob:\n  script: [x]\n",
    )
    .unwrap();
    let out = in_dir(
        dir.path(),
        &["lint", "--offline", "--include-cache", cache_arg],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".gitlab-ci.yml:2:13: error: Remote file `https://ci.example.invalid/never.yml` is not in the include cache")
            && err.contains("run once without --offline"),
        "{err}"
    );
}

#[test]
fn remote_include_errors_are_gitlabs() {
    let server = FileServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        format!(
            "include:\n  - {}\njob:\n  script: [x]\n",
            server.url("/missing.yml")
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let out = in_dir(
        dir.path(),
        &["lint", "--include-cache", cache.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "error: Remote file `{}` could not be fetched because of HTTP code `404` error!",
            server.url("/missing.yml")
        )),
        "{err}"
    );

    // Nothing listens: the connection error, as GitLab words it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        format!("include:\n  - remote: http://127.0.0.1:{port}/x.yml\njob:\n  script: [x]\n"),
    )
    .unwrap();
    let out = in_dir(
        dir.path(),
        &["lint", "--include-cache", cache.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: Remote file could not be fetched because "),
        "{err}"
    );
}

#[test]
fn templates_come_from_the_templates_directory() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(templates.join("Jobs")).unwrap();
    std::fs::write(
        templates.join("Jobs/Build.gitlab-ci.yml"),
        "template-build:\n  stage: build\n  script: [make]\n",
    )
    .unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join(".gitlab-ci.yml"),
        "include:\n  - template: Jobs/Build.gitlab-ci.yml\n",
    )
    .unwrap();
    let out = in_dir(&repo, &["plan", "--templates", templates.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("template-build"));

    let out = in_dir(&repo, &["lint"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Included file `Jobs/Build.gitlab-ci.yml` is empty or does not exist!")
            && err.contains("pass --templates DIR"),
        "{err}"
    );
}

#[test]
fn plan_shows_child_pipelines_in_every_format_and_takes_inputs() {
    let dir = corpus("trigger-child");
    let out = in_dir(&dir, &["plan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("frontend  trigger: child pipeline ci/frontend.yml (strategy: depend)")
            && text.contains("    child pipeline ci/frontend.yml\n")
            && text.contains("        child pipeline ci/grandchild.yml"),
        "{text}"
    );

    let out = in_dir(&dir, &["plan", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let frontend = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "frontend")
        .unwrap();
    assert_eq!(frontend["trigger"]["kind"], "child");
    assert_eq!(frontend["trigger"]["strategy"], "depend");
    assert_eq!(
        frontend["trigger"]["pipeline"]["context"]["source"],
        "parent_pipeline"
    );
    assert_eq!(frontend["trigger"]["pipeline"]["jobs"][0]["name"], "unit");

    let out = in_dir(&dir, &["plan", "--format", "mermaid"]);
    let mermaid = String::from_utf8_lossy(&out.stdout);
    assert!(
        mermaid.contains("subgraph t_frontend[\"child pipeline ci/frontend.yml\"]")
            && mermaid.contains("j_frontend -.-> t_frontend")
            && mermaid.contains("t_frontend_j_unit"),
        "{mermaid}"
    );

    let dynamic = in_dir(&corpus("trigger-dynamic"), &["plan"]);
    assert!(
        String::from_utf8_lossy(&dynamic.stdout).contains("child pipeline not planned: dynamic"),
        "{}",
        String::from_utf8_lossy(&dynamic.stdout)
    );

    // Pipeline inputs: JSON when it parses, text otherwise.
    let dir = corpus("inputs-pipeline");
    let out = in_dir(
        &dir,
        &[
            "plan",
            "--input",
            "level=7",
            "--input",
            "name=weekly",
            "--input",
            "deploy=false",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weekly build (level 7)"), "{text}");
    assert!(!text.contains("deploy"), "{text}");
    let out = in_dir(&dir, &["plan", "--input", "deploy=\"true\""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`deploy` input: provided value is not a boolean"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pipeline_run_refuses_jobs_the_server_cannot_run_and_says_why() {
    let run = |case: &str| {
        let out = archway()
            .current_dir(corpus(case))
            .args([
                "pipeline",
                "run",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "x",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A dynamic child pipeline is not refused any more (the coordinator plans it): this run
    // fails only because no server listens at 127.0.0.1:9.
    let err = run("trigger-dynamic");
    assert!(
        !err.contains("dynamic child pipeline") && !err.contains("nothing was submitted"),
        "{err}"
    );
    let err = run("trigger-multi-project");
    assert!(
        err.contains("job `docs` triggers a pipeline of project `group/docs`")
            && err.contains("job `deploy` needs job `render` of project `group/config`")
            && err.contains(
                "job `mirror-upstream` mirrors the upstream pipeline of project `group/upstream`"
            )
            && err.contains("the server cannot run these jobs, so nothing was submitted"),
        "{err}"
    );
}
