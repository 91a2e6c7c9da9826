//! `[metrics]` in ferry.toml: extra scrape targets and remote-write
//! destinations of the embedded time-series store. Read by `ferry serve
//! --config FILE` at start (a change takes a daemon restart, which does not
//! interrupt traffic).

use crate::duration::Dur;
use crate::spec::Problem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[metrics]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Targets scraped besides the daemon, its proxies and its instances,
    /// e.g. node_exporter or postgres_exporter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrape: Vec<ScrapeTargetSpec>,
    /// Prometheus remote-write receivers every stored sample is sent to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteSpec>,
}

/// One extra scrape target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrapeTargetSpec {
    /// The `job` label of every series scraped from it.
    pub job: String,
    /// `http://host:port/path`.
    pub url: String,
    /// How often (default: `ferry serve --scrape-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub interval: Option<Dur>,
    /// How long one scrape may take before it is cut off and the target
    /// marked down (default: the interval, at most 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<Dur>,
    /// Labels added to every series of this target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One remote-write destination: either a URL string or a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RemoteWriteSpec {
    Url(String),
    Full {
        url: String,
        /// Extra request headers, e.g. `Authorization`.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

impl RemoteWriteSpec {
    pub fn url(&self) -> &str {
        match self {
            RemoteWriteSpec::Url(u) | RemoteWriteSpec::Full { url: u, .. } => u,
        }
    }
    pub fn headers(&self) -> BTreeMap<String, String> {
        match self {
            RemoteWriteSpec::Url(_) => BTreeMap::new(),
            RemoteWriteSpec::Full { headers, .. } => headers.clone(),
        }
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_url(url: &str, at: Vec<String>, p: &mut Vec<Problem>) {
    let Some(rest) = url.strip_prefix("http://") else {
        p.push(Problem::new(
            &at,
            format!("url = {url:?} must start with http:// (this build speaks plain HTTP)"),
        ));
        return;
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push(Problem::new(
            &at,
            format!("url = {url:?} is not a URL; write e.g. \"http://127.0.0.1:9100/metrics\""),
        ));
    }
}

/// Headers the remote-write protocol sets itself.
const PROTOCOL_HEADERS: &[&str] = &[
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "user-agent",
    "x-prometheus-remote-write-version",
];

/// Why a remote-write header cannot be sent, if it cannot. The value is
/// never quoted: it may be a token.
fn header_problem(name: &str, value: &str) -> Option<String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Some(format!(
            "header name {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    if PROTOCOL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some(format!(
            "header {name:?} is set by the remote-write protocol; remove it"
        ));
    }
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || !c.is_ascii())
    {
        return Some(format!(
            "the value of header {name:?} has a control or non-ASCII character"
        ));
    }
    None
}

impl MetricsConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.scrape.iter().enumerate() {
            let at = |k: &str| vec!["metrics".into(), "scrape".into(), i.to_string(), k.into()];
            if t.job.is_empty() {
                p.push(Problem::new(
                    &at("job"),
                    "job is empty; name the target's job, e.g. \"node\"",
                ));
            }
            check_url(&t.url, at("url"), &mut p);
            if !seen.insert((t.job.clone(), t.url.clone())) {
                p.push(Problem::new(
                    &at("url"),
                    format!(
                        "job {:?} already scrapes {:?}; list each target once",
                        t.job, t.url
                    ),
                ));
            }
            if let Some(iv) = t.interval
                && iv.as_millis() < 100
            {
                p.push(Problem::new(
                    &at("interval"),
                    "interval must be at least 100ms",
                ));
            }
            if let Some(to) = t.timeout {
                if to.as_millis() == 0 {
                    p.push(Problem::new(&at("timeout"), "timeout must be more than 0"));
                }
                if let Some(iv) = t.interval
                    && to.as_millis() > iv.as_millis()
                {
                    p.push(Problem::new(
                        &at("timeout"),
                        format!("timeout ({to}) is longer than the interval ({iv}); make it at most the interval"),
                    ));
                }
            }
            for name in t.labels.keys() {
                if !valid_label_name(name) || name.starts_with("__") {
                    p.push(Problem::new(
                        &at("labels"),
                        format!("label name {name:?} is not allowed; use letters, digits and `_`, not starting with a digit or `__`"),
                    ));
                }
            }
        }
        for (i, w) in self.remote_write.iter().enumerate() {
            let at = vec!["metrics".into(), "remote_write".into(), i.to_string()];
            check_url(w.url(), at.clone(), &mut p);
            for (name, value) in w.headers() {
                let mut at = at.clone();
                at.extend(["headers".to_string(), name.clone()]);
                if let Some(problem) = header_problem(&name, &value) {
                    p.push(Problem::new(&at, problem));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_remote_write_forms_and_checks_targets() {
        let c: MetricsConfig = toml_edit::de::from_str(
            r#"
            scrape = [{ job = "node", url = "http://127.0.0.1:9100/metrics", interval = "5s" }]
            remote_write = ["http://127.0.0.1:9090/api/v1/write", { url = "http://h:1/w", headers = { Authorization = "Bearer x" } }]
            "#,
        )
        .unwrap();
        assert_eq!(c.remote_write[1].url(), "http://h:1/w");
        assert_eq!(c.remote_write[1].headers()["Authorization"], "Bearer x");
        assert!(c.validate().is_empty());
        let bad: MetricsConfig = toml_edit::de::from_str(
            r#"scrape = [{ job = "", url = "https://x/metrics", labels = { "1a" = "b" } }]"#,
        )
        .unwrap();
        let msgs: Vec<String> = bad.validate().into_iter().map(|p| p.message).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let bad: MetricsConfig = toml_edit::de::from_str(
            r#"remote_write = [{ url = "http://h:1/w", headers = { "Content-Type" = "x", "a b" = "c", X-Token = "secret\n" } }]"#,
        )
        .unwrap();
        let msgs: Vec<String> = bad.validate().into_iter().map(|p| p.message).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs.iter().all(|m| !m.contains("secret")), "{msgs:?}");
    }
}
