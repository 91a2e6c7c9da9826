//! The notifier: asks the dispatcher what is due, saves its state (so a
//! `kill -9` neither loses a resolve nor pages twice), and delivers each
//! due notification on a task of its own per group × integration, with
//! retries until the group's next flush. Every attempt is written to the
//! history. A delivery still running when the next one for the same group
//! and integration falls due is left to finish: the dispatcher's
//! notification log decides again afterwards.

use super::receivers::{self, Action, retry::RetryPolicy};
use super::store::NewEntry;
use super::{Alerting, lock};
use crate::daemon::Daemon;
use ferry_alert::alert::Millis;
use ferry_alert::dispatch::{Due, DueKind};
use std::sync::Arc;
use std::time::Duration;

/// How often the notifier looks even when nothing woke it (silences
/// starting and ending, acks expiring, resolve timeouts).
const IDLE: Duration = Duration::from_secs(1);

/// Deliveries running at once per receiver integration: a receiver that
/// hangs holds this many connections, not one per group.
const PER_INTEGRATION: usize = 16;

/// Saves are at most this often: each writes the whole state, so a burst
/// of deliveries is saved in one go. A `kill -9` within this much of a
/// delivery may repeat it after the restart (at least once, never lost);
/// a change a person makes (silence, ack, resolve) is saved before it is
/// answered.
const SAVE_GAP: Duration = Duration::from_millis(200);

/// How long the notifier waits after being woken before it looks, so that
/// a burst is one pass over the dispatcher rather than one per event.
const COALESCE: Duration = Duration::from_millis(5);

pub async fn run(a: Arc<Alerting>, d: Arc<Daemon>) {
    let mut last_prune: Millis = 0;
    let mut last_publish: Millis = 0;
    let mut last_save: Millis = 0;
    let mut unsaved = false;
    let mut events = Vec::new();
    loop {
        let now = d.clock.now() as Millis;
        let dirty = a.dirty.swap(false, std::sync::atomic::Ordering::AcqRel);
        let save_now = now - last_save >= SAVE_GAP.as_millis() as i64;
        let (due, next, state) = {
            let mut disp = lock(&a.dispatcher);
            let due = disp.flush_due(now);
            events.append(&mut disp.drain_events());
            unsaved |= dirty || !due.is_empty() || !events.is_empty();
            // Copied under the lock, written outside it.
            let state = (unsaved && save_now).then(|| a.copy_state(&disp, now));
            (due, disp.next_wakeup(now), state)
        };
        if dirty || !due.is_empty() || now - last_publish >= IDLE.as_millis() as i64 {
            last_publish = now;
            a.publish(&d, now);
        }
        let mut recorded = false;
        for due in due {
            recorded |= spawn_delivery(&a, &d, due);
        }
        if let Some((state, seq)) = state {
            last_save = now;
            unsaved = recorded;
            let (a2, ev) = (a.clone(), std::mem::take(&mut events));
            let saved = tokio::task::spawn_blocking(move || a2.save_state(&state, seq, ev)).await;
            match saved {
                Ok(Err(e)) => tracing::error!("{e}; alert state is not saved"),
                Err(e) => tracing::error!("saving alert state: {e}"),
                Ok(Ok(())) => {}
            }
        } else {
            unsaved |= recorded;
        }
        if now - last_prune > 3_600_000 {
            last_prune = now;
            a.prune(now);
        }
        let mut wait = next
            .map(|t| Duration::from_millis((t - now).clamp(0, IDLE.as_millis() as i64) as u64))
            .unwrap_or(IDLE);
        if unsaved {
            wait = wait.min(SAVE_GAP);
        }
        tokio::select! {
            // Woken: gather what else comes in the next moment (a burst
            // of deliveries ending, a batch of alerts) into one pass.
            _ = a.wake.notified() => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Start delivering `due`; true when it was recorded at once instead (a
/// receiver without integrations), for the caller to save.
fn spawn_delivery(a: &Arc<Alerting>, d: &Arc<Daemon>, mut due: Due) -> bool {
    due.notification.external_url = a.external_url();
    let integrations = a.receivers.load_full();
    let now = d.clock.now() as Millis;
    let list = integrations.get(&due.receiver);
    let target = list.and_then(|l| {
        l.iter().position(|i| {
            i.kind().as_str() == due.integration.name && i.index() == due.integration.index
        })
    });
    let Some(idx) = target else {
        // A receiver without integrations records only (seed 001's
        // "info"): the notification counts as sent.
        lock(&a.dispatcher).record_due(&due, now);
        return true;
    };
    let flight = (
        due.receiver.clone(),
        due.integration.to_string(),
        due.group_key.clone(),
    );
    if !lock(&a.inflight).insert(flight.clone()) {
        return false;
    }
    let limit = a.limit(
        &format!("{}/{}", due.receiver, due.integration),
        PER_INTEGRATION,
    );
    let (a, d) = (a.clone(), d.clone());
    tokio::spawn(async move {
        let Ok(_permit) = limit.acquire_owned().await else {
            return;
        };
        let integration = &integrations[&due.receiver][idx];
        let action = match due.kind {
            DueKind::Notify => Action::Notify,
            DueKind::Acknowledge => Action::Acknowledge,
        };
        // Retried until the group would flush again (Alertmanager's
        // context deadline), at least a minute.
        let policy = RetryPolicy {
            deadline: Some(tokio::time::Instant::now() + Duration::from_secs(60)),
            max_attempts: 20,
            ..RetryPolicy::default()
        };
        let name = due
            .notification
            .group_labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| {
                due.notification
                    .common_labels
                    .get("alertname")
                    .cloned()
                    .unwrap_or_default()
            });
        // Every alert name in the notification: a group need not be by
        // alertname (`group_by: [severity]`, or none), and `ferry alerts
        // history --alert NAME` must show each alert's notifications.
        let mut names: Vec<String> = due
            .notification
            .alerts
            .iter()
            .filter_map(|al| al.labels.get("alertname").cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if names.is_empty() {
            names.push(name.clone());
        }
        let what = match due.kind {
            DueKind::Acknowledge => "acknowledgement".to_string(),
            DueKind::Notify => format!(
                "{} firing, {} resolved ({})",
                due.firing.len(),
                due.resolved.len(),
                due.notification.reason
            ),
        };
        let result =
            receivers::retry::deliver(integration, &due.notification, action, &policy, |attempt| {
                let kind = match attempt.outcome {
                    receivers::retry::Outcome::Delivered => "notified",
                    receivers::retry::Outcome::Skipped => "notify-skipped",
                    receivers::retry::Outcome::Retrying => "notify-retrying",
                    receivers::retry::Outcome::GaveUp => "notify-failed",
                };
                let message = match &attempt.error {
                    Some(e) => format!(
                        "{}/{}: attempt {} of the {what}: {e}",
                        attempt.receiver, attempt.integration, attempt.attempt
                    ),
                    None => format!(
                        "{}/{}: {} the {what} (attempt {}, {} ms)",
                        attempt.receiver,
                        attempt.integration,
                        attempt.outcome.as_str(),
                        attempt.attempt,
                        attempt.duration.as_millis()
                    ),
                };
                {
                    let mut c = lock(&a.counters.notifications);
                    *c.entry((
                        attempt.receiver.clone(),
                        attempt.integration.clone(),
                        attempt.outcome.as_str().to_string(),
                    ))
                    .or_default() += 1;
                }
                let at = d.clock.now() as Millis;
                let entries: Vec<NewEntry> = names.iter().map(|alertname| NewEntry {
                    at,
                    kind: kind.to_string(),
                    alertname: alertname.clone(),
                    fingerprint: String::new(),
                    receiver: format!("{}/{}", attempt.receiver, attempt.integration),
                    message: message.clone(),
                    detail: serde_json::json!({
                        "group_key": due.group_key,
                        "attempt": attempt.attempt,
                        "outcome": attempt.outcome.as_str(),
                        "error": attempt.error,
                        "duration_ms": attempt.duration.as_millis() as u64,
                        "firing": due.firing.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                        "resolved": due.resolved.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    }),
                }).collect();
                a.queue_history(entries);
            })
            .await;
        match result {
            Ok(()) => {
                // Recorded now; saved by the notifier loop, woken below,
                // once for every delivery that ended since it last ran (a
                // save writes the whole state: one per delivery made a
                // burst quadratic).
                let now = d.clock.now() as Millis;
                lock(&a.dispatcher).record_due(&due, now);
            }
            Err(e) => tracing::warn!(
                "cannot notify {}/{} about {name}: {}",
                due.receiver,
                due.integration,
                e.message
            ),
        }
        lock(&a.inflight).remove(&flight);
        a.mark_dirty();
    });
    false
}
