//! Devfile `components`: `container`, `volume` and `image` read field by field;
//! `kubernetes`, `openshift`, `plugin` and `custom` components are named in a warning and
//! ignored.

use archway_diag::{Diagnostic, Span, did_you_mean};

use super::parent::COMPONENT_TYPES;
use crate::fields::{self, Fields, bad_choice};
use crate::model::{Endpoint, EnvVar, Exposure, Protocol, Template, VolumeMount};
use crate::node::{Node, Value};
use crate::{paths, quantity};

const COMPONENT_KEYS: &[&str] = &[
    "name",
    "attributes",
    "container",
    "volume",
    "image",
    "kubernetes",
    "openshift",
    "plugin",
    "custom",
];
const CONTAINER_KEYS: &[&str] = &[
    "image",
    "env",
    "command",
    "args",
    "mountSources",
    "sourceMapping",
    "endpoints",
    "memoryLimit",
    "memoryRequest",
    "cpuLimit",
    "cpuRequest",
    "volumeMounts",
    "dedicatedPod",
    "annotation",
];
const ENV_KEYS: &[&str] = &["name", "value"];
const ENDPOINT_KEYS: &[&str] = &[
    "name",
    "targetPort",
    "exposure",
    "protocol",
    "path",
    "secure",
    "attributes",
    "annotation",
];
const VOLUME_MOUNT_KEYS: &[&str] = &["name", "path"];
const VOLUME_KEYS: &[&str] = &["size", "ephemeral"];
const IMAGE_KEYS: &[&str] = &["imageName", "autoBuild", "dockerfile"];
const DOCKERFILE_KEYS: &[&str] = &[
    "uri",
    "buildContext",
    "args",
    "rootRequired",
    "devfileRegistry",
    "git",
];
const EXPOSURES: &[&str] = &["public", "internal", "none"];
const PROTOCOLS: &[&str] = &["http", "https", "ws", "wss", "tcp", "udp"];

/// A component as read, with the positions validation needs.
#[derive(Debug)]
pub(crate) struct Component {
    pub(crate) name: String,
    pub(crate) name_span: Span,
    pub(crate) kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Container(ContainerDef),
    Volume {
        size: Option<u64>,
        ephemeral: bool,
    },
    Image(ImageDef),
    /// Warned about and left out (`kubernetes`, `openshift`, …).
    Ignored(&'static str),
    /// Broken (already reported): references to it are not reported again.
    Invalid,
}

impl Kind {
    /// "a container component", for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Kind::Container(_) => "a container component".into(),
            Kind::Volume { .. } => "a volume component".into(),
            Kind::Image(_) => "an image component".into(),
            Kind::Ignored(t) => format!("{} {t} component (ignored)", article(t)),
            Kind::Invalid => "an invalid component".into(),
        }
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[derive(Debug)]
pub(crate) struct ContainerDef {
    pub(crate) image: String,
    pub(crate) env: Vec<EnvVar>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) args: Option<Vec<String>>,
    pub(crate) mount_sources: bool,
    pub(crate) source_mapping: String,
    /// With the spans of the endpoint's name and of its port.
    pub(crate) endpoints: Vec<(Endpoint, Span, Span)>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) memory_request: Option<u64>,
    pub(crate) cpu_limit: Option<u64>,
    pub(crate) cpu_request: Option<u64>,
    /// With the span of the mount's `name`.
    pub(crate) volume_mounts: Vec<(VolumeMount, Span)>,
}

#[derive(Debug)]
pub(crate) struct ImageDef {
    pub(crate) image_name: String,
    pub(crate) auto_build: Option<bool>,
    pub(crate) dockerfile: String,
    pub(crate) context: String,
    pub(crate) args: Vec<EnvVar>,
    pub(crate) root_required: bool,
}

/// Reads every entry of `components`.
pub(crate) fn read_all(d: &mut Vec<Diagnostic>, list: &[Node]) -> Vec<Component> {
    list.iter().filter_map(|n| read(d, n)).collect()
}

fn read(d: &mut Vec<Diagnostic>, node: &Node) -> Option<Component> {
    let mut f = Fields::new(d, node, "a component", COMPONENT_KEYS)?;
    let (name, name_span) = match f.required_string_at(d, "name") {
        Some(n) => n,
        None => {
            for k in COMPONENT_KEYS {
                f.skip(k);
            }
            return None;
        }
    };
    let what = format!("component `{name}`");
    f.set_what(what.clone());
    f.unsupported(d, "attributes", "attributes are not interpreted");
    let present: Vec<&str> = COMPONENT_TYPES
        .iter()
        .copied()
        .filter(|t| f.has(t))
        .collect();
    let kind = match present.as_slice() {
        [] => {
            let mut e = Diagnostic::error(
                f.span(),
                format!("{what} has no type: give it one of `container`, `volume` or `image`"),
            );
            if let Some(k) = node.as_map().unwrap_or_default().iter().find_map(|(k, _)| {
                let k = k.as_str()?;
                (!COMPONENT_KEYS.contains(&k))
                    .then(|| did_you_mean(k, COMPONENT_TYPES.iter().copied()).map(|h| (k, h)))
                    .flatten()
            }) {
                e = e.with_hint(format!("`{}` looks like a misspelling of `{}`", k.0, k.1));
            }
            d.push(e);
            Kind::Invalid
        }
        [t] => {
            let t = *t;
            let body = f.take(t);
            match (t, body) {
                ("container", Some(b)) => {
                    container(d, b, &name).map_or(Kind::Invalid, Kind::Container)
                }
                ("volume", b) => volume(d, b, &name),
                ("image", Some(b)) => image(d, b, &name).map_or(Kind::Invalid, Kind::Image),
                ("container" | "image", None) => {
                    d.push(Diagnostic::error(
                        f.span(),
                        format!("{what}: `{t}` is empty"),
                    ));
                    Kind::Invalid
                }
                (t, _) => {
                    d.push(
                        Diagnostic::warning(
                            &name_span,
                            format!(
                                "{what} is {} {t} component, which is not supported; ignored",
                                article(t)
                            ),
                        )
                        .with_hint("Archway runs container, volume and image components"),
                    );
                    Kind::Ignored(t)
                }
            }
        }
        many => {
            d.push(Diagnostic::error(
                f.span(),
                format!(
                    "{what} has more than one type ({}); a component is exactly one of them",
                    fields::all_of(many)
                ),
            ));
            for t in many {
                f.skip(t);
            }
            Kind::Invalid
        }
    };
    f.finish(d);
    Some(Component {
        name,
        name_span,
        kind,
    })
}

/// A quantity field: `memoryLimit: 512Mi`.
fn quantity_field(
    d: &mut Vec<Diagnostic>,
    f: &mut Fields<'_>,
    key: &str,
    parse: fn(&str) -> Result<u64, quantity::QuantityError>,
) -> Option<u64> {
    let (text, span) = f.text_at(d, key)?;
    match parse(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut diag =
                Diagnostic::error(&span, format!("`{key}` of {} is `{text}`: {e}", f.what()));
            if let Some(stem) = text.strip_suffix('B').or_else(|| text.strip_suffix('b'))
                && !stem.ends_with('i')
                && parse(stem).is_ok()
            {
                diag = diag.with_hint(format!("did you mean `{stem}` or `{stem}i`?"));
            }
            d.push(diag);
            None
        }
    }
}

/// An `env` list: `[{name, value}]`.
pub(crate) fn env_list(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Vec<EnvVar> {
    let Some(items) = node.as_seq() else {
        d.push(fields::type_error(
            node,
            place,
            "a list of `name`/`value` entries",
        ));
        return Vec::new();
    };
    let mut out: Vec<EnvVar> = Vec::new();
    for item in items {
        let Some(mut f) = Fields::new(d, item, format!("an entry of {place}"), ENV_KEYS) else {
            continue;
        };
        let name = f.required_string_at(d, "name");
        if let Some((n, _)) = &name {
            f.set_what(format!("variable `{n}` of {place}"));
        }
        let value = if f.has("value") {
            // `value:` with nothing after it is the empty string.
            match item.get("value") {
                Some(v) if matches!(v.value, Value::Null) => {
                    f.skip("value");
                    Some(String::new())
                }
                _ => f.text(d, "value"),
            }
        } else {
            f.missing(d, "value");
            None
        };
        f.finish(d);
        if let (Some((name, span)), Some(value)) = (name, value) {
            if let Some(prev) = out.iter().position(|e| e.name == name) {
                d.push(Diagnostic::warning(
                    &span,
                    format!("variable `{name}` is set twice in {place}; the later one wins"),
                ));
                out.remove(prev);
            }
            out.push(EnvVar {
                name,
                value: Template::plain(value),
            });
        }
    }
    out
}

fn container(d: &mut Vec<Diagnostic>, node: &Node, name: &str) -> Option<ContainerDef> {
    let what = format!("container component `{name}`");
    let mut f = Fields::new(d, node, what.clone(), CONTAINER_KEYS)?;
    let image = f.required_string(d, "image");
    let env = f
        .take("env")
        .map(|n| env_list(d, n, &format!("`env` of {what}")))
        .unwrap_or_default();
    let command = f.text_list(d, "command");
    let args = f.text_list(d, "args");
    let mount_sources = f.bool(d, "mountSources").unwrap_or(true);
    let source_mapping = match f.string_at(d, "sourceMapping") {
        Some((s, span)) if !s.starts_with('/') => {
            d.push(Diagnostic::error(
                &span,
                format!("`sourceMapping` of {what} must be an absolute path, found `{s}`"),
            ));
            "/projects".to_owned()
        }
        Some((s, _)) => paths::normalize(std::path::Path::new(&s)),
        None => "/projects".to_owned(),
    };
    let mut endpoints = Vec::new();
    if let Some(list) = f.take("endpoints") {
        match list.as_seq() {
            Some(items) => {
                for item in items {
                    if let Some(e) = endpoint(d, item, name) {
                        endpoints.push(e);
                    }
                }
            }
            None => d.push(fields::type_error(
                list,
                &format!("`endpoints` of {what}"),
                "a list",
            )),
        }
    }
    let memory_limit = quantity_field(d, &mut f, "memoryLimit", quantity::parse_bytes);
    let memory_request = quantity_field(d, &mut f, "memoryRequest", quantity::parse_bytes);
    let cpu_limit = quantity_field(d, &mut f, "cpuLimit", quantity::parse_millicores);
    let cpu_request = quantity_field(d, &mut f, "cpuRequest", quantity::parse_millicores);
    let mut volume_mounts = Vec::new();
    if let Some(list) = f.take("volumeMounts") {
        match list.as_seq() {
            Some(items) => {
                for item in items {
                    let Some(mut vf) = Fields::new(
                        d,
                        item,
                        format!("a volume mount of {what}"),
                        VOLUME_MOUNT_KEYS,
                    ) else {
                        continue;
                    };
                    let vname = vf.required_string_at(d, "name");
                    let path = match vf.string_at(d, "path") {
                        Some((p, span)) if !p.starts_with('/') => {
                            d.push(Diagnostic::error(
                                &span,
                                format!("the path of a volume mount must be absolute, found `{p}`"),
                            ));
                            None
                        }
                        Some((p, _)) => Some(p),
                        None => vname.as_ref().map(|(n, _)| format!("/{n}")),
                    };
                    vf.finish(d);
                    if let (Some((volume, span)), Some(path)) = (vname, path) {
                        volume_mounts.push((VolumeMount { volume, path }, span));
                    }
                }
            }
            None => d.push(fields::type_error(
                list,
                &format!("`volumeMounts` of {what}"),
                "a list",
            )),
        }
    }
    f.unsupported(
        d,
        "dedicatedPod",
        "all containers of an environment share one network namespace",
    );
    f.unsupported(
        d,
        "annotation",
        "there are no Kubernetes objects to annotate",
    );
    f.finish(d);
    Some(ContainerDef {
        image: image?,
        env,
        command,
        args,
        mount_sources,
        source_mapping,
        endpoints,
        memory_limit,
        memory_request,
        cpu_limit,
        cpu_request,
        volume_mounts,
    })
}

fn endpoint(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    component: &str,
) -> Option<(Endpoint, Span, Span)> {
    let mut f = Fields::new(
        d,
        node,
        format!("an endpoint of container component `{component}`"),
        ENDPOINT_KEYS,
    )?;
    let name = f.required_string_at(d, "name");
    let what = match &name {
        Some((n, _)) => format!("endpoint `{n}`"),
        None => "an endpoint".to_owned(),
    };
    if name.is_some() {
        f.set_what(format!("{what} of container component `{component}`"));
    }
    let port = match f.take("targetPort") {
        None => {
            f.missing(d, "targetPort");
            None
        }
        Some(p) => match &p.value {
            Value::Int(i) if (1..=65535).contains(i) => {
                u16::try_from(*i).ok().map(|v| (v, p.span.clone()))
            }
            Value::Int(i) => {
                d.push(Diagnostic::error(
                    &p.span,
                    format!("`targetPort` {i} of {what} is out of range: ports are 1 to 65535"),
                ));
                None
            }
            _ => {
                let mut e =
                    fields::type_error(p, &format!("`targetPort` of {what}"), "a port number");
                if p.as_str().is_some_and(|s| s.parse::<u16>().is_ok()) {
                    e = e.with_hint("remove the quotes");
                }
                d.push(e);
                None
            }
        },
    };
    let exposure = match f.string_at(d, "exposure") {
        None => Some(Exposure::Public),
        Some((s, span)) => match s.as_str() {
            "public" => Some(Exposure::Public),
            "internal" => Some(Exposure::Internal),
            "none" => Some(Exposure::None),
            _ => {
                d.push(bad_choice(
                    &span,
                    &format!("`exposure` of {what}"),
                    &s,
                    EXPOSURES,
                ));
                None
            }
        },
    };
    let protocol = match f.string_at(d, "protocol") {
        None => Some(Protocol::Http),
        Some((s, span)) => match s.as_str() {
            "http" => Some(Protocol::Http),
            "https" => Some(Protocol::Https),
            "ws" => Some(Protocol::Ws),
            "wss" => Some(Protocol::Wss),
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => {
                d.push(bad_choice(
                    &span,
                    &format!("`protocol` of {what}"),
                    &s,
                    PROTOCOLS,
                ));
                None
            }
        },
    };
    let path = f.string(d, "path");
    let secure = f.bool(d, "secure").unwrap_or(false);
    f.unsupported(d, "attributes", "attributes are not interpreted");
    f.unsupported(
        d,
        "annotation",
        "there are no Kubernetes objects to annotate",
    );
    f.finish(d);
    let (name, name_span) = name?;
    let (port, port_span) = port?;
    Some((
        Endpoint {
            name,
            port,
            exposure: exposure?,
            protocol: protocol?,
            path,
            secure,
        },
        name_span,
        port_span,
    ))
}

fn volume(d: &mut Vec<Diagnostic>, node: Option<&Node>, name: &str) -> Kind {
    // `volume: {}` (or nothing) is a volume with defaults.
    let Some(node) = node else {
        return Kind::Volume {
            size: None,
            ephemeral: false,
        };
    };
    let Some(mut f) = Fields::new(d, node, format!("volume component `{name}`"), VOLUME_KEYS)
    else {
        return Kind::Invalid;
    };
    let size = quantity_field(d, &mut f, "size", quantity::parse_bytes);
    let ephemeral = f.bool(d, "ephemeral").unwrap_or(false);
    f.finish(d);
    Kind::Volume { size, ephemeral }
}

/// Build arguments as devfiles write them: `KEY=VALUE`, or `--build-arg` then `KEY=VALUE`.
fn build_args(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Vec<EnvVar> {
    let Some(items) = fields::text_list(d, node, place) else {
        return Vec::new();
    };
    let spans: Vec<Span> = node
        .as_seq()
        .unwrap_or_default()
        .iter()
        .map(|n| n.span.clone())
        .collect();
    let mut out = Vec::new();
    for (item, span) in items.iter().zip(&spans) {
        if item == "--build-arg" {
            continue;
        }
        let arg = item.strip_prefix("--build-arg=").unwrap_or(item);
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push(EnvVar {
                name: k.to_owned(),
                value: Template::plain(v),
            }),
            _ => d.push(
                Diagnostic::warning(
                    span,
                    format!("build argument `{item}` in {place} is not KEY=VALUE; ignored"),
                )
                .with_hint("other `docker build` options are not supported"),
            ),
        }
    }
    out
}

fn image(d: &mut Vec<Diagnostic>, node: &Node, name: &str) -> Option<ImageDef> {
    let what = format!("image component `{name}`");
    let mut f = Fields::new(d, node, what.clone(), IMAGE_KEYS)?;
    let image_name = f.required_string(d, "imageName");
    let auto_build = f.bool(d, "autoBuild");
    let dockerfile = match f.take("dockerfile") {
        Some(n) => dockerfile(d, n, &what),
        None => {
            f.missing(d, "dockerfile");
            None
        }
    };
    f.finish(d);
    let (dockerfile, context, args, root_required) = dockerfile?;
    Some(ImageDef {
        image_name: image_name?,
        auto_build,
        dockerfile,
        context,
        args,
        root_required,
    })
}

/// `dockerfile:` → (Dockerfile path, context, build args, rootRequired); paths relative to
/// the repository root.
fn dockerfile(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    what: &str,
) -> Option<(String, String, Vec<EnvVar>, bool)> {
    let place = format!("`dockerfile` of {what}");
    let mut f = Fields::new(d, node, place.clone(), DOCKERFILE_KEYS)?;
    for remote in ["devfileRegistry", "git"] {
        if let Some((k, _)) = f.take_entry(remote) {
            d.push(
                Diagnostic::error(
                    &k.span,
                    format!("a Dockerfile from `{remote}` needs network, use uri: a local path"),
                )
                .with_hint("keep the Dockerfile in the repository and name it with `uri:`"),
            );
        }
    }
    // Paths are relative to the devfile that holds them (a parent's to the parent).
    let file = node.span.file.clone();
    let uri = match f.string_at(d, "uri") {
        Some((u, span)) if u.starts_with("http://") || u.starts_with("https://") => {
            d.push(
                Diagnostic::error(
                    &span,
                    format!("remote Dockerfile `{u}` needs network, use uri: a local path"),
                )
                .with_hint("keep the Dockerfile in the repository"),
            );
            None
        }
        Some((u, _)) => Some(paths::beside(&file, &u)),
        None => {
            if !f.has("devfileRegistry") && !f.has("git") {
                f.missing(d, "uri");
            }
            None
        }
    };
    let context = f
        .string(d, "buildContext")
        .map_or_else(|| paths::beside(&file, "."), |c| paths::beside(&file, &c));
    let args = f
        .take("args")
        .map(|n| build_args(d, n, &format!("`args` of {place}")))
        .unwrap_or_default();
    let root_required = f.bool(d, "rootRequired").unwrap_or(false);
    f.finish(d);
    Some((uri?, context, args, root_required))
}
