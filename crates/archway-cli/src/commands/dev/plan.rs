//! From the front end's [`Environment`] to what the supervisor starts: placeholders
//! expanded, the project and volumes mounted, the container's process and environment
//! resolved against its image, and the fingerprint that decides restarts. Pure (no I/O
//! beyond the caller's functions), so it is unit-tested here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use archway_devfile::{
    Container, Environment, Format, ImageSource, Part, Placeholder, Template, fingerprint,
};
use archway_oci::run_config::{RunConfigError, RunOverrides, resolve_run};
use archway_oci::{Algorithm, Digester};

use super::state::{LaunchSpec, MountRecord};

/// What the placeholders of a devcontainer.json (and the devfile's variables) refer to.
pub struct Context<'a> {
    /// The repository on the host.
    pub project: &'a Path,
    /// `${devcontainerId}`: stable for the repository and environment.
    pub env_id: String,
    /// The host's environment (`${localEnv:…}`).
    pub local_env: &'a dyn Fn(&str) -> Option<String>,
}

impl Context<'_> {
    fn basename(&self) -> String {
        self.project
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A stable id for an environment of a repository (`${devcontainerId}`).
pub fn env_id(project: &Path, name: &str) -> String {
    let mut h = Digester::new(Algorithm::Sha256);
    h.update(project.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    h.finish().hex()[..16].to_owned()
}

/// Expands a template: `container_env` answers `${containerEnv:…}`, `workspace` is
/// `${containerWorkspaceFolder}`.
pub fn expand(
    t: &Template,
    ctx: &Context<'_>,
    container_env: &[(String, String)],
    workspace: &str,
) -> String {
    let mut out = String::new();
    for p in &t.parts {
        match p {
            Part::Text(s) => out.push_str(s),
            Part::Placeholder(ph) => out.push_str(&match ph {
                Placeholder::LocalEnv { name, default } => (ctx.local_env)(name)
                    .or_else(|| default.clone())
                    .unwrap_or_default(),
                Placeholder::ContainerEnv { name, default } => container_env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| default.clone())
                    .unwrap_or_default(),
                Placeholder::LocalWorkspaceFolder => ctx.project.display().to_string(),
                Placeholder::LocalWorkspaceFolderBasename => ctx.basename(),
                Placeholder::ContainerWorkspaceFolder => workspace.to_owned(),
                Placeholder::ContainerWorkspaceFolderBasename => workspace
                    .rsplit('/')
                    .find(|s| !s.is_empty())
                    .unwrap_or_default()
                    .to_owned(),
                Placeholder::DevcontainerId => ctx.env_id.clone(),
            }),
        }
    }
    out
}

/// Replaces `${NAME}` and `$NAME` for the names in `vars` (devfile commands name
/// `${PROJECT_SOURCE}` in their working directory, which no shell expands); other text is
/// left as it is.
pub fn expand_vars(s: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
            && let Some(v) = lookup(&inner[..end])
        {
            out.push_str(&v);
            rest = &inner[end + 1..];
            continue;
        }
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match lookup(&after[..len]).filter(|_| len > 0) {
            Some(v) => {
                out.push_str(&v);
                rest = &after[len..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A volume's directory name: its name with placeholders expanded and anything but
/// letters, digits, `.`, `_` and `-` replaced.
pub fn volume_dir_name(name: &str, ctx: &Context<'_>) -> String {
    let expanded = expand(&Template::parse(name).0, ctx, &[], "");
    let cleaned: String = expanded
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match cleaned.trim_matches('.') {
        "" => "volume".into(),
        s => s.to_owned(),
    }
}

/// Where the repository appears in a container. A devfile without a project mounts it at
/// `sourceMapping/<repository name>`, as CodeCatalyst does.
pub fn project_source(env: &Environment, c: &Container, ctx: &Context<'_>) -> String {
    let t = expand(&c.project_source, ctx, &[], "");
    if matches!(env.format, Format::Devfile { .. }) && env.project.is_none() {
        let base = ctx.basename();
        if !base.is_empty() && t.trim_end_matches('/') == c.source_mapping.trim_end_matches('/') {
            return format!("{}/{base}", c.source_mapping.trim_end_matches('/'));
        }
    }
    t
}

/// What an image contributes.
pub struct ImageFacts<'a> {
    /// As the file names it (`build:NAME` for built ones).
    pub reference: String,
    pub digest: String,
    pub config: Option<&'a archway_oci::config::RuntimeConfig>,
    pub rootfs: PathBuf,
    /// Whether `/bin/sh` exists in it.
    pub has_shell: bool,
}

/// The rest of what a launch needs.
pub struct LaunchInputs<'a> {
    pub platform: String,
    pub store: PathBuf,
    pub runtime: Option<String>,
    /// `volume name → host directory` for persistent volumes.
    pub volume_dir: &'a dyn Fn(&str) -> PathBuf,
}

/// One container's launch, with warnings for what the sandbox cannot honour.
pub fn launch_spec(
    env: &Environment,
    c: &Container,
    image: &ImageFacts<'_>,
    ctx: &Context<'_>,
    inputs: &LaunchInputs<'_>,
) -> Result<(LaunchSpec, Vec<String>), String> {
    let mut warnings = Vec::new();
    let source = project_source(env, c, ctx);
    let mut vars: Vec<(String, String)> = image
        .config
        .and_then(|cfg| cfg.env.as_ref())
        .map(|e| {
            e.iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut set: Vec<(String, String)> = Vec::new();
    if c.mount_sources {
        set.push(("PROJECTS_ROOT".into(), c.source_mapping.clone()));
        set.push(("PROJECT_SOURCE".into(), source.clone()));
        vars.extend(set.iter().cloned());
    }
    for e in &c.env {
        let value = expand(&e.value, ctx, &vars, &source);
        vars.push((e.name.clone(), value.clone()));
        set.push((e.name.clone(), value));
    }
    let workspace = c
        .working_dir
        .as_ref()
        .map(|w| expand(w, ctx, &vars, &source));
    let command_dir = workspace
        .clone()
        .or_else(|| c.mount_sources.then(|| source.clone()));
    let command_env: Vec<String> = c
        .remote_env
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e.name,
                expand(
                    &e.value,
                    ctx,
                    &vars,
                    workspace.as_deref().unwrap_or(&source)
                )
            )
        })
        .collect();

    // The process: the file's command/args over the image's; a tools container the file
    // gives no process to stays up with a keep-alive loop (devcontainer's overrideCommand).
    let keep_alive = c.tools && c.command.is_none() && c.args.is_none() && image.has_shell;
    let entrypoint = if keep_alive {
        Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            archway_devfile::devcontainer::KEEP_ALIVE.to_owned(),
        ])
    } else {
        c.command.clone()
    };
    let resolved = resolve_run(
        image.config,
        &RunOverrides {
            entrypoint,
            command: c.args.clone().unwrap_or_default(),
            env: set.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user: c.user.clone(),
            workdir: None,
        },
    )
    .map_err(|e| match e {
        RunConfigError::NoCommand => format!(
            "container `{}`: its image {} has no ENTRYPOINT or CMD; give the component a `command`",
            c.name, image.reference
        ),
        RunConfigError::BadEnv(kv) => {
            format!(
                "container `{}`: environment entry `{kv}` has no name",
                c.name
            )
        }
    })?;

    // Mounts: the repository, then volumes, then the file's bind mounts.
    let mut mounts = Vec::new();
    if c.mount_sources {
        mounts.push(MountRecord::Bind {
            host: ctx.project.to_owned(),
            target: source.clone(),
            readonly: false,
        });
    }
    for vm in &c.volume_mounts {
        let volume = env.volumes.iter().find(|v| v.name == vm.volume);
        if volume.is_some_and(|v| v.ephemeral) {
            mounts.push(MountRecord::Tmpfs {
                target: vm.path.clone(),
            });
        } else {
            mounts.push(MountRecord::Bind {
                host: (inputs.volume_dir)(&vm.volume),
                target: vm.path.clone(),
                readonly: false,
            });
        }
    }
    for b in &c.bind_mounts {
        let host = expand(&b.source, ctx, &vars, &source);
        let host = if Path::new(&host).is_absolute() {
            PathBuf::from(host)
        } else {
            ctx.project.join(host)
        };
        mounts.push(MountRecord::Bind {
            host,
            target: b.target.clone(),
            readonly: b.read_only,
        });
    }

    for (what, set) in [
        ("memoryLimit", c.memory_limit.is_some()),
        ("cpuLimit", c.cpu_limit.is_some()),
    ] {
        if set {
            warnings.push(format!(
                "container `{}`: {what} is not enforced (the sandbox runs without cgroup limits)",
                c.name
            ));
        }
    }
    let fingerprint = {
        let mut h = Digester::new(Algorithm::Sha256);
        for part in [
            fingerprint(c).as_str(),
            &image.digest,
            &inputs.platform,
            &ctx.project.display().to_string(),
            &source,
        ] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        h.finish().to_string()
    };
    Ok((
        LaunchSpec {
            container: c.name.clone(),
            tools: c.tools,
            fingerprint,
            image: image.reference.clone(),
            image_digest: image.digest.clone(),
            platform: inputs.platform.clone(),
            store: inputs.store.clone(),
            rootfs: image.rootfs.clone(),
            argv: resolved.argv,
            env: resolved.env,
            cwd: resolved.cwd,
            user: resolved.user,
            mounts,
            runtime: inputs.runtime.clone(),
            command_dir,
            command_env,
            command_user: c.remote_user.clone(),
            endpoints: c.endpoints.clone(),
        },
        warnings,
    ))
}

/// How the file names a container's image.
pub fn image_name(c: &Container) -> String {
    match &c.image {
        ImageSource::Pull(r) => r.clone(),
        ImageSource::Build(b) => format!("build:{b}"),
    }
}

/// The environment of a launched container as `(name, value)` pairs.
pub fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What changes between the running containers and the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Running with the same fingerprint: left alone.
    pub keep: Vec<String>,
    /// Running with another fingerprint: stopped, then started.
    pub restart: Vec<String>,
    /// Not running (never started, exited, stopped): started.
    pub start: Vec<String>,
    /// Running or recorded but no longer in the file: stopped and forgotten.
    pub remove: Vec<String>,
}

/// Decides what `up` does: `wanted` maps names to fingerprints, `current` maps recorded
/// containers to (fingerprint, running).
pub fn changes(
    wanted: &BTreeMap<String, String>,
    current: &BTreeMap<String, (Option<String>, bool)>,
) -> Changes {
    let mut ch = Changes::default();
    for (name, fp) in wanted {
        match current.get(name) {
            Some((Some(old), true)) if old == fp => ch.keep.push(name.clone()),
            Some((_, true)) => ch.restart.push(name.clone()),
            _ => ch.start.push(name.clone()),
        }
    }
    for name in current.keys() {
        if !wanted.contains_key(name) {
            ch.remove.push(name.clone());
        }
    }
    ch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(project: &'a Path, env: &'a dyn Fn(&str) -> Option<String>) -> Context<'a> {
        Context {
            project,
            env_id: "abc".into(),
            local_env: env,
        }
    }

    fn load(name: &str, text: &str) -> Environment {
        if name.ends_with(".json") {
            archway_devfile::parse_devcontainer(name, text).unwrap().env
        } else {
            archway_devfile::parse_devfile(name, text, &archway_devfile::MemoryFiles::default())
                .unwrap()
                .env
        }
    }

    fn facts(config: Option<&archway_oci::config::RuntimeConfig>) -> ImageFacts<'_> {
        ImageFacts {
            reference: "busybox:1.35".into(),
            digest: "sha256:1".into(),
            config,
            rootfs: "/snap".into(),
            has_shell: true,
        }
    }

    fn inputs(volume_dir: &dyn Fn(&str) -> PathBuf) -> LaunchInputs<'_> {
        LaunchInputs {
            platform: "linux/amd64".into(),
            store: "/store".into(),
            runtime: None,
            volume_dir,
        }
    }

    #[test]
    fn variables_expand_only_when_known() {
        let vars = vec![
            ("PROJECT_SOURCE".to_owned(), "/projects/app".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ];
        assert_eq!(
            expand_vars("${PROJECT_SOURCE}/sub $A-$B ${NOPE} $ $", &vars),
            "/projects/app/sub 1-$B ${NOPE} $ $"
        );
    }

    #[test]
    fn a_devfile_without_a_project_mounts_the_repository_under_its_name() {
        let env = load(
            "devfile.yaml",
            "schemaVersion: 2.2.0\nmetadata: {name: demo}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:1.35\n      env: [{name: IS_LOCAL, value: \"true\"}]\n      volumeMounts: [{name: cache, path: /cache}, {name: scratch, path: /scratch}]\n  - name: cache\n    volume: {}\n  - name: scratch\n    volume: {ephemeral: true}\n",
        );
        let no_env = |_: &str| None;
        let project = Path::new("/home/me/app");
        let vdir = |v: &str| PathBuf::from(format!("/state/volumes/{v}"));
        let (l, warnings) = launch_spec(
            &env,
            &env.containers[0],
            &facts(None),
            &ctx(project, &no_env),
            &inputs(&vdir),
        )
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(l.command_dir.as_deref(), Some("/projects/app"));
        for want in [
            "PROJECTS_ROOT=/projects",
            "PROJECT_SOURCE=/projects/app",
            "IS_LOCAL=true",
        ] {
            assert!(l.env.contains(&want.to_owned()), "{want} in {:?}", l.env);
        }
        // The tools container without a command stays up.
        assert_eq!(l.argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(
            l.mounts,
            vec![
                MountRecord::Bind {
                    host: project.into(),
                    target: "/projects/app".into(),
                    readonly: false
                },
                MountRecord::Bind {
                    host: "/state/volumes/cache".into(),
                    target: "/cache".into(),
                    readonly: false
                },
                MountRecord::Tmpfs {
                    target: "/scratch".into()
                },
            ]
        );
    }

    #[test]
    fn devcontainer_placeholders_and_remote_env_expand() {
        let env = load(
            ".devcontainer/devcontainer.json",
            r#"{"image": "busybox:1.35", "containerEnv": {"GREETING": "hi ${localEnv:WHO}"},
                "remoteEnv": {"P": "${containerEnv:PATH}:/extra", "W": "${containerWorkspaceFolder}"},
                "mounts": ["source=${localWorkspaceFolder}/cache,target=/c,type=bind"]}"#,
        );
        let host_env = |k: &str| (k == "WHO").then(|| "you".to_owned());
        let project = Path::new("/src/repo");
        let vdir = |v: &str| PathBuf::from(v);
        let config = archway_oci::config::RuntimeConfig {
            env: Some(vec!["PATH=/bin".into()]),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let (l, _) = launch_spec(
            &env,
            &env.containers[0],
            &facts(Some(&config)),
            &ctx(project, &host_env),
            &inputs(&vdir),
        )
        .unwrap();
        assert!(l.env.contains(&"GREETING=hi you".to_owned()), "{:?}", l.env);
        assert_eq!(
            l.command_env,
            ["P=/bin:/extra", "W=/workspaces/repo"],
            "{:?}",
            l.command_env
        );
        assert_eq!(l.command_dir.as_deref(), Some("/workspaces/repo"));
        assert!(l.mounts.contains(&MountRecord::Bind {
            host: "/src/repo/cache".into(),
            target: "/c".into(),
            readonly: false
        }));
    }

    #[test]
    fn fingerprints_change_with_the_definition_image_and_platform() {
        let env = load(
            "devfile.yaml",
            "schemaVersion: 2.2.0\ncomponents:\n  - name: db\n    container:\n      image: busybox:1.35\n      command: [httpd]\n      mountSources: false\n",
        );
        let no_env = |_: &str| None;
        let project = Path::new("/p");
        let vdir = |v: &str| PathBuf::from(v);
        let fp = |env: &Environment, digest: &str, platform: &str| {
            let mut f = facts(None);
            f.digest = digest.into();
            let mut i = inputs(&vdir);
            i.platform = platform.into();
            launch_spec(env, &env.containers[0], &f, &ctx(project, &no_env), &i)
                .unwrap()
                .0
                .fingerprint
        };
        let base = fp(&env, "sha256:1", "linux/amd64");
        assert_eq!(base, fp(&env, "sha256:1", "linux/amd64"));
        assert_ne!(base, fp(&env, "sha256:2", "linux/amd64"));
        assert_ne!(base, fp(&env, "sha256:1", "linux/arm64"));
        let mut changed = env.clone();
        changed.containers[0].args = Some(vec!["-f".into()]);
        assert_ne!(base, fp(&changed, "sha256:1", "linux/amd64"));
    }

    #[test]
    fn changes_keep_restart_start_and_remove() {
        let wanted: BTreeMap<String, String> = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let current: BTreeMap<String, (Option<String>, bool)> = [
            ("a", (Some("1"), true)),
            ("b", (Some("1"), true)),
            ("c", (Some("3"), false)),
            ("old", (Some("9"), true)),
        ]
        .iter()
        .map(|(k, (f, r))| (k.to_string(), (f.map(str::to_owned), *r)))
        .collect();
        assert_eq!(
            changes(&wanted, &current),
            Changes {
                keep: vec!["a".into()],
                restart: vec!["b".into()],
                start: vec!["c".into(), "d".into()],
                remove: vec!["old".into()],
            }
        );
    }

    #[test]
    fn volume_names_become_directory_names() {
        let no_env = |_: &str| None;
        let c = ctx(Path::new("/p"), &no_env);
        assert_eq!(
            volume_dir_name("${devcontainerId}-history", &c),
            "abc-history"
        );
        assert_eq!(volume_dir_name("../x/y", &c), "-x-y");
        assert_eq!(volume_dir_name("..", &c), "volume");
    }
}
