//! Source snapshots (gzipped tarballs of a repository), stored by digest so runners fetch
//! them and identical snapshots are stored once. Where they live is a [`SnapshotStore`]: the
//! data directory (`DATA/sources/sha256/<hex>.tar.gz`, [`FsSnapshots`]) or the object store
//! the registry uses (`PREFIX/sources/sha256/<hex>.tar.gz`, [`ObjectSnapshots`]), which
//! every server replica sharing the bucket sees at once.
//!
//! **Invariant:** a snapshot's name only ever holds bytes whose digest was verified: uploads
//! are hashed as they stream into a temporary file (fsynced, then renamed into place) or into
//! a multipart upload (completed only after the digest matched, aborted otherwise).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncWriteExt;

use archway_oci::{Digest, digest::Digester};

use crate::error::CoordError;

/// A snapshot's bytes as they arrive (errors already described).
pub type UploadBody<'a> = BoxStream<'a, Result<Bytes, String>>;
/// A stored snapshot's bytes.
pub type SnapshotBytes = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Where snapshots are kept.
#[async_trait]
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// Size of a stored snapshot, `None` if there is none.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError>;
    /// Stores `body`, which must hash to `digest` and be at most `max_bytes` long; nothing is
    /// visible unless it does. Returns the size.
    async fn put(
        &self,
        digest: &Digest,
        body: UploadBody<'_>,
        max_bytes: u64,
    ) -> Result<u64, CoordError>;
    /// A stored snapshot and its size, `None` if there is none.
    async fn read(&self, digest: &Digest) -> Result<Option<(SnapshotBytes, u64)>, CoordError>;
}

/// Source snapshots, on whichever [`SnapshotStore`] the server was given.
#[derive(Clone, Debug)]
pub struct SourceStore {
    store: Arc<dyn SnapshotStore>,
    /// Largest snapshot accepted.
    pub max_bytes: u64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoordError {
    let context = context.into();
    move |source| CoordError::Io { context, source }
}

fn store_io(context: &str) -> impl FnOnce(object_store::Error) -> CoordError + '_ {
    move |source| CoordError::Unavailable {
        context: context.to_owned(),
        source,
    }
}

fn too_large(max_bytes: u64) -> CoordError {
    CoordError::TooLarge(format!(
        "source snapshots may be at most {} MiB (the server's --max-source-size)",
        max_bytes / (1024 * 1024)
    ))
}

fn mismatch(got: &Digest, want: &Digest) -> CoordError {
    CoordError::BadRequest(format!(
        "the upload's digest is {got}, not {want}: the snapshot was changed or cut short"
    ))
}

impl SourceStore {
    /// Snapshots under `DIR/sources/` (created if missing; leftovers of interrupted uploads
    /// are removed).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SourceStore, CoordError> {
        Ok(SourceStore {
            store: Arc::new(FsSnapshots::open(dir)?),
            max_bytes,
        })
    }

    /// Snapshots on an object store, under `PREFIX/sources/`.
    pub fn on_object_store(store: Arc<AmazonS3>, prefix: &str, max_bytes: u64) -> SourceStore {
        SourceStore {
            store: Arc::new(ObjectSnapshots::new(store, prefix)),
            max_bytes,
        }
    }

    fn parse(digest: &str) -> Result<Digest, CoordError> {
        let d: Digest = digest
            .parse()
            .map_err(|e| CoordError::BadRequest(format!("`{digest}` is not a digest: {e}")))?;
        if d.algorithm().as_str() != "sha256" {
            return Err(CoordError::BadRequest(
                "source snapshots are addressed by sha256 digests".into(),
            ));
        }
        Ok(d)
    }

    pub async fn exists(&self, digest: &str) -> Result<bool, CoordError> {
        let d = Self::parse(digest)?;
        Ok(self.store.size(&d).await?.is_some())
    }

    /// Stores a snapshot from `body`, which must hash to `digest`.
    pub async fn put<E: std::fmt::Display>(
        &self,
        digest: &str,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin + Send,
    ) -> Result<u64, CoordError> {
        let d = Self::parse(digest)?;
        if let Some(size) = self.store.size(&d).await? {
            // Drain nothing: the client may stop sending; what we have is verified.
            return Ok(size);
        }
        let body = body.map_err(|e| e.to_string()).boxed();
        self.store.put(&d, body, self.max_bytes).await
    }

    /// A stored snapshot as a stream, with its size.
    pub async fn read(&self, digest: &str) -> Result<(SnapshotBytes, u64), CoordError> {
        let d = Self::parse(digest)?;
        self.store
            .read(&d)
            .await?
            .ok_or_else(|| CoordError::NotFound(format!("no source snapshot {digest}")))
    }

    /// Opens a stored snapshot as a file: the file itself on the filesystem, a private
    /// (already unlinked) local copy when the snapshot is on an object store. [`Self::read`]
    /// streams without the copy.
    pub async fn open_read(&self, digest: &str) -> Result<(tokio::fs::File, u64), CoordError> {
        let (mut bytes, len) = self.read(digest).await?;
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(|e| CoordError::Io {
                context: "copying a source snapshot".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io("copying a source snapshot"))?;
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = bytes.next().await {
            file.write_all(&chunk.map_err(io("reading a stored source"))?)
                .await
                .map_err(io("copying a source snapshot"))?;
        }
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io("copying a source snapshot"))?;
        Ok((file, len))
    }
}

/// Snapshots in `DATA/sources/`.
#[derive(Debug)]
pub struct FsSnapshots {
    dir: PathBuf,
}

impl FsSnapshots {
    pub fn open(dir: &Path) -> Result<FsSnapshots, CoordError> {
        let dir = dir.join("sources");
        std::fs::create_dir_all(dir.join("sha256")).map_err(io("creating the source store"))?;
        std::fs::create_dir_all(dir.join("tmp")).map_err(io("creating the source store"))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(FsSnapshots { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(format!("{}.tar.gz", digest.hex()))
    }
}

#[async_trait]
impl SnapshotStore for FsSnapshots {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        match tokio::fs::metadata(self.path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading a stored source")(e)),
        }
    }

    async fn put(
        &self,
        d: &Digest,
        mut body: UploadBody<'_>,
        max_bytes: u64,
    ) -> Result<u64, CoordError> {
        let target = self.path(d);
        let tmp = self
            .dir
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(io("writing a source upload"))?;
            let mut hasher = Digester::new(d.algorithm());
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| CoordError::BadRequest(format!("reading the upload: {e}")))?;
                if hasher.len() + chunk.len() as u64 > max_bytes {
                    return Err(too_large(max_bytes));
                }
                hasher.update(&chunk);
                f.write_all(&chunk)
                    .await
                    .map_err(io("writing a source upload"))?;
            }
            f.sync_all().await.map_err(io("syncing a source upload"))?;
            let size = hasher.len();
            let got = hasher.finish();
            if &got != d {
                return Err(mismatch(&got, d));
            }
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(io("storing a source snapshot"))?;
            let dir = target.parent().map(Path::to_owned);
            if let Some(dir) = dir {
                let _ =
                    tokio::task::spawn_blocking(move || archway_oci::atomic_file::sync_dir(&dir))
                        .await;
            }
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn read(&self, digest: &Digest) -> Result<Option<(SnapshotBytes, u64)>, CoordError> {
        let f = match tokio::fs::File::open(self.path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading a stored source")(e)),
        };
        let len = f
            .metadata()
            .await
            .map_err(io("reading a stored source"))?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024).boxed();
        Ok(Some((stream, len)))
    }
}

/// Snapshots on an object store, under `PREFIX/sources/`.
#[derive(Debug)]
pub struct ObjectSnapshots {
    store: Arc<AmazonS3>,
    prefix: String,
}

/// Parts of a snapshot upload (S3 wants at least 5 MiB but the last).
const SNAPSHOT_PART: usize = 8 * 1024 * 1024;

impl ObjectSnapshots {
    pub fn new(store: Arc<AmazonS3>, prefix: &str) -> ObjectSnapshots {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        ObjectSnapshots { store, prefix }
    }

    fn path(&self, digest: &Digest) -> object_store::path::Path {
        object_store::path::Path::from(format!(
            "{}sources/{}/{}.tar.gz",
            self.prefix,
            digest.algorithm(),
            digest.hex()
        ))
    }
}

#[async_trait]
impl SnapshotStore for ObjectSnapshots {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        match self.store.head(&self.path(digest)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_io("looking up a stored source")(e)),
        }
    }

    async fn put(
        &self,
        d: &Digest,
        mut body: UploadBody<'_>,
        max_bytes: u64,
    ) -> Result<u64, CoordError> {
        // Straight to the snapshot's own name: a multipart upload is invisible until it is
        // completed, and it is completed only once the digest matched.
        let upload = self
            .store
            .put_multipart(&self.path(d))
            .await
            .map_err(store_io("storing a source snapshot"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, SNAPSHOT_PART);
        let mut hasher = Digester::new(d.algorithm());
        let received = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| CoordError::BadRequest(format!("reading the upload: {e}")))?;
                if hasher.len() + chunk.len() as u64 > max_bytes {
                    return Err(too_large(max_bytes));
                }
                hasher.update(&chunk);
                // At most two parts in flight: memory stays bounded per upload.
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(store_io("storing a source snapshot"))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        let size = hasher.len();
        let got = hasher.finish();
        let verdict = match received {
            Err(e) => Err(e),
            Ok(()) if &got != d => Err(mismatch(&got, d)),
            Ok(()) => Ok(()),
        };
        match verdict {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(store_io("storing a source snapshot"))?;
                Ok(size)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    async fn read(&self, digest: &Digest) -> Result<Option<(SnapshotBytes, u64)>, CoordError> {
        match self.store.get(&self.path(digest)).await {
            Ok(r) => {
                let len = r.meta.size;
                let stream = r.into_stream().map_err(std::io::Error::other).boxed();
                Ok(Some((stream, len)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_io("reading a stored source")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let parts: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(parts)
    }

    #[tokio::test]
    async fn only_verified_bytes_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(dir.path(), 1024).unwrap();
        let data = b"a tarball, pretend";
        let d = Digest::sha256(data).to_string();
        assert!(!store.exists(&d).await.unwrap());
        let wrong = Digest::sha256(b"other").to_string();
        let e = store.put(&wrong, chunks(data)).await.unwrap_err();
        assert!(e.to_string().contains("the upload's digest is"), "{e}");
        assert!(!store.exists(&wrong).await.unwrap());
        assert_eq!(
            store.put(&d, chunks(data)).await.unwrap(),
            data.len() as u64
        );
        assert!(store.exists(&d).await.unwrap());
        let (_, len) = store.open_read(&d).await.unwrap();
        assert_eq!(len, data.len() as u64);
        // Nothing left behind in tmp/.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sources/tmp"))
                .unwrap()
                .count(),
            0
        );
        // Over the size limit.
        let big = vec![7u8; 2048];
        let e = store
            .put(&Digest::sha256(&big).to_string(), chunks(&big))
            .await
            .unwrap_err();
        assert!(matches!(e, CoordError::TooLarge(_)), "{e}");
        assert!(store.put("sha256:xyz", chunks(data)).await.is_err());
    }
}
