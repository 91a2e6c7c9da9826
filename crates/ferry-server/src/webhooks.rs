//! Rollout events to webhooks: JSON POSTs with a timeout and retries, sent
//! from a bounded queue by background tasks. A dead or slow webhook never
//! blocks a rollout: when the queue is full, events are dropped and counted.

use crate::clock::rfc3339;
use ferry_core::Millis;
use ferry_core::rollout::{Event, Rollout};
use ferry_core::webhook::WebhookSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

const QUEUE: usize = 1024;
const CONCURRENT: usize = 16;

struct Delivery {
    hook: WebhookSpec,
    body: serde_json::Value,
}

pub struct Notifier {
    tx: mpsc::Sender<Delivery>,
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub dropped: AtomicU64,
}

impl Notifier {
    /// Start the dispatcher on the current runtime.
    pub fn start(http: reqwest::Client) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<Delivery>(QUEUE);
        let delivered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (ok, bad) = (delivered.clone(), failed.clone());
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(CONCURRENT));
            while let Some(d) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (http, ok, bad) = (http.clone(), ok.clone(), bad.clone());
                tokio::spawn(async move {
                    let counter = if deliver(&http, &d).await { ok } else { bad };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        });
        Notifier {
            tx,
            delivered,
            failed,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queue `events` of `rollout` for every hook that wants them. Never waits.
    pub fn announce(
        &self,
        hooks: &[WebhookSpec],
        rollout: &Rollout,
        version: &str,
        events: &[Event],
        now: Millis,
    ) {
        for e in events {
            for hook in hooks.iter().filter(|h| h.wants(e.kind)) {
                let body = payload(rollout, version, e, now);
                if self
                    .tx
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

/// The JSON body of one event.
pub fn payload(r: &Rollout, version: &str, e: &Event, now: Millis) -> serde_json::Value {
    serde_json::json!({
        "type": "ferry.rollout",
        "event": e.kind,
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
