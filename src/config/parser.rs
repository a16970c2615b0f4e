//! The generic syntax tree of a config file: scopes, options and values with positions.
//!
//! Owns the grammar; knows nothing of msgc's options (that is `schema.rs`). Never panics on
//! any input: every error is a `ConfigError` with `file:line:col`.

use super::lexer::{describe, lex, Tok, Token};
use super::ConfigError;

/// Where something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    pub file: String,
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String, Pos),
    Word(String, Pos),
    Array(Vec<Value>, Pos),
    Dict(Vec<(String, Pos, Value)>, Pos),
}

impl Value {
    pub fn pos(&self) -> &Pos {
        match self {
            Value::Str(_, p) | Value::Word(_, p) | Value::Array(_, p) | Value::Dict(_, p) => p,
        }
    }
    /// A string or bare word.
    pub fn scalar(&self) -> Option<&str> {
        match self {
            Value::Str(s, _) | Value::Word(s, _) => Some(s),
            _ => None,
        }
    }
}

/// One entry of a scope.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Option { key: String, pos: Pos, value: Value },
    Scope { name: String, arg: Option<String>, pos: Pos, body: Vec<Entry> },
    Include { path: String, pos: Pos },
}

struct Parser<'a> {
    toks: Vec<Token>,
    at: usize,
    file: &'a str,
}

/// Parses a whole file into its top-level entries (includes are not yet followed).
pub fn parse(text: &str, file: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut p = Parser { toks: lex(text, file)?, at: 0, file };
    let entries = p.entries(0)?;
    if let Some(t) = p.toks.get(p.at) {
        return Err(p.err(t, format!("unexpected {}: no scope is open", describe(&t.tok))));
    }
    Ok(entries)
}

/// Scopes nest at most this deep (bounds recursion on hostile input).
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn pos(&self, t: &Token) -> Pos {
        Pos { file: self.file.to_string(), line: t.line, col: t.col }
    }
    fn err(&self, t: &Token, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, t.line, t.col, msg)
    }
    fn eof(&self, what: &str) -> ConfigError {
        let (line, col) = self.toks.last().map(|t| (t.line, t.col)).unwrap_or((1, 1));
        ConfigError::at(self.file, line, col, format!("unexpected end of file: expected {what}"))
    }
    fn next(&mut self, what: &str) -> Result<Token, ConfigError> {
        let t = self.toks.get(self.at).cloned().ok_or_else(|| self.eof(what))?;
        self.at += 1;
        Ok(t)
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|t| &t.tok)
    }

    /// Entries until `}` (depth > 0) or end of file (depth 0).
    fn entries(&mut self, depth: usize) -> Result<Vec<Entry>, ConfigError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None if depth == 0 => return Ok(out),
                None => return Err(self.eof("`}` to close the scope")),
                Some(Tok::RBrace) if depth > 0 => return Ok(out),
                Some(Tok::RBrace) => {
                    let t = &self.toks[self.at];
                    return Err(self.err(t, "unexpected `}`: no scope is open"));
                }
                Some(Tok::Semi) => {
                    self.at += 1;
                    continue;
                }
                _ => {}
            }
            let t = self.next("an option or a scope")?;
            let name = match &t.tok {
                Tok::Word(w) => w.clone(),
                other => {
                    return Err(
                        self.err(&t, format!("expected an option or scope name, found {}", describe(other)))
                    )
                }
            };
            let pos = self.pos(&t);
            match self.peek() {
                Some(Tok::Eq) => {
                    self.at += 1;
                    let value = self.value(depth)?;
                    out.push(Entry::Option { key: name, pos, value });
                }
                Some(Tok::LBrace) => {
                    self.at += 1;
                    out.push(self.scope_body(name, None, pos, depth)?);
                }
                Some(Tok::Str(_) | Tok::Word(_)) => {
                    let a = self.next("a scope argument")?;
                    let arg = match a.tok {
                        Tok::Str(s) | Tok::Word(s) => s,
                        _ => unreachable!("peeked a string or word"),
                    };
                    if name.eq_ignore_ascii_case("include") || name.eq_ignore_ascii_case("readonly_include") {
                        out.push(Entry::Include { path: arg, pos });
                        continue;
                    }
                    let b = self.next("`{` to open the scope")?;
                    if b.tok != Tok::LBrace {
                        let found = describe(&b.tok);
                        let msg = format!("expected `=` after option `{name}` (or `{{` to open scope `{name} \"{arg}\"`), found {found}");
                        return Err(self.err(&b, msg));
                    }
                    out.push(self.scope_body(name, Some(arg), pos, depth)?);
                }
                Some(other) => {
                    let other = describe(other);
                    let t = &self.toks[self.at];
                    return Err(self.err(t, format!("expected `=` or `{{` after `{name}`, found {other}")));
                }
                None => return Err(self.eof(&format!("`=` or `{{` after `{name}`"))),
            }
        }
    }

    fn scope_body(
        &mut self,
        name: String,
        arg: Option<String>,
        pos: Pos,
        depth: usize,
    ) -> Result<Entry, ConfigError> {
        if depth >= MAX_DEPTH {
            return Err(ConfigError::at(self.file, pos.line, pos.col, "scopes nested too deeply"));
        }
        let body = self.entries(depth + 1)?;
        let close = self.next("`}`")?;
        debug_assert_eq!(close.tok, Tok::RBrace);
        Ok(Entry::Scope { name, arg, pos, body })
    }

    fn value(&mut self, depth: usize) -> Result<Value, ConfigError> {
        if depth >= MAX_DEPTH {
            return Err(self.eof("a shallower value"));
        }
        let t = self.next("a value")?;
        let pos = self.pos(&t);
        match t.tok {
            Tok::Str(s) => Ok(Value::Str(s, pos)),
            Tok::Word(w) => Ok(Value::Word(w, pos)),
            Tok::LParen => {
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(Tok::RParen) => {
                            self.at += 1;
                            return Ok(Value::Array(items, pos));
                        }
                        Some(Tok::Comma) => self.at += 1,
                        None => return Err(self.eof("`)` to close the array")),
                        _ => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Tok::LBracket => {
                let mut items = Vec::new();
                loop {
                    let k = self.next("a key or `]`")?;
                    let key = match &k.tok {
                        Tok::RBracket => return Ok(Value::Dict(items, pos)),
                        Tok::Comma | Tok::Semi => continue,
                        Tok::Word(w) | Tok::Str(w) => w.clone(),
                        other => {
                            return Err(self.err(
                                &k,
                                format!("expected a key in the dictionary, found {}", describe(other)),
                            ))
                        }
                    };
                    let eq = self.next("`=`")?;
                    if eq.tok != Tok::Eq {
                        return Err(self.err(
                            &eq,
                            format!("expected `=` after dictionary key `{key}`, found {}", describe(&eq.tok)),
                        ));
                    }
                    let v = self.value(depth + 1)?;
                    items.push((key, self.pos(&k), v));
                }
            }
            other => Err(ConfigError::at(
                self.file,
                pos.line,
                pos.col,
                format!("expected a value, found {}", describe(&other)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes_options_arrays_and_dicts() {
        let text = "a { x = 1 y = ( \"p\" q ) z = [ k = \"v\" ] listen \":1\" { } }\ninclude \"other.conf\"";
        let e = parse(text, "f").unwrap();
        let Entry::Scope { name, body, .. } = &e[0] else { panic!() };
        assert_eq!(name, "a");
        assert_eq!(body.len(), 4);
        assert!(matches!(&body[3], Entry::Scope { arg: Some(a), .. } if a == ":1"));
        assert!(matches!(&e[1], Entry::Include { path, .. } if path == "other.conf"));
    }

    #[test]
    fn errors_name_position_and_expectation() {
        let e = parse("a {\n  x = 1\n", "f.conf").unwrap_err().to_string();
        assert!(e.starts_with("f.conf:2:"), "{e}");
        assert!(e.contains("expected `}`"), "{e}");
        let e = parse("a { x 1 }", "f.conf").unwrap_err().to_string();
        assert!(e.starts_with("f.conf:1:9:") && e.contains("expected `=` after option `x`"), "{e}");
        let e = parse("}", "f.conf").unwrap_err().to_string();
        assert!(e.contains("no scope is open"), "{e}");
    }
}
