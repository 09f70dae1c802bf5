//! Copying images between registries and OCI layouts, preserving digests.
//!
//! Manifests are copied as the exact bytes they are, so every digest survives. Blobs are
//! copied concurrently, skipped when the destination has them, mounted instead of copied when
//! both ends are repositories of one registry, and verified against their digest as they
//! stream: a corrupt blob fails the copy before the destination commits it. Manifests go
//! children first and the tagged manifest last, so a failed copy never leaves a tag behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use archway_oci::layout::ImageLayout;
use archway_oci::{
    Descriptor, Digest, Digester, ManifestKind, ParsedManifest, Platform, Reference,
};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::client::{ByteStream, Client, FetchedManifest, Mount, repo_scope};
use crate::error::{ClientError, Result};
use crate::location::Location;

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobOutcome {
    Copied,
    Exists,
    Mounted,
}

/// Progress of a copy, for display.
#[derive(Clone, Debug)]
pub enum Event {
    /// The source was resolved; `platforms` are the images that will be copied.
    Resolved {
        digest: Digest,
        media_type: String,
        platforms: Vec<String>,
    },
    BlobStart {
        digest: Digest,
        size: u64,
    },
    /// Bytes of a blob transferred so far.
    BlobProgress {
        digest: Digest,
        done: u64,
    },
    BlobDone {
        digest: Digest,
        size: u64,
        outcome: BlobOutcome,
    },
    ManifestDone {
        digest: Digest,
        media_type: String,
        tag: Option<String>,
    },
}

/// Receives progress events.
pub type ProgressSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Which images of an index to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The index and every image in it.
    All,
    /// Only the image for this platform (the result is a single-platform image).
    Platform(Platform),
    /// Only the image for this platform, under the source's index, unchanged (so the index
    /// digest is kept and the other platforms' entries point at manifests the destination
    /// does not have): a sparse index, which the destination must accept (distribution-spec
    /// allows it; `archway registry serve --allow-sparse`).
    PlatformKeepingIndex(Platform),
}

/// Options of one copy.
#[derive(Clone)]
pub struct CopyOptions {
    pub selection: Selection,
    /// Blobs transferred at once.
    pub concurrency: usize,
    pub progress: Option<ProgressSink>,
}

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("selection", &self.selection)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            selection: Selection::All,
            concurrency: 6,
            progress: None,
        }
    }
}

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyReport {
    pub source: String,
    pub destination: String,
    /// Digest of what the destination now names.
    pub digest: Option<Digest>,
    pub media_type: String,
    pub platforms: Vec<String>,
    pub manifests: usize,
    pub blobs_copied: usize,
    pub blobs_existing: usize,
    pub blobs_mounted: usize,
    pub bytes_copied: u64,
}

/// The stream ended with content that does not match the expected digest.
#[derive(Debug, thiserror::Error)]
#[error("content digest is {actual}, expected {expected}")]
pub struct StreamMismatch {
    pub expected: Digest,
    pub actual: Digest,
}

/// Wraps a blob stream so that it fails (instead of ending) when the bytes do not match
/// `expected` and `size`. `on_bytes` sees the running total.
pub fn verify_stream(
    stream: ByteStream,
    expected: Digest,
    size: u64,
    on_bytes: impl Fn(u64) + Send + 'static,
) -> ByteStream {
    struct St {
        inner: ByteStream,
        digester: Option<Digester>,
        expected: Digest,
        size: u64,
        on_bytes: Box<dyn Fn(u64) + Send>,
    }
    let st = St {
        inner: stream,
        digester: Some(Digester::new(expected.algorithm())),
        expected,
        size,
        on_bytes: Box::new(on_bytes),
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        let digester = st.digester.as_mut()?;
        match st.inner.next().await {
            Some(Ok(chunk)) => {
                digester.update(&chunk);
                let n = digester.len();
                (st.on_bytes)(n);
                if n > st.size {
                    st.digester = None;
                    let e = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "blob {} is larger than its declared {} bytes",
                            st.expected, st.size
                        ),
                    );
                    return Some((Err(e), st));
                }
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.digester = None;
                Some((Err(e), st))
            }
            None => {
                let d = st.digester.take()?;
                let actual = d.finish();
                if actual != st.expected {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        StreamMismatch {
                            expected: st.expected.clone(),
                            actual,
                        },
                    );
                    return Some((Err(e), st));
                }
                None
            }
        }
    }))
}

/// One end of a copy.
#[derive(Clone, Debug)]
pub(crate) enum End {
    Registry(Reference),
    Layout {
        layout: ImageLayout,
        tag: Option<String>,
    },
}

impl End {
    pub(crate) fn source(location: &Location) -> Result<End> {
        Ok(match location {
            Location::Registry(r) => End::Registry(r.clone()),
            Location::Layout { path, tag } => End::Layout {
                layout: ImageLayout::open(path)?,
                tag: tag.clone(),
            },
        })
    }

    pub(crate) fn destination(location: &Location) -> Result<End> {
        Ok(match location {
            Location::Registry(r) => End::Registry(r.clone()),
            Location::Layout { path, tag } => End::Layout {
                layout: ImageLayout::create(path)?,
                tag: tag.clone(),
            },
        })
    }

    fn describe(&self) -> String {
        match self {
            End::Registry(r) => r.to_string(),
            End::Layout { layout, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", layout.root().display()),
                None => format!("oci:{}", layout.root().display()),
            },
        }
    }

    /// The top-level manifest this end names.
    pub(crate) async fn root(&self, client: &Client) -> Result<FetchedManifest> {
        match self {
            End::Registry(r) => client.get_manifest(r).await,
            End::Layout { layout, tag } => {
                let layout = layout.clone();
                let tag = tag.clone();
                let (desc, bytes) = tokio::task::spawn_blocking(move || {
                    let desc = layout.resolve(tag.as_deref())?;
                    let bytes = layout.read_blob(&desc.digest)?;
                    Ok::<_, ClientError>((desc, bytes))
                })
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))??;
                Ok(FetchedManifest {
                    bytes: bytes.into(),
                    media_type: desc.media_type,
                    digest: desc.digest,
                })
            }
        }
    }

    pub(crate) async fn manifest(
        &self,
        client: &Client,
        desc: &Descriptor,
    ) -> Result<FetchedManifest> {
        match self {
            End::Registry(r) => {
                client
                    .get_manifest(&r.with_digest(desc.digest.clone()))
                    .await
            }
            End::Layout { layout, .. } => {
                let layout = layout.clone();
                let d = desc.digest.clone();
                let bytes = tokio::task::spawn_blocking(move || layout.read_blob(&d))
                    .await
                    .map_err(|e| ClientError::Protocol(e.to_string()))??;
                Ok(FetchedManifest {
                    bytes: bytes.into(),
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.clone(),
                })
            }
        }
    }

    pub(crate) async fn blob(&self, client: &Client, desc: &Descriptor) -> Result<ByteStream> {
        match self {
            End::Registry(r) => client.get_blob(r, &desc.digest, 0).await,
            End::Layout { layout, .. } => {
                let path = layout.blob_path(&desc.digest);
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        ClientError::NotFound {
                            what: "blob",
                            reference: format!("{}@{}", self.describe(), desc.digest),
                            hint: String::new(),
                        }
                    } else {
                        ClientError::Io {
                            context: path.display().to_string(),
                            source: e,
                        }
                    }
                })?;
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                )))
            }
        }
    }

    fn push_scopes(r: &Reference) -> Vec<String> {
        vec![repo_scope(&r.repository, "pull,push")]
    }

    pub(crate) async fn has_blob(&self, client: &Client, digest: &Digest) -> Result<bool> {
        match self {
            End::Registry(r) => Ok(client
                .blob_size(r, digest, &Self::push_scopes(r))
                .await?
                .is_some()),
            End::Layout { layout, .. } => Ok(layout.has_blob(digest)),
        }
    }

    /// Writes a blob from a (verifying) stream.
    pub(crate) async fn put_blob(
        &self,
        client: &Client,
        desc: &Descriptor,
        location: Option<String>,
        stream: ByteStream,
    ) -> Result<()> {
        match self {
            End::Registry(r) => {
                client
                    .push_blob(
                        r,
                        &desc.digest,
                        desc.size,
                        location,
                        &Self::push_scopes(r),
                        stream,
                    )
                    .await
            }
            End::Layout { layout, .. } => write_layout_blob(layout, desc, stream).await,
        }
    }

    pub(crate) async fn has_manifest(&self, client: &Client, digest: &Digest) -> Result<bool> {
        match self {
            End::Registry(r) => Ok(client
                .manifest_exists(&r.with_digest(digest.clone()))
                .await?
                .is_some()),
            End::Layout { layout, .. } => Ok(layout.has_blob(digest)),
        }
    }

    /// Stores a manifest; with `tag`, names it.
    pub(crate) async fn put_manifest(
        &self,
        client: &Client,
        bytes: &Bytes,
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        match self {
            End::Registry(r) => {
                let reference = tag.map_or_else(|| digest.to_string(), str::to_owned);
                client
                    .put_manifest(r, &reference, bytes.clone(), media_type)
                    .await?;
            }
            End::Layout { layout, .. } => {
                let layout = layout.clone();
                let bytes = bytes.clone();
                let desc = Descriptor::new(media_type, digest.clone(), bytes.len() as u64);
                let tag = tag.map(str::to_owned);
                tokio::task::spawn_blocking(move || {
                    layout.write_blob(&bytes)?;
                    if let Some(t) = tag {
                        layout.set_ref(&t, &desc)?;
                    }
                    Ok::<_, ClientError>(())
                })
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))??;
            }
        }
        Ok(digest)
    }

    /// The tag a copy into this end sets: its own, else the source's, else `latest`.
    fn tag_for(&self, source: &End) -> Option<String> {
        let own = match self {
            End::Registry(r) => {
                if r.tag.is_none() && r.digest.is_some() {
                    return None;
                }
                r.tag.clone()
            }
            End::Layout { tag, .. } => tag.clone(),
        };
        own.or_else(|| match source {
            End::Registry(r) => r.tag.clone(),
            End::Layout { tag, .. } => tag.clone(),
        })
        .or_else(|| Some("latest".to_owned()))
    }
}

async fn write_layout_blob(
    layout: &ImageLayout,
    desc: &Descriptor,
    mut stream: ByteStream,
) -> Result<()> {
    let target = layout.blob_path(&desc.digest);
    if target.exists() {
        return Ok(());
    }
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| ClientError::Io {
            context: path.display().to_string(),
            source,
        }
    };
    let dir = target.parent().map(PathBuf::from).unwrap_or_default();
    tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
    let tmp = archway_oci::atomic_file::temp_path_for(&target);
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Io {
                context: format!("reading blob {}", desc.digest),
                source: e,
            })?;
            f.write_all(&chunk).await.map_err(io(&tmp))?;
        }
        f.sync_all().await.map_err(io(&tmp))?;
        drop(f);
        let (tmp2, target2) = (tmp.clone(), target.clone());
        tokio::task::spawn_blocking(move || archway_oci::atomic_file::commit(&tmp2, &target2))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .map_err(io(&target))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Maps a stream error caused by a digest mismatch to the client error that says so.
fn mismatch_or(reference: &str, e: ClientError) -> ClientError {
    if let ClientError::Io { source, .. } = &e
        && let Some(m) = source
            .get_ref()
            .and_then(|i| i.downcast_ref::<StreamMismatch>())
    {
        return ClientError::DigestMismatch {
            reference: reference.to_owned(),
            expected: m.expected.clone(),
            actual: m.actual.clone(),
        };
    }
    e
}

/// An image manifest to copy, with what it needs.
struct ImageToCopy {
    manifest: FetchedManifest,
    blobs: Vec<Descriptor>,
}

/// The plan: images (children first) and the indexes over them, top last.
struct Plan {
    images: Vec<ImageToCopy>,
    /// Indexes in the order they must be pushed (innermost first); the last is the top.
    indexes: Vec<FetchedManifest>,
    platforms: Vec<String>,
}

fn platform_label(d: &Descriptor) -> String {
    d.platform
        .as_ref()
        .map_or_else(|| "unknown platform".to_owned(), ToString::to_string)
}

async fn plan(
    client: &Client,
    src: &End,
    root: FetchedManifest,
    selection: &Selection,
) -> Result<Plan> {
    let reference = src.describe();
    let parse = |m: &FetchedManifest| {
        ParsedManifest::parse(&m.bytes, Some(&m.media_type)).map_err(|source| {
            ClientError::Manifest {
                reference: reference.clone(),
                source,
            }
        })
    };
    let parsed = parse(&root)?;
    let mut plan = Plan {
        images: Vec::new(),
        indexes: Vec::new(),
        platforms: Vec::new(),
    };
    match (parsed.kind, selection) {
        (ManifestKind::Image, _) => {
            plan.images.push(ImageToCopy {
                blobs: parsed.blobs().cloned().collect(),
                manifest: root,
            });
        }
        (ManifestKind::Index, Selection::Platform(p) | Selection::PlatformKeepingIndex(p)) => {
            let child = parsed
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|dp| dp.matches(p)))
                .ok_or_else(|| ClientError::PlatformNotFound {
                    reference: reference.clone(),
                    platform: p.to_string(),
                    available: parsed
                        .manifests
                        .iter()
                        .map(platform_label)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let m = src.manifest(client, child).await?;
            let cp = parse(&m)?;
            if cp.kind != ManifestKind::Image {
                return Err(ClientError::Protocol(format!(
                    "{reference}: the {p} entry is itself an index; copy it with --all"
                )));
            }
            plan.platforms.push(p.to_string());
            plan.images.push(ImageToCopy {
                blobs: cp.blobs().cloned().collect(),
                manifest: m,
            });
            if matches!(selection, Selection::PlatformKeepingIndex(_)) {
                plan.indexes.push(root);
            }
        }
        (ManifestKind::Index, Selection::All) => {
            // Depth-first over nested indexes; each index after its children.
            let mut stack: Vec<(FetchedManifest, ParsedManifest, usize)> = vec![(root, parsed, 0)];
            while let Some((index, parsed, next)) = stack.pop() {
                if next == parsed.manifests.len() {
                    plan.indexes.push(index);
                    continue;
                }
                let child = parsed.manifests[next].clone();
                stack.push((index, parsed, next + 1));
                let m = src.manifest(client, &child).await?;
                let cp = parse(&m)?;
                match cp.kind {
                    ManifestKind::Image => {
                        if child.platform.is_some() {
                            plan.platforms.push(platform_label(&child));
                        }
                        plan.images.push(ImageToCopy {
                            blobs: cp.blobs().cloned().collect(),
                            manifest: m,
                        });
                    }
                    ManifestKind::Index => stack.push((m, cp, 0)),
                }
            }
        }
    }
    Ok(plan)
}

/// Copies an image (or, with [`Selection::All`], a whole index) from `source` to `dest`.
pub async fn copy(
    client: &Client,
    source: &Location,
    dest: &Location,
    opts: &CopyOptions,
) -> Result<CopyReport> {
    let src = End::source(source)?;
    let dst = End::destination(dest)?;
    let root = src.root(client).await?;
    let plan = plan(client, &src, root.clone(), &opts.selection).await?;
    let emit = |e: Event| {
        if let Some(p) = &opts.progress {
            p(e);
        }
    };
    emit(Event::Resolved {
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        platforms: plan.platforms.clone(),
    });
    let mut report = CopyReport {
        source: src.describe(),
        destination: dst.describe(),
        platforms: plan.platforms.clone(),
        ..CopyReport::default()
    };

    // An image whose manifest the destination already has has all its blobs there too
    // (registries refuse manifests with missing blobs; layouts are written blobs first).
    // (The futures are collected first: a stream over a borrowing closure would make this
    // future not `Send`, and runners spawn copies on their runtime.)
    let checks: Vec<_> = plan
        .images
        .iter()
        .map(|image| dst.has_manifest(client, &image.manifest.digest))
        .collect();
    let present: Vec<bool> = futures_util::stream::iter(checks)
        .buffered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    // Every distinct blob still needed, once, in a stable order.
    let mut blobs: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    for (image, present) in plan.images.iter().zip(&present) {
        if *present {
            report.blobs_existing += image.blobs.len();
            continue;
        }
        for b in &image.blobs {
            if b.urls.as_ref().is_some_and(|u| !u.is_empty()) {
                continue; // non-distributable: stays where its URLs point
            }
            blobs.entry(b.digest.clone()).or_insert_with(|| b.clone());
        }
    }
    let mount_from = match (&src, &dst) {
        (End::Registry(s), End::Registry(d))
            if s.registry == d.registry && s.repository != d.repository =>
        {
            Some(s.repository.clone())
        }
        _ => None,
    };
    let bytes_copied = Arc::new(AtomicU64::new(0));
    let copies: Vec<_> = blobs
        .into_values()
        .map(|desc| {
            let (src, dst, mount_from, bytes_copied) =
                (&src, &dst, mount_from.clone(), bytes_copied.clone());
            let progress = opts.progress.clone();
            async move {
                copy_blob(
                    client,
                    src,
                    dst,
                    &desc,
                    mount_from.as_deref(),
                    progress,
                    &bytes_copied,
                )
                .await
            }
        })
        .collect();
    let results: Vec<BlobOutcome> = futures_util::stream::iter(copies)
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    for r in &results {
        match r {
            BlobOutcome::Copied => report.blobs_copied += 1,
            BlobOutcome::Exists => report.blobs_existing += 1,
            BlobOutcome::Mounted => report.blobs_mounted += 1,
        }
    }
    report.bytes_copied = bytes_copied.load(Ordering::Relaxed);

    let tag = dst.tag_for(&src);
    let top_is_image = plan.indexes.is_empty();
    let n_images = plan.images.len();
    for (i, image) in plan.images.into_iter().enumerate() {
        let is_top = top_is_image && i + 1 == n_images;
        let t = if is_top { tag.as_deref() } else { None };
        let digest = dst
            .put_manifest(client, &image.manifest.bytes, &image.manifest.media_type, t)
            .await?;
        report.manifests += 1;
        emit(Event::ManifestDone {
            digest: digest.clone(),
            media_type: image.manifest.media_type.clone(),
            tag: t.map(str::to_owned),
        });
        if is_top {
            report.digest = Some(digest);
            report.media_type = image.manifest.media_type;
        }
    }
    let n_indexes = plan.indexes.len();
    for (i, index) in plan.indexes.into_iter().enumerate() {
        let is_top = i + 1 == n_indexes;
        let t = if is_top { tag.as_deref() } else { None };
        let digest = dst
            .put_manifest(client, &index.bytes, &index.media_type, t)
            .await?;
        report.manifests += 1;
        emit(Event::ManifestDone {
            digest: digest.clone(),
            media_type: index.media_type.clone(),
            tag: t.map(str::to_owned),
        });
        if is_top {
            report.digest = Some(digest);
            report.media_type = index.media_type;
        }
    }
    Ok(report)
}

/// Copies one blob, retrying transient failures from the start.
async fn copy_blob(
    client: &Client,
    src: &End,
    dst: &End,
    desc: &Descriptor,
    mount_from: Option<&str>,
    progress: Option<ProgressSink>,
    bytes_copied: &AtomicU64,
) -> Result<BlobOutcome> {
    let emit = |e: Event| {
        if let Some(p) = &progress {
            p(e);
        }
    };
    if dst.has_blob(client, &desc.digest).await? {
        emit(Event::BlobDone {
            digest: desc.digest.clone(),
            size: desc.size,
            outcome: BlobOutcome::Exists,
        });
        return Ok(BlobOutcome::Exists);
    }
    let mut location = None;
    if let (Some(from), End::Registry(d)) = (mount_from, dst) {
        match client.mount_blob(d, &desc.digest, from).await? {
            Mount::Mounted => {
                emit(Event::BlobDone {
                    digest: desc.digest.clone(),
                    size: desc.size,
                    outcome: BlobOutcome::Mounted,
                });
                return Ok(BlobOutcome::Mounted);
            }
            Mount::Upload(l) => location = Some(l),
        }
    }
    emit(Event::BlobStart {
        digest: desc.digest.clone(),
        size: desc.size,
    });
    let reference = format!("{}@{}", src.describe(), desc.digest);
    let attempts = client.options().retries + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stream = src.blob(client, desc).await?;
        let (p, d) = (progress.clone(), desc.digest.clone());
        let verified = verify_stream(stream, desc.digest.clone(), desc.size, move |done| {
            if let Some(p) = &p {
                p(Event::BlobProgress {
                    digest: d.clone(),
                    done,
                });
            }
        });
        match dst.put_blob(client, desc, location.take(), verified).await {
            Ok(()) => break,
            Err(e) => {
                let e = mismatch_or(&reference, e);
                if attempt < attempts && e.is_transient() {
                    tracing::warn!(error = %e, digest = %desc.digest, "retrying blob copy");
                    client.backoff(attempt - 1, None).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
    bytes_copied.fetch_add(desc.size, Ordering::Relaxed);
    emit(Event::BlobDone {
        digest: desc.digest.clone(),
        size: desc.size,
        outcome: BlobOutcome::Copied,
    });
    Ok(BlobOutcome::Copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn drain(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(c) = s.next().await {
            v.extend_from_slice(&c?);
        }
        Ok(v)
    }

    #[tokio::test]
    async fn verify_stream_passes_good_content_and_fails_bad() {
        let good = Digest::sha256(b"hello world");
        let out = drain(verify_stream(
            stream_of(&[b"hello ", b"world"]),
            good.clone(),
            11,
            |_| {},
        ))
        .await
        .unwrap();
        assert_eq!(out, b"hello world");
        let err = drain(verify_stream(
            stream_of(&[b"hello ", b"worle"]),
            good.clone(),
            11,
            |_| {},
        ))
        .await
        .unwrap_err();
        let m = err
            .get_ref()
            .unwrap()
            .downcast_ref::<StreamMismatch>()
            .unwrap();
        assert_eq!(m.expected, good);
        let err = drain(verify_stream(
            stream_of(&[b"hello world!!"]),
            good,
            11,
            |_| {},
        ))
        .await
        .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
