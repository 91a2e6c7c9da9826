//! Rollout events to webhooks: JSON POSTs with a timeout and retries, sent
//! in the order they happened. Each webhook URL has a lane, a task that
//! delivers its events one after the other (retries included), so a
//! receiver never sees `done` before `failed`; lanes run side by side, so a
//! slow webhook delays only its own events. A dead or slow webhook never
//! blocks a rollout: when a lane's queue is full, events are dropped and
//! counted. Every payload carries the event's `sequence` (its `seq` in the
//! event log) so a receiver can order and deduplicate.

use crate::clock::rfc3339;
use ferry_core::Millis;
use ferry_core::rollout::{Event, Rollout};
use ferry_core::webhook::WebhookSpec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events one webhook may have waiting.
const LANE_QUEUE: usize = 1024;

struct Delivery {
    hook: WebhookSpec,
    body: serde_json::Value,
}

pub struct Notifier {
    http: reqwest::Client,
    /// One ordered lane per webhook URL.
    lanes: Mutex<HashMap<String, mpsc::Sender<Delivery>>>,
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub dropped: AtomicU64,
}

impl Notifier {
    /// A notifier whose lanes run on the current runtime.
    pub fn start(http: reqwest::Client) -> Notifier {
        Notifier {
            http,
            lanes: Mutex::default(),
            delivered: Arc::default(),
            failed: Arc::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The lane of `url`, started on first use.
    fn lane(&self, url: &str) -> mpsc::Sender<Delivery> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = lanes.get(url).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, mut rx) = mpsc::channel::<Delivery>(LANE_QUEUE);
        let (http, ok, bad) = (
            self.http.clone(),
            self.delivered.clone(),
            self.failed.clone(),
        );
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let counter = if deliver(&http, &d).await { &ok } else { &bad };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        lanes.insert(url.to_string(), tx.clone());
        tx
    }

    /// Queue `events` of `rollout` (with their sequence numbers, in order)
    /// for every hook that wants them. Never waits.
    pub fn announce(
        &self,
        hooks: &[WebhookSpec],
        rollout: &Rollout,
        version: &str,
        events: &[Event],
        sequence: &[u64],
        now: Millis,
    ) {
        for (i, e) in events.iter().enumerate() {
            for hook in hooks.iter().filter(|h| h.wants(e.kind)) {
                let body = payload(rollout, version, e, sequence.get(i).copied(), now);
                if self
                    .lane(&hook.url)
                    .try_send(Delivery {
                        hook: hook.clone(),
                        body,
                    })
                    .is_err()
                {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "webhook queue full: dropped a `{}` event for {}",
                        e.kind,
                        host_of(&hook.url)
                    );
                }
            }
        }
    }
}

/// The JSON body of one event. The rollout's fields are as they are after
/// the event (e.g. `canary_weight` is 0 in a pulled canary's `failed`).
pub fn payload(
    r: &Rollout,
    version: &str,
    e: &Event,
    sequence: Option<u64>,
    now: Millis,
) -> serde_json::Value {
    serde_json::json!({
        "type": "ferry.rollout",
        "event": e.kind,
        "sequence": sequence,
        "message": e.message,
        "service": r.service,
        "rollout": r.id,
        "kind": r.kind,
        "strategy": r.strategy.as_str(),
        "revision": r.to,
        "version": version,
        "from_revision": r.from,
        "phase": r.phase,
        "outcome": r.outcome.map(|o| o.as_str()),
        "canary_weight": r.canary.weight,
        "at": rfc3339(now),
    })
}

/// Only the host is ever logged: webhook URLs often carry tokens.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
        })
        .unwrap_or_else(|| "(bad url)".into())
}

async fn deliver(http: &reqwest::Client, d: &Delivery) -> bool {
    let attempts = d.hook.retries + 1;
    let mut backoff = Duration::from_millis(200);
    let host = host_of(&d.hook.url);
    for attempt in 1..=attempts {
        let sent = http
            .post(&d.hook.url)
            .timeout(d.hook.timeout.0)
            .json(&d.body)
            .send()
            .await;
        let why = match sent {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                tracing::warn!(
                    "webhook {host} refused a `{}` event: HTTP {}",
                    d.body["event"],
                    resp.status()
                );
                return false;
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) if e.is_timeout() => format!("no answer within {}", d.hook.timeout),
            Err(e) if e.is_connect() => "connection failed".to_string(),
            Err(_) => "request failed".to_string(),
        };
        if attempt == attempts {
            tracing::warn!(
                "webhook {host}: gave up on a `{}` event after {attempts} attempts ({why})",
                d.body["event"]
            );
            return false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    false
}
