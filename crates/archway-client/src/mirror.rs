//! Registry mirrors: `docker.io=HOST[/PREFIX]` sends pulls of one registry to another, as
//! dockerd's `registry-mirrors` and containerd's `hosts.toml` do — the way an air-gapped or
//! rate-limited team serves job images and `FROM` images from a registry it controls.
//!
//! Only pulls are redirected; a push always goes where its reference says.

use std::fmt;
use std::str::FromStr;

use archway_oci::Reference;

/// One mirror: pulls of `source` are served by `host`, repositories under `prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry mirrored, normalised (`docker.io` for Docker Hub's aliases).
    pub source: String,
    /// The mirror's host (with port).
    pub host: String,
    /// Repository prefix on the mirror (`""` for none): `library/busybox` becomes
    /// `PREFIX/library/busybox`.
    pub prefix: String,
}

/// Why a mirror was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "registry mirror `{given}`: {why} (expected REGISTRY=HOST[/PREFIX], e.g. docker.io=127.0.0.1:5000/hub)"
)]
pub struct MirrorError {
    pub given: String,
    pub why: &'static str,
}

fn normalise(registry: &str) -> String {
    match registry {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            archway_oci::reference::DOCKER_HUB.to_owned()
        }
        other => other.to_ascii_lowercase(),
    }
}

impl FromStr for Mirror {
    type Err = MirrorError;

    fn from_str(s: &str) -> Result<Mirror, MirrorError> {
        let err = |why| MirrorError {
            given: s.to_owned(),
            why,
        };
        let (source, target) = s.split_once('=').ok_or_else(|| err("no `=`"))?;
        let source = source.trim();
        let target = target
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        if source.is_empty() || source.contains('/') {
            return Err(err("the mirrored registry must be a host name"));
        }
        let (host, prefix) = match target.split_once('/') {
            Some((h, p)) => (h, p),
            None => (target, ""),
        };
        if host.is_empty() {
            return Err(err("the mirror needs a host"));
        }
        if prefix.split('/').any(|c| c == ".." || c == ".")
            || prefix.contains("//")
            || prefix
                .chars()
                .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)))
        {
            return Err(err(
                "the prefix must be a repository path (lowercase letters, digits, . _ - /)",
            ));
        }
        Ok(Mirror {
            source: normalise(source),
            host: host.to_ascii_lowercase(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{}={}", self.source, self.host)
        } else {
            write!(f, "{}={}/{}", self.source, self.host, self.prefix)
        }
    }
}

/// The reference to pull instead of `r`, if one of `mirrors` serves its registry.
pub fn rewrite(mirrors: &[Mirror], r: &Reference) -> Option<Reference> {
    let registry = normalise(&r.registry);
    let m = mirrors.iter().find(|m| m.source == registry)?;
    let mut out = r.clone();
    out.registry = m.host.clone();
    if !m.prefix.is_empty() {
        out.repository = format!("{}/{}", m.prefix, r.repository);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_and_rewrite_only_their_registry() {
        let m: Mirror = "docker.io=127.0.0.1:5000/hub".parse().unwrap();
        assert_eq!(m.to_string(), "docker.io=127.0.0.1:5000/hub");
        let busybox: Reference = "busybox:1.36".parse().unwrap();
        let got = rewrite(std::slice::from_ref(&m), &busybox).unwrap();
        assert_eq!(got.to_string(), "127.0.0.1:5000/hub/library/busybox:1.36");
        let aliased: Reference = "index.docker.io/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        let got = rewrite(std::slice::from_ref(&m), &aliased).unwrap();
        assert_eq!(got.registry, "127.0.0.1:5000");
        assert_eq!(got.repository, "hub/team/app");
        assert_eq!(got.digest, aliased.digest);
        let other: Reference = "ghcr.io/o/x:1".parse().unwrap();
        assert_eq!(rewrite(std::slice::from_ref(&m), &other), None);

        let bare: Mirror = "quay.io=http://mirror.local:8080/".parse().unwrap();
        assert_eq!(bare.host, "mirror.local:8080");
        assert_eq!(bare.prefix, "");
        let q: Reference = "quay.io/a/b:2".parse().unwrap();
        assert_eq!(
            rewrite(&[m, bare], &q).unwrap().to_string(),
            "mirror.local:8080/a/b:2"
        );
    }

    #[test]
    fn bad_mirrors_say_what_is_wrong() {
        for (s, why) in [
            ("docker.io", "no `=`"),
            ("=host", "the mirrored registry must be a host name"),
            (
                "docker.io/library=host",
                "the mirrored registry must be a host name",
            ),
            ("docker.io=", "the mirror needs a host"),
            ("docker.io=/x", "the mirror needs a host"),
            (
                "docker.io=host/../x",
                "the prefix must be a repository path (lowercase letters, digits, . _ - /)",
            ),
            (
                "docker.io=host/Upper",
                "the prefix must be a repository path (lowercase letters, digits, . _ - /)",
            ),
        ] {
            let e = s.parse::<Mirror>().unwrap_err();
            assert_eq!(e.why, why, "{s}");
            assert!(e.to_string().contains("REGISTRY=HOST[/PREFIX]"));
        }
    }
}
