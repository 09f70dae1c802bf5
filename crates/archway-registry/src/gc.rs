//! Garbage collection: mark what is reachable, sweep what is not and is old enough.
//!
//! **Mark**, per repository, starting from every tag and from every manifest pushed within the
//! grace period (a multi-arch push uploads children by digest before the index that tags
//! them): a manifest keeps its config and layers, an index keeps its child manifests, and any
//! kept manifest keeps its referrers (signatures, SBOMs), recursively.
//!
//! **Sweep**: manifest links and blob links that are unmarked *and* unused for longer than the
//! grace period are removed; then global blobs that no remaining link or kept manifest names,
//! and that are unused for longer than the grace period, are deleted. Every removal re-checks
//! the last-use stamp at the moment it happens, and the registry re-stamps content a client
//! relies on (HEAD, mount, a manifest referencing it), so a push racing the collector is not
//! broken. Abandoned uploads and crash leftovers are removed too; the server also expires
//! abandoned uploads itself ([`expire_uploads`]).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use archway_oci::{Digest, ParsedManifest};

use crate::names::RepoName;
use crate::storage::{Storage, StorageError, TOUCH_INTERVAL};

/// Settings of one collection.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Content used more recently than this is never removed.
    pub grace: Duration,
    /// Upload sessions idle for longer than this are removed.
    pub upload_max_age: Duration,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

impl GcOptions {
    /// True if the grace period is too short to protect content in use by a concurrent push.
    pub fn grace_is_unsafe_for_live_registry(&self) -> bool {
        self.grace <= TOUCH_INTERVAL
    }
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: usize,
    pub manifests_kept: usize,
    pub blobs_kept: usize,
    pub manifests_removed: Vec<(String, Digest)>,
    pub blob_links_removed: Vec<(String, Digest)>,
    pub blobs_removed: Vec<Digest>,
    pub bytes_freed: u64,
    pub uploads_removed: usize,
    pub temporary_files_removed: usize,
}

/// Runs one collection over `storage`.
pub async fn collect(storage: &dyn Storage, opts: &GcOptions) -> Result<GcReport, StorageError> {
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    // Digests of blobs that must survive the global sweep.
    let mut keep: HashSet<Digest> = HashSet::new();

    let repos = storage.list_repositories().await?;
    report.repositories = repos.len();
    for repo in &repos {
        let marked = mark_repository(storage, repo, cutoff).await?;
        report.manifests_kept += marked.manifests.len();

        for link in storage.list_manifest_links(repo).await? {
            if marked.manifests.contains(&link.item) {
                keep.insert(link.item);
                continue;
            }
            if link.modified >= cutoff {
                keep.insert(link.item);
                continue;
            }
            let subject = storage
                .read_blob_bytes(&link.item)
                .await?
                .and_then(|b| ParsedManifest::parse(&b, None).ok())
                .and_then(|m| m.subject);
            let removed = opts.dry_run
                || storage
                    .unlink_manifest_unused_since(repo, &link.item, cutoff)
                    .await?;
            if !removed {
                keep.insert(link.item);
                continue;
            }
            if !opts.dry_run
                && let Some(subject) = subject
            {
                storage
                    .remove_referrer(repo, &subject.digest, &link.item)
                    .await?;
            }
            report.manifests_removed.push((repo.to_string(), link.item));
        }

        for link in storage.list_blob_links(repo).await? {
            if marked.blobs.contains(&link.item) || link.modified >= cutoff {
                keep.insert(link.item);
                continue;
            }
            let removed = opts.dry_run
                || storage
                    .unlink_blob_unused_since(repo, &link.item, cutoff)
                    .await?;
            if removed {
                report
                    .blob_links_removed
                    .push((repo.to_string(), link.item));
            } else {
                keep.insert(link.item);
            }
        }
        keep.extend(marked.blobs);
    }

    for blob in storage.list_blobs().await? {
        if keep.contains(&blob.item) || blob.modified >= cutoff {
            report.blobs_kept += 1;
            continue;
        }
        if opts.dry_run {
            report.bytes_freed += storage.blob_size(&blob.item).await?.unwrap_or(0);
            report.blobs_removed.push(blob.item);
        } else if let Some(size) = storage.delete_blob_unused_since(&blob.item, cutoff).await? {
            report.bytes_freed += size;
            report.blobs_removed.push(blob.item);
        } else {
            report.blobs_kept += 1;
        }
    }

    report.uploads_removed =
        remove_stale_uploads(storage, opts.upload_max_age, opts.dry_run).await?;
    if !opts.dry_run {
        report.temporary_files_removed = storage.sweep_temporary(cutoff).await?;
    }
    Ok(report)
}

/// Removes upload sessions idle for longer than `max_age` (the server runs this itself, see
/// `Registry::expire_uploads`); returns how many.
pub async fn expire_uploads(
    storage: &dyn Storage,
    max_age: Duration,
) -> Result<usize, StorageError> {
    remove_stale_uploads(storage, max_age, false).await
}

async fn remove_stale_uploads(
    storage: &dyn Storage,
    max_age: Duration,
    dry_run: bool,
) -> Result<usize, StorageError> {
    let cutoff = SystemTime::now()
        .checked_sub(max_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    for upload in storage.list_uploads().await? {
        if upload.modified < cutoff {
            if !dry_run {
                storage.purge_upload(&upload.id).await?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

struct Marked {
    manifests: HashSet<Digest>,
    blobs: HashSet<Digest>,
}

/// Marks everything reachable in one repository.
async fn mark_repository(
    storage: &dyn Storage,
    repo: &RepoName,
    cutoff: SystemTime,
) -> Result<Marked, StorageError> {
    let mut work: Vec<Digest> = Vec::new();
    for tag in storage.list_tags(repo).await?.unwrap_or_default() {
        if let Some(d) = storage.get_tag(repo, &tag).await? {
            work.push(d);
        }
    }
    for link in storage.list_manifest_links(repo).await? {
        if link.modified >= cutoff {
            work.push(link.item);
        }
    }
    let mut manifests = HashSet::new();
    let mut blobs = HashSet::new();
    while let Some(d) = work.pop() {
        if manifests.contains(&d) {
            continue;
        }
        let Some(media_type) = storage.manifest_media_type(repo, &d).await? else {
            continue; // a tag naming a manifest this repository does not have
        };
        manifests.insert(d.clone());
        blobs.insert(d.clone());
        for r in storage.list_referrers(repo, &d).await? {
            work.push(r.digest);
        }
        let Some(bytes) = storage.read_blob_bytes(&d).await? else {
            continue;
        };
        let Ok(parsed) = ParsedManifest::parse(&bytes, Some(&media_type)) else {
            continue;
        };
        blobs.extend(parsed.blobs().map(|b| b.digest.clone()));
        work.extend(parsed.manifests.iter().map(|c| c.digest.clone()));
    }
    Ok(Marked { manifests, blobs })
}
