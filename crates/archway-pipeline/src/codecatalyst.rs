//! The CodeCatalyst front end: `.codecatalyst/workflows/*.yaml` → [`Pipeline`].
//!
//! Actions become jobs (actions inside an action group are named `group/action`), `DependsOn`
//! becomes `needs`, the compute fleet becomes the platform (`Linux.Arm64.*` → linux/arm64,
//! `Linux.x86-64.*` → linux/amd64, the default fleet is x86-64) and a runner tag of that
//! architecture, `Configuration.Steps[].Run` becomes the script.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::graph::{
    AllowFailure, Artifacts, Context, Image, Job, Need, Origin, Pipeline, Retry, SourceFormat,
    Variable, When,
};
use crate::yaml::{self, Node, Value};

const WORKFLOW_KEYS: &[&str] = &[
    "Name",
    "SchemaVersion",
    "RunMode",
    "Triggers",
    "Compute",
    "Actions",
];
const ACTION_KEYS: &[&str] = &[
    "Identifier",
    "DependsOn",
    "Compute",
    "Inputs",
    "Outputs",
    "Environment",
    "Configuration",
    "Timeout",
    "Caching",
    "Packages",
];
const SUPPORTED_IDENTIFIERS: &[&str] = &[
    "aws/build",
    "aws/managed-test",
    "aws/build-beta",
    "aws/managed-test-gamma",
];
/// The one stage CodeCatalyst workflows run in: order comes from `DependsOn`.
pub const STAGE: &str = "workflow";

struct Action {
    name: String,
    node: Node,
    /// Dependencies from the enclosing group.
    group_deps: Vec<(String, Span)>,
    group_compute: Option<Node>,
}

fn key(k: &Node) -> String {
    k.scalar_text().unwrap_or_default()
}

fn check_keys(diags: &mut Vec<Diagnostic>, node: &Node, allowed: &[&str], what: &str) {
    for (k, _) in node.as_map().unwrap_or_default() {
        let name = key(k);
        if !allowed.contains(&name.as_str()) {
            let d = Diagnostic::error(&k.span, format!("unknown {what} key `{name}`"));
            diags.push(match did_you_mean(&name, allowed.iter().copied()) {
                Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                None => d.with_hint(format!("{what} keys are: {}", allowed.join(", "))),
            });
        }
    }
}

/// The platform of a compute fleet name, if Archway knows it.
pub fn fleet_platform(fleet: &str) -> Option<&'static str> {
    let f = fleet.to_ascii_lowercase();
    if f.starts_with("linux.arm64") {
        Some("linux/arm64")
    } else if f.starts_with("linux.x86-64") || f.starts_with("linux.x86_64") {
        Some("linux/amd64")
    } else {
        None
    }
}

/// Plans a CodeCatalyst workflow.
pub fn plan(file: &str, text: &str, context: &Context) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let root = match yaml::load(text, file) {
        Ok((r, w)) => {
            diags.extend(w);
            r
        }
        Err(e) => return (None, vec![e]),
    };
    if root.as_map().is_none() {
        diags.push(Diagnostic::error(
            &root.span,
            format!("a workflow must be a mapping, found {}", root.kind()),
        ));
        return (None, diags);
    }
    check_keys(&mut diags, &root, WORKFLOW_KEYS, "workflow");
    let name = root.get("Name").and_then(Node::scalar_text);
    if name.is_none() {
        diags.push(Diagnostic::error(&root.span, "the workflow has no `Name`"));
    }
    let Some(actions) = root.get("Actions").and_then(Node::as_map) else {
        diags.push(Diagnostic::error(
            &root.span,
            "the workflow has no `Actions`",
        ));
        return (None, diags);
    };
    let workflow_compute = root.get("Compute").cloned();

    // Flatten groups.
    let mut flat: Vec<Action> = Vec::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in actions {
        let n = key(k);
        if let Some(inner) = v.get("Actions").and_then(Node::as_map) {
            check_keys(
                &mut diags,
                v,
                &["Actions", "DependsOn", "Compute"],
                "action group",
            );
            let deps = depends_on(&mut diags, v);
            let mut members = Vec::new();
            for (ik, iv) in inner {
                let full = format!("{n}/{}", key(ik));
                members.push(full.clone());
                flat.push(Action {
                    name: full,
                    node: iv.clone(),
                    group_deps: deps.clone(),
                    group_compute: v.get("Compute").cloned(),
                });
            }
            groups.insert(n, members);
        } else {
            flat.push(Action {
                name: n,
                node: v.clone(),
                group_deps: Vec::new(),
                group_compute: None,
            });
        }
    }
    let names: Vec<String> = flat.iter().map(|a| a.name.clone()).collect();

    let mut jobs = Vec::new();
    for a in &flat {
        let node = &a.node;
        if node.as_map().is_none() {
            diags.push(Diagnostic::error(
                &node.span,
                format!("action `{}` must be a mapping", a.name),
            ));
            continue;
        }
        check_keys(&mut diags, node, ACTION_KEYS, "action");
        match node.get("Identifier").and_then(Node::scalar_text) {
            Some(id) => {
                let base = id.split('@').next().unwrap_or(&id);
                if !SUPPORTED_IDENTIFIERS.contains(&base) {
                    diags.push(
                        Diagnostic::warning(&node.get("Identifier").map_or(node.span.clone(), |i| i.span.clone()), format!("action `{}` uses `{id}`, which Archway does not implement; only its Steps (if any) will run", a.name))
                            .with_hint(format!("supported: {}", SUPPORTED_IDENTIFIERS.join(", "))),
                    );
                }
            }
            None => diags.push(Diagnostic::error(
                &node.span,
                format!(
                    "action `{}` has no `Identifier` (e.g. aws/build@v1)",
                    a.name
                ),
            )),
        }
        // Compute: action, else group, else workflow, else CodeCatalyst's default fleet.
        let compute = node
            .get("Compute")
            .or(a.group_compute.as_ref())
            .or(workflow_compute.as_ref());
        let fleet = compute
            .and_then(|c| c.get("Fleet"))
            .and_then(Node::scalar_text)
            .unwrap_or_else(|| "Linux.x86-64.Large".to_owned());
        let platform = fleet_platform(&fleet);
        if platform.is_none() {
            let span = compute
                .and_then(|c| c.get("Fleet"))
                .map_or_else(|| node.span.clone(), |f| f.span.clone());
            diags.push(Diagnostic::warning(
                &span,
                format!(
                    "fleet `{fleet}` does not name an architecture; action `{}` runs on any runner",
                    a.name
                ),
            ));
        }
        let tags = match platform {
            Some("linux/arm64") => vec!["arm64".to_owned()],
            Some(_) => vec!["amd64".to_owned()],
            None => vec![fleet.clone()],
        };

        // Inputs.Variables.
        let mut variables: Vec<Variable> = Vec::new();
        if let Some(inputs) = node.get("Inputs") {
            check_keys(
                &mut diags,
                inputs,
                &["Sources", "Variables", "Artifacts"],
                "Inputs",
            );
            for v in inputs
                .get("Variables")
                .and_then(Node::as_seq)
                .unwrap_or_default()
            {
                match (
                    v.get("Name").and_then(Node::scalar_text),
                    v.get("Value").and_then(Node::scalar_text),
                ) {
                    (Some(n), Some(val)) => variables.push(Variable {
                        name: n,
                        value: val,
                        origin: Origin::Job,
                    }),
                    _ => diags.push(Diagnostic::error(
                        &v.span,
                        "each input variable needs `Name` and `Value`",
                    )),
                }
            }
        }
        variables.sort_by(|x, y| x.name.cmp(&y.name));

        // Steps.
        let mut script = Vec::new();
        let mut image = None;
        if let Some(cfg) = node.get("Configuration") {
            for s in cfg.get("Steps").and_then(Node::as_seq).unwrap_or_default() {
                match s.get("Run").and_then(Node::scalar_text) {
                    Some(r) => script.push(r),
                    None => diags.push(Diagnostic::error(
                        &s.span,
                        "each step needs `Run: <command>`",
                    )),
                }
            }
            if let Some(c) = cfg.get("Container") {
                image = c
                    .get("Image")
                    .and_then(Node::scalar_text)
                    .map(|name| Image {
                        name,
                        entrypoint: None,
                        platform: None,
                        user: None,
                    });
            }
        }
        if script.is_empty() {
            diags.push(Diagnostic::warning(
                &node.span,
                format!("action `{}` has no Configuration.Steps to run", a.name),
            ));
        }

        // DependsOn (own + group's), groups expand to their members.
        let mut deps = depends_on(&mut diags, node);
        deps.extend(a.group_deps.iter().cloned());
        let mut needs = Vec::new();
        for (d, span) in deps {
            let targets: Vec<String> = if let Some(members) = groups.get(&d) {
                members.clone()
            } else if names.contains(&d) {
                vec![d.clone()]
            } else if let Some(group) = a.name.split_once('/').map(|(g, _)| g)
                && names.contains(&format!("{group}/{d}"))
            {
                vec![format!("{group}/{d}")]
            } else {
                let dd = Diagnostic::error(
                    &span,
                    format!("action `{}` depends on `{d}`, which is not defined", a.name),
                );
                diags.push(
                    match did_you_mean(
                        &d,
                        names
                            .iter()
                            .map(String::as_str)
                            .chain(groups.keys().map(String::as_str)),
                    ) {
                        Some(h) => dd.with_hint(format!("did you mean `{h}`?")),
                        None => dd,
                    },
                );
                continue;
            };
            for t in targets {
                if t != a.name && !needs.iter().any(|n: &Need| n.job == t) {
                    needs.push(Need {
                        job: t,
                        artifacts: true,
                        optional: false,
                    });
                }
            }
        }

        let timeout = node.get("Timeout").and_then(|t| match t.value {
            Value::Int(m) if m > 0 => Some(m as u64 * 60),
            _ => {
                diags.push(Diagnostic::error(&t.span, "Timeout is a number of minutes"));
                None
            }
        });
        let artifacts = node
            .get("Outputs")
            .and_then(|o| o.get("Artifacts"))
            .and_then(Node::as_seq)
            .and_then(|arts| {
                let mut paths = Vec::new();
                let mut names = Vec::new();
                for art in arts {
                    if let Some(n) = art.get("Name").and_then(Node::scalar_text) {
                        names.push(n);
                    }
                    for f in art.get("Files").and_then(Node::as_seq).unwrap_or_default() {
                        if let Some(f) = f.scalar_text() {
                            paths.push(f);
                        }
                    }
                }
                (!paths.is_empty()).then(|| Artifacts {
                    name: (!names.is_empty()).then(|| names.join(",")),
                    paths,
                    when: "on_success".into(),
                    ..Artifacts::default()
                })
            });
        let environment = node
            .get("Environment")
            .and_then(|e| e.get("Name"))
            .and_then(Node::scalar_text);
        jobs.push(Job {
            name: a.name.clone(),
            base_name: a.name.clone(),
            matrix: BTreeMap::new(),
            stage: STAGE.to_owned(),
            image,
            services: Vec::new(),
            before_script: Vec::new(),
            script,
            after_script: Vec::new(),
            variables,
            tags,
            platform: platform.map(str::to_owned),
            depends_on: needs.iter().map(|n| n.job.clone()).collect(),
            needs: Some(needs),
            dependencies: None,
            when: When::OnSuccess,
            start_in: None,
            allow_failure: AllowFailure::default(),
            retry: Retry::default(),
            timeout,
            interruptible: false,
            artifacts,
            cache: Vec::new(),
            resource_group: None,
            environment,
            trigger: None,
            external_needs: Vec::new(),
            span: node.span.clone(),
        });
    }
    if let Some(c) = crate::graph::find_cycle(&jobs) {
        diags.push(Diagnostic::error(
            &jobs
                .iter()
                .find(|j| j.name == c[0])
                .map(|j| j.span.clone())
                .unwrap_or_default(),
            format!("DependsOn forms a cycle: {}", c.join(" → ")),
        ));
    }
    let pipeline = Pipeline {
        format: SourceFormat::Codecatalyst,
        file: file.to_owned(),
        name,
        runs: true,
        stages: vec![STAGE.to_owned()],
        jobs,
        variables: Vec::new(),
        context: context.clone(),
    };
    (Some(pipeline), diags)
}

fn depends_on(diags: &mut Vec<Diagnostic>, node: &Node) -> Vec<(String, Span)> {
    match node.get("DependsOn") {
        None => Vec::new(),
        Some(d) => match &d.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| i.scalar_text().map(|s| (s, i.span.clone())))
                .collect(),
            Value::Str(s) => vec![(s.clone(), d.span.clone())],
            _ => {
                diags.push(Diagnostic::error(
                    &d.span,
                    "DependsOn must be a list of action names",
                ));
                Vec::new()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fleets() {
        assert_eq!(
            super::fleet_platform("Linux.Arm64.Large"),
            Some("linux/arm64")
        );
        assert_eq!(
            super::fleet_platform("Linux.x86-64.XLarge"),
            Some("linux/amd64")
        );
        assert_eq!(super::fleet_platform("MyFleet"), None);
    }
}
