//! JSON with comments (`//`, `/* */`) and trailing commas — the dialect of
//! `devcontainer.json` — to a positioned [`Node`] tree.
//!
//! A small recursive-descent parser rather than a crate, so that every value keeps its line
//! and column (1-based, columns counted in characters) and errors point at the offending
//! character. Nesting is bounded; a key given twice is warned about and the later one kept.

use archway_diag::{Diagnostic, Span};

use crate::node::{Node, Value};

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 200;

struct Parser<'a> {
    file: &'a str,
    chars: Vec<char>,
    pos: usize,
    line: usize,
    col: usize,
    warnings: Vec<Diagnostic>,
}

impl Parser<'_> {
    fn span(&self) -> Span {
        Span::new(self.file, self.line, self.col)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(&self.span(), format!("invalid JSON: {}", message.into()))
    }

    /// An error after a value, with a hint when the next thing starts another value.
    fn missing_comma(&self, message: String) -> Diagnostic {
        let e = self.error(message);
        match self.peek() {
            Some(c) if c == '"' || c == '{' || c == '[' || c == '-' || c.is_alphanumeric() => {
                e.with_hint("is a `,` missing after the previous value?")
            }
            _ => e,
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the file".to_owned(),
            Some(c) => format!("`{c}`"),
        }
    }

    /// Skips whitespace and comments.
    fn skip(&mut self) -> Result<(), Diagnostic> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == '\u{feff}' => {
                    self.bump();
                }
                Some('/') => {
                    let start = self.span();
                    match self.chars.get(self.pos + 1) {
                        Some('/') => {
                            while let Some(c) = self.peek() {
                                if c == '\n' {
                                    break;
                                }
                                self.bump();
                            }
                        }
                        Some('*') => {
                            self.bump();
                            self.bump();
                            loop {
                                match self.bump() {
                                    None => {
                                        return Err(Diagnostic::error(
                                            &start,
                                            "invalid JSON: a `/*` comment is never closed",
                                        ));
                                    }
                                    Some('*') if self.peek() == Some('/') => {
                                        self.bump();
                                        break;
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                        _ => return Err(self.error("expected a value or a comment, found `/`")),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, Diagnostic> {
        self.skip()?;
        let span = self.span();
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let value = match self.peek() {
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth)?,
            Some('"') => Value::Str(self.string()?),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number()?,
            Some(c) if c.is_alphabetic() => {
                let word = self.word();
                match word.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    _ => {
                        return Err(Diagnostic::error(
                            &span,
                            format!(
                                "invalid JSON: expected a value, found `{word}` (strings need double quotes)"
                            ),
                        ));
                    }
                }
            }
            _ => return Err(self.error(format!("expected a value, found {}", self.found()))),
        };
        Ok(Node::new(value, span))
    }

    fn word(&mut self) -> String {
        let mut w = String::new();
        while let Some(c) = self.peek() {
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            w.push(c);
            self.bump();
        }
        w
    }

    fn number(&mut self) -> Result<Value, Diagnostic> {
        let start = self.span();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')) {
                break;
            }
            text.push(c);
            self.bump();
        }
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(Diagnostic::error(
                &start,
                format!("invalid JSON: `{text}` is not a number"),
            )),
        }
    }

    fn string(&mut self) -> Result<String, Diagnostic> {
        let start = self.span();
        self.bump();
        let mut s = String::new();
        loop {
            let at = self.span();
            match self.bump() {
                None | Some('\n') => {
                    return Err(Diagnostic::error(
                        &start,
                        "invalid JSON: a string is never closed",
                    ));
                }
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('/') => s.push('/'),
                    Some('b') => s.push('\u{8}'),
                    Some('f') => s.push('\u{c}'),
                    Some('n') => s.push('\n'),
                    Some('r') => s.push('\r'),
                    Some('t') => s.push('\t'),
                    Some('u') => {
                        let hi = self.hex4(&at)?;
                        let c = if (0xD800..0xDC00).contains(&hi) {
                            if self.peek() == Some('\\')
                                && self.chars.get(self.pos + 1) == Some(&'u')
                            {
                                self.bump();
                                self.bump();
                                let lo = self.hex4(&at)?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                } else {
                                    None
                                }
                            } else {
                                None
                            }
                        } else {
                            char::from_u32(hi)
                        };
                        s.push(c.unwrap_or('\u{fffd}'));
                    }
                    _ => {
                        return Err(Diagnostic::error(
                            &at,
                            "invalid JSON: unknown escape in a string",
                        ));
                    }
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn hex4(&mut self, at: &Span) -> Result<u32, Diagnostic> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self.bump().and_then(|c| c.to_digit(16)).ok_or_else(|| {
                Diagnostic::error(at, "invalid JSON: `\\u` needs four hex digits")
            })?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Result<Value, Diagnostic> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip()?;
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Value::Seq(items));
            }
            items.push(self.value(depth + 1)?);
            self.skip()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                _ => {
                    return Err(self.missing_comma(format!(
                        "expected `,` or `]` in a list, found {}",
                        self.found()
                    )));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Diagnostic> {
        self.bump();
        let mut entries: Vec<(Node, Node)> = Vec::new();
        loop {
            self.skip()?;
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return Ok(Value::Map(entries));
                }
                Some('"') => {}
                _ => {
                    return Err(self.error(format!(
                        "expected a quoted key or `}}`, found {}",
                        self.found()
                    )));
                }
            }
            let kspan = self.span();
            let key = self.string()?;
            self.skip()?;
            if self.peek() != Some(':') {
                return Err(self.error(format!(
                    "expected `:` after the key \"{key}\", found {}",
                    self.found()
                )));
            }
            self.bump();
            let value = self.value(depth + 1)?;
            if let Some(pos) = entries.iter().position(|(k, _)| k.as_str() == Some(&key)) {
                self.warnings.push(
                    Diagnostic::warning(
                        &kspan,
                        format!("`{key}` is defined twice in this object; the later one wins"),
                    )
                    .with_hint(format!("the first is at line {}", entries[pos].0.span.line)),
                );
                entries.remove(pos);
            }
            entries.push((Node::new(Value::Str(key), kspan), value));
            self.skip()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                _ => {
                    return Err(self.missing_comma(format!(
                        "expected `,` or `}}` in an object, found {}",
                        self.found()
                    )));
                }
            }
        }
    }
}

/// Parses one JSON-with-comments value (the whole file). Returns it with any warnings, or the
/// first error.
pub(crate) fn load(text: &str, file: &str) -> Result<(Node, Vec<Diagnostic>), Diagnostic> {
    let mut p = Parser {
        file,
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        col: 1,
        warnings: Vec::new(),
    };
    let root = p.value(0)?;
    p.skip()?;
    if p.peek().is_some() {
        return Err(p.error(format!(
            "expected the end of the file after the value, found {}",
            p.found()
        )));
    }
    Ok((root, p.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_trailing_commas_and_positions() {
        let text = "// header\n{\n  /* block\n  comment */ \"a\": 1, // one\n  \"b\": [true, null, \"x\",],\n  \"c\": {\"d\": -1.5e2,},\n}\n";
        let (n, w) = load(text, "d.json").unwrap();
        assert!(w.is_empty());
        assert_eq!(n.span.line, 2);
        let a = n.get("a").unwrap();
        assert_eq!(a.value, Value::Int(1));
        assert_eq!((a.span.line, a.span.col), (4, 19));
        assert_eq!(n.get("b").unwrap().as_seq().unwrap().len(), 3);
        assert_eq!(
            n.get("c").unwrap().get("d").unwrap().value,
            Value::Float(-150.0)
        );
    }

    #[test]
    fn strings_and_escapes() {
        let (n, _) = load(r#"{"s": "a\"b\\c\u00e9\ud83d\ude00/"}"#, "d.json").unwrap();
        assert_eq!(n.get("s").unwrap().as_str(), Some("a\"b\\cé😀/"));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = load("{\n  \"a\": 1\n  \"b\": 2\n}", "d.json").unwrap_err();
        assert_eq!((e.span.line, e.span.col), (3, 3), "{e}");
        assert!(e.message.contains("expected `,` or `}`"), "{e}");
        let e = load("{\"a\": yes}", "d.json").unwrap_err();
        assert!(e.message.contains("`yes`"), "{e}");
        let e = load("{} {}", "d.json").unwrap_err();
        assert!(e.message.contains("end of the file"), "{e}");
        let e = load("/* open", "d.json").unwrap_err();
        assert!(e.message.contains("never closed"), "{e}");
        let e = load("{\"a\": \"b", "d.json").unwrap_err();
        assert!(e.message.contains("never closed"), "{e}");
        let deep = "[".repeat(500);
        let e = load(&deep, "d.json").unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
    }

    #[test]
    fn duplicate_keys_warn() {
        let (n, w) = load("{\"a\": 1, \"a\": 2}", "d.json").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Int(2));
        assert_eq!(w.len(), 1);
    }
}
