//! Can this host run binaries of another architecture? Foreign-architecture steps run through
//! qemu-user registered in binfmt_misc with the `F` (fix-binary) flag, which opens the
//! interpreter at registration so it works inside a container's root filesystem.

use std::path::{Path, PathBuf};

use archway_oci::Platform;

/// The binfmt_misc mount point.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The state of one architecture's emulation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Emulation {
    /// The host's own architecture (or one it runs natively, like 386 on amd64).
    Native,
    /// A qemu handler is registered, enabled and has the fix-binary flag.
    Qemu {
        handler: String,
        interpreter: String,
    },
    /// Nothing can run it; `fix` says what to do.
    Missing { reason: String, fix: String },
}

/// The qemu name of an OCI architecture (`arm64` → `aarch64`).
pub fn qemu_arch(platform: &Platform) -> Option<&'static str> {
    Some(
        match (platform.architecture.as_str(), platform.variant.as_deref()) {
            ("amd64", _) => "x86_64",
            ("386", _) => "i386",
            ("arm64", _) => "aarch64",
            ("arm", _) => "arm",
            ("ppc64le", _) => "ppc64le",
            ("s390x", _) => "s390x",
            ("riscv64", _) => "riscv64",
            ("mips64le", _) => "mips64el",
            ("loong64", _) => "loongarch64",
            _ => return None,
        },
    )
}

/// Whether the host runs `platform` without emulation. (Not 32-bit arm on arm64: many arm64
/// CPUs, Graviton among them, have no AArch32 mode, so it goes through qemu like any other.)
pub fn is_native(host: &Platform, platform: &Platform) -> bool {
    host.architecture == platform.architecture
        || (host.architecture == "amd64" && platform.architecture == "386")
}

/// How `platform` runs on `host`, looking at the binfmt_misc registrations under `dir`.
pub fn emulation(dir: &Path, host: &Platform, platform: &Platform) -> Emulation {
    if is_native(host, platform) {
        return Emulation::Native;
    }
    let Some(arch) = qemu_arch(platform) else {
        return Emulation::Missing {
            reason: format!("no qemu-user emulator is known for {platform}"),
            fix: "build this platform on a runner of that architecture".into(),
        };
    };
    let install = format!(
        "apt-get install qemu-user-static binfmt-support && \
         (mountpoint -q {BINFMT_DIR} || mount -t binfmt_misc binfmt_misc {BINFMT_DIR}) && \
         update-binfmts --enable qemu-{arch}"
    );
    if !dir.join("register").exists() {
        return Emulation::Missing {
            reason: format!("binfmt_misc is not mounted at {}", dir.display()),
            fix: install,
        };
    }
    let mut found_without_f: Option<PathBuf> = None;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name == format!("qemu-{arch}") || name.ends_with(&format!("-{arch}")) || name == arch)
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let enabled = text.lines().next() == Some("enabled");
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let interpreter = text
            .lines()
            .find_map(|l| l.strip_prefix("interpreter "))
            .unwrap_or("")
            .to_owned();
        if !enabled {
            continue;
        }
        if !flags.contains('F') {
            found_without_f = Some(path);
            continue;
        }
        return Emulation::Qemu {
            handler: name,
            interpreter,
        };
    }
    match found_without_f {
        Some(p) => Emulation::Missing {
            reason: format!(
                "{} is registered without the F (fix-binary) flag, so its interpreter cannot be found inside a container",
                p.display()
            ),
            fix: format!(
                "install Debian's qemu-user-static (it registers with F), then: update-binfmts --disable qemu-{arch} && update-binfmts --enable qemu-{arch}"
            ),
        },
        None => Emulation::Missing {
            reason: format!(
                "no enabled binfmt_misc handler for {arch} in {}",
                dir.display()
            ),
            fix: install,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse::<Platform>().unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn native_needs_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            emulation(d.path(), &p("linux/amd64"), &p("linux/amd64")),
            Emulation::Native
        );
        assert_eq!(
            emulation(d.path(), &p("linux/amd64"), &p("linux/386")),
            Emulation::Native
        );
        assert_ne!(
            emulation(d.path(), &p("linux/arm64"), &p("linux/arm/v7")),
            Emulation::Native
        );
    }

    #[test]
    fn registered_handler_with_fix_binary() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "register", "");
        write(
            d.path(),
            "qemu-aarch64",
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n",
        );
        assert_eq!(
            emulation(d.path(), &p("linux/amd64"), &p("linux/arm64")),
            Emulation::Qemu {
                handler: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
            }
        );
    }

    #[test]
    fn missing_disabled_and_unmounted_say_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let Emulation::Missing { reason, fix } =
            emulation(d.path(), &p("linux/amd64"), &p("linux/arm64"))
        else {
            panic!()
        };
        assert!(reason.contains("not mounted"), "{reason}");
        assert!(
            fix.contains("update-binfmts --enable qemu-aarch64"),
            "{fix}"
        );

        write(d.path(), "register", "");
        write(
            d.path(),
            "qemu-aarch64",
            "disabled\ninterpreter /x\nflags: F\n",
        );
        let Emulation::Missing { reason, .. } =
            emulation(d.path(), &p("linux/amd64"), &p("linux/arm64"))
        else {
            panic!()
        };
        assert!(
            reason.contains("no enabled binfmt_misc handler for aarch64"),
            "{reason}"
        );

        write(
            d.path(),
            "qemu-aarch64",
            "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \n",
        );
        let Emulation::Missing { reason, fix } =
            emulation(d.path(), &p("linux/amd64"), &p("linux/arm64"))
        else {
            panic!()
        };
        assert!(reason.contains("without the F"), "{reason}");
        assert!(fix.contains("qemu-user-static"), "{fix}");
    }

    #[test]
    fn unknown_architecture() {
        let d = tempfile::tempdir().unwrap();
        let Emulation::Missing { reason, .. } = emulation(
            d.path(),
            &p("linux/amd64"),
            &Platform::new("linux", "wasm", None),
        ) else {
            panic!()
        };
        assert!(reason.contains("no qemu-user emulator"), "{reason}");
    }
}
