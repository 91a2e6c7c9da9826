//! Pushing Ferry's alerts to real Alertmanagers (`[alerting]
//! alertmanagers`), as Prometheus's notifier does: `POST /api/v2/alerts`
//! with a JSON array; firing alerts are re-sent every `resend_delay` by the
//! rule groups (so a lost push is repaired by the next one), resolved ones
//! with their `endsAt`. Each Alertmanager has its own task and queue: a
//! slow or dead one delays nothing else; when its queue is full the oldest
//! alerts are dropped and counted.

use ferry_alert::alert::Alert;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Alerts waiting per Alertmanager (Prometheus's default queue capacity).
const QUEUE: usize = 10_000;
/// Alerts per request.
const BATCH: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(10);

/// One pushed alert, as Alertmanager's API v2 takes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: &'a str,
}

pub fn postable(a: &Alert) -> PostableAlert<'_> {
    PostableAlert {
        labels: &a.labels,
        annotations: &a.annotations,
        starts_at: ferry_core::time::rfc3339(a.starts_at.max(0) as u64),
        ends_at: ferry_core::time::rfc3339(a.ends_at.max(0) as u64),
        generator_url: &a.generator_url,
    }
}

#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
}

struct Target {
    url: String,
    queue: Mutex<VecDeque<Alert>>,
    wake: tokio::sync::Notify,
    counters: Counters,
}

/// The Alertmanagers alerts are pushed to.
#[derive(Default)]
pub struct Pusher {
    targets: Vec<Arc<Target>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Pusher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Pusher {
    /// One task per Alertmanager base URL (`http://host:port`).
    pub fn start(urls: &[String], http: reqwest::Client) -> Pusher {
        let mut p = Pusher::default();
        for url in urls {
            let target = Arc::new(Target {
                url: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                queue: Mutex::new(VecDeque::new()),
                wake: tokio::sync::Notify::new(),
                counters: Counters::default(),
            });
            p.tasks
                .push(tokio::spawn(run(target.clone(), http.clone())));
            p.targets.push(target);
        }
        p
    }

    /// Queue alerts for every Alertmanager; never waits.
    pub fn send(&self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        for t in &self.targets {
            let mut q = t.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.extend(alerts.iter().cloned());
            let over = q.len().saturating_sub(QUEUE);
            if over > 0 {
                q.drain(..over);
                t.counters.dropped.fetch_add(over as u64, Ordering::Relaxed);
            }
            drop(q);
            t.wake.notify_one();
        }
    }

    /// `(url, sent, errors, dropped)` per Alertmanager, for `/metrics`.
    pub fn counters(&self) -> Vec<(String, u64, u64, u64)> {
        self.targets
            .iter()
            .map(|t| {
                (
                    t.url.clone(),
                    t.counters.sent.load(Ordering::Relaxed),
                    t.counters.errors.load(Ordering::Relaxed),
                    t.counters.dropped.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

async fn run(t: Arc<Target>, http: reqwest::Client) {
    let mut failing = false;
    loop {
        let batch: Vec<Alert> = {
            let mut q = t.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.len().min(BATCH);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            t.wake.notified().await;
            continue;
        }
        let body: Vec<PostableAlert<'_>> = batch.iter().map(postable).collect();
        let result = http.post(&t.url).timeout(TIMEOUT).json(&body).send().await;
        let outcome = match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                Err(format!(
                    "{status}: {}",
                    text.trim().chars().take(200).collect::<String>()
                ))
            }
            Err(e) => Err(crate::remote_write::error_chain(e)),
        };
        match outcome {
            Ok(()) => {
                t.counters
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if failing {
                    tracing::info!("alerts reach Alertmanager {} again", t.url);
                    failing = false;
                }
            }
            Err(e) => {
                t.counters.errors.fetch_add(1, Ordering::Relaxed);
                t.counters
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(
                        "cannot push {} alerts to Alertmanager {}: {e} (firing alerts are re-sent every resend_delay)",
                        batch.len(),
                        t.url
                    );
                    failing = true;
                }
                // Do not spin on a dead Alertmanager.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
