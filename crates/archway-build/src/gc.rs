//! Builder store housekeeping: what the store holds (`archway build du`), removing what no
//! running build uses (`archway build prune`), and the size cap applied after every build
//! (BuildKit's default GC policy).
//!
//! The store's kept items are snapshots, exploded layers, step-cache entries (`keys/`),
//! content-keyed layers (`content/`), images named in the layout (pulled bases, build
//! results, cache artifacts), cache mounts, downloads and git checkouts. Blobs belong to the
//! items that name them and go when the last of those goes (or when nothing names them).
//!
//! **Never while a build uses them:** the pruner holds the store's `GC_LOCK` exclusively while
//! it decides and removes; a build holds a [`Lease`](crate::store::Lease) from its start and
//! touches each item it uses under the same lock, shared. Every item touched after the start
//! of the oldest live lease is kept, whatever the options say; everything else may go.
//! Directories are renamed into `tmp/` under the lock (atomic) and deleted after it.
//!
//! The planner ([`plan`]) is pure: an inventory and rules in, the items to remove out.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use archway_oci::{Digest, ParsedManifest};
use rustix::fs::{FlockOperation, flock};
use serde::Serialize;

use crate::error::{BuildError, io};
use crate::store::{CacheEntry, GC_LOCK, Store};

/// What kind of item of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    /// A root filesystem of a layer stack (`snapshots/`).
    Snapshot,
    /// A layer unpacked on its own (`layers/`).
    ExplodedLayer,
    /// A step's cached result (`keys/`).
    StepCache,
    /// A COPY layer by content (`content/`).
    ContentCache,
    /// An image named in the layout: a pulled base, a build result, a cache artifact.
    Image,
    /// A `RUN --mount=type=cache` directory (`mounts/`).
    CacheMount,
    /// An `ADD <url>` download (`downloads/`).
    Download,
    /// An `ADD <repository>` checkout (`git/`).
    GitCheckout,
    /// A blob nothing names any more.
    Blob,
}

impl ItemKind {
    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Snapshot => "snapshots",
            ItemKind::ExplodedLayer => "exploded layers",
            ItemKind::StepCache => "step cache",
            ItemKind::ContentCache => "content cache",
            ItemKind::Image => "images",
            ItemKind::CacheMount => "cache mounts",
            ItemKind::Download => "downloads",
            ItemKind::GitCheckout => "git checkouts",
            ItemKind::Blob => "unreferenced blobs",
        }
    }
}

/// One kept item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: ItemKind,
    /// Its name in the store (directory or file name, layout tag, digest).
    pub name: String,
    pub last_used: SystemTime,
    /// Its own bytes (hard-linked files count `size / links`; blobs are counted apart).
    pub size: u64,
    /// Blobs it names (they go when nothing names them any more).
    pub blobs: Vec<Digest>,
    /// What to remove.
    what: Removal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Removal {
    Dir(PathBuf),
    Files(Vec<PathBuf>),
    LayoutRef(String),
}

/// Every item and blob of a store, with the live leases.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub items: Vec<Item>,
    /// Every blob: its size and when it was last used.
    pub blobs: BTreeMap<Digest, (u64, SystemTime)>,
    /// Start of the oldest running build's lease.
    pub oldest_lease: Option<SystemTime>,
    /// Running builds.
    pub leases: usize,
    /// Bytes in scratch directories of running steps (not items; removed by their owners).
    pub scratch: u64,
}

/// One rule of a prune: which items may go, and how far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Only these kinds (all when empty).
    pub kinds: Vec<ItemKind>,
    /// Only items unused for at least this long.
    pub unused_for: Option<Duration>,
    /// Stop once the store is at most this big; without it, remove every candidate.
    pub keep_bytes: Option<u64>,
    /// Apply the rule only while the store is bigger than this.
    pub only_above: Option<u64>,
}

/// What `archway build prune` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Keep the most recently used items up to this many bytes (`--keep-storage`).
    pub keep_storage: Option<u64>,
    /// Only items unused for at least this long (`--filter until=…`).
    pub unused_for: Option<Duration>,
    /// Report without removing.
    pub dry_run: bool,
}

/// What a prune removed (or, dry, would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed: Vec<RemovedItem>,
    pub bytes_freed: u64,
    pub total_before: u64,
    pub total_after: u64,
    /// Items kept because a running build used them.
    pub kept_in_use: usize,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RemovedItem {
    pub kind: ItemKind,
    pub name: String,
    pub bytes: u64,
}

impl RemovedItem {
    /// The kind in words, singular (`snapshot`, `step cache entry`, …).
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            ItemKind::Snapshot => "snapshot",
            ItemKind::ExplodedLayer => "exploded layer",
            ItemKind::StepCache => "step cache entry",
            ItemKind::ContentCache => "content cache entry",
            ItemKind::Image => "image",
            ItemKind::CacheMount => "cache mount",
            ItemKind::Download => "download",
            ItemKind::GitCheckout => "git checkout",
            ItemKind::Blob => "blob",
        }
    }
}

/// Usage of one kind of item.
#[derive(Clone, Debug, Serialize)]
pub struct KindUsage {
    pub kind: ItemKind,
    pub label: &'static str,
    pub items: usize,
    pub bytes: u64,
    /// Bytes a prune could free now (not used by a running build).
    pub reclaimable: u64,
}

/// What `archway build du` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub kinds: Vec<KindUsage>,
    /// Blobs (image layers, configs, manifests), counted apart from the items naming them.
    pub blobs: KindUsage,
    pub scratch: u64,
    pub total: u64,
    pub reclaimable: u64,
    pub running_builds: usize,
}

/// The automatic cap applied after every build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the store under this many bytes.
    pub keep_bytes: u64,
}

/// BuildKit's default cap when the disk size is unknown.
const DEFAULT_CAP: u64 = 2_000_000_000;

impl GcPolicy {
    /// BuildKit's default: 10% of the filesystem holding the store (2 GB if unknown).
    pub fn default_for(root: &Path) -> GcPolicy {
        GcPolicy {
            keep_bytes: filesystem_size(root).map(|s| s / 10).unwrap_or(DEFAULT_CAP),
        }
    }

    /// `percent`% of the filesystem holding the store.
    pub fn percent_of_disk(root: &Path, percent: u64) -> GcPolicy {
        GcPolicy {
            keep_bytes: filesystem_size(root)
                .map(|s| s / 100 * percent.min(100))
                .unwrap_or(DEFAULT_CAP),
        }
    }

    /// The rules, in BuildKit's order (`DefaultGCPolicy`): easily reproducible data unused for
    /// 48 hours once the store passes 512 MB; anything unused for 60 days; then the least
    /// recently used until the store fits the cap.
    pub fn rules(&self) -> Vec<Rule> {
        vec![
            // BuildKit's "most easily reproducible data" (local sources, cache mounts, git).
            Rule {
                kinds: vec![
                    ItemKind::CacheMount,
                    ItemKind::Download,
                    ItemKind::GitCheckout,
                ],
                unused_for: Some(Duration::from_secs(48 * 3600)),
                keep_bytes: None,
                only_above: Some(512_000_000),
            },
            Rule {
                unused_for: Some(Duration::from_secs(60 * 24 * 3600)),
                ..Rule::default()
            },
            Rule {
                keep_bytes: Some(self.keep_bytes),
                ..Rule::default()
            },
        ]
    }
}

fn filesystem_size(root: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(root).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

impl Inventory {
    /// All bytes: items plus blobs.
    pub fn total(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum::<u64>()
            + self.blobs.values().map(|(s, _)| s).sum::<u64>()
    }

    /// Items used at or after this instant are kept.
    fn protected_from(&self, now: SystemTime) -> SystemTime {
        self.oldest_lease.map_or(now, |l| l.min(now))
    }
}

/// The items to remove (indexes into `inv.items`, and blob digests) under `rules`, applied in
/// order, at `now`. Items used since the oldest live lease began are never chosen.
pub fn plan(inv: &Inventory, rules: &[Rule], now: SystemTime) -> (Vec<usize>, Vec<Digest>) {
    let protected = inv.protected_from(now);
    // Blobs named by each item, counted.
    let mut refs: HashMap<&Digest, usize> = HashMap::new();
    for i in &inv.items {
        for b in &i.blobs {
            *refs.entry(b).or_default() += 1;
        }
    }
    // Unnamed blobs are items of their own (their time is their last write or use).
    let mut orphans: Vec<&Digest> = inv.blobs.keys().filter(|d| !refs.contains_key(d)).collect();
    orphans.sort();
    let mut total = inv.total();
    let mut removed = vec![false; inv.items.len()];
    let mut removed_blobs: Vec<Digest> = Vec::new();
    let mut blob_gone: HashMap<&Digest, bool> = HashMap::new();
    for rule in rules {
        if rule.only_above.is_some_and(|limit| total <= limit) {
            continue;
        }
        let cutoff = match rule.unused_for {
            Some(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
            None => now,
        }
        .min(protected);
        // Candidates: items and orphan blobs, least recently used first.
        let mut candidates: Vec<(SystemTime, Candidate)> = Vec::new();
        for (n, i) in inv.items.iter().enumerate() {
            let kind_ok = rule.kinds.is_empty() || rule.kinds.contains(&i.kind);
            if !removed[n] && kind_ok && i.last_used < cutoff {
                candidates.push((i.last_used, Candidate::Item(n)));
            }
        }
        if rule.kinds.is_empty() || rule.kinds.contains(&ItemKind::Blob) {
            for d in &orphans {
                if let Some((_, used)) = inv.blobs.get(*d)
                    && *used < cutoff
                    && !blob_gone.get(d).copied().unwrap_or(false)
                {
                    candidates.push((*used, Candidate::Blob(d)));
                }
            }
        }
        candidates.sort_by_key(|(t, _)| *t);
        for (_, c) in candidates {
            if rule.keep_bytes.is_some_and(|keep| total <= keep) {
                break;
            }
            match c {
                Candidate::Item(n) => {
                    removed[n] = true;
                    total = total.saturating_sub(inv.items[n].size);
                    for b in &inv.items[n].blobs {
                        let count = refs.entry(b).or_default();
                        *count = count.saturating_sub(1);
                        // The last item naming a blob takes it along, unless the blob was used
                        // by a running build (written but not yet named, say).
                        if *count == 0
                            && let Some((size, used)) = inv.blobs.get(b)
                            && *used < protected
                            && !blob_gone.get(b).copied().unwrap_or(false)
                        {
                            blob_gone.insert(b, true);
                            removed_blobs.push(b.clone());
                            total = total.saturating_sub(*size);
                        }
                    }
                }
                Candidate::Blob(d) => {
                    if let Some((size, _)) = inv.blobs.get(d) {
                        blob_gone.insert(d, true);
                        removed_blobs.push(d.clone());
                        total = total.saturating_sub(*size);
                    }
                }
            }
        }
    }
    let items = removed
        .iter()
        .enumerate()
        .filter_map(|(n, r)| r.then_some(n))
        .collect();
    (items, removed_blobs)
}

enum Candidate<'a> {
    Item(usize),
    Blob(&'a Digest),
}

impl Store {
    /// What the store holds, by kind (`archway build du`).
    pub fn disk_usage(&self) -> Result<Usage, BuildError> {
        let inv = self.inventory(false)?;
        let now = SystemTime::now();
        let protected = inv.protected_from(now);
        let mut kinds: BTreeMap<ItemKind, KindUsage> = BTreeMap::new();
        for i in &inv.items {
            let k = kinds.entry(i.kind).or_insert_with(|| KindUsage {
                kind: i.kind,
                label: i.kind.label(),
                items: 0,
                bytes: 0,
                reclaimable: 0,
            });
            k.items += 1;
            k.bytes += i.size;
            if i.last_used < protected {
                k.reclaimable += i.size;
            }
        }
        let (_, blobs_gone) = plan(&inv, &[Rule::default()], now);
        let blob_bytes: u64 = inv.blobs.values().map(|(s, _)| s).sum();
        let blobs = KindUsage {
            kind: ItemKind::Blob,
            label: "blobs",
            items: inv.blobs.len(),
            bytes: blob_bytes,
            reclaimable: blobs_gone
                .iter()
                .filter_map(|d| inv.blobs.get(d).map(|(s, _)| s))
                .sum(),
        };
        let kinds: Vec<KindUsage> = kinds.into_values().collect();
        let reclaimable = kinds.iter().map(|k| k.reclaimable).sum::<u64>() + blobs.reclaimable;
        Ok(Usage {
            total: inv.total() + inv.scratch,
            reclaimable,
            kinds,
            blobs,
            scratch: inv.scratch,
            running_builds: inv.leases,
        })
    }

    /// Removes what no running build uses (`archway build prune`): everything, or only what was
    /// unused for `unused_for`, or the least recently used until the store fits
    /// `keep_storage`.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport, BuildError> {
        let rule = Rule {
            kinds: Vec::new(),
            unused_for: opts.unused_for,
            keep_bytes: opts.keep_storage,
            only_above: None,
        };
        self.apply_rules(&[rule], opts.dry_run)
    }

    /// The automatic cap: [`GcPolicy::rules`], applied after a build.
    pub fn gc(&self, policy: &GcPolicy) -> Result<PruneReport, BuildError> {
        self.apply_rules(&policy.rules(), false)
    }

    fn apply_rules(&self, rules: &[Rule], dry_run: bool) -> Result<PruneReport, BuildError> {
        let _exclusive = self.lock_file(GC_LOCK, FlockOperation::LockExclusive)?;
        let inv = self.inventory(true)?;
        let now = SystemTime::now();
        let (items, blobs) = plan(&inv, rules, now);
        let protected = inv.protected_from(now);
        let mut report = PruneReport {
            total_before: inv.total(),
            kept_in_use: inv
                .items
                .iter()
                .filter(|i| i.last_used >= protected)
                .count(),
            dry_run,
            ..PruneReport::default()
        };
        let trash = self.root().join("tmp").join(format!(
            "prune-{}-{}",
            std::process::id(),
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        if !dry_run && !items.is_empty() {
            fs::create_dir_all(&trash).map_err(io(trash.display().to_string()))?;
        }
        for (n, &idx) in items.iter().enumerate() {
            let item = &inv.items[idx];
            if !dry_run {
                self.remove_item(item, &trash, n)?;
            }
            report.bytes_freed += item.size;
            report.removed.push(RemovedItem {
                kind: item.kind,
                name: item.name.clone(),
                bytes: item.size,
            });
        }
        for d in &blobs {
            let size = inv.blobs.get(d).map_or(0, |(s, _)| *s);
            if !dry_run {
                let path = self.layout().blob_path(d);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(path.display().to_string())(e)),
                }
            }
            report.bytes_freed += size;
            report.removed.push(RemovedItem {
                kind: ItemKind::Blob,
                name: d.to_string(),
                bytes: size,
            });
        }
        report.total_after = report.total_before.saturating_sub(report.bytes_freed);
        drop(_exclusive);
        // The renamed directories are gone from the store already; deleting them can take a
        // while and needs no lock (a crash here leaves them in tmp/ for the next open).
        if trash.exists() {
            crate::store::remove_tree(&trash);
        }
        Ok(report)
    }

    fn remove_item(&self, item: &Item, trash: &Path, n: usize) -> Result<(), BuildError> {
        match &item.what {
            Removal::Dir(dir) => {
                let to = trash.join(n.to_string());
                match fs::rename(dir, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(dir.display().to_string())(e)),
                }
                // An exploded layer's list of implicit directories goes with it.
                let meta = dir.with_extension("json");
                if item.kind == ItemKind::ExplodedLayer {
                    let _ = fs::remove_file(meta);
                }
            }
            Removal::Files(files) => {
                for f in files {
                    match fs::remove_file(f) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(f.display().to_string())(e)),
                    }
                }
            }
            Removal::LayoutRef(name) => {
                self.layout().remove_ref(name)?;
            }
        }
        Ok(())
    }

    /// Every item with its size, the blobs, and the live leases. With `reap_leases`, lease
    /// files of dead processes are removed (the caller holds `GC_LOCK` exclusively, so no
    /// lease is being created meanwhile).
    fn inventory(&self, reap_leases: bool) -> Result<Inventory, BuildError> {
        let root = self.root();
        let mut inv = Inventory::default();
        for e in read_dir(&root.join("leases"))? {
            let Ok(f) = fs::File::open(e.path()) else {
                continue;
            };
            if flock(&f, FlockOperation::NonBlockingLockShared).is_ok() {
                if reap_leases {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            inv.leases += 1;
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                inv.oldest_lease = Some(inv.oldest_lease.map_or(t, |o| o.min(t)));
            }
        }
        let dirs = [
            ("snapshots", ItemKind::Snapshot),
            ("layers", ItemKind::ExplodedLayer),
            ("mounts", ItemKind::CacheMount),
            ("downloads", ItemKind::Download),
            ("git", ItemKind::GitCheckout),
        ];
        for (sub, kind) in dirs {
            for e in read_dir(&root.join(sub))? {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = fs::symlink_metadata(e.path()) else {
                    continue;
                };
                if name.starts_with(".tmp-") || !meta.is_dir() {
                    continue;
                }
                inv.items.push(Item {
                    kind,
                    size: tree_size(&e.path()),
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    blobs: Vec::new(),
                    what: Removal::Dir(e.path()),
                    name,
                });
            }
        }
        for (sub, kind) in [
            ("keys", ItemKind::StepCache),
            ("content", ItemKind::ContentCache),
        ] {
            for e in read_dir(&root.join(sub))? {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let entry: Option<CacheEntry> = fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                inv.items.push(Item {
                    kind,
                    name: e.file_name().to_string_lossy().into_owned(),
                    size: meta.len(),
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    blobs: entry
                        .and_then(|c| c.layer)
                        .map(|l| vec![l.digest])
                        .unwrap_or_default(),
                    what: Removal::Files(vec![e.path()]),
                });
            }
        }
        let layout = self.layout();
        for alg in ["sha256", "sha512"] {
            for e in read_dir(&layout.root().join("blobs").join(alg))? {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(d) = format!("{alg}:{name}").parse::<Digest>() else {
                    continue; // a temporary file of a write in progress
                };
                let Ok(meta) = e.metadata() else { continue };
                inv.blobs.insert(
                    d,
                    (
                        meta.len() / meta.nlink().max(1),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ),
                );
            }
        }
        if let Ok(index) = layout.index() {
            for desc in &index.manifests {
                let Some(name) = desc.annotation(archway_oci::layout::REF_NAME_ANNOTATION) else {
                    continue;
                };
                let blobs = reachable(layout, &desc.digest);
                let last_used = inv
                    .blobs
                    .get(&desc.digest)
                    .map_or(SystemTime::UNIX_EPOCH, |(_, t)| *t);
                inv.items.push(Item {
                    kind: ItemKind::Image,
                    name: name.to_owned(),
                    size: 0,
                    last_used,
                    blobs,
                    what: Removal::LayoutRef(name.to_owned()),
                });
            }
        }
        inv.scratch = read_dir(&root.join("tmp"))?
            .iter()
            .map(|e| tree_size(&e.path()))
            .sum();
        Ok(inv)
    }
}

/// The blobs a manifest or index reaches (itself, configs, layers, children), in the layout.
fn reachable(layout: &archway_oci::layout::ImageLayout, top: &Digest) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut work = vec![top.clone()];
    while let Some(d) = work.pop() {
        if out.contains(&d) {
            continue;
        }
        out.push(d.clone());
        let Ok(bytes) = layout.read_blob(&d) else {
            continue;
        };
        let Ok(parsed) = ParsedManifest::parse(&bytes, None) else {
            continue;
        };
        out.extend(parsed.blobs().map(|b| b.digest.clone()));
        work.extend(parsed.manifests.iter().map(|m| m.digest.clone()));
    }
    out.sort();
    out.dedup();
    out
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, BuildError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir.display().to_string())(e)),
    }
}

/// Bytes of the files under `path`, each hard-linked file counted `size / links` (snapshots
/// share their files with exploded layers).
fn tree_size(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total += meta.len() / meta.nlink().max(1);
        }
    }
    total
}

/// Parses a size as docker does (`512MB`, `10gb`, `2GiB`, `1024`): k, m, g and t are powers
/// of 1024, with or without a trailing `b`/`ib`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MB, 10GB, 2GiB)"))?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("`{s}`: unknown unit (use B, KB, MB, GB or TB)")),
    };
    Ok((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn item(kind: ItemKind, name: &str, used: u64, size: u64, blobs: &[&Digest]) -> Item {
        Item {
            kind,
            name: name.into(),
            last_used: at(used),
            size,
            blobs: blobs.iter().map(|d| (*d).clone()).collect(),
            what: Removal::Files(Vec::new()),
        }
    }

    fn names(inv: &Inventory, plan: &(Vec<usize>, Vec<Digest>)) -> Vec<String> {
        plan.0
            .iter()
            .map(|&i| inv.items[i].name.clone())
            .chain(plan.1.iter().map(|d| d.hex()[..4].to_owned()))
            .collect()
    }

    fn inventory() -> (Inventory, Digest, Digest, Digest) {
        let (a, b, c) = (
            Digest::sha256(b"a"),
            Digest::sha256(b"b"),
            Digest::sha256(b"c"),
        );
        let inv = Inventory {
            items: vec![
                item(ItemKind::Snapshot, "old-snap", 100, 50, &[]),
                item(ItemKind::StepCache, "old-step", 200, 1, &[&a]),
                item(ItemKind::Image, "base-x", 300, 0, &[&a, &b]),
                item(ItemKind::CacheMount, "npm", 400, 30, &[]),
                item(ItemKind::Snapshot, "in-use", 1_000, 50, &[]),
            ],
            blobs: BTreeMap::from([
                (a.clone(), (100, at(300))),
                (b.clone(), (10, at(300))),
                // Written by the running build, not named yet.
                (c.clone(), (5, at(1_000))),
            ]),
            oldest_lease: Some(at(900)),
            leases: 1,
            scratch: 0,
        };
        (inv, a, b, c)
    }

    #[test]
    fn prune_everything_keeps_what_a_running_build_uses() {
        let (inv, a, b, _c) = inventory();
        let p = plan(&inv, &[Rule::default()], at(2_000));
        let n = names(&inv, &p);
        assert_eq!(
            n,
            [
                "old-snap".to_owned(),
                "old-step".into(),
                "base-x".into(),
                "npm".into(),
                a.hex()[..4].into(),
                b.hex()[..4].into()
            ]
        );
        // Without a lease, the build's new blob (not named by anything) goes too.
        let free = Inventory {
            oldest_lease: None,
            ..inv.clone()
        };
        let p = plan(&free, &[Rule::default()], at(2_000));
        assert_eq!(p.0.len(), 5);
        assert_eq!(p.1.len(), 3);
    }

    #[test]
    fn keep_storage_removes_least_recently_used_first() {
        let (inv, a, _b, _c) = inventory();
        // 50 + 1 + 0 + 30 + 50 items, 115 blobs = 246 bytes.
        assert_eq!(inv.total(), 246);
        let rule = Rule {
            keep_bytes: Some(200),
            ..Rule::default()
        };
        let p = plan(&inv, std::slice::from_ref(&rule), at(2_000));
        assert_eq!(names(&inv, &p), ["old-snap"]); // 246 - 50 = 196
        let rule = Rule {
            keep_bytes: Some(100),
            ..Rule::default()
        };
        // The step entry alone frees 1 byte (the image still names blob a); the image takes
        // a and b along.
        let p = plan(&inv, &[rule], at(2_000));
        assert_eq!(
            names(&inv, &p),
            [
                "old-snap".to_owned(),
                "old-step".into(),
                "base-x".into(),
                a.hex()[..4].into(),
                Digest::sha256(b"b").hex()[..4].into()
            ]
        );
    }

    #[test]
    fn until_filter_and_buildkit_default_policy() {
        let (inv, ..) = inventory();
        let rule = Rule {
            unused_for: Some(Duration::from_secs(1_750)),
            ..Rule::default()
        };
        // At 2000, only what was unused since before 250.
        assert_eq!(
            names(&inv, &plan(&inv, &[rule], at(2_000))),
            ["old-snap", "old-step"]
        );
        // The default policy at a 200-byte cap: nothing is 48 h or 60 days old here, and the
        // first rule only applies above 512 MB, so only the cap rule removes.
        let policy = GcPolicy { keep_bytes: 200 };
        assert_eq!(
            names(&inv, &plan(&inv, &policy.rules(), at(2_000))),
            ["old-snap"]
        );
        // Two days later the cache mount is old enough for the first rule, but the store is
        // far below 512 MB: it stays.
        let later = at(400 + 49 * 3600);
        let p = plan(&inv, &policy.rules()[..1], later);
        assert!(p.0.is_empty() && p.1.is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10gb").unwrap(), 10 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("ten").is_err() && parse_size("5 parsecs").is_err());
    }
}
