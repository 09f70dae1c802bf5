//! Dockerfile word processing as BuildKit does it: quote removal, escapes, and variable
//! expansion with `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`,
//! `${VAR+alt}` and `${VAR:?message}`.

/// Why a word could not be processed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated {0} quote")]
    Unterminated(&'static str),
    #[error("unterminated `${{`")]
    UnterminatedBrace,
    #[error("bad substitution `{0}`")]
    BadSubstitution(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Expands variables (and, with `quotes`, removes quotes and escapes) in one word.
pub fn process(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
    quotes: bool,
) -> Result<String, ExpandError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut in_double = false;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && i + 1 < chars.len() {
            let next = chars[i + 1];
            if quotes && (!in_double || matches!(next, '$' | '"') || next == escape) {
                out.push(next);
                i += 2;
                continue;
            }
            if !quotes && next == '$' {
                out.push('$');
                i += 2;
                continue;
            }
            out.push(c);
            i += 1;
            continue;
        }
        if quotes && c == '\'' && !in_double {
            let start = i + 1;
            let Some(end) = chars[start..].iter().position(|&x| x == '\'') else {
                return Err(ExpandError::Unterminated("single"));
            };
            out.extend(&chars[start..start + end]);
            i = start + end + 1;
            continue;
        }
        if quotes && c == '"' {
            in_double = !in_double;
            i += 1;
            continue;
        }
        if c == '$' {
            let (text, used) = variable(&chars[i + 1..], lookup, escape)?;
            match text {
                Some(t) => {
                    out.push_str(&t);
                    i += 1 + used;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    if in_double {
        return Err(ExpandError::Unterminated("double"));
    }
    Ok(out)
}

/// After a `$`: the expansion and how many characters it used; `None` if not a variable.
fn variable(
    rest: &[char],
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<(Option<String>, usize), ExpandError> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match rest.first() {
        Some('{') => {
            let mut depth = 1;
            let mut j = 1;
            while j < rest.len() {
                match rest[j] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            if j >= rest.len() {
                return Err(ExpandError::UnterminatedBrace);
            }
            let inner: String = rest[1..j].iter().collect();
            let name_len = inner.chars().take_while(|&c| is_name(c)).count();
            if name_len == 0 {
                return Err(ExpandError::BadSubstitution(format!("${{{inner}}}")));
            }
            let name = &inner[..name_len];
            let op = &inner[name_len..];
            let value = lookup(name);
            let word = |w: &str| process(w, lookup, escape, false);
            let result = match op {
                "" => value.unwrap_or_default(),
                o if o.starts_with(":-") => match value.filter(|v| !v.is_empty()) {
                    Some(v) => v,
                    None => word(&o[2..])?,
                },
                o if o.starts_with('-') => match value {
                    Some(v) => v,
                    None => word(&o[1..])?,
                },
                o if o.starts_with(":+") => match value.filter(|v| !v.is_empty()) {
                    Some(_) => word(&o[2..])?,
                    None => String::new(),
                },
                o if o.starts_with('+') => match value {
                    Some(_) => word(&o[1..])?,
                    None => String::new(),
                },
                o if o.starts_with(":?") || o.starts_with('?') => {
                    let msg = o.trim_start_matches(':').trim_start_matches('?');
                    match value.filter(|v| !v.is_empty() || !o.starts_with(':')) {
                        Some(v) => v,
                        None => {
                            return Err(ExpandError::Required {
                                name: name.to_owned(),
                                message: if msg.is_empty() {
                                    "is required".to_owned()
                                } else {
                                    word(msg)?
                                },
                            });
                        }
                    }
                }
                _ => return Err(ExpandError::BadSubstitution(format!("${{{inner}}}"))),
            };
            Ok((Some(result), j + 1))
        }
        Some(&c) if is_name(c) && !c.is_ascii_digit() => {
            let n = rest.iter().take_while(|&&c| is_name(c)).count();
            let name: String = rest[..n].iter().collect();
            Ok((Some(lookup(&name).unwrap_or_default()), n))
        }
        _ => Ok((None, 0)),
    }
}

/// Splits `KEY=VALUE KEY2="a b"` (ENV, ARG, LABEL) into raw pairs, keeping quotes in the
/// values for later processing. A lone `KEY VALUE` (old ENV form) is one pair.
pub fn split_pairs(
    s: &str,
    escape: char,
    allow_legacy: bool,
) -> Result<Vec<(String, Option<String>)>, ExpandError> {
    let words = split_words(s, escape)?;
    if allow_legacy
        && let Some(first) = words.first()
        && !first.contains('=')
        && words.len() > 1
    {
        // `ENV KEY value with spaces`
        let rest = s.trim_start()[first.len()..].trim().to_owned();
        return Ok(vec![(first.clone(), Some(rest))]);
    }
    Ok(words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect())
}

/// Splits on unquoted, unescaped whitespace outside `${...}`; quotes and escapes are kept.
pub fn split_words(s: &str, escape: char) -> Result<Vec<String>, ExpandError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut braces = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if quote.is_none() {
            if c == '$' && chars.peek() == Some(&'{') {
                braces += 1;
                cur.push(c);
                cur.push('{');
                chars.next();
                continue;
            }
            if braces > 0 {
                if c == '}' {
                    braces -= 1;
                }
                cur.push(c);
                continue;
            }
        }
        match quote {
            Some(q) => {
                cur.push(c);
                if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if c.is_whitespace() {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                } else if c == escape {
                    cur.push(c);
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else {
                    if c == '"' || c == '\'' {
                        quote = Some(c);
                    }
                    cur.push(c);
                }
            }
        }
    }
    if let Some(q) = quote {
        return Err(ExpandError::Unterminated(if q == '"' {
            "double"
        } else {
            "single"
        }));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ARCH" => Some("arm64".into()),
            "EMPTY" => Some(String::new()),
            "DIR" => Some("/app".into()),
            _ => None,
        }
    }

    fn p(s: &str) -> String {
        process(s, &env, '\\', true).unwrap()
    }

    #[test]
    fn buildkit_substitutions() {
        assert_eq!(p("$ARCH-${ARCH}"), "arm64-arm64");
        assert_eq!(p("${MISSING:-x86}"), "x86");
        assert_eq!(p("${EMPTY:-def}"), "def");
        assert_eq!(p("${EMPTY-def}"), "");
        assert_eq!(p("${ARCH:+set}"), "set");
        assert_eq!(p("${MISSING:+set}"), "");
        assert_eq!(p("${MISSING:-$DIR/x}"), "/app/x");
        assert_eq!(p("\\$ARCH"), "$ARCH");
        assert_eq!(p("'$ARCH'"), "$ARCH");
        assert_eq!(p("\"$ARCH x\""), "arm64 x");
        assert_eq!(p("a\\ b"), "a b");
        assert_eq!(p("$1"), "$1");
        let e = process("${MISSING:?must be set}", &env, '\\', true).unwrap_err();
        assert_eq!(e.to_string(), "MISSING: must be set");
        assert!(process("${ARCH", &env, '\\', true).is_err());
        assert!(process("${!x}", &env, '\\', true).is_err());
        assert!(process("'open", &env, '\\', true).is_err());
        // Backtick escapes (Windows Dockerfiles).
        assert_eq!(process("`$ARCH", &env, '`', true).unwrap(), "$ARCH");
    }

    #[test]
    fn pairs_and_words() {
        assert_eq!(
            split_pairs(r#"A=1 B="two words" C"#, '\\', false).unwrap(),
            vec![
                ("A".into(), Some("1".into())),
                ("B".into(), Some("\"two words\"".into())),
                ("C".into(), None)
            ]
        );
        assert_eq!(
            split_pairs("KEY some value", '\\', true).unwrap(),
            vec![("KEY".into(), Some("some value".into()))]
        );
        assert_eq!(
            split_words(r#"a "b c" d\ e"#, '\\').unwrap(),
            vec!["a", "\"b c\"", "d\\ e"]
        );
    }
}
