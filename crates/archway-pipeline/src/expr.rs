//! GitLab CI/CD expressions, as used by `rules:if` and `workflow:rules:if`:
//! `$VAR` (not `${VAR}`, which GitLab refuses), `$VAR == "x"`, `!=`, `=~ /re/i`, `!~`, `null`, `&&` (binding tighter than `||`),
//! parentheses. Regular expressions use RE2 syntax (the `regex` crate), as GitLab does; a
//! variable on the right of `=~` may hold a `/pattern/flags` regex.

use std::fmt;

use regex::Regex;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Cmp(Operand, CmpOp, Operand),
    /// A lone operand: true when it is a non-empty string.
    Truthy(Operand),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Match,
    NoMatch,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Var(String),
    Str(String),
    Null,
    Regex(String, String),
}

/// An error in an expression, at a column of it when it is a syntax error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", offset.map(|o| format!(" (at column {o} of the expression)")).unwrap_or_default())]
pub struct ExprError {
    pub offset: Option<usize>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Var(String),
    Str(String),
    Null,
    Regex(String, String),
    Eq,
    Ne,
    Match,
    NoMatch,
    And,
    Or,
    LParen,
    RParen,
}

fn err(offset: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        offset: Some(offset + 1),
        message: message.into(),
    }
}

fn semantic(message: impl Into<String>) -> ExprError {
    ExprError {
        offset: None,
        message: message.into(),
    }
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    // A `/` starts a regex only where an operand may start (after `=~`/`!~`).
    let mut expect_regex = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let two = s.get(i..i + 2).unwrap_or("");
        let tok = match two {
            "==" => Some(Tok::Eq),
            "!=" => Some(Tok::Ne),
            "=~" => Some(Tok::Match),
            "!~" => Some(Tok::NoMatch),
            "&&" => Some(Tok::And),
            "||" => Some(Tok::Or),
            _ => None,
        };
        if let Some(t) = tok {
            expect_regex = matches!(t, Tok::Match | Tok::NoMatch);
            out.push((t, start));
            i += 2;
            continue;
        }
        match c {
            b'(' => {
                out.push((Tok::LParen, start));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, start));
                i += 1;
            }
            b'$' => {
                i += 1;
                // GitLab's variable lexeme is `$NAME`: `${NAME}` is a syntax error there.
                if b.get(i) == Some(&b'{') {
                    return Err(err(
                        start,
                        "`${NAME}` is not allowed in expressions; write `$NAME`",
                    ));
                }
                let name_start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if i == name_start {
                    return Err(err(start, "`$` must be followed by a variable name"));
                }
                let name = s[name_start..i].to_owned();
                out.push((Tok::Var(name), start));
            }
            b'"' | b'\'' => {
                let q = c;
                i += 1;
                let mut v = String::new();
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated string")),
                        Some(&x) if x == q => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if b.get(i + 1) == Some(&q) => {
                            v.push(q as char);
                            i += 2;
                        }
                        Some(_) => {
                            let ch = s[i..].chars().next().unwrap_or('\0');
                            v.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((Tok::Str(v), start));
            }
            b'/' if expect_regex => {
                i += 1;
                let mut pat = String::new();
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated regular expression")),
                        Some(b'\\') if b.get(i + 1) == Some(&b'/') => {
                            pat.push('/');
                            i += 2;
                        }
                        Some(b'/') => {
                            i += 1;
                            break;
                        }
                        Some(_) => {
                            let ch = s[i..].chars().next().unwrap_or('\0');
                            pat.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                let flags_start = i;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push((Tok::Regex(pat, s[flags_start..i].to_owned()), start));
            }
            _ if s[i..].starts_with("null")
                && !s[i + 4..].starts_with(|c: char| c.is_alphanumeric() || c == '_') =>
            {
                out.push((Tok::Null, start));
                i += 4;
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(err(start, format!("unexpected `{ch}`")));
            }
        }
        expect_regex = false;
    }
    Ok(out)
}

struct P {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    len: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |(_, o)| *o)
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.primary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.primary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        if self.peek() == Some(&Tok::LParen) {
            let open = self.offset();
            self.pos += 1;
            let e = self.or()?;
            if self.peek() != Some(&Tok::RParen) {
                return Err(err(open, "unbalanced `(`"));
            }
            self.pos += 1;
            return Ok(e);
        }
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Eq) => CmpOp::Eq,
            Some(Tok::Ne) => CmpOp::Ne,
            Some(Tok::Match) => CmpOp::Match,
            Some(Tok::NoMatch) => CmpOp::NoMatch,
            _ => return Ok(Expr::Truthy(left)),
        };
        self.pos += 1;
        let right = self.operand()?;
        if matches!(op, CmpOp::Match | CmpOp::NoMatch)
            && !matches!(right, Operand::Regex(..) | Operand::Var(_))
        {
            return Err(err(
                self.offset().saturating_sub(1),
                "`=~` and `!~` need a /regular expression/ (or a variable holding one) on the right",
            ));
        }
        Ok(Expr::Cmp(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        let at = self.offset();
        let t = self.toks.get(self.pos).map(|(t, _)| t.clone());
        self.pos += 1;
        match t {
            Some(Tok::Var(v)) => Ok(Operand::Var(v)),
            Some(Tok::Str(s)) => Ok(Operand::Str(s)),
            Some(Tok::Null) => Ok(Operand::Null),
            Some(Tok::Regex(p, f)) => Ok(Operand::Regex(p, f)),
            Some(other) => Err(err(
                at,
                format!(
                    "expected a variable, string or null, found `{}`",
                    tok_text(&other)
                ),
            )),
            None => Err(err(at, "expression ends too early")),
        }
    }
}

fn tok_text(t: &Tok) -> &'static str {
    match t {
        Tok::Eq => "==",
        Tok::Ne => "!=",
        Tok::Match => "=~",
        Tok::NoMatch => "!~",
        Tok::And => "&&",
        Tok::Or => "||",
        Tok::LParen => "(",
        Tok::RParen => ")",
        _ => "value",
    }
}

impl Expr {
    /// Parses an expression.
    pub fn parse(s: &str) -> Result<Expr, ExprError> {
        let toks = lex(s)?;
        if toks.is_empty() {
            return Err(err(0, "empty expression"));
        }
        let mut p = P {
            toks,
            pos: 0,
            len: s.len(),
        };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            let t = &p.toks[p.pos].0;
            return Err(err(p.offset(), format!("unexpected `{}`", tok_text(t))));
        }
        Ok(e)
    }

    /// Evaluates with `lookup` giving variable values (`None` = undefined).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<bool, ExprError> {
        Ok(match self {
            Expr::Or(a, b) => a.eval(lookup)? || b.eval(lookup)?,
            Expr::And(a, b) => a.eval(lookup)? && b.eval(lookup)?,
            Expr::Truthy(o) => matches!(value(o, lookup), Val::S(s) if !s.is_empty()),
            Expr::Cmp(a, op, b) => {
                let (l, r) = (value(a, lookup), value(b, lookup));
                match op {
                    CmpOp::Eq => l == r,
                    CmpOp::Ne => l != r,
                    CmpOp::Match | CmpOp::NoMatch => {
                        let re = regex_of(b, lookup)?;
                        let hit = match (&l, re) {
                            (Val::S(s), Some(re)) => re.is_match(s),
                            _ => false,
                        };
                        if *op == CmpOp::Match { hit } else { !hit }
                    }
                }
            }
        })
    }
}

#[derive(Debug, PartialEq)]
enum Val {
    Null,
    S(String),
}

fn value(o: &Operand, lookup: &dyn Fn(&str) -> Option<String>) -> Val {
    match o {
        Operand::Var(v) => lookup(v).map_or(Val::Null, Val::S),
        Operand::Str(s) => Val::S(s.clone()),
        Operand::Null => Val::Null,
        Operand::Regex(p, _) => Val::S(p.clone()),
    }
}

fn compile(pattern: &str, flags: &str) -> Result<Regex, ExprError> {
    let mut prefix = String::new();
    for f in flags.chars() {
        match f {
            'i' | 'm' | 's' => prefix.push(f),
            other => {
                return Err(semantic(format!(
                    "unsupported regex flag `{other}` (use i, m or s)"
                )));
            }
        }
    }
    let full = if prefix.is_empty() {
        pattern.to_owned()
    } else {
        format!("(?{prefix}){pattern}")
    };
    Regex::new(&full).map_err(|e| {
        // The regex crate's messages span several lines; its last line says what is wrong.
        let text = e.to_string();
        let why = text
            .lines()
            .last()
            .unwrap_or(&text)
            .trim()
            .trim_start_matches("error: ")
            .to_owned();
        semantic(format!("invalid regular expression /{pattern}/: {why}"))
    })
}

/// The regex on the right of `=~`: a literal, or a variable holding `/pattern/flags`.
fn regex_of(
    o: &Operand,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Regex>, ExprError> {
    match o {
        Operand::Regex(p, f) => compile(p, f).map(Some),
        Operand::Var(v) => {
            let Some(text) = lookup(v) else {
                return Ok(None);
            };
            let Some(rest) = text.strip_prefix('/') else {
                return compile(&regex::escape(&text), "").map(Some);
            };
            match rest.rfind('/') {
                Some(end) => compile(&rest[..end], &rest[end + 1..]).map(Some),
                None => compile(&regex::escape(&text), "").map(Some),
            }
        }
        _ => Ok(None),
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Var(v) => write!(f, "${v}"),
            Operand::Str(s) => write!(f, "{s:?}"),
            Operand::Null => f.write_str("null"),
            Operand::Regex(p, fl) => write!(f, "/{p}/{fl}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn eval(e: &str, vars: &[(&str, &str)]) -> bool {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Expr::parse(e)
            .unwrap_or_else(|err| panic!("{e}: {err}"))
            .eval(&|k| m.get(k).cloned())
            .unwrap()
    }

    #[test]
    fn comparisons_and_truthiness() {
        let v = [
            ("CI_COMMIT_BRANCH", "main"),
            ("EMPTY", ""),
            ("ARCH", "arm64"),
        ];
        assert!(eval("$CI_COMMIT_BRANCH == \"main\"", &v));
        assert!(eval("$CI_COMMIT_BRANCH != 'dev'", &v));
        assert!(eval("$CI_COMMIT_BRANCH", &v));
        assert!(!eval("$EMPTY", &v));
        assert!(!eval("$UNDEFINED", &v));
        assert!(eval("$UNDEFINED == null", &v));
        assert!(!eval("$EMPTY == null", &v));
        assert!(eval("$EMPTY == \"\"", &v));
        assert!(eval("$ARCH == $ARCH", &v));
        // GitLab's lexer knows only `$NAME`.
        assert!(Expr::parse("${ARCH} == \"arm64\"").is_err());
    }

    #[test]
    fn regexes_and_precedence() {
        let v = [("B", "release/1.2"), ("T", "V1.0"), ("P", "/^v\\d/i")];
        assert!(eval("$B =~ /^release\\//", &v));
        assert!(eval("$B !~ /^main$/", &v));
        assert!(eval("$T =~ /^v1/i", &v));
        assert!(!eval("$T =~ /^v1/", &v));
        assert!(eval("$T =~ $P", &v));
        assert!(!eval("$UNDEFINED =~ /x/", &v));
        assert!(eval("$UNDEFINED !~ /x/", &v));
        // && binds tighter than ||.
        assert!(eval("$B == \"x\" && $T == \"x\" || $B", &v));
        assert!(!eval("$B == \"x\" && ($T == \"x\" || $B)", &v));
    }

    #[test]
    fn syntax_errors_have_offsets() {
        for (e, needle) in [
            ("$A ==", "ends too early"),
            ("($A == 'x'", "unbalanced"),
            ("$A == 'x", "unterminated string"),
            ("$A =~ 'x'", "regular expression"),
            ("$A = 'x'", "unexpected `=`"),
            ("$A == 'x' $B", "unexpected"),
            ("", "empty"),
        ] {
            let err = Expr::parse(e).unwrap_err();
            assert!(err.to_string().contains(needle), "{e}: {err}");
        }
        let err = Expr::parse("$A =~ /(/")
            .unwrap()
            .eval(&|_| Some("x".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid regular expression"),
            "{err}"
        );
    }
}
