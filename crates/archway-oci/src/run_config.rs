//! What a container runs, the way `docker run` decides it: the image's `ENTRYPOINT`, `CMD`,
//! `Env`, `WorkingDir` and `User`, with the caller's overrides on top, and Docker's default
//! `PATH` when the image sets none. Pure: `archway run`, the builder's RUN steps and the runners
//! all resolve through here.

use crate::config::RuntimeConfig;

/// The `PATH` Docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Adds `PATH=`[`DEFAULT_PATH`] to `env` unless it sets `PATH`.
pub fn ensure_default_path(env: &mut Vec<String>) {
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
}

/// What the caller changes (`docker run --entrypoint … -e … -u … -w … IMAGE COMMAND…`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOverrides {
    /// Replaces the image's `ENTRYPOINT` (and, as with `docker run --entrypoint`, drops its
    /// `CMD`); `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces `CMD` (the arguments after the image); empty keeps the image's.
    pub command: Vec<String>,
    /// `KEY=VALUE` entries; each replaces the image's value of `KEY`.
    pub env: Vec<String>,
    /// Replaces `User` (`name`, `uid`, `uid:gid`).
    pub user: Option<String>,
    /// Replaces `WorkingDir`.
    pub workdir: Option<String>,
}

/// The process to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRun {
    pub argv: Vec<String>,
    /// The image's environment with the overrides applied and a `PATH`, in order.
    pub env: Vec<String>,
    /// The working directory (`/` when neither the image nor the caller sets one).
    pub cwd: String,
    /// `USER` syntax; empty means root.
    pub user: String,
}

/// Why there is nothing to run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunConfigError {
    #[error("the image has no ENTRYPOINT or CMD and no command was given")]
    NoCommand,
    #[error("environment entry `{0}` is not KEY=VALUE")]
    BadEnv(String),
}

/// Resolves what to run from the image's runtime config (`None` for an image without one) and
/// the caller's overrides.
pub fn resolve_run(
    image: Option<&RuntimeConfig>,
    overrides: &RunOverrides,
) -> Result<ResolvedRun, RunConfigError> {
    let image = image.cloned().unwrap_or_default();
    let (entrypoint, default_cmd) = match &overrides.entrypoint {
        Some(e) => (e.clone(), Vec::new()),
        None => (
            image.entrypoint.unwrap_or_default(),
            image.cmd.unwrap_or_default(),
        ),
    };
    let cmd = if overrides.command.is_empty() {
        default_cmd
    } else {
        overrides.command.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(RunConfigError::NoCommand);
    }
    let mut env = image.env.unwrap_or_default();
    for kv in &overrides.env {
        let Some((key, _)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(RunConfigError::BadEnv(kv.clone()));
        };
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(kv.clone());
    }
    ensure_default_path(&mut env);
    let cwd = overrides
        .workdir
        .clone()
        .or(image.working_dir)
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let user = overrides.user.clone().or(image.user).unwrap_or_default();
    Ok(ResolvedRun {
        argv,
        env,
        cwd,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn image() -> RuntimeConfig {
        RuntimeConfig {
            entrypoint: Some(strings(&["/entry"])),
            cmd: Some(strings(&["serve", "--port=80"])),
            env: Some(strings(&["A=1", "PATH=/opt/bin", "B=2"])),
            working_dir: Some("/app".into()),
            user: Some("app".into()),
            ..RuntimeConfig::default()
        }
    }

    /// (overrides, argv, env, cwd, user)
    type Case = (
        RunOverrides,
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
        &'static str,
    );

    #[test]
    fn docker_run_semantics() {
        let cases: Vec<Case> = vec![
            (
                RunOverrides::default(),
                &["/entry", "serve", "--port=80"],
                &["A=1", "PATH=/opt/bin", "B=2"],
                "/app",
                "app",
            ),
            // Arguments replace CMD and follow ENTRYPOINT.
            (
                RunOverrides {
                    command: strings(&["version"]),
                    ..RunOverrides::default()
                },
                &["/entry", "version"],
                &["A=1", "PATH=/opt/bin", "B=2"],
                "/app",
                "app",
            ),
            // --entrypoint drops the image's CMD; env overrides replace in place at the end.
            (
                RunOverrides {
                    entrypoint: Some(strings(&["/bin/sh", "-c"])),
                    command: strings(&["echo hi"]),
                    env: strings(&["A=9", "C=3"]),
                    user: Some("1000:1000".into()),
                    workdir: Some("/tmp".into()),
                },
                &["/bin/sh", "-c", "echo hi"],
                &["PATH=/opt/bin", "B=2", "A=9", "C=3"],
                "/tmp",
                "1000:1000",
            ),
            (
                RunOverrides {
                    entrypoint: Some(Vec::new()),
                    command: strings(&["ls"]),
                    env: strings(&["PATH=/x", "EMPTY="]),
                    ..RunOverrides::default()
                },
                &["ls"],
                &["A=1", "B=2", "PATH=/x", "EMPTY="],
                "/app",
                "app",
            ),
        ];
        for (overrides, argv, env, cwd, user) in cases {
            let r = resolve_run(Some(&image()), &overrides).unwrap();
            assert_eq!(r.argv, strings(argv), "{overrides:?}");
            assert_eq!(r.env, strings(env), "{overrides:?}");
            assert_eq!((r.cwd.as_str(), r.user.as_str()), (cwd, user));
        }
    }

    #[test]
    fn bare_images_get_the_default_path_root_and_slash() {
        let r = resolve_run(
            None,
            &RunOverrides {
                command: strings(&["true"]),
                ..RunOverrides::default()
            },
        )
        .unwrap();
        assert_eq!(r.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!((r.cwd.as_str(), r.user.as_str()), ("/", ""));
        let empty_workdir = RuntimeConfig {
            working_dir: Some(String::new()),
            cmd: Some(strings(&["sh"])),
            ..RuntimeConfig::default()
        };
        let r = resolve_run(Some(&empty_workdir), &RunOverrides::default()).unwrap();
        assert_eq!((r.argv, r.cwd), (strings(&["sh"]), "/".to_owned()));
    }

    #[test]
    fn refuses_nothing_to_run_and_bad_env() {
        assert_eq!(
            resolve_run(None, &RunOverrides::default()),
            Err(RunConfigError::NoCommand)
        );
        let cleared = RunOverrides {
            entrypoint: Some(Vec::new()),
            ..RunOverrides::default()
        };
        assert_eq!(
            resolve_run(Some(&image()), &cleared),
            Err(RunConfigError::NoCommand)
        );
        for bad in ["NOVALUE", "=x"] {
            let o = RunOverrides {
                env: strings(&[bad]),
                ..RunOverrides::default()
            };
            assert_eq!(
                resolve_run(Some(&image()), &o),
                Err(RunConfigError::BadEnv(bad.into()))
            );
        }
    }
}
