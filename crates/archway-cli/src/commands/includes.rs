//! The files a pipeline includes, for the pure front end: the repository's files, GitLab CI
//! templates from a local directory (`--templates`), and remote files fetched over HTTP(S)
//! into a cache directory (`--include-cache`; `--offline` reads only the cache).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use archway_pipeline::{FileSource, RemoteError};
use clap::Args;

/// The largest remote file accepted (GitLab's own limit on a configuration is 1 MiB per file
/// by default; this leaves room for big templates).
const MAX_REMOTE_BYTES: u64 = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where included files come from besides the repository.
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArgs {
    /// Directory of GitLab CI templates for `include: template:` (a checkout of
    /// lib/gitlab/ci/templates from GitLab's repository, or your own).
    #[arg(long, value_name = "DIR", env = "ARCHWAY_TEMPLATES")]
    templates: Option<PathBuf>,
    /// Cache for `include: remote:` files (default: ~/.cache/archway/includes).
    #[arg(long, value_name = "DIR", env = "ARCHWAY_INCLUDE_CACHE")]
    include_cache: Option<PathBuf>,
    /// Fetch nothing: remote includes come from the cache only.
    #[arg(long)]
    offline: bool,
}

impl SourceArgs {
    /// The files of the repository at `root`, with templates and remote files as configured.
    pub fn files(&self, root: PathBuf) -> PipelineFiles {
        let cache = self.include_cache.clone().unwrap_or_else(|| {
            archway_build::store::Store::default_dir().with_file_name("includes")
        });
        PipelineFiles {
            root,
            templates: self.templates.clone(),
            remote: RemoteCache {
                dir: cache,
                offline: self.offline,
                fetched: RefCell::new(HashMap::new()),
            },
        }
    }
}

/// `path` joined under `root` if it stays there (no `..`, no absolute path).
fn under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(root.join(rel))
}

/// Everything a pipeline file may include, read on demand.
#[derive(Debug)]
pub struct PipelineFiles {
    root: PathBuf,
    templates: Option<PathBuf>,
    remote: RemoteCache,
}

impl FileSource for PipelineFiles {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(under(&self.root, path)?).ok()
    }

    fn remote(&self, url: &str) -> Result<String, RemoteError> {
        self.remote.get(url)
    }

    fn template(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(under(self.templates.as_ref()?, name)?).ok()
    }

    fn has_templates(&self) -> bool {
        self.templates.is_some()
    }
}

/// Remote includes: fetched once per run, kept in `dir` by the hash of their URL.
#[derive(Debug)]
struct RemoteCache {
    dir: PathBuf,
    offline: bool,
    fetched: RefCell<HashMap<String, Result<String, RemoteError>>>,
}

impl RemoteCache {
    fn path(&self, url: &str) -> PathBuf {
        let digest = archway_oci::Digest::sha256(url.as_bytes());
        self.dir.join(format!("{}.yml", digest.hex()))
    }

    fn get(&self, url: &str) -> Result<String, RemoteError> {
        if let Some(r) = self.fetched.borrow().get(url) {
            return r.clone();
        }
        let path = self.path(url);
        let result = if self.offline {
            std::fs::read_to_string(&path).map_err(|_| RemoteError::NotCached)
        } else {
            let r = fetch(url);
            if let Ok(text) = &r {
                let stored = std::fs::create_dir_all(&self.dir)
                    .and_then(|()| archway_oci::atomic_file::write(&path, text.as_bytes()));
                if let Err(e) = stored {
                    tracing::warn!(
                        "could not keep {url} in the include cache {}: {e}",
                        self.dir.display()
                    );
                }
            }
            r
        };
        self.fetched
            .borrow_mut()
            .insert(url.to_owned(), result.clone());
        result
    }
}

/// One GET, on a thread of its own (the blocking client must not run on an async runtime's
/// thread, and `archway pipeline run` plans inside one).
fn fetch(url: &str) -> Result<String, RemoteError> {
    std::thread::scope(|s| {
        s.spawn(|| fetch_blocking(url))
            .join()
            .unwrap_or_else(|_| Err(RemoteError::Failed("the fetch panicked".into())))
    })
}

fn fetch_blocking(url: &str) -> Result<String, RemoteError> {
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            return RemoteError::Timeout;
        }
        // The whole chain: "error sending request …: connection refused".
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        RemoteError::Failed(text)
    };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(failed)?;
    let response = client.get(url).send().map_err(failed)?;
    let status = response.status();
    if status.as_u16() >= 400 {
        return Err(RemoteError::Status(status.as_u16()));
    }
    let mut body = Vec::new();
    response
        .take(MAX_REMOTE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| RemoteError::Failed(format!("reading the response failed: {e}")))?;
    if body.len() as u64 > MAX_REMOTE_BYTES {
        return Err(RemoteError::Failed(format!(
            "`{url}` is larger than {} MiB",
            MAX_REMOTE_BYTES / (1024 * 1024)
        )));
    }
    String::from_utf8(body).map_err(|_| RemoteError::Failed(format!("`{url}` is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_their_root() {
        let root = Path::new("/repo");
        assert_eq!(
            under(root, "ci/a.yml"),
            Some(PathBuf::from("/repo/ci/a.yml"))
        );
        assert_eq!(
            under(root, "/ci/a.yml"),
            Some(PathBuf::from("/repo/ci/a.yml"))
        );
        assert_eq!(under(root, "../etc/passwd"), None);
        assert_eq!(under(root, "ci/../../x.yml"), None);
    }
}
