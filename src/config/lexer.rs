//! Tokens of the vendor config syntax, each with its line and column.
//!
//! Owns the character-level rules (strings and escapes, bare words, comments). Knows nothing
//! of msgc's options; never panics on any input.

use super::ConfigError;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A bare word: a name, a number, `DEBUG`, `true`, `*:4802`.
    Word(String),
    /// A quoted string, escapes resolved.
    Str(String),
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    Comma,
    Semi,
}

/// A token and where it starts (1-based line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
    pub col: u32,
}

pub fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::LBrace => "`{`".into(),
        Tok::RBrace => "`}`".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Eq => "`=`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Semi => "`;`".into(),
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '*' | '@' | '+' | '%' | '$')
}

/// Splits `text` into tokens.
pub fn lex(text: &str, file: &str) -> Result<Vec<Token>, ConfigError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut col) = (1u32, 1u32);
    while let Some(&c) = chars.peek() {
        let (tl, tc) = (line, col);
        let mut bump = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let c = chars.next();
            if c == Some('\n') {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            c
        };
        let single = match c {
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            '=' => Some(Tok::Eq),
            ',' => Some(Tok::Comma),
            ';' => Some(Tok::Semi),
            _ => None,
        };
        if let Some(tok) = single {
            bump(&mut chars);
            out.push(Token { tok, line: tl, col: tc });
        } else if c.is_whitespace() {
            bump(&mut chars);
        } else if c == '#' {
            while let Some(&c) = chars.peek() {
                if c == '\n' {
                    break;
                }
                bump(&mut chars);
            }
        } else if c == '"' {
            bump(&mut chars);
            let mut s = String::new();
            loop {
                match bump(&mut chars) {
                    None => {
                        return Err(ConfigError::at(
                            file,
                            tl,
                            tc,
                            "unterminated string (missing closing `\"`)",
                        ))
                    }
                    Some('"') => break,
                    Some('\\') => match bump(&mut chars) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some(other @ ('"' | '\\')) => s.push(other),
                        Some(other) => {
                            s.push('\\');
                            s.push(other);
                        }
                        None => {
                            return Err(ConfigError::at(
                                file,
                                tl,
                                tc,
                                "unterminated string (missing closing `\"`)",
                            ))
                        }
                    },
                    Some(ch) => s.push(ch),
                }
            }
            out.push(Token { tok: Tok::Str(s), line: tl, col: tc });
        } else if is_word(c) {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if !is_word(c) {
                    break;
                }
                w.push(c);
                bump(&mut chars);
            }
            out.push(Token { tok: Tok::Word(w), line: tl, col: tc });
        } else {
            return Err(ConfigError::at(file, tl, tc, format!("unexpected character {c:?}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_positions() {
        let t = lex("a = \"x\\\"y\" # c\n  listen \":4809\" { }", "f").unwrap();
        assert_eq!(t[0], Token { tok: Tok::Word("a".into()), line: 1, col: 1 });
        assert_eq!(t[2].tok, Tok::Str("x\"y".into()));
        assert_eq!((t[3].line, t[3].col), (2, 3));
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn unterminated_string_is_an_error_at_its_start() {
        let e = lex("a = \"abc", "f.conf").unwrap_err();
        assert_eq!(e.to_string(), "f.conf:1:5: unterminated string (missing closing `\"`)");
    }
}
