//! Lexer and parser for Go `text/template`: text and `{{ }}` actions into a
//! tree of [`Node`]s, with Go's parse error messages.

use std::collections::HashMap;
use std::fmt;

/// How deep parenthesised pipelines and control structures may nest.
const MAX_PARSE_DEPTH: usize = 200;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Text(String),
    LeftDelim,
    RightDelim,
    Space,
    Ident(String),
    Field(String),
    Variable(String),
    Dot,
    Str(String),
    RawStr(String),
    CharConst(String),
    Number(String),
    Bool(bool),
    Nil,
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Char(char),
    Keyword(&'static str),
    Error(String),
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

impl Tok {
    /// How Go's parser names a token in `unexpected …` errors.
    fn describe(&self) -> String {
        match self {
            Tok::Text(s) => format!("{s:?}"),
            Tok::LeftDelim => "\"{{\"".into(),
            Tok::RightDelim => "\"}}\"".into(),
            Tok::Space => "space".into(),
            Tok::Ident(s) | Tok::Number(s) | Tok::CharConst(s) => format!("{s:?}"),
            Tok::Field(s) => format!("\".{s}\""),
            Tok::Variable(s) => format!("{s:?}"),
            Tok::Dot => "\".\"".into(),
            Tok::Str(s) | Tok::RawStr(s) => format!("{s:?}"),
            Tok::Bool(b) => format!("\"{b}\""),
            Tok::Nil => "\"nil\"".into(),
            Tok::Pipe => "\"|\"".into(),
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::Declare => "\":=\"".into(),
            Tok::Assign => "\"=\"".into(),
            Tok::Char(c) => format!("{:?}", c.to_string()),
            Tok::Keyword(k) => format!("<{k}>"),
            Tok::Error(e) => e.clone(),
            Tok::Eof => "EOF".into(),
        }
    }
}

const KEYWORDS: [&str; 10] = [
    "block", "break", "continue", "define", "else", "end", "if", "range", "template", "with",
];

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Go's `%#U`.
pub(crate) fn sharp_u(c: char) -> String {
    if c.is_control() || (c.is_whitespace() && c != ' ') {
        format!("U+{:04X}", c as u32)
    } else {
        format!("U+{:04X} '{c}'", c as u32)
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    toks: Vec<Token>,
    paren_depth: i32,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }
    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn emit(&mut self, tok: Tok, pos: usize) {
        self.toks.push(Token { tok, pos });
    }

    /// `}}` or ` -}}` (space, minus, delimiter) at the current position:
    /// (is a right delimiter, trims).
    fn at_right_delim(&self) -> (bool, bool) {
        let r = self.rest().as_bytes();
        if r.len() >= 4 && is_space(r[0]) && r[1] == b'-' && r[2] == b'}' && r[3] == b'}' {
            return (true, true);
        }
        (r.starts_with(b"}}"), false)
    }

    fn run(mut self) -> Vec<Token> {
        loop {
            // Text up to the next "{{".
            let start = self.pos;
            match self.rest().find("{{") {
                None => {
                    if self.pos < self.src.len() {
                        self.emit(Tok::Text(self.src[self.pos..].to_string()), start);
                    }
                    self.pos = self.src.len();
                    self.emit(Tok::Eof, self.pos);
                    return self.toks;
                }
                Some(i) => {
                    let delim = self.pos + i;
                    let after = &self.src.as_bytes()[delim + 2..];
                    let trim = after.len() >= 2 && after[0] == b'-' && is_space(after[1]);
                    let mut text = &self.src[self.pos..delim];
                    if trim {
                        text = text.trim_end_matches([' ', '\t', '\r', '\n']);
                    }
                    if !text.is_empty() {
                        self.emit(Tok::Text(text.to_string()), start);
                    }
                    self.pos = delim + 2;
                    if trim {
                        self.pos += 2;
                    }
                    if !self.lex_action(delim) {
                        return self.toks;
                    }
                }
            }
        }
    }

    fn skip_space_after(&mut self) {
        let n = self.rest().len()
            - self
                .rest()
                .trim_start_matches([' ', '\t', '\r', '\n'])
                .len();
        self.pos += n;
    }

    fn error(&mut self, msg: String) -> bool {
        let pos = self.pos.min(self.src.len());
        self.emit(Tok::Error(msg), pos);
        false
    }

    /// After the left delimiter; false on a lexing error.
    fn lex_action(&mut self, delim_pos: usize) -> bool {
        if self.rest().starts_with("/*") {
            let Some(end) = self.rest().find("*/") else {
                return self.error("unclosed comment".into());
            };
            self.pos += end + 2;
            let (at, trim) = self.at_right_delim();
            if !at {
                return self.error("comment ends before closing delimiter".into());
            }
            self.pos += if trim { 4 } else { 2 };
            if trim {
                self.skip_space_after();
            }
            return true;
        }
        self.emit(Tok::LeftDelim, delim_pos);
        self.paren_depth = 0;
        loop {
            let (at, trim) = self.at_right_delim();
            if at {
                if self.paren_depth > 0 {
                    return self.error("unclosed left paren".into());
                }
                let p = self.pos;
                self.pos += if trim { 4 } else { 2 };
                self.emit(Tok::RightDelim, p);
                if trim {
                    self.skip_space_after();
                }
                return true;
            }
            let Some(c) = self.peek_char() else {
                return self.error("unclosed action".into());
            };
            let start = self.pos;
            match c {
                ' ' | '\t' | '\r' | '\n' => {
                    while let Some(b) = self.rest().as_bytes().first() {
                        if !is_space(*b) || self.at_right_delim().1 {
                            break;
                        }
                        self.pos += 1;
                    }
                    if self.pos == start {
                        // A trim marker right here: the delimiter check sees it.
                        continue;
                    }
                    self.emit(Tok::Space, start);
                }
                '=' => {
                    self.pos += 1;
                    self.emit(Tok::Assign, start);
                }
                ':' => {
                    if !self.rest().starts_with(":=") {
                        self.pos += 1;
                        return self.error("expected :=".into());
                    }
                    self.pos += 2;
                    self.emit(Tok::Declare, start);
                }
                '|' => {
                    self.pos += 1;
                    self.emit(Tok::Pipe, start);
                }
                '"' => {
                    self.pos += 1;
                    loop {
                        match self.peek_char() {
                            None | Some('\n') => {
                                return self.error("unterminated quoted string".into());
                            }
                            Some('\\') => {
                                self.pos += 1;
                                match self.peek_char() {
                                    None | Some('\n') => {
                                        return self.error("unterminated quoted string".into());
                                    }
                                    Some(c) => self.pos += c.len_utf8(),
                                }
                            }
                            Some('"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(c) => self.pos += c.len_utf8(),
                        }
                    }
                    self.emit(Tok::Str(self.src[start..self.pos].to_string()), start);
                }
                '`' => {
                    self.pos += 1;
                    let Some(end) = self.rest().find('`') else {
                        return self.error("unterminated raw quoted string".into());
                    };
                    self.pos += end + 1;
                    self.emit(Tok::RawStr(self.src[start..self.pos].to_string()), start);
                }
                '\'' => {
                    self.pos += 1;
                    loop {
                        match self.peek_char() {
                            None | Some('\n') => {
                                return self.error("unterminated character constant".into());
                            }
                            Some('\\') => {
                                self.pos += 1;
                                if let Some(c) = self.peek_char() {
                                    self.pos += c.len_utf8();
                                }
                            }
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(c) => self.pos += c.len_utf8(),
                        }
                    }
                    self.emit(Tok::CharConst(self.src[start..self.pos].to_string()), start);
                }
                '$' => {
                    self.pos += 1;
                    let n: usize = self
                        .rest()
                        .chars()
                        .take_while(|c| is_alnum(*c))
                        .map(char::len_utf8)
                        .sum();
                    self.pos += n;
                    if !self.at_terminator() {
                        let c = self.peek_char().unwrap_or(' ');
                        return self.error(format!("bad character {}", sharp_u(c)));
                    }
                    self.emit(Tok::Variable(self.src[start..self.pos].to_string()), start);
                }
                '.' => {
                    let next = self.rest()[1..].chars().next();
                    if next.is_some_and(|c| c.is_ascii_digit()) {
                        if !self.lex_number() {
                            return false;
                        }
                        continue;
                    }
                    self.pos += 1;
                    let n: usize = self
                        .rest()
                        .chars()
                        .take_while(|c| is_alnum(*c))
                        .map(char::len_utf8)
                        .sum();
                    self.pos += n;
                    if !self.at_terminator() {
                        let c = self.peek_char().unwrap_or(' ');
                        return self.error(format!("bad character {}", sharp_u(c)));
                    }
                    if n == 0 {
                        self.emit(Tok::Dot, start);
                    } else {
                        self.emit(Tok::Field(self.src[start + 1..self.pos].to_string()), start);
                    }
                }
                '+' | '-' | '0'..='9' => {
                    if !self.lex_number() {
                        return false;
                    }
                }
                '(' => {
                    self.pos += 1;
                    self.paren_depth += 1;
                    self.emit(Tok::LParen, start);
                }
                ')' => {
                    self.pos += 1;
                    self.paren_depth -= 1;
                    if self.paren_depth < 0 {
                        return self.error("unexpected right paren".into());
                    }
                    self.emit(Tok::RParen, start);
                }
                c if c == '_' || c.is_alphabetic() => {
                    let n: usize = self
                        .rest()
                        .chars()
                        .take_while(|c| is_alnum(*c))
                        .map(char::len_utf8)
                        .sum();
                    self.pos += n;
                    if !self.at_terminator() {
                        let c = self.peek_char().unwrap_or(' ');
                        return self.error(format!("bad character {}", sharp_u(c)));
                    }
                    let word = &self.src[start..self.pos];
                    let tok = match word {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "nil" => Tok::Nil,
                        w => match KEYWORDS.iter().find(|k| **k == w) {
                            Some(k) => Tok::Keyword(k),
                            None => Tok::Ident(w.to_string()),
                        },
                    };
                    self.emit(tok, start);
                }
                c if c.is_ascii() && !c.is_ascii_control() => {
                    self.pos += 1;
                    self.emit(Tok::Char(c), start);
                }
                c => {
                    return self.error(format!("unrecognized character in action: {}", sharp_u(c)));
                }
            }
        }
    }

    fn at_terminator(&self) -> bool {
        match self.peek_char() {
            None => true,
            Some(' ' | '\t' | '\r' | '\n' | '.' | ',' | '|' | ':' | ')' | '(') => true,
            _ => self.rest().starts_with("}}"),
        }
    }

    fn lex_number(&mut self) -> bool {
        let start = self.pos;
        let b = self.src.as_bytes();
        let mut i = self.pos;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let mut digits: &[u8] = b"0123456789_";
        let mut exp: &[u8] = b"eE";
        if i + 1 < b.len() && b[i] == b'0' {
            match b[i + 1] {
                b'x' | b'X' => {
                    i += 2;
                    digits = b"0123456789abcdefABCDEF_";
                    exp = b"pP";
                }
                b'o' | b'O' => {
                    i += 2;
                    digits = b"01234567_";
                    exp = b"";
                }
                b'b' | b'B' => {
                    i += 2;
                    digits = b"01_";
                    exp = b"";
                }
                _ => {}
            }
        }
        while i < b.len() && digits.contains(&b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && digits.contains(&b[i]) {
                i += 1;
            }
        }
        if !exp.is_empty() && i < b.len() && exp.contains(&b[i]) {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() || (i < b.len() && b[i] == b'_') {
                i += 1;
            }
        }
        if i < b.len() && b[i] == b'i' {
            i += 1;
        }
        self.pos = i;
        if self.peek_char().is_some_and(is_alnum) {
            let end = self.pos + self.peek_char().map_or(0, char::len_utf8);
            let text = self.src[start..end].to_string();
            self.pos = end;
            return self.error(format!("bad number syntax: {text:?}"));
        }
        self.emit(Tok::Number(self.src[start..self.pos].to_string()), start);
        true
    }
}

// ---------------------------------------------------------------------------
// The tree.

/// A number literal, as Go's parser reads it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Number {
    pub text: String,
    pub int: Option<i64>,
    pub float: Option<f64>,
    /// Written as a float (with `.`, or an exponent): an ideal float constant.
    pub is_float_syntax: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Field {
        pos: usize,
        idents: Vec<String>,
    },
    Variable {
        pos: usize,
        name: String,
        idents: Vec<String>,
    },
    Dot(usize),
    Nil(usize),
    Bool(usize, bool),
    Number(usize, Number),
    Str {
        pos: usize,
        quoted: String,
        value: String,
    },
    Ident(usize, String),
    Pipe(Box<Pipe>),
    Chain {
        pos: usize,
        node: Box<Arg>,
        fields: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Command {
    pub pos: usize,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug)]
pub(crate) struct Pipe {
    pub pos: usize,
    pub is_assign: bool,
    pub decl: Vec<String>,
    pub cmds: Vec<Command>,
}

#[derive(Clone, Debug)]
pub(crate) struct Branch {
    pub pos: usize,
    pub pipe: Pipe,
    pub list: Vec<Node>,
    pub else_list: Option<Vec<Node>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Text(String),
    Action {
        pos: usize,
        pipe: Pipe,
    },
    If(Box<Branch>),
    Range(Box<Branch>),
    With(Box<Branch>),
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipe>,
    },
    Break(usize),
    Continue(usize),
}

impl Arg {
    pub(crate) fn pos(&self) -> usize {
        match self {
            Arg::Field { pos, .. }
            | Arg::Variable { pos, .. }
            | Arg::Dot(pos)
            | Arg::Nil(pos)
            | Arg::Bool(pos, _)
            | Arg::Number(pos, _)
            | Arg::Str { pos, .. }
            | Arg::Ident(pos, _)
            | Arg::Chain { pos, .. } => *pos,
            Arg::Pipe(p) => p.pos,
        }
    }
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Field { idents, .. } => {
                for i in idents {
                    write!(f, ".{i}")?;
                }
                Ok(())
            }
            Arg::Variable { name, idents, .. } => {
                f.write_str(name)?;
                for i in idents {
                    write!(f, ".{i}")?;
                }
                Ok(())
            }
            Arg::Dot(_) => f.write_str("."),
            Arg::Nil(_) => f.write_str("nil"),
            Arg::Bool(_, b) => write!(f, "{b}"),
            Arg::Number(_, n) => f.write_str(&n.text),
            Arg::Str { quoted, .. } => f.write_str(quoted),
            Arg::Ident(_, n) => f.write_str(n),
            Arg::Pipe(p) => write!(f, "({p})"),
            Arg::Chain { node, fields, .. } => {
                write!(f, "{node}")?;
                for i in fields {
                    write!(f, ".{i}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.decl.is_empty() {
            f.write_str(&self.decl.join(", "))?;
            f.write_str(if self.is_assign { " = " } else { " := " })?;
        }
        for (i, c) in self.cmds.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Text(t) => write!(f, "{t:?}"),
            Node::Action { pipe, .. } => write!(f, "{{{{{pipe}}}}}"),
            Node::If(b) => write!(f, "{{{{if {}}}}}", b.pipe),
            Node::Range(b) => write!(f, "{{{{range {}}}}}", b.pipe),
            Node::With(b) => write!(f, "{{{{with {}}}}}", b.pipe),
            Node::Template { name, pipe, .. } => match pipe {
                Some(p) => write!(f, "{{{{template {name:?} {p}}}}}"),
                None => write!(f, "{{{{template {name:?}}}}}"),
            },
            Node::Break(_) => f.write_str("{{break}}"),
            Node::Continue(_) => f.write_str("{{continue}}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The parser.

/// A parse failure: Go's message and the byte offset it refers to.
pub(crate) struct ParseError {
    pub pos: usize,
    pub msg: String,
}

type PResult<T> = Result<T, ParseError>;

pub(crate) struct Parsed {
    pub root: Vec<Node>,
    pub defines: Vec<(String, Vec<Node>)>,
}

struct Parser<'f> {
    toks: Vec<Token>,
    i: usize,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    has_func: &'f dyn Fn(&str) -> bool,
    defines: Vec<(String, Vec<Node>)>,
}

/// Parse `src`; `has_func` says whether a function name is defined.
pub(crate) fn parse(src: &str, has_func: &dyn Fn(&str) -> bool) -> Result<Parsed, ParseError> {
    let toks = Lexer {
        src,
        pos: 0,
        toks: Vec::new(),
        paren_depth: 0,
    }
    .run();
    let mut p = Parser {
        toks,
        i: 0,
        vars: vec!["$".into()],
        range_depth: 0,
        depth: 0,
        has_func,
        defines: Vec::new(),
    };
    let root = p.parse_top()?;
    Ok(Parsed {
        root,
        defines: p.defines,
    })
}

/// Ends of an item list.
enum ListEnd {
    End(usize),
    Else(usize),
}

impl Parser<'_> {
    fn next(&mut self) -> Token {
        let t = self.toks.get(self.i).cloned().unwrap_or(Token {
            tok: Tok::Eof,
            pos: 0,
        });
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }
    fn backup(&mut self) {
        self.i = self.i.saturating_sub(1);
    }
    fn peek(&self) -> &Tok {
        self.toks.get(self.i).map_or(&Tok::Eof, |t| &t.tok)
    }
    fn next_non_space(&mut self) -> Token {
        loop {
            let t = self.next();
            if t.tok != Tok::Space {
                return t;
            }
        }
    }
    fn peek_non_space(&mut self) -> Tok {
        let t = self.next_non_space();
        self.backup();
        t.tok
    }
    fn err<T>(&self, pos: usize, msg: impl Into<String>) -> PResult<T> {
        Err(ParseError {
            pos,
            msg: msg.into(),
        })
    }
    fn unexpected<T>(&self, t: &Token, context: &str) -> PResult<T> {
        if let Tok::Error(e) = &t.tok {
            return self.err(t.pos, e.clone());
        }
        self.err(
            t.pos,
            format!("unexpected {} in {context}", t.tok.describe()),
        )
    }
    fn expect_right(&mut self, context: &str) -> PResult<Token> {
        let t = self.next_non_space();
        if t.tok != Tok::RightDelim {
            return self.unexpected(&t, context);
        }
        Ok(t)
    }

    fn parse_top(&mut self) -> PResult<Vec<Node>> {
        let mut root = Vec::new();
        loop {
            if *self.peek() == Tok::Eof {
                return Ok(root);
            }
            if *self.peek() == Tok::LeftDelim {
                let save = self.i;
                self.next();
                let t = self.next_non_space();
                if t.tok == Tok::Keyword("define") {
                    self.parse_define(t.pos)?;
                    continue;
                }
                self.i = save;
            }
            match self.text_or_action()? {
                Ok(n) => root.push(n),
                Err(ListEnd::End(pos)) => return self.err(pos, "unexpected {{end}}"),
                Err(ListEnd::Else(pos)) => return self.err(pos, "unexpected {{else}}"),
            }
        }
    }

    fn parse_define(&mut self, pos: usize) -> PResult<()> {
        let t = self.next_non_space();
        let name = match &t.tok {
            Tok::Str(_) | Tok::RawStr(_) => {
                unquote_token(&t.tok).map_err(|m| ParseError { pos: t.pos, msg: m })?
            }
            _ => return self.unexpected(&t, "define clause"),
        };
        self.expect_right("define clause")?;
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".into()]);
        let (list, end) = self.item_list()?;
        self.vars = saved_vars;
        if let ListEnd::Else(p) = end {
            return self.err(p, "unexpected {{else}}");
        }
        self.add_define(pos, name, list)
    }

    fn add_define(&mut self, pos: usize, name: String, list: Vec<Node>) -> PResult<()> {
        if let Some(existing) = self.defines.iter_mut().find(|(n, _)| *n == name) {
            if !is_empty_tree(&existing.1) && !is_empty_tree(&list) {
                return self.err(
                    pos,
                    format!("template: multiple definition of template {name:?}"),
                );
            }
            if !is_empty_tree(&list) {
                existing.1 = list;
            }
            return Ok(());
        }
        self.defines.push((name, list));
        Ok(())
    }

    /// Items until `{{end}}` or `{{else}}` (whose right delimiter is left
    /// for the caller when it is an `else`).
    fn item_list(&mut self) -> PResult<(Vec<Node>, ListEnd)> {
        let mut list = Vec::new();
        loop {
            if *self.peek() == Tok::Eof {
                let t = self.next();
                return self.err(t.pos, "unexpected EOF");
            }
            match self.text_or_action()? {
                Ok(n) => list.push(n),
                Err(end) => return Ok((list, end)),
            }
        }
    }

    fn text_or_action(&mut self) -> PResult<Result<Node, ListEnd>> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Text(s) => Ok(Ok(Node::Text(s))),
            Tok::LeftDelim => {
                self.depth += 1;
                if self.depth > MAX_PARSE_DEPTH {
                    return self.err(t.pos, "max expression depth exceeded");
                }
                let r = self.action();
                self.depth -= 1;
                r
            }
            _ => self.unexpected(&t, "input"),
        }
    }

    fn action(&mut self) -> PResult<Result<Node, ListEnd>> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Keyword("block") => self.block(t.pos).map(Ok),
            Tok::Keyword("break") => self.break_continue(t.pos, true).map(Ok),
            Tok::Keyword("continue") => self.break_continue(t.pos, false).map(Ok),
            Tok::Keyword("else") => {
                // `{{else}}` or `{{else if …}}`: the caller decides.
                Ok(Err(ListEnd::Else(t.pos)))
            }
            Tok::Keyword("end") => {
                self.expect_right("end")?;
                Ok(Err(ListEnd::End(t.pos)))
            }
            Tok::Keyword("if") => self.control(t.pos, "if").map(Ok),
            Tok::Keyword("range") => self.control(t.pos, "range").map(Ok),
            Tok::Keyword("with") => self.control(t.pos, "with").map(Ok),
            Tok::Keyword("template") => self.template_call(t.pos).map(Ok),
            Tok::Keyword("define") => self.unexpected(&t, "command"),
            _ => {
                self.backup();
                let pos = self.toks.get(self.i).map_or(t.pos, |x| x.pos);
                let pipe = self.pipeline("command", false)?;
                Ok(Ok(Node::Action { pos, pipe }))
            }
        }
    }

    fn break_continue(&mut self, pos: usize, is_break: bool) -> PResult<Node> {
        let word = if is_break { "break" } else { "continue" };
        let t = self.next_non_space();
        if t.tok != Tok::RightDelim {
            return self.unexpected(&t, &format!("{{{{{word}}}}}"));
        }
        if self.range_depth == 0 {
            return self.err(pos, format!("{{{{{word}}}}} outside {{{{range}}}}"));
        }
        Ok(if is_break {
            Node::Break(pos)
        } else {
            Node::Continue(pos)
        })
    }

    fn control(&mut self, pos: usize, context: &'static str) -> PResult<Node> {
        let nvars = self.vars.len();
        let pipe = self.pipeline(context, false)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let r = self.item_list();
        if context == "range" {
            self.range_depth -= 1;
        }
        let (list, end) = r?;
        let else_list = match end {
            ListEnd::End(_) => None,
            ListEnd::Else(epos) => {
                // `{{else if …}}` / `{{else with …}}`: a nested control
                // that shares this one's {{end}}.
                let save = self.i;
                let t = self.next_non_space();
                if (context == "if" && t.tok == Tok::Keyword("if"))
                    || (context == "with" && t.tok == Tok::Keyword("with"))
                {
                    let nested = self.control(t.pos, context)?;
                    Some(vec![nested])
                } else {
                    self.i = save;
                    self.expect_right("else")?;
                    let (else_list, end) = self.item_list()?;
                    if let ListEnd::Else(p) = end {
                        let _ = epos;
                        return self.err(p, "expected end; found {{else}}");
                    }
                    Some(else_list)
                }
            }
        };
        self.vars.truncate(nvars);
        let b = Box::new(Branch {
            pos,
            pipe,
            list,
            else_list,
        });
        Ok(match context {
            "if" => Node::If(b),
            "range" => Node::Range(b),
            _ => Node::With(b),
        })
    }

    fn template_call(&mut self, _keyword_pos: usize) -> PResult<Node> {
        let t = self.next_non_space();
        let name = match &t.tok {
            Tok::Str(_) | Tok::RawStr(_) => {
                unquote_token(&t.tok).map_err(|m| ParseError { pos: t.pos, msg: m })?
            }
            _ => return self.unexpected(&t, "template clause"),
        };
        let pipe = if self.peek_non_space() != Tok::RightDelim {
            Some(self.pipeline("template clause", false)?)
        } else {
            self.next_non_space();
            None
        };
        let pos = t.pos;
        Ok(Node::Template { pos, name, pipe })
    }

    fn block(&mut self, pos: usize) -> PResult<Node> {
        let t = self.next_non_space();
        let name = match &t.tok {
            Tok::Str(_) | Tok::RawStr(_) => {
                unquote_token(&t.tok).map_err(|m| ParseError { pos: t.pos, msg: m })?
            }
            _ => return self.unexpected(&t, "block clause"),
        };
        let pipe = if self.peek_non_space() != Tok::RightDelim {
            Some(self.pipeline("block clause", false)?)
        } else {
            self.next_non_space();
            None
        };
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".into()]);
        let saved_range = std::mem::replace(&mut self.range_depth, 0);
        let r = self.item_list();
        self.vars = saved_vars;
        self.range_depth = saved_range;
        let (list, end) = r?;
        if let ListEnd::Else(p) = end {
            return self.err(p, "unexpected {{else}}");
        }
        self.add_define(pos, name.clone(), list)?;
        Ok(Node::Template { pos, name, pipe })
    }

    /// A pipeline up to `}}` (or `)` when `paren`).
    fn pipeline(&mut self, context: &str, paren: bool) -> PResult<Pipe> {
        let start = self.toks.get(self.i).map_or(0, |t| t.pos);
        let mut pipe = Pipe {
            pos: start,
            is_assign: false,
            decl: Vec::new(),
            cmds: Vec::new(),
        };
        // Declarations.
        loop {
            let save = self.i;
            let v = self.next_non_space();
            let Tok::Variable(name) = &v.tok else {
                self.i = save;
                break;
            };
            let after_var = self.i;
            let next = self.next_non_space();
            match next.tok {
                Tok::Declare | Tok::Assign => {
                    pipe.is_assign = next.tok == Tok::Assign;
                    if pipe.is_assign && !self.vars.contains(name) {
                        return self.err(v.pos, format!("undefined variable {name:?}"));
                    }
                    pipe.decl.push(name.clone());
                    if !pipe.is_assign {
                        self.vars.push(name.clone());
                    }
                    break;
                }
                Tok::Char(',') => {
                    pipe.decl.push(name.clone());
                    self.vars.push(name.clone());
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space() {
                            Tok::Variable(_) | Tok::RightDelim | Tok::RParen => continue,
                            _ => return self.err(next.pos, "range can only initialize variables"),
                        }
                    }
                    return self.err(next.pos, format!("too many declarations in {context}"));
                }
                _ => {
                    let _ = after_var;
                    self.i = save;
                    break;
                }
            }
        }
        if pipe.decl.len() == 2
            && self
                .toks
                .get(self.i.wrapping_sub(1))
                .is_some_and(|t| t.tok == Tok::Char(','))
        {
            // `range $i, $v` without `:=`.
        }
        let end_tok = if paren { Tok::RParen } else { Tok::RightDelim };
        loop {
            let t = self.next_non_space();
            if t.tok == end_tok {
                if pipe.cmds.is_empty() {
                    return self.err(t.pos, format!("missing value for {context}"));
                }
                for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
                    if let Some(a) = c.args.first()
                        && matches!(
                            a,
                            Arg::Bool(..)
                                | Arg::Dot(_)
                                | Arg::Nil(_)
                                | Arg::Number(..)
                                | Arg::Str { .. }
                        )
                    {
                        let _ = i;
                        return self.err(
                            a.pos(),
                            format!("non executable command in pipeline stage {}", i + 1),
                        );
                    }
                }
                return Ok(pipe);
            }
            match t.tok {
                Tok::Bool(_)
                | Tok::CharConst(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Nil
                | Tok::RawStr(_)
                | Tok::Str(_)
                | Tok::Variable(_)
                | Tok::LParen => {
                    self.backup();
                    let c = self.command(&end_tok)?;
                    pipe.cmds.push(c);
                }
                _ => return self.unexpected(&t, context),
            }
        }
    }

    fn command(&mut self, end_tok: &Tok) -> PResult<Command> {
        let pos = self.toks.get(self.i).map_or(0, |t| t.pos);
        let mut cmd = Command {
            pos,
            args: Vec::new(),
        };
        loop {
            self.peek_non_space();
            if let Some(a) = self.operand()? {
                cmd.args.push(a);
            }
            let t = self.next();
            match &t.tok {
                Tok::Space => continue,
                tok if tok == end_tok => {
                    self.backup();
                }
                Tok::RightDelim | Tok::RParen => {
                    self.backup();
                }
                Tok::Pipe => {}
                _ => return self.unexpected(&t, "operand"),
            }
            break;
        }
        if cmd.args.is_empty() {
            return self.err(pos, "empty command");
        }
        Ok(cmd)
    }

    fn operand(&mut self) -> PResult<Option<Arg>> {
        let Some(node) = self.term()? else {
            return Ok(None);
        };
        if let Tok::Field(_) = self.peek() {
            let mut fields = Vec::new();
            while let Tok::Field(f) = self.peek().clone() {
                self.next();
                fields.push(f);
            }
            let pos = node.pos();
            return Ok(Some(match node {
                Arg::Field { pos, mut idents } => {
                    idents.extend(fields);
                    Arg::Field { pos, idents }
                }
                Arg::Variable {
                    pos,
                    name,
                    mut idents,
                } => {
                    idents.extend(fields);
                    Arg::Variable { pos, name, idents }
                }
                Arg::Bool(..) | Arg::Str { .. } | Arg::Number(..) | Arg::Nil(_) | Arg::Dot(_) => {
                    return self.err(
                        pos,
                        format!("unexpected . after term {:?}", node.to_string()),
                    );
                }
                other => Arg::Chain {
                    pos,
                    node: Box::new(other),
                    fields,
                },
            }));
        }
        Ok(Some(node))
    }

    fn term(&mut self) -> PResult<Option<Arg>> {
        let t = self.next_non_space();
        Ok(Some(match t.tok {
            Tok::Ident(name) => {
                if !(self.has_func)(&name) {
                    return self.err(t.pos, format!("function {name:?} not defined"));
                }
                Arg::Ident(t.pos, name)
            }
            Tok::Dot => Arg::Dot(t.pos),
            Tok::Nil => Arg::Nil(t.pos),
            Tok::Variable(name) => {
                if !self.vars.contains(&name) {
                    return self.err(t.pos, format!("undefined variable {name:?}"));
                }
                Arg::Variable {
                    pos: t.pos,
                    name,
                    idents: Vec::new(),
                }
            }
            Tok::Field(f) => Arg::Field {
                pos: t.pos,
                idents: vec![f],
            },
            Tok::Bool(b) => Arg::Bool(t.pos, b),
            Tok::Number(ref n) | Tok::CharConst(ref n) => {
                let num = parse_number(n, matches!(t.tok, Tok::CharConst(_)))
                    .map_err(|m| ParseError { pos: t.pos, msg: m })?;
                Arg::Number(t.pos, num)
            }
            Tok::LParen => {
                self.depth += 1;
                if self.depth > MAX_PARSE_DEPTH {
                    return self.err(t.pos, "max expression depth exceeded");
                }
                let r = self.pipeline("parenthesized pipeline", true);
                self.depth -= 1;
                let mut p = r?;
                p.pos = t.pos;
                Arg::Pipe(Box::new(p))
            }
            Tok::Str(ref q) | Tok::RawStr(ref q) => {
                let value = unquote_token(&t.tok).map_err(|m| ParseError { pos: t.pos, msg: m })?;
                Arg::Str {
                    pos: t.pos,
                    quoted: q.clone(),
                    value,
                }
            }
            Tok::Error(e) => return self.err(t.pos, e),
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }
}

fn is_empty_tree(list: &[Node]) -> bool {
    list.iter()
        .all(|n| matches!(n, Node::Text(t) if t.trim().is_empty()))
}

fn unquote_token(t: &Tok) -> Result<String, String> {
    match t {
        Tok::RawStr(s) => Ok(s[1..s.len() - 1].to_string()),
        Tok::Str(s) => unquote(s).ok_or_else(|| "invalid syntax".to_string()),
        _ => Err("invalid syntax".into()),
    }
}

/// Go's `strconv.Unquote` for a double- or single-quoted literal.
pub(crate) fn unquote(s: &str) -> Option<String> {
    let quote = s.chars().next()?;
    if s.len() < 2 || !s.ends_with(quote) {
        return None;
    }
    let body = &s[1..s.len() - 1];
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote {
            return None;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Option<u32> {
            let mut v = 0u32;
            for _ in 0..n {
                v = v * 16 + chars.next()?.to_digit(16)?;
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
            '\'' if quote == '\'' => out.push('\''),
            '"' if quote == '"' => out.push('"'),
            'x' => {
                let v = hex(&mut chars, 2)?;
                // A byte; as text only ASCII is representable here.
                out.push(char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}'));
            }
            'u' => out.push(char::from_u32(hex(&mut chars, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut chars, 8)?)?),
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + chars.next()?.to_digit(8)?;
                }
                if v > 255 {
                    return None;
                }
                out.push(char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}'));
            }
            _ => return None,
        }
    }
    if quote == '\'' && out.chars().count() != 1 {
        return None;
    }
    Some(out)
}

fn parse_number(text: &str, is_char: bool) -> Result<Number, String> {
    let bad = || format!("bad number syntax: {text:?}");
    if is_char {
        let s = unquote(text).ok_or_else(|| format!("malformed character constant: {text}"))?;
        let c = s.chars().next().ok_or_else(bad)? as i64;
        return Ok(Number {
            text: text.into(),
            int: Some(c),
            float: Some(c as f64),
            is_float_syntax: false,
        });
    }
    if text.ends_with('i') {
        return Err(format!("complex numbers are not supported: {text}"));
    }
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return Err(bad());
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|b| b.is_ascii_digit())
    {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    let int = u64::from_str_radix(&digits, radix).ok().and_then(|u| {
        if neg {
            if u <= i64::MAX as u64 + 1 {
                Some((u as i128).wrapping_neg() as i64)
            } else {
                None
            }
        } else {
            i64::try_from(u).ok()
        }
    });
    let is_float_syntax = radix == 10 && (lower.contains('.') || lower.contains('e'))
        || radix == 16 && lower.contains('p');
    let float = if radix == 10 {
        lower.parse::<f64>().ok().map(|f| if neg { -f } else { f })
    } else {
        int.map(|i| i as f64)
    };
    if int.is_none() && float.is_none() {
        return Err(bad());
    }
    // A float literal with an integral value is also an int constant.
    let int = int.or_else(|| {
        float
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    });
    Ok(Number {
        text: text.into(),
        int,
        float,
        is_float_syntax,
    })
}

/// Line (1-based) of byte offset `pos` in `src`.
pub(crate) fn line_of(src: &str, pos: usize) -> usize {
    let pos = pos.min(src.len());
    1 + src.as_bytes()[..pos]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// `line:col` of byte offset `pos`, as Go's `ErrorContext` (col 0-based).
pub(crate) fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = &src.as_bytes()[..pos];
    let col = match before.iter().rposition(|b| *b == b'\n') {
        Some(i) => pos - i - 1,
        None => pos,
    };
    (line_of(src, pos), col)
}

/// The named trees of one parse, for the evaluator.
pub(crate) fn into_trees(name: &str, parsed: Parsed) -> HashMap<String, Vec<Node>> {
    let mut trees = HashMap::new();
    let root_empty = is_empty_tree(&parsed.root);
    trees.insert(name.to_string(), parsed.root);
    for (n, list) in parsed.defines {
        // A definition of the template's own name replaces an empty body.
        if n != name || root_empty {
            trees.insert(n, list);
        }
    }
    trees
}
