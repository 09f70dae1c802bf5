//! The runner's configuration file (`archway runner register` writes it, `archway runner
//! run` reads it): the server, the runner's own token, its tags and platforms.
//!
//! The file holds a secret, so it is created with mode 0600 (written to a temporary file of
//! that mode, fsynced, renamed).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use archway_api::PlatformOffer;
use archway_oci::Platform;
use archway_sandbox::Emulation;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "reading the runner configuration {path}: {source}\n  register first: archway runner register --server URL --token TOKEN"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runner configuration {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("writing the runner configuration {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Platform(String),
}

/// What `runner.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerConfig {
    pub server: String,
    pub id: i64,
    pub token: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Platforms asked for at registration (empty: this host's, plus what qemu emulates).
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default = "one")]
    pub concurrency: u32,
    #[serde(default)]
    pub run_untagged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_image: Option<String>,
    /// Per-attempt directories (default: next to the configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Images and sources (default: ~/.cache/archway/runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// `sandbox` (default) or `noop` (for benchmarks).
    #[serde(default = "sandbox")]
    pub executor: String,
    #[serde(default = "ninety")]
    pub drain_deadline_secs: u64,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Registry mirrors for job and service images, `REGISTRY=HOST[/PREFIX]`
    /// (e.g. `docker.io=mirror.internal:5000/hub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_mirrors: Vec<String>,
    /// Serve Kaniko, docker, podman, buildah and manifest-tool job images with Archway's own
    /// commands (the toolbox); `false` pulls and runs the real images.
    #[serde(default = "yes")]
    pub toolbox: bool,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}
fn sandbox() -> String {
    "sandbox".into()
}
fn ninety() -> u64 {
    90
}

impl RunnerConfig {
    /// `$XDG_CONFIG_HOME/archway/runner.json` (or `~/.config/…`).
    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("archway").join("runner.json")
    }

    pub fn load(path: &Path) -> Result<RunnerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = archway_oci::atomic_file::temp_path_for(path);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        archway_oci::atomic_file::commit(&tmp, path).map_err(err)
    }

    pub fn work_dir(&self, config_path: &Path) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| {
            config_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("runner-{}-work", self.id))
        })
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("archway")
                .join("runner")
        })
    }
}

/// The platforms this host offers: `requested` ones (each native or emulated by qemu-user,
/// refused with the fix when neither), or with none requested, the host's own and those qemu
/// can emulate among linux/amd64 and linux/arm64.
pub fn detect_platforms(
    requested: &[String],
    binfmt_dir: &Path,
) -> Result<Vec<PlatformOffer>, ConfigError> {
    let host = Platform::host();
    let wanted: Vec<Platform> = if requested.is_empty() {
        let mut v = vec![host.clone()];
        for p in ["linux/amd64", "linux/arm64"] {
            let p: Platform = p
                .parse()
                .map_err(|e| ConfigError::Platform(format!("{e}")))?;
            if !p.matches(&host) {
                v.push(p);
            }
        }
        v
    } else {
        requested
            .iter()
            .map(|p| {
                p.parse::<Platform>()
                    .map_err(|e| ConfigError::Platform(format!("--platform {p}: {e}")))
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for p in wanted {
        match archway_sandbox::binfmt::emulation(binfmt_dir, &host, &p) {
            Emulation::Native => out.push(PlatformOffer {
                platform: p.to_string(),
                emulated: false,
            }),
            Emulation::Qemu { .. } => out.push(PlatformOffer {
                platform: p.to_string(),
                emulated: true,
            }),
            Emulation::Missing { reason, fix } => {
                if !requested.is_empty() {
                    return Err(ConfigError::Platform(format!(
                        "this host cannot run {p}: {reason}\n  to enable it: {fix}"
                    )));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/runner.json");
        let c = RunnerConfig {
            server: "http://127.0.0.1:8700".into(),
            id: 3,
            token: "awn_x".into(),
            name: "r".into(),
            tags: vec!["docker".into()],
            platforms: vec![],
            concurrency: 2,
            run_untagged: true,
            default_image: None,
            work_dir: None,
            cache_dir: None,
            executor: "sandbox".into(),
            drain_deadline_secs: 90,
            insecure_registries: vec![],
            registry_mirrors: vec![],
            toolbox: true,
        };
        c.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(RunnerConfig::load(&path).unwrap(), c);
        c.save(&path).unwrap(); // overwrite works
        let e = RunnerConfig::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().contains("archway runner register"), "{e}");
    }

    #[test]
    fn the_host_platform_is_native_and_unknown_emulation_is_refused_with_the_fix() {
        let empty = tempfile::tempdir().unwrap();
        let offers = detect_platforms(&[], empty.path()).unwrap();
        assert_eq!(offers.len(), 1, "{offers:?}");
        assert!(!offers[0].emulated);
        let foreign = if Platform::host().architecture == "amd64" {
            "linux/arm64"
        } else {
            "linux/amd64"
        };
        let e = detect_platforms(&[foreign.into()], empty.path()).unwrap_err();
        assert!(e.to_string().contains("to enable it"), "{e}");
    }
}
