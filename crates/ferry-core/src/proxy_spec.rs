//! Per-service settings of Ferry's proxy (`[services.NAME.proxy]`).

use crate::spec::Problem;
use serde::{Deserialize, Serialize};

/// Settings of the proxy in front of one service. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {}

impl ProxySpec {
    /// Problems with these settings; `at` is the key path of the table.
    pub fn validate(&self, at: &[String]) -> Vec<Problem> {
        let _ = at;
        Vec::new()
    }
}
