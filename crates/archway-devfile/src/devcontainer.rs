//! The devcontainer front end: `.devcontainer/devcontainer.json` (JSON with comments and
//! trailing commas) → [`Environment`] with one container, `devcontainer`, the tools container.
//!
//! * `image`, or `build` (`dockerfile`, `context`, `args`, `target`) or the legacy
//!   `dockerFile`/`context`: paths resolved against the file's directory;
//! * `containerEnv` is the container's environment, `remoteEnv` the environment of the
//!   commands run in it; `${localEnv:VAR}`, `${containerEnv:VAR}`, `${localWorkspaceFolder}` …
//!   are kept as typed [`Placeholder`](crate::Placeholder)s for the runtime;
//! * `forwardPorts` (numbers or `"host:port"`, named by `portsAttributes` labels) become
//!   public endpoints;
//! * `onCreateCommand`, `updateContentCommand`, `postCreateCommand`, `postStartCommand`,
//!   `postAttachCommand`: a string runs with `sh -c`, a list as argv, an object as named
//!   commands in parallel;
//! * `mounts` (`"source=…,target=…,type=…"` or objects), `workspaceMount`, `workspaceFolder`
//!   (default `/workspaces/${localWorkspaceFolderBasename}`), `containerUser`, `remoteUser`,
//!   `overrideCommand` (default true: the container runs a keep-alive loop), `init`;
//! * `runArgs`, `features`, `customizations`, `initializeCommand` and other settings Archway
//!   cannot honour are named in warnings; `dockerComposeFile` is refused.

use archway_diag::{Diagnostic, Span};

use crate::devfile::sanitize_name;
use crate::fields::{self, Fields, bad_choice};
use crate::model::{
    Action, BindMount, Command, CommandLine, Container, Endpoint, EnvVar, Environment, Events,
    Exposure, Format, ImageBuild, ImageSource, Metadata, Protocol, Template, Volume, VolumeMount,
};
use crate::node::{Node, Value};
use crate::{jsonc, paths};

/// The one container's name.
pub const CONTAINER: &str = "devcontainer";

/// What the container runs when `overrideCommand` is true (the default): nothing, until it is
/// stopped.
pub const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT; while sleep 1000 & wait $!; do :; done";

const KEYS: &[&str] = &[
    "$schema",
    "name",
    "image",
    "build",
    "dockerFile",
    "context",
    "dockerComposeFile",
    "service",
    "runServices",
    "containerEnv",
    "remoteEnv",
    "forwardPorts",
    "portsAttributes",
    "otherPortsAttributes",
    "appPort",
    "initializeCommand",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
    "waitFor",
    "mounts",
    "workspaceFolder",
    "workspaceMount",
    "remoteUser",
    "containerUser",
    "updateRemoteUserUID",
    "userEnvProbe",
    "overrideCommand",
    "shutdownAction",
    "init",
    "privileged",
    "capAdd",
    "securityOpt",
    "runArgs",
    "features",
    "overrideFeatureInstallOrder",
    "customizations",
    "hostRequirements",
    "extensions",
    "settings",
    "devPort",
];
const BUILD_KEYS: &[&str] = &[
    "dockerfile",
    "context",
    "args",
    "target",
    "options",
    "cacheFrom",
];
const PORT_ATTRIBUTE_KEYS: &[&str] = &[
    "label",
    "protocol",
    "onAutoForward",
    "requireLocalPort",
    "elevateIfNeeded",
];
const MOUNT_KEYS: &[&str] = &["type", "source", "target"];
/// Lifecycle commands: key, command id, event.
const LIFECYCLE: &[(&str, &str)] = &[
    ("onCreateCommand", "on-create"),
    ("updateContentCommand", "update-content"),
    ("postCreateCommand", "post-create"),
    ("postStartCommand", "post-start"),
    ("postAttachCommand", "post-attach"),
];

/// A string value as a template; unknown `${…}` stay text, with a warning.
fn template(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<Template> {
    let s = fields::string(d, node, place)?;
    Some(template_of(d, &s, &node.span, place))
}

fn template_of(d: &mut Vec<Diagnostic>, s: &str, span: &Span, place: &str) -> Template {
    let (t, unknown) = Template::parse(s);
    for u in unknown {
        d.push(
            Diagnostic::warning(span, format!("unknown variable `${{{u}}}` in {place}; kept as text"))
                .with_hint("known: ${localEnv:VAR}, ${containerEnv:VAR}, ${localWorkspaceFolder}, ${localWorkspaceFolderBasename}, ${containerWorkspaceFolder}, ${containerWorkspaceFolderBasename}, ${devcontainerId}"),
        );
    }
    t
}

/// An object of names to string values (`containerEnv`, `build.args`). `null` values are
/// reported through `on_null`.
fn env_object(d: &mut Vec<Diagnostic>, node: &Node, place: &str, allow_null: bool) -> Vec<EnvVar> {
    let Some(entries) = node.as_map() else {
        d.push(fields::type_error(
            node,
            place,
            "an object of names to strings",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let name = k.as_str().unwrap_or_default().to_owned();
        if matches!(v.value, Value::Null) && allow_null {
            d.push(Diagnostic::warning(
                &k.span,
                format!("`{name}: null` in {place} would unset the variable, which is not supported; ignored"),
            ));
            continue;
        }
        if let Some(value) = template(d, v, &format!("`{name}` of {place}")) {
            out.push(EnvVar { name, value });
        }
    }
    out
}

/// One lifecycle command in its three forms.
fn lifecycle(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    key: &str,
    id: &str,
    commands: &mut Vec<Command>,
) -> Option<String> {
    let exec = |line: CommandLine| Action::Exec {
        container: CONTAINER.to_owned(),
        command_line: line,
        working_dir: None,
        env: Vec::new(),
        hot_reload_capable: false,
    };
    // Placeholders stay in the command as written (the runtime expands them); unknown ones
    // are warned about here.
    let line = |d: &mut Vec<Diagnostic>, n: &Node, place: &str| -> Option<CommandLine> {
        match &n.value {
            Value::Str(s) if s.trim().is_empty() => None,
            Value::Str(s) => {
                template_of(d, s, &n.span, place);
                Some(CommandLine::Shell(s.clone()))
            }
            Value::Seq(items) => {
                let argv = fields::text_list(d, n, place)?;
                for (a, item) in argv.iter().zip(items) {
                    template_of(d, a, &item.span, place);
                }
                (!argv.is_empty()).then_some(CommandLine::Argv(argv))
            }
            _ => {
                d.push(fields::type_error(
                    n,
                    place,
                    "a string, a list of arguments or an object of named commands",
                ));
                None
            }
        }
    };
    let place = format!("`{key}`");
    match &node.value {
        Value::Map(entries) => {
            let mut ids = Vec::new();
            for (k, v) in entries {
                let name = k.as_str().unwrap_or_default();
                let sub = format!("{id}:{name}");
                if let Some(l) = line(d, v, &format!("`{name}` of {place}")) {
                    commands.push(Command {
                        id: sub.clone(),
                        label: Some(name.to_owned()),
                        group: None,
                        action: exec(l),
                    });
                    ids.push(sub);
                }
            }
            if ids.is_empty() {
                return None;
            }
            commands.push(Command {
                id: id.to_owned(),
                label: None,
                group: None,
                action: Action::Composite {
                    commands: ids,
                    parallel: true,
                },
            });
            Some(id.to_owned())
        }
        _ => {
            let l = line(d, node, &place)?;
            commands.push(Command {
                id: id.to_owned(),
                label: None,
                group: None,
                action: exec(l),
            });
            Some(id.to_owned())
        }
    }
}

/// A forwarded port: `3000` or `"host:3000"`.
fn port(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<u16> {
    let in_range = |d: &mut Vec<Diagnostic>, v: i64| -> Option<u16> {
        match u16::try_from(v) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                d.push(Diagnostic::error(
                    &node.span,
                    format!("port {v} in {place} is out of range: ports are 1 to 65535"),
                ));
                None
            }
        }
    };
    match &node.value {
        Value::Int(i) => in_range(d, *i),
        Value::Str(s) => {
            let (host, p) = match s.rsplit_once(':') {
                Some((h, p)) => (Some(h), p),
                None => (None, s.as_str()),
            };
            let Ok(v) = p.parse::<i64>() else {
                d.push(Diagnostic::error(
                    &node.span,
                    format!("`{s}` in {place} is not a port: write a number or \"host:port\""),
                ));
                return None;
            };
            let v = in_range(d, v)?;
            if let Some(h) = host
                && !matches!(
                    h,
                    "localhost" | "127.0.0.1" | "0.0.0.0" | "::1" | "[::1]" | ""
                )
            {
                d.push(Diagnostic::warning(
                    &node.span,
                    format!("`{s}` names host `{h}`; the environment's containers share one network namespace, so port {v} is forwarded from it"),
                ));
            }
            Some(v)
        }
        _ => {
            d.push(fields::type_error(
                node,
                place,
                "a port number or \"host:port\"",
            ));
            None
        }
    }
}

/// A mount in either form, as (type, source, target, read-only), with unsupported options
/// warned about.
struct MountSpec {
    kind: String,
    source: Option<String>,
    target: Option<String>,
    read_only: bool,
}

fn mount_spec(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<MountSpec> {
    let mut m = MountSpec {
        kind: "volume".into(),
        source: None,
        target: None,
        read_only: false,
    };
    match &node.value {
        Value::Str(s) => {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = match part.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim())),
                    None => (part, None),
                };
                match (k, v) {
                    ("type", Some(v)) => m.kind = v.to_owned(),
                    ("source" | "src", Some(v)) => m.source = Some(v.to_owned()),
                    ("target" | "destination" | "dst" | "dest", Some(v)) => {
                        m.target = Some(v.to_owned());
                    }
                    ("readonly" | "ro", None | Some("true" | "1")) => m.read_only = true,
                    ("readonly" | "ro", Some("false" | "0")) => {}
                    // A macOS performance hint; no effect on Linux.
                    ("consistency", _) => {}
                    _ => d.push(Diagnostic::warning(
                        &node.span,
                        format!("mount option `{part}` in {place} is not supported; ignored"),
                    )),
                }
            }
        }
        Value::Map(_) => {
            let mut f = Fields::new(d, node, place.to_owned(), MOUNT_KEYS)?;
            if let Some(t) = f.string(d, "type") {
                m.kind = t;
            }
            m.source = f.string(d, "source");
            m.target = f.string(d, "target");
            f.finish(d);
        }
        _ => {
            d.push(fields::type_error(
                node,
                place,
                "a mount string (\"source=…,target=…,type=…\") or an object",
            ));
            return None;
        }
    }
    if !matches!(m.kind.as_str(), "bind" | "volume" | "tmpfs") {
        d.push(bad_choice(
            &node.span,
            &format!("the type of {place}"),
            &m.kind,
            &["bind", "volume", "tmpfs"],
        ));
        return None;
    }
    match &m.target {
        None => {
            d.push(Diagnostic::error(
                &node.span,
                format!("{place} has no `target`"),
            ));
            None
        }
        Some(t) if !t.starts_with('/') && !t.starts_with("${") => {
            d.push(Diagnostic::error(
                &node.span,
                format!("the target of {place} must be an absolute path, found `{t}`"),
            ));
            None
        }
        Some(_) => Some(m),
    }
}

/// The parent directory of a path as written.
fn parent_dir(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((p, _)) => p.to_owned(),
    }
}

/// Reads a devcontainer.json (`display` is its path relative to the repository root).
pub(crate) fn parse(
    display: &str,
    text: &str,
    default_name: Option<&str>,
) -> (Option<Environment>, Vec<Diagnostic>) {
    let mut d = Vec::new();
    let root = match jsonc::load(text, display) {
        Ok((root, warnings)) => {
            d.extend(warnings);
            root
        }
        Err(e) => return (None, vec![e]),
    };
    let env = read(&mut d, display, &root, default_name);
    (env, d)
}

fn read(
    d: &mut Vec<Diagnostic>,
    display: &str,
    root: &Node,
    default_name: Option<&str>,
) -> Option<Environment> {
    let mut f = Fields::new(d, root, "devcontainer.json", KEYS)?;
    f.skip("$schema");
    let name = f.string(d, "name");

    // Compose: refused, with its companions.
    let compose = f
        .take_entry("dockerComposeFile")
        .map(|(k, _)| k.span.clone());
    if let Some(span) = &compose {
        d.push(
            Diagnostic::error(
                span,
                "`dockerComposeFile` is not supported: Archway runs a devcontainer from `image` or `build`, not Docker Compose",
            )
            .with_hint("use `image` or `build.dockerfile`; for more containers, write a devfile with several container components"),
        );
        f.skip("service");
        f.skip("runServices");
    } else {
        f.unsupported(d, "service", "it only goes with `dockerComposeFile`");
        f.unsupported(d, "runServices", "it only goes with `dockerComposeFile`");
    }

    // The image.
    let image = f.take_entry("image");
    let build = f.take_entry("build");
    let legacy = f.take_entry("dockerFile");
    let legacy_context = f.take_entry("context");
    let mut images = Vec::new();
    let source = match (image, build, legacy) {
        (Some((ik, _)), Some(_), _) | (Some((ik, _)), _, Some(_)) => {
            d.push(Diagnostic::error(
                &ik.span,
                "give either `image` or `build`, not both",
            ));
            None
        }
        (None, Some(_), Some((lk, _))) => {
            d.push(Diagnostic::error(
                &lk.span,
                "give either `build.dockerfile` or the older `dockerFile`, not both",
            ));
            None
        }
        (Some((_, v)), None, None) => fields::string(d, v, "`image`").map(ImageSource::Pull),
        (None, Some((_, b)), None) => build_section(d, display, b).map(|b| {
            images.push(b);
            ImageSource::Build(CONTAINER.to_owned())
        }),
        (None, None, Some((_, v))) => {
            let dockerfile = fields::string(d, v, "`dockerFile`");
            let context = legacy_context.and_then(|(_, c)| fields::string(d, c, "`context`"));
            dockerfile.map(|df| {
                images.push(ImageBuild {
                    name: CONTAINER.to_owned(),
                    image_name: None,
                    dockerfile: paths::beside(display, &df),
                    context: paths::beside(display, context.as_deref().unwrap_or(".")),
                    args: Vec::new(),
                    target: None,
                    auto_build: true,
                    root_required: false,
                });
                ImageSource::Build(CONTAINER.to_owned())
            })
        }
        (None, None, None) => {
            if compose.is_none() {
                d.push(
                    Diagnostic::error(&root.span, "devcontainer.json has no `image` or `build`")
                        .with_hint("name an image (`\"image\": \"mcr.microsoft.com/devcontainers/base:debian\"`) or a Dockerfile (`\"build\": {\"dockerfile\": \"Dockerfile\"}`)"),
                );
            }
            None
        }
    };
    if legacy.is_none()
        && let Some((k, _)) = legacy_context
    {
        d.push(
            Diagnostic::warning(
                &k.span,
                "the top-level `context` only goes with `dockerFile`; ignored",
            )
            .with_hint("with `build`, write `build.context`"),
        );
    }

    // Environment.
    let env = f
        .take("containerEnv")
        .map(|n| env_object(d, n, "`containerEnv`", false))
        .unwrap_or_default();
    let remote_env = f
        .take("remoteEnv")
        .map(|n| env_object(d, n, "`remoteEnv`", true))
        .unwrap_or_default();

    // Ports.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut add_port = |d: &mut Vec<Diagnostic>, p: u16, span: &Span| {
        if endpoints.iter().any(|e| e.port == p) {
            d.push(Diagnostic::warning(
                span,
                format!("port {p} is forwarded twice"),
            ));
        } else {
            endpoints.push(Endpoint {
                name: format!("port-{p}"),
                port: p,
                exposure: Exposure::Public,
                protocol: Protocol::Tcp,
                path: None,
                secure: false,
            });
        }
    };
    if let Some(list) = f.take("forwardPorts") {
        match list.as_seq() {
            Some(items) => {
                for item in items {
                    if let Some(p) = port(d, item, "`forwardPorts`") {
                        add_port(d, p, &item.span);
                    }
                }
            }
            None => d.push(fields::type_error(
                list,
                "`forwardPorts`",
                "a list of ports",
            )),
        }
    }
    if let Some((k, v)) = f.take_entry("appPort") {
        d.push(
            Diagnostic::warning(&k.span, "`appPort` is treated like `forwardPorts`")
                .with_hint("use `forwardPorts`"),
        );
        let items: Vec<&Node> = match v.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        for item in items {
            if let Some(p) = port(d, item, "`appPort`") {
                add_port(d, p, &item.span);
            }
        }
    }
    if let Some(attrs) = f.take("portsAttributes") {
        port_attributes(d, attrs, &mut endpoints);
    }
    f.unsupported(
        d,
        "otherPortsAttributes",
        "it only concerns editors' port forwarding",
    );

    // Lifecycle commands.
    f.unsupported(
        d,
        "initializeCommand",
        "it runs on the host, and Archway runs nothing on the host",
    );
    let mut commands = Vec::new();
    let mut events = Events::default();
    for (key, id) in LIFECYCLE {
        let Some(n) = f.take(key) else {
            continue;
        };
        if let Some(id) = lifecycle(d, n, key, id, &mut commands) {
            let list = match *key {
                "onCreateCommand" => &mut events.on_create,
                "updateContentCommand" => &mut events.update_content,
                "postCreateCommand" => &mut events.post_create,
                "postStartCommand" => &mut events.post_start,
                _ => &mut events.post_attach,
            };
            list.push(id);
        }
    }
    f.unsupported(
        d,
        "waitFor",
        "commands run in order and the environment is ready after all of them",
    );

    // Mounts and the workspace.
    let mut volumes: Vec<Volume> = Vec::new();
    let mut volume_mounts = Vec::new();
    let mut bind_mounts = Vec::new();
    if let Some(list) = f.take("mounts") {
        match list.as_seq() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let place = format!("mount {}", i + 1);
                    let Some(m) = mount_spec(d, item, &place) else {
                        continue;
                    };
                    let target = m.target.unwrap_or_default();
                    match m.kind.as_str() {
                        "bind" => match m.source {
                            Some(s) => bind_mounts.push(BindMount {
                                source: template_of(d, &s, &item.span, &place),
                                target,
                                read_only: m.read_only,
                            }),
                            None => d.push(Diagnostic::error(
                                &item.span,
                                format!("bind {place} has no `source`"),
                            )),
                        },
                        kind => {
                            let (name, ephemeral) = match (kind, m.source) {
                                ("volume", Some(s)) if !s.is_empty() => (s, false),
                                ("volume", _) => (format!("anonymous-{}", i + 1), true),
                                _ => (format!("tmpfs-{}", i + 1), true),
                            };
                            if m.read_only {
                                d.push(Diagnostic::warning(&item.span, format!("read-only volumes are not supported; {place} is mounted read-write")));
                            }
                            if !volumes.iter().any(|v| v.name == name) {
                                volumes.push(Volume {
                                    name: name.clone(),
                                    size: None,
                                    ephemeral,
                                });
                            }
                            volume_mounts.push(VolumeMount {
                                volume: name,
                                path: target,
                            });
                        }
                    }
                }
            }
            None => d.push(fields::type_error(list, "`mounts`", "a list of mounts")),
        }
    }
    let workspace_folder = f
        .take("workspaceFolder")
        .and_then(|n| template(d, n, "`workspaceFolder`"));
    let mut mount_sources = true;
    let mut project_source = workspace_folder
        .clone()
        .unwrap_or_else(|| Template::parse("/workspaces/${localWorkspaceFolderBasename}").0);
    if let Some(wm) = f.take("workspaceMount") {
        if wm.as_str() == Some("") {
            mount_sources = false;
        } else if let Some(m) = mount_spec(d, wm, "`workspaceMount`") {
            if m.kind != "bind" {
                d.push(Diagnostic::warning(
                    &wm.span,
                    format!(
                        "`workspaceMount` of type `{}`: Archway bind-mounts the repository",
                        m.kind
                    ),
                ));
            }
            if m.source
                .as_deref()
                .is_some_and(|s| s != "${localWorkspaceFolder}")
            {
                d.push(Diagnostic::warning(
                    &wm.span,
                    format!("the source of `workspaceMount` is `{}`: Archway mounts the repository itself there", m.source.unwrap_or_default()),
                ));
            }
            project_source = template_of(
                d,
                &m.target.unwrap_or_default(),
                &wm.span,
                "`workspaceMount`",
            );
            if workspace_folder.is_none() {
                d.push(Diagnostic::warning(&wm.span, "`workspaceMount` without `workspaceFolder`: commands start in the mount's target"));
            }
        }
    }
    let working_dir = Some(workspace_folder.unwrap_or_else(|| project_source.clone()));
    let source_mapping = parent_dir(&project_source.to_string());

    // The container's process.
    let user = f.string(d, "containerUser");
    let remote_user = f.string(d, "remoteUser");
    let override_command = f.bool(d, "overrideCommand").unwrap_or(true);
    let init = f.bool(d, "init").unwrap_or(false);
    if let Some((k, v)) = f.take_entry("privileged") {
        match v.value {
            Value::Bool(false) => {}
            Value::Bool(true) => d.push(Diagnostic::warning(
                &k.span,
                "`privileged` is not supported: the container runs in a rootless sandbox; ignored",
            )),
            _ => d.push(fields::type_error(v, "`privileged`", "true or false")),
        }
    }
    for key in ["capAdd", "securityOpt", "runArgs"] {
        if let Some((k, v)) = f.take_entry(key) {
            let listed = fields::text_list(d, v, &format!("`{key}`")).unwrap_or_default();
            if !listed.is_empty() {
                d.push(
                    Diagnostic::warning(
                        &k.span,
                        format!("`{key}` is not supported ({}); ignored", listed.join(" ")),
                    )
                    .with_hint("the container runs in a rootless sandbox that takes no `docker run` options"),
                );
            }
        }
    }
    if let Some((k, v)) = f.take_entry("features") {
        match v.as_map() {
            Some(entries) if !entries.is_empty() => {
                let names: Vec<String> = entries
                    .iter()
                    .map(|(k, _)| format!("`{}`", k.as_str().unwrap_or_default()))
                    .collect();
                d.push(
                    Diagnostic::warning(
                        &k.span,
                        format!(
                            "devcontainer features are not supported: {} ignored",
                            names.join(", ")
                        ),
                    )
                    .with_hint("install those tools in the image or the Dockerfile instead"),
                );
            }
            Some(_) => {}
            None => d.push(fields::type_error(v, "`features`", "an object")),
        }
    }
    f.unsupported(
        d,
        "overrideFeatureInstallOrder",
        "features are not supported",
    );
    if let Some((k, v)) = f.take_entry("customizations") {
        let tools: Vec<String> = v
            .as_map()
            .unwrap_or_default()
            .iter()
            .map(|(t, _)| format!("`{}`", t.as_str().unwrap_or_default()))
            .collect();
        d.push(Diagnostic::warning(
            &k.span,
            format!(
                "editor customizations{} are not applied; ignored",
                if tools.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", tools.join(", "))
                }
            ),
        ));
    }
    for (key, why) in [
        ("extensions", "editor extensions are not installed"),
        ("settings", "editor settings are not applied"),
        (
            "hostRequirements",
            "the environment runs on the host it is started on",
        ),
        (
            "updateRemoteUserUID",
            "the rootless sandbox maps user ids itself",
        ),
        (
            "userEnvProbe",
            "commands see the container's environment and `remoteEnv`",
        ),
        (
            "shutdownAction",
            "the environment stops when `archway dev` stops it",
        ),
        ("devPort", "it is an old editor setting"),
    ] {
        f.unsupported(d, key, why);
    }
    f.finish(d);

    let image = source?;
    if compose.is_some() {
        return None;
    }
    let container = Container {
        name: CONTAINER.to_owned(),
        tools: true,
        image,
        env,
        remote_env,
        command: override_command
            .then(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), KEEP_ALIVE.to_owned()]),
        args: None,
        mount_sources,
        source_mapping,
        project_source,
        working_dir,
        volume_mounts,
        bind_mounts,
        endpoints,
        memory_limit: None,
        memory_request: None,
        cpu_limit: None,
        cpu_request: None,
        user,
        remote_user,
        init,
    };
    let env_name = name
        .as_deref()
        .map(sanitize_name)
        .filter(|n| !n.is_empty())
        .or_else(|| default_name.map(str::to_owned))
        .unwrap_or_else(|| CONTAINER.to_owned());
    Some(Environment {
        name: env_name,
        format: Format::Devcontainer,
        metadata: Metadata {
            name,
            ..Metadata::default()
        },
        project: None,
        containers: vec![container],
        volumes,
        images,
        commands,
        events,
    })
}

/// `build`: Dockerfile, context, args, target.
fn build_section(d: &mut Vec<Diagnostic>, display: &str, node: &Node) -> Option<ImageBuild> {
    let mut f = Fields::new(d, node, "`build`", BUILD_KEYS)?;
    let dockerfile = f.required_string(d, "dockerfile");
    let context = f.string(d, "context");
    let args = f
        .take("args")
        .map(|n| env_object(d, n, "`build.args`", false))
        .unwrap_or_default();
    let target = f.string(d, "target");
    if let Some((k, v)) = f.take_entry("options") {
        let listed = fields::text_list(d, v, "`build.options`").unwrap_or_default();
        if !listed.is_empty() {
            d.push(Diagnostic::warning(
                &k.span,
                format!(
                    "`build.options` are not supported ({}); ignored",
                    listed.join(" ")
                ),
            ));
        }
    }
    f.unsupported(d, "cacheFrom", "builds use Archway's own cache");
    f.finish(d);
    Some(ImageBuild {
        name: CONTAINER.to_owned(),
        image_name: None,
        dockerfile: paths::beside(display, &dockerfile?),
        context: paths::beside(display, context.as_deref().unwrap_or(".")),
        args,
        target,
        auto_build: true,
        root_required: false,
    })
}

/// `portsAttributes`: labels name endpoints, `protocol` sets http or https.
fn port_attributes(d: &mut Vec<Diagnostic>, node: &Node, endpoints: &mut [Endpoint]) {
    let Some(entries) = node.as_map() else {
        d.push(fields::type_error(node, "`portsAttributes`", "an object"));
        return;
    };
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        let place = format!("the attributes of port `{key}`");
        let Some(mut f) = Fields::new(d, v, place.clone(), PORT_ATTRIBUTE_KEYS) else {
            continue;
        };
        let label = f.string(d, "label");
        let protocol = f.string_at(d, "protocol");
        for key in ["onAutoForward", "requireLocalPort", "elevateIfNeeded"] {
            f.unsupported(d, key, "it only concerns editors' port forwarding");
        }
        f.finish(d);
        let endpoint = key
            .parse::<u16>()
            .ok()
            .and_then(|p| endpoints.iter_mut().find(|e| e.port == p));
        let Some(e) = endpoint else {
            d.push(Diagnostic::warning(
                &k.span,
                format!("{place} are for a port `forwardPorts` does not list; ignored"),
            ));
            continue;
        };
        if let Some(l) = label {
            e.name = l;
        }
        if let Some((p, span)) = protocol {
            match p.as_str() {
                "http" => e.protocol = Protocol::Http,
                "https" => e.protocol = Protocol::Https,
                _ => d.push(bad_choice(
                    &span,
                    &format!("the protocol of {place}"),
                    &p,
                    &["http", "https"],
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (Environment, Vec<Diagnostic>) {
        let (env, d) = parse(".devcontainer/devcontainer.json", text, Some("proj"));
        assert!(!d.iter().any(Diagnostic::is_error), "{d:#?}");
        (env.unwrap(), d)
    }

    #[test]
    fn image_defaults() {
        let (env, d) = ok(r#"{"image": "mcr.microsoft.com/devcontainers/base:debian"}"#);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(env.name, "proj");
        let c = env.tools_container().unwrap();
        assert_eq!(
            c.project_source.to_string(),
            "/workspaces/${localWorkspaceFolderBasename}"
        );
        assert_eq!(c.source_mapping, "/workspaces");
        assert_eq!(c.command.as_ref().unwrap()[2], KEEP_ALIVE);
    }

    #[test]
    fn build_paths_are_relative_to_the_root() {
        let (env, _) = ok(
            r#"{"build": {"dockerfile": "Dockerfile", "context": "..", "args": {"V": "${localEnv:V:1}"}}}"#,
        );
        let b = &env.images[0];
        assert_eq!(b.dockerfile, ".devcontainer/Dockerfile");
        assert_eq!(b.context, ".");
        assert_eq!(b.args[0].value.to_string(), "${localEnv:V:1}");
        let (env, _) = ok(r#"{"dockerFile": "../docker/dev.Dockerfile"}"#);
        assert_eq!(env.images[0].dockerfile, "docker/dev.Dockerfile");
        assert_eq!(env.images[0].context, ".devcontainer");
    }

    #[test]
    fn mounts() {
        let (env, d) = ok(r#"{"image": "x", "mounts": [
            "source=${localEnv:HOME}/.ssh,target=/home/u/.ssh,type=bind,readonly,consistency=cached",
            {"source": "cache", "target": "/cache", "type": "volume"},
            "type=tmpfs,target=/tmp/t"
        ], "workspaceMount": "source=${localWorkspaceFolder},target=/src,type=bind", "workspaceFolder": "/src/app"}"#);
        assert!(d.is_empty(), "{d:?}");
        let c = &env.containers[0];
        assert!(c.bind_mounts[0].read_only);
        assert_eq!(c.volume_mounts.len(), 2);
        assert_eq!(env.volumes[1].name, "tmpfs-3");
        assert!(env.volumes[1].ephemeral);
        assert_eq!(c.project_source.to_string(), "/src");
        assert_eq!(c.working_dir.as_ref().unwrap().to_string(), "/src/app");
        assert_eq!(c.source_mapping, "/");
    }

    #[test]
    fn a_stray_context_is_named() {
        let (_, d) = ok(r#"{"image": "x", "context": ".."}"#);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message
                .contains("`context` only goes with `dockerFile`"),
            "{d:?}"
        );
    }

    #[test]
    fn parent_dirs() {
        assert_eq!(parent_dir("/workspaces/x"), "/workspaces");
        assert_eq!(parent_dir("/x"), "/");
        assert_eq!(parent_dir("/a/b/"), "/a");
    }
}
