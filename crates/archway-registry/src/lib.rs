//! Archway's built-in OCI registry: the OCI Distribution Specification v1.1 as an axum
//! [`Router`], over a pluggable [`Storage`].
//!
//! * [`route`]: request path → endpoint;
//! * [`api`]: one handler per endpoint;
//! * [`storage`]: the storage trait and its filesystem backend;
//! * [`auth`]: htpasswd users, access lists and the Docker token flow ([`jwt`]: its HS256
//!   tokens);
//! * [`gc`]: mark-and-sweep garbage collection with a grace period, and upload expiry;
//! * [`metrics`]: Prometheus metrics.
//!
//! Serve [`Registry::router`] with `archway_http::serve`, which brings the connection limits
//! (timeouts, connection cap, request ids); spawn [`Registry::expire_uploads`] beside it.
//!
//! The library never prints: it emits `tracing` events (the access log uses the target
//! `archway::access`) and returns typed errors.

pub mod api;
pub mod auth;
pub mod error;
pub mod gc;
pub mod jwt;
pub mod metrics;
pub mod names;
pub mod route;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use crate::names::RepoName;
use crate::route::Route;

/// Largest manifest accepted (distribution and most registries use 4 MiB).
pub const DEFAULT_MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Upload sessions idle for longer than this are removed by the server (distribution's
/// upload purging uses the same age).
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(168 * 3600);

/// Who may read `/metrics` on the registry's own listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone (a registry without authentication).
    Open,
    /// Any authenticated user (Basic credentials or a bearer token).
    Authenticated,
    /// Not served here: metrics have their own listener (`--metrics-listen`).
    Elsewhere,
}

/// Tunables of a registry instance.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub max_manifest_size: usize,
    /// Upload sessions idle for longer than this are removed.
    pub upload_expiry: Duration,
    /// URLs a non-distributable layer may point at instead of being pushed (distribution's
    /// `validation.manifests.urls.allow`); empty: no foreign layers.
    pub foreign_layer_urls: Vec<regex::Regex>,
    pub metrics_access: MetricsAccess,
    /// Accept an index whose children, or a manifest whose blobs, this registry does not have
    /// (`--allow-sparse`; the spec allows it, off by default): what mirroring one platform of
    /// a multi-platform image under its original index digest needs.
    pub allow_sparse: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            upload_expiry: DEFAULT_UPLOAD_EXPIRY,
            foreign_layer_urls: Vec::new(),
            metrics_access: MetricsAccess::Open,
            allow_sparse: false,
        }
    }
}

/// Per-repository locks for operations that read and then write several files (a manifest
/// push and its tag; a manifest delete and the tags naming it), striped so that memory stays
/// fixed whatever the number of repositories.
#[derive(Debug)]
pub struct RepoLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl RepoLocks {
    const STRIPES: usize = 64;

    fn new() -> Self {
        RepoLocks {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Locks `repo`'s stripe until the guard is dropped.
    pub async fn lock(&self, repo: &RepoName) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        repo.hash(&mut h);
        self.stripes[(h.finish() as usize) % Self::STRIPES]
            .lock()
            .await
    }
}

/// A registry: storage, optional authentication, configuration and metrics.
#[derive(Debug)]
pub struct Registry {
    pub storage: Arc<dyn Storage>,
    pub auth: Option<Auth>,
    pub config: RegistryConfig,
    pub metrics: metrics::Metrics,
    pub repo_locks: RepoLocks,
}

/// Route labels of the access log and metrics: every value `observe` can produce.
const ROUTE_LABELS: [&str; 10] = [
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "upload",
    "referrers",
    "token",
    "metrics",
    "other",
];

impl Registry {
    pub fn new(storage: Arc<dyn Storage>, auth: Option<Auth>, config: RegistryConfig) -> Self {
        let metrics = metrics::Metrics::new(auth.as_ref().map(Auth::password_checks));
        Registry {
            storage,
            auth,
            config,
            metrics,
            repo_locks: RepoLocks::new(),
        }
    }

    /// Checks access for a request; `Ok(None)` when authentication is off.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        route: &Route,
        method: &Method,
    ) -> Result<Option<auth::Grant>, ApiError> {
        match &self.auth {
            None => Ok(None),
            Some(a) => a
                .authorize(headers, peer.map(|p| p.ip()), route, method)
                .await
                .map(Some),
        }
    }

    /// The HTTP application: `/v2/…`, `/token` and (unless it has its own listener)
    /// `/metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        let mut router = Router::new().route("/token", get(token_get).post(token_post));
        if self.config.metrics_access != MetricsAccess::Elsewhere {
            router = router.route("/metrics", get(metrics_handler));
        }
        router
            .fallback(api::dispatch)
            .layer(middleware::from_fn_with_state(self.clone(), observe))
            .with_state(self)
    }

    /// `/metrics` alone, for a separate listener (`--metrics-listen`), without credentials.
    pub fn metrics_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_text))
            .with_state(self)
    }

    /// Removes upload sessions idle for longer than the configured expiry, and forgets the
    /// in-memory state of sessions idle for a while, until the process stops. Spawn it next
    /// to the server.
    pub async fn expire_uploads(self: Arc<Self>) {
        let expiry = self.config.upload_expiry;
        let every = (expiry / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match gc::expire_uploads(self.storage.as_ref(), expiry).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "removed expired upload sessions"),
                Err(e) => tracing::warn!(error = %e, "expiring upload sessions"),
            }
            self.storage.forget_idle_uploads(every.min(expiry)).await;
        }
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
    let request_id = archway_http::RequestId::current()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let req = req.map(|b| {
        Body::new(metrics::CountingBody::new(
            b,
            reg.metrics.request_bytes(&method),
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
    let route = archway_http::labels::route_label(route, &ROUTE_LABELS);
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    reg.metrics
        .observe(&method, route, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "archway::access",
        method = %method,
        path = %target,
        status,
        route,
        micros = elapsed.as_micros() as u64,
        remote = %remote,
        request_id = %request_id,
        "request"
    );
    let counter = reg.metrics.response_bytes(route);
    resp.map(|b| Body::new(metrics::CountingBody::new(b, counter)))
}

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// `/metrics` on the registry's listener: with `--htpasswd`, only for authenticated users.
async fn metrics_handler(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    if reg.config.metrics_access == MetricsAccess::Authenticated {
        let grant = reg
            .authorize(req.headers(), peer(&req), &Route::Base, req.method())
            .await;
        match grant {
            Ok(Some(g)) if g.user().is_some() => {}
            // An anonymous token opens /v2/ but not the metrics.
            Ok(_) => {
                return ApiError::unauthorized("/metrics needs a user's credentials")
                    .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"archway metrics\"")
                    .into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    metrics_text(State(reg)).await
}

async fn metrics_text(State(reg): State<Arc<Registry>>) -> Response {
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

async fn token_response(
    reg: &Registry,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
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
    match auth
        .issue_token(headers, peer.map(|p| p.ip()), password, &scopes)
        .await
    {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn token_get(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let q = api::Query::parse(req.uri().query());
    let scopes = q.all("scope").map(str::to_owned).collect();
    token_response(&reg, req.headers(), peer(&req), None, scopes).await
}

/// OAuth2 form post (`grant_type=password`), as containerd sends it.
async fn token_post(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let peer = peer(&req);
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
            token_response(&reg, &headers, peer, Some((user, pass)), scopes).await
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
