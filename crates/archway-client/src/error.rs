//! The client's errors: each names the image or registry involved and says what to do next.

use archway_oci::Digest;

use crate::credentials::CredentialsError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Reference(#[from] archway_oci::ReferenceError),
    #[error(
        "cannot reach registry {registry}: {message}; check that it is running and the address is right{hint}"
    )]
    Unreachable {
        registry: String,
        message: String,
        hint: &'static str,
    },
    #[error(
        "{registry} refused access to {repository} (401 Unauthorized); log in with `archway login {registry}`"
    )]
    Unauthorized {
        registry: String,
        repository: String,
    },
    #[error(
        "{registry} rejected the credentials for {repository}: {message}; check them with `archway login {registry}`"
    )]
    BadCredentials {
        registry: String,
        repository: String,
        message: String,
    },
    #[error("{registry} denied {action} on {repository} (403 Forbidden): {message}")]
    Denied {
        registry: String,
        repository: String,
        action: &'static str,
        message: String,
    },
    #[error("{what} not found: {reference}{hint}")]
    NotFound {
        what: &'static str,
        reference: String,
        hint: String,
    },
    #[error(
        "digest mismatch while copying {reference}: expected {expected}, got {actual}; the source is corrupt or was modified during the copy, nothing was tagged"
    )]
    DigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{registry} answered {status} to {request}: {message}")]
    Registry {
        registry: String,
        /// `METHOD path`
        request: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Layout(#[from] archway_oci::layout::LayoutError),
    #[error("invalid manifest from {reference}")]
    Manifest {
        reference: String,
        #[source]
        source: archway_oci::ManifestError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True for failures worth retrying (network trouble, overload).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Registry { status, .. } => *status == 429 || *status >= 500,
            ClientError::Io { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
