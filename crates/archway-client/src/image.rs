//! Image-level operations over any [`Location`]: inspect, import a root filesystem, remove.

use std::collections::BTreeMap;
use std::path::Path;

use archway_oci::config::{History, ImageConfig, RuntimeConfig};
use archway_oci::layer::{LayerOptions, layer_from_dir, layer_from_tar};
use archway_oci::{
    Descriptor, Digest, ImageManifest, ManifestKind, ParsedManifest, Platform, media_type,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use crate::client::{ByteStream, Client};
use crate::copy::{End, verify_stream};
use crate::error::{ClientError, Result};
use crate::location::Location;

/// One entry of an index, as `inspect` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A single-platform image, as `inspect` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageDetails {
    pub digest: Digest,
    pub media_type: String,
    pub platform: Option<String>,
    pub created: Option<String>,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    pub size: u64,
}

/// What `archway image inspect` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    /// Entries when the reference names an index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<IndexEntry>,
    /// The image, when the reference names one (or `--platform` picked one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageDetails>,
    /// Exact bytes of the manifest described (the selected platform's, with `--platform`).
    #[serde(skip)]
    pub raw: Bytes,
}

async fn read_all(stream: ByteStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = stream;
    while let Some(c) = stream.next().await {
        out.extend_from_slice(&c.map_err(|e| ClientError::Io {
            context: "reading blob".into(),
            source: e,
        })?);
    }
    Ok(out)
}

/// Fetches and parses an image's config, verifying its digest.
pub(crate) async fn fetch_config(
    client: &Client,
    end: &End,
    desc: &Descriptor,
    what: &str,
) -> Result<ImageConfig> {
    let stream = verify_stream(
        end.blob(client, desc).await?,
        desc.digest.clone(),
        desc.size,
        |_| {},
    );
    let bytes = read_all(stream).await.map_err(|e| match e {
        ClientError::Io { source, .. } => match source
            .get_ref()
            .and_then(|i| i.downcast_ref::<crate::copy::StreamMismatch>())
        {
            Some(m) => ClientError::DigestMismatch {
                reference: what.to_owned(),
                expected: m.expected.clone(),
                actual: m.actual.clone(),
            },
            None => ClientError::Io {
                context: format!("reading the config of {what}"),
                source,
            },
        },
        other => other,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "the config of {what} is not a valid image config: {e}"
        ))
    })
}

/// Inspects what `location` names; with `platform`, the image for that platform of an index.
pub async fn inspect(
    client: &Client,
    location: &Location,
    platform: Option<&Platform>,
) -> Result<Inspection> {
    let end = End::source(location)?;
    let name = location.to_string();
    let root = end.root(client).await?;
    let parse = |bytes: &[u8], mt: &str| {
        ParsedManifest::parse(bytes, Some(mt)).map_err(|source| ClientError::Manifest {
            reference: name.clone(),
            source,
        })
    };
    let parsed = parse(&root.bytes, &root.media_type)?;
    let mut out = Inspection {
        name: name.clone(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        manifests: Vec::new(),
        image: None,
        raw: root.bytes.clone(),
    };
    let (image_manifest, image_parsed, image_platform) = match parsed.kind {
        ManifestKind::Index => {
            out.manifests = parsed
                .manifests
                .iter()
                .map(|d| IndexEntry {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    size: d.size,
                    platform: d.platform.as_ref().map(ToString::to_string),
                    annotations: d.annotations.clone(),
                })
                .collect();
            let Some(p) = platform else {
                return Ok(out);
            };
            let child = parsed
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|dp| dp.matches(p)))
                .ok_or_else(|| ClientError::PlatformNotFound {
                    reference: name.clone(),
                    platform: p.to_string(),
                    available: out
                        .manifests
                        .iter()
                        .map(|e| e.platform.clone().unwrap_or_else(|| "unknown".into()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let m = end.manifest(client, child).await?;
            let mp = parse(&m.bytes, &m.media_type)?;
            out.raw = m.bytes.clone();
            (m, mp, child.platform.as_ref().map(ToString::to_string))
        }
        ManifestKind::Image => (root, parsed, None),
    };
    let Some(config_desc) = image_parsed.config.clone() else {
        return Ok(out);
    };
    let config = fetch_config(client, &end, &config_desc, &name).await?;
    let image_platform = image_platform.or_else(|| config.platform().map(|p| p.to_string()));
    if let Some(have) = image_platform.as_deref()
        && let Some(mismatch) = platform_filter(platform, have)
    {
        return Err(mismatch);
    }
    out.image = Some(ImageDetails {
        digest: image_manifest.digest.clone(),
        media_type: image_manifest.media_type.clone(),
        platform: image_platform,
        created: config.created.clone(),
        config_digest: config_desc.digest.clone(),
        size: image_parsed.layers.iter().map(|l| l.size).sum::<u64>() + config_desc.size,
        layers: image_parsed.layers.clone(),
        config,
    });
    Ok(out)
}

/// With `--platform` on a single-platform image, the image must be that platform.
fn platform_filter(want: Option<&Platform>, have: &str) -> Option<ClientError> {
    let want = want?;
    let have_p: Platform = have.parse().ok()?;
    if want.matches(&have_p) {
        None
    } else {
        Some(ClientError::Protocol(format!(
            "the image is {have}, not {want} (it is a single-platform image)"
        )))
    }
}

/// Settings of `archway image import`.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub platform: Platform,
    pub layer: LayerOptions,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The `created` timestamp (RFC 3339).
    pub created: String,
    /// What the history entry says made the layer.
    pub created_by: String,
}

/// What `import` produced.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub destination: String,
    pub digest: Digest,
    pub platform: String,
    pub layer: Digest,
    pub diff_id: Digest,
    pub layer_size: u64,
    pub config: Digest,
}

/// Makes a one-layer image from a root filesystem (a directory or a tar, optionally gzip)
/// and stores it at `dest`. The same input and options always give the same digest.
pub async fn import(
    client: &Client,
    rootfs: &Path,
    dest: &Location,
    opts: &ImportOptions,
) -> Result<ImportReport> {
    let meta = std::fs::metadata(rootfs).map_err(|e| ClientError::Io {
        context: format!("{} (the root filesystem to import)", rootfs.display()),
        source: e,
    })?;
    let work = tempfile::Builder::new()
        .prefix("archway-import-")
        .tempdir()
        .map_err(|e| ClientError::Io {
            context: "creating a temporary directory".into(),
            source: e,
        })?;
    let layer_path = work.path().join("layer.tar.gz");
    let (src, lp, layer_opts, is_dir) = (
        rootfs.to_owned(),
        layer_path.clone(),
        opts.layer.clone(),
        meta.is_dir(),
    );
    let digests = tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::new(std::fs::File::create(&lp)?);
        let r = if is_dir {
            layer_from_dir(&src, &layer_opts, out)
        } else {
            let f = std::fs::File::open(&src)?;
            layer_from_tar(f, &src, &layer_opts, out)
        };
        r.map_err(std::io::Error::other)
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))?
    .map_err(|e| ClientError::Io {
        context: format!("making a layer from {}", rootfs.display()),
        source: e,
    })?;

    let mut config = ImageConfig::for_platform(&opts.platform);
    config.created = Some(opts.created.clone());
    let env = if opts.env.is_empty() {
        vec![format!("PATH={}", archway_oci::run_config::DEFAULT_PATH)]
    } else {
        opts.env.clone()
    };
    config.config = Some(RuntimeConfig {
        env: Some(env),
        cmd: opts.cmd.clone(),
        entrypoint: opts.entrypoint.clone(),
        working_dir: opts.working_dir.clone(),
        user: opts.user.clone(),
        labels: (!opts.labels.is_empty()).then(|| opts.labels.clone()),
        ..RuntimeConfig::default()
    });
    config.rootfs.diff_ids = vec![digests.diff_id.clone()];
    config.history = vec![History {
        created: Some(opts.created.clone()),
        created_by: Some(opts.created_by.clone()),
        ..History::default()
    }];
    let config_bytes = Bytes::from(config.to_json());
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: Descriptor::for_bytes(media_type::OCI_CONFIG, &config_bytes),
        layers: vec![Descriptor::new(
            media_type::OCI_LAYER_GZIP,
            digests.digest.clone(),
            digests.size,
        )],
        subject: None,
        annotations: None,
    };
    let manifest_bytes = Bytes::from(manifest.to_json());

    let dst = End::destination(dest)?;
    for (desc, stream) in [
        (manifest.layers[0].clone(), file_stream(&layer_path).await?),
        (
            manifest.config.clone(),
            Box::pin(futures_util::stream::once(futures_util::future::ready(Ok(
                config_bytes.clone(),
            )))) as ByteStream,
        ),
    ] {
        if !dst.has_blob(client, &desc.digest).await? {
            let verified = verify_stream(stream, desc.digest.clone(), desc.size, |_| {});
            dst.put_blob(client, &desc, None, verified).await?;
        }
    }
    let tag = match dest {
        Location::Registry(r) => r.tag_or_latest().map(str::to_owned),
        Location::Layout { tag, .. } => Some(tag.clone().unwrap_or_else(|| "latest".to_owned())),
    };
    let digest = dst
        .put_manifest(
            client,
            &manifest_bytes,
            media_type::OCI_MANIFEST,
            tag.as_deref(),
        )
        .await?;
    Ok(ImportReport {
        destination: dest.to_string(),
        digest,
        platform: opts.platform.to_string(),
        layer: digests.digest,
        diff_id: digests.diff_id,
        layer_size: digests.size,
        config: manifest.config.digest,
    })
}

async fn file_stream(path: &Path) -> Result<ByteStream> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ClientError::Io {
            context: path.display().to_string(),
            source: e,
        })?;
    Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
        f,
        256 * 1024,
    )))
}

/// What `remove` did.
#[derive(Clone, Debug, Serialize)]
pub struct Removal {
    pub reference: String,
    /// The manifest was deleted (with every tag naming it), not just the tag.
    pub deleted_manifest: Option<Digest>,
}

/// Removes a tag (or, for a digest reference, a manifest). On registries that cannot delete
/// tags, deletes the manifest the tag names.
pub async fn remove(client: &Client, location: &Location) -> Result<Removal> {
    match location {
        Location::Layout { path, tag } => {
            let layout = archway_oci::layout::ImageLayout::open(path)?;
            let tag = tag.clone().ok_or_else(|| {
                ClientError::Protocol(format!(
                    "{location}: name the image to remove, e.g. oci:{}:latest",
                    path.display()
                ))
            })?;
            if !layout.remove_ref(&tag)? {
                return Err(ClientError::NotFound {
                    what: "image",
                    reference: location.to_string(),
                    hint: String::new(),
                });
            }
            Ok(Removal {
                reference: location.to_string(),
                deleted_manifest: None,
            })
        }
        Location::Registry(r) => {
            if let (Some(tag), None) = (&r.tag, &r.digest) {
                let digest =
                    client
                        .manifest_exists(r)
                        .await?
                        .ok_or_else(|| ClientError::NotFound {
                            what: "tag",
                            reference: r.to_string(),
                            hint: format!("; list the tags with `archway image tags {}`", r.name()),
                        })?;
                if client.delete_manifest(r, tag).await? {
                    return Ok(Removal {
                        reference: r.to_string(),
                        deleted_manifest: None,
                    });
                }
                // Registries before distribution spec 1.1 delete by digest only.
                if !client.delete_manifest(r, &digest.to_string()).await? {
                    return Err(ClientError::Protocol(format!(
                        "{} does not allow deleting manifests (distribution needs `storage.delete.enabled: true`)",
                        r.registry
                    )));
                }
                return Ok(Removal {
                    reference: r.to_string(),
                    deleted_manifest: Some(digest),
                });
            }
            let reference = r.manifest_reference();
            if !client.delete_manifest(r, &reference).await? {
                return Err(ClientError::Protocol(format!(
                    "{} does not allow deleting manifests",
                    r.registry
                )));
            }
            Ok(Removal {
                reference: r.to_string(),
                deleted_manifest: r.digest.clone(),
            })
        }
    }
}
