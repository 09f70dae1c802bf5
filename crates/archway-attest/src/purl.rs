//! Package URLs (`pkg:type/namespace/name@version?qualifiers`), written in the canonical form
//! of the purl specification: qualifiers sorted by key, empty ones left out, and every
//! character outside `A-Z a-z 0-9 . - _ ~ :` percent-encoded (so `+` in Debian versions is
//! `%2B` and `/` in a platform is `%2F`, as syft and trivy write them).

use std::fmt::Write as _;

/// Percent-encodes one purl component.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Builds a purl. `namespace` may hold several `/`-separated segments (each is encoded);
/// `qualifiers` with an empty value are dropped, the rest are sorted by key.
pub(crate) fn purl(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    version: Option<&str>,
    qualifiers: &[(&str, &str)],
) -> String {
    let mut out = format!("pkg:{kind}/");
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        for segment in ns.split('/').filter(|s| !s.is_empty()) {
            out.push_str(&encode(segment));
            out.push('/');
        }
    }
    out.push_str(&encode(name));
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        out.push('@');
        out.push_str(&encode(v));
    }
    let mut qs: Vec<&(&str, &str)> = qualifiers.iter().filter(|(_, v)| !v.is_empty()).collect();
    qs.sort_by_key(|(k, _)| *k);
    for (i, (k, v)) in qs.into_iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form() {
        assert_eq!(
            purl(
                "deb",
                Some("debian"),
                "libc6",
                Some("2.36-9+deb12u4"),
                &[("distro", "debian-12"), ("arch", "amd64"), ("upstream", "")]
            ),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            purl(
                "docker",
                Some("docker.io/library"),
                "debian",
                Some("sha256:ab"),
                &[("platform", "linux/arm64")]
            ),
            "pkg:docker/docker.io/library/debian@sha256:ab?platform=linux%2Farm64"
        );
        assert_eq!(
            purl("generic", None, "busybox", None, &[]),
            "pkg:generic/busybox"
        );
        assert_eq!(encode("libstdc++6 x"), "libstdc%2B%2B6%20x");
    }
}
