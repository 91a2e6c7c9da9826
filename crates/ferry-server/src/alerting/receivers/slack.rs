//! A Slack incoming webhook: `{"text": fallback, "blocks": [...]}`. The
//! header is the `title` template (default: Alertmanager's subject,
//! `[FIRING:2] HighLatency api`); the body is the `text` template when
//! given, else one section per alert (name, summary, description,
//! labels), firing first. Success is 2xx (Slack answers 200 `ok`); 429 and
//! 5xx are retried.

use super::{
    DEFAULT_TIMEOUT, Inner, Integration, Kind, SendError, at, check_url, default_subject, expand,
    post_json, secret, status_error, truncate, truncate_chars,
};
use ferry_alert::config::{Global, Secret, SlackConfig};
use ferry_alert::notify::{Notification, NotifyAlert};
use serde_json::{Value, json};

/// Slack's limits: a header's text, a section's text, blocks per message.
const HEADER_MAX_CHARS: usize = 150;
const SECTION_MAX_BYTES: usize = 3000;
/// Sections of alerts per status; the rest are counted.
const MAX_ALERT_SECTIONS: usize = 20;

#[derive(Debug)]
pub(super) struct Slack {
    url: Secret,
    channel: Option<String>,
    username: Option<String>,
    title: Option<String>,
    text: Option<String>,
    http: reqwest::Client,
}

pub(super) fn build(
    receiver: &str,
    index: usize,
    c: &SlackConfig,
    global: &Global,
    http: &reqwest::Client,
) -> Result<Integration, String> {
    let place = at(receiver, Kind::Slack, index);
    let url = match secret(
        &place,
        "api_url",
        c.api_url.as_ref(),
        c.api_url_file.as_deref(),
    )? {
        Some(u) => u,
        None => secret(
            &place,
            "global.slack_api_url",
            global.slack_api_url.as_ref(),
            global.slack_api_url_file.as_deref(),
        )?
        .ok_or_else(|| {
            format!("{place}: api_url (or api_url_file, or global.slack_api_url) is required")
        })?,
    };
    check_url(&place, "api_url", &url)?;
    let set = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(Integration {
        receiver: receiver.to_string(),
        kind: Kind::Slack,
        index,
        send_resolved: c.send_resolved,
        timeout: DEFAULT_TIMEOUT,
        secrets: vec![url.clone()],
        inner: Inner::Slack(Slack {
            url,
            channel: set(&c.channel),
            username: set(&c.username),
            title: set(&c.title),
            text: set(&c.text),
            http: http.clone(),
        }),
    })
}

impl Slack {
    pub(super) fn message(&self, n: &Notification) -> Result<Value, SendError> {
        let title = match &self.title {
            Some(t) => expand("title", t, n)?,
            None => default_subject(n),
        };
        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate_chars(&title, HEADER_MAX_CHARS), "emoji": true},
        })];
        match &self.text {
            Some(t) => {
                let text = expand("text", t, n)?;
                if !text.trim().is_empty() {
                    blocks.push(section(&text));
                }
            }
            None => {
                let firing: Vec<&NotifyAlert> = n.firing().collect();
                let resolved: Vec<&NotifyAlert> = n.resolved().collect();
                alert_sections(&mut blocks, "Firing", &firing);
                alert_sections(&mut blocks, "Resolved", &resolved);
            }
        }
        if !n.external_url.is_empty() {
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": format!("Sent by Ferry · <{}|{}>", n.external_url, escape(&n.external_url))}],
            }));
        }
        let mut msg = json!({"text": title, "blocks": blocks});
        if let Some(c) = &self.channel {
            msg["channel"] = json!(c);
        }
        if let Some(u) = &self.username {
            msg["username"] = json!(u);
        }
        Ok(msg)
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), SendError> {
        let body = self.message(n)?;
        let resp = post_json(&self.http, &self.url, &body).await?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        Err(status_error(resp, code == 429 || code >= 500).await)
    }
}

fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_MAX_BYTES)}})
}

/// `*Firing (2)*`, then a section per alert: its name, summary and
/// description, and its other labels.
fn alert_sections(blocks: &mut Vec<Value>, what: &str, alerts: &[&NotifyAlert]) {
    if alerts.is_empty() {
        return;
    }
    blocks.push(section(&format!("*{what} ({})*", alerts.len())));
    for a in alerts.iter().take(MAX_ALERT_SECTIONS) {
        let name = a.labels.get("alertname").map(String::as_str).unwrap_or("");
        let mut s = format!("*{}*", escape(name));
        if let Some(v) = a.annotations.get("summary") {
            s.push_str(&format!(" — {}", escape(v)));
        }
        if let Some(v) = a.annotations.get("description") {
            s.push_str(&format!("\n{}", escape(v)));
        }
        let labels: Vec<String> = a
            .labels
            .iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("`{k}={}`", v.replace('`', "'")))
            .collect();
        if !labels.is_empty() {
            s.push('\n');
            s.push_str(&labels.join(" "));
        }
        if !a.generator_url.is_empty() {
            s.push_str(&format!("\n<{}|Source>", a.generator_url));
        }
        blocks.push(section(&s));
    }
    if alerts.len() > MAX_ALERT_SECTIONS {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("…and {} more", alerts.len() - MAX_ALERT_SECTIONS)}],
        }));
    }
}

/// Slack's mrkdwn escapes: `&`, `<`, `>`.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
