//! The OCI runtime configuration (`config.json`) for one run.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_readonly_paths,
};

use crate::users::Identity;
use crate::{Network, SandboxError};

/// Docker's default capability set for containers and build steps.
pub const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A mount requested by the caller, in addition to the standard ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraMount {
    Bind {
        host: PathBuf,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
    },
}

impl ExtraMount {
    pub fn target(&self) -> &str {
        match self {
            ExtraMount::Bind { target, .. } | ExtraMount::Tmpfs { target } => target,
        }
    }
}

/// Everything `config.json` is made from.
#[derive(Debug)]
pub struct SpecInput<'a> {
    pub rootfs: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub identity: &'a Identity,
    pub network: Network,
    pub rootless: bool,
    pub hostname: &'a str,
    /// Caller mounts plus the generated `/etc/hosts` (and `/etc/resolv.conf` with a network).
    pub mounts: &'a [ExtraMount],
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| SandboxError::Spec(e.to_string()))
}

/// The standard mounts: /proc, /dev, /dev/pts, /dev/shm, /sys. A fresh read-only sysfs shows the
/// run's own network devices; in a user namespace sharing the host's network the kernel refuses
/// a new sysfs, and a read-only bind of the host's is used instead.
pub fn standard_mounts(rootless: bool, network: Network) -> Result<Vec<Mount>, SandboxError> {
    let mut pts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if !rootless {
        pts.push("gid=5");
    }
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", "devpts", &pts)?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        if rootless && network == Network::Host {
            mount(
                "/sys",
                "none",
                "/sys",
                &["rbind", "nosuid", "noexec", "nodev", "ro"],
            )?
        } else {
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            )?
        },
    ])
}

/// Build the runtime spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SandboxError> {
    let err = |e: oci_spec::OciSpecError| SandboxError::Spec(e.to_string());
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(err)?;
    let mut user = UserBuilder::default()
        .uid(input.identity.uid)
        .gid(input.identity.gid);
    if !input.identity.additional_gids.is_empty() {
        user = user.additional_gids(input.identity.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(err)?)
        .args(input.argv.to_vec())
        .env(input.env.to_vec())
        .cwd(input.cwd)
        // Like Docker's RUN: setuid programs (sudo, su) keep working.
        .no_new_privileges(false)
        .capabilities(capabilities)
        // No rlimits: the process inherits the caller's (and some runtimes reject them here).
        .rlimits(Vec::new())
        .build()
        .map_err(err)?;
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if input.network == Network::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    // No cgroup resources: the sandbox must run where cgroups are not delegated to us.
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(err)?;
    linux.set_resources(None);
    let mut mounts = standard_mounts(input.rootless, input.network)?;
    for m in input.mounts {
        mounts.push(match m {
            ExtraMount::Bind {
                host,
                target,
                readonly,
            } => {
                let source = host.to_str().ok_or_else(|| {
                    SandboxError::Spec(format!("{}: not a UTF-8 path", host.display()))
                })?;
                mount(
                    target,
                    "none",
                    source,
                    &[
                        "rbind",
                        "nosuid",
                        "nodev",
                        if *readonly { "ro" } else { "rw" },
                    ],
                )?
            }
            ExtraMount::Tmpfs { target } => {
                mount(target, "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?
            }
        });
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(false)
                .build()
                .map_err(err)?,
        )
        .hostname(input.hostname)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)?;
    spec.set_annotations(None);
    Ok(spec)
}

/// `/etc/hosts` for the sandbox.
pub fn hosts_file(hostname: &str) -> String {
    hosts_file_with(hostname, &[])
}

/// `/etc/hosts` where `aliases` also name the loopback address (services sharing the host's
/// network, reached by their CI aliases).
pub fn hosts_file_with(hostname: &str, aliases: &[String]) -> String {
    let mut names = format!("localhost {hostname}");
    for a in aliases {
        names.push(' ');
        names.push_str(a);
    }
    format!("127.0.0.1\t{names}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        Identity {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![27],
            home: "/home/app".into(),
        }
    }

    fn json(network: Network, rootless: bool, mounts: &[ExtraMount]) -> serde_json::Value {
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "true".to_owned()];
        let env = vec!["PATH=/bin".to_owned()];
        let id = ident();
        let spec = build(&SpecInput {
            rootfs: Path::new("/work/rootfs"),
            argv: &argv,
            env: &env,
            cwd: "/src",
            identity: &id,
            network,
            rootless,
            hostname: "archway",
            mounts,
        })
        .unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    #[test]
    fn process_user_and_no_limits() {
        let v = json(Network::None, false, &[]);
        assert_eq!(v["process"]["args"][2], "true");
        assert_eq!(v["process"]["cwd"], "/src");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["additionalGids"][0], 27);
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(v["process"]["rlimits"], serde_json::json!([]));
        assert!(v["linux"].get("resources").is_none(), "{}", v["linux"]);
        assert_eq!(v["root"]["path"], "/work/rootfs");
        assert_eq!(v["root"]["readonly"], false);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(
            caps.iter().any(|c| c == "CAP_CHOWN") && !caps.iter().any(|c| c == "CAP_SYS_ADMIN")
        );
    }

    #[test]
    fn network_namespace_only_when_isolated() {
        let types = |v: &serde_json::Value| {
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert!(types(&json(Network::None, false, &[])).contains(&"network".to_owned()));
        let host = types(&json(Network::Host, false, &[]));
        assert!(
            !host.contains(&"network".to_owned())
                && host.contains(&"mount".to_owned())
                && host.contains(&"pid".to_owned())
        );
        // The sandbox never asks the runtime for a user namespace: rootless runs are already in one.
        assert!(!types(&json(Network::None, true, &[])).contains(&"user".to_owned()));
    }

    #[test]
    fn mounts_in_order_with_modes() {
        let v = json(
            Network::Host,
            true,
            &[
                ExtraMount::Bind {
                    host: "/cache/go".into(),
                    target: "/root/.cache".into(),
                    readonly: false,
                },
                ExtraMount::Bind {
                    host: "/secrets/tok".into(),
                    target: "/run/secrets/tok".into(),
                    readonly: true,
                },
                ExtraMount::Tmpfs {
                    target: "/scratch".into(),
                },
            ],
        );
        let mounts = v["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/sys",
                "/root/.cache",
                "/run/secrets/tok",
                "/scratch"
            ]
        );
        assert!(
            mounts[5]["options"]
                .as_array()
                .unwrap()
                .contains(&"rw".into())
        );
        assert!(
            mounts[6]["options"]
                .as_array()
                .unwrap()
                .contains(&"ro".into())
        );
        assert_eq!(mounts[7]["type"], "tmpfs");
        // Rootless: devpts without gid=5 (an unmapped group).
        assert!(
            !mounts[2]["options"]
                .as_array()
                .unwrap()
                .contains(&"gid=5".into())
        );
    }
}
