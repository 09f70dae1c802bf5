//! Job caches, kept by each runner as gitlab-runner's local cache is: one archive per
//! project and key under the runner's cache directory, restored into the project directory
//! before the script (`policy: pull` or `pull-push`) and saved after it (`push` or
//! `pull-push`, when `cache:when` matches the job's result). An archive is replaced
//! atomically, so a job never restores a half-written cache.

use std::path::{Path, PathBuf};

use archway_api::CacheDef;

/// Why a cache key was refused (GitLab's rules: no `/`, not `.` or `..`, not empty).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cache key `{key}`: {why}")]
pub struct KeyError {
    pub key: String,
    pub why: &'static str,
}

/// The key to store under: the key as written, or for `files:A,B` (with an optional
/// `PREFIX-`) a digest of those files' contents (GitLab uses the last commit that changed
/// them; the contents give the same answer without a git history).
pub fn resolve_key(def: &CacheDef, project: &Path) -> Result<String, KeyError> {
    let err = |why| KeyError {
        key: def.key.clone(),
        why,
    };
    let (prefix, files) = match def.key.split_once("files:") {
        Some((p, f)) if p.is_empty() || p.ends_with('-') => (p.trim_end_matches('-'), Some(f)),
        _ => ("", None),
    };
    let key = match files {
        Some(files) => {
            let mut h = archway_oci::digest::Digester::new(archway_oci::digest::Algorithm::Sha256);
            for f in files.split(',').filter(|f| !f.is_empty()) {
                let rel = f.trim_start_matches("./");
                if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                    return Err(err("a key file must be inside the project directory"));
                }
                h.update(rel.as_bytes());
                h.update(&[0]);
                if let Ok(data) = std::fs::read(project.join(rel)) {
                    h.update(&data);
                }
                h.update(&[0]);
            }
            let hex = h.finish().hex().chars().take(16).collect::<String>();
            if prefix.is_empty() {
                hex
            } else {
                format!("{prefix}-{hex}")
            }
        }
        None => def.key.clone(),
    };
    if key.is_empty() {
        return Err(err("the key is empty"));
    }
    if key == "." || key == ".." {
        return Err(err("the key cannot be `.` or `..`"));
    }
    if key.contains('/') || key.contains('\\') {
        return Err(err("the key cannot contain `/` (or its URL-encoded form)"));
    }
    if key.to_ascii_lowercase().contains("%2f") || key.to_ascii_lowercase().contains("%2e%2e") {
        return Err(err("the key cannot contain `/` (or its URL-encoded form)"));
    }
    Ok(key)
}

/// The archive to restore for `def` (key resolved as `key`): its own if it exists, else the
/// first of its `fallback_keys`, then `CACHE_FALLBACK_KEY`, that has one (as gitlab-runner
/// tries them). Returns the key restored from and its archive.
pub fn restore_from(
    root: &Path,
    project: &str,
    def: &CacheDef,
    key: &str,
    global_fallback: Option<&str>,
    dir: &Path,
) -> Option<(String, PathBuf)> {
    let own = archive_path(root, project, key);
    if own.is_file() {
        return Some((key.to_owned(), own));
    }
    def.fallback_keys
        .iter()
        .map(String::as_str)
        .chain(global_fallback)
        .filter_map(|k| {
            let fb = CacheDef {
                key: k.to_owned(),
                ..def.clone()
            };
            resolve_key(&fb, dir).ok()
        })
        .map(|k| {
            let p = archive_path(root, project, &k);
            (k, p)
        })
        .find(|(_, p)| p.is_file())
}

/// Where the archive of `key` for `project` lives under `root`.
pub fn archive_path(root: &Path, project: &str, key: &str) -> PathBuf {
    let project: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join(project).join(format!("{key}.tar.gz"))
}

/// Whether a cache is saved after a job that ended `succeeded`.
pub fn saves(def: &CacheDef, succeeded: bool) -> bool {
    if def.policy == "pull" {
        return false;
    }
    match def.when.as_str() {
        "always" => true,
        "on_failure" => !succeeded,
        _ => succeeded,
    }
}

/// Whether a cache is restored before the job.
pub fn restores(def: &CacheDef) -> bool {
    def.policy != "push"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str) -> CacheDef {
        CacheDef {
            key: key.into(),
            paths: vec![],
            policy: "pull-push".into(),
            when: "on_success".into(),
            fallback_keys: vec![],
        }
    }

    #[test]
    fn keys_follow_gitlabs_rules() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(resolve_key(&c("deps-main"), d.path()).unwrap(), "deps-main");
        for bad in ["..", ".", "a/b", "", "x%2Fy", "%2e%2e"] {
            assert!(resolve_key(&c(bad), d.path()).is_err(), "{bad}");
        }
        let e = resolve_key(&c("a/../../b"), d.path()).unwrap_err();
        assert!(e.to_string().starts_with("cache key `a/../../b`: "), "{e}");
    }

    #[test]
    fn file_keys_change_with_the_files_contents() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Cargo.lock"), "v1").unwrap();
        let k1 = resolve_key(&c("files:Cargo.lock"), d.path()).unwrap();
        let p1 = resolve_key(&c("rust-files:Cargo.lock"), d.path()).unwrap();
        assert_eq!(k1.len(), 16);
        assert_eq!(p1, format!("rust-{k1}"));
        std::fs::write(d.path().join("Cargo.lock"), "v2").unwrap();
        assert_ne!(resolve_key(&c("files:Cargo.lock"), d.path()).unwrap(), k1);
        assert!(resolve_key(&c("files:../etc/passwd"), d.path()).is_err());
    }

    #[test]
    fn policy_and_when_decide_restore_and_save() {
        let mut d = c("k");
        assert!(restores(&d) && saves(&d, true) && !saves(&d, false));
        d.policy = "pull".into();
        assert!(restores(&d) && !saves(&d, true));
        d.policy = "push".into();
        assert!(!restores(&d) && saves(&d, true));
        d.when = "always".into();
        assert!(saves(&d, false));
        d.when = "on_failure".into();
        assert!(saves(&d, false) && !saves(&d, true));
        assert_eq!(
            archive_path(Path::new("/c"), "team/app", "k"),
            Path::new("/c/team_app/k.tar.gz")
        );
    }
}
