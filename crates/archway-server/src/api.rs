//! `/api/v1/…`: one handler per endpoint, each authenticating its caller first.
//!
//! * runners: `POST /runners/register` (registration token in the body), `POST /runner/poll`
//!   (runner token), `PATCH /runner/attempts/{id}/log`, `POST /runner/attempts/{id}/finish`,
//!   `GET /runner/sources/{digest}`, `PUT /runner/attempts/{id}/artifacts/{digest}` and
//!   `GET /runner/jobs/{id}/artifacts` (a job of the same pipeline) with the attempt's job
//!   token;
//! * people and scripts (admin token): `HEAD|PUT /sources/{digest}`, `POST|GET /pipelines`,
//!   `GET /pipelines/{id}`, `POST /pipelines/{id}/cancel|retry`, `GET /jobs/{id}`,
//!   `GET /jobs/{id}/log[?follow=true]`, `GET /jobs/{id}/artifacts`,
//!   `POST /jobs/{id}/retry|cancel|play`, `GET /runners`.
//!
//! Request bodies are read with a size limit and parsed by hand, so a malformed body gets a
//! JSON error that says what is wrong, like every other error of the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use archway_api::{
    FinishAttempt, JobStatus, PollRequest, PollResponse, RegisterRunner, SubmitPipeline,
};

use crate::Server;
use crate::coordinator::{JobIdentity, Principal};
use crate::error::CoordError;

/// Largest JSON body (a submitted pipeline with thousands of jobs fits).
const MAX_JSON: usize = 16 * 1024 * 1024;
/// Largest log chunk per request.
const MAX_LOG_CHUNK: usize = 1024 * 1024;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/api/v1/runners/register", post(register))
        .route("/api/v1/runner/poll", post(poll))
        .route(
            "/api/v1/runner/attempts/{id}/log",
            axum::routing::patch(append_log),
        )
        .route("/api/v1/runner/attempts/{id}/finish", post(finish))
        .route("/api/v1/runner/sources/{digest}", get(runner_source))
        .route(
            "/api/v1/runner/attempts/{id}/artifacts/{digest}",
            axum::routing::put(put_artifacts),
        )
        .route("/api/v1/runner/jobs/{id}/artifacts", get(runner_artifacts))
        .route("/api/v1/jobs/{id}/artifacts", get(job_artifacts))
        .route(
            "/api/v1/sources/{digest}",
            axum::routing::head(has_source).put(put_source),
        )
        .route("/api/v1/pipelines", post(submit).get(list_pipelines))
        .route("/api/v1/pipelines/{id}", get(show_pipeline))
        .route("/api/v1/pipelines/{id}/{action}", post(pipeline_action))
        .route("/api/v1/jobs/{id}", get(show_job))
        .route("/api/v1/jobs/{id}/log", get(job_log))
        .route("/api/v1/jobs/{id}/{action}", post(job_action))
        .route("/api/v1/runners", get(list_runners))
        .route("/api/v1/{*rest}", axum::routing::any(unknown))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            observe,
        ))
        .with_state(server)
}

/// Route templates the API has: the only values the `route` label takes.
const ROUTES: [&str; 18] = [
    "/api/v1/runners/register",
    "/api/v1/runner/poll",
    "/api/v1/runner/attempts/{id}/log",
    "/api/v1/runner/attempts/{id}/finish",
    "/api/v1/runner/sources/{digest}",
    "/api/v1/runner/attempts/{id}/artifacts/{digest}",
    "/api/v1/runner/jobs/{id}/artifacts",
    "/api/v1/jobs/{id}/artifacts",
    "/api/v1/sources/{digest}",
    "/api/v1/pipelines",
    "/api/v1/pipelines/{id}",
    "/api/v1/pipelines/{id}/{action}",
    "/api/v1/jobs/{id}",
    "/api/v1/jobs/{id}/log",
    "/api/v1/jobs/{id}/{action}",
    "/api/v1/runners",
    "/api/v1/{*rest}",
    "other",
];

/// Access log (target `archway::access`) and metrics for every API request.
async fn observe(
    State(s): State<Arc<Server>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let start = std::time::Instant::now();
    let method = archway_http::labels::method_label(req.method());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |m| {
            archway_http::labels::route_label(m.as_str(), &ROUTES)
        });
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    s.coord
        .metrics
        .observe_api(method, route, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "archway::access",
        method,
        path = %path,
        route,
        status,
        micros = elapsed.as_micros() as u64,
        "api request"
    );
    resp
}

async fn unknown() -> CoordError {
    CoordError::NotFound(
        "no such API endpoint (see `archway --help` for the commands that use the API)".into(),
    )
}

fn bearer(headers: &HeaderMap) -> Result<&str, CoordError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            CoordError::Unauthorized(
                "this endpoint needs `Authorization: Bearer <token>` (set ARCHWAY_TOKEN or --token)"
                    .into(),
            )
        })?;
    let (scheme, token) = h.split_once(' ').unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(CoordError::Unauthorized(
            "expected `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

async fn admin(s: &Server, headers: &HeaderMap) -> Result<(), CoordError> {
    match s.coord.authenticate(bearer(headers)?).await? {
        Principal::Admin { .. } => Ok(()),
        _ => Err(CoordError::Forbidden(
            "this endpoint needs an admin token (a runner or job token cannot use it)".into(),
        )),
    }
}

async fn runner(s: &Server, headers: &HeaderMap) -> Result<i64, CoordError> {
    match s.coord.authenticate(bearer(headers)?).await? {
        Principal::Runner { runner_id } => Ok(runner_id),
        _ => Err(CoordError::Forbidden(
            "this endpoint needs a runner token".into(),
        )),
    }
}

async fn job_token(
    s: &Server,
    headers: &HeaderMap,
    attempt: i64,
) -> Result<JobIdentity, CoordError> {
    match s.coord.authenticate(bearer(headers)?).await? {
        Principal::Job(j) if j.attempt_id == attempt => Ok(j),
        Principal::Job(_) => Err(CoordError::Forbidden(
            "this job token belongs to another attempt".into(),
        )),
        _ => Err(CoordError::Forbidden(
            "this endpoint needs the attempt's job token".into(),
        )),
    }
}

async fn body<T: DeserializeOwned>(req: Request, limit: usize) -> Result<T, CoordError> {
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            CoordError::TooLarge(format!(
                "request bodies may be at most {} MiB",
                limit / (1024 * 1024)
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CoordError::BadRequest(format!("the request body is not the expected JSON: {e}"))
    })
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    axum::Json(v).into_response()
}

// --- runners -------------------------------------------------------------------------------

async fn register(State(s): State<Arc<Server>>, req: Request) -> Result<Response, CoordError> {
    let r: RegisterRunner = body(req, 64 * 1024).await?;
    let out = s.coord.register_runner(&r).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

async fn poll(State(s): State<Arc<Server>>, req: Request) -> Result<Response, CoordError> {
    let runner_id = runner(&s, req.headers()).await?;
    let p: PollRequest = body(req, 256 * 1024).await?;
    if p.running.len() > 10_000 {
        return Err(CoordError::BadRequest(
            "too many running attempts reported".into(),
        ));
    }
    let cancel = s
        .coord
        .reconcile(runner_id, &p.running, &p.platforms, p.draining, &p.version)
        .await?;
    if !cancel.is_empty() {
        return Ok(json(&PollResponse {
            jobs: vec![],
            cancel,
        }));
    }
    let notify = s.coord.events.runner(runner_id);
    // A poll renews the runner's leases, so it must come back well within a lease period.
    let wait = s.poll_wait.min(s.coord.config.lease_ttl / 3);
    let jobs = if p.free_slots == 0 || p.draining {
        let _ = tokio::time::timeout(wait, notify.notified()).await;
        Vec::new()
    } else {
        let offer = s.coord.runner_offer(runner_id, &p.platforms).await?;
        let ticket = s.dispatcher.register(offer, p.free_slots.min(1000));
        s.coord.events.wake_dispatcher();
        s.dispatcher.wait(ticket, wait, notify.notified()).await
    };
    if !jobs.is_empty() {
        return Ok(json(&PollResponse {
            jobs,
            cancel: vec![],
        }));
    }
    let cancel = s
        .coord
        .reconcile(runner_id, &p.running, &p.platforms, p.draining, &p.version)
        .await?;
    Ok(json(&PollResponse {
        jobs: vec![],
        cancel,
    }))
}

#[derive(serde::Deserialize)]
struct OffsetQuery {
    offset: u64,
}

async fn append_log(
    State(s): State<Arc<Server>>,
    Path(id): Path<i64>,
    Query(q): Query<OffsetQuery>,
    req: Request,
) -> Result<Response, CoordError> {
    job_token(&s, req.headers(), id).await?;
    let data = axum::body::to_bytes(req.into_body(), MAX_LOG_CHUNK)
        .await
        .map_err(|_| CoordError::TooLarge("log chunks may be at most 1 MiB".into()))?;
    let ack = s.coord.append_log(id, q.offset, &data).await?;
    Ok(json(&ack))
}

async fn finish(
    State(s): State<Arc<Server>>,
    Path(id): Path<i64>,
    req: Request,
) -> Result<Response, CoordError> {
    job_token(&s, req.headers(), id).await?;
    let f: FinishAttempt = body(req, 64 * 1024).await?;
    s.coord.end_attempt(id, &f).await?;
    Ok(json(&serde_json::json!({"ok": true})))
}

async fn runner_source(
    State(s): State<Arc<Server>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    let principal = s.coord.authenticate(bearer(&headers)?).await?;
    let Principal::Job(job) = principal else {
        return Err(CoordError::Forbidden(
            "sources are read with a job token".into(),
        ));
    };
    let pipeline = s.coord.pipeline_source(job.pipeline_id).await?;
    if pipeline.as_deref() != Some(digest.as_str()) {
        return Err(CoordError::Forbidden(
            "a job token reads only its own pipeline's source".into(),
        ));
    }
    source_body(&s, &digest).await
}

/// Stores the attempt's artifact archive and records it as its job's artifacts.
async fn put_artifacts(
    State(s): State<Arc<Server>>,
    Path((id, digest)): Path<(i64, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, CoordError> {
    job_token(&s, req.headers(), id).await?;
    let expire_in = match q.get("expire_in_secs") {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            CoordError::BadRequest("expire_in_secs must be a number of seconds".into())
        })?),
        None => None,
    };
    let stream = req.into_body().into_data_stream();
    let size = s.artifacts.put(&digest, stream).await?;
    s.coord.set_artifacts(id, &digest, size, expire_in).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"digest": digest, "size": size})),
    )
        .into_response())
}

/// An earlier job's artifacts, for a job of the same pipeline.
async fn runner_artifacts(
    State(s): State<Arc<Server>>,
    Path(job_id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    let Principal::Job(me) = s.coord.authenticate(bearer(&headers)?).await? else {
        return Err(CoordError::Forbidden(
            "this endpoint needs a job token".into(),
        ));
    };
    let (digest, _, pipeline) = s.coord.job_artifacts(job_id).await?;
    if pipeline != me.pipeline_id {
        return Err(CoordError::Forbidden(
            "a job token reads only the artifacts of its own pipeline's jobs".into(),
        ));
    }
    blob_body(&s.artifacts, &digest).await
}

async fn job_artifacts(
    State(s): State<Arc<Server>>,
    Path(job_id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    let (digest, _, _) = s.coord.job_artifacts(job_id).await?;
    blob_body(&s.artifacts, &digest).await
}

async fn source_body(s: &Server, digest: &str) -> Result<Response, CoordError> {
    blob_body(&s.sources, digest).await
}

async fn blob_body(
    store: &crate::sources::SourceStore,
    digest: &str,
) -> Result<Response, CoordError> {
    // Streamed from the store (64 KiB reads of the file, or the object store's response).
    let (stream, len) = store.read(digest).await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/gzip")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

// --- sources and pipelines -----------------------------------------------------------------

async fn has_source(
    State(s): State<Arc<Server>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    if s.sources.exists(&digest).await? {
        Ok(StatusCode::OK.into_response())
    } else {
        Ok(StatusCode::NOT_FOUND.into_response())
    }
}

async fn put_source(
    State(s): State<Arc<Server>>,
    Path(digest): Path<String>,
    req: Request,
) -> Result<Response, CoordError> {
    admin(&s, req.headers()).await?;
    let stream = req.into_body().into_data_stream();
    let size = s.sources.put(&digest, stream).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"digest": digest, "size": size})),
    )
        .into_response())
}

async fn submit(State(s): State<Arc<Server>>, req: Request) -> Result<Response, CoordError> {
    admin(&s, req.headers()).await?;
    let p: SubmitPipeline = body(req, MAX_JSON).await?;
    if let Some(src) = &p.source
        && !s.sources.exists(src).await?
    {
        return Err(CoordError::BadRequest(format!(
            "source snapshot {src} was not uploaded (PUT /api/v1/sources/{src} first)"
        )));
    }
    let view = s.coord.submit(&p).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn list_pipelines(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    Ok(json(
        &s.coord
            .pipelines(q.get("project").map(String::as_str), limit)
            .await?,
    ))
}

async fn show_pipeline(
    State(s): State<Arc<Server>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    Ok(json(&s.coord.pipeline(id).await?))
}

async fn pipeline_action(
    State(s): State<Arc<Server>>,
    Path((id, action)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    let view = match action.as_str() {
        "cancel" => s.coord.cancel_pipeline(id).await?,
        "retry" => s.coord.retry_pipeline(id).await?,
        a => {
            return Err(CoordError::NotFound(format!(
                "no pipeline action `{a}` (cancel, retry)"
            )));
        }
    };
    Ok(json(&view))
}

async fn show_job(
    State(s): State<Arc<Server>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    Ok(json(&s.coord.job(id).await?))
}

async fn job_action(
    State(s): State<Arc<Server>>,
    Path((id, action)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    let view = match action.as_str() {
        "cancel" => s.coord.cancel_job(id).await?,
        "retry" => s.coord.retry_job(id).await?,
        "play" => s.coord.play_job(id).await?,
        a => {
            return Err(CoordError::NotFound(format!(
                "no job action `{a}` (retry, cancel, play)"
            )));
        }
    };
    Ok(json(&view))
}

async fn list_runners(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    Ok(json(&s.coord.runners().await?))
}

// --- logs ----------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

/// Where a log reader is: which attempt, how far into it, whether its header is out.
struct LogCursor {
    server: Arc<Server>,
    job_id: i64,
    follow: bool,
    part: usize,
    offset: u64,
    header_sent: bool,
    log_rx: tokio::sync::watch::Receiver<u64>,
    state_rx: tokio::sync::watch::Receiver<u64>,
    done: bool,
}

const LOG_READ: usize = 256 * 1024;

impl LogCursor {
    /// The next piece of the log; `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, CoordError>> {
        loop {
            if self.done {
                return None;
            }
            // Mark seen before reading, so a change after the read wakes us.
            self.log_rx.borrow_and_update();
            self.state_rx.borrow_and_update();
            let (status, parts) = match self.server.coord.log_parts(self.job_id).await {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            if let Some(p) = parts.get(self.part) {
                if !self.header_sent {
                    self.header_sent = true;
                    return Some(Ok(Bytes::from(p.header.clone())));
                }
                if self.offset < p.stored {
                    return match self
                        .server
                        .logs
                        .read(p.attempt_id, self.offset, LOG_READ, p.stored)
                        .await
                    {
                        Ok(b) if !b.is_empty() => {
                            self.offset += b.len() as u64;
                            Some(Ok(Bytes::from(b)))
                        }
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    };
                }
                // A running attempt has no footer yet: more may come.
                if let Some(f) = &p.footer {
                    self.part += 1;
                    self.offset = 0;
                    self.header_sent = false;
                    return Some(Ok(Bytes::from(f.clone())));
                }
            }
            let finished = status.is_final()
                || matches!(
                    status,
                    JobStatus::Manual | JobStatus::Created | JobStatus::Skipped
                );
            let all_read = self.part >= parts.len();
            if !self.follow || (finished && all_read) {
                self.done = true;
                if parts.is_empty() {
                    return Some(Ok(Bytes::from(format!(
                        "[archway] job {} is {status}; it has not run yet\n",
                        self.job_id
                    ))));
                }
                continue;
            }
            tokio::select! {
                _ = self.log_rx.changed() => {}
                _ = self.state_rx.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

async fn job_log(
    State(s): State<Arc<Server>>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, CoordError> {
    admin(&s, &headers).await?;
    s.coord.job(id).await?; // 404 before the stream starts
    let cursor = LogCursor {
        log_rx: s.coord.events.subscribe_log(),
        state_rx: s.coord.events.subscribe_state(),
        server: s.clone(),
        job_id: id,
        follow: q.follow,
        part: 0,
        offset: 0,
        header_sent: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        c.next()
            .await
            .map(|item| (item.map_err(|e| std::io::Error::other(e.to_string())), c))
    })
    .boxed();
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
