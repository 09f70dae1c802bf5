//! Software bills of materials: the packages of an unpacked root filesystem, as an SPDX 2.3
//! JSON document (what `syft`, `trivy` and Docker Scout read).
//!
//! [`scan_rootfs`] reads the package databases a root filesystem carries:
//!
//! * Debian and Ubuntu: `var/lib/dpkg/status`, and the one-file-per-package
//!   `var/lib/dpkg/status.d/*` that distroless images use (their `*.md5sums` are skipped).
//!   Only packages whose files are on disk count: `Status: deinstall ok config-files` and
//!   `purge ok not-installed` entries are left out.
//! * Alpine (and Wolfi): `lib/apk/db/installed`.
//! * RPM-based images (Fedora, UBI, Rocky, Amazon Linux, SUSE): **not read**. Their database
//!   is SQLite (`rpmdb.sqlite`), Berkeley DB or NDB, binary formats this crate does not parse;
//!   a found database is reported in [`Inventory::notes`] and in the document's
//!   `creationInfo.comment`, so an SBOM without those packages says so.
//! * Images without a package manager that ship `bin/busybox` get a `busybox` package, its
//!   version read from the `BusyBox v1.36.1` banner inside the binary (else `NOASSERTION`).
//!
//! Paths resolve inside the root as the container sees them (symlinks, even absolute ones,
//! never lead outside it). The document depends only on the inventory and [`SbomOptions`]:
//! packages are sorted, identifiers derive from package URLs, the namespace from the image
//! digest, and the creation time is given by the caller (`SOURCE_DATE_EPOCH`), so the same
//! root filesystem always yields the same bytes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use archway_oci::{Digest, Platform, Reference};
use serde::Serialize;

use crate::Error;
use crate::purl::purl;

/// The largest package database (or busybox binary) read; real ones are a few MiB.
pub const MAX_DATABASE_SIZE: u64 = 64 << 20;

/// `dpkg` states in which a package's files are on disk.
const DPKG_PRESENT_STATES: [&str; 6] = [
    "installed",
    "half-configured",
    "unpacked",
    "half-installed",
    "triggers-awaited",
    "triggers-pending",
];

/// Where a package was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ecosystem {
    /// A Debian package (`pkg:deb`).
    Deb,
    /// An Alpine package (`pkg:apk`).
    Apk,
    /// A binary recognised by its content (`pkg:generic`), e.g. a bare busybox.
    Binary,
}

/// One package of the root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: Option<String>,
    /// The package's architecture as its database writes it (`amd64`, `all`, `x86_64`).
    pub architecture: Option<String>,
    /// `Maintainer:` (dpkg) or `m:` (apk), usually `Name <email>`.
    pub maintainer: Option<String>,
    /// The source package it was built from, when the database names it.
    pub source: Option<String>,
    /// The database or file it was found in, relative to the root (`var/lib/dpkg/status`).
    pub found_in: String,
}

/// The fields of `/etc/os-release` that name the distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`, `alpine`, `ubuntu`.
    pub id: Option<String>,
    /// `VERSION_ID`, e.g. `12`, `3.19.1`.
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`, e.g. `bookworm` (testing releases have no `VERSION_ID`).
    pub version_codename: Option<String>,
    pub pretty_name: Option<String>,
}

impl OsRelease {
    /// The purl `distro` qualifier: `debian-12`, `alpine-3.19.1`, or `debian-trixie` for a
    /// release without a version number.
    pub fn distro(&self) -> Option<String> {
        let id = self.id.as_deref()?;
        let version = self
            .version_id
            .as_deref()
            .or(self.version_codename.as_deref())?;
        Some(format!("{id}-{version}"))
    }
}

/// What a root filesystem holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub os: Option<OsRelease>,
    /// Sorted by ecosystem, name, version and architecture; one entry per package URL.
    pub packages: Vec<Package>,
    /// What the scan could not cover (an RPM database, say), one sentence each.
    pub notes: Vec<String>,
}

impl Package {
    /// The package URL: `pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12`,
    /// `pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=alpine-3.19.1`, `pkg:generic/busybox@1.36.1`.
    pub fn purl(&self, os: Option<&OsRelease>) -> String {
        let distro = os.and_then(OsRelease::distro).unwrap_or_default();
        let upstream = self
            .source
            .as_deref()
            .filter(|s| *s != self.name)
            .unwrap_or("");
        let arch = self.architecture.as_deref().unwrap_or("");
        let namespace = |default: &'static str| {
            os.and_then(|o| o.id.clone())
                .unwrap_or_else(|| default.to_owned())
        };
        match self.ecosystem {
            Ecosystem::Deb => purl(
                "deb",
                Some(&namespace("debian")),
                &self.name,
                self.version.as_deref(),
                &[("arch", arch), ("distro", &distro), ("upstream", upstream)],
            ),
            Ecosystem::Apk => purl(
                "apk",
                Some(&namespace("alpine")),
                &self.name,
                self.version.as_deref(),
                &[("arch", arch), ("distro", &distro), ("upstream", upstream)],
            ),
            Ecosystem::Binary => purl(
                "generic",
                None,
                &self.name,
                self.version.as_deref(),
                &[("arch", arch)],
            ),
        }
    }
}

/// Reads the package databases of the root filesystem at `root`.
pub fn scan_rootfs(root: &Path) -> Result<Inventory, Error> {
    let mut inventory = Inventory::default();
    let os_release = match read_in_root(root, "etc/os-release")? {
        Some(b) => Some(b),
        None => read_in_root(root, "usr/lib/os-release")?,
    };
    inventory.os = os_release.map(|b| parse_os_release(&String::from_utf8_lossy(&b)));

    let mut packages = Vec::new();
    const DPKG_STATUS: &str = "var/lib/dpkg/status";
    if let Some(b) = read_in_root(root, DPKG_STATUS)? {
        packages.extend(parse_dpkg_status(&String::from_utf8_lossy(&b), DPKG_STATUS));
    }
    for name in dir_entries_in_root(root, "var/lib/dpkg/status.d")? {
        if name.starts_with('.') || name.ends_with(".md5sums") {
            continue;
        }
        let rel = format!("var/lib/dpkg/status.d/{name}");
        if let Some(b) = read_in_root(root, &rel)? {
            packages.extend(parse_dpkg_status(&String::from_utf8_lossy(&b), &rel));
        }
    }
    const APK_INSTALLED: &str = "lib/apk/db/installed";
    if let Some(b) = read_in_root(root, APK_INSTALLED)? {
        packages.extend(parse_apk_installed(
            &String::from_utf8_lossy(&b),
            APK_INSTALLED,
        ));
    }
    for rpmdb in [
        "var/lib/rpm/rpmdb.sqlite",
        "var/lib/rpm/Packages",
        "var/lib/rpm/Packages.db",
        "usr/lib/sysimage/rpm/rpmdb.sqlite",
        "usr/lib/sysimage/rpm/Packages.db",
    ] {
        if is_file_in_root(root, rpmdb) {
            inventory.notes.push(format!(
                "RPM database {rpmdb} found but not read: RPM packages are not listed"
            ));
        }
    }
    if !packages.iter().any(|p| p.name == "busybox") && is_file_in_root(root, "bin/busybox") {
        let version = read_in_root(root, "bin/busybox")?.and_then(|b| busybox_version(&b));
        packages.push(Package {
            ecosystem: Ecosystem::Binary,
            name: "busybox".to_owned(),
            version,
            architecture: None,
            maintainer: None,
            source: None,
            found_in: "bin/busybox".to_owned(),
        });
    }
    inventory.packages = normalize(packages, inventory.os.as_ref());
    Ok(inventory)
}

/// Sorts packages and keeps one per package URL.
fn normalize(mut packages: Vec<Package>, os: Option<&OsRelease>) -> Vec<Package> {
    packages.sort_by(|a, b| {
        (
            a.ecosystem,
            &a.name,
            &a.version,
            &a.architecture,
            &a.found_in,
        )
            .cmp(&(
                b.ecosystem,
                &b.name,
                &b.version,
                &b.architecture,
                &b.found_in,
            ))
    });
    let mut seen = BTreeSet::new();
    packages.retain(|p| seen.insert(p.purl(os)));
    packages
}

/// Resolves `rel` inside `root`; `None` when it does not exist (or a parent is not a directory).
fn resolve(root: &Path, rel: &str) -> Result<Option<std::path::PathBuf>, Error> {
    match archway_oci::layer::resolve_in_root(root, Path::new(rel), true) {
        Ok(p) => Ok(Some(p)),
        Err(e) if absent(&e) => Ok(None),
        Err(source) => Err(Error::Read {
            path: root.join(rel),
            source,
        }),
    }
}

fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn is_file_in_root(root: &Path, rel: &str) -> bool {
    matches!(resolve(root, rel), Ok(Some(p)) if p.is_file())
}

/// Reads a regular file inside the root, `None` if it is absent or not a regular file.
fn read_in_root(root: &Path, rel: &str) -> Result<Option<Vec<u8>>, Error> {
    let Some(path) = resolve(root, rel)? else {
        return Ok(None);
    };
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if absent(&e) => return Ok(None),
        Err(source) => return Err(Error::Read { path, source }),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_DATABASE_SIZE {
        return Err(Error::TooLarge {
            path,
            size: meta.len(),
            limit: MAX_DATABASE_SIZE,
        });
    }
    fs::read(&path)
        .map(Some)
        .map_err(|source| Error::Read { path, source })
}

/// The names in a directory inside the root, sorted; empty if it does not exist.
fn dir_entries_in_root(root: &Path, rel: &str) -> Result<Vec<String>, Error> {
    let Some(path) = resolve(root, rel)? else {
        return Ok(Vec::new());
    };
    let entries = match fs::read_dir(&path) {
        Ok(rd) => rd,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path, source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// One deb822 / apk paragraph: `(field, value)` pairs, continuation lines joined with `\n`.
type Paragraph = Vec<(String, String)>;

/// Splits deb822-style text into paragraphs. Blank (or whitespace-only) lines separate
/// paragraphs; lines starting with a space or tab continue the previous field.
fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut current: Paragraph = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A field of a dpkg paragraph (names are case-insensitive), `None` if absent or empty.
fn dpkg_field<'a>(p: &'a Paragraph, name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The packages of a dpkg `status` file (or one `status.d/` file) whose files are on disk.
pub fn parse_dpkg_status(text: &str, found_in: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        let Some(name) = dpkg_field(&p, "Package") else {
            continue;
        };
        if let Some(status) = dpkg_field(&p, "Status") {
            let state = status.split_whitespace().nth(2).unwrap_or("");
            if !DPKG_PRESENT_STATES.contains(&state) {
                continue;
            }
        }
        out.push(Package {
            ecosystem: Ecosystem::Deb,
            name: name.to_owned(),
            version: dpkg_field(&p, "Version").map(str::to_owned),
            architecture: dpkg_field(&p, "Architecture").map(str::to_owned),
            maintainer: dpkg_field(&p, "Maintainer").map(first_line),
            // `Source: gcc-12 (12.2.0-14)`: the name, without the version in parentheses.
            source: dpkg_field(&p, "Source")
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_owned),
            found_in: found_in.to_owned(),
        });
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// The packages of an apk `installed` database (`P:` name, `V:` version, `A:` arch,
/// `m:` maintainer, `o:` origin). Keys are case-sensitive: `p:` is "provides".
pub fn parse_apk_installed(text: &str, found_in: &str) -> Vec<Package> {
    let field = |p: &Paragraph, key: &str| {
        p.iter()
            .find(|(n, _)| n == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    paragraphs(text)
        .into_iter()
        .filter_map(|p| {
            Some(Package {
                ecosystem: Ecosystem::Apk,
                name: field(&p, "P")?,
                version: field(&p, "V"),
                architecture: field(&p, "A"),
                maintainer: field(&p, "m"),
                source: field(&p, "o"),
                found_in: found_in.to_owned(),
            })
        })
        .collect()
}

/// Parses `os-release(5)`: `KEY=value` lines, values optionally in single or double quotes
/// (double-quoted ones with backslash escapes).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        if value.is_empty() {
            continue;
        }
        match key.trim() {
            "ID" => os.id = Some(value),
            "VERSION_ID" => os.version_id = Some(value),
            "VERSION_CODENAME" => os.version_codename = Some(value),
            "PRETTY_NAME" => os.pretty_name = Some(value),
            _ => {}
        }
    }
    os
}

fn unquote(raw: &str) -> String {
    if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        return raw[1..raw.len() - 1].to_owned();
    }
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        let mut out = String::new();
        let mut chars = raw[1..raw.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    raw.to_owned()
}

/// The version in busybox's `BusyBox v1.36.1 (2023-06-05 …) multi-call binary` banner.
pub fn busybox_version(binary: &[u8]) -> Option<String> {
    const MARKER: &[u8] = b"BusyBox v";
    let at = binary.windows(MARKER.len()).position(|w| w == MARKER)?;
    let rest = &binary[at + MARKER.len()..];
    let len = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    let version = std::str::from_utf8(&rest[..len])
        .ok()?
        .trim_end_matches('.');
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// What the SPDX document says about the image it describes.
#[derive(Clone, Copy, Debug)]
pub struct SbomOptions<'a> {
    /// The image's name (`registry/repository`, a tag if any); its digest is `digest`.
    pub image: &'a Reference,
    /// The digest of the image manifest the root filesystem belongs to.
    pub digest: &'a Digest,
    /// The image's platform, for the image package's purl (`arch=`).
    pub platform: Option<&'a Platform>,
    /// Creation time, seconds since the epoch (`SOURCE_DATE_EPOCH` for reproducible builds).
    pub created: u64,
    /// The version in `creators: ["Tool: archway-<version>"]`.
    pub tool_version: &'a str,
}

/// The SPDX identifier of the image package (what the document `DESCRIBES`).
pub const IMAGE_SPDXID: &str = "SPDXRef-Image";
/// Base of every document namespace; the rest is the image name and digest.
pub const NAMESPACE_BASE: &str = "https://archway.invalid/spdx/";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxDocument<'a> {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdxid: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage<'a>>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage<'a> {
    name: &'a str,
    #[serde(rename = "SPDXID")]
    spdxid: String,
    version_info: &'a str,
    supplier: String,
    download_location: &'static str,
    files_analyzed: bool,
    license_concluded: &'static str,
    license_declared: &'static str,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

const NOASSERTION: &str = "NOASSERTION";

/// `Name <email>` as an SPDX supplier: `Person: Name (email)`.
fn supplier(maintainer: Option<&str>) -> String {
    let Some(m) = maintainer.map(str::trim).filter(|m| !m.is_empty()) else {
        return NOASSERTION.to_owned();
    };
    match m.split_once('<') {
        Some((name, rest)) => {
            let email = rest.split('>').next().unwrap_or("").trim();
            let name = name.trim();
            match (name.is_empty(), email.is_empty()) {
                (false, false) => format!("Person: {name} ({email})"),
                (true, false) => format!("Person: ({email})"),
                _ => format!("Person: {name}"),
            }
        }
        None => format!("Person: {m}"),
    }
}

/// An SPDX identifier: `SPDXRef-` then letters, digits, `.` and `-` only.
fn spdx_id(prefix: &str, name: &str, purl: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = Digest::sha256(purl.as_bytes());
    format!("SPDXRef-Package-{prefix}-{clean}-{}", &hash.hex()[..16])
}

/// The SPDX 2.3 JSON document for `inventory` (pretty-printed, ending in a newline).
pub fn spdx_json(inventory: &Inventory, opts: &SbomOptions<'_>) -> Vec<u8> {
    let os = inventory.os.as_ref();
    let image_name = opts.image.name();
    let digest = opts.digest.to_string();
    let mut image_qualifiers: Vec<(&str, &str)> = vec![("repository_url", &image_name)];
    if let Some(p) = opts.platform {
        image_qualifiers.push(("arch", &p.architecture));
    }
    if let Some(tag) = &opts.image.tag {
        image_qualifiers.push(("tag", tag));
    }
    let last_segment = opts
        .image
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&opts.image.repository);
    let image_purl = purl("oci", None, last_segment, Some(&digest), &image_qualifiers);
    let mut packages = vec![SpdxPackage {
        name: &image_name,
        spdxid: IMAGE_SPDXID.to_owned(),
        version_info: &digest,
        supplier: NOASSERTION.to_owned(),
        download_location: NOASSERTION,
        files_analyzed: false,
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION,
        copyright_text: NOASSERTION,
        source_info: None,
        external_refs: vec![purl_ref(image_purl)],
        primary_package_purpose: Some("CONTAINER"),
    }];
    let sorted = normalize(inventory.packages.clone(), os);
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".to_owned(),
        relationship_type: "DESCRIBES",
        related_spdx_element: IMAGE_SPDXID.to_owned(),
    }];
    for p in &sorted {
        let purl = p.purl(os);
        let (prefix, source) = match p.ecosystem {
            Ecosystem::Deb => ("deb", "the dpkg database"),
            Ecosystem::Apk => ("apk", "the apk database"),
            Ecosystem::Binary => ("binary", "the contents of"),
        };
        let id = spdx_id(prefix, &p.name, &purl);
        relationships.push(Relationship {
            spdx_element_id: IMAGE_SPDXID.to_owned(),
            relationship_type: "CONTAINS",
            related_spdx_element: id.clone(),
        });
        packages.push(SpdxPackage {
            name: &p.name,
            spdxid: id,
            version_info: p.version.as_deref().unwrap_or(NOASSERTION),
            supplier: supplier(p.maintainer.as_deref()),
            download_location: NOASSERTION,
            files_analyzed: false,
            license_concluded: NOASSERTION,
            license_declared: NOASSERTION,
            copyright_text: NOASSERTION,
            source_info: Some(format!(
                "acquired package info from {source} /{}",
                p.found_in
            )),
            external_refs: vec![purl_ref(purl)],
            primary_package_purpose: None,
        });
    }
    let comment = (!inventory.notes.is_empty()).then(|| inventory.notes.join(" "));
    let doc = SpdxDocument {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdxid: "SPDXRef-DOCUMENT",
        name: format!("{image_name}@{digest}"),
        document_namespace: format!(
            "{NAMESPACE_BASE}{image_name}/{}-{}",
            opts.digest.algorithm(),
            opts.digest.hex()
        ),
        creation_info: CreationInfo {
            created: archway_oci::config::rfc3339(opts.created),
            creators: vec![format!("Tool: archway-{}", opts.tool_version)],
            comment,
        },
        packages,
        relationships,
    };
    let mut out = serde_json::to_vec_pretty(&doc)
        .unwrap_or_else(|e| unreachable!("an SPDX document serialises: {e}"));
    out.push(b'\n');
    out
}

fn purl_ref(locator: String) -> ExternalRef {
    ExternalRef {
        reference_category: "PACKAGE-MANAGER",
        reference_type: "purl",
        reference_locator: locator,
    }
}

/// Scans `root` and returns its SPDX document: [`scan_rootfs`] then [`spdx_json`].
pub fn generate_spdx(root: &Path, opts: &SbomOptions<'_>) -> Result<Vec<u8>, Error> {
    Ok(spdx_json(&scan_rootfs(root)?, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Version: 2.36-9+deb12u4
Source: glibc
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
 .
 Package: not-a-package
Homepage: https://www.gnu.org/software/libc/libc.html

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: gone
Status: purge ok not-installed
Architecture: amd64

Package: libgcc-s1
Status: install ok installed
Architecture: amd64
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14
";

    #[test]
    fn dpkg_status_keeps_installed_packages_only() {
        let pkgs = parse_dpkg_status(STATUS, "var/lib/dpkg/status");
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["libc6", "libgcc-s1"]);
        assert_eq!(pkgs[0].version.as_deref(), Some("2.36-9+deb12u4"));
        assert_eq!(pkgs[0].source.as_deref(), Some("glibc"));
        assert_eq!(pkgs[1].source.as_deref(), Some("gcc-12"));
        assert_eq!(
            pkgs[1].purl(None),
            "pkg:deb/debian/libgcc-s1@12.2.0-14?arch=amd64&upstream=gcc-12"
        );
    }

    #[test]
    fn dpkg_without_status_counts_as_installed() {
        // distroless status.d files carry the stanza of one package.
        let pkgs = parse_dpkg_status("Package: tzdata\nVersion: 2024a-0+deb12u1\n", "x");
        assert_eq!(pkgs.len(), 1);
    }

    #[test]
    fn apk_installed_keys_are_case_sensitive() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nm:Timo Teräs <timo.teras@iki.fi>\no:musl\np:so:libc.musl-x86_64.so.1=1\n\nC:Q1def=\nP:busybox-binsh\nV:1.36.1-r5\nA:x86_64\no:busybox\n";
        let pkgs = parse_apk_installed(db, "lib/apk/db/installed");
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[0].name, "musl");
        let os = OsRelease {
            id: Some("alpine".into()),
            version_id: Some("3.19.1".into()),
            ..OsRelease::default()
        };
        assert_eq!(
            pkgs[1].purl(Some(&os)),
            "pkg:apk/alpine/busybox-binsh@1.36.1-r5?arch=x86_64&distro=alpine-3.19.1&upstream=busybox"
        );
        assert_eq!(
            supplier(pkgs[0].maintainer.as_deref()),
            "Person: Timo Teräs (timo.teras@iki.fi)"
        );
    }

    #[test]
    fn os_release_quotes() {
        let os = parse_os_release(
            "# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\nVERSION_CODENAME=bookworm\n",
        );
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(os.distro().as_deref(), Some("debian-12"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let testing = parse_os_release("ID=debian\nVERSION_CODENAME=trixie\n");
        assert_eq!(testing.distro().as_deref(), Some("debian-trixie"));
    }

    #[test]
    fn busybox_banner() {
        let mut bin = vec![0u8, 1, 2];
        bin.extend_from_slice(b"BusyBox v1.36.1 (2023-06-05 10:00:00 UTC) multi-call binary.\0");
        assert_eq!(busybox_version(&bin).as_deref(), Some("1.36.1"));
        assert_eq!(busybox_version(b"BusyBox vX"), None);
        assert_eq!(busybox_version(b"no banner"), None);
    }

    #[test]
    fn supplier_forms() {
        assert_eq!(supplier(None), "NOASSERTION");
        assert_eq!(supplier(Some("Jane")), "Person: Jane");
        assert_eq!(supplier(Some("Jane <j@x.org>")), "Person: Jane (j@x.org)");
    }

    #[test]
    fn spdx_ids_are_valid() {
        let id = spdx_id("deb", "libstdc++6", "pkg:deb/debian/libstdc%2B%2B6@12");
        assert!(id.starts_with("SPDXRef-Package-deb-libstdc--6-"));
        assert!(
            id["SPDXRef-".len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        );
    }
}
