//! Job logs: live in the database while their attempt runs (`log_chunks`, appended with
//! offsets so a runner's resend is idempotent), then archived whole to the server's storage
//! — the data directory (`DATA/logs/sha256/<hex>`, [`FsLogArchive`]) or the object store the
//! registry and the source snapshots use (`PREFIX/logs/sha256/<hex>`, [`ObjectLogArchive`]),
//! which every server replica sharing the bucket reads.
//!
//! Archiving ([`JobLogs::archive_pending`]) copies a finished attempt's log to the archive
//! under its digest, then records the digest and drops the chunks in one transaction. Any
//! server does it for any attempt (after an attempt it ended, and every few seconds for the
//! rest: attempts that were lost, or whose server died before archiving); two servers
//! archiving the same attempt write the same bytes to the same name.
//!
//! **Invariant:** an attempt's log is readable at every moment: the archived copy is complete
//! (written whole, then verified by its digest on the filesystem or by the store's atomic
//! `PUT`) before the database stops holding the chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use archway_oci::Digest;

use crate::coordinator::Coordinator;
use crate::error::CoordError;

/// Where finished logs are kept, by digest.
#[async_trait]
pub trait LogArchive: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` (whose digest is `digest`) whole; storing it again is harmless.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), CoordError>;
    /// The bytes `range` of a stored log (the range lies within it).
    async fn read(&self, digest: &Digest, range: std::ops::Range<u64>)
    -> Result<Bytes, CoordError>;
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> CoordError {
    move |source| CoordError::Io {
        context: context.into(),
        source,
    }
}

fn store_io(context: &'static str) -> impl FnOnce(object_store::Error) -> CoordError {
    move |source| CoordError::Unavailable {
        context: context.into(),
        source,
    }
}

/// Logs in `DATA/logs/`.
#[derive(Debug)]
pub struct FsLogArchive {
    dir: PathBuf,
}

impl FsLogArchive {
    /// Creates `DIR/logs/` if missing; removes leftovers of writes a crash interrupted.
    pub fn open(data_dir: &Path) -> Result<FsLogArchive, CoordError> {
        let dir = data_dir.join("logs");
        let by_digest = dir.join("sha256");
        std::fs::create_dir_all(&by_digest).map_err(io("creating the log archive"))?;
        if let Ok(entries) = std::fs::read_dir(&by_digest) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(archway_oci::atomic_file::TEMP_PREFIX)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(FsLogArchive { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }
}

#[async_trait]
impl LogArchive for FsLogArchive {
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), CoordError> {
        let target = self.path(digest);
        tokio::task::spawn_blocking(move || archway_oci::atomic_file::write(&target, &bytes))
            .await
            .map_err(|e| CoordError::Io {
                context: "archiving a job log".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io("archiving a job log"))
    }

    async fn read(
        &self,
        digest: &Digest,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, CoordError> {
        let path = self.path(digest);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(&path)?;
            f.seek(std::io::SeekFrom::Start(range.start))?;
            let mut buf = vec![0; (range.end - range.start) as usize];
            f.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| CoordError::Io {
            context: "reading an archived job log".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io("reading an archived job log"))
    }
}

/// Logs on an object store, under `PREFIX/logs/`.
#[derive(Debug)]
pub struct ObjectLogArchive {
    store: Arc<AmazonS3>,
    prefix: String,
}

impl ObjectLogArchive {
    pub fn new(store: Arc<AmazonS3>, prefix: &str) -> ObjectLogArchive {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        ObjectLogArchive { store, prefix }
    }

    fn path(&self, digest: &Digest) -> object_store::path::Path {
        object_store::path::Path::from(format!(
            "{}logs/{}/{}",
            self.prefix,
            digest.algorithm(),
            digest.hex()
        ))
    }
}

#[async_trait]
impl LogArchive for ObjectLogArchive {
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), CoordError> {
        // One PUT (a log is at most --max-log-size): the object appears whole or not at all.
        self.store
            .put(&self.path(digest), PutPayload::from_bytes(bytes))
            .await
            .map_err(store_io("archiving a job log"))?;
        Ok(())
    }

    async fn read(
        &self,
        digest: &Digest,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, CoordError> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.path(digest), opts)
            .await
            .map_err(store_io("reading an archived job log"))?;
        got.bytes()
            .await
            .map_err(store_io("reading an archived job log"))
    }
}

/// Job logs, wherever they are: the database while the attempt runs (and until it is
/// archived), the archive afterwards.
#[derive(Clone, Debug)]
pub struct JobLogs {
    coord: Arc<Coordinator>,
    archive: Arc<dyn LogArchive>,
}

/// Finished attempts archived per round of [`JobLogs::archive_pending`].
const ARCHIVE_BATCH: i64 = 64;

impl JobLogs {
    pub fn new(coord: Arc<Coordinator>, archive: Arc<dyn LogArchive>) -> JobLogs {
        JobLogs { coord, archive }
    }

    /// Up to `max` stored bytes of an attempt's log from `from`, of `stored` in all.
    pub async fn read(
        &self,
        attempt_id: i64,
        from: u64,
        max: usize,
        stored: u64,
    ) -> Result<Vec<u8>, CoordError> {
        let bytes = self.coord.log_bytes(attempt_id, from, max).await?;
        if !bytes.is_empty() || from >= stored {
            return Ok(bytes);
        }
        // Nothing in the database below `stored`: the log moved to the archive (the digest is
        // recorded in the transaction that dropped the chunks).
        let Some(digest) = self.coord.archived_log_digest(attempt_id).await? else {
            return Ok(bytes);
        };
        let digest: Digest = digest.parse().map_err(|e| CoordError::Io {
            context: format!("the archived log of attempt {attempt_id}"),
            source: std::io::Error::other(format!("`{digest}` is not a digest: {e}")),
        })?;
        let end = stored.min(from + max as u64);
        Ok(self.archive.read(&digest, from..end).await?.to_vec())
    }

    /// Archives the logs of finished attempts that are still in the database; returns how
    /// many this server switched over. Stops at the first failure (the next round retries).
    pub async fn archive_pending(&self) -> Result<usize, CoordError> {
        let mut switched = 0;
        let mut after = 0;
        loop {
            let ids = self.coord.logs_to_archive(after, ARCHIVE_BATCH).await?;
            let batch = ids.len() as i64;
            for id in ids {
                after = id;
                let log = match self.coord.finished_log(id).await {
                    Ok(Some(log)) => log,
                    Ok(None) => continue,
                    // A log the database holds inconsistently stays where it is (and readable
                    // as far as it goes); the others are archived.
                    Err(e @ CoordError::Conflict(_)) => {
                        tracing::warn!(error = %e, "not archiving a job log");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let digest = Digest::sha256(&log.bytes);
                self.archive.put(&digest, Bytes::from(log.bytes)).await?;
                if self
                    .coord
                    .switch_to_archived_log(log.attempt_id, &digest.to_string())
                    .await?
                {
                    switched += 1;
                }
            }
            if batch < ARCHIVE_BATCH {
                return Ok(switched);
            }
        }
    }

    /// Archives after every state change this server sees, and every `period` for those it
    /// does not (attempts other servers ended or lost); runs until the process ends.
    pub async fn run_archiver(self, period: Duration) {
        let mut state = self.coord.events.subscribe_state();
        loop {
            match self.archive_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(attempts = n, "archived job logs"),
                Err(e) => tracing::warn!(error = %e, "archiving job logs (retried later)"),
            }
            tokio::select! {
                _ = state.changed() => {}
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}
