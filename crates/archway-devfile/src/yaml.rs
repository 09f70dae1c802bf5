//! YAML (devfiles) to a positioned [`Node`] tree, the way `archway-pipeline` reads pipelines:
//! `saphyr-parser`'s event stream, so every node knows its line and column; anchors and
//! aliases expanded with a bound (a "billion laughs" document is refused); merge keys
//! (`<<: *a`) applied; a key given twice is warned about and the later one kept.

use std::collections::HashMap;

use archway_diag::{Diagnostic, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan, StrInput, Tag};

use crate::node::{Node, Value};

/// Most nodes alias expansion may produce in one document.
const MAX_NODES: usize = 1_000_000;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 200;

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

fn tag_name(t: &Tag) -> String {
    if t.handle == "!" {
        format!("!{}", t.suffix)
    } else {
        format!("{}{}", t.handle, t.suffix)
    }
}

struct Loader<'a> {
    file: &'a str,
    events: Parser<'a, StrInput<'a>>,
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
        self.nodes = self.nodes.saturating_add(n);
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

    /// Warns about a tag other than the core schema's (devfiles have no use for them).
    fn check_tag(&mut self, tag: Option<&Tag>, span: &Span) -> Option<String> {
        let name = tag_name(tag?);
        if !(name.starts_with("tag:yaml.org,2002:") || name.starts_with("!!")) {
            self.warnings.push(Diagnostic::warning(
                span,
                format!("YAML tag `{name}` means nothing in a devfile; ignored"),
            ));
        }
        Some(name)
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
                let tag = self.check_tag(tag.as_deref(), &span);
                let value = match (style, tag.as_deref()) {
                    (_, Some("tag:yaml.org,2002:str" | "!!str")) => Value::Str(text.to_string()),
                    (ScalarStyle::Plain, _) => plain_scalar(&text),
                    _ => Value::Str(text.to_string()),
                };
                let node = Node::new(value, span);
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                self.bump(1, &span)?;
                self.check_tag(tag.as_deref(), &span);
                let mut items = Vec::new();
                loop {
                    let e = self.next()?;
                    if matches!(e.0, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(e, depth + 1)?);
                }
                let node = Node::new(Value::Seq(items), span);
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                self.bump(1, &span)?;
                self.check_tag(tag.as_deref(), &span);
                let node = self.mapping(span, depth)?;
                self.remember(anchor, &node);
                Ok(node)
            }
            other => Err(Diagnostic::error(
                &span,
                format!("invalid YAML: unexpected {other:?}"),
            )),
        }
    }

    fn mapping(&mut self, span: Span, depth: usize) -> Result<Node, Diagnostic> {
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
            if key.as_str() == Some("<<") {
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
            let Some(name) = key.scalar_text() else {
                return Err(Diagnostic::error(
                    &key.span,
                    format!("a mapping key must be a scalar, found {}", key.kind()),
                ));
            };
            // Keys are compared as text, so `8080` and `"8080"` are the same key.
            let key = Node::new(Value::Str(name.clone()), key.span);
            if let Some(pos) = entries.iter().position(|(k, _)| k.as_str() == Some(&name)) {
                self.warnings.push(
                    Diagnostic::warning(
                        &key.span,
                        format!("`{name}` is defined twice in this mapping; the later one wins"),
                    )
                    .with_hint(format!("the first is at line {}", entries[pos].0.span.line)),
                );
                entries.remove(pos);
            }
            entries.push((key, value));
        }
        // Explicit keys win; among merged mappings, earlier ones win.
        for m in merged {
            for (k, v) in m.as_map().unwrap_or_default() {
                if !entries.iter().any(|(ek, _)| ek.as_str() == k.as_str()) {
                    entries.push((k.clone(), v.clone()));
                }
            }
        }
        Ok(Node::new(Value::Map(entries), span))
    }
}

/// Parses one YAML document (an empty file is a null node). Returns the root with any
/// warnings, or the first error.
pub(crate) fn load(text: &str, file: &str) -> Result<(Node, Vec<Diagnostic>), Diagnostic> {
    let mut loader = Loader {
        file,
        events: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        warnings: Vec::new(),
    };
    let mut docs: Vec<Node> = Vec::new();
    loop {
        let (e, span) = loader.next()?;
        match e {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                let first = loader.next()?;
                let node = if matches!(first.0, Event::DocumentEnd) {
                    Node::new(Value::Null, span_of(file, &first.1))
                } else {
                    loader.node(first, 0)?
                };
                if docs.len() == 1 {
                    return Err(Diagnostic::error(
                        &node.span,
                        "more than one YAML document in a devfile",
                    )
                    .with_hint("a devfile is one document; remove the `---` separator"));
                }
                docs.push(node);
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
    let root = docs
        .pop()
        .unwrap_or_else(|| Node::new(Value::Null, Span::new(file, 1, 1)));
    Ok((root, loader.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(text: &str) -> Node {
        load(text, "t.yaml").unwrap_or_else(|e| panic!("{e}")).0
    }

    #[test]
    fn scalars_and_positions() {
        let n = l("a: 1\nb: \"1\"\nc: true\nd: ~\ne: 1.5\nf: hello\ng: 2.2.0\n");
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        assert_eq!(n.get("b").unwrap().value, Value::Str("1".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Bool(true));
        assert_eq!(n.get("d").unwrap().value, Value::Null);
        assert_eq!(n.get("e").unwrap().value, Value::Float(1.5));
        assert_eq!(n.get("g").unwrap().value, Value::Str("2.2.0".into()));
        let f = n.get("f").unwrap();
        assert_eq!((f.span.line, f.span.col), (6, 4));
    }

    #[test]
    fn anchors_merge_keys_and_duplicates() {
        let (n, w) = load(
            ".a: &a\n  x: 1\n  y: 1\njob:\n  <<: *a\n  y: 2\n  y: 3\n",
            "t.yaml",
        )
        .unwrap();
        let job = n.get("job").unwrap();
        assert_eq!(job.get("x").unwrap().value, Value::Int(1));
        assert_eq!(job.get("y").unwrap().value, Value::Int(3));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("defined twice"));
    }

    #[test]
    fn errors_are_positioned() {
        let e = load("a: [1, 2\nb: 3\n", "p.yaml").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        let e = load("a: 1\n---\nb: 2\n", "p.yaml").unwrap_err();
        assert!(e.message.contains("more than one"), "{e}");
        assert_eq!(e.span.line, 3);
        let e = load("? [a]\n: 1\n", "p.yaml").unwrap_err();
        assert!(e.message.contains("must be a scalar"), "{e}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        let e = load(&doc, "bomb.yaml").unwrap_err();
        assert!(e.message.contains("too many nodes"), "{e}");
    }

    #[test]
    fn empty_is_null() {
        assert_eq!(l("").value, Value::Null);
        assert_eq!(l("# only a comment\n").value, Value::Null);
    }
}
