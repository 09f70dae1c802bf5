//! The one model both front ends lower into: an [`Environment`] of containers sharing one
//! network namespace, the volumes and image builds they need, the commands that can run in
//! them and the lifecycle events that run commands.
//!
//! The serde JSON form is stable (it is what `archway dev config --json` prints): fields keep
//! their names and order, absent options and empty lists are left out, enums are lowercase
//! strings or tagged objects. [`fingerprint`] hashes a container's JSON so a runtime can
//! restart only the containers that changed.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Which file format an environment came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    /// A devfile (`devfile.yaml`), with the `schemaVersion` it declared.
    Devfile { schema_version: String },
    /// A `devcontainer.json`.
    Devcontainer,
}

/// A dev environment: everything a runtime needs to start its containers as rootless
/// sandboxes sharing one network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// The environment's name (devfile `metadata.name`, devcontainer `name`, else the
    /// directory's name).
    pub name: String,
    pub format: Format,
    #[serde(default)]
    pub metadata: Metadata,
    /// The project the environment works on: the current repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Project>,
    /// In definition order; at most one is the tools container.
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Images to build before the containers that use them start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageBuild>,
    /// Commands by id, in definition order (a parent's first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Command>,
    #[serde(default)]
    pub events: Events,
}

impl Environment {
    /// The container commands run in by default (and the editor attaches to), if any.
    pub fn tools_container(&self) -> Option<&Container> {
        self.containers.iter().find(|c| c.tools)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn command(&self, id: &str) -> Option<&Command> {
        self.commands.iter().find(|c| c.id == id)
    }

    /// The default command of a group: the one marked `isDefault`, else the only one.
    pub fn default_command(&self, kind: GroupKind) -> Option<&Command> {
        let in_group: Vec<&Command> = self
            .commands
            .iter()
            .filter(|c| c.group.as_ref().is_some_and(|g| g.kind == kind))
            .collect();
        in_group
            .iter()
            .find(|c| c.group.as_ref().is_some_and(|g| g.is_default))
            .or_else(|| (in_group.len() == 1).then(|| &in_group[0]))
            .copied()
    }

    /// Every endpoint with the container that serves it.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Container, &Endpoint)> {
        self.containers
            .iter()
            .flat_map(|c| c.endpoints.iter().map(move |e| (c, e)))
    }
}

/// Descriptive metadata (devfile `metadata`; a devcontainer has only a name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Architectures the stack supports (`amd64`, `arm64`, …), as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_url: Option<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_memory_limit: Option<u64>,
}

/// The project: the current repository, under the name and path the file gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    /// Where under the projects root the repository appears (defaults to the name).
    pub clone_path: String,
    /// The remote the file names (informational: the repository is not cloned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Where a container's image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Pulled from a registry.
    Pull(String),
    /// Built first: the name of an entry of [`Environment::images`].
    Build(String),
}

/// One container of the environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// The tools container: where commands without a container run and editors attach.
    pub tools: bool,
    pub image: ImageSource,
    /// Environment variables in order (a later one may refer to an earlier one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Variables for the processes commands start in the container, not for the container
    /// itself (devcontainer `remoteEnv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_env: Vec<EnvVar>,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Whether the repository is mounted in this container. When it is, it is mounted at
    /// `project_source`, and the runtime sets `PROJECTS_ROOT` (`source_mapping`) and
    /// `PROJECT_SOURCE` (`project_source`) in its environment and expands them in commands.
    pub mount_sources: bool,
    /// `PROJECTS_ROOT`.
    pub source_mapping: String,
    /// `PROJECT_SOURCE`: where the repository is.
    pub project_source: Template,
    /// The directory commands start in when they name none (devcontainer `workspaceFolder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<Template>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_mounts: Vec<BindMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<u64>,
    /// Millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<u64>,
    /// Millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<u64>,
    /// The user the container's processes run as (devcontainer `containerUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user commands run as (devcontainer `remoteUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_user: Option<String>,
    /// Run a minimal init as PID 1 (devcontainer `init`).
    #[serde(default)]
    pub init: bool,
}

/// A named environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: Template,
}

/// A volume component mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The name of an entry of [`Environment::volumes`].
    pub volume: String,
    pub path: String,
}

/// A host path mounted into a container (devcontainer `mounts` of type `bind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: Template,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// How far an endpoint is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exposure {
    /// Forwarded to the host.
    Public,
    /// Reachable by the environment's other containers only.
    Internal,
    /// Not advertised.
    None,
}

/// An endpoint's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Https,
    Ws,
    Wss,
    Tcp,
    Udp,
}

/// A port a container listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub port: u16,
    pub exposure: Exposure,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub secure: bool,
}

/// A named volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// From a devcontainer.json, the name may hold placeholders in devcontainer syntax
    /// (`${devcontainerId}-history`) for the runtime to expand; [`VolumeMount::volume`] names
    /// the volume the same way.
    pub name: String,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Discarded when the environment stops.
    #[serde(default)]
    pub ephemeral: bool,
}

/// An image to build from a Dockerfile. Paths are relative to the directory the environment
/// was loaded from (the repository root), `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuild {
    /// The id containers refer to ([`ImageSource::Build`]).
    pub name: String,
    /// The name to tag the image with, if the file gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    pub dockerfile: String,
    pub context: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Built when the environment starts (else only by an `apply` command).
    pub auto_build: bool,
    /// The build needs root (a rootless builder cannot do it).
    #[serde(default)]
    pub root_required: bool,
}

/// A command group kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    Build,
    Run,
    Test,
    Debug,
    Deploy,
}

impl GroupKind {
    pub const ALL: [GroupKind; 5] = [
        GroupKind::Build,
        GroupKind::Run,
        GroupKind::Test,
        GroupKind::Debug,
        GroupKind::Deploy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Build => "build",
            GroupKind::Run => "run",
            GroupKind::Test => "test",
            GroupKind::Debug => "debug",
            GroupKind::Deploy => "deploy",
        }
    }
}

/// The group a command belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub kind: GroupKind,
    #[serde(default)]
    pub is_default: bool,
}

/// What a command line is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandLine {
    /// Run with `sh -c`.
    Shell(String),
    /// Run as is, without a shell.
    Argv(Vec<String>),
}

impl CommandLine {
    /// The argument vector to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            CommandLine::Argv(a) => a.clone(),
        }
    }
}

/// A command the environment defines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    #[serde(flatten)]
    pub action: Action,
}

/// What a command does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Run a command line in a container. Variables are left in the command line, working
    /// directory and `env` for the runtime to expand: from a devfile, `${PROJECT_SOURCE}` and
    /// `${PROJECTS_ROOT}` (also set in the environment, so a shell expands them); from a
    /// devcontainer.json, the placeholders [`Template::parse`] reads (`${containerEnv:X}`,
    /// `${containerWorkspaceFolder}`, …).
    Exec {
        container: String,
        command_line: CommandLine,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        working_dir: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<EnvVar>,
        #[serde(default)]
        hot_reload_capable: bool,
    },
    /// Run other commands (by id), in order or all at once.
    Composite {
        commands: Vec<String>,
        parallel: bool,
    },
    /// Build an image ([`Environment::images`] by name).
    Apply { image: String },
}

/// Commands (by id) run at points of the environment's life, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    /// Once, when the containers are first created (devcontainer `onCreateCommand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_create: Vec<String>,
    /// After `on_create`, and when the sources change (devcontainer
    /// `updateContentCommand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_content: Vec<String>,
    /// Once, after `update_content` (devcontainer `postCreateCommand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_create: Vec<String>,
    /// Every time the containers start (devfile `postStart`, devcontainer
    /// `postStartCommand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_start: Vec<String>,
    /// Every time a user attaches (devcontainer `postAttachCommand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_attach: Vec<String>,
    /// Before the containers stop (devfile `preStop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<String>,
}

/// A string with placeholders the runtime fills in (devcontainer `${localEnv:VAR}` and
/// friends). Serialized as a plain string when it has none, else as a list of strings and
/// placeholder objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A piece of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Part {
    Text(String),
    Placeholder(Placeholder),
}

/// A value only the runtime knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "placeholder", rename_all = "snake_case")]
pub enum Placeholder {
    /// `${localEnv:NAME}` / `${localEnv:NAME:default}`: a variable of the host's environment.
    LocalEnv {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
    },
    /// `${containerEnv:NAME}`: a variable of the running container's environment.
    ContainerEnv {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
    },
    /// `${localWorkspaceFolder}`: the repository's path on the host.
    LocalWorkspaceFolder,
    /// `${localWorkspaceFolderBasename}`.
    LocalWorkspaceFolderBasename,
    /// `${containerWorkspaceFolder}`: the repository's path in the container.
    ContainerWorkspaceFolder,
    /// `${containerWorkspaceFolderBasename}`.
    ContainerWorkspaceFolderBasename,
    /// `${devcontainerId}`: a stable id of the environment.
    DevcontainerId,
}

impl Template {
    /// Text without placeholders.
    pub fn plain(text: impl Into<String>) -> Self {
        let text = text.into();
        Template {
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Text(text)]
            },
        }
    }

    /// The text, when there are no placeholders.
    pub fn as_plain(&self) -> Option<String> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Placeholder(_) => return None,
            }
        }
        Some(s)
    }

    /// Parses devcontainer `${…}` placeholders. Unknown ones (`${foo}`) stay text and are
    /// returned so the caller can warn about them.
    pub fn parse(text: &str) -> (Template, Vec<String>) {
        let mut parts: Vec<Part> = Vec::new();
        let mut unknown = Vec::new();
        let mut text_buf = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let inner = &rest[start + 2..start + len];
            text_buf.push_str(&rest[..start]);
            match placeholder(inner) {
                Some(p) => {
                    if !text_buf.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text_buf)));
                    }
                    parts.push(Part::Placeholder(p));
                }
                None => {
                    unknown.push(inner.to_owned());
                    text_buf.push_str(&rest[start..=start + len]);
                }
            }
            rest = &rest[start + len + 1..];
        }
        text_buf.push_str(rest);
        if !text_buf.is_empty() {
            parts.push(Part::Text(text_buf));
        }
        (Template { parts }, unknown)
    }
}

fn placeholder(inner: &str) -> Option<Placeholder> {
    let (var, arg) = match inner.split_once(':') {
        Some((v, a)) => (v, Some(a)),
        None => (inner, None),
    };
    let named = |arg: Option<&str>| -> Option<(String, Option<String>)> {
        let arg = arg?;
        let (name, default) = match arg.split_once(':') {
            Some((n, d)) => (n, Some(d.to_owned())),
            None => (arg, None),
        };
        (!name.is_empty()).then(|| (name.to_owned(), default))
    };
    Some(match (var, arg) {
        ("localEnv" | "env", a) => {
            let (name, default) = named(a)?;
            Placeholder::LocalEnv { name, default }
        }
        ("containerEnv", a) => {
            let (name, default) = named(a)?;
            Placeholder::ContainerEnv { name, default }
        }
        ("localWorkspaceFolder", None) => Placeholder::LocalWorkspaceFolder,
        ("localWorkspaceFolderBasename", None) => Placeholder::LocalWorkspaceFolderBasename,
        ("containerWorkspaceFolder", None) => Placeholder::ContainerWorkspaceFolder,
        ("containerWorkspaceFolderBasename", None) => Placeholder::ContainerWorkspaceFolderBasename,
        ("devcontainerId", None) => Placeholder::DevcontainerId,
        _ => return None,
    })
}

impl fmt::Display for Template {
    /// The template in devcontainer syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Placeholder(p) => {
                    let (var, arg) = match p {
                        Placeholder::LocalEnv { name, default } => {
                            ("localEnv", Some((name, default)))
                        }
                        Placeholder::ContainerEnv { name, default } => {
                            ("containerEnv", Some((name, default)))
                        }
                        Placeholder::LocalWorkspaceFolder => ("localWorkspaceFolder", None),
                        Placeholder::LocalWorkspaceFolderBasename => {
                            ("localWorkspaceFolderBasename", None)
                        }
                        Placeholder::ContainerWorkspaceFolder => ("containerWorkspaceFolder", None),
                        Placeholder::ContainerWorkspaceFolderBasename => {
                            ("containerWorkspaceFolderBasename", None)
                        }
                        Placeholder::DevcontainerId => ("devcontainerId", None),
                    };
                    write!(f, "${{{var}")?;
                    if let Some((name, default)) = arg {
                        write!(f, ":{name}")?;
                        if let Some(d) = default {
                            write!(f, ":{d}")?;
                        }
                    }
                    f.write_str("}")?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TemplateRepr {
    Plain(String),
    Parts(Vec<Part>),
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_plain() {
            Some(text) => s.serialize_str(&text),
            None => self.parts.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match TemplateRepr::deserialize(d)? {
            TemplateRepr::Plain(s) => Template::plain(s),
            TemplateRepr::Parts(parts) => Template { parts },
        })
    }
}

/// A stable digest of a container's definition (`sha256:` and the hex SHA-256 of its JSON):
/// equal for equal definitions, different when anything the runtime starts it with changes.
/// A container built from an [`ImageBuild`] names the build, not its result: combine with
/// the built image's digest to notice Dockerfile changes.
pub fn fingerprint(container: &Container) -> String {
    // Serializing plain data (strings, numbers, lists) cannot fail.
    let json = serde_json::to_vec(container).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_print() {
        let (t, unknown) =
            Template::parse("${containerEnv:PATH}:/x/${localEnv:HOME:/root}${nope}${env:U}$X");
        assert_eq!(unknown, vec!["nope".to_owned()]);
        assert_eq!(t.parts.len(), 6, "{t:?}");
        assert_eq!(
            t.to_string(),
            "${containerEnv:PATH}:/x/${localEnv:HOME:/root}${nope}${localEnv:U}$X"
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"[{"placeholder":"container_env","name":"PATH"},":/x/",{"placeholder":"local_env","name":"HOME","default":"/root"},"${nope}",{"placeholder":"local_env","name":"U"},"$X"]"#
        );
        let back: Template = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), t.to_string());
        let (plain, _) = Template::parse("no placeholders ${unclosed");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#""no placeholders ${unclosed""#
        );
        assert_eq!(
            Template::parse("${localEnv:}").1,
            vec!["localEnv:".to_owned()]
        );
    }

    fn container() -> Container {
        Container {
            name: "tools".into(),
            tools: true,
            image: ImageSource::Pull("alpine:3".into()),
            env: vec![EnvVar {
                name: "A".into(),
                value: Template::plain("1"),
            }],
            remote_env: Vec::new(),
            command: None,
            args: None,
            mount_sources: true,
            source_mapping: "/projects".into(),
            project_source: Template::plain("/projects"),
            working_dir: None,
            volume_mounts: Vec::new(),
            bind_mounts: Vec::new(),
            endpoints: Vec::new(),
            memory_limit: None,
            memory_request: None,
            cpu_limit: None,
            cpu_request: None,
            user: None,
            remote_user: None,
            init: false,
        }
    }

    #[test]
    fn fingerprints_follow_the_definition() {
        let a = container();
        let f = fingerprint(&a);
        assert!(f.starts_with("sha256:") && f.len() == 71, "{f}");
        assert_eq!(f, fingerprint(&a.clone()));
        let mut b = a.clone();
        b.env[0].value = Template::plain("2");
        assert_ne!(f, fingerprint(&b));
        let mut c = a.clone();
        c.memory_limit = Some(1 << 30);
        assert_ne!(f, fingerprint(&c));
    }

    #[test]
    fn commands_serialize_flat() {
        let c = Command {
            id: "build".into(),
            label: None,
            group: Some(Group {
                kind: GroupKind::Build,
                is_default: true,
            }),
            action: Action::Exec {
                container: "tools".into(),
                command_line: CommandLine::Shell("make".into()),
                working_dir: Some("${PROJECT_SOURCE}".into()),
                env: Vec::new(),
                hot_reload_capable: false,
            },
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"id":"build","group":{"kind":"build","is_default":true},"kind":"exec","container":"tools","command_line":{"shell":"make"},"working_dir":"${PROJECT_SOURCE}","hot_reload_capable":false}"#
        );
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            CommandLine::Shell("make".into()).argv(),
            vec!["/bin/sh", "-c", "make"]
        );
    }
}
