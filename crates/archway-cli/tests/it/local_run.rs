//! `archway pipeline run` with no server: the coordinator, the registry and one runner per
//! platform in one process, state under `.archway/`. Job images come through a registry
//! mirror (`--registry-mirror docker.io=HOST/hub`), as an offline team serves them: a real
//! `archway registry serve` holding the two-platform busybox fixture.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::{RegistryProcess, UserEnv, busybox_layout, run};

/// A registry with `hub/library/busybox:1.35` (amd64 + arm64).
pub(crate) fn mirror() -> RegistryProcess {
    let reg = RegistryProcess::start();
    run(UserEnv::new().archway().args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("{}/hub/library/busybox:1.35", reg.host()),
    ]));
    reg
}

/// A git repository holding `files`, committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.email=ci@example.com", "-c", "user.name=CI"])
            .args(args));
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

/// `archway pipeline run ARGS` in `dir` with a private HOME (so no saved server login) and
/// no server in the environment.
pub(crate) fn local_run(env: &UserEnv, dir: &Path, reg: &RegistryProcess, args: &[&str]) -> Output {
    env.archway()
        .current_dir(dir)
        .env_remove("ARCHWAY_SERVER")
        .env_remove("ARCHWAY_TOKEN")
        .args(["pipeline", "run", "--registry-mirror"])
        .arg(format!("docker.io={}/hub", reg.host()))
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MULTIARCH: &str = r#"
stages: [build, test]
default:
  image: busybox:1.35
build:
  stage: build
  parallel:
    matrix:
      - ARCH: [amd64, arm64]
  tags: [$ARCH]
  script:
    - echo "built on $(uname -m) emulated=$ARCHWAY_EMULATED"
    - test "$ARCHWAY_PLATFORM" = "linux/$ARCH"
    - test "$CI_NODE_TOTAL" = 2 && test -n "$CI_NODE_INDEX"
    - test "$CI_PIPELINE_SOURCE" = push && test "$CI_DEFAULT_BRANCH" = main
    - test -n "$CI_COMMIT_TIMESTAMP"
    - if [ "$ARCH" = arm64 ]; then test "$(uname -m)" = aarch64; else test "$(uname -m)" = x86_64; fi
test:
  stage: test
  script:
    - cat app.txt
    - test -n "$CI_REGISTRY"
    - test "$CI_REGISTRY_IMAGE" = "$CI_REGISTRY/team/app"
"#;

#[test]
fn a_local_run_routes_each_job_by_its_tags_with_no_server() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", MULTIARCH), ("app.txt", "the app\n")]);
    // The working tree runs, uncommitted changes included.
    fs::write(r.path().join("app.txt"), "the app, edited\n").unwrap();
    let out = local_run(&env, r.path(), &reg, &["--project", "team/app"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("local run: state in"), "{stderr}");
    assert!(
        stderr.contains("runners for linux/amd64, linux/arm64 (emulated with qemu)"),
        "{stderr}"
    );
    // A live line per state change, then the table.
    assert!(
        stderr.contains("running on local-arm64 (linux/arm64, emulated)"),
        "{stderr}"
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_owned()
    };
    assert!(row("build: [arm64]").contains("local-arm64 (linux/arm64, emulated)"));
    assert!(row("build: [arm64]").ends_with("success"), "{stdout}");
    assert!(row("build: [amd64]").contains("local-amd64 (linux/amd64)"));
    assert!(row("test ").contains("local-amd64 (linux/amd64)"));
    assert!(stdout.contains("pipeline 1 success"), "{stdout}");
    // The state stays under .archway/, which git ignores.
    let state = r.path().join(".archway");
    assert!(state.join("coordinator.db").is_file());
    assert!(state.join("registry").is_dir());
    let status = run(Command::new("git")
        .arg("-C")
        .arg(r.path())
        .args(["status", "--porcelain"]));
    assert_eq!(status.trim(), "M app.txt", "{status}");

    // Again: the same state, the next pipeline number; --job takes one job (no needs here).
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &["--project", "team/app", "--job", "test"],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 2 success"), "{stdout}");
    assert!(!stdout.contains("build: ["), "{stdout}");

    // --platform linux/amd64 leaves the arm64 job out, and says so.
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &["--project", "team/app", "--platform", "linux/amd64"],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("left out (not for linux/amd64): build: [arm64]"),
        "{stderr}"
    );
    assert!(stdout.contains("build: [amd64]") && !stdout.contains("build: [arm64]"));
}

const NEEDS: &str = r#"
compile:
  image: busybox:1.35
  script: [echo compiled]
lint:
  image: busybox:1.35
  script: [echo linted]
package:
  image: busybox:1.35
  needs: [compile]
  script: [echo packaged]
"#;

#[test]
fn job_selects_a_job_with_what_it_needs_and_unknown_names_are_refused() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", NEEDS)]);
    let out = local_run(&env, r.path(), &reg, &["--job", "package"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("compile ")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("package ")),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("lint ")), "{stdout}");

    let out = local_run(&env, r.path(), &reg, &["--job", "deploy"]);
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "--job deploy: the pipeline has no such job (its jobs: compile, lint, package)"
        ),
        "{stderr}"
    );
}

const FAILING: &str = r#"
oom:
  image: busybox:1.35
  script:
    - echo "about to be killed"
    - exit 137
  after_script:
    - echo "after_script saw $CI_JOB_STATUS"
    - exit 5
no-image:
  image: nosuch/image:1
  script: [echo never]
fine:
  image: busybox:1.35
  script: [echo fine]
"#;

#[test]
fn a_failed_local_run_exits_nonzero_and_shows_the_failed_jobs_log_tails() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", FAILING)]);
    let out = local_run(&env, r.path(), &reg, &[]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 1 failed"), "{stdout}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_owned()
    };
    assert!(row("oom ").ends_with("failed: script_failure"), "{stdout}");
    assert!(
        row("no-image ").ends_with("failed: image_pull_failure"),
        "{stdout}"
    );
    assert!(row("fine ").ends_with("success"), "{stdout}");
    assert!(stderr.contains("--- log tail of oom"), "{stderr}");
    assert!(stderr.contains("about to be killed"), "{stderr}");
    assert!(stderr.contains("exit code 137"), "{stderr}");
    // after_script ran in its own shell, knew the job failed, and its own failure is noted
    // without changing the job's exit code.
    assert!(stderr.contains("after_script saw failed"), "{stderr}");
    assert!(
        stderr.contains("after_script failed (Code(5)); this does not fail the job"),
        "{stderr}"
    );
    assert!(stderr.contains("--- log tail of no-image"), "{stderr}");
    assert!(stderr.contains("manifest not found"), "{stderr}");
}

#[test]
fn a_pipeline_lint_rejects_is_refused_before_anything_runs() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(
        ".gitlab-ci.yml",
        "job:\n  image: busybox:1.35\n  stage: nope\n  script: [echo]\n",
    )]);
    let out = local_run(&env, r.path(), &reg, &[]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(".gitlab-ci.yml:3:10: error: job job: chosen stage does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert!(!r.path().join(".archway").exists());

    // A malformed mirror is refused by the argument parser, with the expected form.
    let out = local_run(&env, r.path(), &reg, &["--registry-mirror", "docker.io"]);
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REGISTRY=HOST[/PREFIX]"), "{stderr}");
}

const ARTIFACTS: &str = r#"
stages: [build, test]
build:
  stage: build
  image: busybox:1.35
  script:
    - mkdir -p out/lib
    - echo bin > out/app
    - echo obj > out/lib/x.o
    - echo so > out/lib/x.so
    - echo "VERSION=1.2.3" > build.env
  artifacts:
    paths: [out/]
    exclude: ["out/**/*.o"]
    reports:
      dotenv: build.env
test:
  stage: test
  image: busybox:1.35
  script:
    - test "$(cat out/app)" = bin
    - test -f out/lib/x.so
    - test ! -e out/lib/x.o
    - test "$VERSION" = 1.2.3
isolated:
  stage: test
  image: busybox:1.35
  dependencies: []
  script:
    - test ! -e out/app
    - test -z "$VERSION"
"#;

const BAD_ARTIFACTS: &str = r#"
bad:
  image: busybox:1.35
  script:
    - echo secret > ../outside.txt
    - echo "not dotenv" > bad.env
    - echo kept > kept.txt
  artifacts:
    paths: [../outside.txt, /etc/passwd, kept.txt]
    reports:
      dotenv: bad.env
"#;

#[test]
fn artifacts_and_dotenv_variables_pass_to_later_jobs() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", ARTIFACTS)]);
    let out = local_run(&env, r.path(), &reg, &[]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pipeline 1 success"), "{stdout}");

    // Paths outside the project are refused (a warning in the log, as gitlab-runner does),
    // and a report that is not dotenv fails the job, saying where.
    fs::write(r.path().join(".gitlab-ci.yml"), BAD_ARTIFACTS).unwrap();
    let out = local_run(&env, r.path(), &reg, &[]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "WARNING: artifacts:paths `../outside.txt`: outside the project directory; ignored"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("WARNING: artifacts:paths `/etc/passwd`: outside the project directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the dotenv report is invalid: bad.env:1: not KEY=VALUE"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("bad ") && l.ends_with("failed: script_failure")),
        "{stdout}"
    );
}

const CACHED: &str = r#"
deps:
  image: busybox:1.35
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.deps/]
  script:
    - if [ -f .deps/made ]; then got=hit; else got=miss; mkdir -p .deps; echo "$CI_PIPELINE_ID" > .deps/made; fi
    - echo "cache $got"
    - test "$got" = "$EXPECT"
readonly:
  image: busybox:1.35
  cache:
    key: other
    paths: [.other/]
    policy: pull
  script:
    - test ! -e .other/x
    - mkdir -p .other && touch .other/x
"#;

#[test]
fn caches_are_restored_by_the_next_run_and_bad_keys_are_refused_before_running() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", CACHED)]);
    for expect in ["miss", "hit", "hit"] {
        let out = local_run(
            &env,
            r.path(),
            &reg,
            &["--var", &format!("EXPECT={expect}")],
        );
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "expected a cache {expect}:\n{stdout}\n{stderr}"
        );
    }
    // A new branch has no cache of its own yet: its first run restores the default branch's
    // through `fallback_keys` (and says so), then keeps its own.
    fs::write(
        r.path().join(".gitlab-ci.yml"),
        CACHED.replace(
            "    paths: [.deps/]\n",
            "    paths: [.deps/]\n    fallback_keys: [deps-$CI_DEFAULT_BRANCH]\n",
        ),
    )
    .unwrap();
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &["--branch", "feature", "--var", "EXPECT=hit"],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    fs::write(
        r.path().join(".gitlab-ci.yml"),
        "bad:\n  image: busybox:1.35\n  cache:\n    key: ../escape\n    paths: [x]\n  script:\n    - exit 3\n",
    )
    .unwrap();
    // GitLab refuses the key when it reads the file; so does `archway lint`, before anything
    // runs (the runner checks keys again, for values only known at run time).
    let out = local_run(&env, r.path(), &reg, &[]);
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            ".gitlab-ci.yml:4:10: error: jobs:bad:cache:key config cannot contain the \"/\" character"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was run"), "{stderr}");
}

const JUNIT: &str = r#"
unit:
  image: busybox:1.35
  script:
    - |
      cat > report.xml <<'XML'
      <testsuites><testsuite name="api">
      <testcase classname="api.arch" name="reports_the_machine"/>
      <testcase classname="api.arch" name="runs_on_arm64"><failure message="expected aarch64, got x86_64"/></testcase>
      <testcase classname="api.db" name="later"><skipped/></testcase>
      </testsuite></testsuites>
      XML
    - exit 1
  artifacts:
    when: always
    reports:
      junit: report.xml
"#;

#[test]
fn junit_reports_are_summarised_in_the_pipeline_table_even_when_the_job_fails() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(".gitlab-ci.yml", JUNIT)]);
    let out = local_run(&env, r.path(), &reg, &[]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "tests: 3 total, 1 passed, 1 failed, 0 errors, 1 skipped (from 1 jobs' JUnit reports)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAILED unit › api.arch › runs_on_arm64: expected aarch64, got x86_64"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Test report: 3 tests, 1 passed, 1 failed, 0 errors, 1 skipped"),
        "{stderr}"
    );
}

#[test]
fn file_variables_reach_jobs_as_paths_to_their_values() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[(
        ".gitlab-ci.yml",
        r#"
show:
  image: busybox:1.35
  script:
    - echo "KUBECONFIG is $KUBECONFIG"
    - test "$KUBECONFIG" = "$CI_PROJECT_DIR.tmp/KUBECONFIG"
    - grep -q "https://k8s.example" "$KUBECONFIG"
    - test "$(cat "$GREETING")" = hello
    - test "$PLAIN" = plain
"#,
    )]);
    let kube = r.path().join("kubeconfig.yaml");
    fs::write(
        &kube,
        "clusters:\n- cluster:\n    server: https://k8s.example\n",
    )
    .unwrap();
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &[
            "--project",
            "team/app",
            "--file-var",
            &format!("KUBECONFIG=@{}", kube.display()),
            "--var",
            "GREETING=hello",
            "--file-var",
            "GREETING",
            "--var",
            "PLAIN=plain",
        ],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // A file that cannot be read is refused before anything runs, naming it.
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &["--file-var", "KUBECONFIG=@/nonexistent/kubeconfig"],
    );
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--file-var KUBECONFIG: reading /nonexistent/kubeconfig"),
        "{stderr}"
    );
}

const DYNAMIC: &str = r#"
stages: [generate, child]
generate:
  image: busybox:1.35
  stage: generate
  script:
    - |
      cat > generated.yml <<'YAML'
      include: ci/common.yml
      child-job:
        image: busybox:1.35
        script: ['test "$COMMON" = shared-value', 'test "$PARENT_ID" = 1']
      YAML
  artifacts:
    paths: [generated.yml]
run-child:
  stage: child
  variables:
    PARENT_ID: $CI_PIPELINE_ID
  trigger:
    include:
      - artifact: generated.yml
        job: generate
    strategy: depend
"#;

#[test]
fn a_dynamic_child_pipeline_is_planned_from_the_generating_jobs_artifact() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo(&[
        (".gitlab-ci.yml", DYNAMIC),
        // The generated file's own `include:` reads the repository at the parent's commit.
        ("ci/common.yml", "variables:\n  COMMON: shared-value\n"),
    ]);
    // The child's job checks what reached it: the parent's id through the trigger's
    // variables, and a variable of the file its generated configuration includes.
    let out = local_run(&env, r.path(), &reg, &["--project", "team/app"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("child pipeline 2"), "{stdout}");
    assert!(stdout.contains("pipeline 1 success"), "{stdout}");

    // A generated file that does not parse fails the trigger job, saying where.
    fs::write(
        r.path().join(".gitlab-ci.yml"),
        DYNAMIC.replace(
            "include: ci/common.yml",
            "bad-job:\n        stage: nope\n        script: [x]",
        ),
    )
    .unwrap();
    let out = local_run(&env, r.path(), &reg, &["--project", "team/app"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("the dynamic child pipeline could not be planned"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("generated.yml:2:"), "{stdout}");
}
