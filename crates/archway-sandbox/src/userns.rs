//! Rootless with subordinate ids, as rootless podman and buildah do it: when `/etc/subuid`
//! and `/etc/subgid` give the user a range and `newuidmap`/`newgidmap` exist, the command runs
//! again inside a user namespace mapping the user to root and the range to ids 1…N. There,
//! layers are unpacked with their owners, `RUN` steps may switch to any of those users, and a
//! file owned by uid 1000 in a base image is still owned by 1000 in the result.
//!
//! Without a range (or the helpers), rootless runs keep the single mapping (the user is root,
//! no other id exists) and the caller is told why.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::SandboxError;

/// Set in the re-executed command: it runs inside the mapped namespace.
pub const MAPPED_ENV: &str = "ARCHWAY_USERNS";
/// `off` keeps rootless runs on the single mapping even when a range exists.
pub const DISABLE_ENV: &str = "ARCHWAY_ROOTLESS_SUBIDS";

/// A user's subordinate id ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubordinateIds {
    pub uid: u32,
    pub gid: u32,
    /// First subordinate uid and how many.
    pub uids: (u32, u32),
    pub gids: (u32, u32),
}

/// The first range of `/etc/subuid`-format `text` that belongs to `name` or `id`.
pub fn parse_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            let start: u32 = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            let mine = Some(owner) == name || owner.parse::<u32>().ok() == Some(id);
            (mine && count > 0).then_some((start, count))
        })
        .next()
}

/// The user's name from `/etc/passwd` (what `/etc/subuid` usually lists).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_owned())
    })
}

impl SubordinateIds {
    /// The calling user's ranges, or why they cannot be used (said to the user as is).
    pub fn for_current_user() -> Result<SubordinateIds, String> {
        Self::lookup(Path::new("/etc"), &|p| which(p).is_some())
    }

    fn lookup(etc: &Path, have: &dyn Fn(&str) -> bool) -> Result<SubordinateIds, String> {
        if std::env::var(DISABLE_ENV).is_ok_and(|v| v == "off" || v == "0") {
            return Err(format!("{DISABLE_ENV}=off"));
        }
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
        let name = user_name(&passwd, uid);
        let read = |f: &str| std::fs::read_to_string(etc.join(f)).unwrap_or_default();
        let who = name.clone().unwrap_or_else(|| uid.to_string());
        let uids = parse_range(&read("subuid"), name.as_deref(), uid)
            .ok_or_else(|| format!("/etc/subuid gives {who} no range"))?;
        let gids = parse_range(&read("subgid"), name.as_deref(), uid)
            .ok_or_else(|| format!("/etc/subgid gives {who} no range"))?;
        for helper in ["newuidmap", "newgidmap"] {
            if !have(helper) {
                return Err(format!(
                    "{helper} is not installed (Debian: apt install uidmap)"
                ));
            }
        }
        Ok(SubordinateIds {
            uid,
            gid,
            uids,
            gids,
        })
    }

    /// Runs `program args` again inside a new user namespace with this mapping (the caller
    /// as root, the range from 1), and returns its exit status. The child dies with us
    /// (`setpriv --pdeathsig KILL`), and sees [`MAPPED_ENV`].
    pub fn rerun(
        &self,
        program: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<ExitStatus, SandboxError> {
        let dir = tempfile::tempdir().map_err(|e| SandboxError::Io {
            context: "a directory for the user namespace's start signal".into(),
            source: e,
        })?;
        // The child waits on this FIFO until its maps are written.
        let fifo = dir.path().join("go");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| SandboxError::Io {
            context: fifo.display().to_string(),
            source: e.into(),
        })?;
        let mut child = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                "--user",
                "--",
                "sh",
                "-c",
            ])
            .arg(r#"read _ < "$0" && exec "$@""#)
            .arg(&fifo)
            .arg(program)
            .args(args)
            .env(MAPPED_ENV, "1")
            .spawn()
            .map_err(|e| SandboxError::Start {
                what: "setpriv/unshare (util-linux)".into(),
                message: e.to_string(),
            })?;
        let pid = child.id().to_string();
        let mapped = wait_for_new_namespace(&pid, &mut child)
            .and_then(|()| self.write_maps(&pid))
            .and_then(|()| signal_start(&fifo, &mut child));
        if let Err(message) = mapped {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Start {
                what: "newuidmap/newgidmap".into(),
                message,
            });
        }
        child.wait().map_err(|e| SandboxError::Io {
            context: "waiting for the command in the user namespace".into(),
            source: e,
        })
    }

    fn write_maps(&self, pid: &str) -> Result<(), String> {
        for (helper, own, (start, count)) in [
            ("newuidmap", self.uid, self.uids),
            ("newgidmap", self.gid, self.gids),
        ] {
            let out = Command::new(helper)
                .args([
                    pid,
                    "0",
                    &own.to_string(),
                    "1",
                    "1",
                    &start.to_string(),
                    &count.to_string(),
                ])
                .output()
                .map_err(|e| format!("{helper}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{helper} {pid} 0 {own} 1 1 {start} {count}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }
}

/// Waits until the child (setpriv, then unshare, same pid) has entered its new user
/// namespace: writing the maps of a process still in ours fails with EPERM, a race the
/// caller would otherwise lose on a busy machine.
fn wait_for_new_namespace(pid: &str, child: &mut std::process::Child) -> Result<(), String> {
    let ours =
        std::fs::read_link("/proc/self/ns/user").map_err(|e| format!("/proc/self/ns/user: {e}"))?;
    let theirs = format!("/proc/{pid}/ns/user");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match std::fs::read_link(&theirs) {
            Ok(ns) if ns != ours => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{theirs}: {e}"));
            }
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("unshare --user exited early ({status})"));
        }
        if std::time::Instant::now() > deadline {
            return Err("unshare --user did not enter a new user namespace within 30 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Tells the waiting child to go: opens the FIFO for writing once the child has it open for
/// reading (without blocking on a child that died first) and writes a line.
fn signal_start(fifo: &Path, child: &mut std::process::Child) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags};
    loop {
        match rustix::fs::open(fifo, OFlags::WRONLY | OFlags::NONBLOCK, Mode::empty()) {
            Ok(fd) => {
                return rustix::io::write(&fd, b"go\n")
                    .map(|_| ())
                    .map_err(|e| format!("starting the command: {e}"));
            }
            // No reader yet: the shell is still starting.
            Err(rustix::io::Errno::NXIO) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the namespace's shell exited early ({status})"));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(format!("{}: {e}", fifo.display())),
        }
    }
}

/// Whether this process runs in the mapped namespace [`SubordinateIds::rerun`] made.
pub fn in_mapped_namespace() -> bool {
    std::env::var_os(MAPPED_ENV).is_some() && in_user_namespace() && maps_many_ids()
}

/// Whether this process's user namespace maps more than one uid (owners can be kept).
pub fn maps_many_ids() -> bool {
    mapped_ids() > 1
}

/// Whether this process is in a user namespace other than the initial one (whose map is
/// `0 0 4294967295`).
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            let fields: Vec<&str> = m.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        })
        .unwrap_or(false)
}

/// How many uids this process's user namespace maps.
fn mapped_ids() -> u64 {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// This namespace's uid map as text (part of what identifies unpacked files' owners).
pub fn uid_map() -> String {
    std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_id() {
        let text = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            parse_range(text, Some("alice"), 1000),
            Some((100_000, 65_536))
        );
        assert_eq!(
            parse_range(text, Some("carol"), 1001),
            Some((200_000, 1_000))
        );
        // An empty range is no range.
        assert_eq!(parse_range(text, Some("bob"), 1002), None);
        assert_eq!(parse_range("garbage\nx:y:z\n", Some("x"), 1), None);
        assert_eq!(
            user_name(
                "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
                65534
            )
            .as_deref(),
            Some("nobody")
        );
    }

    #[test]
    fn lookup_says_why_not() {
        let etc = tempfile::tempdir().unwrap();
        let uid = rustix::process::getuid().as_raw();
        std::fs::write(
            etc.path().join("passwd"),
            format!("me:x:{uid}:{uid}::/:/bin/sh\n"),
        )
        .unwrap();
        let e = SubordinateIds::lookup(etc.path(), &|_| true).unwrap_err();
        assert_eq!(e, "/etc/subuid gives me no range");
        std::fs::write(etc.path().join("subuid"), "me:100000:65536\n").unwrap();
        std::fs::write(etc.path().join("subgid"), format!("{uid}:100000:65536\n")).unwrap();
        let e = SubordinateIds::lookup(etc.path(), &|p| p != "newgidmap").unwrap_err();
        assert!(e.starts_with("newgidmap is not installed"), "{e}");
        let ids = SubordinateIds::lookup(etc.path(), &|_| true).unwrap();
        assert_eq!((ids.uids, ids.gids), ((100_000, 65_536), (100_000, 65_536)));
    }
}
