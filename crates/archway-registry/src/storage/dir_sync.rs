//! Durable directory entries with shared fsyncs (group commit).
//!
//! Making a new or renamed entry durable takes an fsync of its directory. Concurrent commits
//! mostly touch the same few directories (every blob link of a repository lands in its
//! `_layers/<alg>/`), so instead of one fsync each, a caller whose change an fsync *started
//! after that change* already covered returns without its own: while one fsync runs, the
//! callers queued behind it are all served by the next one. Nothing is acknowledged earlier
//! than before — every caller still returns only once an fsync that began after its change
//! has completed — so an acknowledged entry survives `kill -9` and power loss as before.
//!
//! Directories created on the way are made durable too (their parent is fsynced), which a
//! bare `create_dir_all` does not do.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use archway_oci::atomic_file;

/// One directory's counters.
#[derive(Debug, Default)]
struct DirState {
    /// Changes announced so far; a caller bumps it *after* making its change.
    changes: AtomicU64,
    /// Every change numbered up to this one is durable (an fsync that started after it has
    /// completed). The lock is held across the fsync, which queues the next callers.
    durable: Mutex<u64>,
}

/// The fsync coordinator of one storage root. Blocking: call from blocking threads.
#[derive(Debug, Default)]
pub(crate) struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Arc<DirState>>>,
}

impl DirSyncs {
    /// Returns once the change just made in `dir` (an entry created, renamed in or removed)
    /// is durable: by this caller's fsync of `dir`, or by one another caller began after it.
    pub(crate) fn sync(&self, dir: &Path) -> io::Result<()> {
        let state = self.lock_dirs().entry(dir.to_owned()).or_default().clone();
        let mine = state.changes.fetch_add(1, Ordering::SeqCst) + 1;
        let result = {
            let mut durable = state.durable.lock().unwrap_or_else(|p| p.into_inner());
            if *durable >= mine {
                Ok(())
            } else {
                // Everything announced by now was changed before this fsync starts.
                let covered = state.changes.load(Ordering::SeqCst);
                let r = atomic_file::sync_dir(dir);
                if r.is_ok() {
                    *durable = covered;
                }
                r
            }
        };
        // Forget idle directories so the map stays small. A caller that still holds the
        // removed state finishes with it; a new caller starts a fresh one and syncs itself.
        let mut dirs = self.lock_dirs();
        if Arc::strong_count(&state) <= 2 {
            dirs.remove(dir);
        }
        result
    }

    /// `create_dir_all`, with every directory it creates made durable in its parent.
    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dir_all(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            // Created by a concurrent caller, who makes it durable before relying on it;
            // so do we, below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        match dir.parent() {
            Some(parent) => self.sync(parent),
            None => Ok(()),
        }
    }

    /// Moves a complete, already-synced file into place durably (creating its directory).
    pub(crate) fn commit(&self, tmp: &Path, target: &Path) -> io::Result<()> {
        let parent = target.parent().unwrap_or(Path::new("."));
        self.create_dir_all(parent)?;
        fs::rename(tmp, target)?;
        self.sync(parent)
    }

    /// Replaces `target` with `bytes` atomically and durably: temporary file, fsync, rename,
    /// directory fsync (shared).
    pub(crate) fn write(&self, target: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let parent = target.parent().unwrap_or(Path::new("."));
        self.create_dir_all(parent)?;
        let tmp = atomic_file::temp_path_for(target);
        let result = (|| {
            let mut f = fs::File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, target)?;
            self.sync(parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Creates an empty file durably.
    pub(crate) fn create_empty(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("."));
        self.create_dir_all(parent)?;
        fs::File::create(path)?;
        self.sync(parent)
    }

    fn lock_dirs(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<DirState>>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_changes_are_all_made_durable_and_the_map_empties() {
        let root = tempfile::tempdir().unwrap();
        let syncs = Arc::new(DirSyncs::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (syncs, dir) = (syncs.clone(), root.path().join("a/b"));
                std::thread::spawn(move || {
                    syncs.create_empty(&dir.join(format!("f{i}"))).unwrap();
                    syncs
                        .write(&dir.join(format!("w{i}")), format!("{i}").as_bytes())
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(root.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 32, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with(atomic_file::TEMP_PREFIX))
        );
        assert_eq!(fs::read(root.path().join("a/b/w3")).unwrap(), b"3");
        assert!(syncs.lock_dirs().is_empty());
    }

    #[test]
    fn commit_creates_missing_directories() {
        let root = tempfile::tempdir().unwrap();
        let syncs = DirSyncs::default();
        let tmp = root.path().join("staged");
        fs::write(&tmp, b"x").unwrap();
        let target = root.path().join("blobs/sha256/ab/abcd");
        syncs.commit(&tmp, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"x");
        assert!(!tmp.exists());
        // A sync error surfaces (the directory is gone).
        assert!(syncs.sync(&root.path().join("missing")).is_err());
    }
}
