//! Devfile `variables`: `{{name}}` in any string value is replaced by the variable's value.
//! A reference to a variable nobody defined is an error at the string that holds it (as odo
//! reports it), with a suggestion when the name looks like a misspelling.

use std::collections::BTreeMap;

use archway_diag::{Diagnostic, did_you_mean};

use crate::fields;
use crate::node::{Node, Value};

/// Variables by name.
pub(crate) type Variables = BTreeMap<String, String>;

/// Reads a `variables` mapping (name → scalar).
pub(crate) fn read(d: &mut Vec<Diagnostic>, node: &Node, place: &str) -> Variables {
    let mut vars = Variables::new();
    let Some(entries) = node.as_map() else {
        if !matches!(node.value, Value::Null) {
            d.push(fields::type_error(
                node,
                place,
                "a mapping of names to values",
            ));
        }
        return vars;
    };
    for (k, v) in entries {
        let name = k.scalar_text().unwrap_or_default();
        let value = match &v.value {
            Value::Null => Some(String::new()),
            _ => fields::text(d, v, &format!("variable `{name}`")),
        };
        if let Some(value) = value {
            vars.insert(name, value);
        }
    }
    vars
}

/// Replaces `{{name}}` in one string; unknown names are reported at `node`.
fn substitute_str(
    d: &mut Vec<Diagnostic>,
    s: &str,
    node: &Node,
    vars: &Variables,
) -> Option<String> {
    if !s.contains("{{") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match vars.get(name.trim()) {
            Some(v) => out.push_str(v),
            None => {
                let e = Diagnostic::error(
                    &node.span,
                    format!("variable `{}` is not defined", name.trim()),
                );
                d.push(
                    match did_you_mean(name.trim(), vars.keys().map(String::as_str)) {
                        Some(h) => e.with_hint(format!("did you mean `{{{{{h}}}}}`?")),
                        None if vars.is_empty() => {
                            e.with_hint("define it under the top-level `variables:`")
                        }
                        None => e.with_hint(format!(
                            "defined variables: {}",
                            vars.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                    },
                );
                out.push_str(&rest[start..start + 4 + len]);
            }
        }
        rest = &rest[start + 4 + len..];
    }
    out.push_str(rest);
    Some(out)
}

/// Substitutes in every string value under `node` (mapping keys stay as written).
pub(crate) fn substitute(d: &mut Vec<Diagnostic>, node: &mut Node, vars: &Variables) {
    match &mut node.value {
        Value::Str(s) => {
            let s = s.clone();
            if let Some(new) = substitute_str(d, &s, node, vars) {
                node.value = Value::Str(new);
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|i| substitute(d, i, vars)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| substitute(d, v, vars)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn replaces_and_reports() {
        let (mut n, _) = yaml::load(
            "a: \"{{image}}:{{ tag }}\"\nb: [\"{{imag}}\"]\nc: \"{{open\"\n",
            "t.yaml",
        )
        .unwrap();
        let vars = Variables::from([
            ("image".to_owned(), "node".to_owned()),
            ("tag".to_owned(), "18".to_owned()),
        ]);
        let mut d = Vec::new();
        substitute(&mut d, &mut n, &vars);
        assert_eq!(n.get("a").unwrap().as_str(), Some("node:18"));
        assert_eq!(n.get("c").unwrap().as_str(), Some("{{open"));
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "t.yaml:2:5: error: variable `imag` is not defined\n  hint: did you mean `{{image}}`?"
        );
    }
}
