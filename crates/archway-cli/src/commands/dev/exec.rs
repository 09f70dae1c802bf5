//! Running things in a dev environment's containers: a command line (`dev exec -- …`,
//! `dev shell`) or a command the file defines (an `exec` command in its container, a
//! `composite` one in order or in parallel), as `dev exec ID` and lifecycle events do.

use std::path::Path;

use anyhow::{Context as _, bail};
use archway_devfile::{Action, Environment, Format, Template};
use archway_sandbox::{Exec, ExecStdio, Sandbox};

use super::plan::{self, Context};
use super::state::{ContainerState, EnvDir};

/// Runs commands in one environment.
pub struct Runner<'a> {
    pub sandbox: &'a Sandbox,
    pub envdir: &'a EnvDir,
    pub env: &'a Environment,
    pub project: &'a Path,
    pub env_id: String,
}

/// What to run in a container, beyond its defaults.
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, after the container's command environment.
    pub env: Vec<String>,
    /// Default: the container's command directory (the project source), else the image's.
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
}

impl Runner<'_> {
    /// Runs `inv` in `container`; its exit code.
    pub fn run_in(&self, container: &str, inv: &Invocation) -> anyhow::Result<i32> {
        let dir = self.envdir.container(container);
        let Some(handle) = dir.live_handle() else {
            let state = dir.state();
            if state == ContainerState::Missing && self.env.container(container).is_none() {
                let names: Vec<&str> = self
                    .env
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                bail!(
                    "this environment has no container `{container}` (it has {})",
                    names.join(", ")
                );
            }
            bail!(
                "container `{container}` is not running (it is {}); start it with `archway dev up`",
                state.label()
            );
        };
        let launch = dir
            .launch()
            .with_context(|| format!("reading {}", dir.launch_path().display()))?;
        let mut env = launch.command_env.clone();
        env.extend(inv.env.iter().cloned());
        let cwd = inv.cwd.clone().or(launch.command_dir.clone());
        let user = inv.user.clone().or(launch.command_user.clone());
        let code = self
            .sandbox
            .exec(
                &handle,
                &Exec {
                    argv: inv.argv.clone(),
                    env,
                    cwd,
                    user,
                    tty: inv.tty,
                },
                ExecStdio::inherit(),
            )
            .with_context(|| format!("running `{}` in `{container}`", inv.argv.join(" ")))?;
        Ok(code)
    }

    /// Runs the file's command `id`; its exit code (the first failure's, for a composite).
    pub fn run_command(&self, id: &str, tty: bool) -> anyhow::Result<i32> {
        self.run_command_at(id, tty, 0)
    }

    fn run_command_at(&self, id: &str, tty: bool, depth: usize) -> anyhow::Result<i32> {
        // The front end refuses cycles; this only bounds a hand-edited state file.
        if depth > 32 {
            bail!("command `{id}`: composite commands nest deeper than 32");
        }
        let Some(cmd) = self.env.command(id) else {
            let ids: Vec<&str> = self.env.commands.iter().map(|c| c.id.as_str()).collect();
            if ids.is_empty() {
                bail!(
                    "no command `{id}`: the file defines no commands (run a command line with `archway dev exec -- COMMAND`)"
                );
            }
            bail!("no command `{id}`; the file defines: {}", ids.join(", "));
        };
        match &cmd.action {
            Action::Exec {
                container,
                command_line,
                working_dir,
                env,
                ..
            } => {
                let launch = self.envdir.container(container).launch();
                let mut vars = launch
                    .as_ref()
                    .map(|l| plan::env_pairs(&l.env))
                    .unwrap_or_default();
                if let Some(l) = &launch {
                    vars.extend(plan::env_pairs(&l.command_env));
                }
                let workspace = launch
                    .as_ref()
                    .and_then(|l| l.command_dir.clone())
                    .unwrap_or_default();
                let host_env = |k: &str| std::env::var(k).ok();
                let ctx = Context {
                    project: self.project,
                    env_id: self.env_id.clone(),
                    local_env: &host_env,
                };
                let expand = |s: &str| {
                    let t = Template::parse(s).0;
                    plan::expand_vars(&plan::expand(&t, &ctx, &vars, &workspace), &vars)
                };
                // A devcontainer.json's command lines name placeholders
                // (`${containerWorkspaceFolder}`) that no shell knows.
                let argv = if matches!(self.env.format, Format::Devcontainer) {
                    command_line
                        .argv()
                        .iter()
                        .map(|a| plan::expand(&Template::parse(a).0, &ctx, &vars, &workspace))
                        .collect()
                } else {
                    command_line.argv()
                };
                let inv = Invocation {
                    argv,
                    env: env
                        .iter()
                        .map(|e| {
                            format!(
                                "{}={}",
                                e.name,
                                plan::expand_vars(
                                    &plan::expand(&e.value, &ctx, &vars, &workspace),
                                    &vars
                                )
                            )
                        })
                        .collect(),
                    cwd: working_dir.as_deref().map(expand),
                    user: None,
                    tty,
                };
                self.run_in(container, &inv)
            }
            Action::Composite {
                commands,
                parallel: false,
            } => {
                for c in commands {
                    let code = self.run_command_at(c, tty, depth + 1)?;
                    if code != 0 {
                        return Ok(code);
                    }
                }
                Ok(0)
            }
            Action::Composite {
                commands,
                parallel: true,
            } => std::thread::scope(|s| {
                let runs: Vec<_> = commands
                    .iter()
                    .map(|c| s.spawn(move || self.run_command_at(c, false, depth + 1)))
                    .collect();
                let mut first = Ok(0);
                for r in runs {
                    let r = r
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a parallel command panicked")));
                    if matches!(first, Ok(0)) {
                        first = match r {
                            Ok(0) => Ok(0),
                            other => other,
                        };
                    }
                }
                first
            }),
            Action::Apply { image } => bail!(
                "command `{id}` builds the image `{image}`: `archway dev up` builds the images the containers use; apply commands are not run by `dev exec`"
            ),
        }
    }
}
