//! Source snapshots (gzipped tarballs of a repository), stored by digest under
//! `DATA/sources/sha256/<hex>.tar.gz` so runners fetch them and identical snapshots are
//! stored once. Job artifacts (gzipped tarballs too) use the same store under
//! `DATA/artifacts/`.
//!
//! **Invariant:** a snapshot path only ever holds bytes whose digest was verified: uploads
//! stream into a temporary file while being hashed, are fsynced, compared with the digest
//! they were sent under, and only then renamed into place.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use archway_oci::{Digest, digest::Digester};

use crate::error::CoordError;

#[derive(Clone, Debug)]
pub struct SourceStore {
    dir: PathBuf,
    /// Largest snapshot accepted.
    pub max_bytes: u64,
    /// What it holds, for messages: `source snapshots`, `artifact archives`.
    what: &'static str,
    /// The server option that sets `max_bytes`.
    flag: &'static str,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoordError {
    let context = context.into();
    move |source| CoordError::Io { context, source }
}

impl SourceStore {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SourceStore, CoordError> {
        Self::open_kind(
            dir,
            "sources",
            "source snapshots",
            "--max-source-size",
            max_bytes,
        )
    }

    /// The job artifact store, under `dir/artifacts`.
    pub fn open_artifacts(dir: &Path, max_bytes: u64) -> Result<SourceStore, CoordError> {
        Self::open_kind(
            dir,
            "artifacts",
            "artifact archives",
            "--max-artifact-size",
            max_bytes,
        )
    }

    fn open_kind(
        dir: &Path,
        sub: &str,
        what: &'static str,
        flag: &'static str,
        max_bytes: u64,
    ) -> Result<SourceStore, CoordError> {
        let dir = dir.join(sub);
        std::fs::create_dir_all(dir.join("sha256")).map_err(io("creating the source store"))?;
        std::fs::create_dir_all(dir.join("tmp")).map_err(io("creating the source store"))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(SourceStore {
            dir,
            max_bytes,
            what,
            flag,
        })
    }

    /// Where the archive `digest` is (whether or not it exists).
    pub fn file_path(&self, digest: &str) -> Result<PathBuf, CoordError> {
        Ok(self.path(&self.parse(digest)?))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(format!("{}.tar.gz", digest.hex()))
    }

    fn parse(&self, digest: &str) -> Result<Digest, CoordError> {
        let d: Digest = digest
            .parse()
            .map_err(|e| CoordError::BadRequest(format!("`{digest}` is not a digest: {e}")))?;
        if d.algorithm().as_str() != "sha256" {
            return Err(CoordError::BadRequest(format!(
                "{} are addressed by sha256 digests",
                self.what
            )));
        }
        Ok(d)
    }

    pub async fn exists(&self, digest: &str) -> Result<bool, CoordError> {
        let d = self.parse(digest)?;
        Ok(tokio::fs::try_exists(self.path(&d)).await.unwrap_or(false))
    }

    /// Stored archives last written (or re-uploaded) more than `grace` ago, by digest.
    pub async fn older_than(&self, grace: std::time::Duration) -> Vec<String> {
        let dir = self.dir.join("sha256");
        tokio::task::spawn_blocking(move || {
            let cutoff = std::time::SystemTime::now() - grace;
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.strip_suffix(".tar.gz") else {
                    continue;
                };
                if e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t <= cutoff)
                {
                    out.push(format!("sha256:{hex}"));
                }
            }
            out.sort();
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Removes a stored archive.
    pub async fn remove(&self, digest: &str) -> Result<(), CoordError> {
        let d = self.parse(digest)?;
        match tokio::fs::remove_file(self.path(&d)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoordError::Io {
                context: format!("removing one of the {}", self.what),
                source: e,
            }),
        }
    }

    /// Stores a snapshot from `body`, which must hash to `digest`.
    pub async fn put<E: std::fmt::Display>(
        &self,
        digest: &str,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<u64, CoordError> {
        let d = self.parse(digest)?;
        let target = self.path(&d);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            // Drain nothing: the client may stop sending; what we have is verified. Its time
            // is refreshed, so a sweep of unreferenced archives spares it while the uploader
            // records its use.
            let t = target.clone();
            let _ = tokio::task::spawn_blocking(move || {
                std::fs::File::options()
                    .write(true)
                    .open(&t)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            })
            .await;
            return Ok(tokio::fs::metadata(&target)
                .await
                .map_err(io("reading a stored source"))?
                .len());
        }
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
                if hasher.len() + chunk.len() as u64 > self.max_bytes {
                    return Err(CoordError::TooLarge(format!(
                        "{} may be at most {} MiB (the server's {})",
                        self.what,
                        self.max_bytes / (1024 * 1024),
                        self.flag
                    )));
                }
                hasher.update(&chunk);
                f.write_all(&chunk)
                    .await
                    .map_err(io("writing a source upload"))?;
            }
            f.sync_all().await.map_err(io("syncing a source upload"))?;
            let size = hasher.len();
            let got = hasher.finish();
            if got != d {
                return Err(CoordError::BadRequest(format!(
                    "the upload's digest is {got}, not {d}: it was changed or cut short"
                )));
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

    /// Opens a stored snapshot for reading.
    pub async fn open_read(&self, digest: &str) -> Result<(tokio::fs::File, u64), CoordError> {
        let d = self.parse(digest)?;
        let f = tokio::fs::File::open(self.path(&d))
            .await
            .map_err(|_| CoordError::NotFound(format!("none of the {} is {digest}", self.what)))?;
        let len = f
            .metadata()
            .await
            .map_err(io("reading a stored source"))?
            .len();
        Ok((f, len))
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
