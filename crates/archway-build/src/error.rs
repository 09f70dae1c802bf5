//! The builder's error type.

use archway_diag::{Diagnostic, Span};

use crate::context::ContextError;

/// Errors of a build (and of the image store under it).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Problems in the Dockerfile or its inputs, found before any work.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("{span}: {message}")]
    Step { span: Span, message: String },
    /// A step failed inside the sandbox; its output is part of the message.
    #[error("{span}: `{command}` failed with exit code {code} on {platform}\n{output}")]
    RunFailed {
        span: Span,
        command: String,
        code: i32,
        platform: String,
        output: String,
    },
    /// The sandbox itself failed (not the step's command).
    #[error("{span}: the sandbox failed running the step on {platform}")]
    Runner {
        span: Span,
        platform: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A base or run image that cannot be used.
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Client(#[from] archway_client::ClientError),
    #[error(transparent)]
    Layout(#[from] archway_oci::layout::LayoutError),
    #[error(transparent)]
    Layer(#[from] archway_oci::layer::LayerError),
    #[error(transparent)]
    Context(#[from] ContextError),
    /// An `ADD` source that could not be downloaded or cloned.
    #[error("fetching {source_name}: {message}")]
    Fetch {
        source_name: String,
        message: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

pub(crate) use archway_oci::error_chain as with_causes;
