//! Maps a request path to an endpoint of the distribution API.
//!
//! Repository names contain slashes (and may even contain a component called `manifests`), so
//! the path is read from its end: the last one or two segments name the endpoint, everything
//! between `/v2/` and them is the repository name.

use crate::error::ApiError;
use crate::names::{Reference, RepoName};
use archway_oci::Digest;

/// One endpoint of the API, with its validated path parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/manifests/<reference>` whose reference is neither a valid tag nor a digest:
    /// a read finds no such manifest (404 `MANIFEST_UNKNOWN`, as distribution answers), a push
    /// names an invalid tag (400 `TAG_INVALID`) or digest (400 `DIGEST_INVALID`).
    BadManifestReference(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) | Route::BadManifestReference(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// The repository the request touches, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::BadManifestReference(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// Parses a path. `Ok(None)` means "not an API path" (404); `Err` carries the spec error
    /// for a malformed name, reference or digest.
    pub fn parse(path: &str) -> Result<Option<Route>, ApiError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Ok(None);
        };
        if rest.is_empty() || rest == "/" {
            return Ok(Some(Route::Base));
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Ok(None);
        };
        if rest == "_catalog" {
            return Ok(Some(Route::Catalog));
        }
        let name = |n: &str| RepoName::parse(n).ok_or_else(|| ApiError::name_invalid(n));
        let digest = |d: &str| {
            d.parse::<Digest>()
                .map_err(|e| ApiError::digest_invalid(e.to_string()))
        };
        // `<name>/blobs/uploads/` and `<name>/blobs/uploads`
        if let Some(n) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Ok(Some(Route::UploadStart(name(n)?)));
        }
        if let Some(n) = rest.strip_suffix("/tags/list") {
            return Ok(Some(Route::Tags(name(n)?)));
        }
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Ok(None);
        };
        if let Some(n) = head.strip_suffix("/blobs/uploads") {
            return Ok(Some(Route::Upload(name(n)?, last.to_owned())));
        }
        let Some((n, kind)) = head.rsplit_once('/') else {
            return Ok(None);
        };
        match kind {
            "manifests" => {
                let n = name(n)?;
                Ok(Some(match Reference::parse(last) {
                    Some(reference) => Route::Manifest(n, reference),
                    None => Route::BadManifestReference(n, last.to_owned()),
                }))
            }
            "blobs" => Ok(Some(Route::Blob(name(n)?, digest(last)?))),
            "referrers" => Ok(Some(Route::Referrers(name(n)?, digest(last)?))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Route {
        Route::parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e:?}"))
            .unwrap_or_else(|| panic!("{path}: not a route"))
    }

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        let d = Digest::sha256(b"x");
        assert_eq!(ok("/v2/"), Route::Base);
        assert_eq!(ok("/v2"), Route::Base);
        assert_eq!(ok("/v2/_catalog"), Route::Catalog);
        assert_eq!(ok("/v2/a/b/tags/list"), Route::Tags(repo("a/b")));
        assert_eq!(
            ok("/v2/a/manifests/latest"),
            Route::Manifest(repo("a"), Reference::Tag("latest".into()))
        );
        assert_eq!(
            ok(&format!("/v2/a/manifests/{d}")),
            Route::Manifest(repo("a"), Reference::Digest(d.clone()))
        );
        // A repository whose name contains endpoint words.
        assert_eq!(
            ok("/v2/x/manifests/blobs/manifests/v1"),
            Route::Manifest(repo("x/manifests/blobs"), Reference::Tag("v1".into()))
        );
        assert_eq!(
            ok(&format!("/v2/a/blobs/{d}")),
            Route::Blob(repo("a"), d.clone())
        );
        assert_eq!(ok("/v2/a/blobs/uploads/"), Route::UploadStart(repo("a")));
        assert_eq!(ok("/v2/a/blobs/uploads"), Route::UploadStart(repo("a")));
        assert_eq!(
            ok("/v2/a/blobs/uploads/abc"),
            Route::Upload(repo("a"), "abc".into())
        );
        assert_eq!(
            ok(&format!("/v2/a/referrers/{d}")),
            Route::Referrers(repo("a"), d)
        );
    }

    #[test]
    fn rejects_bad_parameters_with_spec_codes() {
        let code = |p: &str| Route::parse(p).unwrap_err().code;
        assert_eq!(code("/v2/A/tags/list"), "NAME_INVALID");
        assert_eq!(code("/v2/a/blobs/sha256:zz"), "DIGEST_INVALID");
        // A manifest reference that is neither a tag nor a digest is decided by the method.
        assert_eq!(
            ok("/v2/a/manifests/sha256:zz"),
            Route::BadManifestReference(repo("a"), "sha256:zz".into())
        );
        assert_eq!(
            ok("/v2/a/manifests/-bad"),
            Route::BadManifestReference(repo("a"), "-bad".into())
        );
        assert_eq!(Route::parse("/v3/").unwrap(), None);
        assert_eq!(Route::parse("/v2/a/unknown/x").unwrap(), None);
        assert_eq!(Route::parse("/v2x").unwrap(), None);
    }
}
