//! Real clients against the registry: skopeo, podman, buildah, docker (CLI and daemon).
//! `.ci/run` installs them from Debian's packages.

use std::path::Path;
use std::process::Command;

use archway_oci::layout::ImageLayout;

use crate::support::{
    Backend, Dockerd, RegistryProcess, busybox_layout, containers_tool, require, run,
};

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

fn htpasswd_file(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("users.htpasswd");
    let hash = bcrypt::hash(password, 5).unwrap();
    std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
    path
}

fn skopeo_copy_all_round_trip_keeps_digests(backend: Backend) {
    if !require("skopeo") {
        return;
    }
    let reg = RegistryProcess::start_on(&backend, &[]);
    let src = format!("oci:{}:1.35", busybox_layout().display());
    let dst = format!("docker://{}/library/busybox:1.35", reg.host());
    run(skopeo().args(["copy", "--all", "--dest-tls-verify=false", &src, &dst]));

    let layout = ImageLayout::open(busybox_layout()).unwrap();
    let top = layout.resolve(Some("1.35")).unwrap();
    let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false", &dst]));
    assert_eq!(raw.as_bytes(), layout.read_blob(&top.digest).unwrap());

    let out = tempfile::tempdir().unwrap();
    let back = format!("oci:{}:1.35", out.path().display());
    run(skopeo().args(["copy", "--all", "--src-tls-verify=false", &dst, &back]));
    let copied = ImageLayout::open(out.path()).unwrap();
    assert_eq!(copied.resolve(Some("1.35")).unwrap().digest, top.digest);
    // Every blob of the original is in the copy, byte for byte.
    for entry in std::fs::read_dir(busybox_layout().join("blobs/sha256")).unwrap() {
        let name = entry.unwrap().file_name();
        let original = std::fs::read(busybox_layout().join("blobs/sha256").join(&name)).unwrap();
        let copy = std::fs::read(out.path().join("blobs/sha256").join(&name)).unwrap();
        assert_eq!(original, copy, "{name:?}");
    }
    // Tags as skopeo lists them.
    let tags = run(skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/library/busybox", reg.host()),
    ]));
    assert!(tags.contains("\"1.35\""), "{tags}");
}

fn skopeo_with_token_auth_and_cross_repository_mount(backend: Backend) {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd_file(dir.path(), "alice", "s3cret");
    let reg = RegistryProcess::start_on(&backend, &["--htpasswd", users.to_str().unwrap()]);
    let src = format!("oci:{}:1.35", busybox_layout().display());
    let dst = format!("docker://{}/team/busybox:1.35", reg.host());
    // Without credentials: refused.
    let out = skopeo()
        .args(["copy", "--all", "--dest-tls-verify=false", &src, &dst])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // With them: accepted; then a copy to another repository mounts blobs (one token, two
    // repository scopes).
    run(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &src,
        &dst,
    ]));
    let dst2 = format!("docker://{}/other/busybox:1.35", reg.host());
    run(skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        "alice:s3cret",
        "--dest-creds",
        "alice:s3cret",
        &dst,
        &dst2,
    ]));
    let log = reg.log_text();
    assert!(
        log.contains("mount=sha256"),
        "no cross-repository mount in the access log"
    );
    let raw = run(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret",
        &dst2,
    ]));
    assert!(raw.contains("\"architecture\":\"arm64\""), "{raw}");
}

fn podman_push_pull_and_manifest_push_all(backend: Backend) {
    if !require("podman") || !require("skopeo") {
        return;
    }
    let reg = RegistryProcess::start_on(&backend, &[]);
    let dir = tempfile::tempdir().unwrap();
    let host = reg.host();
    run(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("docker://{host}/library/busybox:1.35"),
    ]));
    // podman 4.3's `manifest inspect` has no --tls-verify; mark the registry insecure instead.
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
    )
    .unwrap();
    let podman = || {
        let mut c = containers_tool("podman", dir.path());
        c.env("CONTAINERS_REGISTRIES_CONF", &conf);
        c
    };
    run(podman().args([
        "pull",
        "--tls-verify=false",
        &format!("{host}/library/busybox:1.35"),
    ]));
    run(podman().args([
        "tag",
        &format!("{host}/library/busybox:1.35"),
        &format!("{host}/podman/busybox:v1"),
    ]));
    run(podman().args([
        "push",
        "--tls-verify=false",
        &format!("{host}/podman/busybox:v1"),
    ]));
    run(podman().args(["rmi", &format!("{host}/podman/busybox:v1")]));
    run(podman().args([
        "pull",
        "--tls-verify=false",
        &format!("{host}/podman/busybox:v1"),
    ]));

    run(podman().args(["manifest", "create", "localhost/bblist"]));
    run(podman().args([
        "manifest",
        "add",
        "--all",
        "--tls-verify=false",
        "localhost/bblist",
        &format!("docker://{host}/library/busybox:1.35"),
    ]));
    run(podman().args([
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "localhost/bblist",
        &format!("docker://{host}/podman/list:v1"),
    ]));
    let inspect = run(podman().args(["manifest", "inspect", &format!("{host}/podman/list:v1")]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let arches: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
}

fn buildah_push_pull_and_manifest_push_all(backend: Backend) {
    if !require("buildah") || !require("skopeo") {
        return;
    }
    let reg = RegistryProcess::start_on(&backend, &[]);
    let dir = tempfile::tempdir().unwrap();
    let host = reg.host();
    run(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("docker://{host}/library/busybox:1.35"),
    ]));
    let buildah = || containers_tool("buildah", dir.path());
    run(buildah().args([
        "pull",
        "--tls-verify=false",
        &format!("{host}/library/busybox:1.35"),
    ]));
    run(buildah().args([
        "push",
        "--tls-verify=false",
        &format!("{host}/library/busybox:1.35"),
        &format!("docker://{host}/buildah/busybox:v1"),
    ]));
    run(buildah().args(["manifest", "create", "bblist"]));
    run(buildah().args([
        "manifest",
        "add",
        "--all",
        "--tls-verify=false",
        "bblist",
        &format!("docker://{host}/library/busybox:1.35"),
    ]));
    run(buildah().args([
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "bblist",
        &format!("docker://{host}/buildah/list:v1"),
    ]));
    let raw = run(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/buildah/list:v1"),
    ]));
    assert!(
        raw.contains("\"arm64\"") && raw.contains("\"amd64\""),
        "{raw}"
    );
    // And the per-platform images really are there.
    run(skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{host}/buildah/list:v1"),
    ]));
}

fn docker_manifest_inspect_without_a_daemon(backend: Backend) {
    if !require("docker") || !require("skopeo") {
        return;
    }
    let reg = RegistryProcess::start_on(&backend, &[]);
    let host = reg.host();
    run(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("docker://{host}/library/busybox:1.35"),
    ]));
    let cfg = tempfile::tempdir().unwrap();
    let out = run(Command::new("docker")
        .env("DOCKER_CONFIG", cfg.path())
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .args([
            "manifest",
            "inspect",
            "--insecure",
            &format!("{host}/library/busybox:1.35"),
        ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let verbose = run(Command::new("docker")
        .env("DOCKER_CONFIG", cfg.path())
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .args([
            "manifest",
            "inspect",
            "--insecure",
            "-v",
            &format!("{host}/library/busybox:1.35"),
        ]));
    assert!(verbose.contains("\"arm64\""), "{verbose}");
}

fn docker_login_push_and_pull_through_dockerd(backend: Backend) {
    if !require("skopeo") {
        return;
    }
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd_file(dir.path(), "alice", "s3cret");
    let reg = RegistryProcess::start_on(&backend, &["--htpasswd", users.to_str().unwrap()]);
    let host = reg.host();
    run(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("docker://{host}/library/busybox:1.35"),
    ]));

    let out = dockerd
        .docker()
        .args(["login", host, "-u", "alice", "-p", "wrong"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "login with a wrong password succeeded"
    );
    let out = dockerd
        .docker()
        .args(["pull", &format!("{host}/library/busybox:1.35")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "anonymous pull succeeded");

    let login = run(dockerd
        .docker()
        .args(["login", host, "-u", "alice", "-p", "s3cret"]));
    assert!(login.contains("Login Succeeded"), "{login}");
    run(dockerd
        .docker()
        .args(["pull", &format!("{host}/library/busybox:1.35")]));
    run(dockerd.docker().args([
        "tag",
        &format!("{host}/library/busybox:1.35"),
        &format!("{host}/docker/busybox:v1"),
    ]));
    let push = run(dockerd
        .docker()
        .args(["push", &format!("{host}/docker/busybox:v1")]));
    assert!(push.contains("digest: sha256:"), "{push}");
    run(dockerd
        .docker()
        .args(["rmi", &format!("{host}/docker/busybox:v1")]));
    run(dockerd
        .docker()
        .args(["pull", &format!("{host}/docker/busybox:v1")]));
    let out = run(dockerd.docker().args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        &format!("{host}/docker/busybox:v1"),
    ]));
    // dockerd pulls the image for its own architecture.
    assert_eq!(out.trim(), archway_oci::Platform::host().architecture);
}

on_each_backend!(
    skopeo_copy_all_round_trip_keeps_digests,
    skopeo_with_token_auth_and_cross_repository_mount,
    podman_push_pull_and_manifest_push_all,
    buildah_push_pull_and_manifest_push_all,
    docker_manifest_inspect_without_a_daemon,
    docker_login_push_and_pull_through_dockerd,
);
