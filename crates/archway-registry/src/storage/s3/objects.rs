//! A thin layer over the S3 client: keys under the configured prefix, conditional writes
//! and deletes, listings, presigned URLs, and object-store errors as [`StorageError`]s.
//!
//! Conditional deletes (`DELETE` with `If-Match`, which S3 has honoured since 2025 and
//! S3-compatible servers such as Ceph and moto honour too) are not in the `object_store`
//! crate's API; they are sent as presigned requests through the same credentials.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::Method;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};

use crate::storage::{Result, StorageError};

/// What a listing or a read says about an object.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub e_tag: Option<String>,
    pub modified: SystemTime,
    pub size: u64,
}

impl From<&ObjectMeta> for Meta {
    fn from(m: &ObjectMeta) -> Self {
        Meta {
            e_tag: m.e_tag.clone(),
            modified: SystemTime::from(m.last_modified),
            size: m.size,
        }
    }
}

/// Turns an object-store failure into a storage error: failures of the HTTP exchange itself
/// (still failing after the client's retries) mean the store is unavailable for now;
/// anything else is a backend failure.
pub(crate) fn store_error(context: impl Into<String>, e: object_store::Error) -> StorageError {
    let context = context.into();
    match e {
        object_store::Error::Generic { .. } => StorageError::Unavailable {
            context,
            source: Box::new(e),
        },
        other => StorageError::Backend {
            context,
            source: Box::new(other),
        },
    }
}

fn err(context: &str, key: &str) -> impl FnOnce(object_store::Error) -> StorageError {
    let context = format!("{context} {key}");
    move |e| store_error(context, e)
}

/// Keys relative to one prefix of one bucket.
#[derive(Debug)]
pub(crate) struct Objects {
    store: Arc<AmazonS3>,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    http: reqwest::Client,
}

/// Attempts of a conditional delete before giving up (the S3 client retries its own
/// requests the same way).
const DELETE_ATTEMPTS: u32 = 6;

impl Objects {
    pub fn new(store: Arc<AmazonS3>, prefix: &str) -> Objects {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Objects {
            store,
            prefix,
            http,
        }
    }

    pub fn store(&self) -> &AmazonS3 {
        &self.store
    }

    pub fn store_arc(&self) -> Arc<AmazonS3> {
        self.store.clone()
    }

    pub fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// The key of a listed path, relative to the prefix.
    fn key_of(&self, p: &Path) -> Option<String> {
        p.as_ref()
            .strip_prefix(self.prefix.as_str())
            .map(str::to_owned)
    }

    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, Meta)>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => {
                let meta = Meta::from(&r.meta);
                let bytes = r.bytes().await.map_err(err("reading", key))?;
                Ok(Some((bytes, meta)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err("reading", key)(e)),
        }
    }

    /// A stream of `range` of an object (all of it without one); `None` if it is absent.
    /// Errors in the middle of the body are retried from where they stopped by the client.
    pub async fn read_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => {
                let context = format!("reading {key}");
                Ok(Some(
                    r.into_stream()
                        .map(move |c| {
                            c.map_err(|e| std::io::Error::other(format!("{context}: {e}")))
                        })
                        .boxed(),
                ))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err("reading", key)(e)),
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<Meta>> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(Meta::from(&m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err("looking up", key)(e)),
        }
    }

    /// Writes (or replaces) an object whole.
    pub async fn put(&self, key: &str, payload: impl Into<PutPayload>) -> Result<()> {
        self.store
            .put_opts(&self.path(key), payload.into(), PutOptions::default())
            .await
            .map(|_| ())
            .map_err(err("writing", key))
    }

    /// Creates an object unless one exists (`If-None-Match: *`); `false` if one did.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(key), bytes.into(), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(err("creating", key)(e)),
        }
    }

    /// Replaces an object only if it is still the version `e_tag` names (`If-Match`);
    /// `false` if it changed or vanished in the meantime.
    pub async fn replace(&self, key: &str, bytes: Bytes, e_tag: &str) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag.to_owned()),
                version: None,
            }),
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(key), bytes.into(), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(e) => Err(err("replacing", key)(e)),
        }
    }

    /// Deletes an object; an absent one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err("deleting", key)(e)),
        }
    }

    /// Deletes an object only if it is still the version `e_tag` names (`If-Match`);
    /// `false` if it changed or vanished. A retried delete whose first attempt went through
    /// also answers `false` (the object is gone either way).
    pub async fn delete_if_unchanged(&self, key: &str, e_tag: &str) -> Result<bool> {
        let context = format!("deleting {key}");
        let url = self
            .store
            .signed_url(Method::DELETE, &self.path(key), Duration::from_secs(600))
            .await
            .map_err(|e| store_error(context.clone(), e))?;
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= DELETE_ATTEMPTS;
            match self
                .http
                .delete(url.clone())
                .header(http::header::IF_MATCH, e_tag)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(true),
                Ok(r)
                    if r.status() == http::StatusCode::PRECONDITION_FAILED
                        || r.status() == http::StatusCode::NOT_FOUND =>
                {
                    return Ok(false);
                }
                Ok(r) => {
                    let status = r.status();
                    let retryable = status.is_server_error()
                        || status == http::StatusCode::TOO_MANY_REQUESTS
                        || status == http::StatusCode::REQUEST_TIMEOUT;
                    if !retryable || last {
                        let body = r.text().await.unwrap_or_default();
                        let source = format!("the store answered {status}: {body}").into();
                        return Err(if retryable {
                            StorageError::Unavailable { context, source }
                        } else {
                            StorageError::Backend { context, source }
                        });
                    }
                }
                Err(e) => {
                    if last {
                        return Err(StorageError::Unavailable {
                            context,
                            source: Box::new(e),
                        });
                    }
                }
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 50);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Every object under `dir/` (recursively), keys relative to the prefix.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, Meta)>> {
        let prefix = self.path(dir);
        let mut stream = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let m = item.map_err(err("listing", dir))?;
            if let Some(key) = self.key_of(&m.location) {
                out.push((key, Meta::from(&m)));
            }
        }
        Ok(out)
    }

    /// The objects directly under `dir/` (by name) and the names of its sub-"directories".
    pub async fn list_dir(&self, dir: &str) -> Result<(Vec<(String, Meta)>, Vec<String>)> {
        let prefix = self.path(dir);
        let r = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(err("listing", dir))?;
        let name = |p: &Path| p.filename().map(str::to_owned);
        let objects = r
            .objects
            .iter()
            .filter_map(|m| name(&m.location).map(|n| (n, Meta::from(m))))
            .collect();
        let dirs = r.common_prefixes.iter().filter_map(name).collect();
        Ok((objects, dirs))
    }

    /// A URL that lets its holder `GET` the object for `expires` without credentials.
    pub async fn presigned_get(&self, key: &str, expires: Duration) -> Result<String> {
        self.store
            .signed_url(Method::GET, &self.path(key), expires)
            .await
            .map(|u| u.to_string())
            .map_err(err("presigning", key))
    }
}
