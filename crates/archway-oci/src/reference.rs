//! Image references as docker writes them: `[registry/]repository[:tag][@digest]`.
//!
//! Normalisation follows docker's rules: a first component containing `.` or `:`, or equal to
//! `localhost`, is a registry host; otherwise the registry is Docker Hub (`docker.io`) and a
//! single-component repository gets the `library/` prefix. Without tag or digest, the tag is
//! `latest`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's canonical name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (with port), e.g. `127.0.0.1:5000`, `ghcr.io`, `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error(
        "invalid image reference `{input}`: {reason} (expected `[registry/]repository[:tag][@sha256:…]`, e.g. `127.0.0.1:5000/team/app:1.0`)"
    )]
    Invalid { input: String, reason: String },
}

fn invalid(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// One path component: lowercase alphanumeric runs joined by `.`, `_`, `__` or one or more `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag as the distribution spec defines it: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Longest repository name a registry accepts (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name as the distribution spec defines it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME_LEN`] characters. Written by hand rather than as a regex: registries check it on
/// every request.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_path_component)
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        // An IPv6 literal in brackets may contain colons.
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    let host_ok = if host.starts_with('[') {
        host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
    } else {
        !host.is_empty()
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d: Digest = d
                    .parse()
                    .map_err(|e: crate::DigestError| invalid(input, e.to_string()))?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid(input, format!("`{t}` is not a valid tag")));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(invalid(
                        input,
                        format!("`{first}` is not a valid registry host"),
                    ));
                }
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if repository.is_empty() {
            return Err(invalid(input, "no repository name"));
        }
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            let reason = if bad.bytes().any(|b| b.is_ascii_uppercase()) {
                format!("repository names must be lowercase (`{bad}`)")
            } else {
                format!("`{bad}` is not a valid repository path component")
            };
            return Err(invalid(input, reason));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid(input, "name longer than 255 characters"));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl Reference {
    /// A reference to `repository` on `registry` with a tag.
    pub fn new(registry: &str, repository: &str, tag: &str) -> Self {
        Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag (default `latest`).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The tag, defaulting to `latest` when neither tag nor digest was given.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// Host to talk to for this registry's API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same repository at another digest (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1.35", "docker.io/library/busybox:1.35"),
            ("team/app", "docker.io/team/app"),
            ("localhost/app", "localhost/app"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"),
            ("ghcr.io/org/app", "ghcr.io/org/app"),
            ("index.docker.io/library/x", "docker.io/library/x"),
            ("[::1]:5000/app", "[::1]:5000/app"),
        ];
        for (input, want) in cases {
            assert_eq!(r(input).to_string(), want, "{input}");
        }
        let d = Digest::sha256(b"x");
        let pinned = r(&format!("reg.io:443/app:v1@{d}"));
        assert_eq!(pinned.tag.as_deref(), Some("v1"));
        assert_eq!(pinned.manifest_reference(), d.to_string());
        assert_eq!(r("app").manifest_reference(), "latest");
        assert_eq!(r("app").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn refuses_invalid_references_with_reasons() {
        for (input, needle) in [
            ("", "empty"),
            ("Upper/case", "lowercase"),
            ("reg.io/app:bad tag", "not a valid tag"),
            ("reg.io/app@sha256:abc", "64 lowercase hex"),
            ("reg.io/", "no repository"),
            ("reg.io/a//b", "not a valid repository path component"),
            ("reg.io/-a", "not a valid repository path component"),
            ("bad_host.io:x/app", "not a valid registry host"),
        ] {
            let err = input.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}
