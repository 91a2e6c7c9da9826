//! Alertmanager's configuration, read from its own YAML (`alertmanager.yml`)
//! or from the same tables in ferry.toml (`[alerting]`): `global`, `route`,
//! `receivers`, `inhibit_rules`, `time_intervals`. Field names and defaults
//! are Alertmanager's; unknown fields are errors, as in Alertmanager.

use crate::duration::PromDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value never printed, logged or serialized back: receiver URLs, keys
/// and passwords.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<secret>")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    #[serde(default)]
    pub global: Global,
    #[serde(default)]
    pub route: Option<RouteConfig>,
    #[serde(default)]
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    #[serde(default)]
    pub time_intervals: Vec<TimeIntervalConfig>,
    /// Deprecated name of `time_intervals`, still accepted.
    #[serde(default)]
    pub mute_time_intervals: Vec<TimeIntervalConfig>,
    /// Template files (Alertmanager's `templates:`), globs.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// `global:` defaults for every receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// An alert without `endsAt` is resolved this long after its last
    /// update (default 5m).
    #[serde(default = "default_resolve_timeout")]
    pub resolve_timeout: PromDuration,
    #[serde(default)]
    pub smtp_from: Option<String>,
    /// `host:port`.
    #[serde(default)]
    pub smtp_smarthost: Option<String>,
    #[serde(default)]
    pub smtp_hello: Option<String>,
    #[serde(default)]
    pub smtp_auth_username: Option<String>,
    #[serde(default)]
    pub smtp_auth_password: Option<Secret>,
    #[serde(default)]
    pub smtp_auth_password_file: Option<String>,
    #[serde(default)]
    pub smtp_auth_identity: Option<String>,
    /// Default true: STARTTLS is required.
    #[serde(default)]
    pub smtp_require_tls: Option<bool>,
    #[serde(default)]
    pub slack_api_url: Option<Secret>,
    #[serde(default)]
    pub slack_api_url_file: Option<String>,
    /// Default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default)]
    pub pagerduty_url: Option<String>,
    #[serde(default)]
    pub http_config: Option<serde_json::Value>,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            resolve_timeout: default_resolve_timeout(),
            smtp_from: None,
            smtp_smarthost: None,
            smtp_hello: None,
            smtp_auth_username: None,
            smtp_auth_password: None,
            smtp_auth_password_file: None,
            smtp_auth_identity: None,
            smtp_require_tls: None,
            slack_api_url: None,
            slack_api_url_file: None,
            pagerduty_url: None,
            http_config: None,
        }
    }
}

fn default_resolve_timeout() -> PromDuration {
    PromDuration(5 * 60 * 1000)
}

/// One node of the routing tree. Unset fields are inherited from the
/// parent; the root's defaults are Alertmanager's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub receiver: Option<String>,
    /// Label names, or `["..."]` for all labels.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// `name="value"` strings (Alertmanager's matcher syntax).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Deprecated equality matchers.
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// Deprecated regex matchers.
    #[serde(default)]
    pub match_re: BTreeMap<String, String>,
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    #[serde(default)]
    pub group_wait: Option<PromDuration>,
    #[serde(default)]
    pub group_interval: Option<PromDuration>,
    #[serde(default)]
    pub repeat_interval: Option<PromDuration>,
    #[serde(default)]
    pub mute_time_intervals: Vec<String>,
    #[serde(default)]
    pub active_time_intervals: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Route labels, inherited by child routes (Alertmanager v0.34+;
    /// given to receivers as `routeLabels`, not templated here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRuleConfig {
    /// Optional name, for logs and history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub source_matchers: Vec<String>,
    #[serde(default)]
    pub target_matchers: Vec<String>,
    #[serde(default)]
    pub source_match: BTreeMap<String, String>,
    #[serde(default)]
    pub source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    pub target_match: BTreeMap<String, String>,
    #[serde(default)]
    pub target_match_re: BTreeMap<String, String>,
    /// Labels that must be equal in source and target (missing = empty).
    #[serde(default)]
    pub equal: Vec<String>,
}

/// A named receiver and its integrations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(default)]
    pub webhook_configs: Vec<WebhookConfig>,
    #[serde(default)]
    pub slack_configs: Vec<SlackConfig>,
    #[serde(default)]
    pub pagerduty_configs: Vec<PagerdutyConfig>,
    #[serde(default)]
    pub email_configs: Vec<EmailConfig>,
}

fn yes() -> bool {
    true
}

/// Alertmanager's webhook, version-4 payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub url: Option<Secret>,
    #[serde(default)]
    pub url_file: Option<String>,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// At most this many alerts per message (0: all).
    #[serde(default)]
    pub max_alerts: usize,
    #[serde(default)]
    pub timeout: Option<PromDuration>,
    #[serde(default)]
    pub http_config: Option<serde_json::Value>,
}

/// A Slack incoming webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Default: `global.slack_api_url`.
    #[serde(default)]
    pub api_url: Option<Secret>,
    #[serde(default)]
    pub api_url_file: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub send_resolved: bool,
    #[serde(default)]
    pub http_config: Option<serde_json::Value>,
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerdutyConfig {
    #[serde(default)]
    pub routing_key: Option<Secret>,
    #[serde(default)]
    pub routing_key_file: Option<String>,
    /// Default: `global.pagerduty_url`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub client_url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `critical`, `error`, `warning` or `info` (a template; default
    /// `error`, or the alert's severity when it is one of those).
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default)]
    pub http_config: Option<serde_json::Value>,
}

/// Email over SMTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: String,
    /// Default: `global.smtp_from`.
    #[serde(default)]
    pub from: Option<String>,
    /// `host:port`; default `global.smtp_smarthost`.
    #[serde(default)]
    pub smarthost: Option<String>,
    #[serde(default)]
    pub hello: Option<String>,
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub auth_password: Option<Secret>,
    #[serde(default)]
    pub auth_password_file: Option<String>,
    #[serde(default)]
    pub auth_identity: Option<String>,
    /// STARTTLS required (default `global.smtp_require_tls`, true).
    #[serde(default)]
    pub require_tls: Option<bool>,
    /// Ferry's own: implicit TLS (SMTPS, port 465) instead of STARTTLS.
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub send_resolved: bool,
    #[serde(default)]
    pub tls_config: Option<serde_json::Value>,
}

/// A named set of time ranges (`time_intervals:`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeIntervalConfig {
    pub name: String,
    #[serde(default)]
    pub time_intervals: Vec<TimeIntervalSpec>,
}

/// Every listed field must match (an empty field matches anything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeIntervalSpec {
    #[serde(default)]
    pub times: Vec<TimeRangeSpec>,
    /// `monday`, `monday:friday`.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// `1`, `1:5`, `-1` (last day).
    #[serde(default)]
    pub days_of_month: Vec<String>,
    /// `january`, `1:3`.
    #[serde(default)]
    pub months: Vec<String>,
    /// `2026`, `2026:2027`.
    #[serde(default)]
    pub years: Vec<String>,
    /// An IANA time zone name (default UTC).
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeSpec {
    /// `HH:MM`, inclusive.
    pub start_time: String,
    /// `HH:MM`, exclusive (`24:00` allowed).
    pub end_time: String,
}

/// A configuration error: where (`file:line:col` when the YAML parser knows
/// it, else the file and the place in the tree) and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The configuration, checked and compiled for the dispatcher.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub route: crate::route::Route,
    pub inhibit_rules: Vec<crate::inhibit::InhibitRule>,
    pub time_intervals: crate::timeinterval::TimeIntervals,
    pub receivers: Vec<ReceiverConfig>,
    /// `global.resolve_timeout` in ms.
    pub resolve_timeout: i64,
    /// Non-fatal findings (e.g. `repeat_interval` below `group_interval`).
    pub warnings: Vec<String>,
}

impl Compiled {
    pub fn receiver(&self, name: &str) -> Option<&ReceiverConfig> {
        self.receivers.iter().find(|r| r.name == name)
    }
}

impl AlertmanagerConfig {
    /// Reads `alertmanager.yml`. Syntax and type errors are
    /// `file:line:col: message`; the result is not yet validated (see
    /// [`AlertmanagerConfig::compile`]).
    pub fn from_yaml(path: &str, text: &str) -> Result<AlertmanagerConfig, ConfigError> {
        serde_saphyr::from_str::<AlertmanagerConfig>(text).map_err(|e| {
            let msg = yaml_message(&e);
            match e.location() {
                Some(l) => ConfigError(format!("{path}:{}:{}: {msg}", l.line(), l.column())),
                None => ConfigError(format!("{path}: {msg}")),
            }
        })
    }

    /// [`AlertmanagerConfig::from_yaml`] then [`AlertmanagerConfig::compile`],
    /// errors prefixed with the file name.
    pub fn load_yaml(path: &str, text: &str) -> Result<Compiled, ConfigError> {
        let c = Self::from_yaml(path, text)?;
        c.compile()
            .map_err(|e| ConfigError(format!("{path}: {}", e.0)))
    }

    /// Checks what Alertmanager's `config.Load` checks, independent of the
    /// file format. Returns warnings.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        self.compile().map(|c| c.warnings)
    }

    /// Validates and compiles: the route tree with inherited options and
    /// defaults, inhibit rules, time intervals.
    pub fn compile(&self) -> Result<Compiled, ConfigError> {
        let err = |s: String| ConfigError(s);
        let mut names = std::collections::BTreeSet::new();
        for r in &self.receivers {
            if r.name.is_empty() {
                return Err(err("missing name in receiver".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err(err(format!(
                    "notification config name {:?} is not unique",
                    r.name
                )));
            }
            for (i, w) in r.webhook_configs.iter().enumerate() {
                if w.url.is_none() == w.url_file.is_none() {
                    return Err(err(format!(
                        "receiver {:?}: webhook_configs[{i}]: one of url or url_file must be configured",
                        r.name
                    )));
                }
            }
            for (i, s) in r.slack_configs.iter().enumerate() {
                if s.api_url.is_some() && s.api_url_file.is_some() {
                    return Err(err(format!(
                        "receiver {:?}: slack_configs[{i}]: at most one of api_url & api_url_file must be configured",
                        r.name
                    )));
                }
                if s.api_url.is_none()
                    && s.api_url_file.is_none()
                    && self.global.slack_api_url.is_none()
                    && self.global.slack_api_url_file.is_none()
                {
                    return Err(err(format!(
                        "receiver {:?}: slack_configs[{i}]: no global Slack API URL set",
                        r.name
                    )));
                }
            }
            for (i, p) in r.pagerduty_configs.iter().enumerate() {
                if p.routing_key.is_none() == p.routing_key_file.is_none() {
                    return Err(err(format!(
                        "receiver {:?}: pagerduty_configs[{i}]: exactly one of routing_key or routing_key_file must be configured",
                        r.name
                    )));
                }
            }
            for (i, e) in r.email_configs.iter().enumerate() {
                if e.to.is_empty() {
                    return Err(err(format!(
                        "receiver {:?}: email_configs[{i}]: missing to address",
                        r.name
                    )));
                }
                if e.smarthost.is_none() && self.global.smtp_smarthost.is_none() {
                    return Err(err(format!(
                        "receiver {:?}: email_configs[{i}]: no global SMTP smarthost set",
                        r.name
                    )));
                }
                if e.from.is_none() && self.global.smtp_from.is_none() {
                    return Err(err(format!(
                        "receiver {:?}: email_configs[{i}]: no global SMTP from set",
                        r.name
                    )));
                }
            }
        }
        if self.global.smtp_auth_password.is_some() && self.global.smtp_auth_password_file.is_some()
        {
            return Err(err(
                "at most one of smtp_auth_password & smtp_auth_password_file must be configured"
                    .into(),
            ));
        }
        if self.global.slack_api_url.is_some() && self.global.slack_api_url_file.is_some() {
            return Err(err(
                "at most one of slack_api_url & slack_api_url_file must be configured".into(),
            ));
        }
        let Some(root) = &self.route else {
            return Err(err("no routes provided".into()));
        };
        if root.receiver.as_deref().unwrap_or("").is_empty() {
            return Err(err("root route must specify a default receiver".into()));
        }
        if !root.matchers.is_empty() || !root.match_.is_empty() || !root.match_re.is_empty() {
            return Err(err("root route must not have any matchers".into()));
        }
        if root.continue_ {
            return Err(err("cannot have continue in root route".into()));
        }
        if !root.mute_time_intervals.is_empty() {
            return Err(err(
                "root route must not have any mute time intervals".into()
            ));
        }
        if !root.active_time_intervals.is_empty() {
            return Err(err(
                "root route must not have any active time intervals".into()
            ));
        }
        let mut ti_names = std::collections::BTreeSet::new();
        for t in &self.mute_time_intervals {
            if t.name.is_empty() {
                return Err(err("missing name in mute time interval".into()));
            }
            if !ti_names.insert(t.name.as_str()) {
                return Err(err(format!(
                    "mute time interval {:?} is not unique",
                    t.name
                )));
            }
        }
        for t in &self.time_intervals {
            if t.name.is_empty() {
                return Err(err("missing name in time interval".into()));
            }
            if !ti_names.insert(t.name.as_str()) {
                return Err(err(format!("time interval {:?} is not unique", t.name)));
            }
        }
        let mut warnings = Vec::new();
        check_route(root, "route", &names, &ti_names, None, &mut warnings)?;
        let mut all_ti = self.mute_time_intervals.clone();
        all_ti.extend(self.time_intervals.iter().cloned());
        let time_intervals = crate::timeinterval::compile_all(&all_ti).map_err(err)?;
        let mut inhibit_rules = Vec::new();
        for (i, r) in self.inhibit_rules.iter().enumerate() {
            for n in &r.equal {
                if n.is_empty() {
                    return Err(err(format!(
                        "inhibit_rules[{i}]: invalid label name \"\" in equal list"
                    )));
                }
            }
            inhibit_rules.push(
                crate::inhibit::InhibitRule::compile(r)
                    .map_err(|e| err(format!("inhibit_rules[{i}]: {e}")))?,
            );
        }
        let route = crate::route::Route::build(root).map_err(err)?;
        if self.global.resolve_timeout.millis() <= 0 {
            return Err(err("global.resolve_timeout must be positive".into()));
        }
        Ok(Compiled {
            route,
            inhibit_rules,
            time_intervals,
            receivers: self.receivers.clone(),
            resolve_timeout: self.global.resolve_timeout.millis(),
            warnings,
        })
    }
}

fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    // The rendered message may repeat the position; keep the first line.
    let first = full.lines().next().unwrap_or("");
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

fn check_route(
    r: &RouteConfig,
    at: &str,
    receivers: &std::collections::BTreeSet<&str>,
    intervals: &std::collections::BTreeSet<&str>,
    inherited: Option<(i64, i64)>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let err = |m: String| ConfigError(format!("{at}: {m}"));
    if let Some(recv) = &r.receiver
        && !recv.is_empty()
        && !receivers.contains(recv.as_str())
    {
        return Err(err(format!("undefined receiver {recv:?} used in route")));
    }
    for k in r.match_.keys().chain(r.match_re.keys()) {
        if !valid_legacy_label_name(k) {
            return Err(err(format!("invalid label name {k:?}")));
        }
    }
    for m in &r.matchers {
        crate::matcher::parse_matchers(m)
            .map_err(|e| err(format!("invalid matcher {m:?}: {}", e.0)))?;
    }
    for (k, v) in &r.match_re {
        crate::matcher::Matcher::new(k, crate::matcher::MatchOp::Regex, v).map_err(|e| err(e.0))?;
    }
    if let Some(gb) = &r.group_by {
        let mut seen = std::collections::BTreeSet::new();
        let all = gb.iter().any(|g| g == "...");
        if all && gb.len() > 1 {
            return Err(err(
                "cannot have wildcard group_by (`...`) and other labels at the same time".into(),
            ));
        }
        for g in gb {
            if g.is_empty() {
                return Err(err("invalid label name \"\" in group_by list".into()));
            }
            if !seen.insert(g) {
                return Err(err(format!("duplicated label {g:?} in group_by")));
            }
        }
    }
    if r.group_interval.is_some_and(|d| d.millis() == 0) {
        return Err(err("group_interval cannot be zero".into()));
    }
    if r.repeat_interval.is_some_and(|d| d.millis() == 0) {
        return Err(err("repeat_interval cannot be zero".into()));
    }
    for t in r.mute_time_intervals.iter().chain(&r.active_time_intervals) {
        if !intervals.contains(t.as_str()) {
            return Err(err(format!("undefined time interval {t:?} used in route")));
        }
    }
    let (gi0, ri0) = inherited.unwrap_or((
        crate::route::DEFAULT_GROUP_INTERVAL,
        crate::route::DEFAULT_REPEAT_INTERVAL,
    ));
    let gi = r.group_interval.map_or(gi0, |d| d.millis());
    let ri = r.repeat_interval.map_or(ri0, |d| d.millis());
    if ri < gi && (r.group_interval.is_some() || r.repeat_interval.is_some()) {
        warnings.push(format!(
            "{at}: repeat_interval {} is less than group_interval {}: notifications repeat every group_interval at most",
            PromDuration(ri),
            PromDuration(gi)
        ));
    }
    for (i, c) in r.routes.iter().enumerate() {
        check_route(
            c,
            &format!("{at}.routes[{i}]"),
            receivers,
            intervals,
            Some((gi, ri)),
            warnings,
        )?;
    }
    Ok(())
}

fn valid_legacy_label_name(k: &str) -> bool {
    let mut cs = k.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The receiver names of [`ferry_default_route`].
pub const FERRY_DEFAULT_RECEIVERS: [&str; 4] = ["record", "email", "slack", "pagerduty"];

/// Ferry's default routing by `severity`: `info` → `record` (history only,
/// no integrations), `warning` → `email`, `critical` → `slack` then
/// `email`, `emergency` → `pagerduty`; anything else → `record`. Grouped by
/// `alertname` and `service`.
pub fn ferry_default_route() -> RouteConfig {
    let sev = |s: &str, recv: &str, cont: bool| RouteConfig {
        matchers: vec![format!("severity=\"{s}\"")],
        receiver: Some(recv.to_string()),
        continue_: cont,
        ..Default::default()
    };
    RouteConfig {
        receiver: Some("record".into()),
        group_by: Some(vec!["alertname".into(), "service".into()]),
        routes: vec![
            sev("info", "record", false),
            sev("warning", "email", false),
            sev("critical", "slack", true),
            sev("critical", "email", false),
            sev("emergency", "pagerduty", false),
        ],
        ..Default::default()
    }
}

/// Receivers for [`ferry_default_route`], without integrations (the
/// daemon fills them from its own settings).
pub fn ferry_default_receivers() -> Vec<ReceiverConfig> {
    FERRY_DEFAULT_RECEIVERS
        .iter()
        .map(|n| ReceiverConfig {
            name: n.to_string(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../testdata/alertmanager.yml");

    fn cfg(yaml: &str) -> AlertmanagerConfig {
        AlertmanagerConfig::from_yaml("t.yml", yaml).unwrap()
    }

    #[test]
    fn parses_a_realistic_file() {
        let c = AlertmanagerConfig::load_yaml("alertmanager.yml", GOOD).unwrap();
        assert_eq!(c.receivers.len(), 7);
        assert_eq!(c.resolve_timeout, 300_000);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let r = &c.route;
        assert_eq!(r.receiver, "team-ops-mails");
        assert_eq!(r.repeat_interval, 3 * 3_600_000);
        assert_eq!(r.routes.len(), 4);
        assert_eq!(r.routes[0].key, r#"{}/{service=~"foo1|foo2|baz"}"#);
        assert_eq!(r.routes[2].key, r#"{}/{service="database"}"#);
        assert_eq!(
            r.routes[2].routes[1].key,
            r#"{}/{service="database"}/{owner=~"team-(Y|Z)"}"#
        );
        assert_eq!(r.routes[3].matchers[0].value, "slack");
        assert_eq!(r.routes[3].group_by, crate::route::GroupBy::All);
        assert_eq!(
            r.routes[0].routes[0].repeat_interval,
            3 * 3_600_000,
            "inherited"
        );
        assert_eq!(c.inhibit_rules.len(), 1);
        assert_eq!(c.time_intervals["offhours"].len(), 2);
        let labels: crate::alert::LabelSet = [("service", "database"), ("owner", "team-X")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names: Vec<_> = r
            .match_routes(&labels)
            .iter()
            .map(|r| r.receiver.as_str())
            .collect();
        assert_eq!(
            names,
            ["team-X-pager"],
            "continue but no later sibling matches"
        );
        // Secrets are never serialized back.
        let raw = cfg(GOOD);
        let json = serde_json::to_string(&raw).unwrap();
        assert!(!json.contains("hunter2") && !json.contains("0123456789abcdef0123"));
        assert!(json.contains("<secret>"));
    }

    #[test]
    fn yaml_errors_are_located() {
        let bad = include_str!("../testdata/alertmanager-bad.yml");
        let e = AlertmanagerConfig::from_yaml("alertmanager-bad.yml", bad)
            .unwrap_err()
            .0;
        assert!(e.starts_with("alertmanager-bad.yml:5:"), "{e}");
        assert!(e.contains("duration"), "{e}");
        assert_eq!(
            e,
            r#"alertmanager-bad.yml:5:15: not a valid duration string: "soon""#
        );
        let e = AlertmanagerConfig::from_yaml("x.yml", "route:\n  receiver: a\n  bogus: 1\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("x.yml:3:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = AlertmanagerConfig::from_yaml("x.yml", "route: [\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("x.yml:"), "{e}");
    }

    #[test]
    fn validation_as_alertmanager() {
        let invalid = include_str!("../testdata/alertmanager-invalid.yml");
        let e = AlertmanagerConfig::load_yaml("am.yml", invalid)
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            r#"am.yml: route.routes[0]: undefined receiver "db-pager" used in route"#
        );
        let cases = [
            ("receivers: [{name: a}]", "no routes provided"),
            (
                "route: {}\nreceivers: [{name: a}]",
                "root route must specify a default receiver",
            ),
            (
                "route: {receiver: a, matchers: ['x=y']}\nreceivers: [{name: a}]",
                "root route must not have any matchers",
            ),
            (
                "route: {receiver: a, continue: true}\nreceivers: [{name: a}]",
                "cannot have continue in root route",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a}, {name: a}]",
                "is not unique",
            ),
            (
                "route: {receiver: a, group_by: [x, x]}\nreceivers: [{name: a}]",
                "duplicated label \"x\"",
            ),
            (
                "route: {receiver: a, group_by: ['...', x]}\nreceivers: [{name: a}]",
                "wildcard group_by",
            ),
            (
                "route: {receiver: a, group_interval: 0s}\nreceivers: [{name: a}]",
                "group_interval cannot be zero",
            ),
            (
                "route: {receiver: a, routes: [{mute_time_intervals: [nope]}]}\nreceivers: [{name: a}]",
                "undefined time interval \"nope\"",
            ),
            (
                "route: {receiver: a, mute_time_intervals: [x]}\nreceivers: [{name: a}]",
                "mute time intervals",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a}]\ninhibit_rules: [{source_matchers: ['a=~\"(\"']}]",
                "inhibit_rules[0]",
            ),
            (
                "route: {receiver: a, routes: [{matchers: ['a=~\"(\"']}]}\nreceivers: [{name: a}]",
                "invalid matcher",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a}]\ntime_intervals: [{name: t}, {name: t}]",
                "time interval \"t\" is not unique",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a}]\ntime_intervals: [{name: t, time_intervals: [{days_of_month: ['0']}]}]",
                "not a valid day",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a, email_configs: [{to: x@y}]}]",
                "smarthost",
            ),
            (
                "route: {receiver: a}\nreceivers: [{name: a, webhook_configs: [{}]}]",
                "url",
            ),
        ];
        for (yaml, want) in cases {
            let e = cfg(yaml).compile().unwrap_err().0;
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let w = cfg("route: {receiver: a, group_interval: 10m, repeat_interval: 5m}\nreceivers: [{name: a}]")
            .validate()
            .unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("repeat_interval 5m is less than group_interval 10m"),
            "{w:?}"
        );
    }

    #[test]
    fn toml_shares_the_shapes() {
        // The same structs read from JSON (as from TOML) validate the same.
        let c: AlertmanagerConfig = serde_json::from_str(
            r#"{"route":{"receiver":"a","routes":[{"matchers":["x=\"1\""],"receiver":"b"}]},
                "receivers":[{"name":"a"}]}"#,
        )
        .unwrap();
        assert!(
            c.compile()
                .unwrap_err()
                .0
                .contains("undefined receiver \"b\"")
        );
    }

    #[test]
    fn ferry_defaults() {
        let c = AlertmanagerConfig {
            route: Some(ferry_default_route()),
            receivers: ferry_default_receivers(),
            ..Default::default()
        };
        let c = c.compile().unwrap();
        let route_of = |sev: &str| {
            let l: crate::alert::LabelSet = [
                ("alertname".to_string(), "X".to_string()),
                ("severity".to_string(), sev.to_string()),
            ]
            .into();
            c.route
                .match_routes(&l)
                .iter()
                .map(|r| r.receiver.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(route_of("info"), ["record"]);
        assert_eq!(route_of("warning"), ["email"]);
        assert_eq!(route_of("critical"), ["slack", "email"]);
        assert_eq!(route_of("emergency"), ["pagerduty"]);
        assert_eq!(route_of("other"), ["record"]);
    }
}
