//! Who may use the built-in registry of `archway server`: the coordinator's own tokens,
//! presented as the password of `docker login` (any user name; jobs use `gitlab-ci-token`, as
//! on GitLab).
//!
//! * an admin token: everything;
//! * a runner token: pull anything (runners pull job and service images);
//! * a job token (`CI_JOB_TOKEN`): pull and push on the pipeline's own project (`group/app`
//!   and `group/app/…`), only while its attempt runs — every request with a registry token
//!   issued to it asks again;
//! * anyone, without credentials: pull the public repositories (`--public-repos GLOB`).

use std::sync::Arc;

use archway_registry::auth::{Action, BoxFuture, ExternalCredentials};
use archway_registry::{AccessPolicy, Auth, Htpasswd};

use crate::coordinator::{Coordinator, Principal};
use crate::tokens::TokenKind;

/// The coordinator's tokens as registry credentials.
#[derive(Debug)]
pub struct CoordinatorCredentials {
    coord: Arc<Coordinator>,
    public: AccessPolicy,
}

/// The registry's authentication for a coordinator: its tokens, plus anonymous pulls of
/// `public` repository globs.
pub fn registry_auth(coord: Arc<Coordinator>, public: &[String]) -> Result<Auth, String> {
    let policy_text: String = public
        .iter()
        .map(|g| format!("anonymous {g} pull\n"))
        .collect();
    let policy = AccessPolicy::parse(&policy_text, std::path::Path::new("--public-repos"))
        .map_err(|e| e.to_string())?;
    let users =
        Htpasswd::parse("", std::path::Path::new("(no users)")).map_err(|e| e.to_string())?;
    let credentials = CoordinatorCredentials {
        coord,
        public: policy.clone(),
    };
    Ok(Auth::new(users, policy, "archway", None).with_external(Arc::new(credentials)))
}

/// The parts of a subject: `admin:<token id>`, `runner:<id>`, `job:<attempt>:<project>`.
fn parse(subject: &str) -> Option<(&str, i64, Option<&str>)> {
    let mut parts = subject.splitn(3, ':');
    let kind = parts.next()?;
    let id = parts.next()?.parse().ok()?;
    Some((kind, id, parts.next()))
}

impl ExternalCredentials for CoordinatorCredentials {
    fn check<'a>(&'a self, _user: &'a str, password: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            TokenKind::of(password)?;
            match self.coord.authenticate(password).await.ok()? {
                Principal::Admin { token_id } => Some(format!("admin:{token_id}")),
                Principal::Runner { runner_id } => Some(format!("runner:{runner_id}")),
                Principal::Job(j) => {
                    if !self.coord.attempt_running(j.attempt_id).await.ok()? {
                        return None;
                    }
                    Some(format!("job:{}:{}", j.attempt_id, j.project))
                }
                Principal::Registration { .. } => None,
            }
        })
    }

    fn allows(&self, subject: &str, repo: &str, action: Action) -> bool {
        let public =
            action == Action::Pull && self.public.allowed(None, repo).contains(&Action::Pull);
        match parse(subject) {
            Some(("admin", _, _)) => true,
            Some(("runner", _, _)) => action == Action::Pull,
            Some(("job", _, Some(project))) => {
                let own = repo == project
                    || repo
                        .strip_prefix(project)
                        .is_some_and(|rest| rest.starts_with('/'));
                (own && matches!(action, Action::Pull | Action::Push)) || public
            }
            _ => public,
        }
    }

    fn catalog(&self, subject: &str) -> bool {
        matches!(parse(subject), Some(("admin", _, _)))
    }

    fn still_valid<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match parse(subject) {
                Some(("admin", id, _)) => self.coord.token_active(id).await.unwrap_or(false),
                Some(("runner", id, _)) => self.coord.runner_active(id).await.unwrap_or(false),
                Some(("job", id, _)) => self.coord.attempt_running(id).await.unwrap_or(false),
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse() {
        assert_eq!(parse("admin:3"), Some(("admin", 3, None)));
        assert_eq!(
            parse("job:12:team/app"),
            Some(("job", 12, Some("team/app")))
        );
        assert_eq!(parse("job:x:team/app"), None);
        assert_eq!(parse("nobody"), None);
    }
}
