//! The devfile front end: `devfile.yaml` (schema 2.0 to 2.3) → [`Environment`].
//!
//! `parent` reads the file and its local parents into one tree (variables substituted,
//! parents merged); `components` and `commands` read the entries; `validate` checks names
//! and references; this module reads `metadata` and `projects` and lowers everything:
//!
//! * every `container` component becomes a [`Container`]; the first that mounts the sources
//!   is the tools container; an image an `image` component builds (same `imageName`) is built,
//!   not pulled;
//! * `volume` components become [`Volume`]s, `image` components [`ImageBuild`]s (built at
//!   start when `autoBuild` says so, or when no `apply` command builds them);
//! * the first project is the current repository: `PROJECT_SOURCE` is
//!   `sourceMapping/clonePath` (just `sourceMapping` without a project);
//! * `postStart` and `preStop` events run commands; `preStart` (init containers in
//!   Kubernetes) and `postStop` are warned about and not run.

mod commands;
mod components;
mod parent;
mod validate;
mod vars;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use archway_diag::{Diagnostic, Span};

pub use validate::sanitize_name;

use self::commands::{CmdKind, CommandDef};
use self::components::Kind;
use crate::fields::{self, Fields};
use crate::model::{
    Action, Command, CommandLine, Container, Environment, Events, Format, ImageBuild, ImageSource,
    Metadata, Project, Template, Volume,
};
use crate::node::Node;
use crate::{FileSource, paths, quantity};

const METADATA_KEYS: &[&str] = &[
    "name",
    "version",
    "displayName",
    "description",
    "tags",
    "architectures",
    "icon",
    "globalMemoryLimit",
    "projectType",
    "language",
    "website",
    "provider",
    "supportUrl",
    "attributes",
];
const PROJECT_KEYS: &[&str] = &[
    "name",
    "clonePath",
    "git",
    "zip",
    "github",
    "custom",
    "attributes",
    "sparseCheckoutDirs",
];
const GIT_KEYS: &[&str] = &["remotes", "checkoutFrom"];
const CHECKOUT_KEYS: &[&str] = &["remote", "revision"];
const ZIP_KEYS: &[&str] = &["location"];
const ARCHITECTURES: &[&str] = &["amd64", "arm64", "ppc64le", "s390x"];

/// Reads the devfile `display` (a path relative to `root`, which `fs` reads parents from).
/// `default_name` names the environment when `metadata.name` does not.
pub(crate) fn parse(
    display: &str,
    text: &str,
    root: &Path,
    fs: &dyn FileSource,
    default_name: Option<&str>,
) -> (Option<Environment>, Vec<Diagnostic>) {
    let mut d = Vec::new();
    let src = parent::Source { root, fs };
    let tree = parent::load(
        &mut d,
        &src,
        display,
        text,
        &vars::Variables::new(),
        &mut Vec::new(),
    );
    let Some(tree) = tree else {
        return (None, d);
    };
    let env = lower(&mut d, &tree, default_name);
    (Some(env), d)
}

fn list<'n>(d: &mut Vec<Diagnostic>, root: &'n Node, key: &str) -> &'n [Node] {
    match root.get(key) {
        Some(n) => match n.as_seq() {
            Some(items) => items,
            None => {
                if !matches!(n.value, crate::node::Value::Null) {
                    d.push(fields::type_error(n, &format!("`{key}`"), "a list"));
                }
                &[]
            }
        },
        None => &[],
    }
}

fn metadata(d: &mut Vec<Diagnostic>, node: &Node) -> Metadata {
    let mut m = Metadata::default();
    let Some(mut f) = Fields::new(d, node, "`metadata`", METADATA_KEYS) else {
        return m;
    };
    m.name = f.text(d, "name");
    m.version = f.text(d, "version");
    m.display_name = f.text(d, "displayName");
    m.description = f.text(d, "description");
    m.tags = f.text_list(d, "tags").unwrap_or_default();
    if let Some(archs) = f.take("architectures")
        && let Some(list) = fields::text_list(d, archs, "`architectures` of `metadata`")
    {
        for (a, n) in list.iter().zip(archs.as_seq().unwrap_or_default()) {
            if !ARCHITECTURES.contains(&a.as_str()) {
                d.push(fields::bad_choice(
                    &n.span,
                    "an architecture",
                    a,
                    ARCHITECTURES,
                ));
            }
        }
        m.architectures = list;
    }
    m.icon = f.string(d, "icon");
    if let Some((text, span)) = f.text_at(d, "globalMemoryLimit") {
        match quantity::parse_bytes(&text) {
            Ok(v) => m.global_memory_limit = Some(v),
            Err(e) => d.push(Diagnostic::error(
                &span,
                format!("`globalMemoryLimit` of `metadata` is `{text}`: {e}"),
            )),
        }
    }
    m.project_type = f.text(d, "projectType");
    m.language = f.text(d, "language");
    m.website = f.string(d, "website");
    m.provider = f.text(d, "provider");
    m.support_url = f.string(d, "supportUrl");
    f.unsupported(d, "attributes", "attributes are not interpreted");
    f.finish(d);
    m
}

/// One project entry, with its name's span.
fn project(d: &mut Vec<Diagnostic>, node: &Node) -> Option<(Project, Span)> {
    let mut f = Fields::new(d, node, "a project", PROJECT_KEYS)?;
    let name = f.required_string_at(d, "name");
    let what = match &name {
        Some((n, _)) => format!("project `{n}`"),
        None => "a project".to_owned(),
    };
    f.set_what(what.clone());
    let clone_path = match f.string_at(d, "clonePath") {
        Some((p, span)) => {
            let norm = paths::normalize(Path::new(&p));
            if paths::escapes(&norm) || norm == "." {
                d.push(Diagnostic::error(
                    &span,
                    format!("`clonePath` of {what} must be a relative path inside the projects root, found `{p}`"),
                ));
                None
            } else {
                Some(norm)
            }
        }
        None => None,
    };
    let mut remote = None;
    let mut revision = None;
    if let Some(git) = f.take("git")
        && let Some(mut gf) = Fields::new(d, git, format!("`git` of {what}"), GIT_KEYS)
    {
        let remotes: Vec<(String, String)> = match gf.take("remotes") {
            Some(r) => match r.as_map() {
                Some(entries) => entries
                    .iter()
                    .filter_map(|(k, v)| {
                        let url = fields::string(
                            d,
                            v,
                            &format!("remote `{}`", k.as_str().unwrap_or_default()),
                        )?;
                        Some((k.scalar_text().unwrap_or_default(), url))
                    })
                    .collect(),
                None => {
                    d.push(fields::type_error(
                        r,
                        &format!("`remotes` of {what}"),
                        "a mapping of names to URLs",
                    ));
                    Vec::new()
                }
            },
            None => {
                gf.missing(d, "remotes");
                Vec::new()
            }
        };
        let mut chosen = None;
        if let Some(co) = gf.take("checkoutFrom")
            && let Some(mut cf) =
                Fields::new(d, co, format!("`checkoutFrom` of {what}"), CHECKOUT_KEYS)
        {
            if let Some((r, span)) = cf.string_at(d, "remote") {
                match remotes.iter().find(|(n, _)| *n == r) {
                    Some((_, url)) => chosen = Some(url.clone()),
                    None => d.push(Diagnostic::error(
                        &span,
                        format!("`checkoutFrom` of {what} names remote `{r}`, which `remotes` does not have"),
                    )),
                }
            }
            revision = cf.text(d, "revision");
            cf.finish(d);
        }
        remote = chosen.or_else(|| remotes.first().map(|(_, u)| u.clone()));
        gf.finish(d);
    }
    if let Some(zip) = f.take("zip")
        && let Some(mut zf) = Fields::new(d, zip, format!("`zip` of {what}"), ZIP_KEYS)
    {
        remote = zf.string(d, "location").or(remote);
        zf.finish(d);
    }
    f.unsupported(d, "github", "name the repository with `git:`");
    f.unsupported(d, "custom", "custom project sources are not fetched");
    f.unsupported(d, "attributes", "attributes are not interpreted");
    f.unsupported(d, "sparseCheckoutDirs", "the whole repository is mounted");
    f.finish(d);
    let (name, span) = name?;
    Some((
        Project {
            clone_path: clone_path.unwrap_or_else(|| name.clone()),
            name,
            remote,
            revision,
        },
        span,
    ))
}

fn join(root: &str, rel: &str) -> String {
    if root.ends_with('/') {
        format!("{root}{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

fn lower(d: &mut Vec<Diagnostic>, tree: &parent::Tree, default_name: Option<&str>) -> Environment {
    let root = &tree.root;
    let metadata = root
        .get("metadata")
        .filter(|m| !matches!(m.value, crate::node::Value::Null))
        .map(|m| metadata(d, m))
        .unwrap_or_default();

    // Projects: the first is the repository.
    let mut projects = Vec::new();
    for p in list(d, root, "projects") {
        if let Some(p) = project(d, p) {
            projects.push(p);
        }
    }
    for (i, (p, span)) in projects.iter().enumerate() {
        validate::check_name(d, &p.name, span, "project", validate::MAX_NAME);
        if let Some((first, _)) = projects[..i].iter().find(|(q, _)| q.name == p.name) {
            d.push(Diagnostic::error(
                span,
                format!("project `{}` is defined twice", first.name),
            ));
        } else if i > 0 {
            d.push(
                Diagnostic::warning(
                    span,
                    format!("project `{}` is not cloned: the environment works on the current repository, the first project", p.name),
                )
                .with_hint("clone other repositories from a postStart command if you need them"),
            );
        }
    }
    let project = projects.into_iter().next().map(|(p, _)| p);

    let component_nodes = list(d, root, "components");
    let components = components::read_all(d, component_nodes);
    let command_nodes = list(d, root, "commands");
    let command_defs = commands::read_all(d, command_nodes);
    let events = root
        .get("events")
        .filter(|e| !matches!(e.value, crate::node::Value::Null))
        .map(|e| commands::events(d, e))
        .unwrap_or_default();
    if let Some(span) = &events.pre_start_key {
        d.push(
            Diagnostic::warning(
                span,
                "`preStart` commands are not run: Archway has no init containers; ignored",
            )
            .with_hint("run them from `postStart` instead"),
        );
    }
    if let Some(span) = &events.post_stop_key {
        d.push(Diagnostic::warning(
            span,
            "`postStop` commands are not run: nothing is left to run them in once the containers stop; ignored",
        ));
    }
    // Commands left out: ignored ones (a reference to them is warned about) and broken
    // ones (already reported).
    let mut left_out: BTreeMap<String, bool> =
        validate::validate(d, &components, &command_defs, &events)
            .into_iter()
            .map(|id| (id, true))
            .collect();
    for c in &command_defs {
        if matches!(c.kind, CmdKind::Invalid) {
            left_out.entry(c.id.clone()).or_insert(false);
        }
    }

    // Images: built at start when asked, or when no apply command builds them.
    let applied: Vec<&str> = command_defs
        .iter()
        .filter_map(|c| match &c.kind {
            CmdKind::Apply { component } => Some(component.0.as_str()),
            _ => None,
        })
        .collect();
    let mut images = Vec::new();
    let mut volumes = Vec::new();
    for c in &components {
        match &c.kind {
            Kind::Image(i) => images.push(ImageBuild {
                name: c.name.clone(),
                image_name: Some(i.image_name.clone()),
                dockerfile: i.dockerfile.clone(),
                context: i.context.clone(),
                args: i.args.clone(),
                target: None,
                auto_build: i.auto_build.unwrap_or(!applied.contains(&c.name.as_str())),
                root_required: i.root_required,
            }),
            Kind::Volume { size, ephemeral } => volumes.push(Volume {
                name: c.name.clone(),
                size: *size,
                ephemeral: *ephemeral,
            }),
            _ => {}
        }
    }

    let mut containers = Vec::new();
    let mut tools_taken = false;
    for c in &components {
        let Kind::Container(def) = &c.kind else {
            continue;
        };
        let image = match images
            .iter()
            .find(|b| b.image_name.as_deref() == Some(def.image.as_str()))
        {
            Some(b) => ImageSource::Build(b.name.clone()),
            None => ImageSource::Pull(def.image.clone()),
        };
        let tools = def.mount_sources && !tools_taken;
        tools_taken |= tools;
        let project_source = match &project {
            Some(p) => join(&def.source_mapping, &p.clone_path),
            None => def.source_mapping.clone(),
        };
        containers.push(Container {
            name: c.name.clone(),
            tools,
            image,
            env: def.env.clone(),
            remote_env: Vec::new(),
            command: def.command.clone(),
            args: def.args.clone(),
            mount_sources: def.mount_sources,
            source_mapping: def.source_mapping.clone(),
            project_source: Template::plain(project_source),
            working_dir: None,
            volume_mounts: def.volume_mounts.iter().map(|(m, _)| m.clone()).collect(),
            bind_mounts: Vec::new(),
            endpoints: def.endpoints.iter().map(|(e, _, _)| e.clone()).collect(),
            memory_limit: def.memory_limit,
            memory_request: def.memory_request,
            cpu_limit: def.cpu_limit,
            cpu_request: def.cpu_request,
            user: None,
            remote_user: None,
            init: false,
        });
    }

    let commands = lower_commands(d, &command_defs, &left_out);
    let keep = |d: &mut Vec<Diagnostic>, key: &str, list: &[(String, Span)]| -> Vec<String> {
        list.iter()
            .filter(|(id, span)| match left_out.get(id) {
                Some(warn) => {
                    if *warn {
                        d.push(Diagnostic::warning(
                            span,
                            format!("event `{key}` runs command `{id}`, which is ignored; skipped"),
                        ));
                    }
                    false
                }
                None => true,
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let events = Events {
        post_start: keep(d, "postStart", &events.post_start),
        pre_stop: keep(d, "preStop", &events.pre_stop),
        ..Events::default()
    };

    let name = metadata
        .name
        .as_deref()
        .map(sanitize_name)
        .filter(|n| !n.is_empty())
        .or_else(|| default_name.map(str::to_owned))
        .unwrap_or_else(|| "devfile".to_owned());
    Environment {
        name,
        format: Format::Devfile {
            schema_version: tree.schema_version.clone(),
        },
        metadata,
        project,
        containers,
        volumes,
        images,
        commands,
        events,
    }
}

fn lower_commands(
    d: &mut Vec<Diagnostic>,
    defs: &[CommandDef],
    left_out: &BTreeMap<String, bool>,
) -> Vec<Command> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for c in defs {
        if left_out.contains_key(&c.id) || !seen.insert(c.id.as_str()) {
            continue;
        }
        let action = match &c.kind {
            CmdKind::Exec {
                component,
                command_line,
                working_dir,
                env,
                hot_reload_capable,
            } => Action::Exec {
                container: component.0.clone(),
                command_line: CommandLine::Shell(command_line.clone()),
                working_dir: working_dir.clone(),
                env: env.clone(),
                hot_reload_capable: *hot_reload_capable,
            },
            CmdKind::Composite { commands, parallel } => {
                let mut kept = Vec::new();
                for (id, span) in commands {
                    match left_out.get(id) {
                        Some(true) => d.push(Diagnostic::warning(
                            span,
                            format!(
                                "composite command `{}` runs `{id}`, which is ignored; skipped",
                                c.id
                            ),
                        )),
                        Some(false) => {}
                        None => kept.push(id.clone()),
                    }
                }
                Action::Composite {
                    commands: kept,
                    parallel: *parallel,
                }
            }
            CmdKind::Apply { component } => Action::Apply {
                image: component.0.clone(),
            },
            CmdKind::Ignored | CmdKind::Invalid => continue,
        };
        out.push(Command {
            id: c.id.clone(),
            label: c.label.clone(),
            group: c.group.as_ref().map(|(g, _)| g.clone()),
            action,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryFiles;

    fn parse_ok(text: &str) -> (Environment, Vec<Diagnostic>) {
        let (env, d) = parse(
            "devfile.yaml",
            text,
            Path::new(""),
            &MemoryFiles::default(),
            None,
        );
        assert!(!d.iter().any(Diagnostic::is_error), "{d:#?}");
        (env.unwrap(), d)
    }

    #[test]
    fn minimal() {
        let (env, d) = parse_ok(
            "schemaVersion: 2.2.0\nmetadata: {name: My App}\ncomponents:\n  - name: tools\n    container: {image: alpine}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(env.name, "my-app");
        let c = env.tools_container().unwrap();
        assert_eq!(c.project_source.as_plain().as_deref(), Some("/projects"));
        assert!(c.mount_sources);
    }

    #[test]
    fn project_source_follows_clone_path() {
        let (env, _) = parse_ok(
            "schemaVersion: 2.1.0\nprojects:\n  - name: app\n    clonePath: src/app\n    git: {remotes: {origin: 'https://x/app.git'}}\ncomponents:\n  - name: t\n    container: {image: a, sourceMapping: /work/}\n",
        );
        let c = &env.containers[0];
        assert_eq!(
            c.project_source.as_plain().as_deref(),
            Some("/work/src/app")
        );
        assert_eq!(
            env.project.unwrap().remote.as_deref(),
            Some("https://x/app.git")
        );
    }

    #[test]
    fn default_commands_and_endpoints() {
        let (env, _) = parse_ok(
            "schemaVersion: 2.2.0\ncomponents:\n  - name: t\n    container:\n      image: a\n      endpoints: [{name: web, targetPort: 80}]\ncommands:\n  - id: b\n    exec: {component: t, commandLine: make, group: {kind: build}}\n  - id: r1\n    exec: {component: t, commandLine: x, group: {kind: run}}\n  - id: r2\n    exec: {component: t, commandLine: y, group: {kind: run, isDefault: true}}\n  - id: t1\n    exec: {component: t, commandLine: y, group: {kind: test}}\n  - id: t2\n    exec: {component: t, commandLine: y, group: {kind: test}}\n",
        );
        use crate::GroupKind;
        assert_eq!(
            env.default_command(GroupKind::Build).unwrap().id,
            "b",
            "the only one"
        );
        assert_eq!(env.default_command(GroupKind::Run).unwrap().id, "r2");
        assert!(
            env.default_command(GroupKind::Test).is_none(),
            "two, neither default"
        );
        assert!(env.default_command(GroupKind::Debug).is_none());
        let eps: Vec<(&str, u16)> = env
            .endpoints()
            .map(|(c, e)| (c.name.as_str(), e.port))
            .collect();
        assert_eq!(eps, [("t", 80)]);
        assert_eq!(env.command("r1").unwrap().id, "r1");
        assert!(env.container("t").is_some());
    }

    #[test]
    fn errors_stop_before_the_model_is_used() {
        let (env, d) = parse(
            "devfile.yaml",
            "schemaVersion: 2.2.0\ncommands:\n  - id: run\n    exec: {commandLine: x, component: nope}\n",
            Path::new(""),
            &MemoryFiles::default(),
            None,
        );
        assert!(env.is_some());
        assert!(
            d.iter()
                .any(|e| e.is_error() && e.message.contains("`nope`")),
            "{d:?}"
        );
    }
}
