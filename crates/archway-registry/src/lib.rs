//! Archway's built-in OCI registry: the OCI Distribution Specification v1.1 as an axum
//! [`Router`], over a pluggable [`Storage`].
//!
//! * [`route`]: request path → endpoint;
//! * [`api`]: one handler per endpoint;
//! * [`storage`]: the storage trait and its filesystem backend;
//! * [`auth`]: htpasswd users, access lists and the Docker token flow;
//! * [`gc`]: mark-and-sweep garbage collection with a grace period;
//! * [`metrics`]: Prometheus metrics.
//!
//! The library never prints: it emits `tracing` events (the access log uses the target
//! `archway::access`) and returns typed errors.

pub mod api;
pub mod auth;
pub mod error;
pub mod gc;
pub mod metrics;
pub mod names;
pub mod route;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

pub use auth::{AccessPolicy, Auth, Htpasswd};
pub use error::ApiError;
pub use storage::Storage;
pub use storage::fs::FsStorage;

use crate::route::Route;

/// Largest manifest accepted (distribution and most registries use 4 MiB).
pub const DEFAULT_MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Tunables of a registry instance.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub max_manifest_size: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
        }
    }
}

/// A registry: storage, optional authentication, configuration and metrics.
#[derive(Debug)]
pub struct Registry {
    pub storage: Arc<dyn Storage>,
    pub auth: Option<Auth>,
    pub config: RegistryConfig,
    pub metrics: metrics::Metrics,
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, auth: Option<Auth>, config: RegistryConfig) -> Self {
        Registry {
            storage,
            auth,
            config,
            metrics: metrics::Metrics::new(),
        }
    }

    /// Checks access for a request; `Ok(None)` when authentication is off.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        route: &Route,
        method: &Method,
    ) -> Result<Option<auth::Grant>, ApiError> {
        match &self.auth {
            None => Ok(None),
            Some(a) => a.authorize(headers, route, method).map(Some),
        }
    }

    /// The HTTP application: `/v2/…`, `/token` and `/metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/token", get(token_get).post(token_post))
            .route("/metrics", get(metrics_handler))
            .fallback(api::dispatch)
            .layer(middleware::from_fn_with_state(self.clone(), observe))
            .with_state(self)
    }
}

/// Access log, metrics and the headers every response carries.
async fn observe(State(reg): State<Arc<Registry>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let req = req.map(|b| {
        Body::new(metrics::CountingBody::new(
            b,
            reg.metrics.request_bytes(method.as_str()),
        ))
    });
    let mut resp = next.run(req).await;
    let route = match path.as_str() {
        "/token" => "token",
        "/metrics" => "metrics",
        p => match Route::parse(p) {
            Ok(Some(r)) => r.kind(),
            _ => "other",
        },
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    reg.metrics
        .observe(method.as_str(), route, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "archway::access",
        method = %method,
        path = %target,
        status,
        route,
        micros = elapsed.as_micros() as u64,
        remote = %remote,
        "request"
    );
    let counter = reg.metrics.response_bytes(route);
    resp.map(|b| Body::new(metrics::CountingBody::new(b, counter)))
}

async fn metrics_handler(State(reg): State<Arc<Registry>>) -> Response {
    match reg.storage.list_uploads().await {
        Ok(u) => reg.metrics.set_uploads_in_progress(u.len()),
        Err(e) => tracing::warn!(error = %e, "counting uploads for metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        reg.metrics.encode(),
    )
        .into_response()
}

fn token_response(
    reg: &Registry,
    headers: &HeaderMap,
    password: Option<(&str, &str)>,
    scopes: Vec<String>,
) -> Response {
    let Some(auth) = &reg.auth else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "this registry does not use authentication; no token is needed",
        )
        .into_response();
    };
    let scopes: Vec<auth::Scope> = scopes
        .iter()
        .flat_map(|s| auth::Scope::parse_all(s))
        .collect();
    match auth.issue_token(headers, password, &scopes) {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn token_get(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let q = api::Query::parse(req.uri().query());
    let scopes = q.all("scope").map(str::to_owned).collect();
    token_response(&reg, req.headers(), None, scopes)
}

/// OAuth2 form post (`grant_type=password`), as containerd sends it.
async fn token_post(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                format!("token request body: {e}"),
            )
            .into_response();
        }
    };
    let form = api::Query::parse(std::str::from_utf8(&body).ok());
    let scopes = form.all("scope").map(str::to_owned).collect();
    match form.get("grant_type") {
        Some("password") => {
            let user = form.get("username").unwrap_or_default();
            let pass = form.get("password").unwrap_or_default();
            token_response(&reg, &headers, Some((user, pass)), scopes)
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!(
                "grant_type `{}` is not supported; use `password`, or GET /token with Basic credentials",
                other.unwrap_or("")
            ),
        )
        .into_response(),
    }
}

/// Per-connection read buffer cap. hyper's default (~400 KiB) costs memory with many
/// concurrent pushes; 128 KiB keeps 32 concurrent 64 MiB pushes under distribution's memory
/// with single-connection throughput unchanged (measured with `registry-bench`).
const MAX_READ_BUFFER: usize = 128 * 1024;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `registry` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let app = registry.router();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_READ_BUFFER)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(req.map(Body::new))
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
