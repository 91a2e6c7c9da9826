//! PagerDuty Events API v2: one alert per group, deduplicated by the hex
//! SHA-256 of the group key. A firing group triggers, a resolved one
//! resolves, and an acknowledgement in Ferry acknowledges (which
//! Alertmanager cannot do). 202 (any 2xx) is success; 429 and 5xx are
//! retried; 400 (a malformed event) and other codes are not.

use super::{
    Action, DEFAULT_PAGERDUTY_URL, DEFAULT_TIMEOUT, Inner, Integration, Kind, SendError, at,
    check_url, default_subject, expand, go_time, post_json, secret, status_error, text_alert_list,
    truncate_chars,
};
use ferry_alert::config::{Global, PagerdutyConfig, Secret};
use ferry_alert::notify::{Notification, Status};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// PagerDuty's limit on `payload.summary`, in characters.
const SUMMARY_MAX_CHARS: usize = 1024;

#[derive(Debug)]
pub(super) struct Pagerduty {
    routing_key: Secret,
    url: Secret,
    client: String,
    client_url: Option<String>,
    description: Option<String>,
    severity: Option<String>,
    source: Option<String>,
    component: Option<String>,
    group: Option<String>,
    class: Option<String>,
    details: BTreeMap<String, String>,
    http: reqwest::Client,
}

pub(super) fn build(
    receiver: &str,
    index: usize,
    c: &PagerdutyConfig,
    global: &Global,
    http: &reqwest::Client,
) -> Result<Integration, String> {
    let place = at(receiver, Kind::Pagerduty, index);
    let routing_key = secret(
        &place,
        "routing_key",
        c.routing_key.as_ref(),
        c.routing_key_file.as_deref(),
    )?
    .ok_or_else(|| format!("{place}: routing_key (or routing_key_file) is required"))?;
    let url = c
        .url
        .clone()
        .or_else(|| global.pagerduty_url.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PAGERDUTY_URL.to_string());
    let url = Secret(url);
    check_url(&place, "url", &url)?;
    let set = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(Integration {
        receiver: receiver.to_string(),
        kind: Kind::Pagerduty,
        index,
        send_resolved: c.send_resolved,
        timeout: DEFAULT_TIMEOUT,
        secrets: vec![routing_key.clone()],
        inner: Inner::Pagerduty(Pagerduty {
            routing_key,
            url,
            client: set(&c.client).unwrap_or_else(|| "Ferry".to_string()),
            client_url: set(&c.client_url),
            description: set(&c.description),
            severity: set(&c.severity),
            source: set(&c.source),
            component: set(&c.component),
            group: set(&c.group),
            class: set(&c.class),
            details: c.details.clone(),
            http: http.clone(),
        }),
    })
}

/// The hex SHA-256 of the group key: PagerDuty's `dedup_key` for it.
pub fn dedup_key(group_key: &str) -> String {
    Sha256::digest(group_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PagerDuty's severity for Ferry's (the common `severity` label):
/// `emergency` and `critical` are critical, `warning` and `info` as such,
/// anything else `error`.
pub fn severity(label: Option<&str>) -> &'static str {
    match label.map(str::to_ascii_lowercase).as_deref() {
        Some("emergency" | "critical") => "critical",
        Some("error") => "error",
        Some("warning") => "warning",
        Some("info") => "info",
        _ => "error",
    }
}

impl Pagerduty {
    pub(super) fn event(&self, n: &Notification, action: Action) -> Result<Value, SendError> {
        let event_action = match (action, n.status) {
            (Action::Acknowledge, _) => "acknowledge",
            (Action::Notify, Status::Firing) => "trigger",
            (Action::Notify, Status::Resolved) => "resolve",
        };
        let mut ev = json!({
            "routing_key": self.routing_key.expose().trim(),
            "event_action": event_action,
            "dedup_key": dedup_key(&n.group_key),
        });
        if action == Action::Acknowledge {
            return Ok(ev);
        }
        let opt = |what: &str, t: &Option<String>| -> Result<Option<String>, SendError> {
            t.as_ref().map(|t| expand(what, t, n)).transpose()
        };
        let summary = match &self.description {
            Some(t) => expand("description", t, n)?,
            None => default_subject(n),
        };
        let severity = match opt("severity", &self.severity)? {
            Some(s) => s,
            None => severity(n.common_labels.get("severity").map(String::as_str)).to_string(),
        };
        let timestamp = n
            .firing()
            .map(|a| a.starts_at)
            .min()
            .or_else(|| n.alerts.iter().map(|a| a.ends_at).max())
            .filter(|t| *t != 0)
            .map(go_time);
        let mut details = Map::new();
        details.insert("firing".into(), json!(text_alert_list(n.firing())));
        details.insert("resolved".into(), json!(text_alert_list(n.resolved())));
        details.insert("num_firing".into(), json!(n.firing().count()));
        details.insert("num_resolved".into(), json!(n.resolved().count()));
        for (k, t) in &self.details {
            details.insert(k.clone(), json!(expand(&format!("details.{k}"), t, n)?));
        }
        let mut payload = json!({
            "summary": truncate_chars(&summary, SUMMARY_MAX_CHARS),
            "source": opt("source", &self.source)?.unwrap_or_else(|| self.client.clone()),
            "severity": severity,
            "custom_details": details,
        });
        if let Some(t) = timestamp {
            payload["timestamp"] = json!(t);
        }
        for (key, t) in [
            ("component", &self.component),
            ("group", &self.group),
            ("class", &self.class),
        ] {
            if let Some(v) = opt(key, t)? {
                payload[key] = json!(v);
            }
        }
        ev["payload"] = payload;
        ev["client"] = json!(self.client);
        let client_url = match opt("client_url", &self.client_url)? {
            Some(u) => u,
            None => n.external_url.clone(),
        };
        if !client_url.is_empty() {
            ev["client_url"] = json!(client_url);
        }
        Ok(ev)
    }

    pub(super) async fn send(&self, n: &Notification, action: Action) -> Result<(), SendError> {
        let body = self.event(n, action)?;
        let resp = post_json(&self.http, &self.url, &body).await?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        Err(status_error(resp, code == 429 || code >= 500).await)
    }
}
