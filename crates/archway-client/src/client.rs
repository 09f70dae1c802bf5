//! The registry client: scheme selection, authentication (anonymous, basic, Docker's bearer
//! token flow with several scopes per token), retries with backoff, and the distribution API
//! operations the copier, the manifest tools and the builder need.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archway_oci::{Digest, Reference, media_type};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};

use crate::credentials::{Credentials, DockerConfig};
use crate::error::{ClientError, Result};

/// A stream of blob bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Blobs up to this size are uploaded with a single `PUT`; larger ones are streamed.
pub const MONOLITHIC_MAX: u64 = 8 * 1024 * 1024;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries to reach over plain HTTP or unverified HTTPS (host[:port]); `*` for all.
    /// Loopback registries always use plain HTTP, as docker does.
    pub insecure: Vec<String>,
    /// Attempts after the first for transient failures (429, 5xx, broken connections).
    pub retries: u32,
    /// First backoff delay; doubled on each retry (with jitter).
    pub backoff: Duration,
    /// Where credentials come from.
    pub docker_config: DockerConfig,
    /// Credentials to use instead of the docker config, per registry.
    pub credentials: HashMap<String, Credentials>,
    /// Size of chunks for chunked uploads; `None` streams a large blob in one `PATCH`.
    pub chunk_size: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: Vec::new(),
            retries: 4,
            backoff: Duration::from_millis(200),
            docker_config: DockerConfig::default_location(),
            credentials: HashMap::new(),
            chunk_size: None,
        }
    }
}

#[derive(Clone, Debug)]
enum Auth {
    Basic(String),
    Bearer { header: String, expires: Instant },
}

/// What a client learns as it goes. Every map is bounded ([`MAX_REMEMBERED`] entries, expired
/// tokens dropped first), so a long-lived process (a coordinator, a runner) does not grow: what
/// is forgotten is learnt again on the next request.
#[derive(Default, Debug)]
struct State {
    /// `http` or `https`, once decided per host.
    schemes: HashMap<String, &'static str>,
    /// Per host: the scheme of auth it wants (learned from its first challenge).
    challenges: HashMap<String, Challenge>,
    /// Per host and scope set: the header to send.
    auth: HashMap<(String, String), Auth>,
    /// Per registry: what the docker config (or its credential helper) answered, and when.
    credentials: HashMap<String, (Instant, Option<Credentials>)>,
}

/// Most entries each of a client's caches keeps.
const MAX_REMEMBERED: usize = 256;
/// How long an answer of the docker config or a credential helper is reused.
const CREDENTIALS_TTL: Duration = Duration::from_secs(300);

/// Inserts into a bounded cache: when it is full, `stale` entries go first, then everything.
fn remember<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
    stale: impl Fn(&V) -> bool,
) {
    if map.len() >= MAX_REMEMBERED && !map.contains_key(&key) {
        map.retain(|_, v| !stale(v));
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
    }
    map.insert(key, value);
}

impl Auth {
    fn expired(&self) -> bool {
        matches!(self, Auth::Bearer { expires, .. } if *expires <= Instant::now())
    }
}

#[derive(Clone, Debug)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A registry client. Cheap to clone; clones share connections, tokens and settings.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    http_unverified: reqwest::Client,
    opts: Arc<ClientOptions>,
    state: Arc<Mutex<State>>,
}

/// A manifest as fetched: exact bytes, media type, digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// Result of a cross-repository mount attempt.
#[derive(Debug)]
pub enum Mount {
    Mounted,
    /// The registry started an upload session instead.
    Upload(String),
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(h, p)| {
            !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
        })
        .map_or(host, |(h, _)| h);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn parse_challenge(value: &str) -> Option<(Challenge, Option<String>)> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let mut map = HashMap::new();
    // key="value" pairs separated by commas; values may contain commas inside quotes.
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, remaining) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (&stripped[..end], &stripped[end + 1..]),
                None => (stripped, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        map.insert(k, v.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some((Challenge::Basic, None)),
        "bearer" => Some((
            Challenge::Bearer {
                realm: map.get("realm")?.clone(),
                service: map.get("service").cloned(),
            },
            map.get("scope").cloned(),
        )),
        _ => None,
    }
}

/// `(code, message)` from a registry's JSON error body, if it is one.
fn error_body(bytes: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    let e = &v["errors"][0];
    let code = e["code"].as_str().unwrap_or("").to_owned();
    let message = e["message"].as_str().map(str::to_owned).unwrap_or_else(|| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            .trim()
            .to_owned()
    });
    (code, message)
}

/// The scope a request on `repo` with `actions` needs.
pub fn repo_scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let build = |verify: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(32)
                .redirect(reqwest::redirect::Policy::limited(5))
                .tls_danger_accept_invalid_certs(!verify)
                .build()
                .map_err(|e| ClientError::Protocol(format!("building the HTTP client: {e}")))
        };
        Ok(Client {
            http: build(true)?,
            http_unverified: build(false)?,
            opts: Arc::new(opts),
            state: Arc::default(),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn insecure(&self, host: &str) -> bool {
        self.opts.insecure.iter().any(|h| h == "*" || h == host)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scheme(&self, host: &str) -> &'static str {
        if let Some(s) = self.lock().schemes.get(host) {
            return s;
        }
        if is_loopback(host) { "http" } else { "https" }
    }

    /// Credentials for `registry`: given ones, else the docker config's (read, and any
    /// credential helper run, on a blocking thread; the answer is reused for a while).
    async fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.opts.credentials.get(registry) {
            return Ok(Some(c.clone()));
        }
        if let Some((at, c)) = self.lock().credentials.get(registry)
            && at.elapsed() < CREDENTIALS_TTL
        {
            return Ok(c.clone());
        }
        let (config, name) = (self.opts.docker_config.clone(), registry.to_owned());
        let found = tokio::task::spawn_blocking(move || config.lookup(&name))
            .await
            .map_err(|e| ClientError::Protocol(format!("reading credentials: {e}")))??;
        remember(
            &mut self.lock().credentials,
            registry.to_owned(),
            (Instant::now(), found.clone()),
            |(at, _)| at.elapsed() >= CREDENTIALS_TTL,
        );
        Ok(found)
    }

    fn unreachable(&self, registry: &str, e: &reqwest::Error) -> ClientError {
        let mut message = e.to_string();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        let hint = if is_loopback(registry) || self.insecure(registry) {
            ""
        } else if message.contains("certificate")
            || message.contains("InvalidContentType")
            || message.contains("tls")
        {
            " (for a plain-HTTP or self-signed registry pass --insecure)"
        } else {
            ""
        };
        ClientError::Unreachable {
            registry: registry.to_owned(),
            message,
            hint,
        }
    }

    /// Sends a request built by `build(base_url)`, handling auth challenges, insecure
    /// fallback and (when `replayable`) retries of transient failures.
    pub(crate) async fn send(
        &self,
        registry: &str,
        repository: &str,
        scopes: &[String],
        replayable: bool,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response> {
        let host = if registry == archway_oci::reference::DOCKER_HUB {
            archway_oci::reference::DOCKER_HUB_API
        } else {
            registry
        };
        let scope_key = {
            let mut s = scopes.to_vec();
            s.sort();
            s.join(" ")
        };
        let mut attempt = 0u32;
        let mut authenticated_once = false;
        loop {
            let scheme = self.scheme(host);
            let http = if scheme == "https" && self.insecure(host) {
                &self.http_unverified
            } else {
                &self.http
            };
            let base = format!("{scheme}://{host}");
            let mut rb = build(http, &base);
            let mut auth = self
                .lock()
                .auth
                .get(&(host.to_owned(), scope_key.clone()))
                .cloned();
            let stale = match &auth {
                None => true,
                Some(Auth::Bearer { expires, .. }) => *expires <= Instant::now(),
                Some(Auth::Basic(_)) => false,
            };
            // A host that challenged before will challenge again: authenticate up front
            // instead of paying a 401 round trip for every new scope set.
            let known = if stale {
                self.lock().challenges.get(host).cloned()
            } else {
                None
            };
            if let Some(challenge) = known {
                let fresh = self
                    .authenticate(registry, repository, &challenge, scopes)
                    .await?;
                remember(
                    &mut self.lock().auth,
                    (host.to_owned(), scope_key.clone()),
                    fresh.clone(),
                    Auth::expired,
                );
                auth = Some(fresh);
            }
            match auth {
                Some(Auth::Basic(h)) => rb = rb.header(header::AUTHORIZATION, h),
                Some(Auth::Bearer { header, expires }) if expires > Instant::now() => {
                    rb = rb.header(header::AUTHORIZATION, header)
                }
                _ => {}
            }
            let result = rb.send().await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if scheme == "https"
                        && self.insecure(host)
                        && (e.is_connect() || e.is_request())
                    {
                        // Insecure registries may speak plain HTTP: fall back once.
                        remember(&mut self.lock().schemes, host.to_owned(), "http", |_| false);
                        continue;
                    }
                    if replayable
                        && attempt < self.opts.retries
                        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
                    {
                        self.backoff(attempt, None).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.unreachable(registry, &e));
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated_once {
                authenticated_once = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let Some((challenge, extra_scope)) = challenge else {
                    return Err(ClientError::Unauthorized {
                        registry: registry.to_owned(),
                        repository: repository.to_owned(),
                    });
                };
                remember(
                    &mut self.lock().challenges,
                    host.to_owned(),
                    challenge.clone(),
                    |_| false,
                );
                let mut all_scopes = scopes.to_vec();
                if let Some(s) = extra_scope
                    && !all_scopes.contains(&s)
                    && s.starts_with("repository:")
                    && scopes.is_empty()
                {
                    all_scopes.push(s);
                }
                let auth = self
                    .authenticate(registry, repository, &challenge, &all_scopes)
                    .await?;
                remember(
                    &mut self.lock().auth,
                    (host.to_owned(), scope_key.clone()),
                    auth,
                    Auth::expired,
                );
                continue;
            }
            if replayable
                && attempt < self.opts.retries
                && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                self.backoff(attempt, retry_after).await;
                attempt += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Waits before retry number `attempt` (from 0): exponential with jitter, or what the
    /// server asked for, at most 30 s.
    pub(crate) async fn backoff(&self, attempt: u32, retry_after: Option<Duration>) {
        let base = self.opts.backoff * 2u32.saturating_pow(attempt);
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 2 + 1));
        let delay = retry_after
            .unwrap_or(base + jitter)
            .min(Duration::from_secs(30));
        tracing::debug!(?delay, attempt, "retrying after a transient failure");
        tokio::time::sleep(delay).await;
    }

    async fn authenticate(
        &self,
        registry: &str,
        repository: &str,
        challenge: &Challenge,
        scopes: &[String],
    ) -> Result<Auth> {
        let creds = self.credentials(registry).await?;
        match challenge {
            Challenge::Basic => {
                let c = creds.ok_or_else(|| ClientError::Unauthorized {
                    registry: registry.to_owned(),
                    repository: repository.to_owned(),
                })?;
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.secret));
                Ok(Auth::Basic(format!("Basic {b64}")))
            }
            Challenge::Bearer { realm, service } => {
                let mut query: Vec<(&str, &str)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                for s in scopes {
                    query.push(("scope", s));
                }
                let http = if realm.starts_with("https") && self.insecure(registry) {
                    &self.http_unverified
                } else {
                    &self.http
                };
                let resp = match &creds {
                    Some(c) if c.identity_token => {
                        let mut form: Vec<(&str, &str)> = vec![
                            ("grant_type", "refresh_token"),
                            ("refresh_token", &c.secret),
                            ("client_id", "archway"),
                        ];
                        form.extend(query.iter().copied());
                        http.post(realm).form(&form).send().await
                    }
                    Some(c) => {
                        query.push(("account", &c.username));
                        http.get(realm)
                            .query(&query)
                            .basic_auth(&c.username, Some(&c.secret))
                            .send()
                            .await
                    }
                    None => http.get(realm).query(&query).send().await,
                }
                .map_err(|e| self.unreachable(registry, &e))?;
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| self.unreachable(registry, &e))?;
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    let (_, message) = error_body(&body);
                    return Err(if creds.is_some() {
                        ClientError::BadCredentials {
                            registry: registry.to_owned(),
                            repository: repository.to_owned(),
                            message,
                        }
                    } else {
                        ClientError::Unauthorized {
                            registry: registry.to_owned(),
                            repository: repository.to_owned(),
                        }
                    });
                }
                if !status.is_success() {
                    let (code, message) = error_body(&body);
                    return Err(ClientError::Registry {
                        registry: registry.to_owned(),
                        request: format!("GET {realm}"),
                        status: status.as_u16(),
                        code,
                        message,
                    });
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    ClientError::Protocol(format!(
                        "token endpoint {realm} returned invalid JSON: {e}"
                    ))
                })?;
                let token = t.token.or(t.access_token).ok_or_else(|| {
                    ClientError::Protocol(format!("token endpoint {realm} returned no token"))
                })?;
                // Renew a little early; the spec's default lifetime is 60 s.
                let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).max(10));
                Ok(Auth::Bearer {
                    header: format!("Bearer {token}"),
                    expires: Instant::now() + lifetime - Duration::from_secs(5),
                })
            }
        }
    }

    /// Turns a non-success response into an error naming what was asked.
    async fn fail(&self, r: &Reference, method: &str, path: &str, resp: Response) -> ClientError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = error_body(&body);
        match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            },
            StatusCode::FORBIDDEN => ClientError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                action: if method == "GET" || method == "HEAD" {
                    "pull"
                } else {
                    "push"
                },
                message,
            },
            _ => ClientError::Registry {
                registry: r.registry.clone(),
                request: format!("{method} {path}"),
                status: status.as_u16(),
                code,
                message,
            },
        }
    }

    /// Checks that the registry answers and that the credentials (if any) are accepted.
    pub async fn ping(&self, registry: &str) -> Result<()> {
        let r = Reference::new(registry, "", "");
        let resp = self
            .send(registry, "", &[], true, |http, base| {
                http.get(format!("{base}/v2/"))
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail(&r, "GET", "/v2/", resp).await)
        }
    }

    fn accept_manifests() -> HeaderValue {
        HeaderValue::from_str(&media_type::MANIFEST_TYPES.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("*/*"))
    }

    /// Fetches a manifest and verifies it against its digest (the pinned one, else the
    /// registry's `Docker-Content-Digest`).
    pub async fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest> {
        let reference = r.manifest_reference();
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let scopes = [repo_scope(&r.repository, "pull")];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.get(format!("{base}{path}"))
                    .header(header::ACCEPT, Self::accept_manifests())
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ClientError::NotFound {
                what: "manifest",
                reference: r.to_string(),
                hint: format!("; list the tags with `archway image tags {}`", r.name()),
            });
        }
        if !resp.status().is_success() {
            return Err(self.fail(r, "GET", &path, resp).await);
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.unreachable(&r.registry, &e))?;
        let expected = r.digest.clone().or(header_digest);
        let digest = match expected {
            Some(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if actual != d {
                    return Err(ClientError::DigestMismatch {
                        reference: r.to_string(),
                        expected: d,
                        actual,
                    });
                }
                d
            }
            None => Digest::sha256(&bytes),
        };
        let parsed = archway_oci::ParsedManifest::parse(&bytes, content_type.as_deref()).map_err(
            |source| ClientError::Manifest {
                reference: r.to_string(),
                source,
            },
        )?;
        Ok(FetchedManifest {
            bytes,
            media_type: parsed.media_type,
            digest,
        })
    }

    /// `HEAD` of a manifest: its digest if the reference exists.
    pub async fn manifest_exists(&self, r: &Reference) -> Result<Option<Digest>> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_reference());
        let scopes = [repo_scope(&r.repository, "pull")];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.head(format!("{base}{path}"))
                    .header(header::ACCEPT, Self::accept_manifests())
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or_else(|| r.digest.clone())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(r, "HEAD", &path, resp).await),
        }
    }

    /// Pushes manifest bytes under `reference` (a tag or a digest).
    pub async fn put_manifest(
        &self,
        r: &Reference,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest> {
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let scopes = [repo_scope(&r.repository, "pull,push")];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.put(format!("{base}{path}"))
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(r, "PUT", &path, resp).await);
        }
        Ok(Digest::sha256(&bytes))
    }

    /// Deletes a manifest by tag or digest. `Ok(false)` when the registry does not support
    /// deleting that way (405 / UNSUPPORTED).
    pub async fn delete_manifest(&self, r: &Reference, reference: &str) -> Result<bool> {
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let scopes = [repo_scope(&r.repository, "delete")];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.delete(format!("{base}{path}"))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::METHOD_NOT_ALLOWED => Ok(false),
            StatusCode::NOT_FOUND => Err(ClientError::NotFound {
                what: "manifest",
                reference: format!("{}:{reference}", r.name()),
                hint: String::new(),
            }),
            _ => {
                let e = self.fail(r, "DELETE", &path, resp).await;
                let by_tag = reference.parse::<Digest>().is_err();
                match &e {
                    ClientError::Registry {
                        code, status: 400, ..
                    } if code == "UNSUPPORTED" => Ok(false),
                    // distribution 2.x answers DIGEST_INVALID when asked to delete a tag.
                    ClientError::Registry { status: 400, .. } if by_tag => Ok(false),
                    _ => Err(e),
                }
            }
        }
    }

    /// The size of a blob if the repository has it.
    pub async fn blob_size(
        &self,
        r: &Reference,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<Option<u64>> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self
            .send(&r.registry, &r.repository, scopes, true, |http, base| {
                http.head(format!("{base}{path}"))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(r, "HEAD", &path, resp).await),
        }
    }

    /// Streams a blob from `offset`.
    pub async fn get_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<ByteStream> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let scopes = [repo_scope(&r.repository, "pull")];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                let rb = http.get(format!("{base}{path}"));
                if offset > 0 {
                    rb.header(header::RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        match resp.status() {
            StatusCode::OK if offset == 0 => {}
            StatusCode::PARTIAL_CONTENT if offset > 0 => {}
            StatusCode::NOT_FOUND => {
                return Err(ClientError::NotFound {
                    what: "blob",
                    reference: format!("{}@{digest}", r.name()),
                    hint: String::new(),
                });
            }
            s if s.is_success() => {
                return Err(ClientError::Protocol(format!(
                    "{} answered {s} to a ranged blob request",
                    r.registry
                )));
            }
            _ => return Err(self.fail(r, "GET", &path, resp).await),
        }
        Ok(Box::pin(resp.bytes_stream().map_err(std::io::Error::other)))
    }

    fn location(&self, r: &Reference, resp: &Response) -> Result<String> {
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                ClientError::Protocol(format!("{} sent no Location for an upload", r.registry))
            })
    }

    fn absolute(base: &str, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{base}{location}")
        }
    }

    fn with_digest(url: &str, digest: &Digest) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}digest={digest}")
    }

    /// Tries to mount `digest` from `from` into `r`'s repository (same registry).
    pub async fn mount_blob(&self, r: &Reference, digest: &Digest, from: &str) -> Result<Mount> {
        let path = format!(
            "/v2/{}/blobs/uploads/?mount={digest}&from={from}",
            r.repository
        );
        let scopes = [
            repo_scope(&r.repository, "pull,push"),
            repo_scope(from, "pull"),
        ];
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.post(format!("{base}{path}"))
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(r, &resp)?)),
            _ => Err(self.fail(r, "POST", &path, resp).await),
        }
    }

    /// Starts an upload session; returns its location.
    pub async fn start_upload(&self, r: &Reference, scopes: &[String]) -> Result<String> {
        let path = format!("/v2/{}/blobs/uploads/", r.repository);
        let resp = self
            .send(&r.registry, &r.repository, scopes, true, |http, base| {
                http.post(format!("{base}{path}"))
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.fail(r, "POST", &path, resp).await);
        }
        self.location(r, &resp)
    }

    /// Uploads a blob whose bytes `open(offset)` streams, into an upload session (`location`,
    /// or a new one). Small blobs go in one `PUT`; large ones in one streamed `PATCH` or in
    /// `chunk_size` chunks. The stream must fail rather than end early if the content is not
    /// what `digest` says; the final `PUT` (which makes the blob visible) is only sent after
    /// the whole stream was read.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        location: Option<String>,
        scopes: &[String],
        body: ByteStream,
    ) -> Result<()> {
        let location = match location {
            Some(l) => l,
            None => self.start_upload(r, scopes).await?,
        };
        let host = r.api_host().to_owned();
        let base = format!("{}://{host}", self.scheme(&host));
        let url = Self::absolute(&base, &location);
        let cancel = |this: &Client, url: String| {
            let this = this.clone();
            let r = r.clone();
            let scopes = scopes.to_vec();
            async move {
                let _ = this
                    .send(&r.registry, &r.repository, &scopes, false, |http, _| {
                        http.delete(&url)
                    })
                    .await;
            }
        };
        if size <= MONOLITHIC_MAX {
            // Read it whole (small), then one PUT that can be retried.
            let mut data = Vec::with_capacity(size as usize);
            let mut body = body;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => data.extend_from_slice(&c),
                    Err(e) => {
                        cancel(self, url.clone()).await;
                        return Err(stream_error(r, e));
                    }
                }
            }
            let data = Bytes::from(data);
            let put = Self::with_digest(&url, digest);
            let resp = self
                .send(&r.registry, &r.repository, scopes, true, |http, _| {
                    http.put(&put)
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .body(data.clone())
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(self.fail(r, "PUT", &put, resp).await);
            }
            return Ok(());
        }
        let mut next = url.clone();
        match self.opts.chunk_size {
            None => {
                let cell = Mutex::new(Some(body));
                let resp = self
                    .send(&r.registry, &r.repository, scopes, false, |http, _| {
                        let stream = cell
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take()
                            .unwrap_or_else(|| Box::pin(futures_util::stream::empty()));
                        http.patch(&next)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_LENGTH, size.to_string())
                            .body(reqwest::Body::wrap_stream(stream))
                    })
                    .await;
                let resp = match resp {
                    Ok(resp) => resp,
                    Err(e) => {
                        cancel(self, url.clone()).await;
                        return Err(e);
                    }
                };
                if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT
                {
                    let e = self.fail(r, "PATCH", &next, resp).await;
                    cancel(self, url.clone()).await;
                    return Err(e);
                }
                next = Self::absolute(&base, &self.location(r, &resp).unwrap_or(next));
            }
            Some(chunk_size) => {
                let mut body = body;
                let mut offset = 0u64;
                let mut buf: Vec<u8> = Vec::with_capacity(chunk_size as usize);
                let mut done = false;
                while !done {
                    buf.clear();
                    while (buf.len() as u64) < chunk_size {
                        match body.next().await {
                            Some(Ok(c)) => buf.extend_from_slice(&c),
                            Some(Err(e)) => {
                                cancel(self, url.clone()).await;
                                return Err(stream_error(r, e));
                            }
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                    if buf.is_empty() {
                        break;
                    }
                    let chunk = Bytes::copy_from_slice(&buf);
                    let end = offset + chunk.len() as u64 - 1;
                    let target = next.clone();
                    let resp = self
                        .send(&r.registry, &r.repository, scopes, true, |http, _| {
                            http.patch(&target)
                                .header(header::CONTENT_TYPE, "application/octet-stream")
                                .header(header::CONTENT_RANGE, format!("{offset}-{end}"))
                                .body(chunk.clone())
                        })
                        .await?;
                    if resp.status() != StatusCode::ACCEPTED {
                        let e = self.fail(r, "PATCH", &target, resp).await;
                        cancel(self, url.clone()).await;
                        return Err(e);
                    }
                    next = Self::absolute(&base, &self.location(r, &resp).unwrap_or(target));
                    offset = end + 1;
                }
            }
        }
        let put = Self::with_digest(&next, digest);
        let resp = self
            .send(&r.registry, &r.repository, scopes, true, |http, _| {
                http.put(&put).header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(r, "PUT", &put, resp).await);
        }
        Ok(())
    }

    /// All tags of a repository, following pagination.
    /// The manifests whose `subject` is `digest` (OCI 1.1's referrers API), optionally only
    /// of one `artifactType`; `None` when the registry has no referrers API.
    pub async fn referrers(
        &self,
        r: &Reference,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<archway_oci::Descriptor>>> {
        let mut path = format!("/v2/{}/referrers/{digest}", r.repository);
        if let Some(t) = artifact_type {
            // `+` in a query is a space: encode what is not unreserved.
            let enc: String = t
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            path.push_str(&format!("?artifactType={enc}"));
        }
        let scopes = [repo_scope(&r.repository, "pull")];
        let p = path.clone();
        let resp = self
            .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                http.get(format!("{base}{p}"))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(r, "GET", &path, resp).await);
        }
        let index: archway_oci::Index = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(format!("referrers from {}: {e}", r.registry)))?;
        Ok(Some(index.manifests))
    }

    pub async fn list_tags(&self, r: &Reference) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut path = format!("/v2/{}/tags/list", r.repository);
        let scopes = [repo_scope(&r.repository, "pull")];
        let mut seen = HashSet::new();
        loop {
            let p = path.clone();
            let resp = self
                .send(&r.registry, &r.repository, &scopes, true, |http, base| {
                    http.get(format!("{base}{p}"))
                })
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ClientError::NotFound {
                    what: "repository",
                    reference: r.name(),
                    hint: String::new(),
                });
            }
            if !resp.status().is_success() {
                return Err(self.fail(r, "GET", &path, resp).await);
            }
            let link = next_link(resp.headers());
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let body: Tags = resp
                .json()
                .await
                .map_err(|e| ClientError::Protocol(format!("tag list from {}: {e}", r.registry)))?;
            tags.extend(body.tags.unwrap_or_default());
            match link {
                Some(l) if seen.insert(l.clone()) => path = l,
                _ => break,
            }
        }
        Ok(tags)
    }
}

fn stream_error(r: &Reference, e: std::io::Error) -> ClientError {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<crate::copy::StreamMismatch>() {
            Ok(m) => ClientError::DigestMismatch {
                reference: r.to_string(),
                expected: m.expected,
                actual: m.actual,
            },
            Err(other) => ClientError::Io {
                context: format!("reading blob content for {r}"),
                source: std::io::Error::other(other),
            },
        },
        None => ClientError::Io {
            context: format!("reading blob content for {r}"),
            source: std::io::Error::other("stream failed"),
        },
    }
}

/// The path of a `Link: <...>; rel="next"` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::LINK)?.to_str().ok()?;
    let start = v.find('<')? + 1;
    let end = v[start..].find('>')? + start;
    let url = &v[start..end];
    // Keep only path and query: the host is the registry's.
    let path = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map(|j| &url[i + 3 + j..])?,
        None => url,
    };
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let (c, scope) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        match c {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scope.as_deref(), Some("repository:a/b:pull,push"));
        assert!(matches!(
            parse_challenge(r#"Basic realm="x""#),
            Some((Challenge::Basic, None))
        ));
        assert!(parse_challenge("Negotiate").is_none());
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    /// A registry that answers 503 (then 429 with Retry-After) before serving a manifest, to
    /// check that the client retries transient failures and gives up after its budget.
    async fn flaky_registry(failures: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use http_body_util::Full;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
                            let resp = if n < failures {
                                let status = if n.is_multiple_of(2) { 503 } else { 429 };
                                http::Response::builder()
                                    .status(status)
                                    .header("retry-after", "0")
                                    .body(Full::new(Bytes::new()))
                            } else {
                                http::Response::builder()
                                    .header("content-type", media_type::OCI_INDEX)
                                    .body(Full::new(Bytes::from_static(body)))
                            };
                            Ok::<_, std::convert::Infallible>(resp.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, hits)
    }

    #[test]
    fn caches_are_bounded_and_drop_stale_entries_first() {
        let mut m: HashMap<usize, bool> = HashMap::new();
        for i in 0..MAX_REMEMBERED {
            remember(&mut m, i, i % 2 == 0, |stale| *stale);
        }
        assert_eq!(m.len(), MAX_REMEMBERED);
        // Full: the stale half goes, the new entry stays.
        remember(&mut m, MAX_REMEMBERED, false, |stale| *stale);
        assert_eq!(m.len(), MAX_REMEMBERED / 2 + 1);
        assert!(m.values().all(|stale| !stale));
        // Nothing stale: forget everything rather than grow.
        for i in 0..MAX_REMEMBERED {
            remember(&mut m, 1000 + i, false, |stale| *stale);
        }
        assert!(m.len() <= MAX_REMEMBERED);
    }

    #[tokio::test]
    async fn credentials_are_read_off_the_async_threads_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = DockerConfig::at(&path);
        config
            .store("reg.example", &Credentials::password("alice", "one"))
            .unwrap();
        let client = Client::new(ClientOptions {
            docker_config: config.clone(),
            ..ClientOptions::default()
        })
        .unwrap();
        let first = client.credentials("reg.example").await.unwrap().unwrap();
        assert_eq!(first.secret, "one");
        // The answer is remembered per registry: the file is not read again.
        config
            .store("reg.example", &Credentials::password("alice", "two"))
            .unwrap();
        let again = client.credentials("reg.example").await.unwrap().unwrap();
        assert_eq!(again.secret, "one");
        assert_eq!(client.credentials("other.example").await.unwrap(), None);
    }

    fn quick_client(retries: u32) -> Client {
        Client::new(ClientOptions {
            retries,
            backoff: Duration::from_millis(1),
            docker_config: DockerConfig::at("/nonexistent/config.json"),
            ..ClientOptions::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn retries_transient_failures_then_gives_up() {
        use std::sync::atomic::Ordering;
        let (addr, hits) = flaky_registry(3).await;
        let r: Reference = format!("{addr}/app:1").parse().unwrap();
        let m = quick_client(4).get_manifest(&r).await.unwrap();
        assert_eq!(m.media_type, media_type::OCI_INDEX);
        assert_eq!(hits.load(Ordering::SeqCst), 4);

        let (addr, hits) = flaky_registry(100).await;
        let r: Reference = format!("{addr}/app:1").parse().unwrap();
        let err = quick_client(2).get_manifest(&r).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn pagination_links() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/a/tags/list?n=2&last=b>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://r.io/v2/a/tags/list?last=b>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=b"));
    }
}
