//! `archway manifest …`: lists that docker, skopeo and podman read, lists they write that
//! archway copies, the seed pipelines' assembly stages, and the refusals.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use archway_oci::{Descriptor, Digest, ImageManifest, media_type};

use crate::support::{
    Raw, RegistryProcess, UserEnv, busybox_digests, busybox_layout, push_busybox, require, run,
};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// Pushes the fixture's two platforms as separate single-platform tags `<tag>-amd64` and
/// `<tag>-arm64`, as the seeds' build stages do.
fn push_per_arch(env: &UserEnv, host: &str, repo: &str, tag: &str) {
    for arch in ["amd64", "arm64"] {
        env.ok(&[
            "image",
            "copy",
            "--quiet",
            "--platform",
            &format!("linux/{arch}"),
            &format!("oci:{}:1.35", busybox_layout().display()),
            &format!("{host}/{repo}:{tag}-{arch}"),
        ]);
    }
}

/// (platform, digest) pairs of an index document.
fn entries(v: &serde_json::Value) -> BTreeSet<(String, String)> {
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            (s, m["digest"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn expected_entries() -> BTreeSet<(String, String)> {
    busybox_digests().1.into_iter().collect()
}

fn podman(env: &UserEnv, dir: &Path, host: &str) -> Command {
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
    )
    .unwrap();
    let mut c = Command::new("podman");
    env.apply(&mut c);
    c.env_remove("DOCKER_CONFIG");
    c.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"])
        .env("CONTAINERS_REGISTRIES_CONF", &conf);
    c
}

#[test]
fn lists_built_by_archway_are_read_by_docker_skopeo_and_podman() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let host = reg.host();
    push_per_arch(&env, host, "app", "1.0");
    let list = format!("{host}/app:1.0");
    let out = env.ok(&[
        "manifest",
        "create",
        &list,
        &format!("{list}-amd64"),
        &format!("{list}-arm64"),
    ]);
    assert!(
        out.contains("linux/amd64") && out.contains("linux/arm64"),
        "{out}"
    );
    let local = json(&env.ok(&["manifest", "inspect", &list]));
    assert_eq!(entries(&local), expected_entries());
    assert_eq!(local["mediaType"], media_type::OCI_INDEX);
    let digest = env
        .ok(&["manifest", "push", "--quiet", &list])
        .trim()
        .to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // Archway's own view of the pushed list.
    let remote = json(&env.ok(&["manifest", "inspect", &list]));
    assert_eq!(entries(&remote), expected_entries());
    // skopeo: the exact bytes, whose digest is what push printed.
    if require("skopeo") {
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{list}"),
        ]));
        assert_eq!(
            Digest::sha256(raw.trim_end().as_bytes()).to_string(),
            digest
        );
        assert_eq!(entries(&json(&raw)), expected_entries());
    }
    // docker, daemonless.
    if require("docker") {
        let mut c = Command::new("docker");
        env.apply(&mut c);
        let v = json(&run(c
            .env("DOCKER_HOST", "unix:///nonexistent.sock")
            .args(["manifest", "inspect", "--insecure", &list])));
        assert_eq!(entries(&v), expected_entries());
    }
    // podman.
    if require("podman") {
        let dir = tempfile::tempdir().unwrap();
        let v = json(&run(
            podman(&env, dir.path(), host).args(["manifest", "inspect", &list])
        ));
        assert_eq!(entries(&v), expected_entries());
    }
    // --verbose shows each image's manifest.
    let v = json(&env.ok(&["manifest", "inspect", "--verbose", &list]));
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0]["OCIManifest"]["layers"].is_array(), "{v}");
}

#[test]
fn podman_manifest_push_all_is_copied_intact_by_archway() {
    if !require("podman") {
        return;
    }
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let host = reg.host();
    push_busybox(&env, host, "lib/busybox", "1.35");
    let dir = tempfile::tempdir().unwrap();
    run(podman(&env, dir.path(), host).args(["manifest", "create", "localhost/bblist"]));
    run(podman(&env, dir.path(), host).args([
        "manifest",
        "add",
        "--all",
        "localhost/bblist",
        &format!("docker://{host}/lib/busybox:1.35"),
    ]));
    run(podman(&env, dir.path(), host).args([
        "manifest",
        "push",
        "--all",
        "localhost/bblist",
        &format!("docker://{host}/podman/list:v1"),
    ]));
    let src = format!("{host}/podman/list:v1");
    let podman_digest =
        json(&env.ok(&["image", "inspect", "--format", "json", &src]))["digest"].clone();

    let report = json(&env.ok(&[
        "image",
        "copy",
        "--all",
        "--format",
        "json",
        &src,
        &format!("{host}/copied/list:v1"),
    ]));
    assert_eq!(report["digest"], podman_digest);
    let out = tempfile::tempdir().unwrap();
    let report = json(&env.ok(&[
        "image",
        "copy",
        "--all",
        "--format",
        "json",
        &src,
        &format!("oci:{}:v1", out.path().display()),
    ]));
    assert_eq!(report["digest"], podman_digest);
    assert_eq!(
        report["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let copied = json(&env.ok(&[
        "image",
        "inspect",
        "--raw",
        &format!("{host}/copied/list:v1"),
    ]));
    assert_eq!(entries(&copied), expected_entries());
}

#[test]
fn docker_manifest_create_and_archway_agree() {
    if !require("docker") {
        return;
    }
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let host = reg.host();
    push_per_arch(&env, host, "agree", "1.0");
    let list = format!("{host}/agree:1.0");
    let images = [format!("{list}-amd64"), format!("{list}-arm64")];
    let mut c = Command::new("docker");
    env.apply(&mut c);
    run(c.env("DOCKER_HOST", "unix:///nonexistent.sock").args([
        "manifest",
        "create",
        "--insecure",
        &list,
        &images[0],
        &images[1],
    ]));
    let mut c = Command::new("docker");
    env.apply(&mut c);
    let docker_view = json(&run(c
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .args(["manifest", "inspect", &list])));

    env.ok(&["manifest", "create", &list, &images[0], &images[1]]);
    let archway_view = json(&env.ok(&["manifest", "inspect", &list]));
    assert_eq!(entries(&docker_view), entries(&archway_view));
    assert_eq!(entries(&archway_view), expected_entries());
}

#[test]
fn seed_assembly_stages_run_with_archway_substituted() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!("ci:{}\n", bcrypt::hash("ci-pass", 5).unwrap()),
    )
    .unwrap();
    let reg = RegistryProcess::start_with(&["--htpasswd", users.to_str().unwrap()]);
    let host = reg.host().to_owned();
    let env = UserEnv::new();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/seeds");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_archway"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let creds = "ci:ci-pass";

    // The build stages' outputs: one image per architecture, tagged with a suffix.
    for arch in ["amd64", "arm64"] {
        env.ok(&[
            "image",
            "copy",
            "--quiet",
            "--creds",
            creds,
            "--platform",
            &format!("linux/{arch}"),
            &format!("oci:{}:1.35", busybox_layout().display()),
            &format!("{host}/hello-world:latest-{arch}"),
        ]);
    }
    // CodeCatalyst: docker manifest create / annotate / push.
    let mut c = Command::new("bash");
    env.apply(&mut c);
    run(c
        .arg(seeds.join("codecatalyst-assembly.sh"))
        .env("PATH", &path)
        .env("REGISTRY", &host)
        .env("IMAGE_REPO_NAME", "hello-world")
        .env("IMAGE_TAG_AMD64", "latest-amd64")
        .env("IMAGE_TAG_ARM64", "latest-arm64")
        .env("REGISTRY_USER", "ci")
        .env("REGISTRY_PASSWORD", "ci-pass"));
    let v = json(&env.ok(&[
        "image",
        "inspect",
        "--raw",
        &format!("{host}/hello-world:latest"),
    ]));
    assert_eq!(entries(&v), expected_entries());

    // GitLab: podman manifest create / add docker://… / inspect / push.
    let composite = format!("{host}/gitlab/app:abc123");
    for arch in ["amd64", "arm64"] {
        env.ok(&[
            "image",
            "copy",
            "--quiet",
            "--creds",
            creds,
            "--platform",
            &format!("linux/{arch}"),
            &format!("oci:{}:1.35", busybox_layout().display()),
            &format!("{composite}-{arch}"),
        ]);
    }
    let env2 = UserEnv::new(); // a fresh job: no stored login, no local lists
    let mut c = Command::new("bash");
    env2.apply(&mut c);
    let out = run(c
        .arg(seeds.join("gitlab-assembly.sh"))
        .env("PATH", &path)
        .env("CI_REGISTRY", &host)
        .env("CI_REGISTRY_USER", "ci")
        .env("CI_REGISTRY_PASSWORD", "ci-pass")
        .env("COMPOSITE_IMAGE", &composite));
    assert!(out.contains("\"architecture\": \"arm64\""), "{out}");
    let v = json(&env2.ok(&["image", "inspect", "--raw", &composite]));
    assert_eq!(entries(&v), expected_entries());
}

#[test]
fn refusals_unknown_platform_duplicates_empty_push_existing_list() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let host = reg.host();
    push_per_arch(&env, host, "r", "1.0");
    let raw = Raw::new(&reg);
    // An artifact-like image whose config has no os/architecture.
    let config = b"{}".to_vec();
    raw.push_blob("r", &config);
    let layer = raw.push_blob("r", b"data");
    let m = ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: Descriptor::new(media_type::OCI_CONFIG, Digest::sha256(&config), 2),
        layers: vec![Descriptor::new(media_type::OCI_LAYER_TAR, layer, 4)],
        subject: None,
        annotations: None,
    };
    assert_eq!(
        raw.put_manifest("r", "noplat", media_type::OCI_MANIFEST, &m.to_json())
            .status()
            .as_u16(),
        201
    );

    let list = format!("{host}/r:list");
    let err = env.fails(&["manifest", "create", &list, &format!("{host}/r:noplat")]);
    assert!(
        err.contains("has no platform in its config") && err.contains("--os linux --arch"),
        "{err}"
    );
    // ...but it can be added with an explicit platform.
    env.ok(&[
        "manifest",
        "add",
        "--os",
        "linux",
        "--arch",
        "s390x",
        &list,
        &format!("{host}/r:noplat"),
    ]);

    env.ok(&["manifest", "add", &list, &format!("{host}/r:1.0-amd64")]);
    // Same platform again (a different image): refused, then replaced with --amend.
    let err = env.fails(&[
        "manifest",
        "add",
        "--arch",
        "amd64",
        "--os",
        "linux",
        &list,
        &format!("{host}/r:1.0-arm64"),
    ]);
    assert!(
        err.contains("already has an image for linux/amd64") && err.contains("--amend"),
        "{err}"
    );
    env.ok(&[
        "manifest",
        "add",
        "--amend",
        "--arch",
        "amd64",
        "--os",
        "linux",
        &list,
        &format!("{host}/r:1.0-arm64"),
    ]);
    let v = json(&env.ok(&["manifest", "inspect", &list]));
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);

    // create over an existing list needs --amend.
    let err = env.fails(&["manifest", "create", &list, &format!("{host}/r:1.0-amd64")]);
    assert!(
        err.contains("already exists") && err.contains("--amend"),
        "{err}"
    );

    // An index as an entry of `create` needs --all.
    push_busybox(&env, host, "r", "multi");
    let err = env.fails(&[
        "manifest",
        "create",
        &format!("{host}/r:other"),
        &format!("{host}/r:multi"),
    ]);
    assert!(
        err.contains("is a manifest list itself") && err.contains("--all"),
        "{err}"
    );
    env.ok(&[
        "manifest",
        "create",
        "--all",
        &format!("{host}/r:other"),
        &format!("{host}/r:multi"),
    ]);

    // Empty lists are not pushed.
    let empty = format!("{host}/r:empty");
    env.ok(&["manifest", "add", &empty, &format!("{host}/r:1.0-amd64")]);
    let digest = busybox_digests()
        .1
        .into_iter()
        .find(|(p, _)| p == "linux/amd64")
        .unwrap()
        .1;
    env.ok(&["manifest", "remove", &empty, &digest]);
    let err = env.fails(&["manifest", "push", &empty]);
    assert!(err.contains("is empty"), "{err}");
    // rm, and rm of what is not there.
    env.ok(&["manifest", "rm", &empty]);
    let err = env.fails(&["manifest", "rm", &empty]);
    assert!(err.contains("no local manifest list"), "{err}");
    let err = env.fails(&["manifest", "annotate", "--arch", "arm64", &empty, "x"]);
    assert!(err.contains("archway manifest create"), "{err}");
}

#[test]
fn docker_schema2_entries_make_a_docker_list_and_push_copies_missing_images() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let host = reg.host();
    let raw = Raw::new(&reg);
    for arch in ["amd64", "arm64"] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        )
        .into_bytes();
        let c = raw.push_blob("src/d", &config);
        let l = raw.push_blob("src/d", format!("layer {arch}").as_bytes());
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":{},"digest":"{c}"}},"layers":[{{"mediaType":"{}","size":{},"digest":"{l}"}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            config.len(),
            media_type::DOCKER_LAYER_GZIP,
            format!("layer {arch}").len()
        );
        assert_eq!(
            raw.put_manifest("src/d", arch, media_type::DOCKER_MANIFEST, m.as_bytes())
                .status()
                .as_u16(),
            201
        );
    }
    // The list lives in another repository: push mounts the images there first.
    let list = format!("{host}/dst/d:1.0");
    env.ok(&[
        "manifest",
        "create",
        &list,
        &format!("{host}/src/d:amd64"),
        &format!("{host}/src/d:arm64"),
    ]);
    env.ok(&["manifest", "push", "--quiet", &list]);
    let r = raw.get("/v2/dst/d/manifests/1.0");
    assert_eq!(
        r.headers()["content-type"],
        media_type::DOCKER_MANIFEST_LIST
    );
    // --format oci overrides, to another tag.
    env.ok(&[
        "manifest",
        "push",
        "--quiet",
        "--format",
        "oci",
        &list,
        &format!("docker://{host}/dst/d:oci"),
    ]);
    let r = raw.get("/v2/dst/d/manifests/oci");
    assert_eq!(r.headers()["content-type"], media_type::OCI_INDEX);
    // --purge deletes the local list.
    env.ok(&["manifest", "push", "--quiet", "--purge", &list]);
    env.fails(&["manifest", "push", &list]);
}
