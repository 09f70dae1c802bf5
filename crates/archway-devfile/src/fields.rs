//! Reading typed fields out of a mapping [`Node`] so that nothing is silently dropped: every
//! key is taken by the front end, warned about as unsupported, or reported as unknown (with a
//! "did you mean"); a value of the wrong type or a missing required field is an error at its
//! position.

use archway_diag::{Diagnostic, Span, did_you_mean};

use crate::node::{Node, Value};

/// The keys of one mapping, as they are taken.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    node: &'a Node,
    entries: &'a [(Node, Node)],
    /// "container component `runtime`": what the mapping is, for messages.
    what: String,
    known: &'static [&'static str],
    used: Vec<bool>,
}

/// The error for a value of the wrong type.
pub(crate) fn type_error(node: &Node, place: &str, expected: &str) -> Diagnostic {
    Diagnostic::error(
        &node.span,
        format!("{place} must be {expected}, found {}", node.kind()),
    )
}

/// A string value (any other type is an error).
pub(crate) fn string(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        _ => {
            d.push(type_error(node, place, "a string"));
            None
        }
    }
}

/// A scalar as text: strings, and numbers or booleans where a string is expected but a
/// number reads naturally (`version: 1.0`, `value: 8080`).
pub(crate) fn text(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<String> {
    match node.scalar_text() {
        Some(s) => Some(s),
        None => {
            d.push(type_error(node, place, "a string"));
            None
        }
    }
}

/// A list of scalars as text.
pub(crate) fn text_list(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Option<Vec<String>> {
    let Some(items) = node.as_seq() else {
        d.push(type_error(node, place, "a list of strings"));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match text(d, item, &format!("each item of {place}")) {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

impl<'a> Fields<'a> {
    /// The fields of `node`; an error (and `None`) when it is not a mapping. `known` lists every
    /// key the caller reads or warns about.
    pub(crate) fn new(
        d: &mut Vec<Diagnostic>,
        node: &'a Node,
        what: impl Into<String>,
        known: &'static [&'static str],
    ) -> Option<Self> {
        let what = what.into();
        let Some(entries) = node.as_map() else {
            d.push(type_error(node, &what, "a mapping"));
            return None;
        };
        Some(Fields {
            node,
            entries,
            what,
            known,
            used: vec![false; entries.len()],
        })
    }

    pub(crate) fn span(&self) -> &Span {
        &self.node.span
    }

    /// Names the mapping better once its name is known ("component `tools`").
    pub(crate) fn set_what(&mut self, what: impl Into<String>) {
        self.what = what.into();
    }

    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Whether the mapping has `key` (without taking it).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.as_str() == Some(key))
    }

    /// Takes `key`: its key node and value. A null value counts as absent.
    pub(crate) fn take_entry(&mut self, key: &str) -> Option<(&'a Node, &'a Node)> {
        debug_assert!(
            self.known.contains(&key),
            "`{key}` is not in the known keys"
        );
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        self.used[i] = true;
        let (k, v) = &self.entries[i];
        (!matches!(v.value, Value::Null)).then_some((k, v))
    }

    /// Takes `key`'s value (null counts as absent).
    pub(crate) fn take(&mut self, key: &str) -> Option<&'a Node> {
        self.take_entry(key).map(|(_, v)| v)
    }

    fn place(&self, key: &str) -> String {
        format!("`{key}` of {}", self.what)
    }

    pub(crate) fn string(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<String> {
        let place = self.place(key);
        self.take(key).and_then(|v| string(d, v, &place))
    }

    /// A string, with the span of its value.
    pub(crate) fn string_at(
        &mut self,
        d: &mut Vec<Diagnostic>,
        key: &str,
    ) -> Option<(String, Span)> {
        let place = self.place(key);
        let v = self.take(key)?;
        string(d, v, &place).map(|s| (s, v.span.clone()))
    }

    pub(crate) fn text(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<String> {
        let place = self.place(key);
        self.take(key).and_then(|v| text(d, v, &place))
    }

    /// A scalar as text, with the span of its value.
    pub(crate) fn text_at(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<(String, Span)> {
        let place = self.place(key);
        let v = self.take(key)?;
        text(d, v, &place).map(|s| (s, v.span.clone()))
    }

    pub(crate) fn text_list(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<Vec<String>> {
        let place = self.place(key);
        self.take(key).and_then(|v| text_list(d, v, &place))
    }

    pub(crate) fn bool(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<bool> {
        let place = self.place(key);
        let v = self.take(key)?;
        match &v.value {
            Value::Bool(b) => Some(*b),
            _ => {
                let mut e = type_error(v, &place, "true or false");
                if matches!(v.as_str(), Some("true" | "false")) {
                    e = e.with_hint("remove the quotes");
                }
                d.push(e);
                None
            }
        }
    }

    /// An error: the required `key` is missing. Points out a present key that looks like a
    /// misspelling of it.
    pub(crate) fn missing(&self, d: &mut Vec<Diagnostic>, key: &str) {
        let mut e = Diagnostic::error(&self.node.span, format!("{} has no `{key}`", self.what));
        if let Some((k, _)) = self.entries.iter().find(|(k, _)| {
            k.as_str()
                .is_some_and(|name| name != key && did_you_mean(name, [key]).is_some())
        }) {
            e = e.with_hint(format!(
                "`{}` (line {}) looks like a misspelling of `{key}`",
                k.as_str().unwrap_or_default(),
                k.span.line
            ));
        }
        d.push(e);
    }

    /// A required string.
    pub(crate) fn required_string(&mut self, d: &mut Vec<Diagnostic>, key: &str) -> Option<String> {
        self.required_string_at(d, key).map(|(s, _)| s)
    }

    /// A required string with the span of its value.
    pub(crate) fn required_string_at(
        &mut self,
        d: &mut Vec<Diagnostic>,
        key: &str,
    ) -> Option<(String, Span)> {
        if self.take(key).is_none() {
            self.missing(d, key);
            return None;
        }
        self.string_at(d, key)
    }

    /// Warns that `key`, if present, is not supported and is ignored.
    pub(crate) fn unsupported(&mut self, d: &mut Vec<Diagnostic>, key: &str, why: &str) {
        if let Some((k, _)) = self.take_entry(key) {
            d.push(Diagnostic::warning(
                &k.span,
                format!("`{key}` of {} is not supported: {why}; ignored", self.what),
            ));
        }
    }

    /// Takes `key` without a value check (a key read elsewhere, or meaningless here).
    pub(crate) fn skip(&mut self, key: &str) {
        let _ = self.take_entry(key);
    }

    /// Warns about every key nobody took.
    pub(crate) fn finish(self, d: &mut Vec<Diagnostic>) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let name = k.scalar_text().unwrap_or_default();
            let w = Diagnostic::warning(
                &k.span,
                format!("unknown field `{name}` in {}; ignored", self.what),
            );
            d.push(match did_you_mean(&name, self.known.iter().copied()) {
                Some(h) => w.with_hint(format!("did you mean `{h}`?")),
                None => w.with_hint(format!("known fields: {}", self.known.join(", "))),
            });
        }
    }
}

/// "`a`, `b` or `c`": for messages about enumerations.
pub(crate) fn one_of(values: &[&str]) -> String {
    listed(values, "or")
}

/// "`a`, `b` and `c`".
pub(crate) fn all_of(values: &[&str]) -> String {
    listed(values, "and")
}

fn listed(values: &[&str], conjunction: &str) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} {conjunction} {last}", rest.join(", "))
        }
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// An error for a value outside an enumeration, with a suggestion.
pub(crate) fn bad_choice(span: &Span, place: &str, got: &str, allowed: &[&str]) -> Diagnostic {
    let e = Diagnostic::error(
        span,
        format!("{place} must be {}, found `{got}`", one_of(allowed)),
    );
    match did_you_mean(&got.to_ascii_lowercase(), allowed.iter().copied()) {
        Some(h) => e.with_hint(format!("did you mean `{h}`?")),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn every_key_is_accounted_for() {
        let (n, _) = yaml::load("imagee: x\nmountSources: \"true\"\nx: 1\n", "t.yaml").unwrap();
        let mut d = Vec::new();
        let mut f = Fields::new(&mut d, &n, "container `c`", &["image", "mountSources"]).unwrap();
        assert_eq!(f.required_string(&mut d, "image"), None);
        assert_eq!(f.bool(&mut d, "mountSources"), None);
        f.finish(&mut d);
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "t.yaml:1:1: error: container `c` has no `image`\n  hint: `imagee` (line 1) looks like a misspelling of `image`",
                "t.yaml:2:15: error: `mountSources` of container `c` must be true or false, found a string\n  hint: remove the quotes",
                "t.yaml:1:1: warning: unknown field `imagee` in container `c`; ignored\n  hint: did you mean `image`?",
                "t.yaml:3:1: warning: unknown field `x` in container `c`; ignored\n  hint: known fields: image, mountSources",
            ]
        );
    }

    #[test]
    fn choices() {
        let d = bad_choice(&Span::new("f", 1, 1), "`kind`", "biuld", &["build", "run"]);
        assert_eq!(
            d.to_string(),
            "f:1:1: error: `kind` must be `build` or `run`, found `biuld`\n  hint: did you mean `build`?"
        );
    }
}
