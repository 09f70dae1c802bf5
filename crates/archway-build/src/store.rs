//! The local store the builder and `archway run` share:
//!
//! ```text
//! layout/        an OCI image layout: every blob (pulled, built, cache entries)
//! keys/<key>     step cache: a step's cache key → its layer (or "no layer")
//! content/<key>  layers by content key: identical COPYs of any build share one layer
//! layers/<diff>  exploded layers (unpacked once, whiteouts kept as files)
//! snapshots/<k>  root filesystems of layer stacks (hard links into layers/, read-only)
//! mounts/<id>    RUN --mount=type=cache directories
//! downloads/<k>  ADD <url> downloads with their validators
//! git/<k>        ADD <repository> checkouts, one per commit
//! leases/<id>    one file per running build (or run), locked while it runs
//! tmp/           scratch directories of running steps
//! ```
//!
//! Everything is written under a temporary name and renamed. Scratch directories (in `tmp/`
//! and the `.tmp-*` ones in `layers/` and `snapshots/`) hold an `flock` while they live; the
//! next [`Store::open`] removes only those it can lock, so a live build in another process (or
//! another PID namespace sharing the cache) keeps its scratch.
//!
//! Housekeeping (`crate::gc`) never removes what a running build uses: a build holds a
//! [`Lease`] from its start, and every use of a kept item "touches" it (sets its time to now)
//! under a shared lock that the pruner takes exclusively, so an item is either touched first
//! (and then newer than every live lease's start, which the pruner never removes) or removed
//! first (and the touch finds it gone, so the build makes it again).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use archway_oci::layer::{
    ExtractOptions, LayerEntry, LayerOptions, extract_layer, layer_from_entries, link_tree,
    merge_exploded,
};
use archway_oci::layout::ImageLayout;
use archway_oci::{Descriptor, Digest, Digester, media_type};
use rustix::fs::{FlockOperation, flock};

use crate::context::FileHashCache;
use crate::error::{BuildError, io};

/// Whose files unpacked layers are: how much of a layer's ownership this process can keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unpacking {
    /// Rootless with one id: every file is the caller's (root in the sandbox); devices are
    /// skipped and setuid bits dropped.
    #[default]
    Caller,
    /// Rootless with subordinate ids (root of a user namespace mapping a range): owners and
    /// setuid bits as in the layer, devices skipped.
    MappedIds,
    /// Root: owners, devices and setuid bits as in the layer.
    Privileged,
}

impl Unpacking {
    fn extract_options(self) -> ExtractOptions {
        ExtractOptions {
            privileged: self == Unpacking::Privileged,
            keep_owners: self == Unpacking::MappedIds,
            keep_whiteouts: true,
        }
    }

    /// What tells trees of this mode apart in the store: the files' owners on disk depend
    /// on the namespace's map, so mapped trees are kept per map (the other modes keep the
    /// names they always had).
    fn key_suffix(self) -> String {
        match self {
            Unpacking::MappedIds => format!(
                "-ids-{}",
                &Digest::sha256(this_uid_map().as_bytes()).hex()[..12]
            ),
            _ => String::new(),
        }
    }
}

/// This process's uid map (`/proc/self/uid_map`).
fn this_uid_map() -> String {
    std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default()
}

/// One layer of an image: its blob and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

/// A cached step result: its layer, or none for a step that changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CacheEntry {
    pub(crate) layer: Option<Descriptor>,
    pub(crate) diff_id: Option<Digest>,
}

impl CacheEntry {
    pub(crate) fn of(layer: Option<&Layer>) -> CacheEntry {
        CacheEntry {
            layer: layer.map(|l| l.descriptor.clone()),
            diff_id: layer.map(|l| l.diff_id.clone()),
        }
    }

    pub(crate) fn layer(&self) -> Option<Layer> {
        match (&self.layer, &self.diff_id) {
            (Some(descriptor), Some(diff_id)) => Some(Layer {
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
            }),
            _ => None,
        }
    }
}

/// The local store: blobs (an OCI layout), step cache, extracted root filesystems.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    layout: ImageLayout,
    /// Per-key locks held right now (a layer being written, a step running, a snapshot being
    /// unpacked), so concurrent platforms do each once. Only live locks stay in the map.
    locks: Mutex<HashMap<Digest, Weak<Mutex<()>>>>,
    /// Digests of context files, kept between builds.
    pub(crate) file_hashes: FileHashCache,
}

/// Serialises scratch creation (shared) against the reaper (exclusive): a directory is never
/// seen between its creation and its lock.
const SCRATCH_LOCK: &str = ".scratch.lock";
/// Serialises touches of kept items (shared) against the pruner's removals (exclusive).
pub(crate) const GC_LOCK: &str = ".gc.lock";

/// Held by a running build (or run) while it uses the store: nothing it touches after the
/// lease started is pruned before the lease ends. Released when dropped (or when the process
/// dies: the lease file's lock goes with it).
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.file.take();
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        for d in [
            "keys",
            "content",
            "layers",
            "snapshots",
            "tmp",
            "mounts",
            "downloads",
            "git",
            "leases",
        ] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io(root.join(d).display().to_string()))?;
        }
        let store = Store {
            root: root.to_owned(),
            layout: ImageLayout::create(root.join("layout"))?,
            locks: Mutex::default(),
            file_hashes: FileHashCache::load(&root.join("file-hashes.jsonl")),
        };
        store.remove_stale()?;
        Ok(store)
    }

    /// `$XDG_CACHE_HOME/archway/build`, else `~/.cache/archway/build`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("archway/build")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> &ImageLayout {
        &self.layout
    }

    /// Saves what was learnt about context files (best effort, between builds).
    pub(crate) fn save_file_hashes(&self) -> std::io::Result<()> {
        self.file_hashes.save()
    }

    fn scratch_lock(&self, op: FlockOperation) -> Result<File, BuildError> {
        self.lock_file(SCRATCH_LOCK, op)
    }

    /// An `flock` on a lock file at the store's root, held until the file is dropped.
    pub(crate) fn lock_file(&self, name: &str, op: FlockOperation) -> Result<File, BuildError> {
        let path = self.root.join(name);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(path.display().to_string()))?;
        flock(&f, op).map_err(|e| io(path.display().to_string())(e.into()))?;
        Ok(f)
    }

    /// A scratch directory under the store, locked while it lives and removed when dropped (or,
    /// if this process dies first, by the next [`Store::open`]).
    pub fn scratch_dir(&self) -> Result<ScratchDir, BuildError> {
        self.scratch_in(&self.root.join("tmp"), "step-")
    }

    fn scratch_in(&self, parent: &Path, prefix: &str) -> Result<ScratchDir, BuildError> {
        let _creating = self.scratch_lock(FlockOperation::LockShared)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(io(format!(
                "creating a scratch directory in {}",
                parent.display()
            )))?
            .keep();
        let lock = File::open(&dir).map_err(io(dir.display().to_string()))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io(dir.display().to_string())(e.into()))?;
        Ok(ScratchDir {
            path: dir,
            lock: Some(lock),
        })
    }

    /// Removes scratch directories nobody holds (left by killed builds).
    fn remove_stale(&self) -> Result<(), BuildError> {
        let _reaping = self.scratch_lock(FlockOperation::LockExclusive)?;
        let candidates = [
            (self.root.join("tmp"), ""),
            (self.root.join("snapshots"), ".tmp-"),
            (self.root.join("layers"), ".tmp-"),
        ];
        for (dir, prefix) in candidates {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(prefix) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(f) = File::open(e.path()) else {
                    continue;
                };
                if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    remove_tree(&e.path());
                }
            }
        }
        Ok(())
    }

    /// A lease for one build or run: what it touches from now on stays until it ends.
    pub fn lease(&self) -> Result<Lease, BuildError> {
        // Created and locked while the pruner is not looking at leases.
        let _shared = self.lock_file(GC_LOCK, FlockOperation::LockShared)?;
        let dir = self.root.join("leases");
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempfile_in(&dir)
            .and_then(|f| f.keep().map_err(|e| e.error))
            .map_err(io(format!("creating a lease in {}", dir.display())))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| io(path.display().to_string())(e.into()))?;
        Ok(Lease {
            path,
            file: Some(file),
        })
    }

    /// Marks a kept item (file or directory) as used now; `false` when it is gone (a pruner
    /// removed it first: make it again).
    pub(crate) fn touch(&self, path: &Path) -> bool {
        let Ok(_shared) = self.lock_file(GC_LOCK, FlockOperation::LockShared) else {
            return path.exists();
        };
        touch_now(path)
    }

    /// [`Store::touch`] for a blob of the layout.
    pub(crate) fn touch_blob(&self, digest: &Digest) -> bool {
        self.touch(&self.layout.blob_path(digest))
    }

    /// Writes bytes as a blob and marks it used (an existing blob is not rewritten).
    pub(crate) fn write_blob(&self, bytes: &[u8]) -> Result<Digest, BuildError> {
        let digest = self.layout.write_blob(bytes)?;
        if !self.touch_blob(&digest) {
            // Pruned between the write and the touch: write it again.
            let path = self.layout.blob_path(&digest);
            archway_oci::atomic_file::write(&path, bytes)
                .map_err(io(path.display().to_string()))?;
        }
        Ok(digest)
    }

    /// Where a download is kept (see `crate::remote`).
    pub(crate) fn download_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("downloads").join(key.hex())
    }

    /// Where a git checkout is kept.
    pub(crate) fn git_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("git").join(key.hex())
    }

    /// Puts a finished scratch directory in place of `dest` (whatever was there goes).
    pub(crate) fn replace_dir(&self, scratch: ScratchDir, dest: &Path) -> Result<(), BuildError> {
        if dest.exists() {
            let trash = self.scratch_dir()?;
            let old = trash.path().join("old");
            // Renamed aside first, so `dest` is never half removed; the trash goes on drop.
            let _ = std::fs::rename(dest, &old);
        }
        scratch.persist(dest)
    }

    /// The lock for doing the work of `key` once (a step, an unpacking, a layer).
    pub(crate) fn key_lock(&self, key: &Digest) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = m.get(key).and_then(Weak::upgrade) {
            return l;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(Mutex::new(()));
        m.insert(key.clone(), Arc::downgrade(&l));
        l
    }

    /// How many per-key locks the store tracks (only those held right now).
    #[cfg(test)]
    pub(crate) fn tracked_locks(&self) -> usize {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, w| w.strong_count() > 0);
        m.len()
    }

    pub(crate) fn cache_get(&self, key: &Digest) -> Option<CacheEntry> {
        let path = self.root.join("keys").join(key.hex());
        let e = read_entry(&path, &self.layout)?;
        // Used now: the entry and its layer stay while this build runs.
        let layer_kept = e.layer.as_ref().is_none_or(|l| self.touch_blob(&l.digest));
        (layer_kept && self.touch(&path)).then_some(e)
    }

    pub(crate) fn cache_put(&self, key: &Digest, e: &CacheEntry) -> Result<(), BuildError> {
        write_entry(&self.root.join("keys").join(key.hex()), e)
    }

    /// Writes a layer from entries into the blob store.
    pub(crate) fn write_layer(
        &self,
        entries: &BTreeMap<String, LayerEntry>,
        mtime: u64,
    ) -> Result<Layer, BuildError> {
        let tmp = self.scratch_dir()?;
        let path = tmp.path().join("layer.tar.gz");
        let f = File::create(&path).map_err(io(path.display().to_string()))?;
        let digests = layer_from_entries(
            entries,
            &LayerOptions {
                mtime,
                keep_owners: true,
            },
            std::io::BufWriter::new(f),
        )?;
        let mut f = File::open(&path).map_err(io(path.display().to_string()))?;
        self.layout.write_blob_from(&mut f, Some(&digests.digest))?;
        Ok(Layer {
            descriptor: Descriptor::new(media_type::OCI_LAYER_GZIP, digests.digest, digests.size),
            diff_id: digests.diff_id,
        })
    }

    /// The layer with content key `content`, made by `make` at most once at a time and kept
    /// (in `content/`) once made, so every platform and every later build shares it. A failure
    /// is not kept: the next caller tries again.
    pub(crate) fn layer_once(
        &self,
        content: &Digest,
        make: impl FnOnce() -> Result<Layer, BuildError>,
    ) -> Result<Layer, BuildError> {
        let path = self.root.join("content").join(content.hex());
        let known = || {
            read_entry(&path, &self.layout)
                .and_then(|e| e.layer())
                .filter(|l| self.touch_blob(&l.descriptor.digest) && self.touch(&path))
        };
        if let Some(l) = known() {
            return Ok(l);
        }
        let lock = self.key_lock(content);
        let _making = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = known() {
            return Ok(l);
        }
        let layer = make()?;
        write_entry(&path, &CacheEntry::of(Some(&layer)))?;
        Ok(layer)
    }

    /// A layer unpacked on its own, with whiteouts kept as files, and its implicit directories.
    fn exploded(
        &self,
        l: &Layer,
        unpacking: Unpacking,
    ) -> Result<(PathBuf, Vec<PathBuf>), BuildError> {
        let base = self.root.join("layers");
        let name = format!("{}{}", l.diff_id.hex(), unpacking.key_suffix());
        let dir = base.join(&name);
        let meta = base.join(format!("{name}.json"));
        let read_meta =
            || -> Option<Vec<PathBuf>> { serde_json::from_slice(&std::fs::read(&meta).ok()?).ok() };
        if dir.is_dir()
            && let Some(implicit) = read_meta()
            && self.touch(&dir)
        {
            return Ok((dir, implicit));
        }
        let lock = self.key_lock(&l.diff_id);
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir()
            && let Some(implicit) = read_meta()
            && self.touch(&dir)
        {
            return Ok((dir, implicit));
        }
        if !self.touch_blob(&l.descriptor.digest) {
            return Err(BuildError::Image(format!(
                "layer {} is no longer in the build store (pruned while this build started); run the build again",
                l.descriptor.digest
            )));
        }
        let tmp = self.scratch_in(&base, &format!(".tmp-{name}-"))?;
        let mut f = self
            .layout
            .open_blob(&l.descriptor.digest, Some(l.descriptor.size))?;
        let report = extract_layer(
            &mut f,
            Path::new(&l.descriptor.digest.to_string()),
            tmp.path(),
            &unpacking.extract_options(),
        )?;
        let json = serde_json::to_vec(&report.implicit_dirs)
            .map_err(|e| BuildError::Image(e.to_string()))?;
        archway_oci::atomic_file::write(&meta, &json).map_err(io(meta.display().to_string()))?;
        // A directory only ever appears by renaming a finished one into place, so one that is
        // there now is complete: another build process (the in-process lock does not reach
        // it) exploded the same layer meanwhile and may be reading it. Keep theirs; never
        // remove a tree someone may be merging from.
        if dir.is_dir() {
            return Ok((dir, report.implicit_dirs));
        }
        match tmp.persist(&dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        Ok((dir, report.implicit_dirs))
    }

    /// The root filesystem of a layer stack, extracted once and kept (read-only by contract).
    pub(crate) fn snapshot(
        &self,
        layers: &[Layer],
        unpacking: Unpacking,
    ) -> Result<PathBuf, BuildError> {
        let mut d = Digester::new(archway_oci::Algorithm::Sha256);
        for l in layers {
            d.update(l.diff_id.to_string().as_bytes());
        }
        let key = d.finish();
        let dir =
            self.root
                .join("snapshots")
                .join(format!("{}{}", key.hex(), unpacking.key_suffix()));
        if dir.is_dir() && self.touch(&dir) {
            return Ok(dir);
        }
        // One thread unpacks; the others wait for it and reuse the result.
        let lock = self.key_lock(&key);
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() && self.touch(&dir) {
            return Ok(dir);
        }
        let tmp = self.scratch_in(
            &self.root.join("snapshots"),
            &format!(".tmp-{}-", key.hex()),
        )?;
        let tree = tmp.path().join("rootfs");
        // Start from the snapshot of all but the last layer when there is one (hard links:
        // cheap, and extraction replaces files instead of writing through the links).
        let rest = match layers.split_last() {
            Some((last, parent)) if !parent.is_empty() => {
                let parent_dir = self.snapshot(parent, unpacking)?;
                link_tree(&parent_dir, &tree).map_err(io(format!(
                    "linking snapshot {} into a new one",
                    parent_dir.display()
                )))?;
                std::slice::from_ref(last)
            }
            _ => {
                std::fs::create_dir(&tree).map_err(io(tree.display().to_string()))?;
                layers
            }
        };
        // Each layer is unpacked once ("exploded", whiteouts kept as files) and hard-linked
        // into every snapshot that needs it: platforms sharing a layer share the unpacking.
        for l in rest {
            let (exploded, implicit) = self.exploded(l, unpacking)?;
            merge_exploded(&exploded, &tree, &implicit)
                .map_err(io(format!("merging layer {}", l.diff_id)))?;
        }
        match std::fs::rename(&tree, &dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io(dir.display().to_string())(e)),
        }
        Ok(dir)
    }

    /// A directory for `RUN --mount=type=cache` with this key, kept between builds.
    pub(crate) fn mount_dir(&self, key: &Digest) -> Result<PathBuf, BuildError> {
        let dir = self.root.join("mounts").join(key.hex());
        let _shared = self.lock_file(GC_LOCK, FlockOperation::LockShared)?;
        std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
        touch_now(&dir);
        Ok(dir)
    }
}

fn read_entry(path: &Path, layout: &ImageLayout) -> Option<CacheEntry> {
    let bytes = std::fs::read(path).ok()?;
    let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
    match &e.layer {
        Some(l) if !layout.has_blob(&l.digest) => None,
        _ => Some(e),
    }
}

fn write_entry(path: &Path, e: &CacheEntry) -> Result<(), BuildError> {
    let bytes = serde_json::to_vec(e).map_err(|e| BuildError::Image(e.to_string()))?;
    archway_oci::atomic_file::write(path, &bytes).map_err(io(path.display().to_string()))
}

/// Sets a path's modification time to now (not following symlinks); `false` if it is gone.
pub(crate) fn touch_now(path: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, utimensat};
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    };
    utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: now,
            last_modification: now,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

pub(crate) fn hash_parts(parts: &[&str]) -> Digest {
    let mut d = Digester::new(archway_oci::Algorithm::Sha256);
    for p in parts {
        d.update(p.as_bytes());
        d.update(b"\0");
    }
    d.finish()
}

/// A scratch directory: locked while it lives, removed (however its contents' permissions were
/// left) when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    /// The `flock` that tells the reaper this directory is in use.
    lock: Option<File>,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the directory to `dest` and keeps it.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), BuildError> {
        std::fs::rename(&self.path, dest).map_err(io(dest.display().to_string()))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            remove_tree(&self.path);
        }
        self.lock.take();
    }
}

/// Remove a tree, first making directories writable if a step left them read-only.
pub(crate) fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a scratch directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_entries(store: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(store.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_reaper_removes_only_scratch_nobody_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A live scratch directory (held by this "build"), one left by a killed process (no
        // lock, whatever its name says about PIDs), and a dead temporary snapshot.
        let live = store.scratch_dir().unwrap();
        std::fs::write(live.path().join("work"), b"in progress").unwrap();
        std::fs::create_dir(dir.path().join("tmp/step-1-dead")).unwrap();
        std::fs::create_dir(dir.path().join("snapshots/.tmp-abc-x")).unwrap();
        std::fs::create_dir(dir.path().join("snapshots/kept")).unwrap();
        // Another process (or PID namespace) opening the same store.
        let _other = Store::open(dir.path()).unwrap();
        let name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(tmp_entries(dir.path()), [name]);
        assert!(live.path().join("work").exists());
        assert!(!dir.path().join("snapshots/.tmp-abc-x").exists());
        assert!(dir.path().join("snapshots/kept").exists());
        drop(live);
        assert!(tmp_entries(dir.path()).is_empty());
    }

    #[test]
    fn key_locks_are_shared_while_held_and_forgotten_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (hash_parts(&["a"]), hash_parts(&["b"]));
        let first = store.key_lock(&a);
        assert!(Arc::ptr_eq(&first, &store.key_lock(&a)));
        let other = store.key_lock(&b);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(store.tracked_locks(), 2);
        drop((first, other));
        // Only held locks are tracked: the map does not grow with every key ever used.
        for i in 0..100 {
            drop(store.key_lock(&hash_parts(&[&i.to_string()])));
        }
        assert_eq!(store.tracked_locks(), 0);
    }

    #[test]
    fn layer_once_keeps_successes_and_retries_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content = hash_parts(&["content"]);
        let entries: BTreeMap<String, LayerEntry> = BTreeMap::from([(
            "f".to_owned(),
            LayerEntry {
                data: archway_oci::layer::EntryData::Bytes(b"x".to_vec()),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: None,
            },
        )]);
        let failed = store.layer_once(&content, || {
            Err(BuildError::Io {
                context: "writing a layer".into(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(matches!(failed, Err(BuildError::Io { .. })));
        // The failure was not kept: the next attempt runs and succeeds.
        let made = store
            .layer_once(&content, || store.write_layer(&entries, 0))
            .unwrap();
        // The success is kept, by this store and by another opened later.
        let again = store.layer_once(&content, || panic!("made twice")).unwrap();
        assert_eq!(made, again);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(
            reopened
                .layer_once(&content, || panic!("made twice"))
                .unwrap(),
            made
        );
    }
}
