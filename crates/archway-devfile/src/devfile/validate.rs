//! The devfile's cross-checks, each an error at the position of the offending name: names
//! (lowercase RFC 1123 labels), duplicates, references from commands, volume mounts and
//! events to what they name, endpoint ports, composite cycles, one default per group.

use std::collections::{BTreeMap, BTreeSet};

use archway_diag::{Diagnostic, Span, did_you_mean};

use super::commands::{CmdKind, CommandDef, EventsDef};
use super::components::{Component, Kind};
use crate::model::GroupKind;

/// Longest component, command, project name.
pub(crate) const MAX_NAME: usize = 63;
/// Longest endpoint name (it becomes a Kubernetes port name).
pub(crate) const MAX_ENDPOINT_NAME: usize = 15;

/// Whether `s` is a lowercase RFC 1123 label of at most `max` characters.
pub(crate) fn valid_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `s` made a valid name: lowercase, other characters as `-`, at most 63 characters.
pub fn sanitize_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(MAX_NAME);
    out.trim_end_matches('-').to_owned()
}

/// An error unless `name` is valid.
pub(crate) fn check_name(d: &mut Vec<Diagnostic>, name: &str, span: &Span, what: &str, max: usize) {
    if valid_name(name, max) {
        return;
    }
    let e = Diagnostic::error(
        span,
        format!(
            "{what} name `{name}` is invalid: devfile names are lowercase letters, digits and `-`, start and end with a letter or digit, at most {max} characters"
        ),
    );
    let fixed = sanitize_name(name);
    let fixed: String = fixed.chars().take(max).collect();
    let fixed = fixed.trim_end_matches('-');
    d.push(if valid_name(fixed, max) && fixed != name {
        e.with_hint(format!("for example `{fixed}`"))
    } else {
        e
    });
}

/// "did you mean" among `names`, or the list of them.
fn suggest(e: Diagnostic, word: &str, names: &[&str], what: &str) -> Diagnostic {
    match did_you_mean(word, names.iter().copied()) {
        Some(h) => e.with_hint(format!("did you mean `{h}`?")),
        None if names.is_empty() => e.with_hint(format!("the devfile defines no {what}s")),
        None => e.with_hint(format!("{what}s: {}", names.join(", "))),
    }
}

/// Runs every check. Returns the ids of commands to leave out besides the ignored types
/// (an `apply` of an ignored component), each already warned about.
pub(crate) fn validate(
    d: &mut Vec<Diagnostic>,
    components: &[Component],
    commands: &[CommandDef],
    events: &EventsDef,
) -> BTreeSet<String> {
    // Components: names and duplicates.
    let mut by_name: BTreeMap<&str, &Component> = BTreeMap::new();
    for c in components {
        check_name(d, &c.name, &c.name_span, "component", MAX_NAME);
        if let Some(first) = by_name.get(c.name.as_str()) {
            d.push(
                Diagnostic::error(
                    &c.name_span,
                    format!("component `{}` is defined twice", c.name),
                )
                .with_hint(format!("the first is at {}", first.name_span)),
            );
        } else {
            by_name.insert(&c.name, c);
        }
    }
    let component_names: Vec<&str> = by_name.keys().copied().collect();

    // Endpoints and volume mounts.
    let mut endpoint_names: BTreeMap<&str, &Span> = BTreeMap::new();
    let mut ports: BTreeMap<u16, (&str, &Span)> = BTreeMap::new();
    for c in components {
        let Kind::Container(def) = &c.kind else {
            continue;
        };
        let mut own_ports: BTreeMap<u16, &Span> = BTreeMap::new();
        for (e, name_span, port_span) in &def.endpoints {
            check_name(d, &e.name, name_span, "endpoint", MAX_ENDPOINT_NAME);
            if let Some(first) = endpoint_names.get(e.name.as_str()) {
                d.push(
                    Diagnostic::error(name_span, format!("endpoint `{}` is defined twice", e.name))
                        .with_hint(format!(
                            "the first is at {first}; endpoint names are unique in a devfile"
                        )),
                );
            } else {
                endpoint_names.insert(&e.name, name_span);
            }
            if let Some(first) = own_ports.get(&e.port) {
                d.push(
                    Diagnostic::error(
                        port_span,
                        format!(
                            "container component `{}` declares port {} twice",
                            c.name, e.port
                        ),
                    )
                    .with_hint(format!("the first is at {first}")),
                );
                continue;
            }
            own_ports.insert(e.port, port_span);
            match ports.get(&e.port) {
                Some((other, first)) => d.push(
                    Diagnostic::warning(
                        port_span,
                        format!(
                            "containers `{other}` and `{}` both listen on port {}; they share one network namespace, so only one of them can",
                            c.name, e.port
                        ),
                    )
                    .with_hint(format!("the first is at {first}")),
                ),
                None => {
                    ports.insert(e.port, (&c.name, port_span));
                }
            }
        }
        for (m, span) in &def.volume_mounts {
            match by_name.get(m.volume.as_str()) {
                None => {
                    let volumes: Vec<&str> = components
                        .iter()
                        .filter(|c| matches!(c.kind, Kind::Volume { .. }))
                        .map(|c| c.name.as_str())
                        .collect();
                    d.push(suggest(
                        Diagnostic::error(
                            span,
                            format!(
                                "container component `{}` mounts volume `{}`, which is not defined",
                                c.name, m.volume
                            ),
                        ),
                        &m.volume,
                        &volumes,
                        "volume",
                    ));
                }
                Some(other) if !matches!(other.kind, Kind::Volume { .. } | Kind::Invalid) => {
                    d.push(Diagnostic::error(
                        span,
                        format!(
                            "container component `{}` mounts `{}`, which is {}; volumeMounts need a volume component",
                            c.name,
                            m.volume,
                            other.kind.describe()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }

    // Commands.
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    let mut by_id: BTreeMap<&str, &CommandDef> = BTreeMap::new();
    for c in commands {
        check_name(d, &c.id, &c.id_span, "command", MAX_NAME);
        if let Some(first) = by_id.get(c.id.as_str()) {
            d.push(
                Diagnostic::error(&c.id_span, format!("command `{}` is defined twice", c.id))
                    .with_hint(format!("the first is at {}", first.id_span)),
            );
        } else {
            by_id.insert(&c.id, c);
        }
        if matches!(c.kind, CmdKind::Ignored) {
            ignored.insert(c.id.clone());
        }
    }
    let ids: Vec<&str> = by_id.keys().copied().collect();
    for c in commands {
        match &c.kind {
            CmdKind::Exec {
                component: (name, span),
                ..
            } => match by_name.get(name.as_str()) {
                None => d.push(suggest(
                    Diagnostic::error(
                        span,
                        format!(
                            "exec command `{}` runs in component `{name}`, which is not defined",
                            c.id
                        ),
                    ),
                    name,
                    &component_names,
                    "component",
                )),
                Some(comp) if !matches!(comp.kind, Kind::Container(_) | Kind::Invalid) => {
                    d.push(Diagnostic::error(
                        span,
                        format!(
                            "exec command `{}` runs in `{name}`, which is {}; exec commands need a container component",
                            c.id,
                            comp.kind.describe()
                        ),
                    ));
                }
                Some(_) => {}
            },
            CmdKind::Apply {
                component: (name, span),
            } => match by_name.get(name.as_str()).map(|c| &c.kind) {
                None => d.push(suggest(
                    Diagnostic::error(
                        span,
                        format!(
                            "apply command `{}` applies component `{name}`, which is not defined",
                            c.id
                        ),
                    ),
                    name,
                    &component_names,
                    "component",
                )),
                Some(Kind::Image(_) | Kind::Invalid) => {}
                Some(Kind::Ignored(t)) => {
                    d.push(Diagnostic::warning(
                        span,
                        format!(
                            "apply command `{}` applies {t} component `{name}`, which is ignored; the command is ignored too",
                            c.id
                        ),
                    ));
                    ignored.insert(c.id.clone());
                }
                Some(kind) => d.push(Diagnostic::error(
                    span,
                    format!(
                        "apply command `{}` applies `{name}`, which is {}; Archway applies image components (it builds them)",
                        c.id,
                        kind.describe()
                    ),
                )),
            },
            CmdKind::Composite { commands: refs, .. } => {
                for (r, span) in refs {
                    if r == &c.id {
                        d.push(Diagnostic::error(
                            span,
                            format!("composite command `{}` runs itself", c.id),
                        ));
                    } else if !by_id.contains_key(r.as_str()) {
                        d.push(suggest(
                            Diagnostic::error(
                                span,
                                format!(
                                    "composite command `{}` runs command `{r}`, which is not defined",
                                    c.id
                                ),
                            ),
                            r,
                            &ids,
                            "command",
                        ));
                    }
                }
            }
            CmdKind::Ignored | CmdKind::Invalid => {}
        }
    }
    cycles(d, commands, &by_id);

    // One default per group kind.
    let mut defaults: BTreeMap<GroupKind, &CommandDef> = BTreeMap::new();
    for c in commands {
        let Some((g, span)) = &c.group else {
            continue;
        };
        if !g.is_default || ignored.contains(&c.id) {
            continue;
        }
        match defaults.get(&g.kind) {
            Some(first) => d.push(
                Diagnostic::error(
                    span,
                    format!(
                        "commands `{}` and `{}` are both the default {} command",
                        first.id,
                        c.id,
                        g.kind.as_str()
                    ),
                )
                .with_hint("mark only one command of a group `isDefault: true`"),
            ),
            None => {
                defaults.insert(g.kind, c);
            }
        }
    }

    // Events.
    for (key, list) in [
        ("preStart", &events.pre_start),
        ("postStart", &events.post_start),
        ("preStop", &events.pre_stop),
        ("postStop", &events.post_stop),
    ] {
        for (id, span) in list {
            if !by_id.contains_key(id.as_str()) {
                d.push(suggest(
                    Diagnostic::error(
                        span,
                        format!("event `{key}` runs command `{id}`, which is not defined"),
                    ),
                    id,
                    &ids,
                    "command",
                ));
            }
        }
    }
    ignored
}

/// Reports each cycle of composite commands once, at the command where it is first found.
fn cycles(d: &mut Vec<Diagnostic>, commands: &[CommandDef], by_id: &BTreeMap<&str, &CommandDef>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'c>(
        d: &mut Vec<Diagnostic>,
        id: &'c str,
        by_id: &BTreeMap<&str, &'c CommandDef>,
        marks: &mut BTreeMap<&'c str, Mark>,
        stack: &mut Vec<(&'c str, &'c Span)>,
    ) {
        marks.insert(id, Mark::Active);
        if let Some(CommandDef {
            kind: CmdKind::Composite { commands, .. },
            ..
        }) = by_id.get(id).copied()
        {
            for (next, span) in commands {
                let next = next.as_str();
                if next == id || !by_id.contains_key(next) {
                    continue; // reported elsewhere
                }
                stack.push((next, span));
                match marks.get(next).copied().unwrap_or(Mark::New) {
                    Mark::Active => {
                        let start = stack.iter().position(|(s, _)| *s == next).unwrap_or(0);
                        let mut path: Vec<&str> = vec![next];
                        path.extend(stack[start + 1..].iter().map(|(s, _)| *s));
                        let at = stack.last().map_or(span, |(_, s)| *s);
                        d.push(Diagnostic::error(
                            at,
                            format!("composite commands form a cycle: {}", path.join(" → ")),
                        ));
                    }
                    Mark::New => visit(d, next, by_id, marks, stack),
                    Mark::Done => {}
                }
                stack.pop();
            }
        }
        marks.insert(id, Mark::Done);
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for c in commands {
        if marks.get(c.id.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = vec![(c.id.as_str(), &c.id_span)];
            visit(d, &c.id, by_id, &mut marks, &mut stack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "runtime", "go-1", "0x", &"a".repeat(63)] {
            assert!(valid_name(ok, 63), "{ok}");
        }
        for bad in ["", "A", "my_app", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(!valid_name(bad, 63), "{bad}");
        }
        assert_eq!(sanitize_name("My App_2"), "my-app-2");
        assert_eq!(sanitize_name("--x--"), "x");
        assert_eq!(sanitize_name("日本"), "");
    }
}
