//! Where the registry keeps its content, behind one trait so that an object-store backend can
//! sit beside the filesystem one.
//!
//! The model (shared by every backend):
//! * **blobs** are global and content-addressed: one copy per digest, whatever the number of
//!   repositories that use it. A blob becomes visible only after its digest was verified.
//! * **links** say which repository may see which blob (`layers`) or manifest (`revisions`,
//!   with the media type it was pushed with). Mounting a blob into another repository adds a
//!   link, never a copy.
//! * **tags** map a name to a manifest digest; each is replaced atomically.
//! * **referrers** record, per subject digest, the descriptors of manifests whose `subject`
//!   names it.
//! * **uploads** are resumable sessions; their state survives a restart. No file stays open
//!   between requests, and sessions idle past the server's expiry are removed.

mod dir_sync;
pub mod fs;
pub mod s3;

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use archway_oci::{Descriptor, Digest};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::names::RepoName;

/// A stream of body chunks (request bodies in, blob contents out).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// An error from a storage backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Storage failures. Everything but `Io`, `Corrupt`, `Unavailable` and `Backend` is the
/// client's doing.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("upload {0} is unknown")]
    UploadUnknown(String),
    #[error("chunk starts at {expected} but the upload holds {size} bytes")]
    UploadOffset { expected: u64, size: u64 },
    #[error("content digest is {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    #[error("request body: {0}")]
    BodyRead(String),
    #[error("stored blob {0} does not match its digest")]
    Corrupt(Digest, Digest),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The object store kept failing (throttling, 5xx answers, timeouts) after its retries:
    /// the request may succeed later.
    #[error("{context}: the object store is unavailable")]
    Unavailable {
        context: String,
        #[source]
        source: BoxError,
    },
    /// Any other object-store failure (permissions, configuration, a protocol surprise).
    #[error("{context}")]
    Backend {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl StorageError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }
}

/// Content used again (pushed, mounted, referenced, checked with HEAD) is re-stamped as used
/// only if its stamp is older than this, so hot content costs no metadata writes. Garbage
/// collection's grace period must be longer, or in-use content could look unused.
pub const TOUCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Blob content, whole (small blobs) or streamed (large ones).
pub enum BlobContent {
    Bytes(Bytes),
    Stream(ByteStream),
}

impl std::fmt::Debug for BlobContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobContent::Bytes(b) => write!(f, "Bytes({})", b.len()),
            BlobContent::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// An item with the time it was last written or used, for garbage collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aged<T> {
    pub item: T,
    pub modified: SystemTime,
}

/// An upload session as garbage collection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    pub id: String,
    pub repository: String,
    pub modified: SystemTime,
}

#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    // --- blobs (global) ---------------------------------------------------------------
    /// Size of a stored blob, `None` if absent.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Reads `[start, end]` (inclusive) of a blob, or all of it.
    async fn read_blob(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<BlobContent>;
    /// Reads a small blob (a manifest) whole.
    async fn read_blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>>;
    /// Stores bytes under `digest`, verifying them first.
    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<()>;
    /// Stores a blob whose digest the client announced upfront (a monolithic upload), and
    /// links it to `repo`; nothing is visible unless the bytes hash to `digest`. Returns the
    /// size. Backends that can write without an upload session override this.
    async fn put_blob_stream(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        let id = self.create_upload(repo).await?;
        if let Err(e) = self.append_upload(repo, &id, Some(0), body).await {
            let _ = self.cancel_upload(repo, &id).await;
            return Err(e);
        }
        self.commit_upload(repo, &id, digest).await
    }
    /// A URL the client can fetch the blob's bytes from directly (presigned, short-lived),
    /// when the backend is configured to redirect blob reads; `None` to serve them here.
    async fn redirect_url(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
    /// Marks a blob as used now (so that garbage collection's grace period covers it) and
    /// tells whether it exists.
    async fn touch_blob(&self, digest: &Digest) -> Result<bool>;
    /// Every stored blob with its last-use time.
    async fn list_blobs(&self) -> Result<Vec<Aged<Digest>>>;
    /// Garbage collection: removes a blob for good unless it was used at or after `cutoff`
    /// (checked at the moment of deletion). Returns the size freed.
    async fn delete_blob_unused_since(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>>;
    /// Garbage collection: removes temporary files a crash left behind, older than `cutoff`.
    async fn sweep_temporary(&self, cutoff: SystemTime) -> Result<usize>;

    // --- per-repository links ----------------------------------------------------------
    /// Links a blob into a repository; an existing link is marked as used now.
    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn list_blob_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>>;
    /// Garbage collection: removes a blob link unless it was used at or after `cutoff`.
    async fn unlink_blob_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool>;

    /// Links a manifest into a repository; an existing link is marked as used now.
    async fn link_manifest(&self, repo: &RepoName, digest: &Digest, media_type: &str)
    -> Result<()>;
    /// The media type a manifest was pushed with, `None` if the repository does not have it.
    async fn manifest_media_type(&self, repo: &RepoName, digest: &Digest)
    -> Result<Option<String>>;
    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn list_manifest_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>>;
    /// Garbage collection: removes a manifest link unless it was used at or after `cutoff`.
    async fn unlink_manifest_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool>;

    // --- tags --------------------------------------------------------------------------
    async fn set_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<()>;
    async fn get_tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>>;
    async fn delete_tag(&self, repo: &RepoName, tag: &str) -> Result<bool>;
    /// Deletes a tag only if it still names `digest` (another replica may have moved it
    /// since it was read); returns whether it was deleted.
    async fn delete_tag_if(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool> {
        if self.get_tag(repo, tag).await?.as_ref() == Some(digest) {
            return self.delete_tag(repo, tag).await;
        }
        Ok(false)
    }
    /// Tag names sorted lexically; `None` when the repository does not exist.
    async fn list_tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>>;

    // --- referrers ---------------------------------------------------------------------
    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<()>;
    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()>;
    async fn list_referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>>;

    // --- repositories ------------------------------------------------------------------
    /// All repository names, sorted lexically.
    async fn list_repositories(&self) -> Result<Vec<RepoName>>;

    // --- uploads -----------------------------------------------------------------------
    async fn create_upload(&self, repo: &RepoName) -> Result<String>;
    /// Bytes received so far.
    async fn upload_size(&self, repo: &RepoName, id: &str) -> Result<u64>;
    /// Appends a chunk. With `start`, the chunk must begin exactly at the current size.
    /// Returns the new size.
    async fn append_upload(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64>;
    /// Verifies the upload against `digest`, makes it a blob, links it to `repo`, and ends the
    /// session. Returns the blob size.
    async fn commit_upload(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64>;
    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()>;
    async fn list_uploads(&self) -> Result<Vec<UploadInfo>>;
    /// Deletes an upload session whatever its repository (garbage collection and expiry);
    /// its next use answers "unknown".
    async fn purge_upload(&self, id: &str) -> Result<()>;
    /// Drops in-memory state kept for upload sessions unused for `idle` (it is rebuilt from
    /// storage if the session is used again). Backends without such state do nothing.
    async fn forget_idle_uploads(&self, _idle: std::time::Duration) {}
}
