//! Request ids and generic 500 answers.
//!
//! [`serve`](crate::serve) gives every request a [`RequestId`] (in the request's extensions,
//! in the `x-request-id` response header, and as the current id while the request is
//! handled). A handler that hits a failure the client cannot act on calls
//! [`internal_error`]: the real error (which may name server paths) goes to the log with the
//! id, and the client gets a generic message with the same id, which an operator can grep for.

use std::fmt;

/// The response header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A random id for one request: 16 lowercase hex characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

tokio::task_local! {
    static CURRENT: RequestId;
}

impl RequestId {
    pub fn generate() -> Self {
        RequestId(rand::random())
    }

    /// The id of the request being handled by this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|id| *id).ok()
    }

    /// Runs `f` with `self` as the current request id.
    pub(crate) async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a client is told about an internal failure: [`fmt::Display`] gives the message.
#[derive(Clone, Copy, Debug)]
pub struct InternalError {
    pub request_id: RequestId,
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal server error (request id {}); the server's log has the details",
            self.request_id
        )
    }
}

/// Logs `error` with the current request id (a fresh one outside a request) and returns the
/// generic answer for the client.
pub fn internal_error(error: &dyn fmt::Display) -> InternalError {
    let request_id = RequestId::current().unwrap_or_else(RequestId::generate);
    tracing::error!(request_id = %request_id, error = %error, "internal server error");
    InternalError { request_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_generic_message_carries_the_current_id_and_not_the_error() {
        let id = RequestId::generate();
        let answer = id
            .scope(async { internal_error(&"open /var/lib/secret/path: Permission denied") })
            .await;
        assert_eq!(answer.request_id, id);
        let text = answer.to_string();
        assert!(text.contains(&id.to_string()), "{text}");
        assert!(!text.contains("/var/lib"), "{text}");
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(RequestId::current(), None);
    }
}
