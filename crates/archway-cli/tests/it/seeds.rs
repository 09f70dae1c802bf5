//! The seed pipelines end to end, offline: each pipeline in `testdata/seeds/pipelines/` (the
//! articles' `.gitlab-ci.yml` files and CodeCatalyst workflow, command for command; the lines
//! that differ say why in the files) runs with `archway pipeline run` — Kaniko, docker buildx
//! with a dind service, podman manifests, docker manifests, manifest-tool, all served by the
//! runners' toolbox — then `verify.yml` checks the registry holds a two-platform index whose
//! arm64 image runs on the arm64 runner and reports `aarch64`. Base images come through a
//! registry mirror, as an air-gapped team serves them.
//!
//! Also the toolbox's and services' refusals: a build context outside the project, a docker
//! command it does not serve, a service image that does not exist.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::local_run::{local_run, mirror, texts};
use crate::support::{RegistryProcess, UserEnv, run};

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/seeds/pipelines")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A git repository with the seed `name` and the application at `app_at` (if any).
fn repo(name: &str, app_at: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&seeds().join(name), dir.path());
    if let Some(at) = app_at {
        copy_dir(&seeds().join("app"), &dir.path().join(at));
    }
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.email=ci@example.com", "-c", "user.name=CI"])
            .args(args));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "seed pipeline"]);
    dir
}

fn short_sha(dir: &Path) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short=8", "HEAD"]))
    .trim()
    .to_owned()
}

/// Runs `verify.yml` in `dir` for `${CI_REGISTRY_IMAGE}${suffix}`: the index has amd64 and
/// arm64, and each runs on its runner (arm64 reporting aarch64).
fn verify(env: &UserEnv, dir: &Path, reg: &RegistryProcess, project: &str, suffix: &str) {
    fs::copy(seeds().join("verify.yml"), dir.join("verify.yml")).unwrap();
    let out = local_run(
        env,
        dir,
        reg,
        &[
            "verify.yml",
            "--project",
            project,
            "--var",
            &format!("SUFFIX={suffix}"),
        ],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "verify:\n{stdout}\n{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_owned()
    };
    assert!(row("run: [arm64]").contains("local-arm64 (linux/arm64, emulated)"));
    assert!(row("run: [arm64]").ends_with("success"), "{stdout}");
    assert!(row("run: [amd64]").ends_with("success"), "{stdout}");
}

fn assert_success(out: &Output) -> (String, String) {
    let (stdout, stderr) = texts(out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("success"), "{stdout}");
    (stdout, stderr)
}

#[test]
fn the_kaniko_eks_seed_builds_tests_on_each_arch_and_assembles_with_podman() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo("kaniko-eks", Some("."));
    let out = local_run(&env, r.path(), &reg, &["--project", "seeds/kaniko"]);
    let (stdout, _) = assert_success(&out);
    for row in [
        "build-job: [amd64]",
        "build-job: [arm64]",
        "test-job: [amd64]",
        "test-job: [arm64]",
        "create-manifest-job",
    ] {
        let line = stdout.lines().find(|l| l.starts_with(row)).unwrap();
        assert!(line.ends_with("success"), "{stdout}");
        if row.contains("arm64") || row == "create-manifest-job" {
            assert!(line.contains("local-arm64"), "{line}");
        }
    }
    verify(
        &env,
        r.path(),
        &reg,
        "seeds/kaniko",
        &format!(":{}", short_sha(r.path())),
    );
}

#[test]
fn the_buildx_dind_seed_builds_both_platforms_without_a_daemon() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo("buildx-dind", Some("resources/python-code"));
    let out = local_run(&env, r.path(), &reg, &["--project", "seeds/buildx"]);
    assert_success(&out);
    verify(&env, r.path(), &reg, "seeds/buildx", "");
}

#[test]
fn the_runner_tag_migration_seed_routes_by_its_variables() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo("runner-tags", Some("."));
    let out = local_run(
        &env,
        r.path(),
        &reg,
        &[
            "--project",
            "seeds/tags",
            "--var",
            "CICD_TAG_AMD64=redacted-sandbox-amd64",
            "--var",
            "CICD_TAG_ARM64=redacted-sandbox-arm64",
        ],
    );
    let (stdout, _) = assert_success(&out);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(line("build_arm64").contains("local-arm64"), "{stdout}");
    assert!(line("build_amd64").contains("local-amd64"), "{stdout}");
    assert!(line("existing_job").contains("local-amd64"), "{stdout}");
    verify(
        &env,
        r.path(),
        &reg,
        "seeds/tags",
        &format!(":{}", short_sha(r.path())),
    );
}

#[test]
fn the_codecatalyst_seed_builds_per_fleet_and_assembles_with_docker_manifest() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = repo("codecatalyst", None);
    let out = local_run(&env, r.path(), &reg, &["--project", "seeds/cc"]);
    let (stdout, _) = assert_success(&out);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(
        line("docker_build_arm64").contains("local-arm64"),
        "{stdout}"
    );
    assert!(line("docker_manifest").ends_with("success"), "{stdout}");
    verify(&env, r.path(), &reg, "seeds/cc", "/hello-world");
}

/// A one-job pipeline in a fresh repository.
fn one_job(yaml: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".gitlab-ci.yml"), yaml).unwrap();
    for (p, text) in files {
        let p = dir.path().join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    run(Command::new("git")
        .arg("-C")
        .arg(dir.path())
        .args(["init", "-q", "-b", "main"]));
    dir
}

fn log_tail(stderr: &str) -> &str {
    stderr.split("--- log tail").nth(1).unwrap_or(stderr)
}

#[test]
fn the_toolbox_refuses_what_it_cannot_do_safely_and_says_why() {
    let reg = mirror();
    let env = UserEnv::new();
    // A context outside the project directory (the runner's host files) is refused, and a
    // symbolic link out of it too.
    let r = one_job(
        r#"
escape:
  image: gcr.io/kaniko-project/executor:debug
  script:
    - /kaniko/executor --context /etc --no-push
"#,
        &[],
    );
    let out = local_run(&env, r.path(), &reg, &["--project", "t/escape"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        log_tail(&stderr)
            .contains("/etc: the toolbox builds only from files under /builds/t/escape"),
        "{stderr}"
    );

    let r = one_job(
        r#"
link:
  image: docker:27
  script:
    - ln -s /etc hostetc
    - docker build hostetc
"#,
        &[],
    );
    let out = local_run(&env, r.path(), &reg, &["--project", "t/link"]);
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        log_tail(&stderr).contains("leads outside the project directory"),
        "{stderr}"
    );

    // A docker command the toolbox does not serve fails with the list of what it serves.
    let r = one_job(
        r#"
run:
  image: docker:27
  script:
    - docker run busybox echo hi
"#,
        &[],
    );
    let out = local_run(&env, r.path(), &reg, &["--project", "t/run"]);
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        log_tail(&stderr).contains("docker run is not served by Archway's toolbox"),
        "{stderr}"
    );
}

#[test]
fn services_run_beside_the_job_by_alias_and_a_missing_service_image_fails_the_job() {
    let reg = mirror();
    let env = UserEnv::new();
    let r = one_job(
        r#"
stages: [test]
web:
  image: busybox:1.35
  services:
    - name: busybox:1.35
      alias: web,www
      entrypoint: ["sh", "-c"]
      command: ["mkdir -p /w && echo $GREETING > /w/index.html && exec httpd -f -p 127.0.0.1:$PORT -h /w"]
      variables:
        GREETING: hello-from-the-service
  variables:
    PORT: "18931"
  script:
    - grep -w web /etc/hosts
    - for i in $(seq 1 50); do wget -qO- "http://web:$PORT/" > page && break; sleep 0.2; done
    - grep hello-from-the-service page
    - wget -qO- "http://www:$PORT/" | grep hello-from-the-service
    - wget -qO- "http://busybox:$PORT/" | grep hello-from-the-service
    - wget -qO- "http://localhost:$PORT/" | grep hello-from-the-service
"#,
        &[],
    );
    let out = local_run(&env, r.path(), &reg, &["--project", "t/svc"]);
    assert_success(&out);
    // The service stopped with the job: nothing listens on its port any more.
    assert!(std::net::TcpStream::connect("127.0.0.1:18931").is_err());

    let r = one_job(
        r#"
missing:
  image: busybox:1.35
  services: [127.0.0.1:9/no/such-image:1]
  script: [echo never]
"#,
        &[],
    );
    let out = local_run(&env, r.path(), &reg, &["--project", "t/missing"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(stdout.contains("image_pull_failure"), "{stdout}");
    assert!(
        log_tail(&stderr).contains("cannot pull the service image 127.0.0.1:9/no/such-image:1"),
        "{stderr}"
    );
    assert!(!log_tail(&stderr).contains("never\n"), "{stderr}");
}
