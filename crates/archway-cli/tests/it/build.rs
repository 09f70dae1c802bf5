//! `archway build` and `archway run`: the Dockerfile corpus in `tests/build-corpus/` (each case
//! a context with an `expect.json`), reproducibility, the registry cache, peers reading the
//! output (skopeo, podman, umoci), and rootless runs.
//!
//! `expect.json` keys: `platforms`, `args` (extra CLI arguments), `build_twice` (build, then
//! build again with these extra arguments), `files` / `modes` / `absent` / `config` / `env`
//! (per platform, `*` for all; modes are `"755 uid:gid"`), `shared_layers` (layers identical
//! across all platforms), `run` (`archway run` checks), `error` (strings stderr must contain;
//! the build must fail), `not_in_stderr`, `stderr` (strings a successful build prints),
//! `http` (serve the case's `served/` directory, and each `git/<name>/` as the repository
//! `<name>.git`, over HTTP; the Dockerfile gets the URL as `--build-arg HTTP=…`), `http_log`
//! (requests the server must have seen), `check` (run `archway build --check` instead, which
//! must succeed unless `error` is given), and `buildkit` (the BuildKit behaviour the case
//! pins, for the reader). `ARCHWAY_BUILD_CASE=name` runs one case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use archway_oci::layer::{ExtractOptions, extract_layer};
use archway_oci::layout::ImageLayout;
use archway_oci::{ImageManifest, ManifestKind, ParsedManifest, Platform};
use serde_json::Value;

use crate::support::{
    HttpServer, RegistryProcess, UserEnv, git_repository, push_busybox, require, run,
};

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
    let served = tempfile::tempdir().unwrap();
    let http = (expect["http"] == true).then(|| {
        if dir.join("served").is_dir() {
            run(std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", dir.join("served").display()))
                .arg(served.path()));
        }
        for repo in std::fs::read_dir(dir.join("git")).into_iter().flatten() {
            let repo = repo.unwrap();
            git_repository(
                &repo.path(),
                served.path(),
                &repo.file_name().to_string_lossy(),
            );
        }
        HttpServer::start(served.path())
    });
    if let Some(h) = &http {
        args.extend(["--build-arg".to_owned(), format!("HTTP={}", h.url(""))]);
    }
    if expect["check"] == true {
        args.push("--check".into());
        let o = fx.build(dir, platforms, &args, fx.store.path());
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let want_ok = expect["error"].is_null();
        if o.status.success() != want_ok {
            return Err(format!(
                "--check exited {}, want {}:\n{stderr}",
                o.status,
                if want_ok { "success" } else { "failure" }
            ));
        }
        for e in expect["stderr"]
            .as_array()
            .into_iter()
            .chain(expect["error"].as_array())
            .flatten()
        {
            let e = e.as_str().unwrap();
            if !stderr.contains(e) {
                return Err(format!("--check stderr lacks `{e}`:\n{stderr}"));
            }
        }
        return Ok(());
    }
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
    for e in expect["stderr"].as_array().into_iter().flatten() {
        let e = e.as_str().unwrap();
        if !stderr.contains(e) {
            return Err(format!("stderr lacks `{e}`:\n{stderr}"));
        }
    }
    if let Some(h) = &http {
        let log = h.log();
        for want in expect["http_log"].as_array().into_iter().flatten() {
            let want = want.as_str().unwrap();
            if !log.iter().any(|l| l == want) {
                return Err(format!("the HTTP server did not see `{want}`: {log:?}"));
            }
        }
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

/// A context directory with `files` (path → content).
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    d
}

fn json_of(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `archway build prune` and `du` while another build runs on the same store: what that build
/// uses stays (it finishes with a complete image), what an earlier build left goes.
#[test]
fn prune_and_du_leave_a_running_build_alone() {
    let fx = Fixture::new();
    let store = tempfile::tempdir().unwrap();
    // An earlier build, finished: everything only it used may go.
    let earlier = context(&[
        (
            "Dockerfile",
            "ARG BASE\nFROM $BASE\nCOPY unique.txt /\nRUN echo a > /a\n",
        ),
        ("unique.txt", "only the earlier build has this\n"),
    ]);
    let earlier_digest = digest_of(&fx.build(earlier.path(), "linux/amd64", &[], store.path()));
    // A build that waits in its RUN step until the test lets it go.
    let served = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(served.path().join("hold")).unwrap();
    std::fs::write(served.path().join("hold/go"), "released\n").unwrap();
    let http = HttpServer::start(served.path());
    let running = context(&[
        (
            "Dockerfile",
            "ARG BASE\nFROM $BASE\nARG HTTP\nCOPY b.txt /b.txt\nRUN wget -q -O /fetched $HTTP/hold/go\n",
        ),
        ("b.txt", "the running build's file\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = fx.env.archway();
    cmd.current_dir(running.path())
        .args([
            "build",
            ".",
            "--platform",
            "linux/amd64",
            "--build-arg",
            &format!("BASE={}", fx.base),
            "--build-arg",
            &format!("HTTP={}", http.url("")),
            "--output",
            &format!("oci:{}:test", out.path().display()),
            "--cache-dir",
        ])
        .arg(store.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    http.wait_for("GET /hold/go held", std::time::Duration::from_secs(300));

    let store_arg = store.path().to_str().unwrap();
    let du = json_of(
        &fx.env
            .archway()
            .args(["build", "du", "--cache-dir", store_arg, "--format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(du["running_builds"], 1, "{du}");
    assert!(du["total"].as_u64().unwrap() > 0, "{du}");
    let report = json_of(
        &fx.env
            .archway()
            .args([
                "build",
                "prune",
                "--cache-dir",
                store_arg,
                "--format",
                "json",
            ])
            .output()
            .unwrap(),
    );
    let removed: Vec<(String, String)> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The earlier build's result went...
    let earlier_tag = format!(
        "build-{}",
        &earlier_digest.trim_start_matches("sha256:")[..16]
    );
    assert!(
        removed.contains(&("image".to_owned(), earlier_tag.clone())),
        "{earlier_tag} not in {removed:?}"
    );
    // ...the base image the running build pulled (and the earlier one too) stayed.
    assert!(
        !removed
            .iter()
            .any(|(k, n)| k == "image" && n.starts_with("base-")),
        "{removed:?}"
    );
    assert!(report["kept_in_use"].as_u64().unwrap() > 0, "{report}");

    http.release();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let built = images(out.path(), "test");
    let root = built["linux/amd64"].rootfs.path();
    assert_eq!(
        std::fs::read_to_string(root.join("b.txt")).unwrap(),
        "the running build's file\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("fetched")).unwrap(),
        "released\n"
    );
    assert!(
        root.join("bin/busybox").exists(),
        "the base layer is in the image"
    );
    let du = json_of(
        &fx.env
            .archway()
            .args(["build", "du", "--cache-dir", store_arg, "--format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(du["running_builds"], 0, "{du}");
    // Nothing in use now: everything goes, and the store still works afterwards.
    let report = json_of(
        &fx.env
            .archway()
            .args([
                "build",
                "prune",
                "--cache-dir",
                store_arg,
                "--format",
                "json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(report["kept_in_use"], 0, "{report}");
    let du = json_of(
        &fx.env
            .archway()
            .args(["build", "du", "--cache-dir", store_arg, "--format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(du["reclaimable"], 0, "{du}");
    digest_of(&fx.build(earlier.path(), "linux/amd64", &[], store.path()));
}

/// The automatic cap: after a build, the store is pruned down to `--keep-storage`, least
/// recently used first, keeping what the build used.
#[test]
fn keep_storage_caps_the_store_after_each_build() {
    let fx = Fixture::new();
    let store = tempfile::tempdir().unwrap();
    let first = context(&[
        ("Dockerfile", "ARG BASE\nFROM $BASE\nCOPY one.txt /\n"),
        ("one.txt", &"1".repeat(100_000)),
    ]);
    digest_of(&fx.build(first.path(), "linux/amd64", &[], store.path()));
    let second = context(&[
        ("Dockerfile", "ARG BASE\nFROM $BASE\nCOPY two.txt /\n"),
        ("two.txt", "2\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = fx.build(
        second.path(),
        "linux/amd64",
        &[
            "--keep-storage".into(),
            "1".into(),
            "--output".into(),
            format!("oci:{}:test", out.path().display()),
        ],
        store.path(),
    );
    digest_of(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("build store: removed") && stderr.contains("to stay under its size cap"),
        "{stderr}"
    );
    let built = images(out.path(), "test");
    assert_eq!(
        std::fs::read_to_string(built["linux/amd64"].rootfs.path().join("two.txt")).unwrap(),
        "2\n"
    );
    // What is left is only what the second build used.
    let du = json_of(
        &fx.env
            .archway()
            .args([
                "build",
                "du",
                "--cache-dir",
                store.path().to_str().unwrap(),
                "--format",
                "json",
            ])
            .output()
            .unwrap(),
    );
    let content: u64 = du["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "content-cache")
        .map(|k| k["items"].as_u64().unwrap())
        .sum();
    assert_eq!(content, 1, "only the second build's COPY layer: {du}");
}

/// `ADD <url>` through the proxy the environment names (as a runner's job sets it), with the
/// file's `Last-Modified` as its time in the layer.
#[test]
fn add_url_through_the_proxy_with_last_modified() {
    let fx = Fixture::new();
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("tool.txt"), "via the proxy\n").unwrap();
    // The test server answers absolute-form requests as a forward proxy would.
    let proxy = HttpServer::start(served.path());
    let ctx = context(&[(
        "Dockerfile",
        "ARG BASE\nFROM $BASE\nADD http://archway-test.invalid/tool.txt /tool.txt\n",
    )]);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = fx.env.archway();
    cmd.current_dir(ctx.path())
        .env("HTTP_PROXY", proxy.url(""))
        .env("http_proxy", proxy.url(""))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args([
            "build",
            ".",
            "--platform",
            "linux/amd64",
            "--build-arg",
            &format!("BASE={}", fx.base),
            "--output",
            &format!("oci:{}:test", out.path().display()),
            "--cache-dir",
        ])
        .arg(fx.store.path());
    digest_of(&cmd.output().unwrap());
    assert!(
        proxy
            .log()
            .contains(&"GET /tool.txt 200 proxied".to_owned()),
        "{:?}",
        proxy.log()
    );
    // The layer's entry carries Last-Modified as its mtime.
    let layout = ImageLayout::open(out.path()).unwrap();
    let top = layout.resolve(Some("test")).unwrap();
    let m: ImageManifest = serde_json::from_slice(&layout.read_blob(&top.digest).unwrap()).unwrap();
    let last = m.layers.last().unwrap();
    let f = layout.open_blob(&last.digest, Some(last.size)).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entry = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_string_lossy() == "tool.txt")
        .expect("tool.txt in the ADD layer");
    assert_eq!(
        entry.header().mtime().unwrap(),
        crate::support::HTTP_LAST_MODIFIED.1
    );
    assert_eq!(entry.header().mode().unwrap() & 0o7777, 0o600);
}

/// `archway build --check` where the context is not there at all (a lint job that only has
/// the Dockerfile): the Dockerfile is judged alone, sources are not looked for.
#[test]
fn check_without_a_context() {
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "FROM alpine:3.19\nCOPY app /app\nADD https://example.invalid/x.tgz /opt/\nRUN make\n",
    )
    .unwrap();
    let o = crate::support::archway()
        .arg("build")
        .arg(dir.path().join("no-such-context"))
        .arg("--check")
        .arg("-f")
        .arg(&dockerfile)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("its files are not checked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A real mistake is still an error.
    std::fs::write(&dockerfile, "FROM alpine:3.19\nCOPY --form=x a b\n").unwrap();
    let o = crate::support::archway()
        .arg("build")
        .arg(dir.path().join("no-such-context"))
        .arg("--check")
        .arg("-f")
        .arg(&dockerfile)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// Rootless with subordinate ids (`/etc/subuid`, `/etc/subgid`, newuidmap): a file owned by
/// uid 1000 in the base image keeps that owner in RUN steps and in the result, and a step can
/// run as that user, as with rootless podman. Without the range, the build says why it
/// cannot.
#[test]
fn rootless_build_with_subordinate_ids_keeps_owners() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        crate::support::skip("needs root to run archway as nobody");
        return;
    }
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let has = |t: &str| {
        t.lines()
            .any(|l| l.starts_with("nobody:") || l.starts_with("65534:"))
    };
    if !has(&subuid) || !has(&subgid) || !crate::support::have("newuidmap") {
        crate::support::skip(
            "nobody has no range in /etc/subuid and /etc/subgid, or uidmap is missing (scripts/test.sh sets them up)",
        );
        return;
    }
    let fx = Fixture::new();
    // A base image with a user 1000 owning /data, built as root.
    let base_ctx = context(&[(
        "Dockerfile",
        "ARG BASE\nFROM $BASE\nRUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && mkdir -p /data && echo hi > /data/f && chown -R 1000:1000 /data\n",
    )]);
    let owned = format!("{}/owned/base:1", fx.reg.host());
    digest_of(&fx.build(
        base_ctx.path(),
        "linux/amd64",
        &["-t".into(), owned.clone(), "--push".into()],
        fx.store.path(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let home = crate::support::owned_dir(65534, "home", &tmp);
    let ctx = home.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nRUN stat -c %u:%g /data/f > /seen-by-root\nUSER app\nRUN echo made-by-app > /data/g && id -u > /data/uid\nUSER root\n",
    )
    .unwrap();
    run(std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&ctx));
    let out = crate::support::owned_dir(65534, "out", &tmp);
    let build = |subids: bool| {
        let mut c = crate::support::as_nobody(&home);
        if !subids {
            c.env("ARCHWAY_ROOTLESS_SUBIDS", "off");
        }
        c.current_dir(&ctx)
            .args([
                "build",
                ".",
                "--platform",
                "linux/amd64",
                "--build-arg",
                &format!("BASE={owned}"),
                "--output",
                &format!("oci:{}:test", out.display()),
                "--cache-dir",
            ])
            .arg(home.join(if subids { "store" } else { "store-single" }))
            .output()
            .unwrap()
    };
    let o = build(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let built = images(&out, "test");
    let root = built["linux/amd64"].rootfs.path();
    assert_eq!(
        std::fs::read_to_string(root.join("seen-by-root")).unwrap(),
        "1000:1000\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/uid")).unwrap(),
        "1000\n"
    );
    for f in ["data/f", "data/g"] {
        let m = std::fs::metadata(root.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{f}");
    }
    // The single mapping says what it cannot do, and `USER app` fails there.
    let o = build(false);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("runs rootless with a single id mapping (ARCHWAY_ROOTLESS_SUBIDS=off)"),
        "{stderr}"
    );
    assert!(!o.status.success(), "{stderr}");
}
