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
    assert!(err.contains(".gitlab-ci.yml:4:3: error: unknown keyword `scirpt` in job `build`\n  hint: did you mean `script`?"), "{err}");
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
