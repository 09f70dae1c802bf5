//! Variables: precedence by origin, and `$NAME` / `${NAME}` expansion.

use std::collections::BTreeMap;

use crate::graph::{Origin, Variable};

/// Expands `$NAME` and `${NAME}` with `lookup`; `$$` is a literal `$`. Undefined variables
/// expand to nothing, as in GitLab.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    expand_with(s, lookup, false)
}

/// [`expand`], but a reference to an unknown variable stays as written (`$CI_REGISTRY` in an
/// `image:` is for the runner to expand, with the job's predefined variables).
pub fn expand_known(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    expand_with(s, lookup, true)
}

fn expand_with(s: &str, lookup: &dyn Fn(&str) -> Option<String>, keep_unknown: bool) -> String {
    if !s.contains('$') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = s[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            // `$$` is a literal `$`, unless the result is expanded again later (then it stays
            // an escape for that expansion).
            out.push_str(if keep_unknown { "$$" } else { "$" });
            i += 2;
            continue;
        }
        let braced = b.get(i + 1) == Some(&b'{');
        let start = if braced { i + 2 } else { i + 1 };
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if end == start || (braced && b.get(end) != Some(&b'}')) {
            out.push('$');
            i += 1;
            continue;
        }
        let next = if braced { end + 1 } else { end };
        match lookup(&s[start..end]) {
            Some(v) => out.push_str(&v),
            None if keep_unknown => out.push_str(&s[i..next]),
            None => {}
        }
        i = next;
    }
    out
}

#[derive(Clone, Debug)]
struct Entry {
    value: String,
    origin: Origin,
    /// Expand references to other variables in the value.
    expand: bool,
}

/// A set of variables where higher origins override lower ones.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    map: BTreeMap<String, Entry>,
}

impl Vars {
    /// Sets a variable unless one of higher precedence is already set.
    pub fn set(&mut self, name: &str, value: &str, origin: Origin, expand: bool) {
        match self.map.get(name) {
            Some(e) if e.origin > origin => {}
            _ => {
                self.map.insert(
                    name.to_owned(),
                    Entry {
                        value: value.to_owned(),
                        origin,
                        expand,
                    },
                );
            }
        }
    }

    /// The value with references to other variables expanded (bounded depth); references
    /// to unknown variables expand to nothing (as `rules:if` sees them).
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_depth(name, 0, false)
    }

    /// The value with references to known variables expanded and the others kept as written
    /// (for values the runner expands again, with the job's predefined variables).
    pub fn get_known(&self, name: &str) -> Option<String> {
        self.get_depth(name, 0, true)
    }

    fn get_depth(&self, name: &str, depth: usize, keep_unknown: bool) -> Option<String> {
        let e = self.map.get(name)?;
        if !e.expand || depth >= 10 || !e.value.contains('$') {
            return Some(e.value.clone());
        }
        Some(expand_with(
            &e.value,
            &|n| {
                if n == name {
                    None
                } else {
                    self.get_depth(n, depth + 1, keep_unknown)
                }
            },
            keep_unknown,
        ))
    }

    /// Expands a string with these variables.
    pub fn expand(&self, s: &str) -> String {
        expand(s, &|n| self.get(n))
    }

    /// Expands the variables it knows and leaves other references as written.
    pub fn expand_known(&self, s: &str) -> String {
        expand_known(s, &|n| self.get_known(n))
    }

    /// Variables whose origin is at least `min`, expanded (references to variables the
    /// pipeline does not define are kept for the runner), sorted by name.
    pub fn list(&self, min: Origin) -> Vec<Variable> {
        self.map
            .iter()
            .filter(|(_, e)| e.origin >= min)
            .map(|(k, e)| Variable {
                name: k.clone(),
                value: self.get_known(k).unwrap_or_else(|| e.value.clone()),
                origin: e.origin,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_forms() {
        let look = |n: &str| match n {
            "A" => Some("1".to_owned()),
            "ARCH" => Some("arm64".to_owned()),
            _ => None,
        };
        assert_eq!(expand("$A-${ARCH}", &look), "1-arm64");
        assert_eq!(expand("$UNDEFINED|", &look), "|");
        assert_eq!(expand("cost $$5 ${", &look), "cost $5 ${");
        assert_eq!(expand("$", &look), "$");
        assert_eq!(
            expand_known("$CI_REGISTRY/app:${A}", &look),
            "$CI_REGISTRY/app:1"
        );
        assert_eq!(expand_known("${CI_REGISTRY}/x", &look), "${CI_REGISTRY}/x");
        // Expanded twice (front end, then runner), an escape still means one `$`.
        assert_eq!(expand(&expand_known("cost $$5", &look), &look), "cost $5");
    }

    #[test]
    fn precedence_and_nested_references() {
        let mut v = Vars::default();
        v.set("IMAGE", "$REGISTRY/app:$TAG", Origin::Global, true);
        v.set("REGISTRY", "reg.io", Origin::Global, true);
        v.set("TAG", "global", Origin::Global, true);
        v.set("TAG", "job", Origin::Job, true);
        v.set("TAG", "ignored", Origin::Global, true);
        v.set("RAW", "$TAG", Origin::Job, false);
        v.set("SELF", "x$SELF", Origin::Job, true);
        assert_eq!(v.get("IMAGE").as_deref(), Some("reg.io/app:job"));
        assert_eq!(v.get("RAW").as_deref(), Some("$TAG"));
        assert_eq!(v.get("SELF").as_deref(), Some("x"));
        let listed = v.list(Origin::Job);
        assert_eq!(
            listed.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["RAW", "SELF", "TAG"]
        );
    }
}
