//! The shared step cache (`--cache-repo`): each entry is a small OCI artifact
//! ([`CACHE_ARTIFACT_TYPE`]) tagged with its cache key, whose config is the entry and whose one
//! layer (if any) is the step's layer. Lookups fall back to running the step, and exports to a
//! warning: the registry cache never fails a build.

use std::collections::BTreeSet;

use archway_client::Location;
use archway_oci::{Descriptor, Digest, ImageManifest, Reference, media_type};
use futures_util::StreamExt;
use tokio::runtime::Handle;

use crate::builder::{BuildEvent, Builder};
use crate::error::{BuildError, with_causes};
use crate::store::CacheEntry;

/// The artifact type of a step-cache entry in a registry.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.archway.build.cache.v1";
/// Its config: the cache entry JSON.
pub const CACHE_CONFIG_TYPE: &str = "application/vnd.archway.build.cache.config.v1+json";

/// Entries pushed at once by an export.
const EXPORT_CONCURRENCY: usize = 6;

fn remote_ref(repo: &Reference, key: &Digest) -> Reference {
    Reference {
        tag: Some(key.hex().to_owned()),
        digest: None,
        ..repo.clone()
    }
}

fn layout_tag(key: &Digest) -> String {
    format!("cache-{}", key.hex())
}

impl Builder {
    /// A step's result from the `--cache-repo`, copied into the local store; `None` (with a
    /// warning when something failed) means "run the step".
    pub(crate) fn remote_cache_get(&self, rt: &Handle, key: &Digest) -> Option<CacheEntry> {
        let repo = self.cache_repo()?;
        let remote = remote_ref(repo, key);
        self.fetch_cache_entry(rt, &remote, key)
            .unwrap_or_else(|e| {
                self.emit(BuildEvent::Warning(format!(
                    "cache {remote}: {} (running the step instead)",
                    with_causes(&e)
                )));
                None
            })
    }

    fn fetch_cache_entry(
        &self,
        rt: &Handle,
        remote: &Reference,
        key: &Digest,
    ) -> Result<Option<CacheEntry>, BuildError> {
        let source = self.images().source();
        if !rt.block_on(source.exists(remote))? {
            return Ok(None);
        }
        let layout = self.store().layout();
        let tag = layout_tag(key);
        rt.block_on(source.copy_into(
            &Location::Registry(remote.clone()),
            None,
            layout.root(),
            &tag,
        ))?;
        let desc = layout.resolve(Some(&tag))?;
        let not_an_entry =
            |e: serde_json::Error| BuildError::Image(format!("{remote}: not a cache entry: {e}"));
        let manifest: ImageManifest =
            serde_json::from_slice(&layout.read_blob(&desc.digest)?).map_err(not_an_entry)?;
        let entry: CacheEntry = serde_json::from_slice(&layout.read_blob(&manifest.config.digest)?)
            .map_err(not_an_entry)?;
        if let Some(l) = &entry.layer
            && !self.store().touch_blob(&l.digest)
        {
            return Err(BuildError::Image(format!(
                "{remote}: the cached layer {} is missing",
                l.digest
            )));
        }
        self.store().cache_put(key, &entry)?;
        Ok(Some(entry))
    }

    /// The local artifact for the cache entry of `key`, tagged in the store's layout.
    fn cache_artifact(&self, key: &Digest, entry: &CacheEntry) -> Result<String, BuildError> {
        let layout = self.store().layout();
        let config = serde_json::to_vec(entry).map_err(|e| BuildError::Image(e.to_string()))?;
        let config_digest = self.store().write_blob(&config)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.to_owned(),
            artifact_type: Some(CACHE_ARTIFACT_TYPE.to_owned()),
            config: Descriptor::new(CACHE_CONFIG_TYPE, config_digest, config.len() as u64),
            layers: entry.layer.iter().cloned().collect(),
            subject: None,
            annotations: None,
        };
        let bytes = manifest.to_json();
        let digest = self.store().write_blob(&bytes)?;
        let tag = layout_tag(key);
        layout.set_ref(
            &tag,
            &Descriptor::new(media_type::OCI_MANIFEST, digest, bytes.len() as u64),
        )?;
        Ok(tag)
    }

    /// Pushes the cache entries of `keys` to the `--cache-repo` ([`EXPORT_CONCURRENCY`] at a
    /// time; the ones already there are only checked). Failures are warnings: the build itself
    /// succeeded.
    pub(crate) fn export_cache(&self, rt: &Handle, keys: &BTreeSet<Digest>) {
        let Some(repo) = self.cache_repo() else {
            return;
        };
        let mut pushes = Vec::new();
        for key in keys {
            let Some(entry) = self.store().cache_get(key) else {
                continue;
            };
            match self.cache_artifact(key, &entry) {
                Ok(tag) => pushes.push((tag, remote_ref(repo, key))),
                Err(e) => self.emit(BuildEvent::Warning(format!(
                    "cache export: {}",
                    with_causes(&e)
                ))),
            }
        }
        let source = self.images().source();
        let layout = self.store().layout().root();
        let results: Vec<(Reference, Result<(), BuildError>)> = rt.block_on(
            futures_util::stream::iter(pushes.iter().map(|(tag, dst)| async move {
                (dst.clone(), source.push(layout, tag, dst).await)
            }))
            .buffer_unordered(EXPORT_CONCURRENCY)
            .collect(),
        );
        let mut exported = 0;
        for (dst, r) in results {
            match r {
                Ok(()) => exported += 1,
                Err(e) => self.emit(BuildEvent::Warning(format!(
                    "cache export to {dst}: {}",
                    with_causes(&e)
                ))),
            }
        }
        self.emit(BuildEvent::CacheExported {
            repository: repo.to_string(),
            entries: exported,
        });
    }
}
