//! Alertmanager's label matchers: `name="value"`, `!=`, `=~`, `!~`, as
//! written in `matchers:` lists, silences, inhibit rules and
//! `rollback_on_alerts`.

use crate::alert::LabelSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

/// One matcher. A regex is anchored at both ends, as in Alertmanager; a
/// missing label matches as the empty string.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled `^(?:value)$` for the regex operators.
    pub regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MatcherError(pub String);

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, MatcherError> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    MatcherError(format!("invalid regular expression {value:?}: {e}"))
                })?)
            }
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    pub fn matches_value(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.matches_value(labels.get(&self.name).map(String::as_str).unwrap_or(""))
    }
}

impl std::fmt::Display for Matcher {
    /// Alertmanager's `Matcher.String()`: the name bare unless it holds a
    /// reserved character, then Go-quoted; the value always quoted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = self.op.as_str();
        if self.name.chars().any(is_reserved) {
            write!(f, "{}{}{}", go_quote(&self.name), op, go_quote(&self.value))
        } else {
            let v = self
                .value
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('"', "\\\"");
            write!(f, "{}{}\"{}\"", self.name, op, v)
        }
    }
}

/// All of them match (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &LabelSet) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// `{a="b",c=~"d"}`: Alertmanager's `Matchers.String()` (no spaces), as
/// used in route keys.
pub fn matchers_string(ms: &[Matcher]) -> String {
    let mut s = String::from("{");
    for (i, m) in ms.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&m.to_string());
    }
    s.push('}');
    s
}

/// Sort as Alertmanager's `labels.Matchers` does: by name, value, then
/// operator.
pub fn sort_matchers(ms: &mut [Matcher]) {
    ms.sort_by(|a, b| {
        (a.name.as_str(), a.value.as_str(), a.op as u8).cmp(&(
            b.name.as_str(),
            b.value.as_str(),
            b.op as u8,
        ))
    });
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

impl Matcher {
    /// Whether the matcher matches a missing label (the empty string).
    pub fn matches_empty(&self) -> bool {
        self.matches_value("")
    }

    /// One matcher, `name="value"`, in Alertmanager's UTF-8 syntax, falling
    /// back to the classic syntax (unquoted values) as Alertmanager's
    /// default "fallback" mode does. Braces are not allowed.
    pub fn parse(input: &str) -> Result<Matcher, MatcherError> {
        if input.starts_with('{') || input.ends_with('}') {
            return Err(MatcherError(format!(
                "unexpected open or close brace: {input}"
            )));
        }
        let mut ms = parse_matchers(input)?;
        match ms.len() {
            1 => Ok(ms.remove(0)),
            0 => Err(MatcherError("no matchers".into())),
            n => Err(MatcherError(format!("expected 1 matcher, found {n}"))),
        }
    }
}

impl std::str::FromStr for Matcher {
    type Err = MatcherError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Matcher::parse(s)
    }
}

/// A list of matchers, `{a="b", c=~"d"}` or `a="b",c=~"d"` (braces
/// optional). The UTF-8 parser is tried first; when it fails, or when the
/// classic parser reads the input differently, the classic result is used
/// (Alertmanager's fallback mode). When both fail the UTF-8 parser's error
/// is returned if the input looks like the new syntax, else the classic one.
pub fn parse_matchers(input: &str) -> Result<Vec<Matcher>, MatcherError> {
    let utf8 = parse_utf8(input);
    let classic = parse_classic(input);
    match (utf8, classic) {
        (Ok(n), Ok(c)) => Ok(if n == c { n } else { c }),
        (Ok(n), Err(_)) => Ok(n),
        (Err(_), Ok(c)) => Ok(c),
        (Err(e), Err(_)) => Err(e),
    }
}

// ---- the UTF-8 parser (matcher/parse) ----

fn is_reserved(c: char) -> bool {
    c.is_whitespace() || "{}!=~,\\\"'`".contains(c)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Open,
    Close,
    Comma,
    Op(MatchOp),
    Quoted,
    Unquoted,
    Eof,
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
}

struct Token<'a> {
    kind: Tok,
    text: &'a str,
    /// Columns (in characters), as Alertmanager reports them.
    col_start: usize,
    col_end: usize,
}

impl<'a> Lexer<'a> {
    fn col(&self, byte: usize) -> usize {
        self.input[..byte].chars().count()
    }
    fn err_at(&self, start: usize, end: usize, msg: &str) -> MatcherError {
        let text = &self.input[start..end.min(self.input.len())];
        if text.is_empty() {
            MatcherError(format!(
                "{}:{}: unexpected end of input, {msg}",
                self.col(start),
                self.col(end)
            ))
        } else {
            MatcherError(format!(
                "{}:{}: {text}: {msg}",
                self.col(start),
                self.col(end)
            ))
        }
    }
    fn scan(&mut self) -> Result<Token<'a>, MatcherError> {
        let rest = &self.input[self.pos..];
        let skipped = rest.len() - rest.trim_start().len();
        self.pos += skipped;
        let start = self.pos;
        let rest = &self.input[start..];
        let Some(c) = rest.chars().next() else {
            return Ok(self.tok(Tok::Eof, start, start));
        };
        let (kind, len) = match c {
            '{' => (Tok::Open, 1),
            '}' => (Tok::Close, 1),
            ',' => (Tok::Comma, 1),
            '=' if rest.starts_with("=~") => (Tok::Op(MatchOp::Regex), 2),
            '=' => (Tok::Op(MatchOp::Equal), 1),
            '!' if rest.starts_with("!=") => (Tok::Op(MatchOp::NotEqual), 2),
            '!' if rest.starts_with("!~") => (Tok::Op(MatchOp::NotRegex), 2),
            '!' => return Err(self.err_at(start, start + 1, "expected one of '=~'")),
            '"' => {
                let mut escaped = false;
                let mut end = None;
                for (i, ch) in rest.char_indices().skip(1) {
                    if escaped {
                        escaped = false;
                    } else if ch == '\\' {
                        escaped = true;
                    } else if ch == '"' {
                        end = Some(i + 1);
                        break;
                    }
                }
                match end {
                    Some(e) => (Tok::Quoted, e),
                    None => return Err(self.err_at(start, self.input.len(), "missing end \"")),
                }
            }
            c if !is_reserved(c) => {
                let len = rest.find(is_reserved).unwrap_or(rest.len());
                (Tok::Unquoted, len)
            }
            c => return Err(self.err_at(start, start + c.len_utf8(), "invalid input")),
        };
        self.pos = start + len;
        Ok(self.tok(kind, start, start + len))
    }
    fn tok(&self, kind: Tok, start: usize, end: usize) -> Token<'a> {
        Token {
            kind,
            text: &self.input[start..end],
            col_start: self.col(start),
            col_end: self.col(end),
        }
    }
    fn peek(&mut self) -> Result<Token<'a>, MatcherError> {
        let pos = self.pos;
        let t = self.scan();
        self.pos = pos;
        t
    }
}

fn unexpected(t: &Token, what: &str) -> MatcherError {
    if t.kind == Tok::Eof {
        MatcherError(format!(
            "{}:{}: unexpected end of input: {what}",
            t.col_start, t.col_end
        ))
    } else {
        MatcherError(format!(
            "{}:{}: unexpected {}: {what}",
            t.col_start, t.col_end, t.text
        ))
    }
}

fn token_value(t: &Token) -> Result<String, MatcherError> {
    match t.kind {
        Tok::Quoted => go_unquote(t.text).ok_or_else(|| {
            MatcherError(format!(
                "{}:{}: {}: invalid input",
                t.col_start, t.col_end, t.text
            ))
        }),
        _ => Ok(t.text.to_string()),
    }
}

fn parse_utf8(input: &str) -> Result<Vec<Matcher>, MatcherError> {
    let mut lx = Lexer { input, pos: 0 };
    let mut out = Vec::new();
    let open = lx.peek()?.kind == Tok::Open;
    if open {
        lx.scan()?;
    }
    loop {
        let t = lx.scan()?;
        match t.kind {
            Tok::Close if open => break,
            Tok::Close => {
                return Err(MatcherError(format!(
                    "{}:{}: }}: expected opening brace",
                    t.col_start, t.col_end
                )));
            }
            Tok::Eof if open => {
                return Err(MatcherError(format!(
                    "{}:{}: unexpected end of input: expected close brace",
                    t.col_start, t.col_end
                )));
            }
            Tok::Eof => return Ok(out),
            Tok::Quoted | Tok::Unquoted => {}
            _ => return Err(unexpected(&t, "expected label name")),
        }
        let name = token_value(&t)?;
        let op = lx.scan()?;
        let Tok::Op(op) = op.kind else {
            return Err(unexpected(
                &op,
                "expected an operator such as '=', '!=', '=~' or '!~'",
            ));
        };
        let v = lx.scan()?;
        if !matches!(v.kind, Tok::Quoted | Tok::Unquoted) {
            return Err(unexpected(&v, "expected label value"));
        }
        let value = token_value(&v)?;
        out.push(
            Matcher::new(&name, op, &value)
                .map_err(|e| MatcherError(format!("failed to create matcher: {}", e.0)))?,
        );
        let sep = lx.scan()?;
        match sep.kind {
            Tok::Comma => {}
            Tok::Close if open => break,
            Tok::Eof if !open => return Ok(out),
            Tok::Eof => {
                return Err(MatcherError(format!(
                    "{}:{}: unexpected end of input: expected close brace",
                    sep.col_start, sep.col_end
                )));
            }
            _ => return Err(unexpected(&sep, "expected a comma or close brace")),
        }
    }
    let t = lx.scan()?;
    if t.kind != Tok::Eof {
        return Err(MatcherError(format!(
            "{}:{}: {}: expected end of input",
            t.col_start, t.col_end, t.text
        )));
    }
    Ok(out)
}

/// Go's `strconv.Unquote` for a double-quoted string.
fn go_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\n' || c == '"' {
            return None;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next()?;
        let hex = |it: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Option<u32> {
            let mut v = 0;
            for _ in 0..n {
                v = v * 16 + it.next()?.to_digit(16)?;
            }
            Some(v)
        };
        match e {
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            'x' => out.push(char::from_u32(hex(&mut it, 2)?)?),
            'u' => out.push(char::from_u32(hex(&mut it, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut it, 8)?)?),
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + it.next()?.to_digit(8)?;
                }
                if v > 255 {
                    return None;
                }
                out.push(char::from_u32(v)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Go's `strconv.Quote`, close enough for label names and values.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let v = c as u32;
                if v < 0x80 {
                    out.push_str(&format!("\\x{v:02x}"));
                } else {
                    out.push_str(&format!("\\u{v:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---- the classic parser (pkg/labels/parse.go) ----

fn parse_classic(input: &str) -> Result<Vec<Matcher>, MatcherError> {
    let s = input.strip_prefix('{').unwrap_or(input);
    let s = s.strip_suffix('}').unwrap_or(s);
    let mut tokens = Vec::new();
    let (mut inside, mut escaped) = (false, false);
    let mut tok = String::new();
    for c in s.chars() {
        match c {
            ',' if !inside => {
                tokens.push(std::mem::take(&mut tok));
                continue;
            }
            '"' => {
                if !escaped {
                    inside = !inside;
                } else {
                    escaped = false;
                }
            }
            '\\' => escaped = !escaped,
            _ => escaped = false,
        }
        tok.push(c);
    }
    if !tok.trim().is_empty() {
        tokens.push(tok.trim().to_string());
    }
    tokens.iter().map(|t| parse_classic_one(t)).collect()
}

fn classic_re() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(=~|=|!=|!~)\s*((?s).*?)\s*$")
            .expect("static regex")
    })
}

fn parse_classic_one(s: &str) -> Result<Matcher, MatcherError> {
    let caps = classic_re()
        .captures(s)
        .ok_or_else(|| MatcherError(format!("bad matcher format: {s}")))?;
    let raw_all = &caps[3];
    let (raw, mut expect_quote) = match raw_all.strip_prefix('"') {
        Some(r) => (r, true),
        None => (raw_all, false),
    };
    let mut value = String::new();
    let mut escaped = false;
    let n = raw.len();
    for (i, c) in raw.char_indices() {
        if escaped {
            escaped = false;
            match c {
                'n' => value.push('\n'),
                '"' | '\\' => value.push(c),
                _ => {
                    value.push('\\');
                    value.push(c);
                }
            }
            continue;
        }
        match c {
            '\\' if i < n - 1 => escaped = true,
            '\\' => value.push('\\'),
            '"' => {
                if !expect_quote || i < n - 1 {
                    return Err(MatcherError(format!(
                        "matcher value contains unescaped double quote: {raw_all}"
                    )));
                }
                expect_quote = false;
            }
            c => value.push(c),
        }
    }
    if expect_quote {
        return Err(MatcherError(format!(
            "matcher value contains unescaped double quote: {raw_all}"
        )));
    }
    let op = match &caps[2] {
        "=" => MatchOp::Equal,
        "!=" => MatchOp::NotEqual,
        "=~" => MatchOp::Regex,
        _ => MatchOp::NotRegex,
    };
    Matcher::new(&caps[1], op, &value)
}

// ---- the API form: {"name","value","isRegex","isEqual"} ----

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiMatcher {
    name: String,
    value: String,
    #[serde(default)]
    is_regex: bool,
    #[serde(default = "api_true")]
    is_equal: bool,
}

fn api_true() -> bool {
    true
}

impl Serialize for Matcher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ApiMatcher {
            name: self.name.clone(),
            value: self.value.clone(),
            is_regex: matches!(self.op, MatchOp::Regex | MatchOp::NotRegex),
            is_equal: matches!(self.op, MatchOp::Regex | MatchOp::Equal),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let a = ApiMatcher::deserialize(d)?;
        let op = match (a.is_equal, a.is_regex) {
            (true, false) => MatchOp::Equal,
            (false, false) => MatchOp::NotEqual,
            (true, true) => MatchOp::Regex,
            (false, true) => MatchOp::NotRegex,
        };
        if a.name.is_empty() {
            return Err(serde::de::Error::custom("matcher with an empty label name"));
        }
        Matcher::new(&a.name, op, &a.value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: &str, op: MatchOp, v: &str) -> Matcher {
        Matcher::new(n, op, v).unwrap()
    }

    #[test]
    fn parses_both_syntaxes() {
        assert_eq!(
            Matcher::parse(r#"name="value""#).unwrap(),
            m("name", MatchOp::Equal, "value")
        );
        assert_eq!(Matcher::parse("a=b").unwrap(), m("a", MatchOp::Equal, "b"));
        assert_eq!(
            Matcher::parse(r#"a!~"x|y""#).unwrap(),
            m("a", MatchOp::NotRegex, "x|y")
        );
        assert_eq!(
            Matcher::parse("a != b").unwrap(),
            m("a", MatchOp::NotEqual, "b")
        );
        // Classic: unquoted regex with characters the UTF-8 parser reserves.
        assert_eq!(
            Matcher::parse("service=~mysql|cass.*").unwrap().value,
            "mysql|cass.*"
        );
        assert_eq!(
            Matcher::parse(r#"foo=~"[a-z]+\\d""#).unwrap().value,
            r"[a-z]+\d"
        );
        // UTF-8 names and values.
        assert_eq!(
            Matcher::parse(r#""séverité"="🔥""#).unwrap(),
            m("séverité", MatchOp::Equal, "🔥")
        );
        assert_eq!(
            Matcher::parse(r#"a="""#).unwrap(),
            m("a", MatchOp::Equal, "")
        );
        let ms = parse_matchers(r#"{a="b", c=~"d"}"#).unwrap();
        assert_eq!(
            ms,
            vec![m("a", MatchOp::Equal, "b"), m("c", MatchOp::Regex, "d")]
        );
        assert_eq!(parse_matchers("a=b,c!=d").unwrap().len(), 2);
        assert_eq!(parse_matchers(r#"{a="x,y"}"#).unwrap()[0].value, "x,y");
        assert_eq!(parse_matchers("{}").unwrap(), vec![]);
        assert_eq!(parse_matchers(r#"{a="b",}"#).unwrap().len(), 1);
    }

    #[test]
    fn errors_are_clear() {
        for bad in ["a", "=b", r#"a="b"#, r#"a=~"(""#, "1a=b c", r#"{a="b}"#] {
            let e = parse_matchers(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        let e = parse_matchers(r#"{"a"="b""#).unwrap_err().0;
        assert!(
            e.contains("expected close brace") || e.contains("double quote"),
            "{e}"
        );
        assert!(
            Matcher::parse(r#"{a="b"}"#)
                .unwrap_err()
                .0
                .contains("brace")
        );
        assert!(
            Matcher::parse(r#"a="b",c="d""#)
                .unwrap_err()
                .0
                .contains("expected 1 matcher")
        );
        assert!(
            parse_matchers(r#"a=~"(""#)
                .unwrap_err()
                .0
                .contains("regular expression")
        );
    }

    #[test]
    fn prints_as_alertmanager() {
        assert_eq!(m("team", MatchOp::Equal, "db").to_string(), r#"team="db""#);
        assert_eq!(
            m("a", MatchOp::Equal, "x\"y\\").to_string(),
            r#"a="x\"y\\""#
        );
        assert_eq!(
            m("a b", MatchOp::NotEqual, "v").to_string(),
            r#""a b"!="v""#
        );
        let mut ms = parse_matchers(r#"{z="1",a=~"2",a="2"}"#).unwrap();
        sort_matchers(&mut ms);
        assert_eq!(matchers_string(&ms), r#"{a="2",a=~"2",z="1"}"#);
        assert_eq!(matchers_string(&[]), "{}");
    }

    #[test]
    fn api_form_round_trips() {
        let a: Matcher =
            serde_json::from_str(r#"{"name":"x","value":"a.*","isRegex":true,"isEqual":false}"#)
                .unwrap();
        assert_eq!(a, m("x", MatchOp::NotRegex, "a.*"));
        let b: Matcher =
            serde_json::from_str(r#"{"name":"x","value":"v","isRegex":false}"#).unwrap();
        assert_eq!(b.op, MatchOp::Equal);
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(
            j,
            r#"{"name":"x","value":"a.*","isRegex":true,"isEqual":false}"#
        );
        assert!(
            serde_json::from_str::<Matcher>(r#"{"name":"x","value":"(","isRegex":true}"#).is_err()
        );
    }

    #[test]
    fn matching_and_empty() {
        let l: LabelSet = [("a".to_string(), "b".to_string())].into();
        assert!(m("a", MatchOp::Regex, "b|c").matches(&l));
        assert!(!m("a", MatchOp::Regex, "b.").matches(&l));
        assert!(m("missing", MatchOp::Equal, "").matches(&l));
        assert!(m("x", MatchOp::Regex, ".*").matches_empty());
        assert!(!m("x", MatchOp::NotEqual, "").matches_empty());
    }
}
