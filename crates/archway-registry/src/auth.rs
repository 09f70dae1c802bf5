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
//! * requests carry `Authorization: Bearer <token>`, or Basic credentials directly.
//!
//! The access list (`--access FILE`) has one rule per line: `<who> <repository-glob> <actions>`,
//! where `who` is a user name, `*` (any authenticated user) or `anonymous`, the glob may use `*`
//! (any characters, `/` included), and actions are a comma list of `pull`, `push`, `delete`
//! or `*`. The first rule whose `who` and glob match decides. Without an access list every
//! authenticated user may do everything and anonymous users nothing.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::names::RepoName;
use crate::route::Route;

/// How long issued tokens stay valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const ISSUER: &str = "archway";

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

    fn verify(&self, user: &str, password: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
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

    /// Whether `user` may list the catalog (any authenticated user, without an access list;
    /// with one, a user who may pull every repository: a rule for `*`).
    fn catalog_allowed(&self, user: Option<&str>) -> bool {
        match &self.rules {
            None => user.is_some(),
            Some(_) => self.allowed(user, "*").contains(&Action::Pull),
        }
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
}

/// What an authenticated request may do.
#[derive(Clone, Debug)]
pub enum Grant {
    /// Basic credentials or an anonymous request: decided by the policy per repository.
    Principal { user: Option<String> },
    /// A bearer token: exactly what its `access` claim lists.
    Token {
        user: String,
        access: Vec<AccessEntry>,
    },
}

impl Grant {
    fn user(&self) -> Option<&str> {
        match self {
            Grant::Principal { user } => user.as_deref(),
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
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    verified: Mutex<HashMap<(String, String), bool>>,
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
        Auth {
            htpasswd,
            policy,
            service: service.into(),
            realm,
            encoding: jsonwebtoken::EncodingKey::from_secret(&secret),
            decoding: jsonwebtoken::DecodingKey::from_secret(&secret),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a user's password, caching the (slow, bcrypt) result.
    fn check_password(&self, user: &str, password: &str) -> bool {
        let key = (
            user.to_owned(),
            archway_oci::Digest::sha256(password.as_bytes()).to_string(),
        );
        if let Some(ok) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *ok;
        }
        let ok = self.htpasswd.verify(user, password);
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }

    /// Basic credentials from a request: `Ok(None)` when none were sent, `Err` when they are
    /// wrong.
    fn basic_user(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(None);
        };
        let Some(b64) = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
        else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ())?;
        let text = String::from_utf8(decoded).map_err(|_| ())?;
        let (user, password) = text.split_once(':').ok_or(())?;
        if self.check_password(user, password) {
            Ok(Some(user.to_owned()))
        } else {
            Err(())
        }
    }

    fn challenge(&self, headers: &HeaderMap, scope: Option<String>, error: Option<&str>) -> String {
        let realm = self.realm.clone().unwrap_or_else(|| {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("http");
            format!("{proto}://{host}/token")
        });
        let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
        if let Some(s) = scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }

    /// Decides whether a request may proceed.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        route: &Route,
        method: &Method,
    ) -> Result<Grant, ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let mut invalid_token = false;
        let grant = if let Some(token) = bearer {
            match self.verify_token(token.trim()) {
                Some(g) => Some(g),
                None => {
                    invalid_token = true;
                    None
                }
            }
        } else {
            match self.basic_user(headers) {
                Ok(Some(user)) => Some(Grant::Principal { user: Some(user) }),
                Ok(None) => None,
                Err(()) => {
                    return Err(self.unauthorized(
                        headers,
                        None,
                        Some("invalid_token"),
                        "wrong user name or password",
                    ));
                }
            }
        };
        let (need, scope) = required(route, method);
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
                None => false,
            },
        };
        if allowed {
            return Ok(grant.unwrap_or(Grant::Principal { user: None }));
        }
        let error = if invalid_token {
            Some("invalid_token")
        } else if grant.is_some() {
            Some("insufficient_scope")
        } else {
            None
        };
        let message = if invalid_token {
            "the bearer token is invalid or expired; request a new one from the token endpoint"
        } else if grant.is_some() {
            "access to the requested resource is not authorized"
        } else {
            "authentication required"
        };
        Err(self.unauthorized(headers, scope, error, message))
    }

    fn unauthorized(
        &self,
        headers: &HeaderMap,
        scope: Option<String>,
        error: Option<&str>,
        message: &str,
    ) -> ApiError {
        let challenge = self.challenge(headers, scope, error);
        ApiError::unauthorized(message).with_header(header::WWW_AUTHENTICATE, &challenge)
    }

    /// Whether `grant` covers `action` on `repo`.
    pub fn grant_allows(&self, grant: &Grant, repo: &RepoName, action: Action) -> bool {
        match grant {
            Grant::Principal { user } => self
                .policy
                .allowed(user.as_deref(), repo.as_str())
                .contains(&action),
            Grant::Token { access, .. } => access.iter().any(|e| {
                e.kind == "repository"
                    && e.name == repo.as_str()
                    && e.actions.iter().any(|a| a == action.as_str() || a == "*")
            }),
        }
    }

    fn verify_token(&self, token: &str) -> Option<Grant> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&[&self.service]);
        v.set_issuer(&[ISSUER]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        Some(Grant::Token {
            user: data.claims.sub,
            access: data.claims.access,
        })
    }

    /// Serves the token endpoint: `authorization` is the request's headers (Basic credentials),
    /// or `password` gives the OAuth2 password-grant credentials.
    pub fn issue_token(
        &self,
        headers: &HeaderMap,
        password: Option<(&str, &str)>,
        scopes: &[Scope],
    ) -> Result<TokenResponse, ApiError> {
        let bad_credentials = || {
            ApiError::unauthorized("wrong user name or password")
                .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"archway\"")
        };
        let user = match password {
            Some((u, p)) if self.check_password(u, p) => Some(u.to_owned()),
            Some(_) => return Err(bad_credentials()),
            None => self.basic_user(headers).map_err(|()| bad_credentials())?,
        };
        let principal = Grant::Principal { user: user.clone() };
        let mut access = Vec::new();
        for s in scopes {
            let actions: Vec<String> = match s.kind.as_str() {
                "repository" => {
                    let Some(repo) = RepoName::parse(&s.name) else {
                        continue;
                    };
                    let allowed = self.policy.allowed(principal.user(), repo.as_str());
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
                    if s.name == "catalog" && self.policy.catalog_allowed(user.as_deref()) =>
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
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| ApiError::internal(format!("signing token: {e}")))?;
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

    #[test]
    fn challenges_anonymous_and_accepts_basic_credentials() {
        let a = auth(AccessPolicy::open_to_users(false));
        let mut anon = HeaderMap::new();
        anon.insert(header::HOST, HeaderValue::from_static("reg:5000"));
        let err = a
            .authorize(&anon, &manifest_route("x"), &Method::PUT)
            .unwrap_err();
        assert_eq!(err.status, http::StatusCode::UNAUTHORIZED);
        let challenge = err
            .headers
            .iter()
            .find(|(k, _)| k == header::WWW_AUTHENTICATE)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            challenge,
            r#"Bearer realm="http://reg:5000/token",service="test",scope="repository:x:pull,push""#
        );
        assert!(
            a.authorize(
                &basic("alice", "secret"),
                &manifest_route("x"),
                &Method::PUT
            )
            .is_ok()
        );
        assert!(
            a.authorize(&basic("alice", "wrong"), &manifest_route("x"), &Method::GET)
                .is_err()
        );
    }

    #[test]
    fn tokens_carry_only_allowed_scopes() {
        let p = AccessPolicy::parse("alice a pull,push\nalice b pull\n", Path::new("acl")).unwrap();
        let a = auth(p);
        let scopes = Scope::parse_all("repository:a:pull,push repository:b:pull,push");
        let t = a
            .issue_token(&basic("alice", "secret"), None, &scopes)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", t.token)).unwrap(),
        );
        assert!(a.authorize(&h, &manifest_route("a"), &Method::PUT).is_ok());
        assert!(a.authorize(&h, &manifest_route("b"), &Method::GET).is_ok());
        let e = a
            .authorize(&h, &manifest_route("b"), &Method::PUT)
            .unwrap_err();
        assert!(
            e.headers
                .iter()
                .any(|(_, v)| v.to_str().unwrap().contains("insufficient_scope"))
        );
        // Wrong password at the token endpoint is refused; a forged token is rejected.
        assert!(
            a.issue_token(&basic("alice", "nope"), None, &scopes)
                .is_err()
        );
        let mut forged = HeaderMap::new();
        forged.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
        );
        assert!(
            a.authorize(&forged, &manifest_route("a"), &Method::GET)
                .is_err()
        );
    }
}
