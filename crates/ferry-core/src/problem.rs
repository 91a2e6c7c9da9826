//! `Problem`: one thing wrong with what a user wrote, at a key path, with
//! the fix. Every validation in the crate returns these; `config` turns
//! them into `file:line:column` errors.

use serde::{Deserialize, Serialize};

/// One thing wrong with a spec: where (a key path under the service), what,
/// and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Key path from the top of the file, e.g. `["services","web","instances"]`.
    pub path: Vec<String>,
    pub message: String,
}

impl Problem {
    pub fn new(path: &[String], message: impl Into<String>) -> Problem {
        Problem {
            path: path.to_vec(),
            message: message.into(),
        }
    }
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}
