//! One devfile and its chain of local parents, read into one tree: each file's top-level keys
//! and `schemaVersion` checked, its `{{variables}}` substituted, and its parent merged in as
//! the devfile spec says:
//!
//! * the parent's components, commands, projects, starter projects and events are inherited
//!   (the parent's first);
//! * `parent: components:` (and `commands:`, `projects:`, `starterProjects:`) override the
//!   parent's entries by name: mappings merge key by key, lists of named entries (`env`,
//!   `endpoints`, `volumeMounts`) merge by name, other values are replaced; an override
//!   cannot add an entry or change a component's or command's type;
//! * the child's own entries are appended; one named like a parent's is an error (override it
//!   instead);
//! * variables: a parent's own, overridden by the child's `parent: variables:`; the child's
//!   own win over both; `metadata` is the child's alone.
//!
//! Registry (`id`), Kubernetes and remote (`http(s)://`) parents are refused: they need the
//! network or a cluster.

use std::path::Path;

use archway_diag::{Diagnostic, did_you_mean};

use super::vars::{self, Variables};
use crate::fields::{self, Fields};
use crate::node::{Node, Value};
use crate::{FileSource, ReadError, paths, yaml};

/// Every top-level key of a devfile.
pub(crate) const TOP_KEYS: &[&str] = &[
    "schemaVersion",
    "metadata",
    "parent",
    "variables",
    "attributes",
    "projects",
    "starterProjects",
    "dependentProjects",
    "components",
    "commands",
    "events",
];

const PARENT_KEYS: &[&str] = &[
    "uri",
    "id",
    "registryUrl",
    "version",
    "kubernetes",
    "variables",
    "attributes",
    "components",
    "commands",
    "projects",
    "starterProjects",
];

/// Lists merged by name: the key, what an entry is called in messages, and its name field.
const NAMED_LISTS: &[(&str, &str, &str)] = &[
    ("components", "component", "name"),
    ("commands", "command", "id"),
    ("projects", "project", "name"),
    ("starterProjects", "starter project", "name"),
];

/// The keys that give a component's or a command's type.
pub(crate) const COMPONENT_TYPES: &[&str] = &[
    "container",
    "volume",
    "image",
    "kubernetes",
    "openshift",
    "plugin",
    "custom",
];
pub(crate) const COMMAND_TYPES: &[&str] = &[
    "exec",
    "composite",
    "apply",
    "vscodeTask",
    "vscodeLaunch",
    "custom",
];

/// How deep a chain of parents may go.
const MAX_PARENTS: usize = 8;

/// Where files are read from: paths are `root`-relative display paths.
pub(crate) struct Source<'a> {
    pub(crate) root: &'a Path,
    pub(crate) fs: &'a dyn FileSource,
}

/// A devfile with its parents merged in.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The merged top level: only known keys, `parent` removed.
    pub(crate) root: Node,
    pub(crate) schema_version: String,
    /// The variables in effect.
    pub(crate) vars: Variables,
}

/// Whether `v` is a devfile schema version Archway reads (2.0.x to 2.3.x).
pub(crate) fn supported_version(v: &str) -> bool {
    let core = v.split_once('-').map_or(v, |(c, _)| c);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts[0] == "2"
        && matches!(parts[1], "0" | "1" | "2" | "3")
        && !parts[2].is_empty()
        && parts[2].bytes().all(|b| b.is_ascii_digit())
}

/// Reads `text` (the file `display`) and its parents. `overrides` are the variables the
/// child sets for this file; `chain` the files on the way here (for cycles).
pub(crate) fn load(
    d: &mut Vec<Diagnostic>,
    src: &Source<'_>,
    display: &str,
    text: &str,
    overrides: &Variables,
    chain: &mut Vec<String>,
) -> Option<Tree> {
    let root = match yaml::load(text, display) {
        Ok((root, warnings)) => {
            d.extend(warnings);
            root
        }
        Err(e) => {
            d.push(e);
            return None;
        }
    };
    match &root.value {
        Value::Map(_) => {}
        Value::Null => {
            d.push(
                Diagnostic::error(&root.span, "the devfile is empty")
                    .with_hint("a devfile starts with `schemaVersion: 2.2.0`"),
            );
            return None;
        }
        _ => {
            d.push(fields::type_error(&root, "a devfile", "a mapping"));
            return None;
        }
    }
    let mut top = Fields::new(d, &root, "the devfile", TOP_KEYS)?;
    let schema_version = match top.text_at(d, "schemaVersion") {
        Some((v, _)) if supported_version(&v) => v,
        Some((v, span)) => {
            let hint = if v.starts_with("1.") || v.starts_with('1') {
                "devfile 1.x is not read: convert the file to devfile 2 (devfile.io has a migration guide)"
            } else {
                "Archway reads devfile schema 2.0.0 to 2.3.0; write e.g. `schemaVersion: 2.2.0`"
            };
            d.push(
                Diagnostic::error(
                    &span,
                    format!(
                        "schemaVersion `{v}` is not supported: Archway reads devfile 2.0 to 2.3"
                    ),
                )
                .with_hint(hint),
            );
            return None;
        }
        None => {
            // A value of the wrong type was reported; a missing or null one is reported here.
            if root
                .get("schemaVersion")
                .is_none_or(|v| matches!(v.value, Value::Null))
            {
                top.missing(d, "schemaVersion");
            }
            return None;
        }
    };
    // Not carried into the merged tree, so said here, for every file of the chain.
    top.unsupported(d, "attributes", "attributes are not interpreted");
    top.unsupported(
        d,
        "starterProjects",
        "the environment works on the current repository, it starts no new project",
    );
    top.unsupported(
        d,
        "dependentProjects",
        "only the current repository is mounted",
    );
    for k in TOP_KEYS {
        top.skip(k);
    }
    top.finish(d);

    let mut own_vars = root
        .get("variables")
        .map(|v| vars::read(d, v, "`variables`"))
        .unwrap_or_default();
    own_vars.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));

    let decl = root
        .get("parent")
        .filter(|p| !matches!(p.value, Value::Null));
    let parent = match decl {
        Some(decl) => {
            let tree = load_parent(d, src, display, decl, chain)?;
            Some(tree)
        }
        None => None,
    };
    let mut effective = parent.as_ref().map(|p| p.vars.clone()).unwrap_or_default();
    effective.extend(own_vars);

    // Substitute everywhere but in the variables themselves.
    let mut own = root.clone();
    if let Value::Map(entries) = &mut own.value {
        for (k, v) in entries.iter_mut() {
            match k.as_str() {
                Some("variables" | "schemaVersion") => {}
                Some("parent") => {
                    if let Value::Map(pe) = &mut v.value {
                        for (pk, pv) in pe.iter_mut() {
                            if pk.as_str() != Some("variables") {
                                vars::substitute(d, pv, &effective);
                            }
                        }
                    }
                }
                _ => vars::substitute(d, v, &effective),
            }
        }
    }
    let merged = match parent {
        Some(p) => {
            let decl = own
                .get("parent")
                .cloned()
                .unwrap_or_else(|| Node::new(Value::Null, own.span.clone()));
            merge(d, &p.root, &decl, &own)
        }
        None => without_parent(&own),
    };
    Some(Tree {
        root: merged,
        schema_version,
        vars: effective,
    })
}

/// The top level with `parent` removed.
fn without_parent(root: &Node) -> Node {
    let entries = root
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| k.as_str() != Some("parent"))
        .cloned()
        .collect();
    Node::new(Value::Map(entries), root.span.clone())
}

/// Reads the parent `decl` of the file `display` and loads it.
fn load_parent(
    d: &mut Vec<Diagnostic>,
    src: &Source<'_>,
    display: &str,
    decl: &Node,
    chain: &mut Vec<String>,
) -> Option<Tree> {
    let mut f = Fields::new(d, decl, "`parent`", PARENT_KEYS)?;
    let mut refused = false;
    if let Some((k, _)) = f.take_entry("id") {
        d.push(
            Diagnostic::error(&k.span, "registry parents need network, use uri: a local path")
                .with_hint("download the parent devfile into the repository and name it with `uri: ./path/devfile.yaml`"),
        );
        f.skip("registryUrl");
        f.skip("version");
        refused = true;
    } else {
        f.unsupported(d, "registryUrl", "it only goes with a registry `id`");
        f.unsupported(d, "version", "it only goes with a registry `id`");
    }
    if let Some((k, _)) = f.take_entry("kubernetes") {
        d.push(Diagnostic::error(
            &k.span,
            "parents from Kubernetes resources need a cluster, use uri: a local path",
        ));
        refused = true;
    }
    f.unsupported(d, "attributes", "attributes are not interpreted");
    let uri = f.string_at(d, "uri");
    for k in [
        "variables",
        "components",
        "commands",
        "projects",
        "starterProjects",
    ] {
        f.skip(k);
    }
    if uri.is_none() && !refused && !f.has("uri") {
        f.missing(d, "uri");
    }
    f.finish(d);
    let (uri, uri_span) = uri?;
    if refused {
        return None;
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        d.push(
            Diagnostic::error(
                &uri_span,
                format!("remote parent `{uri}` needs network, use uri: a local path"),
            )
            .with_hint("download the parent devfile into the repository and point `uri:` at it"),
        );
        return None;
    }
    let local = uri.strip_prefix("file://").unwrap_or(&uri);
    let resolved = paths::beside(display, local);
    if chain.len() >= MAX_PARENTS {
        d.push(Diagnostic::error(
            &uri_span,
            format!("parents nest deeper than {MAX_PARENTS} devfiles"),
        ));
        return None;
    }
    if chain.contains(&resolved) || resolved == paths::normalize(Path::new(display)) {
        let mut cycle = chain.clone();
        cycle.push(display.to_owned());
        cycle.push(resolved);
        d.push(Diagnostic::error(
            &uri_span,
            format!("parent devfiles form a cycle: {}", cycle.join(" → ")),
        ));
        return None;
    }
    let text = match src.fs.read(&src.root.join(&resolved)) {
        Ok(t) => t,
        Err(ReadError::NotFound) => {
            d.push(
                Diagnostic::error(
                    &uri_span,
                    format!("parent devfile `{resolved}` does not exist"),
                )
                .with_hint("`uri:` is relative to the directory of the devfile that names it"),
            );
            return None;
        }
        Err(ReadError::Failed(why)) => {
            d.push(Diagnostic::error(
                &uri_span,
                format!("cannot read parent devfile `{resolved}`: {why}"),
            ));
            return None;
        }
    };
    let overrides = decl
        .get("variables")
        .map(|v| vars::read(d, v, "`variables` of `parent`"))
        .unwrap_or_default();
    chain.push(display.to_owned());
    let tree = load(d, src, &resolved, &text, &overrides, chain);
    chain.pop();
    tree
}

/// The name of a named-list entry.
fn entry_name<'n>(entry: &'n Node, field: &str) -> Option<(String, &'n Node)> {
    let n = entry.get(field)?;
    Some((n.scalar_text()?, n))
}

/// The list under `key`, or an error and nothing when it is not one.
fn list<'n>(d: &mut Vec<Diagnostic>, root: &'n Node, key: &str, place: &str) -> &'n [Node] {
    match root.get(key) {
        None => &[],
        Some(n) if matches!(n.value, Value::Null) => &[],
        Some(n) => match n.as_seq() {
            Some(items) => items,
            None => {
                d.push(fields::type_error(n, place, "a list"));
                &[]
            }
        },
    }
}

/// The type key of a component or command entry.
fn type_key<'t>(entry: &Node, types: &[&'t str]) -> Option<&'t str> {
    types.iter().copied().find(|t| entry.get(t).is_some())
}

/// `parent` merged with the child's overrides and own entries.
fn merge(d: &mut Vec<Diagnostic>, parent: &Node, decl: &Node, child: &Node) -> Node {
    let mut entries: Vec<(Node, Node)> = child
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str().unwrap_or_default();
            k != "parent" && k != "events" && !NAMED_LISTS.iter().any(|(l, _, _)| *l == k)
        })
        .cloned()
        .collect();
    for (key, what, field) in NAMED_LISTS {
        let types = if *key == "commands" {
            COMMAND_TYPES
        } else {
            COMPONENT_TYPES
        };
        let mut merged: Vec<Node> = list(d, parent, key, &format!("`{key}`")).to_vec();
        for o in list(d, decl, key, &format!("`parent: {key}:`")) {
            let Some((name, name_node)) = entry_name(o, field) else {
                d.push(Diagnostic::error(
                    &o.span,
                    format!("an override under `parent: {key}:` needs the `{field}` of the parent's {what} it changes"),
                ));
                continue;
            };
            let Some(i) = merged
                .iter()
                .position(|b| entry_name(b, field).is_some_and(|(n, _)| n == name))
            else {
                let names: Vec<String> = merged
                    .iter()
                    .filter_map(|b| entry_name(b, field).map(|(n, _)| n))
                    .collect();
                let e = Diagnostic::error(
                    &name_node.span,
                    format!(
                        "`parent: {key}:` overrides {what} `{name}`, but the parent has no such {what}"
                    ),
                );
                d.push(match did_you_mean(&name, names.iter().map(String::as_str)) {
                    Some(h) => e.with_hint(format!("did you mean `{h}`?")),
                    None => e.with_hint(format!(
                        "an override changes a parent's {what}; add a new one under the top-level `{key}:`"
                    )),
                });
                continue;
            };
            if *key == "components" || *key == "commands" {
                let (was, now) = (type_key(&merged[i], types), type_key(o, types));
                if let (Some(was), Some(now)) = (was, now)
                    && was != now
                {
                    d.push(Diagnostic::error(
                        &name_node.span,
                        format!("an override cannot change {what} `{name}` from {was} to {now}"),
                    ));
                    continue;
                }
            }
            merged[i] = merge_node(&merged[i], o);
        }
        let parent_count = merged.len();
        for c in list(d, child, key, &format!("`{key}`")) {
            if let Some((name, name_node)) = entry_name(c, field)
                && let Some(p) = merged[..parent_count]
                    .iter()
                    .find(|b| entry_name(b, field).is_some_and(|(n, _)| n == name))
            {
                d.push(
                    Diagnostic::error(
                        &name_node.span,
                        format!("{what} `{name}` is already defined by the parent devfile"),
                    )
                    .with_hint(format!(
                        "the parent's is at {}; to change it, list it under `parent: {key}:` instead",
                        p.span
                    )),
                );
                continue;
            }
            merged.push(c.clone());
        }
        if !merged.is_empty() || child.get(key).is_some() {
            let span = child
                .entry(key)
                .map_or_else(|| child.span.clone(), |(k, _)| k.span.clone());
            entries.push((
                Node::new(Value::Str((*key).to_owned()), span.clone()),
                Node::new(Value::Seq(merged), span),
            ));
        }
    }
    if let Some(events) = merge_events(parent.get("events"), child.entry("events")) {
        entries.push(events);
    }
    Node::new(Value::Map(entries), child.span.clone())
}

/// The parent's events, then the child's, per event kind.
fn merge_events(parent: Option<&Node>, child: Option<(&Node, &Node)>) -> Option<(Node, Node)> {
    let (key, child) = match (parent, child) {
        (None, None) => return None,
        (Some(p), None) => {
            return Some((
                Node::new(Value::Str("events".into()), p.span.clone()),
                p.clone(),
            ));
        }
        (None, Some((k, c))) => return Some((k.clone(), c.clone())),
        (Some(_), Some((k, c))) => (k, c),
    };
    let (Some(p), Some(c)) = (parent.and_then(Node::as_map), child.as_map()) else {
        return Some((key.clone(), child.clone()));
    };
    let mut out: Vec<(Node, Node)> = p.to_vec();
    for (ck, cv) in c {
        match out.iter_mut().find(|(k, _)| k.as_str() == ck.as_str()) {
            Some((_, pv)) => match (pv.as_seq(), cv.as_seq()) {
                (Some(a), Some(b)) => {
                    let joined = a.iter().chain(b).cloned().collect();
                    *pv = Node::new(Value::Seq(joined), cv.span.clone());
                }
                _ => *pv = cv.clone(),
            },
            None => out.push((ck.clone(), cv.clone())),
        }
    }
    Some((key.clone(), Node::new(Value::Map(out), child.span.clone())))
}

/// The name of a list entry that lists merge by (`name`, or `id` for commands).
fn merge_key(n: &Node) -> Option<String> {
    n.get("name")
        .or_else(|| n.get("id"))
        .and_then(Node::scalar_text)
}

/// `over` applied to `base`: mappings merge by key, lists of named mappings by name, anything
/// else is replaced.
fn merge_node(base: &Node, over: &Node) -> Node {
    match (&base.value, &over.value) {
        (Value::Map(b), Value::Map(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                match out.iter_mut().find(|(bk, _)| bk.as_str() == k.as_str()) {
                    Some((_, bv)) => *bv = merge_node(bv, v),
                    None => out.push((k.clone(), v.clone())),
                }
            }
            Node::new(Value::Map(out), base.span.clone())
        }
        (Value::Seq(b), Value::Seq(o))
            if !b.is_empty() && b.iter().chain(o).all(|i| merge_key(i).is_some()) =>
        {
            let mut out = b.clone();
            for item in o {
                match out.iter_mut().find(|bi| merge_key(bi) == merge_key(item)) {
                    Some(bi) => *bi = merge_node(bi, item),
                    None => out.push(item.clone()),
                }
            }
            Node::new(Value::Seq(out), over.span.clone())
        }
        _ => over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for v in ["2.0.0", "2.1.0", "2.2.0", "2.2.2", "2.3.0", "2.2.0-alpha"] {
            assert!(supported_version(v), "{v}");
        }
        for v in ["1.0.0", "2.4.0", "2.2", "3.0.0", "2.2.x", "", "2..0"] {
            assert!(!supported_version(v), "{v}");
        }
    }

    fn errors_of(name: &str, text: &str, fs: &crate::MemoryFiles) -> Vec<String> {
        match crate::parse_devfile(name, text, fs) {
            Ok(l) => panic!("loaded: {:?}", l.env),
            Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn parents_resolve_against_the_childs_directory() {
        let fs = crate::MemoryFiles::default().with(
            "stacks/base.yaml",
            "schemaVersion: 2.2.0\nvariables: {v: one}\ncomponents:\n  - name: tools\n    container: {image: 'img:{{v}}'}\n",
        );
        let child = "schemaVersion: 2.2.0\nparent:\n  uri: file://../stacks/base.yaml\n  variables: {v: two}\n";
        let l = crate::parse_devfile("app/devfile.yaml", child, &fs).unwrap();
        assert_eq!(
            l.env.containers[0].image,
            crate::ImageSource::Pull("img:two".into())
        );
    }

    #[test]
    fn parents_that_cannot_be_had() {
        let fs = crate::MemoryFiles::default();
        assert_eq!(
            errors_of(
                "devfile.yaml",
                "schemaVersion: 2.2.0\nparent: {uri: 'https://example.com/devfile.yaml'}\n",
                &fs
            ),
            [
                "devfile.yaml:2:15: error: remote parent `https://example.com/devfile.yaml` needs network, use uri: a local path\n  hint: download the parent devfile into the repository and point `uri:` at it"
            ]
        );
        assert_eq!(
            errors_of(
                "devfile.yaml",
                "schemaVersion: 2.2.0\nparent: {uri: base.yaml}\n",
                &fs
            ),
            [
                "devfile.yaml:2:15: error: parent devfile `base.yaml` does not exist\n  hint: `uri:` is relative to the directory of the devfile that names it"
            ]
        );
        assert_eq!(
            errors_of(
                "devfile.yaml",
                "schemaVersion: 2.2.0\nparent: {kubernetes: {name: x}}\n",
                &fs
            ),
            [
                "devfile.yaml:2:10: error: parents from Kubernetes resources need a cluster, use uri: a local path"
            ]
        );
        assert_eq!(
            errors_of("devfile.yaml", "schemaVersion: 2.2.0\nparent: {}\n", &fs),
            ["devfile.yaml:2:9: error: `parent` has no `uri`"]
        );
    }

    #[test]
    fn overrides_merge_by_name() {
        let (base, _) = yaml::load(
            "container:\n  image: a\n  env: [{name: A, value: '1'}, {name: B, value: '2'}]\n  args: [x, y]\n",
            "p.yaml",
        )
        .unwrap();
        let (over, _) = yaml::load(
            "container:\n  env: [{name: B, value: '3'}, {name: C, value: '4'}]\n  args: [z]\n",
            "c.yaml",
        )
        .unwrap();
        let m = merge_node(&base, &over);
        let c = m.get("container").unwrap();
        assert_eq!(c.get("image").unwrap().as_str(), Some("a"));
        let env: Vec<String> = c
            .get("env")
            .unwrap()
            .as_seq()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}={}",
                    merge_key(e).unwrap(),
                    e.get("value").unwrap().as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(env, ["A=1", "B=3", "C=4"]);
        assert_eq!(c.get("args").unwrap().as_seq().unwrap().len(), 1);
        assert_eq!(c.get("args").unwrap().span.file, "c.yaml");
    }
}
