//! What an `ADD`/`COPY` source names, by BuildKit's rules: a path (in the context or a
//! stage), a file over HTTP(S), or a git repository.
//!
//! BuildKit (`dockerfile2llb/convert_copy.go`, `dfgitutil/git_ref.go`): a source is a git
//! repository when it is `git@host:path` (scp-like SSH), `ssh://…`, `git://…`, or an
//! `http(s)://` URL whose path ends in `.git`; it may carry `#ref:subdir` and the query
//! parameters `ref`, `tag`, `branch`, `subdir`, `checksum`/`commit`, `keep-git-dir` and
//! `submodules`. Any other `http(s)://` URL is a file to download. `./…`, `../…` and the
//! deprecated `github.com/…` form are paths. Only `ADD` takes URLs and repositories.
//!
//! Pure: no I/O.

use std::collections::BTreeMap;

/// A source that is not a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteSource {
    /// A file to download (never unpacked, BuildKit's rule for remote archives).
    Http(String),
    Git(GitRef),
}

/// A git repository source, as `dfgitutil.GitRef`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitRef {
    /// What `git` is given to fetch from (the URL without fragment and query).
    pub remote: String,
    /// A branch, tag, `refs/…` name or commit; `None` is the remote's `HEAD`.
    pub reference: Option<String>,
    /// Only this directory of the repository.
    pub subdir: Option<String>,
    /// The commit the reference must resolve to (`?checksum=`/`?commit=`, or `--checksum`).
    pub checksum: Option<String>,
    pub keep_git_dir: Option<bool>,
    pub submodules: Option<bool>,
    /// `git://` and `http://`: unencrypted (BuildKit allows them).
    pub unencrypted: bool,
}

/// Classifies a source. `Ok(None)`: a path. `Err`: a git source BuildKit would refuse
/// (conflicting or unknown query parameters).
pub fn classify(src: &str) -> Result<Option<RemoteSource>, String> {
    if src.starts_with("./") || src.starts_with("../") || src.starts_with("github.com/") {
        return Ok(None);
    }
    let (scheme, rest) = match src.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None if scp_like(src) => ("ssh".to_owned(), src),
        None => return Ok(None),
    };
    let (without_fragment, fragment) = match rest.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (rest, None),
    };
    let (path_part, query) = match without_fragment.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (without_fragment, None),
    };
    let is_git = match scheme.as_str() {
        "git" | "ssh" => true,
        "http" | "https" => path_part.ends_with(".git"),
        _ => return Ok(None),
    };
    if !is_git {
        return Ok(match scheme.as_str() {
            "http" | "https" => Some(RemoteSource::Http(src.to_owned())),
            _ => None,
        });
    }
    let remote = if src.contains("://") {
        format!("{scheme}://{path_part}")
    } else {
        path_part.to_owned()
    };
    let mut g = GitRef {
        remote,
        unencrypted: matches!(scheme.as_str(), "git" | "http"),
        ..GitRef::default()
    };
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        let (r, sub) = match f.split_once(':') {
            Some((r, s)) => (r, Some(s)),
            None => (f, None),
        };
        g.reference = Some(r.to_owned()).filter(|r| !r.is_empty());
        g.subdir = sub.map(str::to_owned).filter(|s| !s.is_empty());
    }
    if let Some(q) = query {
        load_query(&mut g, q)?;
    }
    Ok(Some(RemoteSource::Git(g)))
}

/// `user@host:path` (no scheme): git's scp-like SSH syntax.
fn scp_like(s: &str) -> bool {
    let Some((user, rest)) = s.split_once('@') else {
        return false;
    };
    let Some((host, path)) = rest.split_once(':') else {
        return false;
    };
    !user.is_empty()
        && !user.contains('/')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
}

fn load_query(g: &mut GitRef, query: &str) -> Result<(), String> {
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        values
            .entry(percent_decode(k, true))
            .or_default()
            .push(percent_decode(v, true));
    }
    let (mut tag, mut branch) = (None, None);
    for (k, v) in values {
        if v.len() > 1 {
            return Err(format!("query {k:?} has multiple values"));
        }
        let v = v.into_iter().next().unwrap_or_default();
        let flag = |name: &str| -> Result<bool, String> {
            match v.as_str() {
                "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                other => Err(format!("invalid {name} value: {other:?}")),
            }
        };
        if v.is_empty() && !matches!(k.as_str(), "submodules" | "keep-git-dir") {
            return Err(format!("query {k:?} has no value"));
        }
        match k.as_str() {
            "ref" => {
                if let Some(r) = &g.reference
                    && *r != v
                {
                    return Err(format!("ref conflicts: {r:?} vs {v:?}"));
                }
                g.reference = Some(v);
            }
            "tag" => tag = Some(v),
            "branch" => branch = Some(v),
            "subdir" => {
                if let Some(s) = &g.subdir
                    && *s != v
                {
                    return Err(format!("subdir conflicts: {s:?} vs {v:?}"));
                }
                g.subdir = Some(v);
            }
            "checksum" | "commit" => g.checksum = Some(v),
            "keep-git-dir" => g.keep_git_dir = Some(flag("keep-git-dir")?),
            "submodules" => g.submodules = Some(flag("submodules")?),
            other => return Err(format!("unexpected query {other:?}")),
        }
    }
    for (value, prefix) in [
        (tag.as_ref(), "refs/tags/"),
        (branch.as_ref(), "refs/heads/"),
    ] {
        let Some(v) = value else { continue };
        if prefix == "refs/heads/" && tag.is_some() {
            return Err("branch conflicts with tag".into());
        }
        let full = if v.starts_with(prefix) {
            v.clone()
        } else {
            format!("{prefix}{v}")
        };
        if let Some(r) = &g.reference
            && *r != full
        {
            return Err(format!("ref conflicts: {r:?} vs {full:?}"));
        }
        g.reference = Some(full);
    }
    if g.reference.is_none() {
        g.reference = g.checksum.clone();
    }
    Ok(())
}

/// `%41` → `A` (and, in a query, `+` → space); anything malformed is kept as written.
fn percent_decode(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if query && b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name BuildKit gives a downloaded file: the last segment of the URL's path, else
/// `__unnamed__`.
pub fn url_file_name(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map_or("", |(_, p)| p);
    match path.rsplit('/').next().filter(|s| !s.is_empty()) {
        Some(last) => percent_decode(last, false),
        None => "__unnamed__".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(src: &str) -> GitRef {
        match classify(src) {
            Ok(Some(RemoteSource::Git(g))) => g,
            other => panic!("{src}: {other:?}"),
        }
    }

    /// The cases of BuildKit's `TestParseGitRef` that ADD sees, plus the query forms.
    #[test]
    fn buildkit_git_refs() {
        for local in [
            "./.git",
            ".git",
            "../x.git",
            "github.com/moby/buildkit",
            "custom.xyz/moby/buildkit.git",
            "src/main.rs",
            "/abs/path",
        ] {
            assert_eq!(classify(local), Ok(None), "{local}");
        }
        for http in [
            "https://example.com/",
            "https://example.com/foo",
            "https://github.com/moby/buildkit",
            "https://example.com/foo.git/",
            "https://example.com/foo.git.bar",
            "http://example.com/file.tar.gz?x=1#frag",
        ] {
            assert_eq!(
                classify(http),
                Ok(Some(RemoteSource::Http(http.to_owned()))),
                "{http}"
            );
        }
        let g = git("https://example.com/foo.git#release/1.2");
        assert_eq!(g.remote, "https://example.com/foo.git");
        assert_eq!(g.reference.as_deref(), Some("release/1.2"));
        let g = git("https://github.com/foo/bar.git#baz/qux:quux/quuz");
        assert_eq!(
            (g.reference.as_deref(), g.subdir.as_deref()),
            (Some("baz/qux"), Some("quux/quuz"))
        );
        let g = git("https://github.com/docker/docker.git#:myfolder");
        assert_eq!((g.reference, g.subdir.as_deref()), (None, Some("myfolder")));
        let g = git("git://example.com/foo");
        assert!(g.unencrypted);
        let g = git("git@github.com:moby/buildkit.git");
        assert_eq!(g.remote, "git@github.com:moby/buildkit.git");
        assert!(!g.unencrypted);
        let g = git("https://foo:bar@github.com/moby/buildkit.git");
        assert_eq!(g.remote, "https://foo:bar@github.com/moby/buildkit.git");
        let g = git("https://github.com/docker/docker.git?ref=v1.0.0&subdir=/subdir");
        assert_eq!(
            (g.reference.as_deref(), g.subdir.as_deref()),
            (Some("v1.0.0"), Some("/subdir"))
        );
        let g = git("https://x.org/r.git?tag=v1&keep-git-dir&submodules=false");
        assert_eq!(g.reference.as_deref(), Some("refs/tags/v1"));
        assert_eq!((g.keep_git_dir, g.submodules), (Some(true), Some(false)));
        let g = git("https://x.org/r.git?branch=main&commit=0123abc");
        assert_eq!(g.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(g.checksum.as_deref(), Some("0123abc"));
        let g = git("https://x.org/r.git?checksum=0123abc");
        assert_eq!(g.reference.as_deref(), Some("0123abc"));
        for (bad, why) in [
            ("https://x.org/r.git?ref=b#a", "ref conflicts"),
            (
                "https://x.org/r.git?tag=v1&branch=main",
                "branch conflicts with tag",
            ),
            ("https://x.org/r.git?depth=1", "unexpected query"),
            ("https://x.org/r.git?ref=", "has no value"),
            (
                "https://x.org/r.git?keep-git-dir=maybe",
                "invalid keep-git-dir",
            ),
        ] {
            let e = classify(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn download_names() {
        assert_eq!(
            url_file_name("https://x.org/a/b/tool.tar.gz?v=1"),
            "tool.tar.gz"
        );
        assert_eq!(url_file_name("https://x.org/a%20b.txt"), "a b.txt");
        assert_eq!(url_file_name("https://x.org/"), "__unnamed__");
        assert_eq!(url_file_name("https://x.org"), "__unnamed__");
    }
}
