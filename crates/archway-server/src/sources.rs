//! Source snapshots (gzipped tarballs of a repository) and job artifact archives (gzipped
//! tarballs too), stored by digest so runners fetch them and identical archives are stored
//! once. Where they live is a [`SnapshotStore`]: the data directory
//! (`DATA/sources/sha256/<hex>.tar.gz`, `DATA/artifacts/…`, [`FsSnapshots`]) or the object
//! store the registry uses (`PREFIX/sources/sha256/<hex>.tar.gz`, `PREFIX/artifacts/…`,
//! [`ObjectSnapshots`]), which every server replica sharing the bucket sees at once.
//!
//! **Invariant:** an archive's name only ever holds bytes whose digest was verified: uploads
//! are hashed as they stream into a temporary file (fsynced, then renamed into place) or into
//! a multipart upload (completed only after the digest matched, aborted otherwise).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncWriteExt;

use archway_oci::{Digest, digest::Digester};

use crate::error::CoordError;

/// An archive's bytes as they arrive (errors already described).
pub type UploadBody<'a> = BoxStream<'a, Result<Bytes, String>>;
/// A stored archive's bytes.
pub type SnapshotBytes = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What a store holds: its area (a directory of the data directory, a prefix of the bucket)
/// and, for messages, its name and the server option that limits its size.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    area: &'static str,
    what: &'static str,
    flag: &'static str,
    /// Swept when unused (artifacts): a re-upload must make an archive look new again.
    swept: bool,
}

/// Source snapshots, under `sources/`.
pub const SOURCES: Kind = Kind {
    area: "sources",
    what: "source snapshots",
    flag: "--max-source-size",
    swept: false,
};

/// Job artifact archives, under `artifacts/`.
pub const ARTIFACTS: Kind = Kind {
    area: "artifacts",
    what: "artifact archives",
    flag: "--max-artifact-size",
    swept: true,
};

/// Where archives of one [`Kind`] are kept.
#[async_trait]
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// Size of a stored archive, `None` if there is none.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError>;
    /// Size of a stored archive that [`Self::older_than`] will not count as old for another
    /// grace period; `None` if there is none, or if its time cannot be refreshed without its
    /// bytes (the caller then stores it again).
    async fn refresh(&self, digest: &Digest) -> Result<Option<u64>, CoordError>;
    /// Stores `body`, which must hash to `digest` and be at most `max_bytes` long; nothing is
    /// visible unless it does. Returns the size.
    async fn put(
        &self,
        digest: &Digest,
        body: UploadBody<'_>,
        max_bytes: u64,
    ) -> Result<u64, CoordError>;
    /// A stored archive and its size, `None` if there is none.
    async fn read(&self, digest: &Digest) -> Result<Option<(SnapshotBytes, u64)>, CoordError>;
    /// Stored archives last written (or refreshed) more than `grace` ago.
    async fn older_than(&self, grace: Duration) -> Result<Vec<Digest>, CoordError>;
    /// Removes a stored archive (none is no error).
    async fn remove(&self, digest: &Digest) -> Result<(), CoordError>;
    /// The archive as a local file, when the store is the filesystem.
    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        let _ = digest;
        None
    }
}

/// Archives of one kind, on whichever [`SnapshotStore`] the server was given.
#[derive(Clone, Debug)]
pub struct SourceStore {
    store: Arc<dyn SnapshotStore>,
    kind: Kind,
    /// Largest archive accepted.
    pub max_bytes: u64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoordError {
    let context = context.into();
    move |source| CoordError::Io { context, source }
}

fn store_io(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> CoordError {
    let context = context.into();
    move |source| CoordError::Unavailable { context, source }
}

fn too_large(kind: Kind, max_bytes: u64) -> CoordError {
    CoordError::TooLarge(format!(
        "{} may be at most {} MiB (the server's {})",
        kind.what,
        max_bytes / (1024 * 1024),
        kind.flag
    ))
}

fn mismatch(got: &Digest, want: &Digest) -> CoordError {
    CoordError::BadRequest(format!(
        "the upload's digest is {got}, not {want}: it was changed or cut short"
    ))
}

/// `sha256:<hex>` of a stored file or object named `<hex>.tar.gz`.
fn digest_of_name(name: &str) -> Option<Digest> {
    let hex = name.strip_suffix(".tar.gz")?;
    format!("sha256:{hex}").parse().ok()
}

impl SourceStore {
    /// Source snapshots under `DIR/sources/` (created if missing; leftovers of interrupted
    /// uploads are removed).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SourceStore, CoordError> {
        Self::on_filesystem(dir, SOURCES, max_bytes)
    }

    /// The job artifact store, under `DIR/artifacts/`.
    pub fn open_artifacts(dir: &Path, max_bytes: u64) -> Result<SourceStore, CoordError> {
        Self::on_filesystem(dir, ARTIFACTS, max_bytes)
    }

    /// Archives of `kind` under `DIR/<area>/`.
    pub fn on_filesystem(
        dir: &Path,
        kind: Kind,
        max_bytes: u64,
    ) -> Result<SourceStore, CoordError> {
        Ok(SourceStore {
            store: Arc::new(FsSnapshots::open(dir, kind)?),
            kind,
            max_bytes,
        })
    }

    /// Archives of `kind` on an object store, under `PREFIX/<area>/`.
    pub fn on_object_store(
        store: Arc<AmazonS3>,
        prefix: &str,
        kind: Kind,
        max_bytes: u64,
    ) -> SourceStore {
        SourceStore {
            store: Arc::new(ObjectSnapshots::new(store, prefix, kind)),
            kind,
            max_bytes,
        }
    }

    fn parse(&self, digest: &str) -> Result<Digest, CoordError> {
        let d: Digest = digest
            .parse()
            .map_err(|e| CoordError::BadRequest(format!("`{digest}` is not a digest: {e}")))?;
        if d.algorithm().as_str() != "sha256" {
            return Err(CoordError::BadRequest(format!(
                "{} are addressed by sha256 digests",
                self.kind.what
            )));
        }
        Ok(d)
    }

    pub async fn exists(&self, digest: &str) -> Result<bool, CoordError> {
        let d = self.parse(digest)?;
        Ok(self.store.size(&d).await?.is_some())
    }

    /// Stored archives last written (or re-uploaded) more than `grace` ago, by digest.
    pub async fn older_than(&self, grace: Duration) -> Result<Vec<String>, CoordError> {
        let mut out: Vec<String> = self
            .store
            .older_than(grace)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes a stored archive.
    pub async fn remove(&self, digest: &str) -> Result<(), CoordError> {
        let d = self.parse(digest)?;
        self.store.remove(&d).await
    }

    /// Stores an archive from `body`, which must hash to `digest`.
    pub async fn put<E: std::fmt::Display>(
        &self,
        digest: &str,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin + Send,
    ) -> Result<u64, CoordError> {
        let d = self.parse(digest)?;
        // An archive already there is kept (drain nothing: the client may stop sending; what
        // we have is verified). One that is swept when unused has its time refreshed, so a
        // sweep spares it while the uploader records its use.
        let existing = if self.kind.swept {
            self.store.refresh(&d).await?
        } else {
            self.store.size(&d).await?
        };
        if let Some(size) = existing {
            return Ok(size);
        }
        let body = body.map_err(|e| e.to_string()).boxed();
        self.store.put(&d, body, self.max_bytes).await
    }

    /// A stored archive as a stream, with its size.
    pub async fn read(&self, digest: &str) -> Result<(SnapshotBytes, u64), CoordError> {
        let d = self.parse(digest)?;
        self.store.read(&d).await?.ok_or_else(|| {
            CoordError::NotFound(format!("none of the {} is {digest}", self.kind.what))
        })
    }

    /// The archive `digest` (whether or not it exists), to read from synchronous code on a
    /// blocking thread. Call it from the runtime: reading from an object store goes through
    /// the runtime's handle.
    pub fn stored(&self, digest: &str) -> Result<StoredArchive, CoordError> {
        Ok(StoredArchive {
            store: self.store.clone(),
            digest: self.parse(digest)?,
            rt: tokio::runtime::Handle::current(),
        })
    }
}

/// A stored archive read synchronously (see [`SourceStore::stored`]).
#[derive(Clone, Debug)]
pub struct StoredArchive {
    store: Arc<dyn SnapshotStore>,
    digest: Digest,
    rt: tokio::runtime::Handle,
}

impl StoredArchive {
    /// Its bytes, streamed. Blocks: call it on a blocking thread, never from async code.
    pub fn reader(&self) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        if let Some(path) = self.store.local_path(&self.digest) {
            return Ok(Box::new(std::fs::File::open(path)?));
        }
        let (bytes, _) = self
            .rt
            .block_on(self.store.read(&self.digest))
            .map_err(std::io::Error::other)?
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} is not stored", self.digest),
                )
            })?;
        Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
            tokio_util::io::StreamReader::new(bytes),
            self.rt.clone(),
        )))
    }
}

/// Archives in `DATA/<area>/`.
#[derive(Debug)]
pub struct FsSnapshots {
    dir: PathBuf,
    kind: Kind,
}

impl FsSnapshots {
    pub fn open(dir: &Path, kind: Kind) -> Result<FsSnapshots, CoordError> {
        let dir = dir.join(kind.area);
        let creating = format!("creating the store of {}", kind.what);
        std::fs::create_dir_all(dir.join("sha256")).map_err(io(&creating))?;
        std::fs::create_dir_all(dir.join("tmp")).map_err(io(&creating))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(FsSnapshots { dir, kind })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(format!("{}.tar.gz", digest.hex()))
    }

    fn reading(&self) -> String {
        format!("reading the stored {}", self.kind.what)
    }
}

#[async_trait]
impl SnapshotStore for FsSnapshots {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        match tokio::fs::metadata(self.path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(self.reading())(e)),
        }
    }

    async fn refresh(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        let Some(size) = self.size(digest).await? else {
            return Ok(None);
        };
        let path = self.path(digest);
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()))
        })
        .await;
        Ok(Some(size))
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
        let writing = format!("writing an upload of {}", self.kind.what);
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&writing))?;
            let mut hasher = Digester::new(d.algorithm());
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| CoordError::BadRequest(format!("reading the upload: {e}")))?;
                if hasher.len() + chunk.len() as u64 > max_bytes {
                    return Err(too_large(self.kind, max_bytes));
                }
                hasher.update(&chunk);
                f.write_all(&chunk).await.map_err(io(&writing))?;
            }
            f.sync_all().await.map_err(io(&writing))?;
            let size = hasher.len();
            let got = hasher.finish();
            if &got != d {
                return Err(mismatch(&got, d));
            }
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(io(format!("storing one of the {}", self.kind.what)))?;
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
            Err(e) => return Err(io(self.reading())(e)),
        };
        let len = f.metadata().await.map_err(io(self.reading()))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024).boxed();
        Ok(Some((stream, len)))
    }

    async fn older_than(&self, grace: Duration) -> Result<Vec<Digest>, CoordError> {
        let dir = self.dir.join("sha256");
        Ok(tokio::task::spawn_blocking(move || {
            let cutoff = SystemTime::now() - grace;
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Some(d) = digest_of_name(&e.file_name().to_string_lossy()) else {
                    continue;
                };
                if e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t <= cutoff)
                {
                    out.push(d);
                }
            }
            out
        })
        .await
        .unwrap_or_default())
    }

    async fn remove(&self, digest: &Digest) -> Result<(), CoordError> {
        match tokio::fs::remove_file(self.path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing one of the {}", self.kind.what))(e)),
        }
    }

    fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        Some(self.path(digest))
    }
}

/// Archives on an object store, under `PREFIX/<area>/`.
#[derive(Debug)]
pub struct ObjectSnapshots {
    store: Arc<AmazonS3>,
    prefix: String,
    kind: Kind,
}

/// Parts of an upload (S3 wants at least 5 MiB but the last).
const SNAPSHOT_PART: usize = 8 * 1024 * 1024;

/// An object's time changes only when it is written: one written within this long counts as
/// refreshed (far inside the sweep's grace period); an older one is written again.
const OBJECT_FRESH: Duration = Duration::from_secs(600);

impl ObjectSnapshots {
    pub fn new(store: Arc<AmazonS3>, prefix: &str, kind: Kind) -> ObjectSnapshots {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        ObjectSnapshots {
            store,
            prefix,
            kind,
        }
    }

    fn dir(&self) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}{}/sha256", self.prefix, self.kind.area))
    }

    fn path(&self, digest: &Digest) -> object_store::path::Path {
        object_store::path::Path::from(format!(
            "{}{}/{}/{}.tar.gz",
            self.prefix,
            self.kind.area,
            digest.algorithm(),
            digest.hex()
        ))
    }

    fn storing(&self) -> String {
        format!("storing one of the {}", self.kind.what)
    }

    fn reading(&self) -> String {
        format!("reading the stored {}", self.kind.what)
    }
}

#[async_trait]
impl SnapshotStore for ObjectSnapshots {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        match self.store.head(&self.path(digest)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_io(self.reading())(e)),
        }
    }

    async fn refresh(&self, digest: &Digest) -> Result<Option<u64>, CoordError> {
        match self.store.head(&self.path(digest)).await {
            Ok(m) => {
                let fresh = SystemTime::now()
                    .duration_since(SystemTime::from(m.last_modified))
                    .is_ok_and(|age| age < OBJECT_FRESH);
                Ok(fresh.then_some(m.size))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_io(self.reading())(e)),
        }
    }

    async fn put(
        &self,
        d: &Digest,
        mut body: UploadBody<'_>,
        max_bytes: u64,
    ) -> Result<u64, CoordError> {
        // Straight to the archive's own name: a multipart upload is invisible until it is
        // completed, and it is completed only once the digest matched.
        let upload = self
            .store
            .put_multipart(&self.path(d))
            .await
            .map_err(store_io(self.storing()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, SNAPSHOT_PART);
        let mut hasher = Digester::new(d.algorithm());
        let received = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| CoordError::BadRequest(format!("reading the upload: {e}")))?;
                if hasher.len() + chunk.len() as u64 > max_bytes {
                    return Err(too_large(self.kind, max_bytes));
                }
                hasher.update(&chunk);
                // At most two parts in flight: memory stays bounded per upload.
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(store_io(self.storing()))?;
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
                writer.finish().await.map_err(store_io(self.storing()))?;
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
            Err(e) => Err(store_io(self.reading())(e)),
        }
    }

    async fn older_than(&self, grace: Duration) -> Result<Vec<Digest>, CoordError> {
        let cutoff = SystemTime::now() - grace;
        let listing = format!("listing the stored {}", self.kind.what);
        let mut out = Vec::new();
        let mut objects = self.store.list(Some(&self.dir()));
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(store_io(&listing))?;
            let Some(d) = meta.location.filename().and_then(digest_of_name) else {
                continue;
            };
            if SystemTime::from(meta.last_modified) <= cutoff {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn remove(&self, digest: &Digest) -> Result<(), CoordError> {
        match self.store.delete(&self.path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_io(format!("removing one of the {}", self.kind.what))(
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
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
        let (bytes, len) = store.read(&d).await.unwrap();
        assert_eq!(len, data.len() as u64);
        let read: Vec<Bytes> = bytes.try_collect().await.unwrap();
        assert_eq!(read.concat(), data);
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
        assert!(e.to_string().contains("--max-source-size"), "{e}");
        assert!(store.put("sha256:xyz", chunks(data)).await.is_err());
    }

    #[tokio::test]
    async fn artifacts_are_listed_by_age_refreshed_by_a_reupload_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open_artifacts(dir.path(), 1024).unwrap();
        let data = b"an artifact archive, pretend";
        let d = Digest::sha256(data).to_string();
        store.put(&d, chunks(data)).await.unwrap();
        let file = dir
            .path()
            .join("artifacts/sha256")
            .join(format!("{}.tar.gz", Digest::sha256(data).hex()));
        assert!(file.is_file());
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let age = |t: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        age(an_hour_ago);
        assert_eq!(
            store.older_than(Duration::from_secs(60)).await.unwrap(),
            std::slice::from_ref(&d)
        );
        // Uploading the same bytes again keeps the file and makes it new.
        store.put(&d, chunks(data)).await.unwrap();
        assert!(
            store
                .older_than(Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        // Read synchronously, as the planner of dynamic child pipelines does.
        let archive = store.stored(&d).unwrap();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut archive.reader().unwrap(), &mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert_eq!(read, data);
        store.remove(&d).await.unwrap();
        assert!(!store.exists(&d).await.unwrap());
        store.remove(&d).await.unwrap();
        let e = match store.read(&d).await {
            Err(e) => e,
            Ok(_) => panic!("a removed archive was read"),
        };
        assert!(
            e.to_string().contains("none of the artifact archives is"),
            "{e}"
        );
    }

    /// The object-store side of the same contract, on the test S3 server (`ARCHWAY_TEST_S3`,
    /// started by scripts/test.sh): verified uploads only, re-uploads within the freshness
    /// window keep the object, listing by age, removal, and the blocking reader the planner
    /// of dynamic child pipelines uses.
    #[tokio::test]
    async fn artifacts_on_the_object_store() {
        use archway_registry::storage::s3::{S3Config, S3Storage};
        let Ok(bucket) = std::env::var("ARCHWAY_TEST_S3") else {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "SKIPPED: artifacts_on_the_object_store (ARCHWAY_TEST_S3 is not set; scripts/test.sh starts an S3 server)"
                );
            }
            return;
        };
        let location = format!(
            "{}/t{}",
            bucket.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        );
        let storage = S3Storage::open(&S3Config::new(location.parse().unwrap())).unwrap();
        let (client, prefix) = storage.client();
        let store = SourceStore::on_object_store(client.clone(), &prefix, ARTIFACTS, 1024);
        let data = b"an artifact archive on the store, pretend";
        let d = Digest::sha256(data).to_string();
        // A wrong digest or too many bytes leave nothing behind.
        let wrong = Digest::sha256(b"other").to_string();
        let e = store.put(&wrong, chunks(data)).await.unwrap_err();
        assert!(e.to_string().contains("the upload's digest is"), "{e}");
        assert!(!store.exists(&wrong).await.unwrap());
        let big = vec![7u8; 2048];
        let big_digest = Digest::sha256(&big).to_string();
        let e = store.put(&big_digest, chunks(&big)).await.unwrap_err();
        assert!(e.to_string().contains("--max-artifact-size"), "{e}");
        assert!(!store.exists(&big_digest).await.unwrap());

        assert_eq!(
            store.put(&d, chunks(data)).await.unwrap(),
            data.len() as u64
        );
        let key = object_store::path::Path::from(format!(
            "{prefix}/artifacts/sha256/{}.tar.gz",
            Digest::sha256(data).hex()
        ));
        let written = client.head(&key).await.unwrap();
        // Stored again within the freshness window: kept as it is, the body not read.
        let unread = futures_util::stream::iter(vec![Err::<Bytes, _>("never read")]);
        assert_eq!(store.put(&d, unread).await.unwrap(), data.len() as u64);
        assert_eq!(client.head(&key).await.unwrap().e_tag, written.e_tag);
        let (bytes, len) = store.read(&d).await.unwrap();
        assert_eq!(len, data.len() as u64);
        let read: Vec<Bytes> = bytes.try_collect().await.unwrap();
        assert_eq!(read.concat(), data);
        let archive = store.stored(&d).unwrap();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut archive.reader().unwrap(), &mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert_eq!(read, data);
        // Listed by age (the store's times have whole seconds).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            store.older_than(Duration::ZERO).await.unwrap(),
            std::slice::from_ref(&d)
        );
        assert!(
            store
                .older_than(Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty()
        );
        store.remove(&d).await.unwrap();
        assert!(!store.exists(&d).await.unwrap());
        store.remove(&d).await.unwrap();
        assert!(store.older_than(Duration::ZERO).await.unwrap().is_empty());
    }
}
