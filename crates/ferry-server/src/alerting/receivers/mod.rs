//! Notification receivers: the integrations of Alertmanager's `receivers:`
//! (webhook, Slack, PagerDuty Events v2, email over SMTP), built once from
//! the configuration and sent one [`Notification`] (one alert group) at a
//! time.
//!
//! - [`build_receivers`] turns `receivers:` (with `global:` defaults
//!   applied, `*_file` secrets read) into [`Integration`]s, refusing a
//!   missing URL, key, address or smarthost with an error that names the
//!   receiver and the field.
//! - [`Integration::send`] sends once, within the integration's timeout,
//!   and says whether a failure is worth retrying ([`SendError`]).
//! - [`deliver`] retries retryable failures with exponential backoff and
//!   reports every attempt to the caller, which records it.
//!
//! The daemon runs one task per alert group × integration: a slow or dead
//! receiver only delays its own notifications, never another receiver's,
//! another group's, or the evaluation of rules.
//!
//! Secrets (webhook and Slack URLs, PagerDuty routing keys, SMTP passwords)
//! are held as [`Secret`]s: they are never in an error message, a log line
//! or `Debug` output.

mod email;
mod pagerduty;
pub mod retry;
mod slack;
mod webhook;

#[cfg(test)]
mod tests;

pub use retry::{Attempt, Outcome, RetryPolicy, deliver};

use ferry_alert::config::{Global, ReceiverConfig, Secret};
use ferry_alert::notify::{Notification, NotifyAlert, Status};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one send may take, unless the integration says otherwise
/// (a webhook's `timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// PagerDuty's Events API v2 endpoint (`global.pagerduty_url`'s default).
pub const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// What a notification asks of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The group fires (or resolved): tell the receiver.
    Notify,
    /// Someone acknowledged the group in Ferry. Only PagerDuty has the
    /// notion (`event_action: acknowledge`); the others ignore it.
    Acknowledge,
}

/// Which integration of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Webhook,
    Slack,
    Pagerduty,
    Email,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Slack => "slack",
            Kind::Pagerduty => "pagerduty",
            Kind::Email => "email",
        }
    }
    /// The list it comes from in a receiver's configuration.
    pub fn config_field(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook_configs",
            Kind::Slack => "slack_configs",
            Kind::Pagerduty => "pagerduty_configs",
            Kind::Email => "email_configs",
        }
    }
}

/// A failed send. `message` never holds a URL, key or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// Worth trying again (network errors, timeouts, 5xx, 429 where the
    /// receiver uses it for rate limits); not for a refused request (4xx),
    /// a bad template or a permanent SMTP rejection.
    pub retryable: bool,
    pub message: String,
}

impl SendError {
    fn retryable(message: impl Into<String>) -> SendError {
        SendError {
            retryable: true,
            message: message.into(),
        }
    }
    fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            retryable: false,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if self.retryable {
            f.write_str(" (will retry)")?;
        }
        Ok(())
    }
}

impl std::error::Error for SendError {}

/// One integration of a receiver, e.g. the first webhook of receiver
/// `team-db` (`webhook[0]`), ready to send.
#[derive(Debug)]
pub struct Integration {
    receiver: String,
    kind: Kind,
    index: usize,
    send_resolved: bool,
    timeout: Duration,
    /// Every secret this integration holds, to scrub from error messages
    /// whatever a library or a server put in them.
    secrets: Vec<Secret>,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Webhook(webhook::Webhook),
    Slack(slack::Slack),
    Pagerduty(pagerduty::Pagerduty),
    Email(email::Email),
}

impl Integration {
    /// The receiver it belongs to.
    pub fn receiver(&self) -> &str {
        &self.receiver
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Its position among the receiver's integrations of its kind.
    pub fn index(&self) -> usize {
        self.index
    }
    /// `webhook[0]`, `email[1]`, …
    pub fn name(&self) -> String {
        format!("{}[{}]", self.kind.as_str(), self.index)
    }
    pub fn send_resolved(&self) -> bool {
        self.send_resolved
    }
    /// How long one send may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What this integration would send for `n`, or `None` when it sends
    /// nothing: an acknowledgement to anything but PagerDuty, or a
    /// notification with only resolved alerts to an integration with
    /// `send_resolved: false` (which otherwise sees only the firing ones,
    /// as in Alertmanager).
    fn effective<'a>(&self, n: &'a Notification, action: Action) -> Option<Cow<'a, Notification>> {
        if action == Action::Acknowledge && self.kind != Kind::Pagerduty {
            return None;
        }
        if self.send_resolved || action == Action::Acknowledge {
            return Some(Cow::Borrowed(n));
        }
        // Nothing firing: nothing to say.
        n.firing().next()?;
        if n.resolved().next().is_none() {
            return Some(Cow::Borrowed(n));
        }
        Some(Cow::Owned(restrict(n, n.firing().cloned().collect(), 0)))
    }

    /// Whether [`Integration::send`] would send anything for `n`.
    pub fn sends(&self, n: &Notification, action: Action) -> bool {
        self.effective(n, action).is_some()
    }

    /// Send `n` once, within [`Integration::timeout`]. `Ok` also when there
    /// is nothing to send (see [`Integration::sends`]).
    pub async fn send(&self, n: &Notification, action: Action) -> Result<(), SendError> {
        let Some(n) = self.effective(n, action) else {
            return Ok(());
        };
        let sent = async {
            match &self.inner {
                Inner::Webhook(w) => w.send(&n).await,
                Inner::Slack(s) => s.send(&n).await,
                Inner::Pagerduty(p) => p.send(&n, action).await,
                Inner::Email(e) => e.send(&n, self.timeout).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, sent).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retryable(format!(
                "no answer within the timeout ({})",
                humantime::format_duration(self.timeout)
            ))),
        };
        result.map_err(|e| SendError {
            retryable: e.retryable,
            message: format!("{}: {}", self.name(), self.redact(&e.message)),
        })
    }

    /// `text` with every secret of this integration (and the parts of a
    /// secret URL after its host) replaced.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            let s = s.expose().trim();
            if s.len() >= 4 {
                out = out.replace(s, "<secret>");
            }
            // A URL's path and query may show up on their own (e.g. a
            // redirect's Location, a server echoing its request line).
            if let Some(rest) = s.split_once("://").map(|(_, r)| r)
                && let Some(slash) = rest.find('/')
            {
                let tail = &rest[slash..];
                if tail.len() >= 4 {
                    out = out.replace(tail, "/<secret>");
                }
            }
        }
        out
    }
}

/// Build every receiver's integrations, keyed by receiver name, applying
/// `global:` defaults and reading `*_file` secrets now. A receiver with no
/// integration is kept (with none): routing to it drops notifications, as
/// in Alertmanager.
pub fn build_receivers(
    cfg: &[ReceiverConfig],
    global: &Global,
) -> Result<BTreeMap<String, Vec<Integration>>, String> {
    let http = http_client()?;
    let mut out = BTreeMap::new();
    for r in cfg {
        if r.name.is_empty() {
            return Err("a receiver has no name".to_string());
        }
        let mut list = Vec::new();
        for (i, c) in r.webhook_configs.iter().enumerate() {
            list.push(webhook::build(&r.name, i, c, &http)?);
        }
        for (i, c) in r.slack_configs.iter().enumerate() {
            list.push(slack::build(&r.name, i, c, global, &http)?);
        }
        for (i, c) in r.pagerduty_configs.iter().enumerate() {
            list.push(pagerduty::build(&r.name, i, c, global, &http)?);
        }
        for (i, c) in r.email_configs.iter().enumerate() {
            list.push(email::build(&r.name, i, c, global)?);
        }
        if out.insert(r.name.clone(), list).is_some() {
            return Err(format!("receiver {:?} is defined twice", r.name));
        }
    }
    Ok(out)
}

/// One HTTP client for every HTTP integration (rustls on ring; each send
/// has its own timeout).
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("Ferry/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(DEFAULT_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Where an integration's configuration error is: `receiver "x"
/// webhook_configs[0]`.
fn at(receiver: &str, kind: Kind, index: usize) -> String {
    format!("receiver {receiver:?} {}[{index}]", kind.config_field())
}

/// A secret given inline or in a file (read now, trimmed). Neither is an
/// error naming `field`.
fn secret(
    place: &str,
    field: &str,
    inline: Option<&Secret>,
    file: Option<&str>,
) -> Result<Option<Secret>, String> {
    if let Some(s) = inline.filter(|s| !s.is_empty()) {
        if file.is_some_and(|f| !f.is_empty()) {
            return Err(format!("{place}: {field} and {field}_file are both set"));
        }
        return Ok(Some(s.clone()));
    }
    match file.filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(Secret(text.trim().to_string()))),
            Ok(_) => Err(format!("{place}: {field}_file {path} is empty")),
            Err(e) => Err(format!("{place}: {field}_file {path}: {e}")),
        },
    }
}

/// A URL secret that must parse as http(s); the error never shows it.
fn check_url(place: &str, field: &str, url: &Secret) -> Result<(), String> {
    match reqwest::Url::parse(url.expose().trim()) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(format!(
            "{place}: {field} must be an http or https URL, not {}",
            u.scheme()
        )),
        Err(e) => Err(format!("{place}: {field} is not a URL ({e})")),
    }
}

/// `n` with only `alerts`: status and common labels and annotations are
/// those of the alerts kept (as Alertmanager computes its template data
/// from the alerts it sends).
fn restrict(n: &Notification, alerts: Vec<NotifyAlert>, truncated: usize) -> Notification {
    fn common(
        sets: &mut dyn Iterator<Item = &ferry_alert::alert::LabelSet>,
    ) -> BTreeMap<String, String> {
        let Some(first) = sets.next() else {
            return BTreeMap::new();
        };
        let mut c = first.clone();
        for s in sets {
            c.retain(|k, v| s.get(k) == Some(v));
        }
        c
    }
    let status = if alerts.iter().any(|a| a.status == Status::Firing) {
        Status::Firing
    } else {
        Status::Resolved
    };
    Notification {
        receiver: n.receiver.clone(),
        group_key: n.group_key.clone(),
        status,
        group_labels: n.group_labels.clone(),
        common_labels: common(&mut alerts.iter().map(|a| &a.labels)),
        common_annotations: common(&mut alerts.iter().map(|a| &a.annotations)),
        route_labels: n.route_labels.clone(),
        external_url: n.external_url.clone(),
        truncated_alerts: n.truncated_alerts + truncated,
        reason: n.reason.clone(),
        alerts,
    }
}

/// Alertmanager's default subject (`__subject`): `[FIRING:2] HighLatency
/// api (db prod)`: the status, the firing count, the group labels' values,
/// then in parentheses the other common labels' values.
pub fn default_subject(n: &Notification) -> String {
    let mut s = match n.status {
        Status::Firing => format!("[FIRING:{}]", n.firing().count()),
        Status::Resolved => "[RESOLVED]".to_string(),
    };
    for v in n.group_labels.values() {
        s.push(' ');
        s.push_str(v);
    }
    let extra: Vec<&str> = n
        .common_labels
        .iter()
        .filter(|(k, _)| !n.group_labels.contains_key(*k))
        .map(|(_, v)| v.as_str())
        .collect();
    if n.common_labels.len() > n.group_labels.len() && !extra.is_empty() {
        s.push_str(" (");
        s.push_str(&extra.join(" "));
        s.push(')');
    }
    s
}

/// Render a receiver's template (`title`, `text`, …).
fn expand(what: &str, text: &str, n: &Notification) -> Result<String, SendError> {
    ferry_alert::template::expand_notification(text, n)
        .map_err(|e| SendError::permanent(format!("template {what}: {e}")))
}

/// A time as Go's `time.Time` marshals it (RFC 3339 with only the
/// fractional digits needed, UTC `Z`); 0 is Go's zero time,
/// `0001-01-01T00:00:00Z`.
pub fn go_time(ms: i64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!(".{frac:03}");
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The text of an HTTP error: the status and the start of the body,
/// trimmed to one line.
async fn status_error(resp: reqwest::Response, retryable: bool) -> SendError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let body = truncate(&body, 200);
    let mut message = format!("unexpected status code {}", status.as_u16());
    if !body.is_empty() {
        message.push_str(": ");
        message.push_str(&body);
    }
    SendError { retryable, message }
}

/// A request that got no answer: never shows the URL.
fn request_error(e: reqwest::Error) -> SendError {
    let e = e.without_url();
    let mut message = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    SendError::retryable(message)
}

/// POST `body` as JSON; the response is for the caller to judge.
async fn post_json(
    http: &reqwest::Client,
    url: &Secret,
    body: &serde_json::Value,
) -> Result<reqwest::Response, SendError> {
    http.post(url.expose().trim())
        .json(body)
        .send()
        .await
        .map_err(request_error)
}

/// At most `max` bytes of `s`, cut on a char boundary, with `…` when cut.
fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// At most `max` chars of `s`, with `…` as the last when cut (Alertmanager's
/// `TruncateInRunes`).
fn truncate_chars(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some(_) => {
            let keep: String = s.chars().take(max.saturating_sub(1)).collect();
            Cow::Owned(format!("{keep}…"))
        }
    }
}

/// Alertmanager's `__text_alert_list`: each alert's labels, annotations,
/// start and source.
fn text_alert_list<'a>(alerts: impl Iterator<Item = &'a NotifyAlert>) -> String {
    let mut s = String::new();
    for a in alerts {
        s.push_str("Labels:\n");
        for (k, v) in &a.labels {
            s.push_str(&format!(" - {k} = {v}\n"));
        }
        s.push_str("Annotations:\n");
        for (k, v) in &a.annotations {
            s.push_str(&format!(" - {k} = {v}\n"));
        }
        s.push_str(&format!("Started: {}\n", go_time(a.starts_at)));
        if a.status == Status::Resolved && a.ends_at != 0 {
            s.push_str(&format!("Ended: {}\n", go_time(a.ends_at)));
        }
        s.push_str(&format!("Source: {}\n", a.generator_url));
    }
    s
}
