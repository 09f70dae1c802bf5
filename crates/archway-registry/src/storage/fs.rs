//! The filesystem backend: the embedded default.
//!
//! ```text
//! ROOT/blobs/<alg>/<hex[..2]>/<hex>                           blob content (immutable;
//!                                                               sha256's 256 prefixes made at open)
//! ROOT/repositories/<name>/_layers/<alg>/<hex>                  blob link (empty file)
//! ROOT/repositories/<name>/_manifests/revisions/<alg>/<hex>     manifest link (media type)
//! ROOT/repositories/<name>/_manifests/tags/<tag>                tag (digest)
//! ROOT/repositories/<name>/_referrers/<alg>/<subject hex>/<alg>-<hex>   referrer descriptor
//! ROOT/uploads/<id>/info                                        upload owner (repository)
//! ROOT/uploads/<id>/data                                        bytes received so far
//! ```
//!
//! Crash safety: every file that is ever replaced (tags, links with content, referrers) is
//! written atomically (temporary file, fsync, rename, directory fsync); blobs are written to
//! their upload file (manifests to a temporary file beside the uploads), fsynced, verified and
//! renamed into place, so a blob path only ever holds verified content and `blobs/` never
//! holds a temporary file. Operations that create several files order them so that whatever
//! survives a `kill -9` (or a power cut) is consistent: blob before link, manifest before
//! revision link, revision before tag. Each step is durable before the next starts and before
//! the client hears of it; directory fsyncs are shared between concurrent requests
//! ([`DirSyncs`], group commit), never skipped. An upload's data is flushed to disk in the
//! background as it arrives, so the fsync at commit has little left to do.
//!
//! Upload hashing state lives in memory; after a restart (or once forgotten for idleness) it
//! is rebuilt by hashing the data file once, so uploads resume across restarts. Upload files
//! are opened per request and closed at its end: an abandoned session holds no descriptor.
//! A session whose files are gone (expired, or removed by `registry gc` in another process)
//! is unknown on its next use.
//!
//! Slow clients never pin a blocking thread: blob reads are `pread`s of one chunk at a time
//! (the next one read ahead), upload writes one batch at a time, each a short blocking task,
//! so a client that stops reading or sending holds memory for two chunks and no thread.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use archway_oci::atomic_file::{self, TEMP_PREFIX};
use archway_oci::{Algorithm, Descriptor, Digest, Digester};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::dir_sync::DirSyncs;
use super::{
    Aged, BlobContent, ByteStream, Result, Storage, StorageError, TOUCH_INTERVAL, UploadInfo,
};
use crate::names::RepoName;

/// Chunk size for streaming reads; blobs up to this size are read whole.
const READ_CHUNK: u64 = 1024 * 1024;
/// Received bytes written at a time (per connection, so small).
const WRITE_BATCH: usize = 256 * 1024;
/// The upload writer starts flushing data to disk every this many bytes, in the background,
/// so that the fsync at commit has little left to do and disk writes overlap with receiving.
/// At most one such flush runs per upload: the next waits for it, which bounds the data not
/// yet on disk to about twice this.
const SYNC_EVERY: u64 = 16 * 1024 * 1024;
/// Most buffers in one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 1024;

/// The hashing state of an upload session's data, kept between requests.
#[derive(Debug)]
struct LoadedUpload {
    digester: Digester,
    size: u64,
}

/// What became of a session's in-memory slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Open,
    /// Committed, cancelled or purged: the session is gone.
    Closed,
    /// Dropped from memory for idleness: look the session up again.
    Forgotten,
}

/// In-memory state of an upload session. `loaded` is `None` until first used after
/// (re)start, and again after a failed write so that the next use re-derives it from disk.
/// `state` changes under the slot's lock, so a request that raced for the slot sees it.
#[derive(Debug)]
struct UploadSlot {
    owner: String,
    loaded: Option<LoadedUpload>,
    state: SlotState,
    last_used: Instant,
}

type SlotRef = Arc<tokio::sync::Mutex<UploadSlot>>;

/// Filesystem storage rooted at one directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: Arc<PathBuf>,
    uploads: Arc<Mutex<HashMap<String, SlotRef>>>,
    dir_syncs: Arc<DirSyncs>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Io {
            context: "storage worker".into(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

fn ctx(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        context: path.display().to_string(),
        source,
    }
}

/// `Ok(None)` for a missing file, the content otherwise.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ctx(path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx(path)(e)),
    }
}

/// Directory entries that are not temporary files, with their modification times.
fn list_dir(dir: &Path) -> Result<Option<Vec<(String, SystemTime)>>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(ctx(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        out.push((name, modified));
    }
    Ok(Some(out))
}

/// Reads `<alg>/<hex>` link directories into digests.
fn list_digest_dir(dir: &Path) -> Result<Vec<Aged<Digest>>> {
    let mut out = Vec::new();
    for alg in Algorithm::ALL {
        for (hex, modified) in list_dir(&dir.join(alg.as_str()))?.unwrap_or_default() {
            if let Ok(d) = Digest::new(alg, &hex) {
                out.push(Aged { item: d, modified });
            }
        }
    }
    Ok(out)
}

fn valid_upload_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && !id.contains(['/', '.'])
}

impl FsStorage {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        let dir_syncs = Arc::new(DirSyncs::default());
        for sub in ["blobs", "repositories", "uploads"] {
            let d = root.join(sub);
            dir_syncs.create_dir_all(&d).map_err(ctx(&d))?;
        }
        // The 256 sha256 prefix directories exist from the start (made durable once), so a
        // blob commit never pays for a new directory's durability on top of its own.
        let sha256 = root.join("blobs").join(Algorithm::Sha256.as_str());
        dir_syncs.create_dir_all(&sha256).map_err(ctx(&sha256))?;
        let mut created = false;
        for prefix in 0..=255u8 {
            let d = sha256.join(format!("{prefix:02x}"));
            match fs::create_dir(&d) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ctx(&d)(e)),
            }
        }
        if created {
            dir_syncs.sync(&sha256).map_err(ctx(&sha256))?;
        }
        Ok(FsStorage {
            root: Arc::new(root),
            uploads: Arc::default(),
            dir_syncs,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        blob_path(&self.root, d)
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn revision_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn tag_path(&self, repo: &RepoName, tag: &str) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags").join(tag)
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// The in-memory slot of an upload owned by `repo`, locked. The first use after a
    /// (re)start checks the session's owner on disk; later uses check that it is still there.
    async fn lock_upload(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<UploadSlot>> {
        let unknown = || StorageError::UploadUnknown(id.to_owned());
        if !valid_upload_id(id) {
            return Err(unknown());
        }
        let info = self.upload_dir(id).join("info");
        loop {
            let known = self.uploads_map().get(id).cloned();
            let slot = match known.clone() {
                Some(slot) => slot,
                None => {
                    let info = info.clone();
                    let owner = blocking(move || read_optional(&info))
                        .await?
                        .ok_or_else(unknown)?;
                    let owner = String::from_utf8_lossy(&owner).into_owned();
                    self.uploads_map()
                        .entry(id.to_owned())
                        .or_insert_with(|| {
                            Arc::new(tokio::sync::Mutex::new(UploadSlot {
                                owner,
                                loaded: None,
                                state: SlotState::Open,
                                last_used: Instant::now(),
                            }))
                        })
                        .clone()
                }
            };
            let mut guard = slot.lock_owned().await;
            match guard.state {
                SlotState::Closed => return Err(unknown()),
                SlotState::Forgotten => continue,
                SlotState::Open => {}
            }
            if guard.owner != repo.as_str() {
                return Err(unknown());
            }
            if known.is_some() {
                // Still on disk? Expiry, or `registry gc` in another process, may have removed it.
                let info = info.clone();
                if !blocking(move || Ok(info.exists())).await? {
                    self.close_upload(id, &mut guard);
                    return Err(unknown());
                }
            }
            guard.last_used = Instant::now();
            return Ok(guard);
        }
    }

    fn uploads_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SlotRef>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a session in memory (its files are already gone).
    fn close_upload(&self, id: &str, slot: &mut UploadSlot) {
        slot.state = SlotState::Closed;
        slot.loaded = None;
        self.uploads_map().remove(id);
    }

    /// Opens a session's data file for this request, with its hashing state: the one kept in
    /// memory if it matches the file, else rebuilt by hashing the file (after a restart, after
    /// being forgotten, or after a failed write).
    async fn open_data(&self, id: &str, slot: &mut UploadSlot) -> Result<(File, LoadedUpload)> {
        let data = self.upload_dir(id).join("data");
        let kept = slot.loaded.take();
        let unknown = StorageError::UploadUnknown(id.to_owned());
        let opened = blocking(move || {
            let mut file = match OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&data)
            {
                Ok(f) => f,
                // The session directory is gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unknown),
                Err(e) => return Err(ctx(&data)(e)),
            };
            let len = file.metadata().map_err(ctx(&data))?.len();
            let loaded = match kept {
                Some(l) if l.size == len => l,
                _ => {
                    file.seek(SeekFrom::Start(0)).map_err(ctx(&data))?;
                    let digester = Digester::new(Algorithm::Sha256)
                        .read_all(&mut file)
                        .map_err(ctx(&data))?;
                    LoadedUpload {
                        size: digester.len(),
                        digester,
                    }
                }
            };
            Ok((file, loaded))
        })
        .await;
        if let Err(StorageError::UploadUnknown(_)) = &opened {
            self.close_upload(id, slot);
        }
        opened
    }

    /// Writes a request body into an upload. Chunks are hashed as they arrive while the
    /// previous batch is written by a short blocking task (vectored, without copying), so
    /// hashing and the copy into the page cache run on two cores, and a client that stops
    /// sending holds no thread.
    async fn write_body(
        &self,
        file: File,
        mut loaded: LoadedUpload,
        mut body: ByteStream,
    ) -> (Option<LoadedUpload>, Result<()>) {
        let file = Arc::new(file);
        let mut digester =
            std::mem::replace(&mut loaded.digester, Digester::new(Algorithm::Sha256));
        let mut writer = BatchWriter {
            file,
            in_flight: None,
            syncing: None,
            written: loaded.size,
            unsynced: 0,
        };
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        let mut body_result = Ok(());
        let mut write_result = Ok(());
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    digester.update(&c);
                    batched += c.len();
                    batch.push(c);
                    if batched >= WRITE_BATCH || batch.len() >= MAX_IOVECS {
                        batched = 0;
                        write_result = writer.submit(std::mem::take(&mut batch)).await;
                        if write_result.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    body_result = Err(StorageError::BodyRead(e.to_string()));
                    break;
                }
            }
        }
        // Everything hashed is written: the hash and the file never disagree.
        if write_result.is_ok() && !batch.is_empty() {
            write_result = writer.submit(batch).await;
        }
        // Waited for even after a failure: no task keeps the file open past the request.
        let finished = writer.finish().await;
        if write_result.is_ok() {
            write_result = finished;
        }
        match write_result {
            Ok(()) => {
                loaded.digester = digester;
                loaded.size = writer.written;
                (Some(loaded), body_result)
            }
            Err(e) => (
                None,
                Err(StorageError::Io {
                    context: "writing upload".into(),
                    source: e,
                }),
            ),
        }
    }
}

/// Writes batches of an upload body one at a time, each in a short blocking task, and flushes
/// what was written to disk every [`SYNC_EVERY`] bytes in another, so that receiving and
/// writing never wait for the disk (unless it falls two flushes behind).
struct BatchWriter {
    file: Arc<File>,
    in_flight: Option<JoinHandle<io::Result<u64>>>,
    syncing: Option<JoinHandle<io::Result<()>>>,
    written: u64,
    unsynced: u64,
}

impl BatchWriter {
    /// Waits for the previous batch, then starts writing `batch`.
    async fn submit(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        self.wait_write().await?;
        if self.unsynced >= SYNC_EVERY {
            // Everything written so far goes to disk while the next batches are written.
            self.wait_sync().await?;
            self.unsynced = 0;
            let file = self.file.clone();
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        let n = batch.iter().map(|b| b.len() as u64).sum::<u64>();
        self.unsynced += n;
        let file = self.file.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_all_vectored(&*file, &batch)?;
            Ok(n)
        }));
        Ok(())
    }

    /// Waits for the batch being written and the flush running, if any. A failed flush
    /// fails the write: the data may not be on disk, and a later fsync might not say so.
    async fn finish(&mut self) -> io::Result<()> {
        let written = self.wait_write().await;
        let synced = self.wait_sync().await;
        written.and(synced)
    }

    async fn wait_write(&mut self) -> io::Result<()> {
        if let Some(h) = self.in_flight.take() {
            self.written += h.await.map_err(|e| io::Error::other(e.to_string()))??;
        }
        Ok(())
    }

    async fn wait_sync(&mut self) -> io::Result<()> {
        match self.syncing.take() {
            Some(h) => h.await.map_err(|e| io::Error::other(e.to_string()))?,
            None => Ok(()),
        }
    }
}

/// Writes every chunk, in order, with as few `writev` calls as possible.
fn write_all_vectored(mut file: impl Write, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("blobs")
        .join(d.algorithm().as_str())
        .join(&d.hex()[..2])
        .join(d.hex())
}

/// Reads `len` bytes at `offset` (one short blocking task: a `pread`, into memory that is
/// not zeroed first since the read overwrites it).
fn read_chunk(file: Arc<File>, offset: u64, len: u64) -> JoinHandle<io::Result<Bytes>> {
    tokio::task::spawn_blocking(move || {
        let len = len as usize;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            // Fills the spare capacity (at least `len`; what lies past it is cut below).
            let at = offset + buf.len() as u64;
            let n = rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.truncate(len);
        Ok(Bytes::from(buf))
    })
}

/// Streams `len` bytes of `file` from `start`, one [`READ_CHUNK`] at a time with the next
/// chunk read ahead. No thread waits for the client: a reader that stops holds two chunks.
fn stream_file(file: File, start: u64, len: u64) -> ByteStream {
    // Read sequentially: the kernel reads ahead further (a hint; failing to give it is harmless).
    let _ = rustix::fs::fadvise(&file, start, None, rustix::fs::Advice::Sequential);
    let file = Arc::new(file);
    let end = start + len;
    let mut next = start;
    let mut ahead: Option<JoinHandle<io::Result<Bytes>>> = None;
    let start_read = move |next: &mut u64| {
        let n = READ_CHUNK.min(end - *next);
        let h = read_chunk(file.clone(), *next, n);
        *next += n;
        h
    };
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        if ahead.is_none() {
            if next >= end {
                return Poll::Ready(None);
            }
            ahead = Some(start_read(&mut next));
        }
        let Some(reading) = ahead.as_mut() else {
            return Poll::Ready(None);
        };
        let chunk = match std::task::ready!(std::pin::Pin::new(reading).poll(cx)) {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        ahead = None;
        match &chunk {
            Ok(_) if next < end => ahead = Some(start_read(&mut next)),
            Ok(_) => {}
            Err(_) => next = end, // end the stream after the error
        }
        Poll::Ready(Some(chunk))
    }))
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ctx(&path)(e)),
        })
        .await
    }

    async fn read_blob(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<BlobContent> {
        let path = self.blob_path(digest);
        let d = digest.clone();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::BlobUnknown(d));
                }
                Err(e) => return Err(ctx(&path)(e)),
            };
            let size = file.metadata().map_err(ctx(&path))?.len();
            let (start, len) = match range {
                Some((s, e)) => (s, e.min(size.saturating_sub(1)) + 1 - s),
                None => (0, size),
            };
            if range.is_none() && size <= READ_CHUNK {
                let mut buf = Vec::with_capacity(size as usize);
                file.read_to_end(&mut buf).map_err(ctx(&path))?;
                return Ok(BlobContent::Bytes(buf.into()));
            }
            Ok(BlobContent::Stream(stream_file(file, start, len)))
        })
        .await
    }

    async fn read_blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let path = self.blob_path(digest);
        Ok(blocking(move || read_optional(&path))
            .await?
            .map(Bytes::from))
    }

    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let path = self.blob_path(digest);
        // Staged among the uploads, not beside the blob: a crash mid-write leaves nothing
        // under blobs/ (the leftover is swept like any temporary file).
        let staged = atomic_file::temp_path_for(&self.root.join("uploads").join(digest.hex()));
        let syncs = self.dir_syncs.clone();
        blocking(move || {
            if path.exists() {
                touch(&path);
                return Ok(());
            }
            let written = (|| {
                let mut f = File::create(&staged)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                syncs.commit(&staged, &path)
            })();
            if written.is_err() {
                let _ = fs::remove_file(&staged);
            }
            written.map_err(ctx(&path))
        })
        .await
    }

    async fn touch_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        blocking(move || Ok(touch(&path))).await
    }

    async fn list_blobs(&self) -> Result<Vec<Aged<Digest>>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            for alg in Algorithm::ALL {
                let dir = root.join("blobs").join(alg.as_str());
                for (prefix, _) in list_dir(&dir)?.unwrap_or_default() {
                    for (hex, modified) in list_dir(&dir.join(&prefix))?.unwrap_or_default() {
                        if let Ok(d) = Digest::new(alg, &hex) {
                            out.push(Aged { item: d, modified });
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.item.cmp(&b.item));
            Ok(out)
        })
        .await
    }

    async fn delete_blob_unused_since(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        blocking(move || remove_if_unused_since(&path, cutoff)).await
    }

    async fn sweep_temporary(&self, cutoff: SystemTime) -> Result<usize> {
        let root = self.root.clone();
        blocking(move || sweep_temp_files(&root, cutoff).map_err(ctx(&root))).await
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let path = self.layer_link(repo, digest);
        let syncs = self.dir_syncs.clone();
        blocking(move || create_link(&syncs, &path)).await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layer_link(repo, digest);
        blocking(move || Ok(path.exists())).await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layer_link(repo, digest);
        blocking(move || remove_optional(&path)).await
    }

    async fn list_blob_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>> {
        let dir = self.repo_dir(repo).join("_layers");
        blocking(move || list_digest_dir(&dir)).await
    }

    async fn unlink_blob_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        let path = self.layer_link(repo, digest);
        blocking(move || Ok(remove_if_unused_since(&path, cutoff)?.is_some())).await
    }

    async fn link_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
    ) -> Result<()> {
        let path = self.revision_link(repo, digest);
        let media_type = media_type.to_owned();
        let syncs = self.dir_syncs.clone();
        blocking(move || {
            if read_optional(&path)?.as_deref() == Some(media_type.as_bytes()) {
                touch(&path);
                return Ok(());
            }
            syncs
                .write(&path, media_type.as_bytes())
                .map_err(ctx(&path))
        })
        .await
    }

    async fn manifest_media_type(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        let path = self.revision_link(repo, digest);
        let bytes = blocking(move || read_optional(&path)).await?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.revision_link(repo, digest);
        blocking(move || remove_optional(&path)).await
    }

    async fn list_manifest_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>> {
        let dir = self.repo_dir(repo).join("_manifests/revisions");
        blocking(move || list_digest_dir(&dir)).await
    }

    async fn unlink_manifest_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        let path = self.revision_link(repo, digest);
        blocking(move || Ok(remove_if_unused_since(&path, cutoff)?.is_some())).await
    }

    async fn set_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<()> {
        let path = self.tag_path(repo, tag);
        let value = digest.to_string();
        let syncs = self.dir_syncs.clone();
        blocking(move || {
            if read_optional(&path)?.as_deref() == Some(value.as_bytes()) {
                return Ok(());
            }
            syncs.write(&path, value.as_bytes()).map_err(ctx(&path))
        })
        .await
    }

    async fn get_tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>> {
        let path = self.tag_path(repo, tag);
        let bytes = blocking(move || read_optional(&path)).await?;
        Ok(bytes.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let path = self.tag_path(repo, tag);
        blocking(move || remove_optional(&path)).await
    }

    async fn list_tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let repo_dir = self.repo_dir(repo);
        blocking(move || {
            if !is_repository(&repo_dir) {
                return Ok(None);
            }
            let mut tags: Vec<String> = list_dir(&repo_dir.join("_manifests/tags"))?
                .unwrap_or_default()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            tags.sort();
            Ok(Some(tags))
        })
        .await
    }

    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<()> {
        let path = self.referrers_dir(repo, subject).join(format!(
            "{}-{}",
            referrer.digest.algorithm(),
            referrer.digest.hex()
        ));
        let bytes = serde_json::to_vec(referrer)
            .unwrap_or_else(|e| unreachable!("descriptor serialises: {e}"));
        let syncs = self.dir_syncs.clone();
        blocking(move || syncs.write(&path, &bytes).map_err(ctx(&path))).await
    }

    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let path = self.referrers_dir(repo, subject).join(format!(
            "{}-{}",
            referrer.algorithm(),
            referrer.hex()
        ));
        blocking(move || remove_optional(&path).map(|_| ())).await
    }

    async fn list_referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.referrers_dir(repo, subject);
        blocking(move || {
            let mut out = Vec::new();
            let mut names: Vec<String> = list_dir(&dir)?
                .unwrap_or_default()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            names.sort();
            for name in names {
                let path = dir.join(&name);
                if let Some(bytes) = read_optional(&path)?
                    && let Ok(d) = serde_json::from_slice::<Descriptor>(&bytes)
                {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_repositories(&self) -> Result<Vec<RepoName>> {
        let base = self.root.join("repositories");
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![String::new()];
            while let Some(prefix) = stack.pop() {
                let dir = base.join(&prefix);
                for (name, _) in list_dir(&dir)?.unwrap_or_default() {
                    if name.starts_with('_') {
                        continue;
                    }
                    let full = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}/{name}")
                    };
                    let path = base.join(&full);
                    if !path.is_dir() {
                        continue;
                    }
                    if is_repository(&path)
                        && let Some(repo) = RepoName::parse(&full)
                    {
                        out.push(repo);
                    }
                    stack.push(full);
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, repo: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.upload_dir(&id);
        let owner = repo.as_str().to_owned();
        blocking(move || {
            fs::create_dir_all(&dir).map_err(ctx(&dir))?;
            // Atomic but not fsynced: losing a session to a power cut only makes the client
            // start its upload again. The data file appears with the first chunk.
            let info = dir.join("info");
            let tmp = atomic_file::temp_path_for(&info);
            fs::write(&tmp, owner.as_bytes()).map_err(ctx(&tmp))?;
            fs::rename(&tmp, &info).map_err(ctx(&info))
        })
        .await?;
        Ok(id)
    }

    async fn upload_size(&self, repo: &RepoName, id: &str) -> Result<u64> {
        let guard = self.lock_upload(repo, id).await?;
        if let Some(l) = &guard.loaded {
            return Ok(l.size);
        }
        let data = self.upload_dir(id).join("data");
        blocking(move || match fs::metadata(&data) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(ctx(&data)(e)),
        })
        .await
    }

    async fn append_upload(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let mut guard = self.lock_upload(repo, id).await?;
        let (file, loaded) = self.open_data(id, &mut guard).await?;
        if let Some(start) = start
            && start != loaded.size
        {
            let size = loaded.size;
            guard.loaded = Some(loaded);
            return Err(StorageError::UploadOffset {
                expected: start,
                size,
            });
        }
        let (loaded, result) = self.write_body(file, loaded, body).await;
        let size = loaded.as_ref().map(|l| l.size);
        guard.loaded = loaded;
        result?;
        Ok(size.unwrap_or_default())
    }

    async fn commit_upload(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64> {
        let mut guard = self.lock_upload(repo, id).await?;
        let (mut file, loaded) = self.open_data(id, &mut guard).await?;
        let upload_dir = self.upload_dir(id);
        let target = self.blob_path(digest);
        let link = self.layer_link(repo, digest);
        let expected = digest.clone();
        let unknown = StorageError::UploadUnknown(id.to_owned());
        let syncs = self.dir_syncs.clone();
        let result = blocking(move || {
            let data = upload_dir.join("data");
            let LoadedUpload { digester, size } = loaded;
            file.sync_all().map_err(ctx(&data))?;
            let actual = if expected.algorithm() == Algorithm::Sha256 {
                digester.finish()
            } else {
                file.seek(SeekFrom::Start(0)).map_err(ctx(&data))?;
                Digester::new(expected.algorithm())
                    .read_all(&mut file)
                    .map_err(ctx(&data))?
                    .finish()
            };
            drop(file);
            if actual != expected {
                let _ = fs::remove_dir_all(&upload_dir);
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            // Blob first, then the repository's link to it.
            if target.exists() {
                touch(&target);
            } else {
                match syncs.commit(&data, &target) {
                    Ok(()) => {}
                    // The session was purged underneath us (garbage collection).
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !data.exists() => {
                        return Err(unknown);
                    }
                    Err(e) => return Err(ctx(&target)(e)),
                }
            }
            create_link(&syncs, &link)?;
            fs::remove_dir_all(&upload_dir).map_err(ctx(&upload_dir))?;
            Ok(size)
        })
        .await;
        self.close_upload(id, &mut guard);
        result
    }

    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let mut guard = self.lock_upload(repo, id).await?;
        let dir = self.upload_dir(id);
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ctx(&dir)(e)),
        })
        .await?;
        self.close_upload(id, &mut guard);
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<UploadInfo>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for (id, modified) in list_dir(&dir)?.unwrap_or_default() {
                let up = dir.join(&id);
                let repository = read_optional(&up.join("info"))?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let data_modified = fs::metadata(up.join("data"))
                    .and_then(|m| m.modified())
                    .unwrap_or(modified);
                out.push(UploadInfo {
                    id,
                    repository,
                    modified: data_modified.max(modified),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn purge_upload(&self, id: &str) -> Result<()> {
        if id.contains(['/', '.']) || id.is_empty() {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let dir = self.upload_dir(id);
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ctx(&dir)(e)),
        })
        .await?;
        if let Some(slot) = self.uploads_map().remove(id)
            && let Ok(mut g) = slot.try_lock()
        {
            g.state = SlotState::Closed;
            g.loaded = None;
        }
        Ok(())
    }

    async fn forget_idle_uploads(&self, idle: Duration) {
        let now = Instant::now();
        self.uploads_map().retain(|_, slot| {
            let Ok(mut g) = slot.try_lock() else {
                return true; // in use
            };
            if now.saturating_duration_since(g.last_used) < idle {
                return true;
            }
            g.state = SlotState::Forgotten;
            g.loaded = None;
            false
        });
    }
}

/// A directory under `repositories/` is a repository once something was pushed to it; one
/// that only holds deeper repositories (`a` for `a/b`) is not.
fn is_repository(dir: &Path) -> bool {
    dir.join("_manifests").is_dir() || dir.join("_layers").is_dir()
}

/// Creates an (empty) link file durably, or re-stamps an existing one as used.
fn create_link(syncs: &DirSyncs, path: &Path) -> Result<()> {
    if touch(path) {
        return Ok(());
    }
    syncs.create_empty(path).map_err(ctx(path))
}

/// Re-stamps a file's modification time if it is older than [`TOUCH_INTERVAL`]; returns
/// whether the file exists. Failing to re-stamp is ignored (the stamp only widens garbage
/// collection's safety margin).
fn touch(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let now = SystemTime::now();
    let stale = meta
        .modified()
        .map(|m| now.duration_since(m).unwrap_or_default() > TOUCH_INTERVAL)
        .unwrap_or(true);
    if stale && let Ok(f) = File::open(path) {
        let _ = f.set_modified(now);
    }
    true
}

/// Removes `path` if its modification time is before `cutoff`, checking immediately before
/// the removal so that a use that re-stamped it in the meantime keeps it. Returns the size
/// removed.
fn remove_if_unused_since(path: &Path, cutoff: SystemTime) -> Result<Option<u64>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ctx(path)(e)),
    };
    if meta.modified().map_err(ctx(path))? >= cutoff {
        return Ok(None);
    }
    Ok(remove_optional(path)?.then_some(meta.len()))
}

/// Removes temporary files that a crash left behind, if last modified before `cutoff`.
/// Returns how many were removed.
pub fn sweep_temp_files(root: &Path, cutoff: SystemTime) -> io::Result<usize> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            let name = entry.file_name();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|m| m < cutoff)
                    .unwrap_or(false);
                if old {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    /// A fresh store with one upload session in `a` holding `data`.
    async fn one_upload(data: &'static [u8]) -> (tempfile::TempDir, FsStorage, RepoName, String) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let r = repo("a");
        let id = s.create_upload(&r).await.unwrap();
        s.append_upload(&r, &id, None, body(&[data])).await.unwrap();
        (dir, s, r, id)
    }

    #[tokio::test]
    async fn upload_commit_and_resume_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let r = repo("a/b");
        let id = s.create_upload(&r).await.unwrap();
        assert_eq!(
            s.append_upload(&r, &id, Some(0), body(&[b"hello "]))
                .await
                .unwrap(),
            6
        );
        // A chunk that does not start at the end is refused without changing the upload.
        let err = s
            .append_upload(&r, &id, Some(3), body(&[b"x"]))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StorageError::UploadOffset {
                expected: 3,
                size: 6
            }
        ));
        // Another repository cannot touch the session.
        assert!(matches!(
            s.upload_size(&repo("other"), &id).await,
            Err(StorageError::UploadUnknown(_))
        ));

        // "Restart": a new storage over the same root knows the upload and resumes hashing.
        let s2 = FsStorage::open(dir.path()).unwrap();
        assert_eq!(s2.upload_size(&r, &id).await.unwrap(), 6);
        assert_eq!(
            s2.append_upload(&r, &id, Some(6), body(&[b"wor", b"ld"]))
                .await
                .unwrap(),
            11
        );
        let digest = Digest::sha256(b"hello world");
        assert_eq!(s2.commit_upload(&r, &id, &digest).await.unwrap(), 11);
        assert!(s2.blob_linked(&r, &digest).await.unwrap());
        assert_eq!(s2.blob_size(&digest).await.unwrap(), Some(11));
        assert!(matches!(
            s2.upload_size(&r, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    #[tokio::test]
    async fn a_session_removed_behind_the_server_is_unknown() {
        let (dir, s, r, id) = one_upload(b"abc").await;
        // `registry gc` in another process removes it.
        fs::remove_dir_all(dir.path().join("uploads").join(&id)).unwrap();
        assert!(matches!(
            s.append_upload(&r, &id, None, body(&[b"d"])).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert!(matches!(
            s.upload_size(&r, &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert!(matches!(
            s.commit_upload(&r, &id, &Digest::sha256(b"abc")).await,
            Err(StorageError::UploadUnknown(_))
        ));
        // Purged by the server itself.
        let id = s.create_upload(&r).await.unwrap();
        s.append_upload(&r, &id, None, body(&[b"abc"]))
            .await
            .unwrap();
        s.purge_upload(&id).await.unwrap();
        assert!(matches!(
            s.append_upload(&r, &id, None, body(&[b"d"])).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    #[tokio::test]
    async fn forgotten_sessions_resume_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let r = repo("a");
        let id = s.create_upload(&r).await.unwrap();
        s.append_upload(&r, &id, Some(0), body(&[b"hello "]))
            .await
            .unwrap();
        s.forget_idle_uploads(Duration::ZERO).await;
        assert!(s.uploads_map().is_empty());
        assert_eq!(
            s.append_upload(&r, &id, Some(6), body(&[b"world"]))
                .await
                .unwrap(),
            11
        );
        let digest = Digest::sha256(b"hello world");
        assert_eq!(s.commit_upload(&r, &id, &digest).await.unwrap(), 11);
        // Recently used sessions are kept.
        let id = s.create_upload(&r).await.unwrap();
        s.append_upload(&r, &id, None, body(&[b"x"])).await.unwrap();
        s.forget_idle_uploads(Duration::from_secs(3600)).await;
        assert_eq!(s.uploads_map().len(), 1);
    }

    #[tokio::test]
    async fn digest_mismatch_leaves_nothing_visible() {
        let (_dir, s, r, id) = one_upload(b"abc").await;
        let wrong = Digest::sha256(b"abd");
        assert!(matches!(
            s.commit_upload(&r, &id, &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(s.blob_size(&wrong).await.unwrap(), None);
        assert_eq!(s.blob_size(&Digest::sha256(b"abc")).await.unwrap(), None);
        assert!(!s.blob_linked(&r, &wrong).await.unwrap());
    }

    #[tokio::test]
    async fn sha512_uploads_are_verified_with_sha512() {
        let (_dir, s, r, id) = one_upload(b"data").await;
        let d = Digest::of(Algorithm::Sha512, b"data");
        s.commit_upload(&r, &id, &d).await.unwrap();
        match s.read_blob(&d, None).await.unwrap() {
            BlobContent::Bytes(b) => assert_eq!(&b[..], b"data"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tags_links_referrers_and_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let (a, b) = (repo("x/a"), repo("x/a/b"));
        let d = Digest::sha256(b"{}");
        s.put_blob_bytes(&d, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(matches!(
            s.put_blob_bytes(&d, Bytes::from_static(b"[]")).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        s.link_manifest(&a, &d, "application/vnd.oci.image.manifest.v1+json")
            .await
            .unwrap();
        s.set_tag(&a, "v2", &d).await.unwrap();
        s.set_tag(&a, "v1", &d).await.unwrap();
        s.link_blob(&b, &d).await.unwrap();
        assert_eq!(
            s.list_tags(&a).await.unwrap(),
            Some(vec!["v1".into(), "v2".into()])
        );
        assert_eq!(s.list_tags(&repo("nope")).await.unwrap(), None);
        assert_eq!(s.get_tag(&a, "v1").await.unwrap(), Some(d.clone()));
        assert_eq!(
            s.list_repositories().await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        let referrer = Descriptor::for_bytes("application/vnd.oci.image.manifest.v1+json", b"r");
        s.add_referrer(&a, &d, &referrer).await.unwrap();
        assert_eq!(
            s.list_referrers(&a, &d).await.unwrap(),
            vec![referrer.clone()]
        );
        s.remove_referrer(&a, &d, &referrer.digest).await.unwrap();
        assert!(s.list_referrers(&a, &d).await.unwrap().is_empty());
        assert!(s.delete_tag(&a, "v1").await.unwrap());
        assert!(!s.delete_tag(&a, "v1").await.unwrap());
    }

    #[tokio::test]
    async fn ranged_and_streamed_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(5 * 1024 * 1024u32)).map(|i| (i % 253) as u8).collect();
        let d = Digest::sha256(&data);
        s.put_blob_bytes(&d, Bytes::from(data.clone()))
            .await
            .unwrap();
        let collect = |c: BlobContent| async move {
            match c {
                BlobContent::Bytes(b) => b.to_vec(),
                BlobContent::Stream(mut st) => {
                    let mut v = Vec::new();
                    while let Some(x) = st.next().await {
                        v.extend_from_slice(&x.unwrap());
                    }
                    v
                }
            }
        };
        assert_eq!(collect(s.read_blob(&d, None).await.unwrap()).await, data);
        assert_eq!(
            collect(s.read_blob(&d, Some((10, 20))).await.unwrap()).await,
            data[10..=20].to_vec()
        );
    }
}
