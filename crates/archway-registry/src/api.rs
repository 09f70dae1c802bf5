//! The HTTP handlers of the distribution API: one function per endpoint, dispatched from
//! [`dispatch`] after the path was parsed into a [`Route`] and access was checked.

use std::net::SocketAddr;
use std::sync::Arc;

use archway_oci::{Descriptor, Digest, ManifestKind, ParsedManifest, media_type};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use crate::Registry;
use crate::auth::Action;
use crate::error::ApiError;
use crate::names::{Reference, RepoName};
use crate::route::Route;
use crate::storage::{BlobContent, ByteStream};

pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
pub const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
pub const OCI_SUBJECT: &str = "oci-subject";
/// A tag a push by digest applied (`?tag=`), one header per tag.
pub const OCI_TAG: &str = "oci-tag";
pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

type ApiResult = Result<Response, ApiError>;

/// Value of the `Range` header describing an upload of `size` bytes (`0-0` when empty, as
/// distribution does).
pub fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// Entry point for every `/v2/…` request.
pub async fn dispatch(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    match handle(reg, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(reg: Arc<Registry>, req: Request) -> ApiResult {
    let route = Route::parse(req.uri().path())?.ok_or_else(ApiError::not_found)?;
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let identity = reg.authorize(req.headers(), peer, &route, &method).await?;
    let query = Query::parse(req.uri().query());
    match (&method, route) {
        (&Method::GET | &Method::HEAD, Route::Base) => Ok(json_response(StatusCode::OK, json!({}))),
        (&Method::GET, Route::Catalog) => catalog(&reg, identity.as_ref(), &query).await,
        (&Method::GET, Route::Tags(name)) => tags(&reg, &name, &query).await,
        (&Method::GET | &Method::HEAD, Route::Manifest(name, reference)) => {
            get_manifest(&reg, &name, &reference, method == Method::HEAD).await
        }
        (&Method::PUT, Route::Manifest(name, reference)) => {
            put_manifest(&reg, &name, &reference, &query, req).await
        }
        (&Method::DELETE, Route::Manifest(name, reference)) => {
            delete_manifest(&reg, &name, &reference).await
        }
        // Neither a tag nor a digest: nothing can be stored under it, so there is nothing to
        // read (distribution answers MANIFEST_UNKNOWN), and a push names an invalid tag.
        (
            &Method::GET | &Method::HEAD | &Method::DELETE,
            Route::BadManifestReference(_, reference),
        ) => Err(ApiError::manifest_unknown(reference)),
        (&Method::PUT, Route::BadManifestReference(_, reference)) => {
            if reference.contains(':') {
                Err(ApiError::digest_invalid(format!(
                    "`{reference}` is not a valid digest"
                )))
            } else {
                Err(ApiError::tag_invalid(&reference))
            }
        }
        (&Method::GET | &Method::HEAD, Route::Blob(name, digest)) => {
            get_blob(&reg, &name, &digest, req.headers(), method == Method::HEAD).await
        }
        (&Method::DELETE, Route::Blob(name, digest)) => delete_blob(&reg, &name, &digest).await,
        (&Method::POST, Route::UploadStart(name)) => {
            start_upload(&reg, &name, &query, identity.as_ref(), req).await
        }
        (&Method::GET, Route::Upload(name, id)) => upload_status(&reg, &name, &id).await,
        (&Method::PATCH, Route::Upload(name, id)) => patch_upload(&reg, &name, &id, req).await,
        (&Method::PUT, Route::Upload(name, id)) => {
            finish_upload(&reg, &name, &id, &query, req).await
        }
        (&Method::DELETE, Route::Upload(name, id)) => {
            reg.storage.cancel_upload(&name, &id).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, Route::Referrers(name, digest)) => {
            referrers(&reg, &name, &digest, &query).await
        }
        (m, route) => Err(ApiError::unsupported(format!(
            "{m} is not supported on the {} endpoint",
            route.kind()
        ))),
    }
}

/// The query string as ordered pairs (parameters such as `scope` may repeat).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            q.map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn set(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(
        body.into_data_stream()
            .map_err(|e| std::io::Error::other(e.to_string())),
    )
}

/// Reads a whole request body, refusing more than `limit` bytes with 413. An oversized body
/// is still drained (up to four times the limit) so that the client, which is usually still
/// sending, reads the error instead of a reset connection.
async fn read_limited(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::blob_upload_invalid(format!("reading the {what} body failed: {e}"))
        })?;
        seen += chunk.len();
        if seen > limit {
            if seen > limit.saturating_mul(4) {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if seen > limit {
        return Err(too_large(what, limit));
    }
    Ok(buf.freeze())
}

fn too_large(what: &str, limit: usize) -> ApiError {
    let mut e = ApiError::manifest_invalid(format!(
        "{what} is larger than the registry's limit of {limit} bytes"
    ));
    e.status = StatusCode::PAYLOAD_TOO_LARGE;
    e
}

/// Pagination shared by `/tags/list` and `/_catalog`: entries after `last`, at most `n`, and
/// a `Link` header when more remain.
fn paginate(
    items: Vec<String>,
    query: &Query,
    path: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let n = match query.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("`n` must be a non-negative integer, got `{n}`"),
            )
        })?),
        None => None,
    };
    let start = match query.get("last") {
        Some(last) => items.partition_point(|t| t.as_str() <= last),
        None => 0,
    };
    let rest = &items[start..];
    let take = n.unwrap_or(rest.len()).min(rest.len());
    let page = rest[..take].to_vec();
    let link = match (n, page.last()) {
        (Some(n), Some(last)) if take < rest.len() => {
            let q = serde_urlencoded::to_string([("n", n.to_string()), ("last", last.clone())])
                .unwrap_or_default();
            Some(format!("<{path}?{q}>; rel=\"next\""))
        }
        _ => None,
    };
    Ok((page, link))
}

/// The repositories the caller may pull (all of them without authentication), paginated
/// after filtering so that pages are full and `last` works.
async fn catalog(reg: &Registry, grant: Option<&crate::auth::Grant>, query: &Query) -> ApiResult {
    let names: Vec<String> = reg
        .storage
        .list_repositories()
        .await?
        .into_iter()
        .filter(|r| match (&reg.auth, grant) {
            (Some(auth), Some(g)) => auth.catalog_shows(g, r),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .map(|r| r.to_string())
        .collect();
    let (page, link) = paginate(names, query, "/v2/_catalog")?;
    let mut r = json_response(StatusCode::OK, json!({ "repositories": page }));
    if let Some(link) = link {
        set(&mut r, "link", &link);
    }
    Ok(r)
}

async fn tags(reg: &Registry, name: &RepoName, query: &Query) -> ApiResult {
    let tags = reg
        .storage
        .list_tags(name)
        .await?
        .ok_or_else(|| ApiError::name_unknown(name))?;
    let (page, link) = paginate(tags, query, &format!("/v2/{name}/tags/list"))?;
    let mut r = json_response(
        StatusCode::OK,
        json!({ "name": name.as_str(), "tags": page }),
    );
    if let Some(link) = link {
        set(&mut r, "link", &link);
    }
    Ok(r)
}

/// Resolves a reference to a digest known to the repository, with its media type.
async fn resolve_manifest(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
) -> Result<(Digest, String), ApiError> {
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => reg
            .storage
            .get_tag(name, t)
            .await?
            .ok_or_else(|| ApiError::manifest_unknown(reference))?,
    };
    let media_type = reg
        .storage
        .manifest_media_type(name, &digest)
        .await?
        .ok_or_else(|| ApiError::manifest_unknown(reference))?;
    Ok((digest, media_type))
}

async fn get_manifest(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    head: bool,
) -> ApiResult {
    let (digest, media_type) = resolve_manifest(reg, name, reference).await?;
    let bytes = reg
        .storage
        .read_blob_bytes(&digest)
        .await?
        .ok_or_else(|| ApiError::manifest_unknown(reference))?;
    let len = bytes.len();
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(bytes))
    };
    set(&mut r, "content-type", &media_type);
    set(&mut r, "content-length", &len.to_string());
    set(&mut r, DOCKER_CONTENT_DIGEST, &digest.to_string());
    set(&mut r, "etag", &format!("\"{digest}\""));
    Ok(r)
}

async fn put_manifest(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    query: &Query,
    req: Request,
) -> ApiResult {
    let limit = reg.config.max_manifest_size;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `PUT /v2/<name>/manifests/<digest>?tag=<tag>&tag=…` (distribution-spec 1.1.1): push by
    // digest and tag in one request. Every tag is checked before anything is stored.
    let mut tags: Vec<&str> = Vec::new();
    if let Reference::Tag(tag) = reference {
        tags.push(tag);
    }
    for t in query.all("tag") {
        if !archway_oci::reference::valid_tag(t) {
            return Err(ApiError::tag_invalid(t));
        }
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let bytes = read_limited(req.into_body(), limit, "manifest").await?;
    // The digest is in the client's algorithm: the one its URL names (sha512 stays sha512,
    // with or without `?tag=`), sha256 for a push by tag.
    let algorithm = match reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => archway_oci::Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Reference::Digest(expected) = reference
        && expected != &digest
    {
        return Err(ApiError::digest_invalid(format!(
            "manifest body has digest {digest}, not {expected} as the URL says"
        )));
    }
    let parsed = ParsedManifest::parse(&bytes, content_type.as_deref())
        .map_err(|e| ApiError::manifest_invalid(e.to_string()))?;
    verify_references(reg, name, &parsed).await?;

    let size = bytes.len() as u64;
    reg.storage.put_blob_bytes(&digest, bytes).await?;
    // Link and tag under the repository's lock, so that a concurrent DELETE of this digest
    // ends either before (both stay) or after (both go), never between.
    let _locked = reg.repo_locks.lock(name).await;
    reg.storage
        .link_manifest(name, &digest, &parsed.media_type)
        .await?;
    if let Some(subject) = &parsed.subject {
        let mut d = Descriptor::new(parsed.media_type.clone(), digest.clone(), size);
        d.artifact_type = parsed.effective_artifact_type().map(str::to_owned);
        d.annotations = parsed.annotations.clone();
        reg.storage.add_referrer(name, &subject.digest, &d).await?;
    }
    for tag in &tags {
        reg.storage.set_tag(name, tag, &digest).await?;
        // Another replica may have deleted this manifest between our link and our tag (the
        // repository lock is per process): its delete removes tags before and after its
        // unlink, and we check the link after our tag, so no tag outlives its manifest.
        if reg
            .storage
            .manifest_media_type(name, &digest)
            .await?
            .is_none()
        {
            reg.storage.delete_tag_if(name, tag, &digest).await?;
            return Err(ApiError::manifest_unknown(reference).with_detail(json!({
                "reference": reference.to_string(),
                "reason": "the manifest was deleted while it was being tagged; push it again",
            })));
        }
    }
    let mut r = empty(StatusCode::CREATED);
    set(
        &mut r,
        "location",
        &format!("/v2/{name}/manifests/{digest}"),
    );
    set(&mut r, DOCKER_CONTENT_DIGEST, &digest.to_string());
    if let Some(subject) = &parsed.subject {
        set(&mut r, OCI_SUBJECT, &subject.digest.to_string());
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &tags {
            if let Ok(v) = http::HeaderValue::from_str(tag) {
                r.headers_mut().append(OCI_TAG, v);
            }
        }
    }
    Ok(r)
}

/// Every blob and child manifest a manifest names must already be in the repository, unless
/// the registry accepts sparse manifests (then the absent ones are skipped; present ones are
/// still linked, re-stamped and size-checked).
async fn verify_references(
    reg: &Registry,
    name: &RepoName,
    parsed: &ParsedManifest,
) -> Result<(), ApiError> {
    match parsed.kind {
        ManifestKind::Image => {
            for blob in parsed.blobs() {
                if foreign_layer(reg, blob)? {
                    continue; // a non-distributable layer that lives at an allowed URL
                }
                if reg.storage.blob_linked(name, &blob.digest).await? {
                    reg.storage.link_blob(name, &blob.digest).await?; // re-stamp for GC
                } else if let Some(mt) = reg.storage.manifest_media_type(name, &blob.digest).await?
                {
                    // A config pushed as a manifest (rare, but valid) is accepted too.
                    reg.storage.link_manifest(name, &blob.digest, &mt).await?;
                } else if reg.config.allow_sparse {
                    continue; // opted in: a manifest may name blobs this registry lacks
                } else {
                    return Err(ApiError::manifest_blob_unknown(&blob.digest));
                }
                if !reg.storage.touch_blob(&blob.digest).await? {
                    return Err(ApiError::manifest_blob_unknown(&blob.digest));
                }
                check_size(reg, blob).await?;
            }
        }
        ManifestKind::Index => {
            for child in &parsed.manifests {
                let Some(mt) = reg.storage.manifest_media_type(name, &child.digest).await? else {
                    if reg.config.allow_sparse {
                        continue; // opted in: an index may name children this registry lacks
                    }
                    return Err(ApiError::manifest_blob_unknown(&child.digest));
                };
                reg.storage.link_manifest(name, &child.digest, &mt).await?;
                if !reg.storage.touch_blob(&child.digest).await? {
                    return Err(ApiError::manifest_blob_unknown(&child.digest));
                }
                check_size(reg, child).await?;
            }
        }
    }
    Ok(())
}

/// A descriptor's size must be the stored content's.
async fn check_size(reg: &Registry, d: &Descriptor) -> Result<(), ApiError> {
    match reg.storage.blob_size(&d.digest).await? {
        Some(size) if size == d.size => Ok(()),
        Some(size) => Err(ApiError::manifest_invalid(format!(
            "descriptor of {} says {} bytes but the registry holds {size}",
            d.digest, d.size
        ))
        .with_detail(
            json!({ "digest": d.digest.to_string(), "declared": d.size, "stored": size }),
        )),
        None => Err(ApiError::manifest_blob_unknown(&d.digest)),
    }
}

/// Media types of layers that may be stored elsewhere (OCI non-distributable, Docker foreign).
const FOREIGN_LAYER_TYPES: [&str; 4] = [
    media_type::OCI_LAYER_NONDIST_TAR,
    media_type::OCI_LAYER_NONDIST_GZIP,
    media_type::OCI_LAYER_NONDIST_ZSTD,
    media_type::DOCKER_LAYER_FOREIGN_GZIP,
];

/// Distribution's rule for layers with `urls`: only non-distributable layer types may have
/// them, every URL must be http(s) without a fragment and match a configured pattern, and
/// then the blob need not be pushed. `Ok(false)`: an ordinary layer, which must be present.
fn foreign_layer(reg: &Registry, layer: &Descriptor) -> Result<bool, ApiError> {
    let urls = layer.urls.as_deref().unwrap_or_default();
    if urls.is_empty() {
        return Ok(false);
    }
    let invalid = |why: String| {
        Err(ApiError::manifest_invalid(why)
            .with_detail(json!({ "digest": layer.digest.to_string(), "urls": urls })))
    };
    if !FOREIGN_LAYER_TYPES.contains(&layer.media_type.as_str()) {
        return invalid(format!(
            "layer {} has `urls` but media type {}; only non-distributable layers may point elsewhere",
            layer.digest, layer.media_type
        ));
    }
    for url in urls {
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        let allowed = reg
            .config
            .foreign_layer_urls
            .iter()
            .any(|r| r.is_match(url));
        if !scheme_ok || url.contains('#') || !allowed {
            return invalid(format!(
                "layer {} points at {url}, which this registry does not allow (allowed: {}); push the layer instead",
                layer.digest,
                if reg.config.foreign_layer_urls.is_empty() {
                    "none".to_owned()
                } else {
                    reg.config
                        .foreign_layer_urls
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    Ok(true)
}

async fn delete_manifest(reg: &Registry, name: &RepoName, reference: &Reference) -> ApiResult {
    let _locked = reg.repo_locks.lock(name).await;
    match reference {
        Reference::Tag(tag) => {
            if !reg.storage.delete_tag(name, tag).await? {
                return Err(ApiError::manifest_unknown(reference));
            }
        }
        Reference::Digest(digest) => {
            if reg
                .storage
                .manifest_media_type(name, digest)
                .await?
                .is_none()
            {
                return Err(ApiError::manifest_unknown(reference));
            }
            // Tags first: no tag may point at a manifest the repository no longer has. Each
            // is deleted only if it still names this digest (another replica may move it).
            untag(reg, name, digest).await?;
            if let Some(bytes) = reg.storage.read_blob_bytes(digest).await?
                && let Ok(parsed) = ParsedManifest::parse(&bytes, None)
                && let Some(subject) = parsed.subject
            {
                reg.storage
                    .remove_referrer(name, &subject.digest, digest)
                    .await?;
            }
            reg.storage.unlink_manifest(name, digest).await?;
            // And again after: a push on another replica may have tagged it in between; it
            // checks the link after tagging, we check the tags after unlinking.
            untag(reg, name, digest).await?;
        }
    }
    Ok(empty(StatusCode::ACCEPTED))
}

/// Deletes every tag of `name` that names `digest`.
async fn untag(reg: &Registry, name: &RepoName, digest: &Digest) -> Result<(), ApiError> {
    for tag in reg.storage.list_tags(name).await?.unwrap_or_default() {
        if reg.storage.get_tag(name, &tag).await?.as_ref() == Some(digest) {
            reg.storage.delete_tag_if(name, &tag, digest).await?;
        }
    }
    Ok(())
}

/// Parses a single `Range: bytes=…` against a blob of `size` bytes. `Ok(None)` means "serve
/// the whole blob": no header, a form we do not serve (several ranges), or an invalid one
/// such as `bytes=2-1` or `bytes=x-1`, which RFC 9110 §14.2 says to ignore. Only a valid range
/// that misses the blob is 416.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        ApiError::range_not_satisfiable(
            "SIZE_INVALID",
            format!("range `{value}` is not satisfiable for a blob of {size} bytes"),
        )
        .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
    };
    let digits = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let Some(n) = digits(suffix) else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => {
            let Some(s) = digits(s) else {
                return Ok(None);
            };
            (s, size.saturating_sub(1))
        }
        (s, e) => {
            let (Some(s), Some(e)) = (digits(s), digits(e)) else {
                return Ok(None);
            };
            if e < s {
                return Ok(None);
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

async fn get_blob(
    reg: &Registry,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let linked = reg.storage.blob_linked(name, digest).await?;
    let visible = linked
        || reg
            .storage
            .manifest_media_type(name, digest)
            .await?
            .is_some();
    if !visible {
        return Err(ApiError::blob_unknown(digest));
    }
    let size = reg
        .storage
        .blob_size(digest)
        .await?
        .ok_or_else(|| ApiError::blob_unknown(digest))?;
    if head {
        // A client checking for a blob is about to rely on it: keep it out of GC's reach.
        if linked {
            reg.storage.link_blob(name, digest).await?;
        }
        // Also the authoritative check: the size may come from a cache.
        if !reg.storage.touch_blob(digest).await? {
            return Err(ApiError::blob_unknown(digest));
        }
        let mut r = empty(StatusCode::OK);
        set(&mut r, "content-length", &size.to_string());
        blob_headers(&mut r, digest);
        return Ok(r);
    }
    if let Some(url) = reg.storage.redirect_url(digest).await? {
        // `--storage-redirect`: the client fetches the bytes from the store itself (and
        // sends its Range header there).
        let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
        set(&mut r, "location", &url);
        set(&mut r, DOCKER_CONTENT_DIGEST, &digest.to_string());
        return Ok(r);
    }
    let range = parse_range(headers, size)?;
    let content = reg.storage.read_blob(digest, range).await?;
    let body = match content {
        BlobContent::Bytes(b) => Body::from(b),
        BlobContent::Stream(s) => Body::from_stream(s),
    };
    let mut r = Response::new(body);
    match range {
        Some((start, end)) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(&mut r, "content-length", &(end - start + 1).to_string());
            set(
                &mut r,
                "content-range",
                &format!("bytes {start}-{end}/{size}"),
            );
        }
        None => set(&mut r, "content-length", &size.to_string()),
    }
    blob_headers(&mut r, digest);
    Ok(r)
}

fn blob_headers(r: &mut Response, digest: &Digest) {
    set(r, "content-type", "application/octet-stream");
    set(r, DOCKER_CONTENT_DIGEST, &digest.to_string());
    set(r, "accept-ranges", "bytes");
    set(r, "etag", &format!("\"{digest}\""));
    set(r, "cache-control", "max-age=31536000");
}

async fn delete_blob(reg: &Registry, name: &RepoName, digest: &Digest) -> ApiResult {
    if !reg.storage.unlink_blob(name, digest).await? {
        return Err(ApiError::blob_unknown(digest));
    }
    let mut r = empty(StatusCode::ACCEPTED);
    set(&mut r, DOCKER_CONTENT_DIGEST, &digest.to_string());
    Ok(r)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn upload_accepted(name: &RepoName, id: &str, size: u64, status: StatusCode) -> Response {
    let mut r = empty(status);
    set(
        &mut r,
        "location",
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(&mut r, "range", &range_header(size));
    set(&mut r, DOCKER_UPLOAD_UUID, id);
    r
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, "location", &format!("/v2/{name}/blobs/{digest}"));
    set(&mut r, DOCKER_CONTENT_DIGEST, &digest.to_string());
    r
}

fn parse_digest_param(value: &str) -> Result<Digest, ApiError> {
    value
        .parse()
        .map_err(|e: archway_oci::DigestError| ApiError::digest_invalid(e.to_string()))
}

async fn start_upload(
    reg: &Registry,
    name: &RepoName,
    query: &Query,
    identity: Option<&crate::auth::Grant>,
    req: Request,
) -> ApiResult {
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest_param(mount)?;
        if let Some(from) = query.get("from").and_then(RepoName::parse) {
            let allowed = reg
                .auth
                .as_ref()
                .is_none_or(|a| identity.is_some_and(|g| a.grant_allows(g, &from, Action::Pull)));
            if allowed
                && reg.storage.blob_linked(&from, &digest).await?
                && reg.storage.blob_size(&digest).await?.is_some()
            {
                reg.storage.link_blob(name, &digest).await?;
                reg.storage.touch_blob(&digest).await?;
                return Ok(blob_created(name, &digest));
            }
        }
        // Unknown source (or no access to it): fall back to a regular upload, as the spec says.
    }
    if let Some(digest) = query.get("digest") {
        // Monolithic upload: the whole blob is in this request.
        let digest = parse_digest_param(digest)?;
        let body = body_stream(req.into_body());
        reg.storage.put_blob_stream(name, &digest, body).await?;
        return Ok(blob_created(name, &digest));
    }
    let id = reg.storage.create_upload(name).await?;
    Ok(upload_accepted(name, &id, 0, StatusCode::ACCEPTED))
}

async fn upload_status(reg: &Registry, name: &RepoName, id: &str) -> ApiResult {
    let size = reg.storage.upload_size(name, id).await?;
    Ok(upload_accepted(name, id, size, StatusCode::NO_CONTENT))
}

/// Parses `Content-Range: <start>-<end>` (also tolerating a `bytes ` prefix and `/total`).
fn parse_content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::range_not_satisfiable(
            "BLOB_UPLOAD_INVALID",
            "Content-Range must be `<start>-<end>` (inclusive byte offsets)",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// The length `Content-Range: start-end` announces, `None` when it cannot be represented.
fn range_len(start: u64, end: u64) -> Option<u64> {
    end.checked_sub(start)?.checked_add(1)
}

/// Ends `body` with an error as soon as it carries more than `limit` bytes (the chunk that
/// crosses the limit is not passed on).
fn limit_body(body: ByteStream, limit: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (body, 0u64, false),
        move |(mut body, seen, done)| async move {
            if done {
                return None;
            }
            match body.next().await? {
                Ok(c) if seen + c.len() as u64 <= limit => {
                    let seen = seen + c.len() as u64;
                    Some((Ok(c), (body, seen, false)))
                }
                Ok(_) => Some((
                    Err(std::io::Error::other(format!(
                        "the body is longer than the {limit} bytes its Content-Range announces"
                    ))),
                    (body, seen, true),
                )),
                Err(e) => Some((Err(e), (body, seen, true))),
            }
        },
    ))
}

async fn patch_upload(reg: &Registry, name: &RepoName, id: &str, req: Request) -> ApiResult {
    let range = parse_content_range(req.headers())?;
    let declared = match range {
        Some((start, end)) => Some(range_len(start, end).ok_or_else(|| {
            ApiError::range_not_satisfiable(
                "BLOB_UPLOAD_INVALID",
                format!("Content-Range {start}-{end} is too large"),
            )
        })?),
        None => None,
    };
    if let (Some(n), Some(len)) = (declared, content_length(req.headers()))
        && n != len
    {
        let (start, end) = range.unwrap_or_default();
        return Err(ApiError::range_not_satisfiable(
            "BLOB_UPLOAD_INVALID",
            format!("Content-Range {start}-{end} does not match Content-Length {len}"),
        ));
    }
    let start = range.map(|(s, _)| s);
    let mut body = body_stream(req.into_body());
    if let Some(n) = declared {
        body = limit_body(body, n);
    }
    let size = match reg.storage.append_upload(name, id, start, body).await {
        Ok(size) => size,
        Err(crate::storage::StorageError::UploadOffset { expected, size }) => {
            return Err(ApiError::range_not_satisfiable(
                "BLOB_UPLOAD_INVALID",
                format!(
                    "chunk starts at byte {expected} but the upload holds {size} bytes; resume from byte {size}"
                ),
            )
            .with_header(header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"))
            .with_header(header::RANGE, &range_header(size))
            .with_header(http::HeaderName::from_static(DOCKER_UPLOAD_UUID), id));
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(start), Some(n)) = (start, declared)
        && size != start + n
    {
        return Err(ApiError::blob_upload_invalid(format!(
            "the body carried {} bytes but Content-Range announced {n}; resume from byte {size}",
            size - start
        ))
        .with_header(header::RANGE, &range_header(size)));
    }
    Ok(upload_accepted(name, id, size, StatusCode::ACCEPTED))
}

async fn finish_upload(
    reg: &Registry,
    name: &RepoName,
    id: &str,
    query: &Query,
    req: Request,
) -> ApiResult {
    let digest = query.get("digest").ok_or_else(|| {
        ApiError::digest_invalid("completing an upload needs `?digest=<algorithm:hex>`")
    })?;
    let digest = parse_digest_param(digest)?;
    let has_body = content_length(req.headers()).is_none_or(|n| n > 0);
    if has_body {
        let range = parse_content_range(req.headers())?;
        let mut body = body_stream(req.into_body());
        if let Some((start, end)) = range
            && let Some(n) = range_len(start, end)
        {
            body = limit_body(body, n);
        }
        reg.storage
            .append_upload(name, id, range.map(|(s, _)| s), body)
            .await?;
    }
    reg.storage.commit_upload(name, id, &digest).await?;
    Ok(blob_created(name, &digest))
}

async fn referrers(reg: &Registry, name: &RepoName, digest: &Digest, query: &Query) -> ApiResult {
    let mut manifests = reg.storage.list_referrers(name, digest).await?;
    // Referrers whose manifest was deleted since are not reported.
    let mut live = Vec::with_capacity(manifests.len());
    for d in manifests.drain(..) {
        if reg
            .storage
            .manifest_media_type(name, &d.digest)
            .await?
            .is_some()
        {
            live.push(d);
        }
    }
    let filter = query.get("artifactType");
    if let Some(t) = filter {
        live.retain(|d| d.artifact_type.as_deref() == Some(t));
    }
    let mut index = archway_oci::Index::new_oci();
    index.manifests = live;
    let mut r = Response::new(Body::from(index.to_json()));
    set(&mut r, "content-type", media_type::OCI_INDEX);
    if filter.is_some() {
        set(&mut r, OCI_FILTERS_APPLIED, "artifactType");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: http::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn range_requests() {
        let r = |v: &str| parse_range(&headers(header::RANGE, v), 100);
        assert_eq!(r("bytes=0-9").unwrap(), Some((0, 9)));
        assert_eq!(r("bytes=90-").unwrap(), Some((90, 99)));
        assert_eq!(r("bytes=-10").unwrap(), Some((90, 99)));
        assert_eq!(r("bytes=50-500").unwrap(), Some((50, 99)));
        assert_eq!(r("bytes=0-1,5-6").unwrap(), None);
        assert_eq!(r("items=0-1").unwrap(), None);
        // Invalid ranges are ignored (RFC 9110 §14.2): the whole blob is served.
        for invalid in [
            "bytes=9-2",
            "bytes=x-1",
            "bytes=1-y",
            "bytes=-",
            "bytes=5",
            "bytes=+1-2",
        ] {
            assert_eq!(r(invalid).unwrap(), None, "{invalid}");
        }
        // Valid but unsatisfiable ranges are 416.
        for bad in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            assert_eq!(
                r(bad).unwrap_err().status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{bad}"
            );
        }
    }

    #[test]
    fn content_ranges() {
        let r = |v: &str| parse_content_range(&headers(header::CONTENT_RANGE, v));
        assert_eq!(r("0-99").unwrap(), Some((0, 99)));
        assert_eq!(r("bytes 100-199/*").unwrap(), Some((100, 199)));
        assert!(r("9-1").is_err());
        assert!(r("nonsense").is_err());
        assert_eq!(range_len(0, 99), Some(100));
        assert_eq!(range_len(0, u64::MAX), None);
        assert_eq!(range_len(5, 4), None);
    }

    #[tokio::test]
    async fn bodies_longer_than_their_range_stop_at_the_limit() {
        let collect = |limit| async move {
            let chunks: Vec<std::io::Result<Bytes>> = vec![
                Ok(Bytes::from_static(b"12345")),
                Ok(Bytes::from_static(b"678")),
                Ok(Bytes::from_static(b"9")),
            ];
            let body: ByteStream = Box::pin(futures_util::stream::iter(chunks));
            let mut out = Vec::new();
            let mut failed = false;
            let mut s = limit_body(body, limit);
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => out.extend_from_slice(&c),
                    Err(_) => failed = true,
                }
            }
            (out, failed)
        };
        assert_eq!(collect(9).await, (b"123456789".to_vec(), false));
        assert_eq!(collect(100).await, (b"123456789".to_vec(), false));
        assert_eq!(collect(8).await, (b"12345678".to_vec(), true));
        assert_eq!(collect(6).await, (b"12345".to_vec(), true));
        assert_eq!(collect(0).await, (Vec::new(), true));
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = |s: &str| Query::parse(Some(s));
        let (page, link) = paginate(items.clone(), &q("n=2"), "/p").unwrap();
        assert_eq!(page, vec!["a", "b"]);
        assert_eq!(link.as_deref(), Some("</p?n=2&last=b>; rel=\"next\""));
        let (page, link) = paginate(items.clone(), &q("n=2&last=b"), "/p").unwrap();
        assert_eq!(page, vec!["c", "d"]);
        assert_eq!(link, None);
        let (page, _) = paginate(items.clone(), &q("last=bb"), "/p").unwrap();
        assert_eq!(page, vec!["c", "d"]);
        let (page, _) = paginate(items.clone(), &q("n=0"), "/p").unwrap();
        assert!(page.is_empty());
        assert!(paginate(items, &q("n=-1"), "/p").is_err());
    }
}
