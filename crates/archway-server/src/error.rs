//! The coordinator's error type, and how each kind answers over HTTP.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use archway_api::{ErrorBody, ErrorDetail};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The attempt is over or no longer its runner's: nothing from it is accepted.
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The object store kept failing after its retries (throttling, 5xx, timeouts): nothing
    /// was published, the client may try again.
    #[error("{context}: the object store keeps failing: {source}")]
    Unavailable {
        context: String,
        #[source]
        source: object_store::Error,
    },
}

impl From<sqlx::Error> for CoordError {
    fn from(e: sqlx::Error) -> Self {
        CoordError::Db(DbError::Query(e))
    }
}

impl CoordError {
    pub fn status(&self) -> StatusCode {
        match self {
            CoordError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CoordError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CoordError::Forbidden(_) => StatusCode::FORBIDDEN,
            CoordError::NotFound(_) => StatusCode::NOT_FOUND,
            CoordError::Fenced(_) => StatusCode::GONE,
            CoordError::Conflict(_) => StatusCode::CONFLICT,
            CoordError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CoordError::Db(_) | CoordError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            CoordError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CoordError::BadRequest(_) => "BAD_REQUEST",
            CoordError::Unauthorized(_) => "UNAUTHORIZED",
            CoordError::Forbidden(_) => "FORBIDDEN",
            CoordError::NotFound(_) => "NOT_FOUND",
            CoordError::Fenced(_) => "ATTEMPT_FENCED",
            CoordError::Conflict(_) => "CONFLICT",
            CoordError::TooLarge(_) => "TOO_LARGE",
            CoordError::Db(_) | CoordError::Io { .. } => "INTERNAL",
            CoordError::Unavailable { .. } => "UNAVAILABLE",
        }
    }
}

impl IntoResponse for CoordError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if let CoordError::Unavailable { context, .. } = &self {
            // The store's own message (endpoint, bucket) goes to the log only.
            let logged = archway_http::internal_error(&self);
            format!(
                "{context}: the server's storage is unavailable; retry in a moment (request id {})",
                logged.request_id
            )
        } else if status.is_server_error() {
            // Never show database URLs or file paths to a client: log them with the
            // request id instead.
            archway_http::internal_error(&self).to_string()
        } else {
            self.to_string()
        };
        let retry_after = matches!(self, CoordError::Unavailable { .. })
            .then_some([(http::header::RETRY_AFTER, "1")]);
        (
            status,
            retry_after,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code().to_owned(),
                    message,
                },
            }),
        )
            .into_response()
    }
}
