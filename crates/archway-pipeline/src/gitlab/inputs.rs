//! CI/CD inputs: a file's `spec:inputs` header, the values an `include:` (or the pipeline)
//! passes for them, and `$[[ inputs.NAME | function ]]` interpolation — with GitLab's checks
//! and GitLab's messages (`lib/gitlab/ci/config/header/*`, `interpolation/*`).
//!
//! A block that is a whole string value keeps the input's type where it lands (a boolean in
//! `interruptible:`, an array in `rules:`); inside a longer string it becomes text.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;

use super::{Ctx, key_name, unknown_keys};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::vars::Vars;
use crate::yaml::{Documents, Node, Value};

/// GitLab's limits: options per input, functions per block, distinct blocks per file,
/// nodes visited, bytes in one string, bytes in one access expression.
const MAX_OPTIONS: usize = 50;
const MAX_FUNCTIONS: usize = 3;
const MAX_BLOCKS: usize = 10_000;
const MAX_NODES: usize = 500_000;
const MAX_NODE_SIZE: usize = 1024 * 1024;
const MAX_ACCESS_BYTES: usize = 1024;

const INPUT_KEYS: &[&str] = &[
    "default",
    "description",
    "options",
    "regex",
    "type",
    "rules",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputType {
    String,
    Number,
    Boolean,
    Array,
}

impl InputType {
    fn parse(s: &str) -> Option<InputType> {
        Some(match s {
            "string" => InputType::String,
            "number" => InputType::Number,
            "boolean" => InputType::Boolean,
            "array" => InputType::Array,
            _ => return None,
        })
    }

    /// GitLab's wording: "is not a string", "is not an array".
    fn article(self) -> &'static str {
        match self {
            InputType::String => "a string",
            InputType::Number => "a number",
            InputType::Boolean => "a boolean",
            InputType::Array => "an array",
        }
    }

    fn accepts(self, n: &Node) -> bool {
        matches!(
            (self, &n.value),
            (InputType::String, Value::Str(_))
                | (InputType::Number, Value::Int(_) | Value::Float(_))
                | (InputType::Boolean, Value::Bool(_))
                | (InputType::Array, Value::Seq(_))
        )
    }
}

/// One declared input.
struct InputSpec {
    name: String,
    ty: InputType,
    /// `default:` (the key present, even if null, makes the input optional).
    default: Option<Node>,
    options: Option<Vec<Node>>,
    regex: Option<String>,
}

/// Who passes the inputs, for messages and positions.
pub(super) struct Caller<'a> {
    /// Where the values come from (the `include:` entry, or the header for pipeline inputs).
    pub(super) site: &'a Span,
    /// GitLab's prefix for an included file's errors: "`ci/a.yml`: "; empty for the
    /// pipeline's own file.
    pub(super) prefix: String,
    /// How the caller passes a value, for hints (`--input NAME=VALUE`, `inputs:`).
    pub(super) how: &'static str,
}

/// A file's configuration with its header applied: the header and the caller's values
/// checked, and `$[[ … ]]` blocks interpolated. `None` when anything failed (reported).
pub(super) fn apply(
    ctx: &mut Ctx<'_>,
    docs: Documents,
    args: &[(String, Node)],
    caller: &Caller<'_>,
    vars: &Vars,
) -> Option<Node> {
    ctx.diags.extend(docs.warnings);
    let Some(header) = docs.header else {
        if !args.is_empty() {
            let names: Vec<&str> = args.iter().map(|(k, _)| k.as_str()).collect();
            if caller.prefix.is_empty() {
                ctx.error_hint(
                    caller.site,
                    format!("unknown input arguments: {}", names.join(", ")),
                    "the pipeline file declares no inputs: add a `spec: inputs:` header followed by `---`",
                );
            } else {
                ctx.error(
                    caller.site,
                    format!(
                        "{}Given inputs not defined in the `spec` section of the included configuration file",
                        caller.prefix
                    ),
                );
            }
            return None;
        }
        if let Some((k, _)) = docs
            .content
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("spec")))
        {
            ctx.diags.push(
                Diagnostic::warning(
                    &k.span,
                    "`spec:` is ignored here: a header must be its own YAML document",
                )
                .with_hint("end the header with a line `---`, then write the configuration"),
            );
        }
        return Some(docs.content);
    };
    let before = ctx.diags.len();
    let specs = parse_header(ctx, &header);
    if ctx.diags[before..].iter().any(Diagnostic::is_error) {
        return None;
    }
    let values = check_arguments(ctx, &specs, args, caller)?;
    let mut interp = Interpolation {
        values: &values,
        vars,
        blocks: HashSet::new(),
        visited: 0,
        errors: Vec::new(),
        stop: false,
    };
    let out = interp.node(&docs.content);
    if interp.errors.is_empty() {
        return Some(out);
    }
    for (span, msg) in interp.errors {
        ctx.error(&span, msg);
    }
    None
}

/// `header` → the declared inputs, with GitLab's header validations.
fn parse_header(ctx: &mut Ctx<'_>, header: &Node) -> Vec<InputSpec> {
    let mut specs = Vec::new();
    if header.as_map().is_none() {
        ctx.error(&header.span, "header config should be a hash");
        return specs;
    }
    if let Some(d) = unknown_keys(header, &["spec"], "header") {
        ctx.diags.push(d);
    }
    let Some(spec) = header.get("spec") else {
        return specs;
    };
    if spec.is_null() {
        return specs;
    }
    let Some(spec_entries) = spec.as_map() else {
        ctx.error(&spec.span, "header:spec config should be a hash");
        return specs;
    };
    for (k, _) in spec_entries {
        match key_name(k).as_str() {
            "inputs" | "component" => {}
            "include" => ctx.warn(
                &k.span,
                "`spec:include` (input definitions from other files) is not supported by Archway yet; it is ignored",
            ),
            other => ctx.error(
                &k.span,
                format!("header:spec config contains unknown keys: {other}"),
            ),
        }
    }
    let Some(inputs) = spec.get("inputs") else {
        return specs;
    };
    if inputs.is_null() {
        return specs;
    }
    let Some(inputs) = inputs.as_map() else {
        ctx.error(&inputs.span, "header:spec:inputs config should be a hash");
        return specs;
    };
    for (k, v) in inputs {
        let name = key_name(k);
        let loc = format!("header:spec:inputs:{name}");
        let mut spec = InputSpec {
            name: name.clone(),
            ty: InputType::String,
            default: None,
            options: None,
            regex: None,
        };
        match &v.value {
            Value::Null => {}
            Value::Map(entries) => {
                if let Some(d) = unknown_keys(v, INPUT_KEYS, &loc) {
                    ctx.diags.push(d);
                }
                for (ik, iv) in entries {
                    match key_name(ik).as_str() {
                        "default" => spec.default = Some(iv.clone()),
                        "type" => {
                            let t = iv.scalar_text().unwrap_or_default();
                            match InputType::parse(&t) {
                                Some(t) if iv.as_str().is_some() => spec.ty = t,
                                _ => ctx.error_hint(
                                    &iv.span,
                                    format!("{loc} input type unknown value: {t}"),
                                    "input types are string (the default), number, boolean and array",
                                ),
                            }
                        }
                        "regex" => match iv.as_str() {
                            Some(r) => spec.regex = Some(r.to_owned()),
                            None => ctx.error(&iv.span, format!("{loc} input regex should be a string")),
                        },
                        "options" => match iv.as_seq() {
                            Some(o) if o.len() > MAX_OPTIONS => ctx.error(
                                &iv.span,
                                format!("{loc} config cannot define more than {MAX_OPTIONS} options"),
                            ),
                            Some(o) => spec.options = Some(o.to_vec()),
                            None => ctx.error(&iv.span, format!("{loc} input options should be a array")),
                        },
                        "description" if !matches!(iv.value, Value::Str(_) | Value::Int(_)) => {
                            ctx.error(
                                &iv.span,
                                format!("{loc} input description must be an alphanumeric string"),
                            )
                        }
                        "rules" => ctx.warn(
                            &ik.span,
                            format!("{loc}: input `rules` are not supported by Archway yet; the input's `options` and `default` apply"),
                        ),
                        _ => {}
                    }
                }
            }
            _ => {
                ctx.error(&v.span, format!("{loc} config should be a hash"));
                continue;
            }
        }
        specs.push(spec);
    }
    specs
}

/// Numbers compare by value (`1 == 1.0`, as in Ruby); everything else by JSON equality.
fn same_value(a: &Node, b: &Node) -> bool {
    let num = |n: &Node| match n.value {
        Value::Int(i) => Some(i as f64),
        Value::Float(f) => Some(f),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.to_json() == b.to_json(),
    }
}

/// The caller's values against the declared inputs: the value each input takes, or `None`
/// after reporting GitLab's errors.
fn check_arguments(
    ctx: &mut Ctx<'_>,
    specs: &[InputSpec],
    args: &[(String, Node)],
    caller: &Caller<'_>,
) -> Option<BTreeMap<String, Node>> {
    let prefix = &caller.prefix;
    let mut errors: Vec<Diagnostic> = Vec::new();
    let unknown: Vec<&str> = args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !specs.iter().any(|s| s.name == *k))
        .collect();
    if !unknown.is_empty() {
        let d = Diagnostic::error(
            caller.site,
            format!("{prefix}unknown input arguments: {}", unknown.join(", ")),
        );
        errors.push(
            match did_you_mean(unknown[0], specs.iter().map(|s| s.name.as_str())) {
                Some(h) => d.with_hint(format!("did you mean `{h}`?")),
                None => d.with_hint(format!(
                    "the file declares: {}",
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        );
    }
    let mut values = BTreeMap::new();
    for spec in specs {
        let name = &spec.name;
        let given = args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !v.is_null());
        let err = |errors: &mut Vec<Diagnostic>, span: &Span, msg: String| {
            let d = Diagnostic::error(span, format!("{prefix}`{name}` input: {msg}"));
            if !errors.contains(&d) {
                errors.push(d);
            }
        };
        let Some(value) = given.or(spec.default.as_ref()) else {
            if spec.default.is_none() {
                errors.push(
                    Diagnostic::error(
                        caller.site,
                        format!("{prefix}`{name}` input: required value has not been provided"),
                    )
                    .with_hint(format!(
                        "pass it with {} (or give the input a `default:`)",
                        caller.how.replace("NAME", name)
                    )),
                );
            } else {
                // `default: null`: GitLab checks the (missing) default's type.
                err(
                    &mut errors,
                    caller.site,
                    format!("default value is not {}", spec.ty.article()),
                );
            }
            continue;
        };
        // GitLab validates the default, then the provided value.
        let mut checks: Vec<(&Node, &str)> = Vec::new();
        if let Some(d) = &spec.default {
            checks.push((d, "default"));
        }
        if let Some(v) = given {
            checks.push((v, "provided"));
        }
        for (v, which) in checks {
            if v.is_null() {
                err(
                    &mut errors,
                    &v.span,
                    format!("{which} value is not {}", spec.ty.article()),
                );
                continue;
            }
            if !spec.ty.accepts(v) {
                err(
                    &mut errors,
                    &v.span,
                    format!("{which} value is not {}", spec.ty.article()),
                );
            }
            if let Some(options) = &spec.options {
                match spec.ty {
                    InputType::String | InputType::Number => {
                        if !options.iter().any(|o| same_value(o, v)) {
                            let shown = v.scalar_text().unwrap_or_else(|| v.to_json().to_string());
                            let the = if spec.ty == InputType::Number {
                                "the "
                            } else {
                                ""
                            };
                            err(
                                &mut errors,
                                &v.span,
                                format!(
                                    "`{shown}` cannot be used because it is not in the list of {the}allowed options"
                                ),
                            );
                        }
                    }
                    _ => err(
                        &mut errors,
                        &v.span,
                        "Options can only be used with string and number inputs".into(),
                    ),
                }
            }
            if let Some(re) = &spec.regex {
                if spec.ty != InputType::String {
                    err(
                        &mut errors,
                        &v.span,
                        "RegEx validation can only be used with string inputs".into(),
                    );
                } else if let Some(s) = v.as_str() {
                    match Regex::new(re) {
                        Ok(r) if r.is_match(s) => {}
                        Ok(_) => err(
                            &mut errors,
                            &v.span,
                            format!("{which} value does not match required RegEx pattern"),
                        ),
                        Err(_) => err(&mut errors, &v.span, "invalid regular expression".into()),
                    }
                }
            }
        }
        values.insert(name.clone(), value.clone());
    }
    if errors.is_empty() {
        Some(values)
    } else {
        ctx.diags.extend(errors);
        None
    }
}

/// Interpolation of one file's content.
struct Interpolation<'v> {
    values: &'v BTreeMap<String, Node>,
    vars: &'v Vars,
    blocks: HashSet<String>,
    visited: usize,
    errors: Vec<(Span, String)>,
    /// GitLab stops at the first size error.
    stop: bool,
}

fn block_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        #[allow(clippy::unwrap_used)] // a constant pattern
        Regex::new(r"\$\[\[\s*(\S.*?\S)\s*\]\]").unwrap()
    })
}

fn truncate_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        #[allow(clippy::unwrap_used)] // a constant pattern
        Regex::new(r"^truncate\(\s*(\d+)\s*,\s*(\d+)\s*\)?$").unwrap()
    })
}

impl Interpolation<'_> {
    fn node(&mut self, n: &Node) -> Node {
        if self.stop {
            return n.clone();
        }
        self.visited += 1;
        if self.visited > MAX_NODES {
            self.errors
                .push((n.span.clone(), "config too large".into()));
            self.stop = true;
            return n.clone();
        }
        match &n.value {
            Value::Str(s) => {
                if s.len() > MAX_NODE_SIZE {
                    self.errors
                        .push((n.span.clone(), "config node too large".into()));
                    self.stop = true;
                    return n.clone();
                }
                self.string(s, n).unwrap_or_else(|| n.clone())
            }
            Value::Seq(items) => Node {
                value: Value::Seq(items.iter().map(|i| self.node(i)).collect()),
                span: n.span.clone(),
                tag: n.tag.clone(),
            },
            Value::Map(entries) => Node {
                value: Value::Map(
                    entries
                        .iter()
                        .map(|(k, v)| {
                            let k = match self.node(k) {
                                key if key.as_str().is_some() || key.value == k.value => key,
                                // A typed value as a key becomes text.
                                key => Node {
                                    value: Value::Str(ruby_text(&key)),
                                    span: k.span.clone(),
                                    tag: k.tag.clone(),
                                },
                            };
                            (k, self.node(v))
                        })
                        .collect(),
                ),
                span: n.span.clone(),
                tag: n.tag.clone(),
            },
            _ => n.clone(),
        }
    }

    /// A string with blocks → its interpolated node (`None`: nothing to do or an error).
    fn string(&mut self, s: &str, n: &Node) -> Option<Node> {
        if !s.contains("$[[") {
            return None;
        }
        let matches: Vec<(String, String)> = block_regex()
            .captures_iter(s)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect();
        if matches.is_empty() {
            return None;
        }
        let mut evaluated: Vec<(String, Node)> = Vec::new();
        for (block, data) in &matches {
            self.blocks.insert(block.clone());
            if self.blocks.len() > MAX_BLOCKS {
                self.errors
                    .push((n.span.clone(), "too many interpolation blocks".into()));
                self.stop = true;
                return None;
            }
            match self.block(data, &n.span) {
                Ok(Some(v)) => evaluated.push((block.clone(), v)),
                // A context GitLab leaves for later (`matrix.`): the block stays.
                Ok(None) => {}
                Err(errors) => {
                    for e in errors {
                        self.errors.push((n.span.clone(), e));
                    }
                    return None;
                }
            }
        }
        if evaluated.len() == 1 && matches.len() == 1 && matches[0].0 == s {
            return evaluated.pop().map(|(_, v)| v.respanned(&n.span));
        }
        let mut out = s.to_owned();
        for (block, v) in &evaluated {
            out = out.replace(block.as_str(), &ruby_text(v));
        }
        Some(Node {
            value: Value::Str(out),
            span: n.span.clone(),
            tag: n.tag.clone(),
        })
    }

    /// `inputs.NAME | fn | fn` → the value (`Ok(None)`: a block for a later phase).
    fn block(&self, data: &str, span: &Span) -> Result<Option<Node>, Vec<String>> {
        let mut parts = data.split('|').map(str::trim);
        let access = parts.next().unwrap_or_default();
        let functions: Vec<&str> = parts.collect();
        if access.split('.').next() == Some("matrix") {
            return Ok(None);
        }
        let mut errors = Vec::new();
        // Ruby's `split('.', 5)`: at most five parts, the last keeps the rest.
        let objects: Vec<&str> = access.splitn(5, '.').collect();
        if objects.len() <= 1 {
            errors.push("invalid interpolation access pattern".to_owned());
        }
        if access.len() > MAX_ACCESS_BYTES {
            errors.push("maximum interpolation expression size exceeded".to_owned());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if objects[0] != "inputs" {
            return Err(vec![format!("unknown interpolation key: `{}`", objects[0])]);
        }
        let Some(mut value) = self.values.get(objects[1]).cloned() else {
            return Err(vec![format!("unknown interpolation key: `{}`", objects[1])]);
        };
        for key in &objects[2..] {
            match value.get(key) {
                Some(v) => value = v.clone(),
                None => return Err(vec![format!("unknown interpolation key: `{key}`")]),
            }
        }
        if functions.len() > MAX_FUNCTIONS {
            return Err(vec!["too many functions in interpolation block".to_owned()]);
        }
        let unknown: Vec<String> = functions
            .iter()
            .filter(|f| {
                !matches!(**f, "expand_vars" | "posix_escape") && !truncate_regex().is_match(f)
            })
            .map(|f| {
                format!(
                    "no function matching `{f}`: check that the function name, arguments, and types are correct"
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
        for f in functions {
            let name = f.split('(').next().unwrap_or(f);
            let Some(text) = value.as_str() else {
                return Err(vec![format!(
                    "error in `{name}` function: invalid input type: {name} can only be used with string inputs"
                )]);
            };
            let out = match name {
                "expand_vars" => self.vars.expand_known(text),
                "posix_escape" => posix_escape(text),
                _ => {
                    let (offset, length) = truncate_regex()
                        .captures(f)
                        .map(|c| {
                            (
                                c[1].parse::<usize>().unwrap_or(usize::MAX),
                                c[2].parse::<usize>().unwrap_or(usize::MAX),
                            )
                        })
                        .unwrap_or((0, 0));
                    text.chars().skip(offset).take(length).collect()
                }
            };
            value = Node::new(Value::Str(out), span.clone());
        }
        Ok(Some(value))
    }
}

/// Ruby's `Shellwords.shellescape`.
fn posix_escape(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("'\n'"),
            c if c.is_ascii_alphanumeric() || "_-.,:+/@".contains(c) => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out
}

/// A value as Ruby's `to_s` writes it inside a string (`1.0`, `true`, `["a", "b"]`).
fn ruby_text(n: &Node) -> String {
    fn inspect(n: &Node) -> String {
        match &n.value {
            Value::Str(s) => serde_json::Value::String(s.clone()).to_string(),
            Value::Null => "nil".to_owned(),
            _ => ruby_text(n),
        }
    }
    match &n.value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
            format!("{f:.1}")
        }
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
        Value::Seq(items) => format!(
            "[{}]",
            items.iter().map(inspect).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{} => {}", inspect(k), inspect(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_escape_matches_shellwords() {
        assert_eq!(posix_escape(""), "''");
        assert_eq!(posix_escape("a b"), "a\\ b");
        assert_eq!(posix_escape("it's $HOME"), "it\\'s\\ \\$HOME");
        assert_eq!(posix_escape("x\ny"), "x'\n'y");
        assert_eq!(posix_escape("v1.2/a@b:c,d+e_f-g"), "v1.2/a@b:c,d+e_f-g");
    }

    #[test]
    fn ruby_text_of_values() {
        let s = Span::default();
        let n = |v| Node::new(v, s.clone());
        assert_eq!(ruby_text(&n(Value::Float(1.0))), "1.0");
        assert_eq!(ruby_text(&n(Value::Float(1.5))), "1.5");
        assert_eq!(ruby_text(&n(Value::Bool(true))), "true");
        assert_eq!(
            ruby_text(&n(Value::Seq(vec![
                n(Value::Str("a".into())),
                n(Value::Int(2))
            ]))),
            "[\"a\", 2]"
        );
    }

    #[test]
    fn truncate_pattern_is_gitlabs() {
        assert!(truncate_regex().is_match("truncate(1, 2)"));
        assert!(truncate_regex().is_match("truncate(1,2"));
        assert!(!truncate_regex().is_match("truncate(-1,2)"));
        assert!(!truncate_regex().is_match("truncate(a,2)"));
    }
}
