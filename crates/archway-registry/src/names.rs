//! Repository names, tags and manifest references as the distribution spec defines them.
//!
//! * name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255
//!   characters in all;
//! * tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`;
//! * reference: a tag or a digest.
//!
//! The grammar itself is `archway_oci::reference`'s, shared with image references.

use std::fmt;

use archway_oci::Digest;
use archway_oci::reference::{valid_repository, valid_tag};

/// A validated repository name such as `library/busybox`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Option<RepoName> {
        valid_repository(s).then(|| RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// The `<reference>` of a manifest URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// Parses a tag or digest; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Reference> {
        if s.contains(':') {
            s.parse().ok().map(Reference::Digest)
        } else if valid_tag(s) {
            Some(Reference::Tag(s.to_owned()))
        } else {
            None
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for good in [
            "a",
            "busybox",
            "library/busybox",
            "a.b_c__d-e--f/g",
            "x/y/z/manifests/blobs",
            "0a9",
        ] {
            assert!(RepoName::parse(good).is_some(), "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "a._b",
            "a b",
            "../etc",
            ".hidden",
            "_manifests",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn tags_and_references() {
        assert!(valid_tag("latest") && valid_tag("_x") && valid_tag("v1.0-rc_2"));
        assert!(!valid_tag(".x") && !valid_tag("-x") && !valid_tag("") && !valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(129)) && valid_tag(&"a".repeat(128)));
        assert_eq!(Reference::parse("v1"), Some(Reference::Tag("v1".into())));
        let d = Digest::sha256(b"x");
        assert_eq!(Reference::parse(&d.to_string()), Some(Reference::Digest(d)));
        assert_eq!(Reference::parse("sha256:abc"), None);
        assert_eq!(Reference::parse("..."), None);
    }
}
