//! The upgrade from the old bus: reads a Spread configuration (`spread.conf`, the product's
//! former `mbus.conf`) and turns its `Spread_Segment` blocks into msgc's `peers` table.
//!
//! Spread's syntax, as its daemon reads it: `#` starts a comment; a segment is
//! `Spread_Segment ADDR[:PORT] [more addrs] { daemon ... }` (port 4803 when none is given);
//! a daemon is `NAME IP`, `NAME` (resolved by DNS) or `IP` alone, optionally followed by
//! `VirtualID = N`, an interface block `{ [D] [C] [M] IP ... }` (D: daemon-to-daemon
//! traffic, C: clients, M: monitor; no letter: all) and a `;`. Every other top-level line
//! is a daemon parameter (`Key = value`, `Key = { ... }`, or a lone `Key`) and is skipped.
//!
//! Each daemon becomes one peer: its name (an address-only daemon is named by its address)
//! and its daemon address: the `D` interface if one is given, else its address, else its
//! name for DNS. Spread's port is not carried over unless asked: it belongs to the Spread
//! daemons (which may run beside msgc during the move), and msgc's `port` option (default
//! 4809) applies to every peer without a port. Pure: reads text, never a file or the network.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Spread's port when a segment gives none.
pub const SPREAD_DEFAULT_PORT: u16 = 4803;

/// A Spread configuration's daemons, by segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConfig {
    pub segments: Vec<Segment>,
}

/// One `Spread_Segment` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The segment's broadcast or multicast address, as written (without the port).
    pub address: String,
    pub port: u16,
    pub line: usize,
    pub daemons: Vec<Daemon>,
}

/// One daemon of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub name: String,
    /// The address it is known by (absent when only a name is given).
    pub ip: Option<IpAddr>,
    /// Interfaces from its `{ }` block: the letters (empty for all) and the address.
    pub interfaces: Vec<(String, IpAddr)>,
    pub line: usize,
}

impl Daemon {
    /// Where other servers reach it: the daemon (`D`) interface, else its address, else its
    /// name.
    pub fn peer_address(&self) -> String {
        let daemon_if = self
            .interfaces
            .iter()
            .find(|(kinds, ip)| kinds.contains('D') && !ip.is_unspecified())
            .map(|(_, ip)| *ip);
        match daemon_if.or(self.ip) {
            Some(ip) => ip.to_string(),
            None => self.name.clone(),
        }
    }
}

/// A Spread file msgc cannot read, with the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpreadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    Equals,
    Semi,
    Word(String),
}

fn tokenize(text: &str, file: &str) -> Result<Vec<(Tok, usize)>, SpreadError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '{' | '}' | '=' | ';' => {
                chars.next();
                out.push((
                    match c {
                        '{' => Tok::Open,
                        '}' => Tok::Close,
                        '=' => Tok::Equals,
                        _ => Tok::Semi,
                    },
                    line,
                ));
            }
            '"' | '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\n') | None => {
                            return Err(SpreadError {
                                file: file.into(),
                                line,
                                message: "unterminated quoted string".into(),
                            })
                        }
                        Some(ch) => s.push(ch),
                    }
                }
                out.push((Tok::Word(s), line));
            }
            _ => {
                let mut s = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || "#{}=;".contains(ch) {
                        break;
                    }
                    s.push(ch);
                    chars.next();
                }
                out.push((Tok::Word(s), line));
            }
        }
    }
    Ok(out)
}

/// An address as Spread writes it: IPv4, IPv6 (an `%interface` suffix is dropped).
fn ip(word: &str) -> Option<IpAddr> {
    let plain = word.split('%').next().unwrap_or(word);
    plain.parse().ok()
}

/// A segment address: `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
fn segment_address(word: &str) -> Option<(String, u16)> {
    if let Some(addr) = ip(word) {
        return Some((addr.to_string(), SPREAD_DEFAULT_PORT));
    }
    let (host, port) = word.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    Some((ip(host)?.to_string(), port))
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    at: usize,
    file: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }
    fn line(&self) -> usize {
        self.toks.get(self.at).or(self.toks.last()).map_or(1, |(_, l)| *l)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        t
    }
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, SpreadError> {
        self.fail_at(self.line(), message)
    }
    fn fail_at<T>(&self, line: usize, message: impl Into<String>) -> Result<T, SpreadError> {
        Err(SpreadError { file: self.file.into(), line, message: message.into() })
    }

    fn config(&mut self) -> Result<SpreadConfig, SpreadError> {
        let mut segments = Vec::new();
        while let Some(tok) = self.next() {
            match tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("Spread_Segment") => segments.push(self.segment()?),
                Tok::Word(_) => self.skip_parameter()?,
                Tok::Semi => {}
                other => {
                    self.at -= 1;
                    return self.fail(format!("unexpected {other:?} outside a Spread_Segment"));
                }
            }
        }
        Ok(SpreadConfig { segments })
    }

    /// `Key = value`, `Key = { ... }`, or a lone `Key`.
    fn skip_parameter(&mut self) -> Result<(), SpreadError> {
        if self.peek() != Some(&Tok::Equals) {
            return Ok(());
        }
        self.next();
        match self.next() {
            Some(Tok::Word(_)) => Ok(()),
            Some(Tok::Open) => {
                while let Some(t) = self.next() {
                    match t {
                        Tok::Close => return Ok(()),
                        Tok::Open => return self.fail("nested `{` in a parameter"),
                        _ => {}
                    }
                }
                self.fail("a parameter's `{` is never closed")
            }
            _ => self.fail("a parameter's `=` has no value"),
        }
    }

    fn segment(&mut self) -> Result<Segment, SpreadError> {
        let line = self.line();
        let (address, port) = match self.next() {
            Some(Tok::Word(w)) => match segment_address(&w) {
                Some(a) => a,
                None => return self.fail(format!("`{w}` is not a segment address (IP or IP:PORT)")),
            },
            _ => {
                return self
                    .fail("Spread_Segment needs an address, as in Spread_Segment 192.168.0.255:4803 {")
            }
        };
        // More segment addresses may follow before the block.
        while let Some(Tok::Word(w)) = self.peek() {
            if ip(w).is_none() {
                let w = w.clone();
                return self.fail(format!("`{w}` is not an address; expected `{{` to open the segment"));
            }
            self.next();
        }
        if self.next() != Some(Tok::Open) {
            return self.fail("expected `{` after the segment address");
        }
        let mut daemons = Vec::new();
        loop {
            match self.next() {
                Some(Tok::Close) => break,
                Some(Tok::Semi) => {}
                Some(Tok::Word(w)) => daemons.push(self.daemon(w)?),
                Some(other) => {
                    self.at -= 1;
                    return self.fail(format!(
                        "unexpected {other:?} in a segment; expected a daemon name or address"
                    ));
                }
                None => return self.fail(format!("the segment opened at line {line} is never closed")),
            }
        }
        if daemons.is_empty() {
            return self.fail(format!("the segment at line {line} lists no daemon"));
        }
        Ok(Segment { address, port, line, daemons })
    }

    fn daemon(&mut self, first: String) -> Result<Daemon, SpreadError> {
        let line = self.toks.get(self.at.saturating_sub(1)).map_or(1, |(_, l)| *l);
        let first = first.strip_suffix(';').unwrap_or(&first).to_string();
        let (name, ip_addr) = match ip(&first) {
            Some(addr) => (first.split('%').next().unwrap_or(&first).to_string(), Some(addr)),
            None => {
                // `NAME IP` is one daemon; `NAME` followed by another name is two.
                let addr = match self.peek() {
                    Some(Tok::Word(w)) => ip(w.strip_suffix(';').unwrap_or(w)),
                    _ => None,
                };
                if addr.is_some() {
                    self.next();
                }
                (first, addr)
            }
        };
        if let Some(Tok::Word(w)) = self.peek() {
            if w.eq_ignore_ascii_case("VirtualID") {
                self.next();
                if self.next() != Some(Tok::Equals) || !matches!(self.next(), Some(Tok::Word(_))) {
                    return self.fail_at(line, "expected VirtualID = NUMBER");
                }
            }
        }
        let mut interfaces = Vec::new();
        if self.peek() == Some(&Tok::Open) {
            self.next();
            let mut kinds = String::new();
            loop {
                match self.next() {
                    Some(Tok::Close) => break,
                    Some(Tok::Word(w)) if matches!(w.as_str(), "D" | "C" | "M") => kinds.push_str(&w),
                    Some(Tok::Word(w)) => match ip(&w) {
                        Some(addr) => interfaces.push((std::mem::take(&mut kinds), addr)),
                        None => {
                            return self
                                .fail(format!("`{w}` is not an interface address (D, C or M, then an IP)"))
                        }
                    },
                    _ => return self.fail_at(line, format!("the interface block of {name} is not closed")),
                }
            }
            if interfaces.is_empty() {
                return self.fail_at(line, format!("the interface block of {name} lists no interface"));
            }
        }
        Ok(Daemon { name, ip: ip_addr, interfaces, line })
    }
}

/// Parses a Spread configuration; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<SpreadConfig, SpreadError> {
    let toks = tokenize(text, file)?;
    let config = Parser { toks, at: 0, file }.config()?;
    if config.segments.is_empty() {
        return Err(SpreadError {
            file: file.into(),
            line: 1,
            message: "no Spread_Segment in this file".into(),
        });
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<String, usize> = HashMap::new();
    for d in config.segments.iter().flat_map(|s| &s.daemons) {
        if let Some(first) = names.insert(d.name.to_lowercase(), d.line) {
            return Err(SpreadError {
                file: file.into(),
                line: d.line,
                message: format!("daemon {} is listed twice (first at line {first})", d.name),
            });
        }
        if let Some(first) = addrs.insert(d.peer_address(), d.line) {
            return Err(SpreadError {
                file: file.into(),
                line: d.line,
                message: format!("address {} is used twice (first at line {first})", d.peer_address()),
            });
        }
    }
    Ok(config)
}

/// How the `peers` table is written.
#[derive(Clone, Debug, Default)]
pub struct PeersStyle {
    /// Write each address with this port instead of leaving msgc's `port` to apply.
    pub port: Option<u16>,
    /// Keep Spread's segment port on every address.
    pub keep_spread_port: bool,
    /// Wrap the table in a `msgc_server { }` scope.
    pub scope: bool,
}

/// The `peers` table in the vendor's syntax, with comments saying where it came from.
pub fn peers_table(config: &SpreadConfig, source: &str, style: &PeersStyle) -> String {
    let mut out = String::new();
    let n: usize = config.segments.iter().map(|s| s.daemons.len()).sum();
    let _ = writeln!(out, "# msgc peers from {source}: {} segment(s), {n} daemon(s)", config.segments.len());
    match (style.port, style.keep_spread_port) {
        (Some(p), _) => {
            let _ = writeln!(out, "# every peer on port {p}");
        }
        (None, true) => {
            let _ = writeln!(out, "# Spread's segment ports kept on every peer");
        }
        (None, false) => {
            let _ = writeln!(
                out,
                "# Spread's port is not carried over: msgc's `port` option (default 4809) applies to every peer"
            );
        }
    }
    let indent = if style.scope { "    " } else { "" };
    if style.scope {
        out.push_str("msgc_server {\n");
    }
    let _ = writeln!(out, "{indent}peers = [");
    for s in &config.segments {
        let _ = writeln!(out, "{indent}  # Spread_Segment {}:{} (line {})", s.address, s.port, s.line);
        for d in &s.daemons {
            let addr = d.peer_address();
            let port = style.port.or(style.keep_spread_port.then_some(s.port));
            let written = match (port, addr.parse::<IpAddr>()) {
                (Some(p), Ok(IpAddr::V6(v6))) => format!("[{v6}]:{p}"),
                (Some(p), _) => format!("{addr}:{p}"),
                (None, _) => addr,
            };
            let _ = writeln!(out, "{indent}  {} = \"{}\"", name_token(&d.name), written);
        }
    }
    let _ = writeln!(out, "{indent}]");
    if style.scope {
        out.push_str("}\n");
    }
    out
}

/// A dictionary key in the vendor syntax: bare when it is a plain word, else quoted.
fn name_token(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_with_and_without_names_addresses_and_interfaces() {
        // As in Spread, a name followed by an address is one daemon even across lines; a `;`
        // ends a name-only daemon.
        let text = "Spread_Segment 10.0.0.255 {\n a\n 10.0.0.1\n b;\n 10.0.0.3\n c 10.0.0.4 { D 10.1.0.4 C 10.0.0.4 }\n d; e 10.0.0.6;\n}\n";
        let c = parse(text, "s.conf").unwrap();
        let s = &c.segments[0];
        assert_eq!((s.address.as_str(), s.port), ("10.0.0.255", SPREAD_DEFAULT_PORT));
        let got: Vec<(String, String)> =
            s.daemons.iter().map(|d| (d.name.clone(), d.peer_address())).collect();
        let want = [
            ("a", "10.0.0.1"),
            ("b", "b"),
            ("10.0.0.3", "10.0.0.3"),
            ("c", "10.1.0.4"),
            ("d", "d"),
            ("e", "10.0.0.6"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, what) in [
            ("Spread_Segment 1.2.3.255:4803 {\n a 1.2.3.4\n", 2, "never closed"),
            ("Spread_Segment nowhere {\n}\n", 1, "not a segment address"),
            ("Spread_Segment 1.2.3.255 {\n}\n", 2, "lists no daemon"),
            ("EventLogFile = /var/log/spread.log\n", 1, "no Spread_Segment"),
            ("Spread_Segment 1.2.3.255 {\n a 1.2.3.4\n a 1.2.3.5\n}\n", 3, "listed twice"),
            ("Spread_Segment 1.2.3.255 {\n a 1.2.3.4 { D nowhere }\n}\n", 2, "not an interface address"),
            ("Spread_Segment 1.2.3.255 {\n a 1.2.3.4 { D\n }\n}\n", 2, "lists no interface"),
            ("}\n", 1, "outside a Spread_Segment"),
        ] {
            let e = parse(text, "f").unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }
}
