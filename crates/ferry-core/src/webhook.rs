//! Rollout event webhooks (`webhooks = [...]` in a service).

use crate::duration::Dur;
use crate::event::EventKind;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where to POST each event as JSON.
    pub url: String,
    /// Which event kinds to send (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventKind>,
    /// Per attempt.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Extra attempts after a failed one (5xx, 429, no answer).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Dur {
    Dur::secs(2)
}

fn default_retries() -> u32 {
    3
}

impl WebhookSpec {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    pub fn validate(&self, at: &[String], i: usize) -> Vec<Problem> {
        let mut p = Vec::new();
        let problem = |m: String| Problem {
            path: at.to_vec(),
            message: format!("webhooks[{i}]: {m}"),
        };
        if !self.url.starts_with("http://") {
            p.push(problem(format!(
                "url = \"{}\" must start with http:// (this build sends plain HTTP; put a TLS-terminating relay in front for https)",
                self.url
            )));
        }
        if self.timeout.is_zero() {
            p.push(problem("timeout must be positive, e.g. \"2s\"".into()));
        }
        if self.retries > 10 {
            p.push(problem(format!(
                "retries = {} is more than 10",
                self.retries
            )));
        }
        p
    }
}
