//! Local manifest lists, as `docker manifest` and `podman manifest` keep them: created from
//! images in registries, annotated locally, pushed as an OCI index or a Docker manifest list.
//!
//! A list lives as one JSON file under the user's data directory
//! (`$XDG_DATA_HOME/archway/manifests`, default `~/.local/share/archway/manifests`), named
//! after the list's reference and replaced atomically on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use archway_oci::{
    Descriptor, Digest, Index, ManifestKind, ParsedManifest, Platform, Reference, media_type,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::copy::{CopyOptions, CopyReport, End, Selection, copy};
use crate::error::{ClientError, Result};
use crate::location::Location;

/// The media type a list is pushed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// OCI image index.
    Oci,
    /// Docker manifest list (schema 2).
    V2s2,
}

impl ListFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ListFormat::Oci => media_type::OCI_INDEX,
            ListFormat::V2s2 => media_type::DOCKER_MANIFEST_LIST,
        }
    }
}

/// One image of a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Where the image was found (`registry/repository[:tag]@digest`).
    pub image: String,
    pub descriptor: Descriptor,
}

/// A local manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestList {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ListFormat>,
    pub entries: Vec<ListEntry>,
}

impl ManifestList {
    /// The format pushed: explicit, else Docker when every entry is a Docker manifest, else OCI.
    pub fn effective_format(&self) -> ListFormat {
        self.format.unwrap_or_else(|| {
            if !self.entries.is_empty()
                && self
                    .entries
                    .iter()
                    .all(|e| e.descriptor.media_type == media_type::DOCKER_MANIFEST)
            {
                ListFormat::V2s2
            } else {
                ListFormat::Oci
            }
        })
    }

    /// The index this list pushes as.
    pub fn to_index(&self) -> Index {
        let mut index = Index::new_oci();
        index.media_type = Some(self.effective_format().media_type().to_owned());
        index.manifests = self.entries.iter().map(|e| e.descriptor.clone()).collect();
        index
    }

    fn find_platform(&self, p: &Platform) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.descriptor
                .platform
                .as_ref()
                .is_some_and(|ep| ep.matches(p))
        })
    }

    /// Adds an entry; a second entry for the same platform is refused unless `amend`, which
    /// replaces the first.
    fn insert(&mut self, entry: ListEntry, amend: bool) -> Result<()> {
        let platform = entry
            .descriptor
            .platform
            .clone()
            .ok_or_else(|| ClientError::Protocol(format!("{} has no platform", entry.image)))?;
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.descriptor.digest == entry.descriptor.digest)
        {
            self.entries[i] = entry;
            return Ok(());
        }
        match self.find_platform(&platform) {
            Some(i) if amend => self.entries[i] = entry,
            Some(i) => {
                return Err(ClientError::Protocol(format!(
                    "{} already has an image for {platform} ({}); pass --amend to replace it",
                    self.name, self.entries[i].image
                )));
            }
            None => self.entries.push(entry),
        }
        Ok(())
    }
}

/// Where lists are kept.
#[derive(Clone, Debug)]
pub struct ListStore {
    dir: PathBuf,
}

fn file_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect::<String>()
        + ".json"
}

/// Normalises a list name to `registry/repository:tag`.
pub fn list_name(s: &str) -> Result<String> {
    let r: Reference = s.strip_prefix("docker://").unwrap_or(s).parse()?;
    if r.digest.is_some() {
        return Err(ClientError::Protocol(format!(
            "`{s}`: a manifest list is named by a tag, not a digest"
        )));
    }
    Ok(format!(
        "{}:{}",
        r.name(),
        r.tag.as_deref().unwrap_or("latest")
    ))
}

impl ListStore {
    /// `$XDG_DATA_HOME/archway/manifests`, else `~/.local/share/archway/manifests`.
    pub fn default_location() -> ListStore {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".local/share"));
        ListStore {
            dir: base.join("archway/manifests"),
        }
    }

    pub fn at(dir: impl Into<PathBuf>) -> ListStore {
        ListStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(file_name(name))
    }

    /// The list called `name` (already normalised), if there is one.
    pub fn load(&self, name: &str) -> Result<Option<ManifestList>> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                ClientError::Protocol(format!(
                    "{} is corrupt: {e}; remove it with `archway manifest rm {name}`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::Io {
                context: path.display().to_string(),
                source: e,
            }),
        }
    }

    fn require(&self, name: &str) -> Result<ManifestList> {
        self.load(name)?.ok_or_else(|| ClientError::NotFound {
            what: "local manifest list",
            reference: name.to_owned(),
            hint: format!("; create it with `archway manifest create {name} IMAGE...`"),
        })
    }

    pub fn save(&self, list: &ManifestList) -> Result<()> {
        let path = self.path(&list.name);
        let bytes = serde_json::to_vec_pretty(list).unwrap_or_default();
        archway_oci::atomic_file::write(&path, &bytes).map_err(|e| ClientError::Io {
            context: path.display().to_string(),
            source: e,
        })
    }

    /// Deletes a list; returns whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ClientError::Io {
                context: self.path(name).display().to_string(),
                source: e,
            }),
        }
    }
}

/// Platform fields given on the command line (`--os --arch --variant --os-version
/// --os-features`).
#[derive(Clone, Debug, Default)]
pub struct PlatformOverride {
    pub os: Option<String>,
    pub arch: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    pub os_features: Option<Vec<String>>,
}

impl PlatformOverride {
    pub fn is_empty(&self) -> bool {
        self.os.is_none()
            && self.arch.is_none()
            && self.variant.is_none()
            && self.os_version.is_none()
            && self.os_features.is_none()
    }

    /// Applies the overrides to `base` (or to nothing), normalising aliases.
    pub fn apply(&self, base: Option<Platform>) -> Result<Option<Platform>> {
        if self.is_empty() {
            return Ok(base);
        }
        let mut p = base.unwrap_or_else(|| Platform::new("", "", None));
        if let Some(os) = &self.os {
            p.os = os.clone();
        }
        if let Some(arch) = &self.arch {
            p.architecture = arch.clone();
            if self.variant.is_none() {
                p.variant = None;
            }
        }
        if let Some(v) = &self.variant {
            p.variant = Some(v.clone()).filter(|v| !v.is_empty());
        }
        if let Some(v) = &self.os_version {
            p.os_version = Some(v.clone());
        }
        if let Some(f) = &self.os_features {
            p.os_features = Some(f.clone());
        }
        if p.os.is_empty() || p.architecture.is_empty() {
            return Err(ClientError::Protocol(
                "a platform needs both --os and --arch".to_owned(),
            ));
        }
        // Validate the architecture and resolve aliases (aarch64 → arm64), but keep an
        // explicitly given variant such as arm64/v8 as written.
        let spec = match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        };
        let normal: Platform = spec
            .parse()
            .map_err(|e: archway_oci::PlatformError| ClientError::Protocol(e.to_string()))?;
        p.os = normal.os;
        p.architecture = normal.architecture;
        if self.variant.is_none() {
            p.variant = normal.variant.or(p.variant);
        }
        Ok(Some(p))
    }
}

/// The entries an image contributes: itself, or with `all` every image of its index.
async fn entries_for(
    client: &Client,
    image: &str,
    all: bool,
    overrides: &PlatformOverride,
) -> Result<Vec<ListEntry>> {
    let location = Location::parse(image)?;
    let Location::Registry(r) = &location else {
        return Err(ClientError::Protocol(format!(
            "{image}: manifest lists reference images in registries; push it first (`archway image copy {image} docker://REGISTRY/NAME:TAG`)"
        )));
    };
    let end = End::source(&location)?;
    let m = end.root(client).await?;
    let parsed = ParsedManifest::parse(&m.bytes, Some(&m.media_type)).map_err(|source| {
        ClientError::Manifest {
            reference: r.to_string(),
            source,
        }
    })?;
    let pinned = |d: &Digest| r.with_digest(d.clone()).to_string();
    match parsed.kind {
        ManifestKind::Image => {
            let config = match &parsed.config {
                Some(c) => crate::image::fetch_config(client, &end, c, &r.to_string()).await?,
                None => archway_oci::config::ImageConfig::default(),
            };
            let platform = overrides.apply(config.platform())?.ok_or_else(|| {
                ClientError::Protocol(format!(
                    "{r} has no platform in its config (os/architecture); give it with `archway manifest add LIST {image} --os linux --arch arm64`"
                ))
            })?;
            let mut d =
                Descriptor::new(m.media_type.clone(), m.digest.clone(), m.bytes.len() as u64);
            d.platform = Some(platform);
            Ok(vec![ListEntry {
                image: format!(
                    "{}:{}@{}",
                    r.name(),
                    r.tag_or_latest().unwrap_or("latest"),
                    m.digest
                ),
                descriptor: d,
            }])
        }
        ManifestKind::Index => {
            if all {
                parsed
                    .manifests
                    .iter()
                    .map(|d| {
                        if d.platform.is_none() {
                            return Err(ClientError::Protocol(format!(
                                "{r}: entry {} has no platform; add it on its own with --os/--arch",
                                d.digest
                            )));
                        }
                        Ok(ListEntry {
                            image: pinned(&d.digest),
                            descriptor: d.clone(),
                        })
                    })
                    .collect()
            } else {
                // Pick one platform, as podman does: the one asked for, else this machine's.
                let want = if overrides.is_empty() {
                    Platform::host()
                } else {
                    overrides.apply(None)?.unwrap_or_else(Platform::host)
                };
                let d = parsed
                    .manifests
                    .iter()
                    .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(&want)))
                    .ok_or_else(|| ClientError::PlatformNotFound {
                        reference: r.to_string(),
                        platform: want.to_string(),
                        available: parsed
                            .manifests
                            .iter()
                            .map(|d| {
                                d.platform
                                    .as_ref()
                                    .map_or_else(|| "unknown".into(), ToString::to_string)
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                Ok(vec![ListEntry {
                    image: pinned(&d.digest),
                    descriptor: d.clone(),
                }])
            }
        }
    }
}

/// `archway manifest create LIST IMAGE...`.
pub async fn create(
    client: &Client,
    store: &ListStore,
    name: &str,
    images: &[String],
    amend: bool,
    all: bool,
    format: Option<ListFormat>,
) -> Result<ManifestList> {
    let name = list_name(name)?;
    let mut list = match store.load(&name)? {
        Some(existing) if amend => existing,
        Some(_) => {
            return Err(ClientError::Protocol(format!(
                "manifest list {name} already exists; pass --amend to add to it, or remove it with `archway manifest rm {name}`"
            )));
        }
        None => ManifestList {
            name: name.clone(),
            format: None,
            entries: Vec::new(),
        },
    };
    if format.is_some() {
        list.format = format;
    }
    for image in images {
        let location = Location::parse(image)?;
        if !all && let Location::Registry(r) = &location {
            // docker manifest create refuses lists as entries; so do we, with a hint.
            let m = End::source(&location)?.root(client).await?;
            if archway_oci::media_type::is_index(&m.media_type) {
                return Err(ClientError::Protocol(format!(
                    "{r} is a manifest list itself; add its images with `archway manifest create --all` or `archway manifest add --all {name} {image}`"
                )));
            }
        }
        for entry in entries_for(client, image, all, &PlatformOverride::default()).await? {
            list.insert(entry, amend)?;
        }
    }
    store.save(&list)?;
    Ok(list)
}

/// `archway manifest add LIST IMAGE`.
pub async fn add(
    client: &Client,
    store: &ListStore,
    name: &str,
    image: &str,
    all: bool,
    overrides: &PlatformOverride,
    amend: bool,
) -> Result<ManifestList> {
    let name = list_name(name)?;
    let mut list = store.load(&name)?.unwrap_or(ManifestList {
        name: name.clone(),
        format: None,
        entries: Vec::new(),
    });
    for entry in entries_for(client, image, all, overrides).await? {
        list.insert(entry, amend)?;
    }
    store.save(&list)?;
    Ok(list)
}

fn find_entry(list: &ManifestList, image: &str) -> Result<usize> {
    let wanted_digest = image
        .rsplit_once('@')
        .map(|(_, d)| d)
        .or(Some(image))
        .and_then(|d| d.parse::<Digest>().ok());
    let wanted_ref = image
        .strip_prefix("docker://")
        .unwrap_or(image)
        .parse::<Reference>()
        .ok();
    list.entries
        .iter()
        .position(|e| {
            if let Some(d) = &wanted_digest
                && &e.descriptor.digest == d
            {
                return true;
            }
            let Some(w) = &wanted_ref else { return false };
            let Ok(er) = e.image.parse::<Reference>() else {
                return false;
            };
            er.name() == w.name() && (w.tag.is_none() || er.tag == w.tag)
        })
        .ok_or_else(|| ClientError::NotFound {
            what: "image in manifest list",
            reference: format!("{image} in {}", list.name),
            hint: format!(
                "; it has: {}",
                list.entries
                    .iter()
                    .map(|e| e.image.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// `archway manifest annotate LIST IMAGE --os --arch ...`.
pub fn annotate(
    store: &ListStore,
    name: &str,
    image: &str,
    overrides: &PlatformOverride,
    annotations: &BTreeMap<String, String>,
) -> Result<ManifestList> {
    let name = list_name(name)?;
    let mut list = store.require(&name)?;
    let i = find_entry(&list, image)?;
    let platform = overrides.apply(list.entries[i].descriptor.platform.clone())?;
    if let Some(p) = &platform
        && let Some(j) = list.find_platform(p)
        && j != i
    {
        return Err(ClientError::Protocol(format!(
            "{name} already has an image for {p} ({}); remove it first",
            list.entries[j].image
        )));
    }
    let d = &mut list.entries[i].descriptor;
    d.platform = platform;
    if !annotations.is_empty() {
        d.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(annotations.clone());
    }
    store.save(&list)?;
    Ok(list)
}

/// `archway manifest remove LIST DIGEST`.
pub fn remove_entry(store: &ListStore, name: &str, image: &str) -> Result<ManifestList> {
    let name = list_name(name)?;
    let mut list = store.require(&name)?;
    let i = find_entry(&list, image)?;
    list.entries.remove(i);
    store.save(&list)?;
    Ok(list)
}

/// What `push` did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub destination: String,
    pub digest: Digest,
    pub media_type: String,
    pub images: Vec<CopyReport>,
}

/// `archway manifest push LIST [DEST]`: makes sure every image is in the destination
/// repository (mounting or copying it there), then pushes the list, tagged.
pub async fn push(
    client: &Client,
    store: &ListStore,
    name: &str,
    dest: Option<&str>,
    format: Option<ListFormat>,
    copy_opts: &CopyOptions,
) -> Result<PushReport> {
    let name = list_name(name)?;
    let mut list = store.require(&name)?;
    if list.entries.is_empty() {
        return Err(ClientError::Protocol(format!(
            "manifest list {name} is empty; add images with `archway manifest add {name} IMAGE`"
        )));
    }
    if format.is_some() {
        list.format = format;
    }
    let dest_ref: Reference = match dest {
        Some(d) => d.strip_prefix("docker://").unwrap_or(d).parse()?,
        None => name.parse()?,
    };
    let mut images = Vec::new();
    for e in &list.entries {
        let src: Reference = e.image.parse()?;
        let src = src.with_digest(e.descriptor.digest.clone());
        let dst = dest_ref.with_digest(e.descriptor.digest.clone());
        let opts = CopyOptions {
            selection: Selection::All,
            ..copy_opts.clone()
        };
        images.push(
            copy(
                client,
                &Location::Registry(src),
                &Location::Registry(dst),
                &opts,
            )
            .await?,
        );
    }
    let index = list.to_index();
    let bytes = Bytes::from(index.to_json());
    let media_type = list.effective_format().media_type().to_owned();
    let tag = dest_ref.tag_or_latest().unwrap_or("latest").to_owned();
    let digest = client
        .put_manifest(&dest_ref, &tag, bytes, &media_type)
        .await?;
    Ok(PushReport {
        destination: format!("{}:{tag}", dest_ref.name()),
        digest,
        media_type,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, mt: &str, n: u8) -> ListEntry {
        let mut d = Descriptor::for_bytes(mt, &[n]);
        d.platform = Some(Platform::new("linux", arch, variant));
        ListEntry {
            image: format!("r.io/app:{arch}@{}", d.digest),
            descriptor: d,
        }
    }

    #[test]
    fn names_are_normalised_and_files_escaped() {
        assert_eq!(list_name("r.io/app").unwrap(), "r.io/app:latest");
        assert_eq!(
            list_name("docker://127.0.0.1:5000/a/b:v1").unwrap(),
            "127.0.0.1:5000/a/b:v1"
        );
        assert_eq!(
            list_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert!(list_name(&format!("r.io/a@{}", Digest::sha256(b""))).is_err());
        assert_eq!(file_name("r.io:5000/a:v1"), "r.io%3A5000%2Fa%3Av1.json");
    }

    #[test]
    fn duplicate_platforms_need_amend_and_format_follows_entries() {
        let mut l = ManifestList {
            name: "r.io/app:latest".into(),
            format: None,
            entries: Vec::new(),
        };
        l.insert(entry("amd64", None, media_type::DOCKER_MANIFEST, 1), false)
            .unwrap();
        l.insert(
            entry("arm64", Some("v8"), media_type::DOCKER_MANIFEST, 2),
            false,
        )
        .unwrap();
        assert_eq!(l.effective_format(), ListFormat::V2s2);
        // aarch64 without variant is the same platform as arm64/v8.
        let err = l
            .insert(entry("aarch64", None, media_type::OCI_MANIFEST, 3), false)
            .unwrap_err();
        assert!(err.to_string().contains("--amend"), "{err}");
        l.insert(entry("aarch64", None, media_type::OCI_MANIFEST, 3), true)
            .unwrap();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.effective_format(), ListFormat::Oci);
        let idx = l.to_index();
        assert_eq!(idx.media_type.as_deref(), Some(media_type::OCI_INDEX));
        l.format = Some(ListFormat::V2s2);
        assert_eq!(
            l.to_index().media_type.as_deref(),
            Some(media_type::DOCKER_MANIFEST_LIST)
        );
    }

    #[test]
    fn overrides_validate_and_normalise() {
        let o = PlatformOverride {
            arch: Some("aarch64".into()),
            os: Some("linux".into()),
            ..Default::default()
        };
        assert_eq!(o.apply(None).unwrap().unwrap().to_string(), "linux/arm64");
        let o = PlatformOverride {
            arch: Some("arm64".into()),
            variant: Some("v8".into()),
            ..Default::default()
        };
        let p = o.apply(Some(Platform::linux_amd64())).unwrap().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        let bad = PlatformOverride {
            arch: Some("pdp11".into()),
            ..Default::default()
        };
        assert!(bad.apply(Some(Platform::linux_amd64())).is_err());
        assert!(
            PlatformOverride {
                arch: Some("arm64".into()),
                ..Default::default()
            }
            .apply(None)
            .is_err()
        );
    }

    #[test]
    fn store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ListStore::at(dir.path());
        let list = ManifestList {
            name: "r.io/app:latest".into(),
            format: Some(ListFormat::Oci),
            entries: vec![entry("amd64", None, media_type::OCI_MANIFEST, 1)],
        };
        store.save(&list).unwrap();
        assert_eq!(store.load("r.io/app:latest").unwrap(), Some(list));
        assert!(store.remove("r.io/app:latest").unwrap());
        assert!(!store.remove("r.io/app:latest").unwrap());
        assert!(
            store
                .require("r.io/app:latest")
                .unwrap_err()
                .to_string()
                .contains("archway manifest create")
        );
    }
}
