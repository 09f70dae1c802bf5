//! The object-store backend: the registry on S3 or an S3-compatible server, shared by any
//! number of replicas.
//!
//! ```text
//! PREFIX/blobs/<alg>/<hex>                                  blob record {data, size, nonce}
//! PREFIX/data/<upload>/blob                                 blob content (immutable)
//! PREFIX/data/<upload>/<random>                             upload piece (< one part)
//! PREFIX/repositories/<name>/_layers/<alg>/<hex>            blob link {nonce}
//! PREFIX/repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest link {media_type, nonce}
//! PREFIX/repositories/<name>/_manifests/tags/<tag>          tag (digest)
//! PREFIX/repositories/<name>/_referrers/<alg>/<subject hex>/<alg>-<hex>   referrer descriptor
//! PREFIX/uploads/<id>                                       upload session {repository, size, hash state, parts, pieces}
//! ```
//!
//! **Nothing visible before it is verified.** Blob content is written under a name no one
//! knows (`data/<upload>/…`), hashed as it streams through; only after the digest matched is
//! the *record* `blobs/<alg>/<hex>` created (`If-None-Match: *`), and only the record makes
//! the content reachable. A multipart upload is invisible until completed, completion checks
//! every part's e-tag, and the assembled size is checked before the record is written.
//! So no content is ever copied: the record points at the upload's own object.
//!
//! **Stamps.** An object's `LastModified` is its last use. Re-stamping rewrites the small
//! record or link with a fresh nonce, so its e-tag changes; garbage collection deletes only
//! with `If-Match` the e-tag it judged old. A push that re-stamped in between wins: the
//! conditional delete fails. A blob record is re-stamped with `If-Match` too, so a stamp
//! never resurrects a record the collector just removed.
//!
//! **Uploads across replicas.** The session object holds everything a replica needs to
//! continue: owner, size, the serialized hash state, the multipart upload id with its parts'
//! e-tags, and the pieces. Each request reads it, appends, and writes it back with `If-Match`,
//! so of two replicas racing on one session, one fails (and tells its client where the upload
//! stands) rather than losing bytes. Parts a failed writer sent are overwritten by the next
//! writer or rejected at completion (e-tags); pieces have random names and are never reused.
//!
//! Every request to the store is retried with backoff on throttling, 5xx answers, timeouts
//! and broken connections (see [`location::StoreTuning`]); when the store still fails, the
//! registry answers 503 and nothing half-done is visible.

pub mod location;
mod objects;
mod upload;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use archway_oci::{Algorithm, Descriptor, Digest, Digester};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use serde::{Deserialize, Serialize};

use self::location::{AwsSettings, LocationError, S3Location, StoreTuning};
use self::objects::{Meta, Objects};
use self::upload::{PartBudget, PartWriter, Piece, Written, data_dir, data_key};
use super::{
    Aged, BlobContent, ByteStream, Result, Storage, StorageError, TOUCH_INTERVAL, UploadInfo,
};
use crate::names::RepoName;

/// How long a presigned blob URL (`--storage-redirect`) stays valid, as distribution's.
const REDIRECT_EXPIRY: Duration = Duration::from_secs(20 * 60);
/// Requests to the store at once during garbage collection's scans.
const SCAN_CONCURRENCY: usize = 16;
/// Blobs up to this size are read whole; larger ones are streamed.
const READ_WHOLE: u64 = 1024 * 1024;

/// Settings of an object-store backend.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub location: S3Location,
    /// Blob GETs answer with a presigned URL of the content instead of the bytes.
    pub redirect: bool,
    /// Part buffers (8 MiB each) all uploads may hold at once.
    pub part_buffers: usize,
    pub tuning: StoreTuning,
}

impl S3Config {
    pub fn new(location: S3Location) -> S3Config {
        S3Config {
            location,
            redirect: false,
            part_buffers: 128,
            tuning: StoreTuning::default(),
        }
    }
}

/// What a store supports of the conditional requests this backend relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `PUT` with `If-None-Match: *` and `If-Match` (needed to serve).
    pub conditional_put: bool,
    /// `DELETE` with `If-Match` (garbage collection's protection of concurrent pushes).
    pub conditional_delete: bool,
}

/// The registry's storage on S3-compatible object storage.
#[derive(Clone, Debug)]
pub struct S3Storage {
    objects: Arc<Objects>,
    location: S3Location,
    redirect: bool,
    budget: PartBudget,
    /// Shared by clones.
    records: Arc<RecordCache>,
}

/// How many blob records [`RecordCache`] keeps (about 200 bytes each).
const RECORD_CACHE_ENTRIES: usize = 8192;

/// Blob records read recently: a blob's size and where its content is. Content-addressed, so
/// a record only changes when the collector removes the blob and a later push publishes it
/// again under a new data key; a read that finds nothing under a cached key reads the record
/// again (`S3Storage::read_data`), so a stale entry costs one request, never a wrong answer.
/// Saves a GET per blob request (pulls of small blobs are round-trip bound).
#[derive(Debug, Default)]
struct RecordCache(std::sync::Mutex<std::collections::HashMap<Digest, (u64, String)>>);

impl RecordCache {
    fn get(&self, d: &Digest) -> Option<(u64, String)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(d)
            .cloned()
    }

    fn put(&self, d: &Digest, size: u64, data: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= RECORD_CACHE_ENTRIES {
            // Bounded memory, simply: start again.
            map.clear();
        }
        map.insert(d.clone(), (size, data.to_owned()));
    }

    fn forget(&self, d: &Digest) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(d);
    }
}

/// `blobs/<alg>/<hex>`: where a verified blob's content is.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BlobRecord {
    data: String,
    size: u64,
    /// Changes on every write, so a re-stamp changes the e-tag.
    nonce: String,
}

/// A blob or manifest link.
#[derive(Debug, Serialize, Deserialize)]
struct Link {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    nonce: String,
}

/// `uploads/<id>`: an upload session, everything a replica needs to continue it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    repository: String,
    size: u64,
    /// `Digester::state` of every byte so far, base64.
    hash: String,
    #[serde(flatten)]
    written: Written,
    /// Set while a commit under another algorithm than sha256 records its blob (a sha256
    /// digest is derived from `hash`), so that expiry never removes content a record names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    committing: Option<Digest>,
}

impl Session {
    fn digester(&self) -> Result<Digester> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.hash)
            .ok()
            .and_then(|b| Digester::from_state(&b))
            .ok_or_else(|| StorageError::Backend {
                context: "reading an upload session".into(),
                source: "its hash state is unreadable".into(),
            })
    }

    /// The digest this session's content was (or is being) committed under.
    fn content_digest(&self) -> Option<Digest> {
        self.committing
            .clone()
            .or_else(|| self.digester().ok().map(Digester::finish))
    }
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|e| unreachable!("serialises: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Backend {
        context: format!("reading {key}"),
        source: Box::new(e),
    })
}

/// True if the stamp is older than [`TOUCH_INTERVAL`] (a stamp from the future is fresh).
fn stale(meta: &Meta) -> bool {
    SystemTime::now()
        .duration_since(meta.modified)
        .is_ok_and(|age| age > TOUCH_INTERVAL)
}

fn valid_upload_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && !id.contains(['/', '.'])
}

fn record_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

fn repo_dir(repo: &RepoName) -> String {
    format!("repositories/{repo}/")
}

fn layer_key(repo: &RepoName, d: &Digest) -> String {
    format!("repositories/{repo}/_layers/{}/{}", d.algorithm(), d.hex())
}

fn revision_key(repo: &RepoName, d: &Digest) -> String {
    format!(
        "repositories/{repo}/_manifests/revisions/{}/{}",
        d.algorithm(),
        d.hex()
    )
}

fn tags_dir(repo: &RepoName) -> String {
    format!("repositories/{repo}/_manifests/tags/")
}

fn referrers_dir(repo: &RepoName, subject: &Digest) -> String {
    format!(
        "repositories/{repo}/_referrers/{}/{}/",
        subject.algorithm(),
        subject.hex()
    )
}

fn session_key(id: &str) -> String {
    format!("uploads/{id}")
}

impl S3Storage {
    /// Connects to the store (endpoint, region and credentials from the environment and the
    /// AWS files). Nothing is requested yet; see [`S3Storage::capabilities`].
    pub fn open(config: &S3Config) -> std::result::Result<S3Storage, LocationError> {
        let settings = AwsSettings::from_environment()?;
        let store = config.location.connect(&settings, &config.tuning)?;
        Ok(S3Storage {
            objects: Arc::new(Objects::new(store, &config.location.prefix)),
            location: config.location.clone(),
            redirect: config.redirect,
            budget: PartBudget::new(config.part_buffers),
            records: Arc::default(),
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The S3 client, for other content kept beside the registry (the coordinator's
    /// sources), with the prefix to put it under.
    pub fn client(&self) -> (Arc<object_store::aws::AmazonS3>, String) {
        (self.objects.store_arc(), self.location.prefix.clone())
    }

    /// Probes the store with a throwaway object under `_probe/`: whether it honours the
    /// conditional requests the replica protocol relies on. Also proves the bucket is
    /// reachable with these credentials.
    pub async fn capabilities(&self) -> Result<Capabilities> {
        let key = format!("_probe/{}", nonce());
        let o = &self.objects;
        o.put(&key, Bytes::from_static(b"1")).await?;
        let result = async {
            let create_refused = !o.create(&key, Bytes::from_static(b"2")).await?;
            let replace_refused = !o
                .replace(&key, Bytes::from_static(b"3"), "\"0123456789abcdef\"")
                .await?;
            let delete_refused = !o.delete_if_unchanged(&key, "\"0123456789abcdef\"").await?
                && o.head(&key).await?.is_some();
            Ok(Capabilities {
                conditional_put: create_refused && replace_refused,
                conditional_delete: delete_refused,
            })
        }
        .await;
        o.delete(&key).await?;
        result
    }

    // --- blob records -------------------------------------------------------------------

    async fn record(&self, d: &Digest) -> Result<Option<(BlobRecord, Meta)>> {
        let key = record_key(d);
        match self.objects.get(&key).await? {
            Some((bytes, meta)) => {
                let record: BlobRecord = parse(&key, &bytes)?;
                self.records.put(d, record.size, &record.data);
                Ok(Some((record, meta)))
            }
            None => {
                self.records.forget(d);
                Ok(None)
            }
        }
    }

    /// A blob's size and data key: from the cache, else its record.
    async fn sized(&self, d: &Digest) -> Result<Option<(u64, String)>> {
        if let Some(hit) = self.records.get(d) {
            return Ok(Some(hit));
        }
        Ok(self.record(d).await?.map(|(r, _)| (r.size, r.data)))
    }

    /// Reads a blob's content with `read` from where its record says; when a cached data key
    /// has nothing (the blob was collected, perhaps pushed again), reads the record afresh
    /// and tries once more. `None`: the blob does not exist.
    async fn read_data<T, F, Fut>(&self, d: &Digest, read: F) -> Result<Option<T>>
    where
        F: Fn(u64, String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let cached = self.records.get(d);
        if let Some((size, data)) = cached.clone() {
            if let Some(v) = read(size, data).await? {
                return Ok(Some(v));
            }
            self.records.forget(d);
        }
        match self.record(d).await? {
            Some((r, _)) if cached.as_ref().is_none_or(|(_, data)| *data != r.data) => {
                read(r.size, r.data).await
            }
            _ => Ok(None),
        }
    }

    /// Re-stamps a blob's record if its stamp is stale (only the version just read, so a
    /// record the collector removed meanwhile stays removed). Returns the record, `None` if
    /// the blob does not exist.
    async fn touch_record(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        let key = record_key(d);
        for _ in 0..4 {
            let Some((record, meta)) = self.record(d).await? else {
                return Ok(None);
            };
            if !stale(&meta) {
                return Ok(Some(record));
            }
            let fresh = BlobRecord {
                nonce: nonce(),
                ..record.clone()
            };
            let e_tag = meta.e_tag.unwrap_or_default();
            if self.objects.replace(&key, json(&fresh), &e_tag).await? {
                return Ok(Some(fresh));
            }
            // Changed underneath (another stamp, or removed): look again.
        }
        // Others keep re-stamping it: it exists and is fresh.
        Ok(self.record(d).await?.map(|(r, _)| r))
    }

    /// Makes `data` (already written, `size` bytes, verified as `d`) the content of blob `d`.
    /// If the blob exists already, the existing content is kept (re-stamped) and `data` is
    /// deleted. Returns the size.
    async fn publish(&self, d: &Digest, data: &str, size: u64) -> Result<u64> {
        let key = record_key(d);
        let ours = BlobRecord {
            data: data.to_owned(),
            size,
            nonce: nonce(),
        };
        loop {
            if let Some(existing) = self.touch_record(d).await? {
                if existing.data != data {
                    self.objects.delete(data).await?;
                }
                return Ok(existing.size);
            }
            if self.objects.create(&key, json(&ours)).await? {
                return Ok(size);
            }
            // Created by someone else meanwhile (or by our own request whose answer was
            // lost): the loop re-stamps theirs, or finds ours by its data key.
        }
    }

    /// Stores a blob whose digest is known upfront, streaming it into a fresh data object
    /// (a multipart upload when it is larger than a part). Nothing becomes visible unless
    /// the content hashes to `digest`.
    async fn store_verified(&self, digest: &Digest, mut body: ByteStream) -> Result<u64> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut writer = PartWriter::new(
            self.objects.clone(),
            &id,
            Written::default(),
            self.budget.clone(),
        );
        let mut digester = Digester::new(digest.algorithm());
        let received = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::BodyRead(e.to_string()))?;
                digester.update(&chunk);
                writer.push(chunk).await?;
            }
            Ok(())
        }
        .await;
        let size = digester.len();
        let actual = digester.finish();
        if let Err(e) = received {
            self.discard_writer(&id, writer).await;
            return Err(e);
        }
        if &actual != digest {
            self.discard_writer(&id, writer).await;
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let (data, _) = writer.complete(size).await?;
        self.publish(digest, &data, size).await
    }

    /// Cleans up after an upload that will not be completed (best effort: leftovers are
    /// swept by garbage collection).
    async fn discard_writer(&self, id: &str, writer: PartWriter) {
        if let Ok((written, _)) = writer.finish().await {
            self.discard(id, &written).await;
        }
    }

    async fn discard(&self, id: &str, written: &Written) {
        if let Some(m) = &written.multipart {
            let _ = self
                .objects
                .store()
                .abort_multipart(&self.objects.path(&data_key(id)), m)
                .await;
        }
        for p in &written.pieces {
            let _ = self.objects.delete(&p.key).await;
        }
    }

    async fn delete_pieces(&self, pieces: &[Piece]) {
        for p in pieces {
            if let Err(e) = self.objects.delete(&p.key).await {
                tracing::debug!(error = %e, "removing a consumed upload piece (garbage collection will)");
            }
        }
    }

    // --- links --------------------------------------------------------------------------

    /// Creates or re-stamps a link. An unconditional write is right here: if the collector
    /// removed the link a moment ago, writing it again is what the caller wants.
    async fn ensure_link(&self, key: &str, media_type: Option<&str>) -> Result<()> {
        let current = match media_type {
            // The media type must match, so read the content.
            Some(mt) => self.objects.get(key).await?.map(|(bytes, meta)| {
                let same = serde_json::from_slice::<Link>(&bytes)
                    .is_ok_and(|l| l.media_type.as_deref() == Some(mt));
                (same, meta)
            }),
            None => self.objects.head(key).await?.map(|meta| (true, meta)),
        };
        if let Some((true, meta)) = &current
            && !stale(meta)
        {
            return Ok(());
        }
        let link = Link {
            media_type: media_type.map(str::to_owned),
            nonce: nonce(),
        };
        self.objects.put(key, json(&link)).await
    }

    async fn remove(&self, key: &str) -> Result<bool> {
        if self.objects.head(key).await?.is_none() {
            return Ok(false);
        }
        self.objects.delete(key).await?;
        Ok(true)
    }

    /// Garbage collection: removes `key` if its stamp is before `cutoff`, with `If-Match` the
    /// version judged, so that a re-stamp in between keeps it.
    async fn remove_unused_since(&self, key: &str, cutoff: SystemTime) -> Result<bool> {
        let Some(meta) = self.objects.head(key).await? else {
            return Ok(false);
        };
        if meta.modified >= cutoff {
            return Ok(false);
        }
        let e_tag = meta.e_tag.unwrap_or_default();
        self.objects.delete_if_unchanged(key, &e_tag).await
    }

    /// Digests of the `<alg>/<hex>` objects under `dir`.
    async fn list_digests(&self, dir: &str) -> Result<Vec<Aged<Digest>>> {
        let mut out = Vec::new();
        for (key, meta) in self.objects.list(dir).await? {
            let mut parts = key[dir.len()..].split('/');
            if let (Some(alg), Some(hex), None) = (parts.next(), parts.next(), parts.next())
                && let Ok(alg) = alg.parse::<Algorithm>()
                && let Ok(d) = Digest::new(alg, hex)
            {
                out.push(Aged {
                    item: d,
                    modified: meta.modified,
                });
            }
        }
        out.sort_by(|a, b| a.item.cmp(&b.item));
        Ok(out)
    }

    // --- sessions -----------------------------------------------------------------------

    async fn session(&self, id: &str) -> Result<Option<(Session, String)>> {
        if !valid_upload_id(id) {
            return Ok(None);
        }
        let key = session_key(id);
        match self.objects.get(&key).await? {
            Some((bytes, meta)) => Ok(Some((parse(&key, &bytes)?, meta.e_tag.unwrap_or_default()))),
            None => Ok(None),
        }
    }

    /// The session, if it exists and belongs to `repo`.
    async fn owned_session(&self, repo: &RepoName, id: &str) -> Result<(Session, String)> {
        match self.session(id).await? {
            Some((s, e_tag)) if s.repository == repo.as_str() => Ok((s, e_tag)),
            _ => Err(StorageError::UploadUnknown(id.to_owned())),
        }
    }

    /// The data key a record names for this session's content, if its content was
    /// committed (so that removing the session must keep it).
    async fn committed_data(&self, id: &str, s: &Session) -> Result<Option<String>> {
        let Some(d) = s.content_digest() else {
            return Ok(None);
        };
        Ok(self
            .record(&d)
            .await?
            .map(|(r, _)| r.data)
            .filter(|data| data.starts_with(&data_dir(id))))
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.sized(digest).await?.map(|(size, _)| size))
    }

    async fn read_blob(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<BlobContent> {
        let objects = &self.objects;
        let content = self
            .read_data(digest, |size, data| async move {
                if range.is_none() && size <= READ_WHOLE {
                    return Ok(objects
                        .get(&data)
                        .await?
                        .map(|(bytes, _)| BlobContent::Bytes(bytes)));
                }
                if size == 0 {
                    return Ok(Some(BlobContent::Bytes(Bytes::new())));
                }
                let range = range.map(|(s, e)| s..e.min(size - 1) + 1);
                Ok(objects
                    .read_stream(&data, range)
                    .await?
                    .map(BlobContent::Stream))
            })
            .await?;
        content.ok_or_else(|| StorageError::BlobUnknown(digest.clone()))
    }

    async fn read_blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let objects = &self.objects;
        self.read_data(digest, |_, data| async move {
            Ok(objects.get(&data).await?.map(|(b, _)| b))
        })
        .await
    }

    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.touch_record(digest).await?.is_some() {
            return Ok(());
        }
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
        self.store_verified(digest, body).await.map(|_| ())
    }

    async fn put_blob_stream(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        let size = self.store_verified(digest, body).await?;
        self.link_blob(repo, digest).await?;
        Ok(size)
    }

    async fn touch_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.touch_record(digest).await?.is_some())
    }

    async fn list_blobs(&self) -> Result<Vec<Aged<Digest>>> {
        self.list_digests("blobs/").await
    }

    async fn delete_blob_unused_since(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        let key = record_key(digest);
        let Some((record, meta)) = self.record(digest).await? else {
            return Ok(None);
        };
        if meta.modified >= cutoff {
            return Ok(None);
        }
        let e_tag = meta.e_tag.unwrap_or_default();
        if !self.objects.delete_if_unchanged(&key, &e_tag).await? {
            return Ok(None);
        }
        // The record is gone, so nothing reaches the content any more.
        self.records.forget(digest);
        self.objects.delete(&record.data).await?;
        Ok(Some(record.size))
    }

    async fn sweep_temporary(&self, cutoff: SystemTime) -> Result<usize> {
        // Order matters: sessions, then records, then data. Content of a commit in progress
        // is named by its session until its record exists, so whatever a listing misses,
        // the one before it saw.
        let sessions: HashSet<String> = self
            .objects
            .list("uploads/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("uploads/").map(str::to_owned))
            .collect();
        let records = self.list_digests("blobs/").await?;
        let named: HashSet<String> = futures_util::stream::iter(records)
            .map(|b| async move { self.record(&b.item).await })
            .buffer_unordered(SCAN_CONCURRENCY)
            .try_filter_map(|r| async move { Ok(r.map(|(record, _)| record.data)) })
            .try_collect()
            .await?;
        let mut removed = 0;
        for (key, meta) in self.objects.list("data/").await? {
            let upload = key.split('/').nth(1).unwrap_or_default();
            if sessions.contains(upload) || named.contains(&key) || meta.modified >= cutoff {
                continue;
            }
            self.objects.delete(&key).await?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.ensure_link(&layer_key(repo, digest), None).await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.objects.head(&layer_key(repo, digest)).await?.is_some())
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove(&layer_key(repo, digest)).await
    }

    async fn list_blob_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>> {
        self.list_digests(&format!("{}_layers/", repo_dir(repo)))
            .await
    }

    async fn unlink_blob_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        self.remove_unused_since(&layer_key(repo, digest), cutoff)
            .await
    }

    async fn link_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
    ) -> Result<()> {
        self.ensure_link(&revision_key(repo, digest), Some(media_type))
            .await
    }

    async fn manifest_media_type(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        let key = revision_key(repo, digest);
        match self.objects.get(&key).await? {
            Some((bytes, _)) => Ok(parse::<Link>(&key, &bytes)?.media_type),
            None => Ok(None),
        }
    }

    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove(&revision_key(repo, digest)).await
    }

    async fn list_manifest_links(&self, repo: &RepoName) -> Result<Vec<Aged<Digest>>> {
        self.list_digests(&format!("{}_manifests/revisions/", repo_dir(repo)))
            .await
    }

    async fn unlink_manifest_unused_since(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        self.remove_unused_since(&revision_key(repo, digest), cutoff)
            .await
    }

    async fn set_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<()> {
        let key = format!("{}{tag}", tags_dir(repo));
        self.objects
            .put(&key, Bytes::from(digest.to_string()))
            .await
    }

    async fn get_tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>> {
        let key = format!("{}{tag}", tags_dir(repo));
        Ok(self
            .objects
            .get(&key)
            .await?
            .and_then(|(b, _)| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        self.remove(&format!("{}{tag}", tags_dir(repo))).await
    }

    async fn delete_tag_if(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool> {
        let key = format!("{}{tag}", tags_dir(repo));
        let Some((bytes, meta)) = self.objects.get(&key).await? else {
            return Ok(false);
        };
        if String::from_utf8_lossy(&bytes).trim() != digest.to_string() {
            return Ok(false);
        }
        let e_tag = meta.e_tag.unwrap_or_default();
        self.objects.delete_if_unchanged(&key, &e_tag).await
    }

    async fn list_tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let (_, dirs) = self.objects.list_dir(&repo_dir(repo)).await?;
        if !dirs.iter().any(|d| d == "_manifests" || d == "_layers") {
            return Ok(None);
        }
        let (tags, _) = self.objects.list_dir(&tags_dir(repo)).await?;
        let mut tags: Vec<String> = tags.into_iter().map(|(name, _)| name).collect();
        tags.sort();
        Ok(Some(tags))
    }

    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<()> {
        let key = format!(
            "{}{}-{}",
            referrers_dir(repo, subject),
            referrer.digest.algorithm(),
            referrer.digest.hex()
        );
        self.objects.put(&key, json(referrer)).await
    }

    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let key = format!(
            "{}{}-{}",
            referrers_dir(repo, subject),
            referrer.algorithm(),
            referrer.hex()
        );
        self.objects.delete(&key).await
    }

    async fn list_referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = referrers_dir(repo, subject);
        let (mut entries, _) = self.objects.list_dir(&dir).await?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(entries.len());
        for (name, _) in entries {
            let key = format!("{dir}{name}");
            if let Some((bytes, _)) = self.objects.get(&key).await?
                && let Ok(d) = serde_json::from_slice::<Descriptor>(&bytes)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn list_repositories(&self) -> Result<Vec<RepoName>> {
        // Repository names nest (`a` and `a/b`), so walk the "directories": one that holds
        // `_manifests` or `_layers` is a repository, the others are walked deeper.
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(name) = stack.pop() {
            let dir = if name.is_empty() {
                "repositories/".to_owned()
            } else {
                format!("repositories/{name}/")
            };
            let (_, dirs) = self.objects.list_dir(&dir).await?;
            for d in dirs {
                if d.starts_with('_') {
                    if (d == "_manifests" || d == "_layers")
                        && let Some(r) = RepoName::parse(&name)
                        && !out.contains(&r)
                    {
                        out.push(r);
                    }
                } else if name.is_empty() {
                    stack.push(d);
                } else {
                    stack.push(format!("{name}/{d}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn create_upload(&self, repo: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let session = Session {
            repository: repo.to_string(),
            size: 0,
            hash: base64::engine::general_purpose::STANDARD
                .encode(Digester::new(Algorithm::Sha256).state()),
            written: Written::default(),
            committing: None,
        };
        self.objects.put(&session_key(&id), json(&session)).await?;
        Ok(id)
    }

    async fn upload_size(&self, repo: &RepoName, id: &str) -> Result<u64> {
        Ok(self.owned_session(repo, id).await?.0.size)
    }

    async fn append_upload(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        mut body: ByteStream,
    ) -> Result<u64> {
        let (mut session, e_tag) = self.owned_session(repo, id).await?;
        if let Some(start) = start
            && start != session.size
        {
            return Err(StorageError::UploadOffset {
                expected: start,
                size: session.size,
            });
        }
        let mut digester = session.digester()?;
        let mut writer = PartWriter::new(
            self.objects.clone(),
            id,
            session.written.clone(),
            self.budget.clone(),
        );
        // Everything hashed is handed to the writer, so the saved hash state and the saved
        // bytes always agree, even when the body breaks off.
        let mut body_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    digester.update(&c);
                    writer.push(c).await?;
                }
                Err(e) => {
                    body_error = Some(StorageError::BodyRead(e.to_string()));
                    break;
                }
            }
        }
        let (written, consumed) = writer.finish().await?;
        let new_pieces: Vec<Piece> = written
            .pieces
            .iter()
            .filter(|p| !session.written.pieces.contains(p))
            .cloned()
            .collect();
        session.size = digester.len();
        session.hash = base64::engine::general_purpose::STANDARD.encode(digester.state());
        session.written = written;
        if !self
            .objects
            .replace(&session_key(id), json(&session), &e_tag)
            .await?
        {
            // Another request changed (or ended) the session meanwhile: ours lost. Its
            // pieces are ours alone; its parts are overwritten or refused at completion.
            self.delete_pieces(&new_pieces).await;
            return match self.session(id).await? {
                Some((now, _)) => Err(StorageError::UploadOffset {
                    expected: start.unwrap_or(now.size),
                    size: now.size,
                }),
                None => Err(StorageError::UploadUnknown(id.to_owned())),
            };
        }
        self.delete_pieces(&consumed).await;
        match body_error {
            Some(e) => Err(e),
            None => Ok(session.size),
        }
    }

    async fn commit_upload(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64> {
        let (mut session, e_tag) = self.owned_session(repo, id).await?;
        let size = session.size;
        let writer = PartWriter::new(
            self.objects.clone(),
            id,
            session.written.clone(),
            self.budget.clone(),
        );
        let data = if digest.algorithm() == Algorithm::Sha256 {
            let actual = session.digester()?.finish();
            if &actual != digest {
                self.purge_upload(id).await?;
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            let (data, consumed) = writer.complete(size).await?;
            self.delete_pieces(&consumed).await;
            data
        } else {
            // The saved hash state is sha256: assemble the content (still unreachable),
            // hash it under the client's algorithm, and say so in the session first so that
            // expiry keeps what a record may name.
            session.committing = Some(digest.clone());
            if !self
                .objects
                .replace(&session_key(id), json(&session), &e_tag)
                .await?
            {
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            let (data, consumed) = writer.complete(size).await?;
            self.delete_pieces(&consumed).await;
            let mut digester = Digester::new(digest.algorithm());
            let mut stream = self
                .objects
                .read_stream(&data, None)
                .await?
                .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
            while let Some(chunk) = stream.next().await {
                digester.update(&chunk.map_err(|e| StorageError::Unavailable {
                    context: format!("reading {data} back"),
                    source: Box::new(e),
                })?);
            }
            let actual = digester.finish();
            if &actual != digest {
                self.objects.delete(&data).await?;
                self.purge_upload(id).await?;
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            data
        };
        // Blob first, then the repository's link, then the session goes.
        let size = self.publish(digest, &data, size).await?;
        self.link_blob(repo, digest).await?;
        self.objects.delete(&session_key(id)).await?;
        Ok(size)
    }

    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.owned_session(repo, id).await?;
        self.purge_upload(id).await
    }

    async fn list_uploads(&self) -> Result<Vec<UploadInfo>> {
        let listed = self.objects.list("uploads/").await?;
        let mut out = Vec::with_capacity(listed.len());
        for (key, meta) in listed {
            let Some(id) = key.strip_prefix("uploads/") else {
                continue;
            };
            let repository = match self.session(id).await {
                Ok(Some((s, _))) => s.repository,
                _ => String::new(),
            };
            out.push(UploadInfo {
                id: id.to_owned(),
                repository,
                modified: meta.modified,
            });
        }
        Ok(out)
    }

    async fn purge_upload(&self, id: &str) -> Result<()> {
        let Some((session, _)) = self.session(id).await? else {
            return Ok(());
        };
        // A commit that died after recording its blob left the session behind: its
        // content is the blob's now and stays.
        if self.committed_data(id, &session).await?.is_none() {
            self.discard(id, &session.written).await;
        }
        self.objects.delete(&session_key(id)).await
    }

    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        let Some((record, _)) = self.record(digest).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.objects
                .presigned_get(&record.data, REDIRECT_EXPIRY)
                .await?,
        ))
    }
}
