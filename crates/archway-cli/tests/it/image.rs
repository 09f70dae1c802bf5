//! `archway image …` and `archway login`: against Archway's registry (token auth) and CNCF
//! distribution (basic auth), with OCI layouts, and on bad input.

use std::process::Command;

use archway_oci::layout::ImageLayout;

use crate::support::{
    DistributionProcess, RegistryProcess, UserEnv, busybox_digests, busybox_layout, push_busybox,
    require, run,
};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

#[test]
fn copy_all_round_trip_between_layouts_and_registries_keeps_every_digest() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let (top, children) = busybox_digests();
    let dst = format!("{}/library/busybox:1.35", reg.host());
    let report = json(&env.ok(&[
        "image",
        "copy",
        "--all",
        "--format",
        "json",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &dst,
    ]));
    assert_eq!(report["digest"], top);
    assert_eq!(report["manifests"], 3);
    assert_eq!(report["blobs_copied"], 4);
    assert_eq!(
        report["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );

    // Back into a layout: same index digest, identical blobs.
    let out = tempfile::tempdir().unwrap();
    env.ok(&[
        "image",
        "copy",
        "--all",
        "--quiet",
        &dst,
        &format!("oci:{}:copy", out.path().display()),
    ]);
    let copy = ImageLayout::open(out.path()).unwrap();
    assert_eq!(copy.resolve(Some("copy")).unwrap().digest.to_string(), top);
    for entry in std::fs::read_dir(busybox_layout().join("blobs/sha256")).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            std::fs::read(busybox_layout().join("blobs/sha256").join(&name)).unwrap(),
            std::fs::read(out.path().join("blobs/sha256").join(&name)).unwrap()
        );
    }

    // A second copy finds everything in place.
    let again = json(&env.ok(&[
        "image",
        "copy",
        "--all",
        "--format",
        "json",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &dst,
    ]));
    assert_eq!(again["blobs_copied"], 0);
    assert_eq!(again["blobs_existing"], 4);

    // Into another repository of the same registry: blobs are mounted, not copied.
    let mounted = json(&env.ok(&[
        "image",
        "copy",
        "--all",
        "--format",
        "json",
        &dst,
        &format!("{}/mirror/busybox:v1", reg.host()),
    ]));
    assert_eq!(mounted["blobs_mounted"], 4);
    assert_eq!(mounted["blobs_copied"], 0);
    assert_eq!(mounted["digest"], top);

    // One platform only.
    let arm = json(&env.ok(&[
        "image",
        "copy",
        "--platform",
        "linux/arm64",
        "--format",
        "json",
        &dst,
        &format!("{}/arm/busybox:1.35", reg.host()),
    ]));
    let arm_digest = &children.iter().find(|(p, _)| p == "linux/arm64").unwrap().1;
    assert_eq!(&arm["digest"], arm_digest);
    let inspect = json(&env.ok(&[
        "image",
        "inspect",
        "--format",
        "json",
        &format!("{}/arm/busybox:1.35", reg.host()),
    ]));
    assert_eq!(inspect["image"]["platform"], "linux/arm64");
    assert_eq!(inspect["digest"], *arm_digest);
}

#[test]
fn inspect_and_tags() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    push_busybox(&env, reg.host(), "lib/bb", "1.35");
    push_busybox(&env, reg.host(), "lib/bb", "latest");
    let r = format!("{}/lib/bb:1.35", reg.host());

    let v = json(&env.ok(&["image", "inspect", "--format", "json", &r]));
    let platforms: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let v = json(&env.ok(&[
        "image",
        "inspect",
        "--format",
        "json",
        "--platform",
        "linux/aarch64",
        &r,
    ]));
    assert_eq!(v["image"]["platform"], "linux/arm64");
    assert_eq!(
        v["image"]["config"]["config"]["Cmd"],
        serde_json::json!(["sh"])
    );
    assert_eq!(v["image"]["layers"].as_array().unwrap().len(), 1);
    let text = env.ok(&["image", "inspect", "--platform", "linux/amd64", &r]);
    assert!(
        text.contains("Platform:   linux/amd64") && text.contains("Cmd:        [\"sh\"]"),
        "{text}"
    );

    // --raw is the exact bytes, as skopeo sees them.
    let raw = env.ok(&["image", "inspect", "--raw", &r]);
    let layout = ImageLayout::open(busybox_layout()).unwrap();
    let top = layout.resolve(Some("1.35")).unwrap();
    assert_eq!(
        raw.trim_end().as_bytes(),
        &layout.read_blob(&top.digest).unwrap()[..]
    );
    if require("skopeo") {
        let s = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}"),
        ]));
        assert_eq!(raw.trim_end(), s.trim_end());
    }

    assert_eq!(
        env.ok(&["image", "tags", &format!("{}/lib/bb", reg.host())]),
        "1.35\nlatest\n"
    );
    let t = json(&env.ok(&[
        "image",
        "tags",
        "--format",
        "json",
        &format!("{}/lib/bb", reg.host()),
    ]));
    assert_eq!(t["tags"], serde_json::json!(["1.35", "latest"]));
    let err = env.fails(&["image", "inspect", "--platform", "linux/s390x", &r]);
    assert!(
        err.contains("has no image for linux/s390x (it has: linux/amd64, linux/arm64)"),
        "{err}"
    );
}

#[test]
fn import_is_reproducible_and_readable_by_skopeo() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rootfs.path().join("bin")).unwrap();
    std::fs::write(rootfs.path().join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    std::os::unix::fs::symlink("hello", rootfs.path().join("bin/hi")).unwrap();
    let import = |dest: &str| {
        json(&env.ok(&[
            "image",
            "import",
            rootfs.path().to_str().unwrap(),
            "--platform",
            "linux/arm64",
            "--cmd",
            r#"["/bin/hello"]"#,
            "--env",
            "A=1",
            "--label",
            "org.example=yes",
            "--format",
            "json",
            "-t",
            dest,
        ]))
    };
    let a = import(&format!("{}/imp:a", reg.host()));
    // Give the file another time: times are normalised, so the digest does not change.
    std::fs::write(rootfs.path().join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(rootfs.path().join("bin/hello"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let b = import(&format!("oci:{}:b", out.path().display()));
    assert_eq!(a["digest"], b["digest"]);
    assert_eq!(a["layer"], b["layer"]);
    assert_eq!(a["platform"], "linux/arm64");

    let v = json(&env.ok(&[
        "image",
        "inspect",
        "--format",
        "json",
        &format!("{}/imp:a", reg.host()),
    ]));
    assert_eq!(
        v["image"]["config"]["config"]["Cmd"],
        serde_json::json!(["/bin/hello"])
    );
    assert_eq!(
        v["image"]["config"]["config"]["Env"],
        serde_json::json!(["A=1"])
    );
    assert_eq!(
        v["image"]["config"]["config"]["Labels"]["org.example"],
        "yes"
    );
    assert_eq!(v["image"]["created"], "1970-01-01T00:00:00Z");
    if require("skopeo") {
        let s = json(&run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/imp:a", reg.host()),
        ])));
        assert_eq!(s["Architecture"], "arm64");
        assert_eq!(s["Digest"], a["digest"]);
    }
    if require("umoci") {
        // umoci unpacks what import wrote into an OCI layout.
        let bundle = out.path().join("bundle");
        run(Command::new("umoci")
            .args([
                "unpack",
                "--rootless",
                "--image",
                &format!("{}:b", out.path().display()),
            ])
            .arg(&bundle));
        assert_eq!(
            std::fs::read(bundle.join("rootfs/bin/hello")).unwrap(),
            b"#!/bin/sh\necho hello\n"
        );
    }
    // A tarball of the same tree gives the same layer as the directory... after normalising
    // it too; and SOURCE_DATE_EPOCH changes the digest.
    let epoch = env
        .archway()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args([
            "image",
            "import",
            rootfs.path().to_str().unwrap(),
            "--platform",
            "linux/arm64",
            "--cmd",
            r#"["/bin/hello"]"#,
            "--env",
            "A=1",
            "--label",
            "org.example=yes",
            "--format",
            "json",
            "-t",
            &format!("{}/imp:epoch", reg.host()),
        ])
        .output()
        .unwrap();
    let epoch = json(&String::from_utf8_lossy(&epoch.stdout));
    assert_ne!(epoch["digest"], a["digest"]);
}

#[test]
fn rm_removes_tags_from_archway_and_distribution() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    push_busybox(&env, reg.host(), "rm/bb", "a");
    push_busybox(&env, reg.host(), "rm/bb", "b");
    env.ok(&["image", "rm", &format!("{}/rm/bb:a", reg.host())]);
    assert_eq!(
        env.ok(&["image", "tags", &format!("{}/rm/bb", reg.host())]),
        "b\n"
    );
    let err = env.fails(&["image", "rm", &format!("{}/rm/bb:a", reg.host())]);
    assert!(err.contains("tag not found"), "{err}");

    // distribution 2.8 cannot delete a tag alone: the manifest goes, with every tag.
    if let Some(dist) = DistributionProcess::start(None) {
        push_busybox(&env, &dist.addr, "rm/bb", "a");
        let out = env.ok(&["image", "rm", &format!("{}/rm/bb:a", dist.addr)]);
        assert!(out.contains("deleted manifest sha256:"), "{out}");
        let err = env.fails(&["image", "inspect", &format!("{}/rm/bb:a", dist.addr)]);
        assert!(err.contains("not found"), "{err}");
    }

    // OCI layouts: the name goes from index.json.
    let out = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:x", out.path().display());
    env.ok(&[
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &dest,
    ]);
    env.ok(&["image", "rm", &dest]);
    assert!(
        ImageLayout::open(out.path())
            .unwrap()
            .index()
            .unwrap()
            .manifests
            .is_empty()
    );
}

#[test]
fn login_against_archway_tokens_and_distribution_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!("alice:{}\n", bcrypt::hash("s3cret", 5).unwrap()),
    )
    .unwrap();
    let reg = RegistryProcess::start_with(&["--htpasswd", users.to_str().unwrap()]);
    let dist = DistributionProcess::start(Some(("bob", "hunter2")));
    let env = UserEnv::new();
    let src = format!("oci:{}:1.35", busybox_layout().display());

    let mut targets = vec![(reg.host().to_owned(), "alice", "s3cret")];
    if let Some(d) = &dist {
        targets.push((d.addr.clone(), "bob", "hunter2"));
    }
    for (host, user, pass) in targets {
        let dst = format!("{host}/private/busybox:1.35");
        // Without credentials: 401, and the message says what to do.
        let err = env.fails(&["image", "copy", "--all", "--quiet", &src, &dst]);
        assert!(
            err.contains(&format!("log in with `archway login {host}`")),
            "{err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
        // A wrong password is refused and not stored.
        let err = env.fails(&["login", &host, "-u", user, "-p", "wrong"]);
        assert!(err.contains(&host), "{err}");
        let config = env.docker_config_dir().join("config.json");
        assert!(
            !std::fs::read_to_string(&config)
                .unwrap_or_default()
                .contains(&host)
        );
        // --password-stdin, as the seed pipelines use it.
        let mut child = env
            .archway()
            .args(["login", "-u", user, "--password-stdin", &host])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{pass}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(std::fs::read_to_string(&config).unwrap().contains(&host));
        // Now pushes and pulls work with the stored credentials.
        env.ok(&["image", "copy", "--all", "--quiet", &src, &dst]);
        let v = json(&env.ok(&["image", "inspect", "--format", "json", &dst]));
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        env.ok(&["logout", &host]);
        assert!(!std::fs::read_to_string(&config).unwrap().contains(&host));
        env.fails(&["image", "inspect", &dst]);
        // --creds works without a stored login.
        env.ok(&[
            "image",
            "inspect",
            "--creds",
            &format!("{user}:{pass}"),
            &dst,
        ]);
    }
}

#[test]
fn bad_input_gives_one_line_errors_and_leaves_no_tag() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let one_line = |err: &str| {
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
    };
    // Unreachable registry.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = env.fails(&["image", "inspect", &format!("127.0.0.1:{port}/x:y")]);
    assert!(
        err.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{err}"
    );
    one_line(&err);
    // Unknown tag.
    push_busybox(&env, reg.host(), "bad/bb", "1.35");
    let err = env.fails(&["image", "inspect", &format!("{}/bad/bb:nope", reg.host())]);
    assert!(
        err.contains("manifest not found") && err.contains("archway image tags"),
        "{err}"
    );
    // Invalid reference.
    let err = env.fails(&["image", "inspect", "Bad/Name:tag"]);
    assert!(
        err.contains("invalid image reference `Bad/Name:tag`") && err.contains("lowercase"),
        "{err}"
    );
    one_line(&err);
    // Unknown transport.
    let err = env.fails(&[
        "image",
        "copy",
        "docker-archive:x.tar",
        &format!("{}/x:y", reg.host()),
    ]);
    assert!(err.contains("not supported"), "{err}");

    // Digest mismatch: a layout whose layer was altered on disk.
    let corrupt = tempfile::tempdir().unwrap();
    let layout_dir = corrupt.path().join("img");
    env.ok(&[
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("oci:{}:1.35", layout_dir.display()),
    ]);
    let layer = layout_dir
        .join("blobs/sha256/be09987f5103fd676cbf807fa2bd1fcc8b23c560ce4befe10151181298d0308f");
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let dst = format!("{}/corrupt/bb:1.35", reg.host());
    let err = env.fails(&[
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", layout_dir.display()),
        &dst,
    ]);
    assert!(
        err.contains("digest mismatch while copying") && err.contains("be09987f5103"),
        "{err}"
    );
    assert!(err.contains("nothing was tagged"), "{err}");
    let err = env.fails(&["image", "inspect", &dst]);
    assert!(err.contains("not found"), "tag left behind: {err}");
}

#[test]
fn large_blobs_stream_or_go_in_chunks_to_both_registries() {
    let reg = RegistryProcess::start();
    let dist = DistributionProcess::start(None);
    let env = UserEnv::new();
    // A rootfs whose layer is larger than the single-request limit (8 MiB) even compressed.
    let rootfs = tempfile::tempdir().unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(rootfs.path().join("blob.bin"), &data).unwrap();
    let src = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:big", src.path().display());
    let imported = json(&env.ok(&[
        "image",
        "import",
        rootfs.path().to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "--format",
        "json",
        "-t",
        &layout,
    ]));
    assert!(imported["layer_size"].as_u64().unwrap() > 8 * 1024 * 1024);

    let mut hosts = vec![reg.host().to_owned()];
    if let Some(d) = &dist {
        hosts.push(d.addr.clone());
    }
    for host in hosts {
        for (repo, extra) in [("streamed", None), ("chunked", Some("1048576"))] {
            let dst = format!("{host}/{repo}/big:1");
            let mut args = vec!["image", "copy", "--format", "json", &layout, &dst];
            if let Some(c) = extra {
                args.extend(["--chunk-size", c]);
            }
            let report = json(&env.ok(&args));
            assert_eq!(report["digest"], imported["digest"], "{host} {repo}");
            assert_eq!(report["blobs_copied"], 2);
            // Pull it back and compare the layer byte for byte.
            let back = tempfile::tempdir().unwrap();
            env.ok(&[
                "image",
                "copy",
                "--quiet",
                &dst,
                &format!("oci:{}:x", back.path().display()),
            ]);
            let layer = imported["layer"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:");
            assert_eq!(
                std::fs::read(src.path().join("blobs/sha256").join(layer)).unwrap(),
                std::fs::read(back.path().join("blobs/sha256").join(layer)).unwrap()
            );
        }
    }
}
