//! Durable, all-or-nothing file writes: write a temporary file beside the target, fsync it,
//! rename it over the target, fsync the directory. A reader (or a process restarted after
//! `kill -9`) sees either the old content or the new, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Prefix of temporary files; names with it are never valid tags, digests or upload ids, so
/// listings skip them and crash leftovers can be swept.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A temporary path beside `target`, unique within this process and across processes.
pub fn temp_path_for(target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()))
}

/// Replaces `target` with `bytes` atomically and durably, creating parent directories.
pub fn write(target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_impl(target, bytes, None)
}

/// [`write`], the file created with permissions `mode` from the start (e.g. `0o600` for
/// credentials: never readable by others, not even for an instant).
pub fn write_with_mode(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_impl(target, bytes, Some(mode))
}

fn write_impl(target: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = temp_path_for(target);
    let result = (|| {
        let mut options = File::options();
        options.write(true).create_new(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut f = options.open(&tmp)?;
        if let Some(mode) = mode {
            // The umask may have taken bits away; the caller asked for exactly these.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, target)?;
        sync_dir(parent)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves a complete, already-synced file into place and makes the rename durable.
pub fn commit(tmp: &Path, target: &Path) -> io::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    fs::rename(tmp, target)?;
    sync_dir(parent)
}

/// fsyncs a directory so that entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/tag");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["tag"]);
    }

    #[test]
    fn files_with_a_mode_have_it_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret.json");
        write(&target, b"old").unwrap();
        write_with_mode(&target, b"{}", 0o600).unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&target).unwrap(), b"{}");
    }
}
