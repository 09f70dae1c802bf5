//! An async client of the coordinator's API, for runners and the CLI.
//!
//! Every call returns a typed [`ApiError`]: the server's own `{"error": …}` answer when it
//! gave one, or what went wrong on the way (unreachable, timed out, not our API).

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

/// What a call to the coordinator can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Archway server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the server refused the credentials: {0}")]
    Unauthorized(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The attempt is no longer this runner's (its lease was lost, or it finished): stop it.
    #[error("the attempt is fenced off: {0}")]
    Fenced(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("{url} did not answer as an Archway server does ({status}): {message}")]
    Protocol {
        url: String,
        status: u16,
        message: String,
    },
}

impl ApiError {
    /// Worth retrying later (network trouble, server restarting, overload).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Unreachable { .. } | ApiError::Server { .. } | ApiError::Protocol { .. }
        )
    }
}

/// A client for one server, with one token (admin/user, runner or job token).
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// How long a runner's long poll may wait on the server.
pub const POLL_WAIT: Duration = Duration::from_secs(5);

impl ApiClient {
    /// `base` is the server's URL (`http://127.0.0.1:8700`); trailing slashes are ignored.
    pub fn new(base: &str, token: Option<String>) -> Result<ApiClient, ApiError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::BadRequest(format!(
                "server URL `{base}` must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ApiError::Unreachable {
                url: base.clone(),
                message: e.to_string(),
            })?;
        Ok(ApiClient { base, token, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The same server with another token.
    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            base: self.base.clone(),
            token: Some(token.to_owned()),
            http: self.http.clone(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    fn unreachable(&self, e: reqwest::Error) -> ApiError {
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message = format!("{message}: {s}");
            src = s.source();
        }
        ApiError::Unreachable {
            url: self.base.clone(),
            message,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => b.error.message,
            // HEAD answers carry no body: the status is all there is.
            Err(_) if text.is_empty() => status
                .canonical_reason()
                .unwrap_or("no message")
                .to_ascii_lowercase(),
            Err(_) => {
                return Err(ApiError::Protocol {
                    url: self.base.clone(),
                    status: status.as_u16(),
                    message: text.chars().take(200).collect(),
                });
            }
        };
        Err(match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::FORBIDDEN => ApiError::Forbidden(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::GONE => ApiError::Fenced(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            s if s.is_client_error() => ApiError::BadRequest(message),
            s => ApiError::Server {
                status: s.as_u16(),
                message,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, ApiError> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol {
            url: self.base.clone(),
            status,
            message: format!("unexpected answer: {e}"),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.json(
            self.request(Method::POST, path)
                .timeout(Duration::from_secs(60))
                .json(body),
        )
        .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.json(
            self.request(Method::GET, path)
                .timeout(Duration::from_secs(60)),
        )
        .await
    }

    // --- runners ------------------------------------------------------------------------

    pub async fn register_runner(
        &self,
        req: &RegisterRunner,
    ) -> Result<RegisteredRunner, ApiError> {
        self.post("/api/v1/runners/register", req).await
    }

    /// The long poll (runner token): returns when there is work or a cancel for this runner,
    /// or after [`POLL_WAIT`] with nothing.
    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, ApiError> {
        self.json(
            self.request(Method::POST, "/api/v1/runner/poll")
                .timeout(POLL_WAIT + Duration::from_secs(20))
                .json(req),
        )
        .await
    }

    /// Appends log bytes at `offset` (job token). Idempotent: bytes the server already has
    /// are skipped.
    pub async fn append_log(
        &self,
        attempt: i64,
        offset: u64,
        data: Bytes,
    ) -> Result<LogAck, ApiError> {
        self.json(
            self.request(
                Method::PATCH,
                &format!("/api/v1/runner/attempts/{attempt}/log?offset={offset}"),
            )
            .timeout(Duration::from_secs(60))
            .body(data),
        )
        .await
    }

    /// Reports how an attempt ended (job token).
    pub async fn finish(&self, attempt: i64, req: &FinishAttempt) -> Result<(), ApiError> {
        let _: serde_json::Value = self
            .post(&format!("/api/v1/runner/attempts/{attempt}/finish"), req)
            .await?;
        Ok(())
    }

    /// Downloads a source snapshot (job token).
    pub async fn fetch_source(
        &self,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ApiError> {
        let resp = self
            .send(self.request(Method::GET, &format!("/api/v1/runner/sources/{digest}")))
            .await?;
        Ok(resp.bytes_stream())
    }

    /// Uploads the attempt's artifact archive (a gzipped tar, hashing to `digest`) from
    /// `file`, streamed.
    pub async fn upload_artifacts(
        &self,
        attempt: i64,
        digest: &str,
        file: tokio::fs::File,
        expire_in_secs: Option<u64>,
    ) -> Result<(), ApiError> {
        let mut path = format!("/api/v1/runner/attempts/{attempt}/artifacts/{digest}");
        if let Some(s) = expire_in_secs {
            path.push_str(&format!("?expire_in_secs={s}"));
        }
        let stream = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        self.send(
            self.request(Method::PUT, &path)
                .timeout(Duration::from_secs(3600))
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await?;
        Ok(())
    }

    /// An earlier job's artifact archive (with the job token of a job of the same
    /// pipeline).
    pub async fn fetch_artifacts(
        &self,
        job_id: i64,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ApiError> {
        let resp = self
            .send(
                self.request(
                    Method::GET,
                    &format!("/api/v1/runner/jobs/{job_id}/artifacts"),
                )
                .timeout(Duration::from_secs(3600)),
            )
            .await?;
        Ok(resp.bytes_stream())
    }

    /// A job's artifact archive (admin token).
    pub async fn job_artifacts(
        &self,
        job_id: i64,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ApiError> {
        let resp = self
            .send(
                self.request(Method::GET, &format!("/api/v1/jobs/{job_id}/artifacts"))
                    .timeout(Duration::from_secs(3600)),
            )
            .await?;
        Ok(resp.bytes_stream())
    }

    // --- pipelines ----------------------------------------------------------------------

    /// Whether the server has a source snapshot.
    pub async fn has_source(&self, digest: &str) -> Result<bool, ApiError> {
        match self
            .send(self.request(Method::HEAD, &format!("/api/v1/sources/{digest}")))
            .await
        {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound(_)) => Ok(false),
            // HEAD answers have no body to carry the error document.
            Err(ApiError::Protocol { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a source snapshot (a gzipped tar) that must hash to `digest`.
    pub async fn upload_source(&self, digest: &str, data: Vec<u8>) -> Result<(), ApiError> {
        self.send(
            self.request(Method::PUT, &format!("/api/v1/sources/{digest}"))
                .timeout(Duration::from_secs(600))
                .body(data),
        )
        .await?;
        Ok(())
    }

    pub async fn submit_pipeline(&self, req: &SubmitPipeline) -> Result<PipelineView, ApiError> {
        self.post("/api/v1/pipelines", req).await
    }

    pub async fn pipelines(
        &self,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PipelineView>, ApiError> {
        let mut path = format!("/api/v1/pipelines?limit={limit}");
        if let Some(p) = project {
            path.push_str(&format!("&project={}", urlencode(p)));
        }
        self.get(&path).await
    }

    pub async fn pipeline(&self, id: i64) -> Result<PipelineView, ApiError> {
        self.get(&format!("/api/v1/pipelines/{id}")).await
    }

    pub async fn cancel_pipeline(&self, id: i64) -> Result<PipelineView, ApiError> {
        self.post(&format!("/api/v1/pipelines/{id}/cancel"), &())
            .await
    }

    pub async fn retry_pipeline(&self, id: i64) -> Result<PipelineView, ApiError> {
        self.post(&format!("/api/v1/pipelines/{id}/retry"), &())
            .await
    }

    pub async fn job(&self, id: i64) -> Result<JobView, ApiError> {
        self.get(&format!("/api/v1/jobs/{id}")).await
    }

    /// `retry`, `cancel` or `play`.
    pub async fn job_action(&self, id: i64, action: &str) -> Result<JobView, ApiError> {
        self.post(&format!("/api/v1/jobs/{id}/{action}"), &()).await
    }

    /// A job's log: every attempt in order, each after a header line. With `follow`, the
    /// stream stays open and delivers bytes as the runner sends them, until the job is done.
    pub async fn job_log(
        &self,
        id: i64,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ApiError> {
        let mut rb = self.request(
            Method::GET,
            &format!("/api/v1/jobs/{id}/log?follow={follow}"),
        );
        if !follow {
            rb = rb.timeout(Duration::from_secs(120));
        }
        let resp = self.send(rb).await?;
        Ok(resp.bytes_stream())
    }

    pub async fn runners(&self) -> Result<Vec<RunnerView>, ApiError> {
        self.get("/api/v1/runners").await
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Full-jitter exponential backoff for reconnecting: attempt 0 waits up to `base`, each later
/// one up to twice as long, never more than `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .as_millis() as u64;
    let ms = rand::random_range(cap / 2..=cap.max(1));
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, base, max);
            assert!(d <= max, "{d:?}");
            let cap = (base * 2u32.pow(attempt.min(16))).min(max);
            assert!(d >= cap / 2, "attempt {attempt}: {d:?} < half of {cap:?}");
        }
    }

    #[test]
    fn server_urls_must_be_http() {
        assert!(ApiClient::new("127.0.0.1:8700", None).is_err());
        let c = ApiClient::new("http://127.0.0.1:8700/", None).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8700");
    }
}
