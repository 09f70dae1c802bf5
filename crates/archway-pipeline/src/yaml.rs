//! A YAML document as a tree of positioned nodes, with anchors and aliases expanded and merge
//! keys (`<<: *a`, `<<: [*a, *b]`) applied, and tags such as `!reference` kept.
//!
//! Built on `saphyr-parser`'s event stream so that every node knows its line and column.
//! Alias expansion is bounded, so a "billion laughs" document is refused instead of eating
//! memory.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};

use crate::diag::{Diagnostic, Span};

/// Most nodes an alias expansion may produce in one document.
const MAX_NODES: usize = 2_000_000;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 256;

/// A YAML value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `quoted` when written with quotes (so `"true"` is not a bool).
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order.
    Map(Vec<(Node, Node)>),
}

/// A value with its position and tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    /// A local tag such as `!reference`.
    pub tag: Option<String>,
}

impl Node {
    pub fn new(value: Value, span: Span) -> Self {
        Node {
            value,
            span,
            tag: None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// A scalar as text (numbers and booleans as written in canonical form).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some(String::new()),
            _ => None,
        }
    }

    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Seq(s) => s.iter().map(Node::count).sum(),
            Value::Map(m) => m.iter().map(|(k, v)| k.count() + v.count()).sum(),
            _ => 0,
        }
    }
}

fn span_of(file: &str, s: &YSpan) -> Span {
    Span::new(file, s.start.line(), s.start.col() + 1)
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    let looks_numeric = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(s.to_owned())
}

struct Loader<'a> {
    file: &'a str,
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    warnings: Vec<Diagnostic>,
}

impl<'a> Loader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, YSpan), Diagnostic> {
        match self.events.next() {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(Diagnostic::error(
                &Span::new(self.file, e.marker().line(), e.marker().col() + 1),
                format!("invalid YAML: {}", e.info()),
            )),
            None => Err(Diagnostic::error(
                &Span::new(self.file, 1, 1),
                "invalid YAML: unexpected end of input",
            )),
        }
    }

    fn bump(&mut self, n: usize, span: &Span) -> Result<(), Diagnostic> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(
                Diagnostic::error(span, "YAML aliases expand to too many nodes").with_hint(
                    "the document refers to its anchors recursively or too often; simplify it",
                ),
            );
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    /// Reads one node whose first event is `first`.
    fn node(&mut self, first: (Event<'a>, YSpan), depth: usize) -> Result<Node, Diagnostic> {
        let (event, yspan) = first;
        let span = span_of(self.file, &yspan);
        if depth > MAX_DEPTH {
            return Err(Diagnostic::error(
                &span,
                format!("YAML nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let tag_name = |t: &saphyr_parser::Tag| {
            if t.handle == "!" {
                format!("!{}", t.suffix)
            } else {
                format!("{}{}", t.handle, t.suffix)
            }
        };
        match event {
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| {
                    Diagnostic::error(&span, "YAML alias refers to an unknown anchor")
                })?;
                self.bump(node.count(), &span)?;
                Ok(node)
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.bump(1, &span)?;
                let tag = tag.as_ref().map(|t| tag_name(t));
                let value = match (style, tag.as_deref()) {
                    (ScalarStyle::Plain, None) => plain_scalar(&text),
                    (_, Some("tag:yaml.org,2002:str") | Some("!!str")) => {
                        Value::Str(text.to_string())
                    }
                    (ScalarStyle::Plain, Some(_)) => plain_scalar(&text),
                    _ => Value::Str(text.to_string()),
                };
                let node = Node {
                    value,
                    span,
                    tag: tag.filter(|t| !t.starts_with("tag:yaml.org")),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                self.bump(1, &span)?;
                let mut items = Vec::new();
                loop {
                    let e = self.next()?;
                    if matches!(e.0, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(e, depth + 1)?);
                }
                let node = Node {
                    value: Value::Seq(items),
                    span,
                    tag: tag.as_ref().map(|t| tag_name(t)),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                self.bump(1, &span)?;
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<Node> = Vec::new();
                loop {
                    let e = self.next()?;
                    if matches!(e.0, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(e, depth + 1)?;
                    let ve = self.next()?;
                    let value = self.node(ve, depth + 1)?;
                    if key.as_str() == Some("<<") && key.tag.is_none() {
                        match &value.value {
                            Value::Map(_) => merged.push(value),
                            Value::Seq(items) if items.iter().all(|i| i.as_map().is_some()) => {
                                merged.extend(items.iter().cloned());
                            }
                            _ => {
                                return Err(Diagnostic::error(
                                    &value.span,
                                    format!(
                                        "a merge key (`<<`) needs a mapping or a list of mappings, found {}",
                                        value.kind()
                                    ),
                                ));
                            }
                        }
                        continue;
                    }
                    if let Some(name) = key.scalar_text()
                        && let Some(pos) = entries
                            .iter()
                            .position(|(k, _)| k.scalar_text().as_deref() == Some(&name))
                    {
                        self.warnings.push(
                            Diagnostic::warning(
                                &key.span,
                                format!(
                                    "`{name}` is defined twice in this mapping; the later one wins"
                                ),
                            )
                            .with_hint(format!(
                                "the first is at line {}",
                                entries[pos].0.span.line
                            )),
                        );
                        entries.remove(pos);
                    }
                    entries.push((key, value));
                }
                // Explicit keys win; among merged mappings, earlier ones win.
                for m in merged {
                    for (k, v) in m.as_map().unwrap_or_default() {
                        let name = k.scalar_text();
                        if !entries.iter().any(|(ek, _)| ek.scalar_text() == name) {
                            entries.push((k.clone(), v.clone()));
                        }
                    }
                }
                let node = Node {
                    value: Value::Map(entries),
                    span,
                    tag: tag.as_ref().map(|t| tag_name(t)),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            other => Err(Diagnostic::error(
                &span,
                format!("invalid YAML: unexpected {other:?}"),
            )),
        }
    }
}

/// A pipeline file: the optional header document (`spec:` … `---`) and the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Documents {
    /// The first document when it holds `spec:` and another document follows it.
    pub header: Option<Node>,
    /// The configuration (null when the file is empty or holds only a header).
    pub content: Node,
    /// Warnings (duplicate keys).
    pub warnings: Vec<Diagnostic>,
}

/// Parses a YAML document (or, for a `spec:` header plus `---`, the second document).
/// Returns the root with any warnings.
pub fn load(text: &str, file: &str) -> Result<(Node, Vec<Diagnostic>), Diagnostic> {
    let docs = load_documents(text, file)?;
    Ok((docs.content, docs.warnings))
}

/// Parses a pipeline file into its header (if any) and configuration documents.
pub fn load_documents(text: &str, file: &str) -> Result<Documents, Diagnostic> {
    let mut loader = Loader {
        file,
        events: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        warnings: Vec::new(),
    };
    let mut docs = Vec::new();
    loop {
        let (e, span) = loader.next()?;
        match e {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                let first = loader.next()?;
                if matches!(first.0, Event::DocumentEnd) {
                    docs.push(Node::new(Value::Null, span_of(file, &first.1)));
                    continue;
                }
                let node = loader.node(first, 0)?;
                docs.push(node);
                // Anchors are per document.
                loader.anchors.clear();
            }
            other => {
                return Err(Diagnostic::error(
                    &span_of(file, &span),
                    format!("invalid YAML: unexpected {other:?}"),
                ));
            }
        }
    }
    let (header, content) = match docs.len() {
        0 => (None, Node::new(Value::Null, Span::new(file, 1, 1))),
        1 => (None, docs.remove(0)),
        2 if docs[0].get("spec").is_some() => {
            let content = docs.remove(1);
            (Some(docs.remove(0)), content)
        }
        _ => {
            return Err(Diagnostic::error(
                &docs[1].span,
                "more than one YAML document in a pipeline file",
            )
            .with_hint("only a `spec:` header may precede the `---` separator"));
        }
    };
    Ok(Documents {
        header,
        content,
        warnings: loader.warnings,
    })
}

impl Node {
    /// The value as JSON (mapping keys as text; tags dropped; non-finite numbers as null).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A JSON value as a node tree, every node at `span`.
    pub fn from_json(v: &serde_json::Value, span: &Span) -> Node {
        use serde_json::Value as J;
        let value = match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Seq(items.iter().map(|i| Node::from_json(i, span)).collect()),
            J::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| {
                        (
                            Node::new(Value::Str(k.clone()), span.clone()),
                            Node::from_json(v, span),
                        )
                    })
                    .collect(),
            ),
        };
        Node::new(value, span.clone())
    }

    /// This node and everything under it moved to `span` (a value that lands somewhere else).
    pub fn respanned(&self, span: &Span) -> Node {
        let value = match &self.value {
            Value::Seq(items) => Value::Seq(items.iter().map(|i| i.respanned(span)).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.respanned(span), v.respanned(span)))
                    .collect(),
            ),
            other => other.clone(),
        };
        Node {
            value,
            span: span.clone(),
            tag: self.tag.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(text: &str) -> Node {
        load(text, "t.yml").unwrap_or_else(|e| panic!("{e}")).0
    }

    #[test]
    fn scalars_and_positions() {
        let n = l("a: 1\nb: \"1\"\nc: true\nd: ~\ne: 1.5\nf: hello\n");
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        assert_eq!(n.get("b").unwrap().value, Value::Str("1".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Bool(true));
        assert!(n.get("d").unwrap().is_null());
        assert_eq!(n.get("e").unwrap().value, Value::Float(1.5));
        let f = n.get("f").unwrap();
        assert_eq!((f.span.line, f.span.col), (6, 4));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n = l(
            ".a: &a\n  x: 1\n  y: 1\n.b: &b\n  y: 2\n  z: 2\njob:\n  <<: [*a, *b]\n  z: 3\nother:\n  <<: *b\nlist: &l [1, 2]\nagain: *l\n",
        );
        let job = n.get("job").unwrap();
        assert_eq!(job.get("x").unwrap().value, Value::Int(1));
        assert_eq!(
            job.get("y").unwrap().value,
            Value::Int(1),
            "earlier merge wins"
        );
        assert_eq!(
            job.get("z").unwrap().value,
            Value::Int(3),
            "explicit key wins"
        );
        assert_eq!(
            n.get("other").unwrap().get("z").unwrap().value,
            Value::Int(2)
        );
        assert_eq!(n.get("again").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn tags_are_kept() {
        let n = l("s: !reference [.setup, script]\n");
        let s = n.get("s").unwrap();
        assert_eq!(s.tag.as_deref(), Some("!reference"));
        assert_eq!(s.as_seq().unwrap()[0].as_str(), Some(".setup"));
    }

    #[test]
    fn errors_are_positioned() {
        let e = load("a: [1, 2\nb: 3\n", "p.yml").unwrap_err();
        assert_eq!(e.span.file, "p.yml");
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        let e = load("a: *nope\n", "p.yml").unwrap_err();
        assert!(
            e.message.contains("invalid YAML") || e.message.contains("unknown anchor"),
            "{e}"
        );
        let e = load("a: {<<: 3}\n", "p.yml").unwrap_err();
        assert!(e.message.contains("merge key"), "{e}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            doc.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        let e = load(&doc, "bomb.yml").unwrap_err();
        assert!(e.message.contains("too many nodes"), "{e}");
    }

    #[test]
    fn duplicate_keys_warn_and_spec_headers_are_skipped() {
        let (n, w) = load("a: 1\na: 2\n", "d.yml").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Int(2));
        assert_eq!(w.len(), 1);
        let n = l("spec:\n  inputs: {}\n---\njob:\n  script: x\n");
        assert!(n.get("job").is_some());
        let d = load_documents("spec:\n  inputs: {}\n---\njob:\n  script: x\n", "h.yml").unwrap();
        assert!(d.header.unwrap().get("spec").is_some());
        assert!(d.content.get("job").is_some());
    }

    #[test]
    fn json_round_trip() {
        let n = l("a: [1, 2.5, \"x\", true, ~, {b: c}]\n");
        let j = n.to_json();
        assert_eq!(j.to_string(), r#"{"a":[1,2.5,"x",true,null,{"b":"c"}]}"#);
        let back = Node::from_json(&j, &Span::new("t", 1, 1));
        assert_eq!(back.to_json(), j);
    }
}
