//! SBOMs of synthetic root filesystems, compared with golden SPDX documents.

use std::fs;
use std::path::Path;

use archway_attest::sbom::{Ecosystem, SbomOptions, generate_spdx, scan_rootfs};
use archway_oci::{Digest, Platform, Reference};

use crate::golden;

fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn symlink(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// An SBOM of `root` for `image` at a fixed time and tool version.
fn sbom(root: &Path, image: &str, platform: Option<&Platform>) -> Vec<u8> {
    let image: Reference = image.parse().unwrap();
    let digest = Digest::sha256(image.to_string().as_bytes());
    generate_spdx(
        root,
        &SbomOptions {
            image: &image,
            digest: &digest,
            platform,
            created: 1_700_000_000,
            tool_version: "0.1.0",
        },
    )
    .unwrap()
}

const DEBIAN_OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
NAME=\"Debian GNU/Linux\"
VERSION_ID=\"12\"
VERSION=\"12 (bookworm)\"
VERSION_CODENAME=bookworm
ID=debian
";

const DPKG_STATUS: &str = "Package: zlib1g
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 168
Maintainer: Mark Brown <broonie@debian.org>
Architecture: amd64
Multi-Arch: same
Source: zlib
Version: 1:1.2.13.dfsg-1
Provides: libz1
Depends: libc6 (>= 2.14)
Description: compression library - runtime
 zlib is a library implementing the deflate compression method found
 in gzip and PKZIP.  This package includes the shared library.
 .
 Package: not-a-real-package
Homepage: http://zlib.net/

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system. This package includes shared versions of the standard C library
 and the standard math library, as well as many others.

Package: libstdc++6
Status: install ok installed
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14

Package: libc6
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: i386
Source: glibc
Version: 2.36-9+deb12u4

Package: vim-tiny
Status: deinstall ok config-files
Architecture: amd64
Version: 2:9.0.1378-2
Description: Vi IMproved - enhanced vi editor - compact version

Package: nano
Status: purge ok not-installed
Architecture: amd64

Package: tzdata
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: all
Version: 2024a-0+deb12u1
";

#[test]
fn debian_dpkg_status() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // os-release through an absolute symlink, as Debian ships it: it must resolve inside root.
    write(root, "usr/lib/os-release", DEBIAN_OS_RELEASE);
    symlink(root, "etc/os-release", "/usr/lib/os-release");
    write(root, "var/lib/dpkg/status", DPKG_STATUS);

    let inv = scan_rootfs(root).unwrap();
    let names: Vec<(&str, Option<&str>)> = inv
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.architecture.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("libc6", Some("amd64")),
            ("libc6", Some("i386")),
            ("libstdc++6", Some("amd64")),
            ("tzdata", Some("all")),
            ("zlib1g", Some("amd64")),
        ],
        "deinstalled, purged and description-embedded entries are left out"
    );
    assert_eq!(
        inv.os.as_ref().unwrap().distro().as_deref(),
        Some("debian-12")
    );

    let amd64 = Platform::linux_amd64();
    let doc = sbom(root, "127.0.0.1:5000/team/app:1.0", Some(&amd64));
    golden::check("debian.spdx.json", &doc);
    // Same input, same bytes.
    assert_eq!(doc, sbom(root, "127.0.0.1:5000/team/app:1.0", Some(&amd64)));

    let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(v["spdxVersion"], "SPDX-2.3");
    assert_eq!(v["dataLicense"], "CC0-1.0");
    assert_eq!(v["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(v["creationInfo"]["creators"][0], "Tool: archway-0.1.0");
    let packages = v["packages"].as_array().unwrap();
    assert_eq!(packages.len(), 6, "the image and five packages");
    let zlib = packages.iter().find(|p| p["name"] == "zlib1g").unwrap();
    assert_eq!(
        zlib["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib"
    );
    assert_eq!(zlib["supplier"], "Person: Mark Brown (broonie@debian.org)");
    assert_eq!(zlib["licenseDeclared"], "NOASSERTION");
    assert_eq!(zlib["filesAnalyzed"], false);
    let relationships = v["relationships"].as_array().unwrap();
    assert_eq!(relationships[0]["relationshipType"], "DESCRIBES");
    assert_eq!(relationships.len(), 6);
    assert!(
        relationships[1..]
            .iter()
            .all(|r| r["relationshipType"] == "CONTAINS" && r["spdxElementId"] == "SPDXRef-Image")
    );
    // Identifiers are unique and of SPDX's alphabet.
    let mut ids: Vec<&str> = packages
        .iter()
        .map(|p| p["SPDXID"].as_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| {
        id.strip_prefix("SPDXRef-")
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    }));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), packages.len());
}

#[test]
fn distroless_status_d() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "etc/os-release", DEBIAN_OS_RELEASE);
    write(
        root,
        "var/lib/dpkg/status.d/base-files",
        "Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\nMaintainer: Santiago Vila <sanvila@debian.org>\n",
    );
    write(
        root,
        "var/lib/dpkg/status.d/libssl3",
        "Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.11-1~deb12u2\nArchitecture: amd64\n",
    );
    write(
        root,
        "var/lib/dpkg/status.d/libssl3.md5sums",
        "0123456789abcdef  usr/lib/x86_64-linux-gnu/libssl.so.3\n",
    );
    write(
        root,
        "var/lib/dpkg/status.d/netbase",
        "Package: netbase\nVersion: 6.4\nArchitecture: all\n",
    );
    let inv = scan_rootfs(root).unwrap();
    let names: Vec<&str> = inv.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base-files", "libssl3", "netbase"]);
    assert_eq!(inv.packages[1].found_in, "var/lib/dpkg/status.d/libssl3");
    golden::check(
        "distroless.spdx.json",
        &sbom(root, "gcr.io/distroless/base-debian12:nonroot", None),
    );
}

#[test]
fn alpine_apk_installed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "etc/os-release",
        "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\nPRETTY_NAME=\"Alpine Linux v3.19\"\n",
    );
    write(
        root,
        "lib/apk/db/installed",
        "C:Q1Jz7sKe4R0cY4Vb0Mq5Nk3n2xwZk=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407086
I:667648
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1705500541
c:c89bbb2b7e93d67f48e1e1b4e5d4a5c3c5e0f0a1
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755

C:Q1vVp8a0m0fjVbF0vPo2Ta2fAbC8=
P:busybox
V:1.36.1-r15
A:x86_64
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
D:so:libc.musl-x86_64.so.1

C:Q1aaaa
P:busybox-binsh
V:1.36.1-r15
A:x86_64
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
",
    );
    write(
        root,
        "bin/busybox",
        b"\x7fELF...BusyBox v1.36.1 (2024-01-01) multi-call binary.\0",
    );
    let inv = scan_rootfs(root).unwrap();
    let names: Vec<&str> = inv.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["busybox", "busybox-binsh", "musl"],
        "the apk-owned busybox is not reported a second time as a binary"
    );
    assert!(inv.packages.iter().all(|p| p.ecosystem == Ecosystem::Apk));
    golden::check(
        "alpine.spdx.json",
        &sbom(root, "alpine:3.19", Some(&Platform::linux_amd64())),
    );
}

#[test]
fn busybox_image_without_package_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut binary = vec![0x7f, b'E', b'L', b'F'];
    binary.extend(std::iter::repeat_n(0u8, 4096));
    binary.extend_from_slice(b"BusyBox v1.36.1 (2023-05-19 00:00:00 UTC) multi-call binary.\n");
    write(root, "bin/busybox", &binary);
    symlink(root, "bin/sh", "busybox");
    let inv = scan_rootfs(root).unwrap();
    assert_eq!(inv.packages.len(), 1);
    assert_eq!(inv.packages[0].ecosystem, Ecosystem::Binary);
    assert_eq!(inv.packages[0].version.as_deref(), Some("1.36.1"));
    golden::check(
        "busybox.spdx.json",
        &sbom(root, "busybox:1.36", Some(&Platform::linux_arm64())),
    );

    // Without a recognisable banner the version is NOASSERTION.
    write(root, "bin/busybox", b"\x7fELF stripped");
    let v: serde_json::Value = serde_json::from_slice(&sbom(root, "busybox:1.36", None)).unwrap();
    assert_eq!(v["packages"][1]["name"], "busybox");
    assert_eq!(v["packages"][1]["versionInfo"], "NOASSERTION");
    assert_eq!(
        v["packages"][1]["externalRefs"][0]["referenceLocator"],
        "pkg:generic/busybox"
    );
}

#[test]
fn rpm_databases_are_reported_as_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "etc/os-release", "ID=fedora\nVERSION_ID=39\n");
    write(root, "var/lib/rpm/rpmdb.sqlite", b"SQLite format 3\0");
    let inv = scan_rootfs(root).unwrap();
    assert!(inv.packages.is_empty());
    assert_eq!(inv.notes.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&sbom(root, "fedora:39", None)).unwrap();
    assert!(
        v["creationInfo"]["comment"]
            .as_str()
            .unwrap()
            .contains("var/lib/rpm/rpmdb.sqlite found but not read")
    );
}

#[test]
fn symlinks_never_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    write(
        outside.path(),
        "status",
        "Package: host-secret\nStatus: install ok installed\nVersion: 1\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let target = outside.path().join("status");
    symlink(root, "var/lib/dpkg/status", target.to_str().unwrap());
    symlink(
        root,
        "lib/apk/db/installed",
        "../../../../../../../../etc/passwd",
    );
    let inv = scan_rootfs(root).unwrap();
    assert!(inv.packages.is_empty(), "{:?}", inv.packages);
}

#[test]
fn empty_root_gives_an_sbom_of_the_image_alone() {
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&sbom(dir.path(), "scratch-app:1", None)).unwrap();
    assert_eq!(v["packages"].as_array().unwrap().len(), 1);
    assert_eq!(v["packages"][0]["primaryPackagePurpose"], "CONTAINER");
    assert!(
        v["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("https://archway.invalid/spdx/docker.io/library/scratch-app/sha256-")
    );
}
