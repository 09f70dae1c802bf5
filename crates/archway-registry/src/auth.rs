//! Authentication and authorisation: htpasswd users, an optional access list, and Docker's
//! token flow.
//!
//! Without `--htpasswd` the registry is open (it refuses to listen on a non-loopback address
//! that way unless told to). With it:
//! * a request without credentials gets `401` and
//!   `WWW-Authenticate: Bearer realm="<origin>/token",service="<service>",scope="repository:<name>:<actions>"`;
//! * `GET /token?service=…&scope=…&scope=…` (HTTP Basic credentials, or none for anonymous)
//!   returns a short-lived HS256 JWT whose `access` claim lists, per repository, the requested
//!   actions the policy allows; `POST /token` accepts the OAuth2 password grant the same way;
//! * requests carry `Authorization: Bearer <token>`, or Basic credentials directly (the
//!   scheme name is case-insensitive, RFC 7235); an invalid or expired token is answered 401,
//!   never treated as anonymous.
//!
//! Password checks (bcrypt) run on a small bounded pool, never on the async threads. Only
//! successes are cached. An unknown user costs the same bcrypt comparison as a known one (a
//! dummy hash at the users' cost), so timing does not tell which names exist. Failures are
//! counted per user and per client address; past [`MAX_FAILURES_PER_USER`] or
//! [`MAX_FAILURES_PER_ADDRESS`] within [`FAILURE_WINDOW`] further checks are refused with 429
//! (a user whose success is cached still gets in).
//!
//! The challenge's realm is `--token-realm` when configured; otherwise it is built from the
//! request's `Host` (only if it is a plain `host[:port]`), over `https` only when a trusted
//! proxy says so with `X-Forwarded-Proto`. Every quoted value is escaped.
//!
//! The access list (`--access FILE`) has one rule per line: `<who> <repository-glob> <actions>`,
//! where `who` is a user name, `*` (any authenticated user) or `anonymous`, the glob may use `*`
//! (any characters, `/` included), and actions are a comma list of `pull`, `push`, `delete`
//! or `*`. The first rule whose `who` and glob match decides. Without an access list every
//! authenticated user may do everything and anonymous users nothing. The catalog lists only
//! the repositories the caller may pull.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use archway_http::{BlockingPool, PoolError};
use base64::Engine as _;
use http::{HeaderMap, Method, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::ApiError;
use crate::jwt::Hs256Key;
use crate::names::RepoName;
use crate::route::Route;

/// How long issued tokens stay valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const ISSUER: &str = "archway";
/// Failed password checks are counted over this window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failed checks for one user name within [`FAILURE_WINDOW`] before further checks are refused.
pub const MAX_FAILURES_PER_USER: u32 = 10;
/// Failed checks from one client address within [`FAILURE_WINDOW`] before further checks are
/// refused.
pub const MAX_FAILURES_PER_ADDRESS: u32 = 30;
/// A cached successful password check is trusted this long.
const SUCCESS_TTL: Duration = Duration::from_secs(600);
/// Entries kept in the success cache and the failure counters (each is pruned, then cleared,
/// past this).
const MAX_ENTRIES: usize = 10_000;
/// bcrypt checks running at once, and callers allowed to wait for one.
const PASSWORD_WORKERS: usize = 2;
const PASSWORD_QUEUE: usize = 64;

/// One action on a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn parse_list(s: &str) -> Option<BTreeSet<Action>> {
        let mut out = BTreeSet::new();
        for a in s.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match a {
                "pull" => {
                    out.insert(Action::Pull);
                }
                "push" => {
                    out.insert(Action::Push);
                }
                "delete" => {
                    out.insert(Action::Delete);
                }
                "*" => out.extend([Action::Pull, Action::Push, Action::Delete]),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Errors loading auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: {reason} (expected `user:$2y$...` as written by `htpasswd -B`; only bcrypt hashes are accepted)"
    )]
    Htpasswd {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{path}:{line}: {reason} (expected `<user|*|anonymous> <repository-glob> <pull,push,delete|*>`)"
    )]
    Access {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Users and their bcrypt hashes from an htpasswd file.
#[derive(Clone)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Htpasswd({} users)", self.users.len())
    }
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthConfigError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| AuthConfigError::Htpasswd {
                path: path.to_owned(),
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (user, hash) = line.split_once(':').ok_or_else(|| err("no `:`"))?;
            if user.is_empty() {
                return Err(err("empty user name"));
            }
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(err("not a bcrypt hash"));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users })
    }

    fn hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// The highest bcrypt cost among the users (`$2y$<cost>$…`), for the dummy comparison.
    fn cost(&self) -> u32 {
        self.users
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(4) // no users: every name is unknown alike
            .clamp(4, 31)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    User(String),
    AnyUser,
    Anonymous,
}

#[derive(Clone, Debug)]
struct Rule {
    who: Who,
    glob: String,
    actions: BTreeSet<Action>,
}

/// Who may do what, from an access-list file or the default policy.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    rules: Option<Vec<Rule>>,
    anonymous_pull: bool,
}

fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n) = (glob.as_bytes(), name.as_bytes());
    let (mut gi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if gi < g.len() && g[gi] == n[ni] {
            gi += 1;
            ni += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

impl AccessPolicy {
    /// Default policy: authenticated users may do everything; anonymous users may pull only if
    /// `anonymous_pull`.
    pub fn open_to_users(anonymous_pull: bool) -> Self {
        AccessPolicy {
            rules: None,
            anonymous_pull,
        }
    }

    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthConfigError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| AuthConfigError::Access {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [who, glob, actions] = parts.as_slice() else {
                return Err(err(format!("{} fields instead of 3", parts.len())));
            };
            let who = match *who {
                "*" => Who::AnyUser,
                "anonymous" => Who::Anonymous,
                u => Who::User(u.to_owned()),
            };
            let actions = Action::parse_list(actions)
                .ok_or_else(|| err(format!("unknown action in `{actions}`")))?;
            rules.push(Rule {
                who,
                glob: (*glob).to_owned(),
                actions,
            });
        }
        Ok(AccessPolicy {
            rules: Some(rules),
            anonymous_pull: false,
        })
    }

    /// Actions `user` (None = anonymous) may perform on `repo`.
    pub fn allowed(&self, user: Option<&str>, repo: &str) -> BTreeSet<Action> {
        let Some(rules) = &self.rules else {
            return match user {
                Some(_) => [Action::Pull, Action::Push, Action::Delete].into(),
                None if self.anonymous_pull => [Action::Pull].into(),
                None => BTreeSet::new(),
            };
        };
        for r in rules {
            let who_matches = match (&r.who, user) {
                (Who::User(u), Some(x)) => u == x,
                (Who::AnyUser, Some(_)) => true,
                (Who::Anonymous, None) => true,
                _ => false,
            };
            if who_matches && glob_match(&r.glob, repo) {
                return r.actions.clone();
            }
        }
        BTreeSet::new()
    }

    /// Whether anonymous clients may pull anything at all (then they may list the catalog,
    /// which shows them only what they may pull).
    fn anonymous_pulls(&self) -> bool {
        match &self.rules {
            None => self.anonymous_pull,
            Some(rules) => rules
                .iter()
                .any(|r| r.who == Who::Anonymous && r.actions.contains(&Action::Pull)),
        }
    }

    /// Whether the catalog may be listed by `user` (any authenticated user; anonymous clients
    /// if they may pull something).
    fn catalog_allowed(&self, user: Option<&str>) -> bool {
        user.is_some() || self.anonymous_pulls()
    }
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessEntry>,
    /// The subject is an [`ExternalCredentials`] one (re-validated on every use).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ext: bool,
}

/// A boxed future (the [`ExternalCredentials`] methods are called through `dyn`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Credentials a host application checks for the registry (the coordinator: admin, runner
/// and job tokens presented as passwords). A successful check names a *subject*; what a
/// subject may do is a pure function of it, and whether it is still valid is asked again on
/// every request that carries a token issued to it (a job token dies with its attempt).
pub trait ExternalCredentials: Send + Sync + fmt::Debug {
    /// The subject these credentials authenticate, if any.
    fn check<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Option<String>>;
    /// Whether `subject` may do `action` on `repo`.
    fn allows(&self, subject: &str, repo: &str, action: Action) -> bool;
    /// Whether `subject` may list the catalog (it then sees what it may pull).
    fn catalog(&self, subject: &str) -> bool;
    /// Whether `subject` is still valid (checked on every request with a token issued to it).
    fn still_valid<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, bool>;
}

/// What an authenticated request may do.
#[derive(Clone, Debug)]
pub enum Grant {
    /// Basic credentials or an anonymous request: decided by the policy per repository.
    Principal { user: Option<String> },
    /// Basic credentials the host application vouched for: decided by it.
    External { subject: String },
    /// A bearer token: exactly what its `access` claim lists.
    Token {
        user: String,
        access: Vec<AccessEntry>,
        /// Issued to an [`ExternalCredentials`] subject.
        external: bool,
    },
}

impl Grant {
    /// The authenticated user, `None` for anonymous requests.
    pub fn user(&self) -> Option<&str> {
        match self {
            Grant::Principal { user } => user.as_deref(),
            Grant::External { subject } => Some(subject),
            Grant::Token { user, .. } => (!user.is_empty()).then_some(user.as_str()),
        }
    }
}

/// The requested scope of a `/token` call: `repository:<name>:<actions>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses one or more space-separated scopes.
    pub fn parse_all(s: &str) -> Vec<Scope> {
        s.split_whitespace()
            .filter_map(|one| {
                let (kind, rest) = one.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(Scope {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    actions: actions.split(',').map(str::to_owned).collect(),
                })
            })
            .collect()
    }
}

/// Registry authentication state.
pub struct Auth {
    htpasswd: Htpasswd,
    policy: AccessPolicy,
    service: String,
    realm: Option<String>,
    trusted_proxies: Vec<IpAddr>,
    /// The registry itself serves HTTPS: the default realm is `https://`.
    tls: bool,
    key: Hs256Key,
    /// Salt of the success cache's keys.
    cache_salt: [u8; 32],
    /// Successful checks: key → when.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Compared against when the user is unknown, so both paths cost one bcrypt check.
    dummy_hash: String,
    failures: FailureCounter,
    pool: BlockingPool,
    password_checks: Counter,
    external: Option<std::sync::Arc<dyn ExternalCredentials>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("htpasswd", &self.htpasswd)
            .field("policy", &self.policy)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The response body of the token endpoint.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Failed password checks per key (`user:<name>`, `addr:<ip>`) in fixed windows.
#[derive(Debug, Default)]
struct FailureCounter {
    counts: Mutex<HashMap<String, (u32, Instant)>>,
}

impl FailureCounter {
    /// How long until `key` may try again, if it used up its failures.
    fn blocked(&self, key: &str, max: u32, now: Instant) -> Option<Duration> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (n, start) = counts.get(key)?;
        let elapsed = now.saturating_duration_since(*start);
        (*n >= max && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn record(&self, key: String, now: Instant) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MAX_ENTRIES && !counts.contains_key(&key) {
            counts.retain(|_, (_, start)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if counts.len() >= MAX_ENTRIES {
                counts.clear();
            }
        }
        let entry = counts.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    /// A header we cannot use: undecodable Basic credentials or an unknown scheme.
    Invalid,
}

/// Parses `Authorization`; the scheme is case-insensitive (RFC 7235).
fn credentials(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(value) = value.to_str() else {
        return Credentials::Invalid;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credentials::Bearer(rest.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Credentials::Invalid;
    }
    let Some(text) = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Credentials::Invalid;
    };
    match text.split_once(':') {
        Some((user, password)) => Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        None => Credentials::Invalid,
    }
}

/// A quoted-string (RFC 9110 §5.6.4): `"` and `\\` escaped, control characters dropped.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A `Host` value fit to build a URL from: `host[:port]` or `[v6][:port]`, nothing else.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 262
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

impl Auth {
    /// `realm` overrides the token URL announced in challenges (default: the request's own
    /// origin + `/token`).
    pub fn new(
        htpasswd: Htpasswd,
        policy: AccessPolicy,
        service: impl Into<String>,
        realm: Option<String>,
    ) -> Self {
        let secret: [u8; 32] = rand::random();
        let dummy_password: [u8; 16] = rand::random();
        let dummy_hash = bcrypt::hash(dummy_password, htpasswd.cost())
            .unwrap_or_else(|e| unreachable!("bcrypt hashes at costs 4-31: {e}"));
        Auth {
            htpasswd,
            policy,
            service: service.into(),
            realm,
            trusted_proxies: Vec::new(),
            tls: false,
            key: Hs256Key::new(&secret),
            cache_salt: rand::random(),
            verified: Mutex::new(HashMap::new()),
            dummy_hash,
            failures: FailureCounter::default(),
            pool: BlockingPool::new("password check", PASSWORD_WORKERS, PASSWORD_QUEUE),
            password_checks: Counter::default(),
            external: None,
        }
    }

    /// Credentials checked by the host application, tried before the htpasswd users.
    pub fn with_external(mut self, external: std::sync::Arc<dyn ExternalCredentials>) -> Self {
        self.external = Some(external);
        self
    }

    /// The subject `user`/`password` authenticate with the host application, if any.
    async fn check_external(&self, user: &str, password: &str) -> Option<String> {
        match &self.external {
            Some(e) => e.check(user, password).await,
            None => None,
        }
    }

    /// Proxies whose `X-Forwarded-Proto` and `X-Forwarded-For` are believed.
    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// The registry serves HTTPS itself (`--tls-cert`): the default token realm is
    /// `https://<Host>/token`.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Counts every bcrypt comparison (dummy ones included); shared with the metrics.
    pub fn password_checks(&self) -> Counter {
        self.password_checks.clone()
    }

    fn trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|p| self.trusted_proxies.contains(&p))
    }

    /// The client's address: the peer, or what a trusted proxy appended to `X-Forwarded-For`.
    fn client_address(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        if self.trusted(peer)
            && let Some(forwarded) = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                // The entry the trusted proxy appended: the last one.
                .next_back()
                .and_then(|a| a.trim().parse().ok())
        {
            return Some(forwarded);
        }
        peer
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.cache_salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Checks a user's password: from the success cache, else (unless this user or address
    /// failed too often) with bcrypt on the password pool.
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<bool, ApiError> {
        let now = Instant::now();
        let key = self.cache_key(user, password);
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) < SUCCESS_TTL)
            {
                return Ok(true);
            }
        }
        let user_key = format!("user:{user}");
        let addr_key = client.map(|a| format!("addr:{a}"));
        let wait = self
            .failures
            .blocked(&user_key, MAX_FAILURES_PER_USER, now)
            .or_else(|| {
                addr_key
                    .as_deref()
                    .and_then(|k| self.failures.blocked(k, MAX_FAILURES_PER_ADDRESS, now))
            });
        if let Some(wait) = wait {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many failed password checks for this user or from this address; wait and try again",
            )
            .with_header(header::RETRY_AFTER, &wait.as_secs().max(1).to_string()));
        }
        let (hash, known) = match self.htpasswd.hash(user) {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let password_owned = password.to_owned();
        let matched = self
            .pool
            .run(move || bcrypt::verify(password_owned, &hash).unwrap_or(false))
            .await
            .map_err(|e| match e {
                PoolError::Busy { .. } => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "too many password checks in progress; try again shortly",
                )
                .with_header(header::RETRY_AFTER, "1"),
                PoolError::Failed { .. } => ApiError::internal(&e),
            })?;
        self.password_checks.inc();
        let ok = matched && known;
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, t| now.saturating_duration_since(*t) < SUCCESS_TTL);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, now);
        } else {
            self.failures.record(user_key, now);
            if let Some(k) = addr_key {
                self.failures.record(k, now);
            }
        }
        Ok(ok)
    }

    fn challenge(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        scope: Option<String>,
        error: Option<&str>,
    ) -> String {
        let realm = self.realm.clone().unwrap_or_else(|| {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| plain_host(h))
                .unwrap_or("localhost");
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .filter(|_| self.trusted(peer))
                .map(str::trim)
                .filter(|p| p.eq_ignore_ascii_case("https"))
                .map_or(if self.tls { "https" } else { "http" }, |_| "https");
            format!("{proto}://{host}/token")
        });
        let mut c = format!(
            "Bearer realm={},service={}",
            quote(&realm),
            quote(&self.service)
        );
        if let Some(s) = scope {
            c.push_str(&format!(",scope={}", quote(&s)));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error={}", quote(e)));
        }
        c
    }

    /// Decides whether a request may proceed. `peer` is the TCP peer's address.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        route: &Route,
        method: &Method,
    ) -> Result<Grant, ApiError> {
        let (need, scope) = required(route, method);
        let refuse = |error: Option<&str>, message: &str| {
            self.unauthorized(headers, peer, scope.clone(), error, message)
        };
        let grant = match credentials(headers) {
            Credentials::None => None,
            Credentials::Bearer(token) => match self.verify_token(&token).await {
                Some(g) => Some(g),
                None => {
                    return Err(refuse(
                        Some("invalid_token"),
                        "the bearer token is invalid or expired; request a new one from the token endpoint",
                    ));
                }
            },
            Credentials::Basic { user, password } => {
                if let Some(subject) = self.check_external(&user, &password).await {
                    Some(Grant::External { subject })
                } else {
                    let client = self.client_address(headers, peer);
                    if !self.check_password(&user, &password, client).await? {
                        return Err(refuse(Some("invalid_token"), "wrong user name or password"));
                    }
                    Some(Grant::Principal { user: Some(user) })
                }
            }
            Credentials::Invalid => {
                return Err(refuse(
                    Some("invalid_request"),
                    "the Authorization header is neither Basic credentials nor a Bearer token",
                ));
            }
        };
        let allowed = match (&grant, &need) {
            (Some(_), Need::Authenticated) => true,
            (None, Need::Authenticated) => false,
            (g, Need::Repo(repo, actions)) => {
                let g = g.clone().unwrap_or(Grant::Principal { user: None });
                actions.iter().all(|a| self.grant_allows(&g, repo, *a))
            }
            (g, Need::Catalog) => match g {
                Some(Grant::Token { access, .. }) => access
                    .iter()
                    .any(|e| e.kind == "registry" && e.name == "catalog"),
                Some(Grant::Principal { user }) => self.policy.catalog_allowed(user.as_deref()),
                Some(Grant::External { subject }) => {
                    self.external.as_ref().is_some_and(|e| e.catalog(subject))
                }
                None => self.policy.catalog_allowed(None),
            },
        };
        if allowed {
            return Ok(grant.unwrap_or(Grant::Principal { user: None }));
        }
        Err(match grant {
            Some(_) => refuse(
                Some("insufficient_scope"),
                "access to the requested resource is not authorized",
            ),
            None => refuse(None, "authentication required"),
        })
    }

    fn unauthorized(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        scope: Option<String>,
        error: Option<&str>,
        message: &str,
    ) -> ApiError {
        let challenge = self.challenge(headers, peer, scope, error);
        ApiError::unauthorized(message).with_header(header::WWW_AUTHENTICATE, &challenge)
    }

    /// Whether `grant` covers `action` on `repo`.
    pub fn grant_allows(&self, grant: &Grant, repo: &RepoName, action: Action) -> bool {
        match grant {
            Grant::Principal { user } => self
                .policy
                .allowed(user.as_deref(), repo.as_str())
                .contains(&action),
            Grant::External { subject } => self
                .external
                .as_ref()
                .is_some_and(|e| e.allows(subject, repo.as_str(), action)),
            Grant::Token { access, .. } => access.iter().any(|e| {
                e.kind == "repository"
                    && e.name == repo.as_str()
                    && e.actions.iter().any(|a| a == action.as_str() || a == "*")
            }),
        }
    }

    /// Whether the catalog shows `repo` to the holder of `grant`: the access rules for its
    /// user (a token's subject) allow pulling it.
    pub fn catalog_shows(&self, grant: &Grant, repo: &RepoName) -> bool {
        let external_subject = match grant {
            Grant::External { subject } => Some(subject),
            Grant::Token {
                user,
                external: true,
                ..
            } => Some(user),
            _ => None,
        };
        if let Some(subject) = external_subject {
            return self
                .external
                .as_ref()
                .is_some_and(|e| e.allows(subject, repo.as_str(), Action::Pull));
        }
        self.policy
            .allowed(grant.user(), repo.as_str())
            .contains(&Action::Pull)
    }

    async fn verify_token(&self, token: &str) -> Option<Grant> {
        let claims: Claims = self.key.verify(token, now_secs()).ok()?;
        if claims.iss != ISSUER || claims.aud != self.service {
            return None;
        }
        if claims.ext {
            // The subject must still be valid (a job token's attempt still running).
            let external = self.external.as_ref()?;
            if !external.still_valid(&claims.sub).await {
                return None;
            }
        }
        Some(Grant::Token {
            user: claims.sub,
            access: claims.access,
            external: claims.ext,
        })
    }

    /// Serves the token endpoint: Basic credentials from `headers`, or `password` with the
    /// OAuth2 password-grant credentials; `peer` is the TCP peer's address.
    pub async fn issue_token(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        password: Option<(&str, &str)>,
        scopes: &[Scope],
    ) -> Result<TokenResponse, ApiError> {
        let bad_credentials = || {
            ApiError::unauthorized("wrong user name or password")
                .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"archway\"")
        };
        let client = self.client_address(headers, peer);
        let presented = match password {
            Some((u, p)) => Some((u.to_owned(), p.to_owned())),
            None => match credentials(headers) {
                Credentials::Basic { user, password } => Some((user, password)),
                Credentials::Invalid => return Err(bad_credentials()),
                // Anonymous (a bearer token is no credential for getting another one).
                Credentials::None | Credentials::Bearer(_) => None,
            },
        };
        let mut external_subject = None;
        if let Some((u, p)) = &presented {
            external_subject = self.check_external(u, p).await;
        }
        let user = match presented {
            _ if external_subject.is_some() => external_subject.clone(),
            Some((u, p)) if self.check_password(&u, &p, client).await? => Some(u),
            Some(_) => return Err(bad_credentials()),
            None => None,
        };
        let principal = Grant::Principal { user: user.clone() };
        let external = external_subject
            .as_ref()
            .and_then(|s| self.external.as_ref().map(|e| (s, e)));
        let mut access = Vec::new();
        for s in scopes {
            let actions: Vec<String> = match s.kind.as_str() {
                "repository" => {
                    let Some(repo) = RepoName::parse(&s.name) else {
                        continue;
                    };
                    let allowed: BTreeSet<Action> = match &external {
                        Some((subject, e)) => [Action::Pull, Action::Push, Action::Delete]
                            .into_iter()
                            .filter(|a| e.allows(subject, repo.as_str(), *a))
                            .collect(),
                        None => self.policy.allowed(principal.user(), repo.as_str()),
                    };
                    s.actions
                        .iter()
                        .filter(|a| match Action::parse_list(a) {
                            Some(set) => !set.is_empty() && set.is_subset(&allowed),
                            None => false,
                        })
                        .cloned()
                        .collect()
                }
                "registry"
                    if s.name == "catalog"
                        && match &external {
                            Some((subject, e)) => e.catalog(subject),
                            None => self.policy.catalog_allowed(user.as_deref()),
                        } =>
                {
                    vec!["*".to_owned()]
                }
                _ => Vec::new(),
            };
            if !actions.is_empty() {
                access.push(AccessEntry {
                    kind: s.kind.clone(),
                    name: s.name.clone(),
                    actions,
                });
            }
        }
        let now = now_secs();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: user.unwrap_or_default(),
            aud: self.service.clone(),
            exp: now + TOKEN_LIFETIME.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
            ext: external.is_some(),
        };
        let token = self.key.sign(&claims);
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: TOKEN_LIFETIME.as_secs(),
            issued_at: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now))
                .to_string(),
        })
    }
}

enum Need {
    Authenticated,
    Catalog,
    Repo(RepoName, Vec<Action>),
}

/// What a request needs, and the scope to announce in a challenge.
fn required(route: &Route, method: &Method) -> (Need, Option<String>) {
    match route {
        Route::Base => (Need::Authenticated, None),
        Route::Catalog => (Need::Catalog, Some("registry:catalog:*".to_owned())),
        _ => {
            let repo = route
                .repository()
                .cloned()
                .unwrap_or_else(|| unreachable!("every other route names a repository"));
            let (actions, announce) = match *method {
                Method::GET | Method::HEAD => match route {
                    Route::Upload(..) => (vec![Action::Push], "pull,push"),
                    _ => (vec![Action::Pull], "pull"),
                },
                Method::DELETE => match route {
                    Route::Upload(..) => (vec![Action::Push], "pull,push"),
                    _ => (vec![Action::Delete], "delete"),
                },
                _ => (vec![Action::Push], "pull,push"),
            };
            let scope = format!("repository:{repo}:{announce}");
            (Need::Repo(repo, actions), Some(scope))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(policy: AccessPolicy) -> Auth {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let ht = Htpasswd::parse(&format!("alice:{hash}\nbob:{hash}\n"), Path::new("h")).unwrap();
        Auth::new(ht, policy, "test", None)
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5000"));
        h
    }

    fn manifest_route(repo: &str) -> Route {
        Route::Manifest(
            RepoName::parse(repo).unwrap(),
            crate::names::Reference::Tag("v1".into()),
        )
    }

    #[test]
    fn htpasswd_and_access_files_are_validated() {
        let e = Htpasswd::parse("alice:{SHA}abc\n", Path::new("h")).unwrap_err();
        assert!(e.to_string().contains("h:1: not a bcrypt hash"), "{e}");
        let e = AccessPolicy::parse("alice team/*\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().contains("acl:1: 2 fields"), "{e}");
        let e = AccessPolicy::parse("alice team/* fly\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().contains("unknown action"), "{e}");
    }

    #[test]
    fn policy_rules_decide_per_repository() {
        let p = AccessPolicy::parse(
            "# comment\nalice team-a/* pull,push\n* public/* pull\nanonymous public/* pull\n",
            Path::new("acl"),
        )
        .unwrap();
        assert_eq!(
            p.allowed(Some("alice"), "team-a/app"),
            [Action::Pull, Action::Push].into()
        );
        assert!(p.allowed(Some("bob"), "team-a/app").is_empty());
        assert_eq!(p.allowed(Some("bob"), "public/x"), [Action::Pull].into());
        assert_eq!(p.allowed(None, "public/x"), [Action::Pull].into());
        assert!(p.allowed(None, "team-a/x").is_empty());
        assert!(glob_match("a/*/c", "a/b/x/c") && !glob_match("a/*", "b/a"));
    }

    #[tokio::test]
    async fn challenges_anonymous_and_accepts_basic_credentials() {
        let a = auth(AccessPolicy::open_to_users(false));
        let mut anon = HeaderMap::new();
        anon.insert(header::HOST, HeaderValue::from_static("reg:5000"));
        let err = a
            .authorize(&anon, None, &manifest_route("x"), &Method::PUT)
            .await
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge_of(&err),
            r#"Bearer realm="http://reg:5000/token",service="test",scope="repository:x:pull,push""#
        );
        let ok = a
            .authorize(
                &basic("alice", "secret"),
                None,
                &manifest_route("x"),
                &Method::PUT,
            )
            .await;
        assert!(ok.is_ok());
        let wrong = a
            .authorize(
                &basic("alice", "wrong"),
                None,
                &manifest_route("x"),
                &Method::GET,
            )
            .await;
        assert!(wrong.is_err());
    }

    fn challenge_of(err: &ApiError) -> String {
        err.headers
            .iter()
            .find(|(k, _)| k == header::WWW_AUTHENTICATE)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn tokens_carry_only_allowed_scopes() {
        let p = AccessPolicy::parse("alice a pull,push\nalice b pull\n", Path::new("acl")).unwrap();
        let a = auth(p);
        let scopes = Scope::parse_all("repository:a:pull,push repository:b:pull,push");
        let t = a
            .issue_token(&basic("alice", "secret"), None, None, &scopes)
            .await
            .unwrap();
        let h = bearer(&t.token);
        assert!(
            a.authorize(&h, None, &manifest_route("a"), &Method::PUT)
                .await
                .is_ok()
        );
        assert!(
            a.authorize(&h, None, &manifest_route("b"), &Method::GET)
                .await
                .is_ok()
        );
        let e = a
            .authorize(&h, None, &manifest_route("b"), &Method::PUT)
            .await
            .unwrap_err();
        assert!(challenge_of(&e).contains("insufficient_scope"));
        // Wrong password at the token endpoint is refused; a forged token is rejected.
        assert!(
            a.issue_token(&basic("alice", "nope"), None, None, &scopes)
                .await
                .is_err()
        );
        let forged = bearer("eyJhbGciOiJIUzI1NiJ9.e30.x");
        assert!(
            a.authorize(&forged, None, &manifest_route("a"), &Method::GET)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_invalid_token_is_refused_even_where_anonymous_may_pull() {
        let a = auth(AccessPolicy::open_to_users(true));
        let anon = HeaderMap::new();
        assert!(
            a.authorize(&anon, None, &manifest_route("x"), &Method::GET)
                .await
                .is_ok()
        );
        let other = Auth::new(
            Htpasswd::parse("", Path::new("h")).unwrap(),
            AccessPolicy::open_to_users(true),
            "test",
            None,
        );
        let foreign = other.issue_token(&anon, None, None, &[]).await.unwrap();
        for token in ["garbage", foreign.token.as_str()] {
            let e = a
                .authorize(&bearer(token), None, &manifest_route("x"), &Method::GET)
                .await
                .unwrap_err();
            assert_eq!(e.status, http::StatusCode::UNAUTHORIZED);
            assert!(challenge_of(&e).contains(r#"error="invalid_token""#));
        }
    }

    #[test]
    fn schemes_are_case_insensitive() {
        let v = base64::engine::general_purpose::STANDARD.encode("alice:pw");
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("{scheme} {v}")).unwrap(),
            );
            assert_eq!(
                credentials(&h),
                Credentials::Basic {
                    user: "alice".into(),
                    password: "pw".into()
                },
                "{scheme}"
            );
        }
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("{scheme}  tok")).unwrap(),
            );
            assert_eq!(
                credentials(&h),
                Credentials::Bearer("tok".into()),
                "{scheme}"
            );
        }
        for bad in ["Negotiate abc", "Basic !!!", "Basic YWxpY2U=", "Bearer"] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(bad).unwrap());
            assert_eq!(credentials(&h), Credentials::Invalid, "{bad}");
        }
        assert_eq!(credentials(&HeaderMap::new()), Credentials::None);
    }

    #[test]
    fn realm_is_quoted_and_built_only_from_plain_hosts() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\r\ny"), r#""xy""#);
        let a = auth(AccessPolicy::open_to_users(false));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("evil\",x=\"y"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        // A bad Host is not used; X-Forwarded-Proto from an untrusted peer is ignored.
        let c = a.challenge(&h, Some([10, 0, 0, 1].into()), None, None);
        assert_eq!(c, r#"Bearer realm="http://localhost/token",service="test""#);
        let a = a.with_trusted_proxies(vec![[10, 0, 0, 1].into()]);
        h.insert(header::HOST, HeaderValue::from_static("reg.example:443"));
        let c = a.challenge(&h, Some([10, 0, 0, 1].into()), None, None);
        assert_eq!(
            c,
            r#"Bearer realm="https://reg.example:443/token",service="test""#
        );
        let c = a.challenge(&h, Some([10, 0, 0, 2].into()), None, None);
        assert!(
            c.starts_with(r#"Bearer realm="http://reg.example:443/token""#),
            "{c}"
        );
        // A configured realm wins, and is quoted too.
        let a = Auth::new(
            Htpasswd::parse("", Path::new("h")).unwrap(),
            AccessPolicy::default(),
            "svc\"",
            Some("https://auth.example/token".into()),
        );
        assert_eq!(
            a.challenge(
                &h,
                None,
                Some("repository:x:pull".into()),
                Some("invalid_token")
            ),
            r#"Bearer realm="https://auth.example/token",service="svc\"",scope="repository:x:pull",error="invalid_token""#
        );
    }

    #[tokio::test]
    async fn failures_are_limited_per_user_and_successes_are_cached() {
        let a = auth(AccessPolicy::open_to_users(false));
        let peer = Some(IpAddr::from([192, 0, 2, 1]));
        let route = manifest_route("x");
        assert!(
            a.authorize(&basic("bob", "secret"), peer, &route, &Method::GET)
                .await
                .is_ok()
        );
        for _ in 0..MAX_FAILURES_PER_USER {
            let e = a
                .authorize(&basic("bob", "wrong"), peer, &route, &Method::GET)
                .await
                .unwrap_err();
            assert_eq!(e.status, http::StatusCode::UNAUTHORIZED);
        }
        let checks = a.password_checks().get();
        let e = a
            .authorize(&basic("bob", "wrong"), peer, &route, &Method::GET)
            .await
            .unwrap_err();
        assert_eq!(e.status, http::StatusCode::TOO_MANY_REQUESTS);
        // Refused without running bcrypt; the cached success still gets in.
        assert!(
            a.authorize(&basic("bob", "secret"), peer, &route, &Method::GET)
                .await
                .is_ok()
        );
        assert_eq!(a.password_checks().get(), checks);
        // Another user from the same address is not locked out yet.
        assert!(
            a.authorize(&basic("alice", "secret"), peer, &route, &Method::GET)
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_dummy_hash_has_the_users_cost() {
        let h5 = bcrypt::hash("x", 5).unwrap();
        let h6 = bcrypt::hash("x", 6).unwrap();
        let ht = Htpasswd::parse(&format!("a:{h5}\nb:{h6}\n"), Path::new("h")).unwrap();
        assert_eq!(ht.cost(), 6);
        let a = Auth::new(ht, AccessPolicy::default(), "s", None);
        assert!(a.dummy_hash.starts_with("$2b$06$"), "{}", a.dummy_hash);
    }
}
