//! Errors as the distribution spec's JSON error envelope:
//! `{"errors":[{"code":"BLOB_UNKNOWN","message":"…","detail":…}]}`.
//!
//! Every client mistake maps to a 4xx with one of the spec's codes; only storage failures
//! (disk full, I/O errors) become 500s, and those say only "internal server error" with the
//! request id: the real error, which names server paths, goes to the log.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde_json::json;

use crate::storage::StorageError;

/// An error response of the registry API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: serde_json::Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn blob_unknown(digest: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        )
        .with_detail(json!({ "digest": digest.to_string() }))
    }

    pub fn blob_upload_unknown(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry (it was completed, cancelled, or never started)",
        )
        .with_detail(json!({ "uuid": id }))
    }

    pub fn blob_upload_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    pub fn manifest_blob_unknown(digest: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("manifest references {digest}, which is not in this repository; push it first"),
        )
        .with_detail(json!({ "digest": digest.to_string() }))
    }

    pub fn manifest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
    }

    pub fn manifest_unknown(reference: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown to registry",
        )
        .with_detail(json!({ "reference": reference.to_string() }))
    }

    pub fn tag_invalid(tag: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            "invalid tag: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
        )
        .with_detail(json!({ "tag": tag }))
    }

    pub fn name_invalid(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid repository name: lowercase letters, digits and separators (. _ __ -) in /-separated components, at most 255 characters",
        )
        .with_detail(json!({ "name": name }))
    }

    pub fn name_unknown(name: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        )
        .with_detail(json!({ "name": name.to_string() }))
    }

    pub fn size_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SIZE_INVALID", message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such endpoint; the API lives under /v2/",
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// A failure the client cannot act on: logged in full with the request id, answered
    /// with a generic message carrying that id.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        let answer = archway_http::internal_error(error);
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            answer.to_string(),
        )
        .with_detail(json!({ "request_id": answer.request_id.to_string() }))
    }

    /// 503 for a storage backend that keeps failing (an object store throttling or down,
    /// after its retries): logged in full with the request id; the client is told to retry.
    pub fn unavailable(error: &dyn std::fmt::Display) -> Self {
        let answer = archway_http::internal_error(error);
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            format!(
                "the registry's storage is unavailable; retry later (request id {})",
                answer.request_id
            ),
        )
        .with_detail(json!({ "request_id": answer.request_id.to_string() }))
        .with_header(header::RETRY_AFTER, "1")
    }

    /// 416 for a chunk that does not start where the upload ends; the `Range` header tells the
    /// client where to resume.
    pub fn range_not_satisfiable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::RANGE_NOT_SATISFIABLE, code, message)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UploadUnknown(id) => ApiError::blob_upload_unknown(&id),
            StorageError::UploadOffset { expected, size } => ApiError::range_not_satisfiable(
                "BLOB_UPLOAD_INVALID",
                format!("chunk starts at byte {expected} but the upload has {size} bytes; resume from there"),
            )
            .with_header(header::RANGE, &crate::api::range_header(size)),
            StorageError::DigestMismatch { expected, actual } => ApiError::digest_invalid(
                format!("uploaded content has digest {actual}, not {expected}"),
            )
            .with_detail(json!({ "expected": expected.to_string(), "actual": actual.to_string() })),
            StorageError::BodyRead(msg) => {
                ApiError::blob_upload_invalid(format!("reading the request body failed: {msg}"))
            }
            StorageError::BlobUnknown(d) => ApiError::blob_unknown(d),
            StorageError::Unavailable { .. } => {
                ApiError::unavailable(&format_args!("storage failure: {}", chain(&e)))
            }
            StorageError::Io { .. } | StorageError::Corrupt(..) | StorageError::Backend { .. } => {
                ApiError::internal(&format_args!("storage failure: {}", chain(&e)))
            }
        }
    }
}

/// An error with its sources, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": self.detail }]
        });
        let mut resp = Response::new(Body::from(body.to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in self.headers {
            h.append(k, v);
        }
        resp
    }
}
