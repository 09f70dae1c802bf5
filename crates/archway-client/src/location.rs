//! Where an image lives: a registry (`docker://REF` or a bare reference) or an OCI image
//! layout on disk (`oci:DIR[:TAG]`), the transports skopeo users know.

use std::fmt;
use std::path::PathBuf;

use archway_oci::Reference;

use crate::error::ClientError;

/// An image location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    Layout { path: PathBuf, tag: Option<String> },
}

impl Location {
    /// Parses `docker://REF`, `oci:DIR[:TAG]` or a bare reference.
    pub fn parse(s: &str) -> Result<Location, ClientError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(ClientError::Protocol(format!(
                    "`{s}`: an OCI layout location needs a directory, e.g. `oci:./image:latest`"
                )));
            }
            // The tag is after the last ':' (paths with ':' must be written `oci:DIR:TAG`).
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !p.is_empty() && !t.contains('/') => (p, Some(t.to_owned())),
                _ => (rest, None),
            };
            return Ok(Location::Layout {
                path: PathBuf::from(path),
                tag: tag.filter(|t| !t.is_empty()),
            });
        }
        if let Some((transport, _)) = s.split_once(':')
            && !s.starts_with("docker://")
            && matches!(
                transport,
                "oci-archive" | "docker-archive" | "containers-storage" | "dir" | "docker-daemon"
            )
        {
            return Err(ClientError::Protocol(format!(
                "`{s}`: the {transport}: transport is not supported; use docker://REF or oci:DIR[:TAG]"
            )));
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        Ok(Location::Registry(r.parse()?))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "docker://{r}"),
            Location::Layout { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
            Location::Layout { path, tag: None } => write!(f, "oci:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        assert_eq!(
            Location::parse("oci:/tmp/img:1.0").unwrap(),
            Location::Layout {
                path: "/tmp/img".into(),
                tag: Some("1.0".into())
            }
        );
        assert_eq!(
            Location::parse("oci:./img").unwrap(),
            Location::Layout {
                path: "./img".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("docker://127.0.0.1:5000/a:b")
                .unwrap()
                .to_string(),
            "docker://127.0.0.1:5000/a:b"
        );
        assert_eq!(
            Location::parse("busybox").unwrap().to_string(),
            "docker://docker.io/library/busybox"
        );
        assert!(
            Location::parse("oci-archive:x.tar")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(Location::parse("oci:").is_err());
    }
}
