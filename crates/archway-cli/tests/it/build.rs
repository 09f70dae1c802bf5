//! `archway build` and `archway run`: the Dockerfile corpus in `tests/build-corpus/` (each case
//! a context with an `expect.json`), reproducibility, the registry cache, peers reading the
//! output (skopeo, podman, umoci), and rootless runs.
//!
//! `expect.json` keys: `platforms`, `args` (extra CLI arguments), `build_twice` (build, then
//! build again with these extra arguments), `files` / `modes` / `absent` / `config` / `env`
//! (per platform, `*` for all; modes are `"755 uid:gid"`), `shared_layers` (layers identical
//! across all platforms), `run` (`archway run` checks), `error` (strings stderr must contain;
//! the build must fail) and `not_in_stderr`. `ARCHWAY_BUILD_CASE=name` runs one case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use archway_oci::layer::{ExtractOptions, extract_layer};
use archway_oci::layout::ImageLayout;
use archway_oci::{ImageManifest, ManifestKind, ParsedManifest, Platform};
use serde_json::Value;

use crate::support::{RegistryProcess, UserEnv, push_busybox, require, run};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/build-corpus")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A registry with the busybox fixture as `library/busybox:1.35`, and a shared build store.
struct Fixture {
    reg: RegistryProcess,
    env: UserEnv,
    base: String,
    store: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let reg = RegistryProcess::start();
        let env = UserEnv::new();
        push_busybox(&env, reg.host(), "library/busybox", "1.35");
        let base = format!("{}/library/busybox:1.35", reg.host());
        Fixture {
            reg,
            env,
            base,
            store: tempfile::tempdir().unwrap(),
        }
    }

    fn build(
        &self,
        dir: &Path,
        platforms: &str,
        extra: &[String],
        store: &Path,
    ) -> std::process::Output {
        let mut cmd = self.env.archway();
        cmd.current_dir(dir)
            .args([
                "build",
                ".",
                "--platform",
                platforms,
                "--build-arg",
                &format!("BASE={}", self.base),
                "--cache-dir",
            ])
            .arg(store);
        cmd.args(extra);
        cmd.output().unwrap()
    }
}

/// One platform's image in a layout: manifest, config, unpacked root filesystem.
struct Built {
    manifest: ImageManifest,
    config: Value,
    rootfs: tempfile::TempDir,
}

fn images(out: &Path, tag: &str) -> BTreeMap<String, Built> {
    let layout = ImageLayout::open(out).unwrap();
    let top = layout.resolve(Some(tag)).unwrap();
    let parsed = ParsedManifest::parse(
        &layout.read_blob(&top.digest).unwrap(),
        Some(&top.media_type),
    )
    .unwrap();
    let manifests: Vec<archway_oci::Descriptor> = match parsed.kind {
        ManifestKind::Index => parsed.manifests.clone(),
        _ => vec![top.clone()],
    };
    let mut result = BTreeMap::new();
    for d in manifests {
        let manifest: ImageManifest =
            serde_json::from_slice(&layout.read_blob(&d.digest).unwrap()).unwrap();
        let config: Value =
            serde_json::from_slice(&layout.read_blob(&manifest.config.digest).unwrap()).unwrap();
        let platform = format!(
            "{}/{}",
            config["os"].as_str().unwrap(),
            config["architecture"].as_str().unwrap()
        );
        let rootfs = tempfile::tempdir().unwrap();
        for l in &manifest.layers {
            let mut f = layout.open_blob(&l.digest, Some(l.size)).unwrap();
            extract_layer(
                &mut f,
                Path::new(&l.digest.to_string()),
                rootfs.path(),
                &ExtractOptions {
                    privileged: is_root(),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        result.insert(
            platform,
            Built {
                manifest,
                config,
                rootfs,
            },
        );
    }
    result
}

/// `expect[key]` entries that apply to `platform` (its own and `*`).
fn for_platform<'a>(expect: &'a Value, key: &str, platform: &str) -> Vec<(&'a String, &'a Value)> {
    let mut out = Vec::new();
    if let Some(m) = expect[key].as_object() {
        for (p, v) in m {
            if p == "*" || p == platform {
                match v {
                    Value::Object(o) => out.extend(o.iter()),
                    Value::Array(a) => out.extend(a.iter().map(|x| (p, x))),
                    _ => {}
                }
            }
        }
    }
    out
}

fn check_case(fx: &Fixture, dir: &Path) -> Result<(), String> {
    let expect: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap())
            .map_err(|e| e.to_string())?;
    let platforms = expect["platforms"].as_str().unwrap_or("linux/amd64");
    let out = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = expect["args"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    args.push("--output".into());
    args.push(format!("oci:{}:test", out.path().display()));
    if let Some(again) = expect["build_twice"].as_array() {
        let first = fx.build(dir, platforms, &args, fx.store.path());
        if !first.status.success() {
            return Err(format!(
                "first build failed:\n{}",
                String::from_utf8_lossy(&first.stderr)
            ));
        }
        args.extend(again.iter().map(|v| v.as_str().unwrap().to_owned()));
    }
    let o = fx.build(dir, platforms, &args, fx.store.path());
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    if let Some(errors) = expect["error"].as_array() {
        if o.status.success() {
            return Err(format!(
                "the build succeeded but should have failed:\n{stderr}"
            ));
        }
        for e in errors {
            let e = e.as_str().unwrap();
            if !stderr.contains(e) {
                return Err(format!("stderr lacks `{e}`:\n{stderr}"));
            }
        }
        for e in expect["not_in_stderr"].as_array().into_iter().flatten() {
            let e = e.as_str().unwrap();
            if stderr.contains(e) {
                return Err(format!(
                    "stderr has `{e}` (work started before the error was found):\n{stderr}"
                ));
            }
        }
        return Ok(());
    }
    if !o.status.success() {
        return Err(format!("build failed:\n{stderr}"));
    }
    let built = images(out.path(), "test");
    let want: Vec<String> = platforms
        .split(',')
        .map(|p| p.parse::<Platform>().unwrap().to_string())
        .collect();
    if built.keys().cloned().collect::<Vec<_>>() != want {
        return Err(format!(
            "platforms {:?}, want {want:?}",
            built.keys().collect::<Vec<_>>()
        ));
    }
    for (platform, b) in &built {
        let root = b.rootfs.path();
        for (path, content) in for_platform(&expect, "files", platform) {
            let got = std::fs::read_to_string(root.join(path.trim_start_matches('/')))
                .map_err(|e| format!("{platform} {path}: {e}"))?;
            if got != content.as_str().unwrap() {
                return Err(format!("{platform} {path}: {got:?}, want {content}"));
            }
        }
        for (path, mode) in for_platform(&expect, "modes", platform) {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(root.join(path.trim_start_matches('/')))
                .map_err(|e| format!("{platform} {path}: {e}"))?;
            let (want_mode, owner) = mode.as_str().unwrap().split_once(' ').unwrap();
            let got_mode = format!("{:o}", m.mode() & 0o7777);
            if got_mode != want_mode {
                return Err(format!(
                    "{platform} {path}: mode {got_mode}, want {want_mode}"
                ));
            }
            if is_root() && format!("{}:{}", m.uid(), m.gid()) != owner {
                return Err(format!(
                    "{platform} {path}: owner {}:{}, want {owner}",
                    m.uid(),
                    m.gid()
                ));
            }
        }
        for (_, path) in for_platform(&expect, "absent", platform) {
            let path = path.as_str().unwrap();
            if std::fs::symlink_metadata(root.join(path.trim_start_matches('/'))).is_ok() {
                return Err(format!("{platform} {path} should not exist"));
            }
        }
        for (key, value) in for_platform(&expect, "config", platform) {
            if &b.config["config"][key] != value {
                return Err(format!(
                    "{platform} config.{key} = {}, want {value}",
                    b.config["config"][key]
                ));
            }
        }
        for (_, e) in for_platform(&expect, "env", platform) {
            let env = b.config["config"]["Env"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !env.contains(e) {
                return Err(format!("{platform} Env {env:?} lacks {e}"));
            }
        }
        if b.config["rootfs"]["diff_ids"].as_array().map(Vec::len) != Some(b.manifest.layers.len())
        {
            return Err(format!("{platform}: diff_ids and layers differ in number"));
        }
    }
    if let Some(n) = expect["shared_layers"].as_u64() {
        let mut sets = built.values().map(|b| {
            b.manifest
                .layers
                .iter()
                .map(|l| l.digest.to_string())
                .collect::<std::collections::BTreeSet<_>>()
        });
        let first = sets.next().unwrap();
        let shared = sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect());
        if shared.len() as u64 != n {
            return Err(format!(
                "{} layers shared byte-for-byte across platforms, want {n}",
                shared.len()
            ));
        }
    }
    for r in expect["run"].as_array().into_iter().flatten() {
        let mut cmd = fx.env.archway();
        cmd.args([
            "run",
            "--platform",
            r["platform"].as_str().unwrap(),
            "--cache-dir",
        ])
        .arg(fx.store.path());
        cmd.arg(format!("oci:{}:test", out.path().display()));
        cmd.args(
            r["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap()),
        );
        let o = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() || stdout != r["stdout"].as_str().unwrap() {
            return Err(format!(
                "run {r}: {} stdout {stdout:?} stderr {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    Ok(())
}

#[test]
fn dockerfile_corpus() {
    let fx = Fixture::new();
    let only = std::env::var("ARCHWAY_BUILD_CASE").ok();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut ran = 0;
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        ran += 1;
        if let Err(e) = check_case(&fx, &dir) {
            failures.push(format!("--- {name}: {e}"));
        }
    }
    assert!(ran > 0, "no case matched");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The digest `archway build` prints.
fn digest_of(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn same_input_same_digests_on_clean_caches() {
    let fx = Fixture::new();
    let dir = corpus().join("seed-print-arch");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = digest_of(&fx.build(&dir, "linux/amd64,linux/arm64", &[], a.path()));
    let second = digest_of(&fx.build(&dir, "linux/amd64,linux/arm64", &[], b.path()));
    assert!(first.starts_with("sha256:"));
    assert_eq!(first, second, "two clean builds of the same input differ");

    // SOURCE_DATE_EPOCH is honoured: another epoch, another digest, and that creation time.
    let c = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = fx.env.archway();
    cmd.current_dir(&dir).env("SOURCE_DATE_EPOCH", "1700000000");
    cmd.args([
        "build",
        ".",
        "--platform",
        "linux/amd64,linux/arm64",
        "--build-arg",
        &format!("BASE={}", fx.base),
        "--cache-dir",
    ])
    .arg(c.path());
    cmd.arg("--output")
        .arg(format!("oci:{}:e", out.path().display()));
    let third = digest_of(&cmd.output().unwrap());
    assert_ne!(third, first);
    for b in images(out.path(), "e").values() {
        assert_eq!(b.config["created"], "2023-11-14T22:13:20Z");
    }
}

#[test]
fn registry_cache_round_trip_and_push() {
    let fx = Fixture::new();
    let dir = corpus().join("targetarch-branching");
    let image = format!("{}/demo/app:1.0", fx.reg.host());
    let cache_repo = format!("{}/demo/cache", fx.reg.host());
    let first = fx.build(
        &dir,
        "linux/amd64,linux/arm64",
        &[
            "-t".into(),
            image.clone(),
            "--push".into(),
            "--cache-repo".into(),
            cache_repo.clone(),
        ],
        fx.store.path(),
    );
    let d1 = digest_of(&first);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("step results in"), "{stderr}");
    // A runner with an empty local cache takes every RUN from the registry.
    let fresh = tempfile::tempdir().unwrap();
    let second = fx.build(
        &dir,
        "linux/amd64,linux/arm64",
        &[
            "--cache-repo".into(),
            cache_repo,
            "--format".into(),
            "json".into(),
        ],
        fresh.path(),
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let summary: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(summary["digest"], d1);
    // Both platforms' RUN steps and the COPY --from of each: all six from the registry.
    assert_eq!(summary["cached_steps"], 6, "{summary}");
    // The pushed index is what was built.
    let inspect = fx.env.ok(&["image", "inspect", "--raw", &image]);
    assert_eq!(
        format!(
            "sha256:{}",
            archway_oci::Digest::sha256(inspect.trim_end().as_bytes()).hex()
        ),
        d1
    );
}

#[test]
fn check_reports_positioned_errors_without_building() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY --from=nowhere /a /a\nENV Y=${X:?X is required}\n",
    )
    .unwrap();
    let o = fx.build(
        dir.path(),
        "linux/amd64,linux/arm64",
        &["--check".into()],
        fx.store.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("Dockerfile:3:1: error:") && stderr.contains("nowhere"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dockerfile:4:") && stderr.contains("X is required"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pulled"),
        "--check must not pull: {stderr}"
    );

    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN true\n",
    )
    .unwrap();
    let o = fx.build(
        dir.path(),
        "linux/amd64,linux/arm64",
        &["--check".into()],
        fx.store.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok for linux/amd64, linux/arm64"));
}

#[test]
fn kaniko_flags_build_and_push() {
    let fx = Fixture::new();
    let dir = corpus().join("seed-static-site");
    let dest = format!("{}/kaniko/site:1", fx.reg.host());
    let tar = tempfile::tempdir().unwrap();
    let tar_path = tar.path().join("image.tar");
    let mut cmd = fx.env.archway();
    cmd.args([
        "build",
        "--context",
        &format!("dir://{}", dir.display()),
        "--dockerfile",
    ])
    .arg(dir.join("Dockerfile"));
    cmd.args([
        "--destination",
        &dest,
        "--custom-platform",
        "linux/arm64",
        "--build-arg",
        &format!("BASE={}", fx.base),
        "--reproducible",
        "--cache-dir",
    ])
    .arg(fx.store.path());
    cmd.arg("--tar-path").arg(&tar_path);
    let digest = digest_of(&cmd.output().unwrap());
    let raw = fx.env.ok(&["image", "inspect", "--raw", &dest]);
    assert_eq!(
        format!(
            "sha256:{}",
            archway_oci::Digest::sha256(raw.trim_end().as_bytes()).hex()
        ),
        digest
    );
    if require("skopeo") {
        let out = run(std::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", tar_path.display())));
        assert_eq!(
            format!(
                "sha256:{}",
                archway_oci::Digest::sha256(out.trim_end().as_bytes()).hex()
            ),
            digest
        );
    }
}

#[test]
fn peers_read_the_output() {
    let fx = Fixture::new();
    let dir = corpus().join("seed-print-arch");
    let out = tempfile::tempdir().unwrap();
    let image = format!("{}/peers/arch:1.0", fx.reg.host());
    let o = fx.build(
        &dir,
        "linux/amd64,linux/arm64",
        &[
            "--output".into(),
            format!("oci:{}:1.0", out.path().display()),
            "-t".into(),
            image.clone(),
            "--push".into(),
        ],
        fx.store.path(),
    );
    let digest = digest_of(&o);
    let layout = format!("oci:{}:1.0", out.path().display());
    if require("skopeo") {
        let raw = run(std::process::Command::new("skopeo").args(["inspect", "--raw", &layout]));
        assert_eq!(
            format!(
                "sha256:{}",
                archway_oci::Digest::sha256(raw.as_bytes()).hex()
            ),
            digest
        );
        let arm: Value = serde_json::from_str(&run(std::process::Command::new("skopeo").args([
            "inspect",
            "--override-arch",
            "arm64",
            &layout,
        ])))
        .unwrap();
        assert_eq!(arm["Architecture"], "arm64");
        // skopeo copies every platform out of our registry, verifying every blob.
        let copy = tempfile::tempdir().unwrap();
        run(std::process::Command::new("skopeo").args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("oci:{}:c", copy.path().display()),
        ]));
    }
    if require("podman") {
        let root = tempfile::tempdir().unwrap();
        let podman = |args: &[&str]| {
            let mut c = std::process::Command::new("podman");
            c.arg("--root")
                .arg(root.path().join("storage"))
                .arg("--runroot")
                .arg(root.path().join("run"))
                .args(args);
            run(&mut c)
        };
        // From the layout (a lowercase path: podman names the image after it) and the registry.
        let lower = PathBuf::from(format!("/tmp/archway-podman-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&lower);
        run(std::process::Command::new("cp")
            .arg("-r")
            .arg(out.path())
            .arg(&lower));
        let id = podman(&[
            "pull",
            "-q",
            "--arch",
            "arm64",
            &format!("oci:{}:1.0", lower.display()),
        ]);
        let inspect: Value =
            serde_json::from_str(&podman(&["image", "inspect", id.trim()])).unwrap();
        assert_eq!(inspect[0]["Architecture"], "arm64");
        std::fs::remove_dir_all(&lower).unwrap();
        let id = podman(&[
            "pull",
            "-q",
            "--tls-verify=false",
            "--arch",
            "arm64",
            &format!("docker://{image}"),
        ]);
        let inspect: Value =
            serde_json::from_str(&podman(&["image", "inspect", id.trim()])).unwrap();
        assert_eq!(inspect[0]["Architecture"], "arm64");
        assert_eq!(
            inspect[0]["Config"]["Cmd"],
            serde_json::json!(["/print-platform-info"])
        );
    }
    if require("umoci") {
        // umoci reads single-platform layouts (it cannot pick from an index).
        let single = tempfile::tempdir().unwrap();
        let o = fx.build(
            &dir,
            "linux/arm64",
            &[
                "--output".into(),
                format!("oci:{}:arm", single.path().display()),
            ],
            fx.store.path(),
        );
        digest_of(&o);
        let bundle = tempfile::tempdir().unwrap();
        let mut c = std::process::Command::new("umoci");
        c.args([
            "unpack",
            "--image",
            &format!("{}:arm", single.path().display()),
        ]);
        if !is_root() {
            c.arg("--rootless");
        }
        c.arg(bundle.path().join("b"));
        run(&mut c);
        assert_eq!(
            std::fs::read_to_string(bundle.path().join("b/rootfs/built-on")).unwrap(),
            "machine: aarch64\n"
        );
    }
}

#[test]
fn onbuild_triggers_run_in_the_child_build_and_are_not_inherited() {
    let fx = Fixture::new();
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join("Dockerfile"), "ARG BASE\nFROM $BASE\nONBUILD COPY app.txt /app.txt\nONBUILD RUN echo \"triggered on $(uname -m)\" > /triggered\n").unwrap();
    let base = format!("{}/onbuild/base:1", fx.reg.host());
    digest_of(&fx.build(
        parent.path(),
        "linux/amd64,linux/arm64",
        &["-t".into(), base.clone(), "--push".into()],
        fx.store.path(),
    ));
    let child = tempfile::tempdir().unwrap();
    std::fs::write(
        child.path().join("Dockerfile"),
        format!("FROM {base}\nRUN cat /app.txt\n"),
    )
    .unwrap();
    std::fs::write(child.path().join("app.txt"), "from the child's context\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    digest_of(&fx.build(
        child.path(),
        "linux/amd64,linux/arm64",
        &["--output".into(), format!("oci:{}:c", out.path().display())],
        fx.store.path(),
    ));
    let built = images(out.path(), "c");
    for (platform, b) in &built {
        let machine = if platform.ends_with("arm64") {
            "aarch64"
        } else {
            "x86_64"
        };
        assert_eq!(
            std::fs::read_to_string(b.rootfs.path().join("triggered")).unwrap(),
            format!("triggered on {machine}\n")
        );
        assert_eq!(
            std::fs::read_to_string(b.rootfs.path().join("app.txt")).unwrap(),
            "from the child's context\n"
        );
        assert!(
            b.config["config"].get("OnBuild").is_none_or(Value::is_null),
            "{}",
            b.config["config"]
        );
    }
}

#[test]
fn library_warnings_reach_the_user() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN mkfifo /pipe && echo made > /kept\n",
    )
    .unwrap();
    let platform = Platform::host().to_string();
    let o = fx.build(dir.path(), &platform, &[], fx.store.path());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // The sandbox drops the FIFO from the layer and says so (a tracing warning in a library).
    assert!(
        stderr.contains("warning: skipping a special file created by the step path=pipe"),
        "{stderr}"
    );
}
