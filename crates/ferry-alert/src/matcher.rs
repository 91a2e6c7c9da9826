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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

/// All of them match (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &LabelSet) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

impl Matcher {
    /// `name="value"`, `name!="value"`, `name=~"re"`, `name!~"re"`; the
    /// value may be unquoted.
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let t = text.trim();
        let at = t.find(['=', '!']).ok_or_else(|| {
            MatcherError(format!("bad matcher {text:?}: no operator (=, !=, =~, !~)"))
        })?;
        let name = t[..at].trim();
        let rest = &t[at..];
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(MatcherError(format!(
                "bad matcher {text:?}: unknown operator"
            )));
        };
        if name.is_empty() {
            return Err(MatcherError(format!("bad matcher {text:?}: no label name")));
        }
        let rest = rest.trim();
        let value = if rest.starts_with('"') {
            serde_json::from_str::<String>(rest)
                .map_err(|_| MatcherError(format!("bad matcher {text:?}: bad quoted value")))?
        } else {
            rest.to_string()
        };
        Matcher::new(name, op, &value)
    }
}
