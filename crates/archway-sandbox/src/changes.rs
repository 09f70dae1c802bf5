//! What a run changed: the overlay upper directory turned into layer entries.
//!
//! Overlayfs records a deletion as a 0/0 character device (→ `.wh.NAME`) and a directory that
//! replaced a lower one as an opaque directory (`trusted.overlay.opaque=y`, or `user.` when mounted
//! with `userxattr` in a user namespace; → `DIR/.wh..wh..opq`). Empty files and directories the
//! runtime created only to mount something on are not changes and are pruned first.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use archway_oci::layer::{EntryData, LayerEntry};

/// How host owners map back to image owners.
#[derive(Clone, Copy, Debug)]
pub enum OwnerMap {
    /// Owners are kept (root mode).
    Identity,
    /// Rootless: the invoking user (and group) were root inside the container.
    Rootless { uid: u32, gid: u32 },
}

impl OwnerMap {
    fn map(&self, uid: u32, gid: u32) -> (u64, u64) {
        match *self {
            OwnerMap::Identity => (uid.into(), gid.into()),
            OwnerMap::Rootless { uid: u, gid: g } => (
                if uid == u { 0 } else { uid.into() },
                if gid == g { 0 } else { gid.into() },
            ),
        }
    }
}

/// Remove the mount points the runtime had to create: for each target that did not exist in
/// `lower`, drop it from `upper` when it is an empty file or empty directory, then its parents
/// that are likewise new and empty.
pub fn prune_mount_points(lower: &Path, upper: &Path, targets: &[String]) -> io::Result<()> {
    for target in targets {
        let mut rel = PathBuf::from(target.trim_start_matches('/'));
        let mut is_target = true;
        while !rel.as_os_str().is_empty() {
            let p = upper.join(&rel);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                break;
            };
            let removable = match lower_meta(lower, &rel) {
                // A mount point the runtime had to create, or a parent it created for one.
                None => {
                    if meta.is_dir() {
                        std::fs::read_dir(&p)?.next().is_none()
                    } else {
                        meta.is_file() && meta.len() == 0
                    }
                }
                // An existing target is the image's own file: keep it.
                Some(_) if is_target => false,
                // A parent copied up only to hold the mount point, unchanged otherwise.
                Some(l) => {
                    meta.is_dir()
                        && l.is_dir()
                        && (meta.mode(), meta.uid(), meta.gid()) == (l.mode(), l.uid(), l.gid())
                        && !is_opaque(&p)
                        && std::fs::read_dir(&p)?.next().is_none()
                }
            };
            if !removable {
                break;
            }
            if meta.is_dir() {
                std::fs::remove_dir(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
            is_target = false;
            rel.pop();
        }
    }
    Ok(())
}

fn lower_meta(lower: &Path, rel: &Path) -> Option<std::fs::Metadata> {
    archway_oci::layer::resolve_in_root(lower, rel, false)
        .ok()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
}

/// Walk `upper` and describe every change as a layer entry keyed by its path (no leading `/`).
pub fn collect(upper: &Path, owners: OwnerMap) -> io::Result<BTreeMap<String, LayerEntry>> {
    let mut out = BTreeMap::new();
    walk(upper, "", owners, &mut out)?;
    Ok(out)
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|name| {
        let mut buf = [0u8; 4];
        matches!(rustix::fs::lgetxattr(path, *name, &mut buf[..]), Ok(n) if n >= 1 && buf[0] == b'y')
    })
}

fn walk(
    dir: &Path,
    prefix: &str,
    owners: OwnerMap,
    out: &mut BTreeMap<String, LayerEntry>,
) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a file name that is not UTF-8",
                    dir.join(&name).display()
                ),
            ));
        };
        let path = dir.join(&name);
        let rel = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(&path)?;
        let (uid, gid) = owners.map(meta.uid(), meta.gid());
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let wh = match rel.rsplit_once('/') {
                Some((parent, base)) => format!("{parent}/.wh.{base}"),
                None => format!(".wh.{rel}"),
            };
            out.insert(
                wh,
                LayerEntry {
                    data: EntryData::Bytes(Vec::new()),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: None,
                },
            );
        } else if ft.is_dir() {
            out.insert(
                rel.clone(),
                LayerEntry {
                    data: EntryData::Dir,
                    mode,
                    uid,
                    gid,
                    mtime: None,
                },
            );
            if is_opaque(&path) {
                out.insert(
                    format!("{rel}/.wh..wh..opq"),
                    LayerEntry {
                        data: EntryData::Bytes(Vec::new()),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime: None,
                    },
                );
            }
            walk(&path, &format!("{rel}/"), owners, out)?;
        } else if ft.is_symlink() {
            out.insert(
                rel,
                LayerEntry {
                    data: EntryData::Symlink(std::fs::read_link(&path)?),
                    mode: 0o777,
                    uid,
                    gid,
                    mtime: None,
                },
            );
        } else if ft.is_file() {
            out.insert(
                rel,
                LayerEntry {
                    data: EntryData::File(path),
                    mode,
                    uid,
                    gid,
                    mtime: None,
                },
            );
        } else {
            // Sockets, FIFOs and device nodes made by a step are not kept in a layer.
            tracing::warn!(path = %rel, "skipping a special file created by the step");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_dirs_symlinks_and_owners() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path();
        std::fs::create_dir_all(up.join("etc/app")).unwrap();
        std::fs::write(up.join("etc/app/conf"), "x=1").unwrap();
        std::os::unix::fs::symlink("conf", up.join("etc/app/link")).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let my_gid = rustix::process::getegid().as_raw();
        let got = collect(
            up,
            OwnerMap::Rootless {
                uid: me,
                gid: my_gid,
            },
        )
        .unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["etc", "etc/app", "etc/app/conf", "etc/app/link"]
        );
        assert_eq!((got["etc/app/conf"].uid, got["etc/app/conf"].gid), (0, 0));
        assert!(
            matches!(&got["etc/app/link"].data, EntryData::Symlink(t) if t == Path::new("conf"))
        );
        assert!(
            matches!(&got["etc/app/conf"].data, EntryData::File(p) if p.ends_with("etc/app/conf"))
        );
    }

    #[test]
    fn prunes_only_new_empty_mount_points() {
        let d = tempfile::tempdir().unwrap();
        let (lower, upper) = (d.path().join("lower"), d.path().join("upper"));
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(lower.join("proc")).unwrap();
        // The runtime created /etc/resolv.conf (empty), /run/secrets/token and /cache for mounts.
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/resolv.conf"), "").unwrap();
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("run/secrets/token"), "").unwrap();
        std::fs::create_dir_all(upper.join("cache")).unwrap();
        // The step wrote a real file next to them and an empty file that was not a mount point.
        std::fs::write(upper.join("etc/motd"), "hi").unwrap();
        std::fs::write(upper.join("empty"), "").unwrap();
        // A target that exists in lower is never removed.
        std::fs::create_dir_all(upper.join("proc")).unwrap();
        prune_mount_points(
            &lower,
            &upper,
            &[
                "/etc/resolv.conf".into(),
                "/run/secrets/token".into(),
                "/cache".into(),
                "/proc".into(),
            ],
        )
        .unwrap();
        let got = collect(&upper, OwnerMap::Identity).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["empty", "etc", "etc/motd", "proc"]
        );
    }
}
