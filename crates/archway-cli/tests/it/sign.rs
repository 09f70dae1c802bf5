//! `archway sign` / `archway verify`: key pairs, cosign-style signature attachments on a real
//! registry (the index and each platform signed), verification refusing another key, an
//! unsigned image and an image whose tag moved to other content after signing.

use std::process::Command;

use crate::support::{RegistryProcess, UserEnv, busybox_layout, run};

fn archway(env: &UserEnv, dir: &std::path::Path) -> Command {
    let mut c = env.archway();
    c.current_dir(dir);
    c
}

#[test]
fn signatures_verify_with_their_key_only_and_follow_the_content() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/team/app:1.0", reg.host());
    run(archway(&env, dir.path()).args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &image,
    ]));
    run(archway(&env, dir.path()).args(["sign", "--generate-key", "ours"]));
    run(archway(&env, dir.path()).args(["sign", "--generate-key", "theirs"]));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("ours.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // An existing key is not overwritten by accident.
    let out = archway(&env, dir.path())
        .args(["sign", "--generate-key", "ours"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let out =
        run(archway(&env, dir.path())
            .args(["sign", "--key", "ours.key", "--format", "json", &image]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The index and both platforms' manifests.
    assert_eq!(v["signed"].as_array().unwrap().len(), 3, "{v}");
    let index_digest = v["signed"][0].as_str().unwrap().to_owned();
    // The attachment is where cosign and containers/image look for it.
    let tags =
        run(archway(&env, dir.path()).args(["image", "tags", &format!("{}/team/app", reg.host())]));
    let sig_tag = format!("sha256-{}.sig", index_digest.trim_start_matches("sha256:"));
    assert!(tags.contains(&sig_tag), "{tags}");
    let raw = run(archway(&env, dir.path()).args([
        "image",
        "inspect",
        "--raw",
        &format!("{}/team/app:{sig_tag}", reg.host()),
    ]));
    assert!(
        raw.contains("application/vnd.dev.cosign.simplesigning.v1+json")
            && raw.contains("dev.cosignproject.cosign/signature"),
        "{raw}"
    );

    let ok = run(archway(&env, dir.path()).args(["verify", "--key", "ours.pub", &image]));
    assert!(ok.starts_with(&format!("verified {image}")), "{ok}");
    // By digest, too (the identity is the repository's).
    run(archway(&env, dir.path()).args([
        "verify",
        "--key",
        "ours.pub",
        &format!("{}/team/app@{index_digest}", reg.host()),
    ]));

    let fails = |args: &[&str]| {
        let out = archway(&env, dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fails(&["verify", "--key", "theirs.pub", &image]);
    assert!(e.contains("does not verify with theirs.pub"), "{e}");
    assert!(e.contains("made with another key"), "{e}");

    // A platform's manifest was signed for the tag's identity too: pulled under another
    // tag, that identity does not match.
    let arm = format!("{}/team/app:arm", reg.host());
    run(archway(&env, dir.path()).args([
        "image",
        "copy",
        "--quiet",
        "--platform",
        "linux/arm64",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &arm,
    ]));
    let e = fails(&["verify", "--key", "ours.pub", &arm]);
    assert!(e.contains("does not match"), "{e}");

    // Other content: no signature.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("tampered"), "not what was signed\n").unwrap();
    let other = format!("{}/team/app:2.0", reg.host());
    run(archway(&env, dir.path()).args([
        "image",
        "import",
        rootfs.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "-t",
        &other,
    ]));
    let e = fails(&["verify", "--key", "ours.pub", &other]);
    assert!(e.contains("is not signed"), "{e}");
    // The signed tag moved to that content after signing: refused.
    run(archway(&env, dir.path()).args(["image", "copy", "--quiet", &other, &image]));
    let e = fails(&["verify", "--key", "ours.pub", &image]);
    assert!(e.contains("is not signed"), "{e}");
    // A signature copied for another tag's identity does not count for this one.
    run(archway(&env, dir.path()).args(["sign", "--key", "ours.key", &other]));
    let third = format!("{}/team/app:3.0", reg.host());
    run(archway(&env, dir.path()).args(["image", "copy", "--quiet", &other, &third]));
    let e = fails(&["verify", "--key", "ours.pub", &third]);
    assert!(e.contains("does not verify"), "{e}");

    // `archway build --push --sign-key` signs what it pushes.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/team/app@{index_digest}\nCOPY hello.txt /hello.txt\n",
            reg.host()
        ),
    )
    .unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    let built = format!("{}/team/built:1", reg.host());
    run(archway(&env, dir.path()).args([
        "build",
        ctx.to_str().unwrap(),
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &built,
        "--push",
        "--sign-key",
        "ours.key",
        "--quiet",
    ]));
    run(archway(&env, dir.path()).args(["verify", "--key", "ours.pub", &built]));
    let e = fails(&["verify", "--key", "theirs.pub", &built]);
    assert!(e.contains("does not verify"), "{e}");
}

/// `archway build --push --sbom`: each platform's image gets an SPDX document listing its
/// packages, attached as an OCI 1.1 referrer.
#[test]
fn build_attaches_an_sbom_listing_the_images_packages_per_platform() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let dir = tempfile::tempdir().unwrap();
    run(archway(&env, dir.path()).args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("{}/library/busybox:1.35", reg.host()),
    ]));
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("dpkg")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/library/busybox:1.35\nCOPY dpkg/status /var/lib/dpkg/status\nCOPY os-release /etc/os-release\n",
            reg.host()
        ),
    )
    .unwrap();
    std::fs::write(
        ctx.join("dpkg/status"),
        "Package: busybox-static\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1:1.35.0-4+b3\nMaintainer: Debian Install System Team <debian-boot@lists.debian.org>\nDescription: Standalone rescue shell with tons of builtin utilities\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: arm64\nVersion: 2.36-9+deb12u4\nDescription: GNU C Library\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    )
    .unwrap();
    let image = format!("{}/team/sbom:1", reg.host());
    run(archway(&env, dir.path()).args([
        "build",
        ctx.to_str().unwrap(),
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &image,
        "--push",
        "--sbom",
        "--quiet",
    ]));
    let out = run(archway(&env, dir.path()).args([
        "image",
        "referrers",
        "--artifact-type",
        "application/spdx+json",
        "--format",
        "json",
        &image,
    ]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let platforms: Vec<&str> = rows.iter().filter_map(|r| r["platform"].as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{out}");
    // Read the arm64 SBOM back through an OCI layout.
    let arm = rows
        .iter()
        .find(|r| r["platform"] == "linux/arm64")
        .unwrap();
    let layout = dir.path().join("sbom-layout");
    run(archway(&env, dir.path()).args([
        "image",
        "copy",
        "--quiet",
        &format!(
            "{}/team/sbom@{}",
            reg.host(),
            arm["digest"].as_str().unwrap()
        ),
        &format!("oci:{}:sbom", layout.display()),
    ]));
    let mut spdx = None;
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        if text.contains("SPDX-2.3") {
            spdx = Some(text);
        }
    }
    let spdx = spdx.expect("an SPDX document among the referrer's blobs");
    let doc: serde_json::Value = serde_json::from_str(&spdx).unwrap();
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"busybox-static"), "{names:?}");
    assert!(names.contains(&"libc6"), "{names:?}");
    // Package URLs as the purl spec writes them (`+` encoded), with the distribution.
    assert!(
        spdx.contains("pkg:deb/debian/busybox-static@1:1.35.0-4%2Bb3?arch=arm64&distro=debian-12"),
        "{spdx}"
    );
}

/// Provenance is attached by default with `--push`: one in-toto SLSA v1 statement per
/// platform naming that platform's base image by the digest the build pulled, the
/// Dockerfile's digest and the build arguments; with SOURCE_DATE_EPOCH, rebuilding on a
/// clean store gives the same statements (nothing new is attached). `--provenance=false
/// --sbom=false` attaches nothing.
#[test]
fn provenance_names_each_platforms_base_digest_and_is_reproducible() {
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/library/busybox:1.35", reg.host());
    run(archway(&env, dir.path()).args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &base,
    ]));
    // The digest of each platform's base manifest, from the index.
    let index: serde_json::Value = serde_json::from_str(&run(
        archway(&env, dir.path()).args(["image", "inspect", "--raw", &base])
    ))
    .unwrap();
    let base_digest = |arch: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = "ARG BASE\nFROM $BASE\nARG TARGETARCH\nARG FLAVOUR\nRUN echo $TARGETARCH $FLAVOUR > /made\n";
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let image = format!("{}/team/prov:1", reg.host());
    let build = |store: &str| {
        let mut c = archway(&env, dir.path());
        c.env("SOURCE_DATE_EPOCH", "1700000000").args([
            "build",
            ctx.to_str().unwrap(),
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "--build-arg",
            "FLAVOUR=plain",
            "-t",
            &image,
            "--push",
            "--cache-dir",
            store,
        ]);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = build(dir.path().join("store-a").to_str().unwrap());
    assert!(
        said.contains("attached 2 provenance attestations"),
        "{said}"
    );
    assert!(said.contains("attached 2 SBOMs"), "{said}");
    let statements = || -> Vec<serde_json::Value> {
        serde_json::from_str(&run(archway(&env, dir.path()).args([
            "image",
            "referrers",
            "--artifact-type",
            "application/vnd.in-toto+json",
            "--content",
            "--format",
            "json",
            &image,
        ])))
        .unwrap()
    };
    let first = statements();
    assert_eq!(first.len(), 2, "{first:#?}");
    for row in &first {
        let platform = row["platform"].as_str().unwrap();
        let arch = platform.rsplit('/').next().unwrap();
        let st = &row["content"];
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(
            st["subject"][0]["digest"]["sha256"],
            row["subject"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let def = &st["predicate"]["buildDefinition"];
        assert_eq!(def["externalParameters"]["platform"], platform);
        assert_eq!(def["externalParameters"]["buildArgs"]["FLAVOUR"], "plain");
        assert_eq!(
            def["externalParameters"]["dockerfile"]["digest"]["sha256"],
            sha256_hex(dockerfile.as_bytes())
        );
        let deps = def["resolvedDependencies"].as_array().unwrap();
        let want = base_digest(arch);
        assert!(
            deps.iter().any(
                |d| d["digest"]["sha256"] == want.trim_start_matches("sha256:")
                    && d["uri"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("platform=linux%2F{arch}"))
            ),
            "{platform}: the base {want} is not among {deps:#?}"
        );
        assert_eq!(
            st["predicate"]["runDetails"]["metadata"]["startedOn"],
            "2023-11-14T22:13:20Z"
        );
    }
    // The same build on a clean store: the same statements, so nothing new refers to it.
    let said = build(dir.path().join("store-b").to_str().unwrap());
    assert!(
        said.contains("attached 2 provenance attestations"),
        "{said}"
    );
    let digests = |rows: &[serde_json::Value]| -> Vec<String> {
        let mut d: Vec<String> = rows
            .iter()
            .map(|r| r["digest"].as_str().unwrap().to_owned())
            .collect();
        d.sort();
        d
    };
    assert_eq!(digests(&statements()), digests(&first));
    let all: Vec<serde_json::Value> = serde_json::from_str(&run(archway(&env, dir.path()).args([
        "image",
        "referrers",
        "--format",
        "json",
        &image,
    ])))
    .unwrap();
    assert_eq!(
        all.len(),
        4,
        "two SBOMs and two statements, not more: {all:#?}"
    );
    // Turned off: nothing attached.
    let plain = format!("{}/team/plain:1", reg.host());
    let out = archway(&env, dir.path())
        .args([
            "build",
            ctx.to_str().unwrap(),
            "--build-arg",
            &format!("BASE={base}"),
            "--build-arg",
            "FLAVOUR=other",
            "-t",
            &plain,
            "--push",
            "--provenance=false",
            "--sbom=false",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let none: Vec<serde_json::Value> =
        serde_json::from_str(&run(archway(&env, dir.path()).args([
            "image",
            "referrers",
            "--format",
            "json",
            &plain,
        ])))
        .unwrap();
    assert!(none.is_empty(), "{none:#?}");
}

fn sha256_hex(data: &[u8]) -> String {
    archway_oci::Digest::sha256(data).hex().to_owned()
}
