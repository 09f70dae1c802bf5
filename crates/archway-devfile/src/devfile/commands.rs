//! Devfile `commands` (`exec`, `composite`, `apply`; `vscodeTask`, `vscodeLaunch` and `custom`
//! warned about and ignored) and `events`.

use archway_diag::{Diagnostic, Span, did_you_mean};

use super::components::env_list;
use super::parent::COMMAND_TYPES;
use crate::fields::{self, Fields, bad_choice};
use crate::model::{EnvVar, Group, GroupKind};
use crate::node::Node;

const COMMAND_KEYS: &[&str] = &[
    "id",
    "attributes",
    "exec",
    "composite",
    "apply",
    "vscodeTask",
    "vscodeLaunch",
    "custom",
];
const EXEC_KEYS: &[&str] = &[
    "commandLine",
    "component",
    "workingDir",
    "env",
    "group",
    "hotReloadCapable",
    "label",
];
const COMPOSITE_KEYS: &[&str] = &["commands", "parallel", "group", "label"];
const APPLY_KEYS: &[&str] = &["component", "group", "label"];
const GROUP_KEYS: &[&str] = &["kind", "isDefault"];
pub(crate) const EVENT_KEYS: &[&str] = &["preStart", "postStart", "preStop", "postStop"];

/// A command as read, with the positions validation needs.
#[derive(Debug)]
pub(crate) struct CommandDef {
    pub(crate) id: String,
    pub(crate) id_span: Span,
    pub(crate) label: Option<String>,
    /// With the span of `isDefault` (or of the group).
    pub(crate) group: Option<(Group, Span)>,
    pub(crate) kind: CmdKind,
}

#[derive(Debug)]
pub(crate) enum CmdKind {
    Exec {
        component: (String, Span),
        command_line: String,
        working_dir: Option<String>,
        env: Vec<EnvVar>,
        hot_reload_capable: bool,
    },
    Composite {
        commands: Vec<(String, Span)>,
        parallel: bool,
    },
    Apply {
        component: (String, Span),
    },
    /// Warned about and left out.
    Ignored,
    /// Broken (already reported).
    Invalid,
}

/// Reads every entry of `commands`.
pub(crate) fn read_all(d: &mut Vec<Diagnostic>, list: &[Node]) -> Vec<CommandDef> {
    list.iter().filter_map(|n| read(d, n)).collect()
}

fn read(d: &mut Vec<Diagnostic>, node: &Node) -> Option<CommandDef> {
    let mut f = Fields::new(d, node, "a command", COMMAND_KEYS)?;
    let Some((id, id_span)) = f.required_string_at(d, "id") else {
        for k in COMMAND_KEYS {
            f.skip(k);
        }
        return None;
    };
    let what = format!("command `{id}`");
    f.set_what(what.clone());
    f.unsupported(d, "attributes", "attributes are not interpreted");
    let present: Vec<&'static str> = COMMAND_TYPES.iter().copied().filter(|t| f.has(t)).collect();
    let mut label = None;
    let mut group = None;
    let kind = match present.as_slice() {
        [] => {
            let mut e = Diagnostic::error(
                f.span(),
                format!("{what} has no type: give it one of `exec`, `composite` or `apply`"),
            );
            if let Some((k, h)) = node.as_map().unwrap_or_default().iter().find_map(|(k, _)| {
                let k = k.as_str()?;
                if COMMAND_KEYS.contains(&k) {
                    return None;
                }
                did_you_mean(k, COMMAND_TYPES.iter().copied()).map(|h| (k, h))
            }) {
                e = e.with_hint(format!("`{k}` looks like a misspelling of `{h}`"));
            }
            d.push(e);
            CmdKind::Invalid
        }
        [t] => {
            let t: &'static str = t;
            match (t, f.take(t)) {
                ("exec" | "composite" | "apply", None) => {
                    d.push(Diagnostic::error(
                        f.span(),
                        format!("{what}: `{t}` is empty"),
                    ));
                    CmdKind::Invalid
                }
                ("exec", Some(b)) => exec(d, b, &what, &mut label, &mut group),
                ("composite", Some(b)) => composite(d, b, &what, &mut label, &mut group),
                ("apply", Some(b)) => apply(d, b, &what, &mut label, &mut group),
                (other, _) => {
                    d.push(
                        Diagnostic::warning(
                            &id_span,
                            format!("{what} is a {other} command, which is not supported; ignored"),
                        )
                        .with_hint("Archway runs exec, composite and apply commands"),
                    );
                    CmdKind::Ignored
                }
            }
        }
        many => {
            d.push(Diagnostic::error(
                f.span(),
                format!(
                    "{what} has more than one type ({}); a command is exactly one of them",
                    fields::all_of(many)
                ),
            ));
            for t in many {
                f.skip(t);
            }
            CmdKind::Invalid
        }
    };
    f.finish(d);
    Some(CommandDef {
        id,
        id_span,
        label,
        group,
        kind,
    })
}

/// The `group` and `label` every command type has.
fn common(
    d: &mut Vec<Diagnostic>,
    f: &mut Fields<'_>,
    what: &str,
    label: &mut Option<String>,
    group: &mut Option<(Group, Span)>,
) {
    *label = f.string(d, "label");
    let Some(g) = f.take("group") else {
        return;
    };
    let Some(mut gf) = Fields::new(d, g, format!("the group of {what}"), GROUP_KEYS) else {
        return;
    };
    let kind = match gf.string_at(d, "kind") {
        None => {
            if !gf.has("kind") {
                gf.missing(d, "kind");
            }
            None
        }
        Some((k, span)) => match GroupKind::ALL.iter().find(|g| g.as_str() == k) {
            Some(g) => Some(*g),
            None => {
                let names: Vec<&str> = GroupKind::ALL.iter().map(|g| g.as_str()).collect();
                d.push(bad_choice(
                    &span,
                    &format!("the group kind of {what}"),
                    &k,
                    &names,
                ));
                None
            }
        },
    };
    let default_span = g.entry("isDefault").map(|(k, _)| k.span.clone());
    let is_default = gf.bool(d, "isDefault").unwrap_or(false);
    gf.finish(d);
    if let Some(kind) = kind {
        *group = Some((
            Group { kind, is_default },
            default_span.unwrap_or_else(|| g.span.clone()),
        ));
    }
}

fn exec(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    what: &str,
    label: &mut Option<String>,
    group: &mut Option<(Group, Span)>,
) -> CmdKind {
    let Some(mut f) = Fields::new(d, node, format!("exec {what}"), EXEC_KEYS) else {
        return CmdKind::Invalid;
    };
    let command_line = f.required_string(d, "commandLine");
    let component = f.required_string_at(d, "component");
    let working_dir = f.string(d, "workingDir");
    let env = f
        .take("env")
        .map(|n| env_list(d, n, &format!("`env` of {what}")))
        .unwrap_or_default();
    let hot_reload_capable = f.bool(d, "hotReloadCapable").unwrap_or(false);
    common(d, &mut f, what, label, group);
    f.finish(d);
    match (command_line, component) {
        (Some(command_line), Some(component)) => CmdKind::Exec {
            component,
            command_line,
            working_dir,
            env,
            hot_reload_capable,
        },
        _ => CmdKind::Invalid,
    }
}

fn composite(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    what: &str,
    label: &mut Option<String>,
    group: &mut Option<(Group, Span)>,
) -> CmdKind {
    let Some(mut f) = Fields::new(d, node, format!("composite {what}"), COMPOSITE_KEYS) else {
        return CmdKind::Invalid;
    };
    let mut commands = Vec::new();
    match f.take("commands") {
        None => f.missing(d, "commands"),
        Some(list) => match list.as_seq() {
            Some(items) => {
                for item in items {
                    if let Some(s) =
                        fields::string(d, item, &format!("each command of composite {what}"))
                    {
                        commands.push((s, item.span.clone()));
                    }
                }
            }
            None => d.push(fields::type_error(
                list,
                &format!("`commands` of composite {what}"),
                "a list of command ids",
            )),
        },
    }
    let parallel = f.bool(d, "parallel").unwrap_or(false);
    common(d, &mut f, what, label, group);
    f.finish(d);
    CmdKind::Composite { commands, parallel }
}

fn apply(
    d: &mut Vec<Diagnostic>,
    node: &Node,
    what: &str,
    label: &mut Option<String>,
    group: &mut Option<(Group, Span)>,
) -> CmdKind {
    let Some(mut f) = Fields::new(d, node, format!("apply {what}"), APPLY_KEYS) else {
        return CmdKind::Invalid;
    };
    let component = f.required_string_at(d, "component");
    common(d, &mut f, what, label, group);
    f.finish(d);
    component.map_or(CmdKind::Invalid, |component| CmdKind::Apply { component })
}

/// `events`: each kind's command ids with their spans.
#[derive(Debug, Default)]
pub(crate) struct EventsDef {
    pub(crate) pre_start: Vec<(String, Span)>,
    pub(crate) post_start: Vec<(String, Span)>,
    pub(crate) pre_stop: Vec<(String, Span)>,
    pub(crate) post_stop: Vec<(String, Span)>,
    /// Where `preStart` and `postStop` are (to warn that they are not run).
    pub(crate) pre_start_key: Option<Span>,
    pub(crate) post_stop_key: Option<Span>,
}

pub(crate) fn events(d: &mut Vec<Diagnostic>, node: &Node) -> EventsDef {
    let mut out = EventsDef::default();
    let Some(mut f) = Fields::new(d, node, "`events`", EVENT_KEYS) else {
        return out;
    };
    for key in EVENT_KEYS {
        let Some((k, list)) = f.take_entry(key) else {
            continue;
        };
        let place = format!("`{key}`");
        let Some(items) = list.as_seq() else {
            d.push(fields::type_error(list, &place, "a list of command ids"));
            continue;
        };
        let mut ids = Vec::new();
        for item in items {
            if let Some(s) = fields::string(d, item, &format!("each command of {place}")) {
                ids.push((s, item.span.clone()));
            }
        }
        match *key {
            "preStart" => {
                out.pre_start = ids;
                out.pre_start_key = Some(k.span.clone());
            }
            "postStart" => out.post_start = ids,
            "preStop" => out.pre_stop = ids,
            _ => {
                out.post_stop = ids;
                out.post_stop_key = Some(k.span.clone());
            }
        }
    }
    f.finish(d);
    out
}
