//! What this host can run, and which runtime to use.

use std::path::{Path, PathBuf};
use std::process::Command;

use archway_oci::Platform;

use crate::SandboxError;
use crate::binfmt::{self, Emulation};
use crate::runtime::{OciRuntime, RuntimeKind};

/// How cgroups are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v2 only.
    Unified,
    /// v1 controllers with a v2 hierarchy beside them.
    Hybrid,
    Legacy,
    Unknown,
}

/// Read the cgroup mode from a mountinfo text.
pub fn cgroup_mode_from(mountinfo: &str) -> CgroupMode {
    let mut v1 = false;
    let mut root_v2 = false;
    let mut any_v2 = false;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
            continue;
        };
        if !mount_point.starts_with("/sys/fs/cgroup") {
            continue;
        }
        match *fstype {
            "cgroup2" if *mount_point == "/sys/fs/cgroup" => root_v2 = true,
            "cgroup2" => any_v2 = true,
            "cgroup" => v1 = true,
            _ => {}
        }
    }
    match (root_v2, v1, any_v2) {
        (true, _, _) => CgroupMode::Unified,
        (false, true, true) => CgroupMode::Hybrid,
        (false, true, false) => CgroupMode::Legacy,
        _ => CgroupMode::Unknown,
    }
}

pub fn cgroup_mode() -> CgroupMode {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| cgroup_mode_from(&t))
        .unwrap_or(CgroupMode::Unknown)
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| archway_oci::run_config::DEFAULT_PATH.into());
    // Runtimes live in sbin on Debian, which a non-root PATH may lack.
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in ["/usr/sbin", "/sbin", "/usr/bin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// Pick the runtime: `name` when given; otherwise crun, except where crun cannot run (crun
/// refuses hybrid cgroup hosts even with cgroups disabled), then runc.
pub fn choose_runtime(name: Option<&str>) -> Result<OciRuntime, SandboxError> {
    let kind_of = |p: &Path| {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("runc"))
        {
            RuntimeKind::Runc
        } else {
            RuntimeKind::Crun
        }
    };
    if let Some(name) = name.filter(|n| !n.is_empty() && *n != "auto") {
        let binary = which(name).ok_or_else(|| {
            SandboxError::NoRuntime(format!(
                "`{name}` was not found in PATH (install it: apt-get install crun or runc)"
            ))
        })?;
        return Ok(OciRuntime {
            kind: kind_of(&binary),
            binary,
        });
    }
    let crun = which("crun");
    let runc = which("runc");
    let crun_ok = cgroup_mode() == CgroupMode::Unified;
    match (crun, runc) {
        (Some(c), _) if crun_ok => Ok(OciRuntime {
            kind: RuntimeKind::Crun,
            binary: c,
        }),
        (_, Some(r)) => Ok(OciRuntime {
            kind: RuntimeKind::Runc,
            binary: r,
        }),
        (Some(c), None) => Ok(OciRuntime {
            kind: RuntimeKind::Crun,
            binary: c,
        }),
        (None, None) => Err(SandboxError::NoRuntime(
            "neither crun nor runc is installed: apt-get install crun (or runc)".into(),
        )),
    }
}

/// One line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub host: String,
    pub rootless: bool,
    pub cgroups: CgroupMode,
    pub runtime: Option<String>,
    pub checks: Vec<Check>,
    pub emulation: Vec<(String, Emulation)>,
}

impl Report {
    /// Whether RUN steps for the host's own platform can run.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Look at the host: runtimes, util-linux tools, overlayfs, user namespaces, binfmt.
pub fn report() -> Report {
    let rootless = !rustix::process::geteuid().is_root();
    let cgroups = cgroup_mode();
    let mut checks = Vec::new();
    for (name, pkg) in [("crun", "crun"), ("runc", "runc")] {
        let found = which(name);
        checks.push(Check {
            name: name.into(),
            ok: true,
            detail: match &found {
                Some(p) => format!(
                    "{} ({})",
                    p.display(),
                    version(p).unwrap_or_else(|| "version unknown".into())
                ),
                None => format!("not installed (optional: apt-get install {pkg})"),
            },
            fix: None,
        });
    }
    let chosen = choose_runtime(None);
    checks.push(Check {
        name: "runtime".into(),
        ok: chosen.is_ok(),
        detail: match &chosen {
            Ok(r)
                if r.kind == RuntimeKind::Runc
                    && cgroups != CgroupMode::Unified
                    && which("crun").is_some() =>
            {
                format!(
                    "runc ({}): crun refuses {cgroups:?} cgroup hosts",
                    r.binary.display()
                )
            }
            Ok(r) => format!("{} ({})", r.kind.binary(), r.binary.display()),
            Err(e) => e.to_string(),
        },
        fix: chosen.is_err().then(|| "apt-get install crun runc".into()),
    });
    for tool in ["unshare", "setpriv", "mount"] {
        let found = which(tool);
        checks.push(Check {
            name: tool.into(),
            ok: found.is_some(),
            detail: found
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "missing".into()),
            fix: Some("apt-get install util-linux mount".into()).filter(|_| which(tool).is_none()),
        });
    }
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    checks.push(Check {
        name: "overlayfs".into(),
        ok: overlay,
        detail: if overlay {
            "available".into()
        } else {
            "not in /proc/filesystems".into()
        },
        fix: (!overlay).then(|| "modprobe overlay".into()),
    });
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let userns_works = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    checks.push(Check {
        name: "user namespaces".into(),
        // Only needed rootless; as root report but do not fail.
        ok: userns_works || !rootless,
        detail: format!("max_user_namespaces={max_userns}, unshare --user {}", if userns_works { "works" } else { "fails" }),
        fix: (!userns_works).then(|| "sysctl -w user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 on older Debian kernels; kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)".into()),
    });
    let host = Platform::host();
    let emulation = [
        "linux/amd64",
        "linux/arm64",
        "linux/arm/v7",
        "linux/ppc64le",
        "linux/s390x",
        "linux/riscv64",
    ]
    .iter()
    .filter_map(|p| p.parse::<Platform>().ok())
    .map(|p| {
        (
            p.to_string(),
            binfmt::emulation(Path::new(binfmt::BINFMT_DIR), &host, &p),
        )
    })
    .collect();
    Report {
        host: host.to_string(),
        rootless,
        cgroups,
        runtime: chosen.ok().map(|r| r.kind.binary().to_owned()),
        checks,
        emulation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_modes() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      32 30 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_mode_from(hybrid), CgroupMode::Hybrid);
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_mode_from(unified), CgroupMode::Unified);
        let legacy = "31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup_mode_from(legacy), CgroupMode::Legacy);
        assert_eq!(cgroup_mode_from(""), CgroupMode::Unknown);
    }

    #[test]
    fn named_runtime_must_exist() {
        let e = choose_runtime(Some("no-such-runtime-xyz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-runtime-xyz") && e.contains("apt-get install"),
            "{e}"
        );
    }
}
