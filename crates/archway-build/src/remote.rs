//! Fetching `ADD` sources that are not in the context, into the store, as BuildKit's HTTP and
//! git sources do:
//!
//! * a URL is downloaded once and kept under `downloads/` with its validators (`ETag`,
//!   `Last-Modified`): later builds ask with `If-None-Match`/`If-Modified-Since` and reuse it
//!   on `304`; with `--checksum` a kept copy with that digest is used without asking at all,
//!   and a download with another digest fails. `Last-Modified` becomes the file's time.
//!   Proxies come from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), as a
//!   runner's job sets them.
//! * a repository is resolved to a commit with `git ls-remote`, fetched and checked out once
//!   per commit under `git/` (the `.git` directory kept only with `--keep-git-dir`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use archway_oci::{Algorithm, Digest, Digester};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::error::{BuildError, io};
use crate::source::GitRef;
use crate::store::{Store, hash_parts};

/// A downloaded file in the store.
#[derive(Clone, Debug)]
pub(crate) struct Downloaded {
    pub(crate) path: PathBuf,
    /// `Last-Modified`, in seconds since the epoch.
    pub(crate) modified: Option<u64>,
}

/// What is kept beside a download.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DownloadMeta {
    url: String,
    digest: Digest,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Downloads URLs and clones repositories for `ADD`.
#[derive(Clone, Debug)]
pub(crate) struct Fetcher {
    http: reqwest::Client,
}

fn fail(what: &str, message: impl Into<String>) -> BuildError {
    BuildError::Fetch {
        source_name: what.to_owned(),
        message: message.into(),
    }
}

impl Fetcher {
    pub(crate) fn new() -> Result<Fetcher, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // No data for this long: the server is gone (a long download is fine).
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail("the HTTP client", e.to_string()))?;
        Ok(Fetcher { http })
    }

    /// The file at `url`, downloaded into the store or reused from it.
    pub(crate) fn download(
        &self,
        store: &Store,
        rt: &Handle,
        url: &str,
        checksum: Option<&Digest>,
    ) -> Result<Downloaded, BuildError> {
        let key = hash_parts(&["download", url]);
        // One download of a URL at a time in this process (platforms build in parallel).
        let lock = store.key_lock(&key);
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = store.download_dir(&key);
        let meta_path = dir.join("meta.json");
        let data = dir.join("data");
        let kept: Option<DownloadMeta> = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &DownloadMeta| m.url == url && data.is_file());
        let downloaded = |m: &DownloadMeta| Downloaded {
            path: data.clone(),
            modified: m.last_modified.as_deref().and_then(parse_http_date),
        };
        if let (Some(m), Some(want)) = (&kept, checksum)
            && &m.digest == want
        {
            store.touch(&dir);
            return Ok(downloaded(m)); // the checksum names the content: no need to ask
        }
        let (status, meta) = rt.block_on(self.fetch(store, url, kept.as_ref(), &dir))?;
        let meta = match (status, kept) {
            (Fetched::NotModified, Some(m)) => {
                store.touch(&dir);
                m
            }
            (Fetched::NotModified, None) => {
                return Err(fail(
                    url,
                    "the server answered 304 to a request without validators",
                ));
            }
            (Fetched::New, _) => meta.ok_or_else(|| fail(url, "no download"))?,
        };
        if let Some(want) = checksum
            && &meta.digest != want
        {
            return Err(fail(
                url,
                format!(
                    "the content's digest is {}, but --checksum says {want}",
                    meta.digest
                ),
            ));
        }
        Ok(downloaded(&meta))
    }

    async fn fetch(
        &self,
        store: &Store,
        url: &str,
        kept: Option<&DownloadMeta>,
        dir: &Path,
    ) -> Result<(Fetched, Option<DownloadMeta>), BuildError> {
        let mut req = self.http.get(url);
        if let Some(m) = kept {
            if let Some(etag) = &m.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &m.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let mut resp = req.send().await.map_err(|e| fail(url, error_chain(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok((Fetched::NotModified, None));
        }
        if !resp.status().is_success() {
            return Err(fail(url, format!("the server answered {}", resp.status())));
        }
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        // Into a scratch directory, then renamed over the kept copy in one step.
        let scratch = store.scratch_dir()?;
        let tmp_data = scratch.path().join("data");
        let mut file =
            std::fs::File::create(&tmp_data).map_err(io(tmp_data.display().to_string()))?;
        let mut digester = Digester::new(Algorithm::Sha256);
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(url, error_chain(&e)))? {
            digester.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk)
                .map_err(io(tmp_data.display().to_string()))?;
        }
        file.sync_all()
            .map_err(io(tmp_data.display().to_string()))?;
        drop(file);
        let meta = DownloadMeta {
            url: url.to_owned(),
            digest: digester.finish(),
            etag,
            last_modified,
        };
        let json = serde_json::to_vec(&meta).map_err(|e| fail(url, e.to_string()))?;
        std::fs::write(scratch.path().join("meta.json"), json)
            .map_err(io(scratch.path().display().to_string()))?;
        store.replace_dir(scratch, dir)?;
        Ok((Fetched::New, Some(meta)))
    }

    /// A checkout of `git` (at the commit its reference resolves to) in the store.
    pub(crate) fn checkout(
        &self,
        store: &Store,
        git: &GitRef,
        keep_git_dir: bool,
    ) -> Result<PathBuf, BuildError> {
        let what = git.remote.as_str();
        let commit = resolve_commit(git)?;
        if let Some(want) = &git.checksum
            && !commit.starts_with(want.as_str())
        {
            return Err(fail(
                what,
                format!(
                    "{} resolves to commit {commit}, but the checksum says {want}",
                    git.reference.as_deref().unwrap_or("HEAD")
                ),
            ));
        }
        let submodules = git.submodules.unwrap_or(true);
        let key = hash_parts(&[
            "git",
            &git.remote,
            &commit,
            &keep_git_dir.to_string(),
            &submodules.to_string(),
        ]);
        let lock = store.key_lock(&key);
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = store.git_dir(&key);
        let tree = dir.join("tree");
        if tree.is_dir() {
            store.touch(&dir);
            return Ok(tree);
        }
        let scratch = store.scratch_dir()?;
        let work = scratch.path().join("tree");
        std::fs::create_dir(&work).map_err(io(work.display().to_string()))?;
        git_cmd(&work, &["init", "-q"], what)?;
        git_cmd(&work, &["remote", "add", "origin", &git.remote], what)?;
        // A shallow fetch of the one commit; servers that refuse it (dumb HTTP, old servers)
        // get a full fetch of the reference instead.
        let shallow = git_cmd(
            &work,
            &["fetch", "-q", "--depth=1", "--no-tags", "origin", &commit],
            what,
        );
        if shallow.is_err() {
            let refspec = git.reference.as_deref().unwrap_or("HEAD");
            git_cmd(&work, &["fetch", "-q", "--tags", "origin", refspec], what)?;
        }
        git_cmd(
            &work,
            &["-c", "advice.detachedHead=false", "checkout", "-q", &commit],
            what,
        )?;
        if submodules && work.join(".gitmodules").exists() {
            git_cmd(
                &work,
                &[
                    "submodule",
                    "update",
                    "-q",
                    "--init",
                    "--recursive",
                    "--depth=1",
                ],
                what,
            )?;
        }
        if !keep_git_dir {
            let dot_git = work.join(".git");
            std::fs::remove_dir_all(&dot_git).map_err(io(dot_git.display().to_string()))?;
        }
        store.replace_dir(scratch, &dir)?;
        Ok(tree)
    }
}

enum Fetched {
    New,
    NotModified,
}

/// The commit `git`'s reference names on its remote (`git ls-remote`); a full commit id is
/// taken as it is.
fn resolve_commit(git: &GitRef) -> Result<String, BuildError> {
    let what = git.remote.as_str();
    let reference = git.reference.as_deref().unwrap_or("HEAD");
    if reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(reference.to_ascii_lowercase());
    }
    let out = git_command()
        .args(["ls-remote", &git.remote, reference])
        .output()
        .map_err(|e| fail(what, format!("running git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Err(fail(
            what,
            format!(
                "git ls-remote failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    // An annotated tag is listed twice: its own object, then `^{}` with the commit.
    let wanted = |name: &str| {
        name == reference
            || name == format!("refs/heads/{reference}")
            || name == format!("refs/tags/{reference}")
    };
    let peeled = lines
        .iter()
        .find(|(_, n)| n.strip_suffix("^{}").is_some_and(wanted));
    let direct = lines.iter().find(|(_, n)| wanted(n));
    match peeled.or(direct) {
        Some((sha, _)) => Ok((*sha).to_owned()),
        // A commit prefix, or a reference ls-remote cannot list: fetch it as named.
        None if reference.bytes().all(|b| b.is_ascii_hexdigit()) => Err(fail(
            what,
            format!("`{reference}` is not a full commit id; give all 40 hex digits"),
        )),
        None => Err(fail(
            what,
            format!("the repository has no branch or tag `{reference}`"),
        )),
    }
}

fn git_command() -> Command {
    let mut c = Command::new("git");
    // Never wait for a password prompt; ssh is told the same.
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c
}

fn git_cmd(dir: &Path, args: &[&str], what: &str) -> Result<(), BuildError> {
    let out = git_command()
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| fail(what, format!("running git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Err(fail(
            what,
            format!(
                "git {} failed: {}",
                args.first().copied().unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    archway_oci::error_chain(e)
}

/// An HTTP date (RFC 9110 §5.6.7, IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`) in
/// seconds since the epoch.
pub(crate) fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if year < 1970 || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(
            super::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            super::parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(0)
        );
        assert_eq!(
            super::parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(
            super::parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            None
        );
        assert_eq!(super::parse_http_date("garbage"), None);
    }
}
