//! `[alerting]` in ferry.toml: which Prometheus rule files Ferry evaluates,
//! where its alerts go (its own Alertmanager-grade routing, and real
//! Alertmanagers), read by `ferry serve --config FILE` at start and by
//! `ferry alerts reload`.

use crate::duration::Dur;
use crate::spec::Problem;
use ferry_alert::config::{
    Global, InhibitRuleConfig, ReceiverConfig, RouteConfig, TimeIntervalConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[alerting]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Prometheus rule files (globs, relative to the config file).
    #[serde(default)]
    pub rule_files: Vec<String>,
    /// The built-in rules from the operations guides (host CPU, memory and
    /// disk; each service's error rate and latency). Default true.
    #[serde(default = "yes")]
    pub builtin_rules: bool,
    /// Rules (alert or record names) not to load, built-in or not.
    #[serde(default)]
    pub disable_rules: Vec<String>,
    /// How often a group without its own `interval` is evaluated
    /// (default 15s).
    #[serde(default = "default_eval")]
    pub evaluation_interval: Dur,
    /// How often a firing alert is re-sent to Alertmanagers (default 1m).
    #[serde(default = "default_resend")]
    pub resend_delay: Dur,
    /// The URL alerts link back to (default: the API's URL).
    #[serde(default)]
    pub external_url: Option<String>,
    /// Labels added to every alert sent out (`$externalLabels`).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Alertmanagers every alert is also pushed to (`POST /api/v2/alerts`),
    /// e.g. `["http://127.0.0.1:9093"]`.
    #[serde(default)]
    pub alertmanagers: Vec<String>,
    /// An Alertmanager configuration file (`alertmanager.yml`): its
    /// `route`, `receivers`, `inhibit_rules` and `time_intervals` are used
    /// as they are. Relative to the config file. Not together with the
    /// tables below.
    #[serde(default)]
    pub alertmanager_config: Option<String>,
    /// Alertmanager's `global` (SMTP server, Slack URL, PagerDuty URL).
    #[serde(default)]
    pub global: Option<Global>,
    /// The routing tree (default: by severity, as the guides route).
    #[serde(default)]
    pub route: Option<RouteConfig>,
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    #[serde(default)]
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    #[serde(default)]
    pub time_intervals: Vec<TimeIntervalConfig>,
}

fn yes() -> bool {
    true
}
fn default_eval() -> Dur {
    Dur::secs(15)
}
fn default_resend() -> Dur {
    Dur::secs(60)
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            rule_files: Vec::new(),
            builtin_rules: true,
            disable_rules: Vec::new(),
            evaluation_interval: default_eval(),
            resend_delay: default_resend(),
            external_url: None,
            external_labels: BTreeMap::new(),
            alertmanagers: Vec::new(),
            alertmanager_config: None,
            global: None,
            route: None,
            receivers: Vec::new(),
            inhibit_rules: Vec::new(),
            time_intervals: Vec::new(),
        }
    }
}

impl AlertingConfig {
    /// What can be checked without reading other files.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let at = |k: &str| vec!["alerting".to_string(), k.to_string()];
        if self.evaluation_interval.as_millis() < 1000 {
            p.push(Problem::new(
                &at("evaluation_interval"),
                "evaluation_interval must be at least 1s",
            ));
        }
        if self.resend_delay.as_millis() < 1000 {
            p.push(Problem::new(
                &at("resend_delay"),
                "resend_delay must be at least 1s",
            ));
        }
        for (i, url) in self.alertmanagers.iter().enumerate() {
            let ok = url
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if !ok {
                p.push(Problem::new(
                    &[
                        "alerting".into(),
                        "alertmanagers".into(),
                        i.to_string(),
                    ],
                    format!(
                        "alertmanagers[{i}] = {url:?} is not an Alertmanager URL; write e.g. \"http://127.0.0.1:9093\""
                    ),
                ));
            }
        }
        if let Some(url) = &self.external_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            p.push(Problem::new(
                &at("external_url"),
                format!("external_url = {url:?} must start with http:// or https://"),
            ));
        }
        for name in self.external_labels.keys() {
            if !crate::metrics_config::valid_label_name(name) {
                p.push(Problem::new(
                    &at("external_labels"),
                    format!("external label {name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                ));
            }
        }
        let inline = self.route.is_some()
            || !self.receivers.is_empty()
            || !self.inhibit_rules.is_empty()
            || !self.time_intervals.is_empty()
            || self.global.is_some();
        if self.alertmanager_config.is_some() && inline {
            p.push(Problem::new(
                &at("alertmanager_config"),
                "alertmanager_config names a file, and [alerting] also has global/route/receivers/inhibit_rules/time_intervals; keep one of the two",
            ));
        }
        p
    }

    /// The Alertmanager configuration written inline in ferry.toml.
    pub fn inline_alertmanager(&self) -> ferry_alert::config::AlertmanagerConfig {
        ferry_alert::config::AlertmanagerConfig {
            global: self.global.clone().unwrap_or_default(),
            route: self.route.clone(),
            inhibit_rules: self.inhibit_rules.clone(),
            receivers: self.receivers.clone(),
            time_intervals: self.time_intervals.clone(),
            ..Default::default()
        }
    }
}
