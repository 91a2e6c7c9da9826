//! Where a query stops making sense. `promql-parser` says what is wrong
//! but not where; Prometheus answers `1:5: parse error: ...`. This finds
//! the position: the first token after which no completion of the query
//! parses (tried with a few fillers and the closing brackets still open),
//! or the bracket left open, or the end of the input.

use promql_parser::parser::{self, Expr};

/// Longest query whose error position is looked for (each token costs a
/// few parses of its prefix).
const MAX_LEN: usize = 4096;

/// What may follow a prefix to make it a whole query.
const FILLERS: [&str; 19] = [
    "", " 1", " x", "\"\"", "=\"\"", " 5m", "5m", "[1m]", ":1m", "x)", "x[1m]", "(x)", "(x[1m])",
    "(1, x)", ", x", " 1, x", "a) (x)", " (x)", " on() x",
];

/// Parse `query`; an error names the line and column (1-based, in
/// characters) where the query goes wrong, as Prometheus does.
pub fn parse(query: &str) -> Result<Expr, String> {
    parser::parse(query).map_err(|message| match position(query, &message) {
        Some(at) => {
            let (line, col) = line_col(query, at);
            format!("{line}:{col}: parse error: {message}")
        }
        None => format!("parse error: {message}"),
    })
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Byte spans of the query's tokens: words (names, numbers, durations),
/// quoted strings, and operators.
fn tokens(q: &str) -> Vec<(usize, usize)> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' && c != b'`' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'.' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || matches!(b[i], b'_' | b':' | b'.')
                    || b[i] >= 0x80)
            {
                i += 1;
            }
        } else {
            let two = q.get(i..i + 2).unwrap_or("");
            i += if matches!(two, "==" | "!=" | ">=" | "<=" | "=~" | "!~") {
                2
            } else {
                1
            };
        }
        out.push((start, i));
    }
    out
}

/// The closing brackets `prefix` leaves open, innermost first.
fn closers(prefix: &str) -> String {
    let mut open = Vec::new();
    for (s, e) in tokens(prefix) {
        match &prefix[s..e] {
            "(" => open.push(')'),
            "[" => open.push(']'),
            "{" => open.push('}'),
            ")" | "]" | "}" => {
                open.pop();
            }
            _ => {}
        }
    }
    open.iter().rev().collect()
}

fn viable(prefix: &str) -> bool {
    FILLERS.iter().any(|f| {
        let p = format!("{prefix}{f}");
        let whole = format!("{p}{}", closers(&p));
        parser::parse(&whole).is_ok()
    })
}

fn position(query: &str, message: &str) -> Option<usize> {
    if query.len() > MAX_LEN || !query.is_char_boundary(query.len()) {
        return None;
    }
    let toks = tokens(query);
    if message.contains("unclosed") || message.contains("end of input") {
        // The innermost bracket left open, or the end.
        let mut open = Vec::new();
        for &(s, e) in &toks {
            match &query[s..e] {
                "(" | "[" | "{" => open.push(s),
                ")" | "]" | "}" => {
                    open.pop();
                }
                _ => {}
            }
        }
        return Some(if message.contains("unclosed") {
            open.last().copied().unwrap_or(query.len())
        } else {
            query.len()
        });
    }
    if message.contains("unterminated quoted string") {
        return toks
            .iter()
            .rev()
            .find(|(s, _)| matches!(query.as_bytes()[*s], b'"' | b'\'' | b'`'))
            .map(|t| t.0);
    }
    toks.iter()
        .find(|&&(_, e)| !viable(&query[..e]))
        .map(|t| t.0)
        .or(Some(query.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(q: &str) -> String {
        parse(q).unwrap_err()
    }

    #[test]
    fn errors_name_where_the_query_goes_wrong() {
        assert_eq!(at("1 +* 2"), "1:4: parse error: invalid promql query");
        assert_eq!(at("foo{a=}"), "1:7: parse error: invalid promql query");
        assert_eq!(
            at("rate(x[5m]) by"),
            "1:13: parse error: invalid promql query"
        );
        assert_eq!(
            at("sum(rate(x[5m])"),
            "1:4: parse error: unclosed left parenthesis"
        );
        assert!(at("up[5m").starts_with("1:6: parse error: unexpected end of input"));
        assert_eq!(
            at("sum(x)\n  + * 3"),
            "2:5: parse error: invalid promql query"
        );
        assert!(parse("sum by (job) (rate(x{a=~\"b.*\"}[5m] offset 1m))").is_ok());
    }
}
