//! Alertmanager's webhook: a POST of its version-4 JSON (the template data
//! plus `version`, `groupKey` and `truncatedAlerts`). 2xx is success, 5xx
//! and network errors are retried, any other status is not.

use super::{
    DEFAULT_TIMEOUT, Inner, Integration, Kind, SendError, at, check_url, go_time, post_json,
    restrict, secret, status_error,
};
use ferry_alert::config::{Secret, WebhookConfig};
use ferry_alert::notify::{Notification, Status};
use serde_json::{Value, json};

#[derive(Debug)]
pub(super) struct Webhook {
    url: Secret,
    max_alerts: usize,
    http: reqwest::Client,
}

pub(super) fn build(
    receiver: &str,
    index: usize,
    c: &WebhookConfig,
    http: &reqwest::Client,
) -> Result<Integration, String> {
    let place = at(receiver, Kind::Webhook, index);
    let url = secret(&place, "url", c.url.as_ref(), c.url_file.as_deref())?
        .ok_or_else(|| format!("{place}: url (or url_file) is required"))?;
    check_url(&place, "url", &url)?;
    let timeout = match c.timeout {
        Some(t) if t.millis() > 0 => t.as_std(),
        _ => DEFAULT_TIMEOUT,
    };
    Ok(Integration {
        receiver: receiver.to_string(),
        kind: Kind::Webhook,
        index,
        send_resolved: c.send_resolved,
        timeout,
        secrets: vec![url.clone()],
        inner: Inner::Webhook(Webhook {
            url,
            max_alerts: c.max_alerts,
            http: http.clone(),
        }),
    })
}

/// The version-4 document for `n`, keeping at most `max_alerts` alerts
/// (0: all) and counting the others in `truncatedAlerts`.
pub(super) fn payload(n: &Notification, max_alerts: usize) -> Value {
    let truncated;
    let n = if max_alerts > 0 && n.alerts.len() > max_alerts {
        truncated = restrict(
            n,
            n.alerts[..max_alerts].to_vec(),
            n.alerts.len() - max_alerts,
        );
        &truncated
    } else {
        n
    };
    let status = |s: Status| match s {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    };
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            json!({
                "status": status(a.status),
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": go_time(a.starts_at),
                "endsAt": go_time(a.ends_at),
                "generatorURL": a.generator_url,
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    json!({
        "receiver": n.receiver,
        "status": status(n.status),
        "alerts": alerts,
        "notification_reason": n.reason,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "routeLabels": n.route_labels,
        "externalURL": n.external_url,
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.truncated_alerts,
    })
}

impl Webhook {
    pub(super) async fn send(&self, n: &Notification) -> Result<(), SendError> {
        let body = payload(n, self.max_alerts);
        let resp = post_json(&self.http, &self.url, &body).await?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        Err(status_error(resp, code >= 500).await)
    }
}
