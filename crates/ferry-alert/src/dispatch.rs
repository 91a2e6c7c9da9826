//! The dispatcher as a state machine: an alert store (merging re-sent
//! alerts as Alertmanager's provider does), aggregation groups per route
//! and group labels with their `group_wait`/`group_interval` timers, and
//! Alertmanager's notification pipeline per receiver integration:
//! inhibition, time muting, silences, then `DedupStage.needsUpdate` over a
//! notification log keyed by (receiver, integration, group key).
//!
//! Ferry's additions: acknowledgements (no repeat for a fully acknowledged
//! group, an `Acknowledge` due for PagerDuty), manual resolve, events for
//! history, and a serializable [`State`] so that a restart neither pages
//! twice nor loses a resolve.
//!
//! No clocks: every call takes `now`; the caller sleeps until
//! [`Dispatcher::next_wakeup`], calls [`Dispatcher::flush_due`], sends, and
//! reports success with [`Dispatcher::record_sent`].

use crate::alert::{Alert, Fingerprint, LabelSet, Millis};
use crate::config::{Compiled, ReceiverConfig};
use crate::inhibit::Inhibitor;
use crate::notify::{Notification, NotifyAlert, Status};
use crate::silence::Silences;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How long a resolved alert that is in no group stays in the store (to
/// show it, and to keep a manual resolve against re-sends).
pub const RESOLVED_RETENTION: Millis = 15 * 60_000;

/// One integration of a receiver, as Alertmanager names it in its
/// notification log: `slack` number 0, ...
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Integration {
    pub name: String,
    pub index: usize,
}

impl std::fmt::Display for Integration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.name, self.index)
    }
}

/// A receiver's integrations and their `send_resolved`.
pub fn integrations(r: &ReceiverConfig) -> Vec<(Integration, bool)> {
    let mut out = Vec::new();
    let mut add = |name: &str, flags: Vec<bool>| {
        for (index, sr) in flags.into_iter().enumerate() {
            out.push((
                Integration {
                    name: name.to_string(),
                    index,
                },
                sr,
            ));
        }
    };
    add(
        "email",
        r.email_configs.iter().map(|c| c.send_resolved).collect(),
    );
    add(
        "pagerduty",
        r.pagerduty_configs
            .iter()
            .map(|c| c.send_resolved)
            .collect(),
    );
    add(
        "slack",
        r.slack_configs.iter().map(|c| c.send_resolved).collect(),
    );
    add(
        "webhook",
        r.webhook_configs.iter().map(|c| c.send_resolved).collect(),
    );
    out
}

/// An alert in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    pub alert: Alert,
    /// `endsAt` was not given: it is now + `resolve_timeout`.
    #[serde(default)]
    pub timeout: bool,
    #[serde(default)]
    pub manual_resolve: Option<ManualResolve>,
    /// The last state reported as an [`Event`].
    #[serde(default)]
    pub last: Option<Lifecycle>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualResolve {
    pub by: String,
    pub at: Millis,
    /// The occurrence resolved (its `startsAt`).
    pub starts_at: Millis,
    /// What its source last said about its end.
    pub source_ends_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Firing,
    Suppressed,
    Resolved,
}

/// An acknowledgement of one occurrence of an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub fingerprint: Fingerprint,
    pub starts_at: Millis,
    pub by: String,
    pub comment: String,
    pub at: Millis,
    pub until: Option<Millis>,
}

/// What was last sent to one integration for one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NflogEntry {
    pub receiver: String,
    pub integration: Integration,
    pub group_key: String,
    pub firing: BTreeSet<Fingerprint>,
    pub resolved: BTreeSet<Fingerprint>,
    pub timestamp: Millis,
    /// Twice the repeat interval after `timestamp`, as Alertmanager keeps it.
    pub expires_at: Millis,
}

type NflogKey = (String, Integration, String);

/// A group's timers and members, for [`State`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub route_id: String,
    #[serde(default)]
    pub receiver: String,
    pub group_key: String,
    pub first_seen: Millis,
    pub next_flush: Millis,
    pub alerts: Vec<Fingerprint>,
}

/// Everything the dispatcher knows, to persist and [`Dispatcher::restore`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// When this copy was taken (set by the caller that saves it; 0:
    /// unknown, the newest `updated_at` of the alerts is used).
    #[serde(default)]
    pub saved_at: Millis,
    pub alerts: Vec<StoredAlert>,
    pub silences: Silences,
    pub acks: Vec<Ack>,
    pub nflog: Vec<NflogEntry>,
    pub groups: Vec<GroupState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DueKind {
    /// A notification (firing and/or resolved alerts).
    Notify,
    /// The group's firing alerts are all acknowledged (PagerDuty's
    /// `acknowledge` event; other integrations may ignore it).
    Acknowledge,
}

/// One message to send to one integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Due {
    pub kind: DueKind,
    pub receiver: String,
    pub integration: Integration,
    pub send_resolved: bool,
    pub group_key: String,
    pub notification: Notification,
    pub firing: Vec<Fingerprint>,
    pub resolved: Vec<Fingerprint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Active,
    Suppressed,
    /// Resolved and no longer in any group (Alertmanager's "unprocessed").
    Unprocessed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub alert: Alert,
    pub fingerprint: Fingerprint,
    pub state: AlertState,
    pub resolved: bool,
    pub silenced_by: Vec<String>,
    pub inhibited_by: Vec<Fingerprint>,
    pub acked: Option<Ack>,
    pub manual_resolve: Option<ManualResolve>,
    pub receivers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupView {
    pub receiver: String,
    pub route_id: String,
    pub group_key: String,
    pub labels: LabelSet,
    pub alerts: Vec<Fingerprint>,
    pub first_seen: Millis,
    pub next_flush: Millis,
}

/// A transition, for history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Millis,
    pub fingerprint: Fingerprint,
    pub labels: LabelSet,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Firing,
    Suppressed {
        silenced_by: Vec<String>,
        inhibited_by: Vec<Fingerprint>,
    },
    Resolved {
        /// Who resolved it by hand, if anyone.
        by: Option<String>,
    },
    Acked {
        by: String,
        comment: String,
        until: Option<Millis>,
    },
    AckEnded,
    /// A notification that included this alert was delivered.
    Notified {
        receiver: String,
        integration: Integration,
        group_key: String,
        status: Status,
    },
}

/// Why a group is notified (Alertmanager's `NotifyReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    FirstNotification,
    NewAlertsInGroup,
    NewResolvedAlerts,
    AllAlertsResolved,
    RepeatIntervalElapsed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::FirstNotification => "first notification",
            Reason::NewAlertsInGroup => "new alerts added",
            Reason::NewResolvedAlerts => "some alerts resolved",
            Reason::AllAlertsResolved => "all alerts resolved",
            Reason::RepeatIntervalElapsed => "repeat interval elapsed",
        }
    }
}

/// Alertmanager's `DedupStage.needsUpdate`.
pub fn needs_update(
    entry: Option<&NflogEntry>,
    firing: &BTreeSet<Fingerprint>,
    resolved: &BTreeSet<Fingerprint>,
    send_resolved: bool,
    repeat: Millis,
    now: Millis,
) -> Reason {
    let Some(e) = entry else {
        return if firing.is_empty() {
            Reason::None
        } else {
            Reason::FirstNotification
        };
    };
    if !firing.is_subset(&e.firing) {
        return if e.firing.is_empty() {
            Reason::FirstNotification
        } else {
            Reason::NewAlertsInGroup
        };
    }
    if firing.is_empty() {
        return if e.firing.is_empty() {
            Reason::None
        } else {
            Reason::AllAlertsResolved
        };
    }
    if send_resolved && !resolved.is_subset(&e.resolved) {
        return Reason::NewResolvedAlerts;
    }
    if e.timestamp < now - repeat {
        return Reason::RepeatIntervalElapsed;
    }
    Reason::None
}

#[derive(Debug, Clone)]
struct Group {
    route_idx: usize,
    route_id: String,
    group_key: String,
    labels: LabelSet,
    receiver: String,
    alerts: BTreeSet<Fingerprint>,
    first_seen: Millis,
    next_flush: Millis,
    /// Dues of the last flush not yet recorded, and the resolved alerts
    /// (with their `endsAt`) to drop once they all are.
    pending: BTreeSet<Integration>,
    pending_resolved: Vec<(Fingerprint, Millis)>,
}

/// The dispatcher. See the module docs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    cfg: Compiled,
    inhibitor: Inhibitor,
    alerts: BTreeMap<Fingerprint, StoredAlert>,
    silences: Silences,
    acks: BTreeMap<Fingerprint, Ack>,
    nflog: BTreeMap<NflogKey, NflogEntry>,
    /// Keyed by (route index, group key).
    groups: BTreeMap<(usize, String), Group>,
    queued: Vec<Due>,
    events: Vec<Event>,
}

impl Dispatcher {
    pub fn new(cfg: Compiled) -> Dispatcher {
        Dispatcher {
            inhibitor: Inhibitor::new(cfg.inhibit_rules.clone()),
            cfg,
            alerts: BTreeMap::new(),
            silences: Silences::default(),
            acks: BTreeMap::new(),
            nflog: BTreeMap::new(),
            groups: BTreeMap::new(),
            queued: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn config(&self) -> &Compiled {
        &self.cfg
    }

    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    /// Silences to create, update or expire; alert states follow at the
    /// next call that takes `now`.
    pub fn silences_mut(&mut self) -> &mut Silences {
        &mut self.silences
    }

    /// Receives an alert (from a rule or `POST /api/v2/alerts`).
    /// `starts_at == 0` means now (or `ends_at` if given), `ends_at == 0`
    /// means now + `resolve_timeout`. A re-sent alert is merged with the
    /// stored one when their active ranges overlap.
    pub fn put(&mut self, alert: Alert, now: Millis) {
        self.put_one(alert, now);
        self.refresh(now);
    }

    /// [`Dispatcher::put`] for many alerts, with one pass over the store
    /// at the end instead of one per alert (a Prometheus sends its alerts
    /// in batches; a rule group sends all of its own at once).
    pub fn put_all(&mut self, alerts: impl IntoIterator<Item = Alert>, now: Millis) {
        for a in alerts {
            self.put_one(a, now);
        }
        self.refresh(now);
    }

    /// Store and route one alert; the caller refreshes states.
    fn put_one(&mut self, alert: Alert, now: Millis) {
        let mut a = alert;
        if a.starts_at == 0 {
            a.starts_at = if a.ends_at == 0 { now } else { a.ends_at };
        }
        let timeout = a.ends_at == 0;
        if timeout {
            a.ends_at = now + self.cfg.resolve_timeout;
        }
        a.updated_at = now;
        let fp = a.fingerprint();
        let stored = match self.alerts.remove(&fp) {
            None => StoredAlert {
                alert: a,
                timeout,
                manual_resolve: None,
                last: None,
            },
            Some(mut old) => {
                if let Some(m) = &mut old.manual_resolve {
                    if m.starts_at == a.starts_at {
                        // The same occurrence, resolved by hand: stays so.
                        m.source_ends_at = a.ends_at;
                        old.alert.annotations = a.annotations;
                        old.alert.generator_url = a.generator_url;
                        old.alert.updated_at = now;
                        self.alerts.insert(fp, old);
                        return;
                    }
                    old.manual_resolve = None;
                    old.timeout = false;
                    // A new occurrence replaces it outright.
                    old.alert.ends_at = old.alert.ends_at.min(a.starts_at);
                }
                let o = &old.alert;
                let overlap = (a.ends_at > o.starts_at && a.ends_at < o.ends_at)
                    || (a.starts_at > o.starts_at && a.starts_at < o.ends_at);
                if overlap {
                    merge(&old, a, timeout, now)
                } else {
                    StoredAlert {
                        alert: a,
                        timeout,
                        manual_resolve: None,
                        last: old.last,
                    }
                }
            }
        };
        let starts_at = stored.alert.starts_at;
        let labels = stored.alert.labels.clone();
        self.alerts.insert(fp, stored);
        self.route_into_groups(fp, &labels, starts_at, now, None);
    }

    fn route_into_groups(
        &mut self,
        fp: Fingerprint,
        labels: &LabelSet,
        starts_at: Millis,
        now: Millis,
        saved: Option<&BTreeMap<(String, String), GroupState>>,
    ) {
        let routes: Vec<(usize, String, String, LabelSet, String, Millis, LabelSet)> = self
            .cfg
            .route
            .match_routes(labels)
            .into_iter()
            .map(|r| {
                let gl = r.group_labels(labels);
                (
                    r.idx,
                    r.id.clone(),
                    r.group_key(&gl),
                    gl,
                    r.receiver.clone(),
                    r.group_wait,
                    r.labels.clone(),
                )
            })
            .collect();
        for (idx, route_id, key, gl, receiver, wait, _) in routes {
            let g = self.groups.entry((idx, key.clone())).or_insert_with(|| {
                let prior = saved
                    .and_then(|s| s.get(&(route_id.clone(), key.clone())))
                    .filter(|s| s.receiver == receiver);
                let (first_seen, next_flush) = match prior {
                    Some(s) => (s.first_seen, s.next_flush),
                    None if starts_at + wait < now => (now, now),
                    None => (now, now + wait),
                };
                Group {
                    route_idx: idx,
                    route_id,
                    group_key: key,
                    labels: gl,
                    receiver,
                    alerts: BTreeSet::new(),
                    first_seen,
                    next_flush,
                    pending: BTreeSet::new(),
                    pending_resolved: Vec::new(),
                }
            });
            g.alerts.insert(fp);
        }
    }

    /// Resolves an alert by hand, now. Re-sends of the same occurrence
    /// keep it resolved; a new occurrence fires again. False if unknown or
    /// already resolved.
    pub fn resolve(&mut self, fp: Fingerprint, by: &str, now: Millis) -> bool {
        let Some(s) = self.alerts.get_mut(&fp) else {
            return false;
        };
        if s.alert.resolved_at(now) {
            return false;
        }
        s.manual_resolve = Some(ManualResolve {
            by: by.to_string(),
            at: now,
            starts_at: s.alert.starts_at,
            source_ends_at: s.alert.ends_at,
        });
        s.alert.ends_at = now;
        s.alert.updated_at = now;
        s.timeout = false;
        self.refresh(now);
        true
    }

    /// Acknowledges a firing alert until it resolves or `until` passes.
    /// Returns the (receiver, group key) of the groups that became fully
    /// acknowledged; for those already notified an `Acknowledge` due is
    /// queued for the next [`Dispatcher::flush_due`].
    pub fn ack(
        &mut self,
        fp: Fingerprint,
        by: &str,
        comment: &str,
        until: Option<Millis>,
        now: Millis,
    ) -> Result<Vec<(String, String)>, String> {
        let Some(s) = self.alerts.get(&fp) else {
            return Err(format!("no alert {fp}"));
        };
        if s.alert.resolved_at(now) {
            return Err(format!("alert {fp} is resolved"));
        }
        if until.is_some_and(|u| u <= now) {
            return Err("`until` must be in the future".into());
        }
        let ids: Vec<(usize, String)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.alerts.contains(&fp))
            .map(|(k, _)| k.clone())
            .collect();
        let before: Vec<bool> = ids
            .iter()
            .map(|k| self.fully_acked(&self.groups[k], now))
            .collect();
        let ack = Ack {
            fingerprint: fp,
            starts_at: s.alert.starts_at,
            by: by.to_string(),
            comment: comment.to_string(),
            at: now,
            until,
        };
        let labels = s.alert.labels.clone();
        self.acks.insert(fp, ack);
        self.events.push(Event {
            at: now,
            fingerprint: fp,
            labels,
            kind: EventKind::Acked {
                by: by.to_string(),
                comment: comment.to_string(),
                until,
            },
        });
        let mut became = Vec::new();
        for (k, was) in ids.iter().zip(before) {
            let g = &self.groups[k];
            if was || !self.fully_acked(g, now) {
                continue;
            }
            became.push((g.receiver.clone(), g.group_key.clone()));
            let Some(recv) = self.cfg.receiver(&g.receiver) else {
                continue;
            };
            let (firing, resolved) = self.partition(g, now);
            for (integ, sr) in integrations(recv) {
                let key = (g.receiver.clone(), integ.clone(), g.group_key.clone());
                if self.nflog.get(&key).is_none_or(|e| e.firing.is_empty()) {
                    continue;
                }
                let n = self.notification(g, &firing, &resolved, sr, "acknowledged");
                self.queued.push(Due {
                    kind: DueKind::Acknowledge,
                    receiver: g.receiver.clone(),
                    integration: integ,
                    send_resolved: sr,
                    group_key: g.group_key.clone(),
                    notification: n,
                    firing: firing.iter().copied().collect(),
                    resolved: resolved.iter().copied().collect(),
                });
            }
        }
        Ok(became)
    }

    /// Withdraws an acknowledgement; false when there was none.
    pub fn unack(&mut self, fp: Fingerprint, now: Millis) -> bool {
        if !self.ack_valid(fp, now) {
            return false;
        }
        self.end_ack(fp, now);
        true
    }

    /// Forget `fp`'s acknowledgement and say so in the events.
    fn end_ack(&mut self, fp: Fingerprint, now: Millis) {
        self.acks.remove(&fp);
        let labels = self
            .alerts
            .get(&fp)
            .map(|s| s.alert.labels.clone())
            .unwrap_or_default();
        self.events.push(Event {
            at: now,
            fingerprint: fp,
            labels,
            kind: EventKind::AckEnded,
        });
    }

    fn ack_valid(&self, fp: Fingerprint, now: Millis) -> bool {
        match (self.acks.get(&fp), self.alerts.get(&fp)) {
            (Some(a), Some(s)) => {
                !s.alert.resolved_at(now)
                    && s.alert.starts_at == a.starts_at
                    && a.until.is_none_or(|u| now < u)
            }
            _ => false,
        }
    }

    fn fully_acked(&self, g: &Group, now: Millis) -> bool {
        let (firing, _) = self.partition(g, now);
        !firing.is_empty() && firing.iter().all(|fp| self.ack_valid(*fp, now))
    }

    /// Silences and the inhibiting alert for `labels` at `now`.
    fn mutes(&self, labels: &LabelSet, now: Millis) -> (Vec<String>, Option<Fingerprint>) {
        let sil = self.silences.silenced_by(labels, now);
        let inh = self.inhibitor.inhibited_by(
            labels,
            self.alerts.iter().map(|(fp, s)| (*fp, &s.alert)),
            now,
        );
        (sil, inh)
    }

    fn muted(&self, fp: Fingerprint, now: Millis) -> bool {
        self.alerts.get(&fp).is_some_and(|s| {
            let (sil, inh) = self.mutes(&s.alert.labels, now);
            !sil.is_empty() || inh.is_some()
        })
    }

    /// A group's unmuted firing and resolved alerts.
    fn partition(&self, g: &Group, now: Millis) -> (BTreeSet<Fingerprint>, BTreeSet<Fingerprint>) {
        let (mut firing, mut resolved) = (BTreeSet::new(), BTreeSet::new());
        for fp in &g.alerts {
            let Some(s) = self.alerts.get(fp) else {
                continue;
            };
            if self.muted(*fp, now) {
                continue;
            }
            if s.alert.resolved_at(now) {
                resolved.insert(*fp);
            } else {
                firing.insert(*fp);
            }
        }
        (firing, resolved)
    }

    /// Emits events for alerts whose state changed, and ends acks.
    fn refresh(&mut self, now: Millis) {
        let mut changes = Vec::new();
        for (fp, s) in &self.alerts {
            let (state, kind) = if s.alert.resolved_at(now) {
                (
                    Lifecycle::Resolved,
                    EventKind::Resolved {
                        by: s.manual_resolve.as_ref().map(|m| m.by.clone()),
                    },
                )
            } else {
                let (sil, inh) = self.mutes(&s.alert.labels, now);
                if sil.is_empty() && inh.is_none() {
                    (Lifecycle::Firing, EventKind::Firing)
                } else {
                    (
                        Lifecycle::Suppressed,
                        EventKind::Suppressed {
                            silenced_by: sil,
                            inhibited_by: inh.into_iter().collect(),
                        },
                    )
                }
            };
            if s.last != Some(state) && !(s.last.is_none() && state == Lifecycle::Resolved) {
                changes.push((*fp, state, kind));
            }
        }
        for (fp, state, kind) in changes {
            let s = self.alerts.get_mut(&fp).expect("present");
            s.last = Some(state);
            self.events.push(Event {
                at: now,
                fingerprint: fp,
                labels: s.alert.labels.clone(),
                kind,
            });
        }
        let ended: Vec<Fingerprint> = self
            .acks
            .keys()
            .copied()
            .filter(|fp| !self.ack_valid(*fp, now))
            .collect();
        for fp in ended {
            self.end_ack(fp, now);
        }
    }

    /// Everything to send now: queued acknowledgements, then each group
    /// whose timer is due, through inhibition, time muting, silences and
    /// the notification log.
    pub fn flush_due(&mut self, now: Millis) -> Vec<Due> {
        self.refresh(now);
        self.nflog.retain(|_, e| e.expires_at > now);
        let mut out = std::mem::take(&mut self.queued);
        let due: Vec<(usize, String)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.next_flush <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.flush_group(&k, now, &mut out);
        }
        self.groups.retain(|_, g| !g.alerts.is_empty());
        let in_groups: BTreeSet<Fingerprint> = self
            .groups
            .values()
            .flat_map(|g| g.alerts.iter().copied())
            .collect();
        self.alerts.retain(|fp, s| {
            let end = s
                .manual_resolve
                .as_ref()
                .map_or(s.alert.ends_at, |m| m.source_ends_at.max(s.alert.ends_at));
            in_groups.contains(fp) || !s.alert.resolved_at(now) || end + RESOLVED_RETENTION > now
        });
        out
    }

    fn flush_group(&mut self, k: &(usize, String), now: Millis, out: &mut Vec<Due>) {
        let Some(route) = self.cfg.route.by_idx(k.0).cloned() else {
            self.groups.remove(k);
            return;
        };
        let mut g = self.groups.remove(k).expect("due group");
        g.next_flush = now + route.group_interval;
        g.alerts.retain(|fp| self.alerts.contains_key(fp));
        let all_resolved: Vec<(Fingerprint, Millis)> = g
            .alerts
            .iter()
            .filter_map(|fp| self.alerts.get(fp).map(|s| (*fp, s.alert.ends_at)))
            .filter(|(_, end)| *end <= now)
            .collect();
        g.pending.clear();
        g.pending_resolved.clear();
        if !route.is_muted(&self.cfg.time_intervals, now) {
            let (firing, resolved) = self.partition(&g, now);
            let recv = self.cfg.receiver(&g.receiver).cloned().unwrap_or_default();
            for (integ, sr) in integrations(&recv) {
                let key = (g.receiver.clone(), integ.clone(), g.group_key.clone());
                let mut reason = needs_update(
                    self.nflog.get(&key),
                    &firing,
                    &resolved,
                    sr,
                    route.repeat_interval,
                    now,
                );
                if reason == Reason::RepeatIntervalElapsed
                    && firing.iter().all(|fp| self.ack_valid(*fp, now))
                {
                    // Acknowledged: no repeat, but the log must not expire
                    // (that would page again as a first notification).
                    if let Some(e) = self.nflog.get_mut(&key) {
                        e.expires_at = e.expires_at.max(now + 2 * route.repeat_interval);
                    }
                    reason = Reason::None;
                }
                if reason == Reason::None {
                    continue;
                }
                if !sr && firing.is_empty() {
                    // Nothing to send, but the log learns the group resolved.
                    self.log(key, &firing, &resolved, route.repeat_interval, now);
                    continue;
                }
                let n = self.notification(&g, &firing, &resolved, sr, reason.as_str());
                g.pending.insert(integ.clone());
                out.push(Due {
                    kind: DueKind::Notify,
                    receiver: g.receiver.clone(),
                    integration: integ,
                    send_resolved: sr,
                    group_key: g.group_key.clone(),
                    notification: n,
                    firing: firing.iter().copied().collect(),
                    resolved: resolved.iter().copied().collect(),
                });
            }
        }
        if g.pending.is_empty() {
            self.drop_resolved(&mut g, &all_resolved);
        } else {
            g.pending_resolved = all_resolved;
        }
        self.groups.insert(k.clone(), g);
    }

    /// Alertmanager's `DeleteIfNotModified`: resolved alerts leave the
    /// group once notified, unless they changed since.
    fn drop_resolved(&self, g: &mut Group, resolved: &[(Fingerprint, Millis)]) {
        for (fp, end) in resolved {
            if self.alerts.get(fp).is_none_or(|s| s.alert.ends_at == *end) {
                g.alerts.remove(fp);
            }
        }
    }

    fn log(
        &mut self,
        key: NflogKey,
        firing: &BTreeSet<Fingerprint>,
        resolved: &BTreeSet<Fingerprint>,
        repeat: Millis,
        now: Millis,
    ) {
        let entry = NflogEntry {
            receiver: key.0.clone(),
            integration: key.1.clone(),
            group_key: key.2.clone(),
            firing: firing.clone(),
            resolved: resolved.clone(),
            timestamp: now,
            expires_at: now + 2 * repeat,
        };
        self.nflog.insert(key, entry);
    }

    /// Reports a delivered notification (only on success: a failed send is
    /// retried by the caller or re-due at the next `group_interval`).
    pub fn record_sent(
        &mut self,
        receiver: &str,
        integration: &Integration,
        group_key: &str,
        firing: &[Fingerprint],
        resolved: &[Fingerprint],
        now: Millis,
    ) {
        // The group, by the routes to `receiver` (few) rather than by
        // every group (one per notification in a burst).
        let mut routes = Vec::new();
        self.cfg.route.walk(&mut routes);
        let gid = routes
            .iter()
            .filter(|r| r.receiver == receiver)
            .map(|r| (r.idx, group_key.to_string()))
            .find(|k| self.groups.contains_key(k));
        let repeat = gid
            .as_ref()
            .and_then(|k| self.cfg.route.by_idx(k.0))
            .map_or(crate::route::DEFAULT_REPEAT_INTERVAL, |r| r.repeat_interval);
        let (f, r): (BTreeSet<_>, BTreeSet<_>) = (
            firing.iter().copied().collect(),
            resolved.iter().copied().collect(),
        );
        self.log(
            (
                receiver.to_string(),
                integration.clone(),
                group_key.to_string(),
            ),
            &f,
            &r,
            repeat,
            now,
        );
        for (fps, status) in [(firing, Status::Firing), (resolved, Status::Resolved)] {
            for fp in fps {
                let labels = self
                    .alerts
                    .get(fp)
                    .map(|s| s.alert.labels.clone())
                    .unwrap_or_default();
                self.events.push(Event {
                    at: now,
                    fingerprint: *fp,
                    labels,
                    kind: EventKind::Notified {
                        receiver: receiver.to_string(),
                        integration: integration.clone(),
                        group_key: group_key.to_string(),
                        status,
                    },
                });
            }
        }
        if let Some(k) = gid {
            let mut g = self.groups.remove(&k).expect("found above");
            if g.pending.remove(integration) && g.pending.is_empty() {
                let pr = std::mem::take(&mut g.pending_resolved);
                self.drop_resolved(&mut g, &pr);
            }
            if !g.alerts.is_empty() {
                self.groups.insert(k, g);
            }
        }
    }

    /// [`Dispatcher::record_sent`] for a [`Due`]; an `Acknowledge` due
    /// leaves the notification log alone.
    pub fn record_due(&mut self, due: &Due, now: Millis) {
        if due.kind == DueKind::Notify {
            self.record_sent(
                &due.receiver,
                &due.integration,
                &due.group_key,
                &due.firing,
                &due.resolved,
                now,
            );
        }
    }

    fn notification(
        &self,
        g: &Group,
        firing: &BTreeSet<Fingerprint>,
        resolved: &BTreeSet<Fingerprint>,
        send_resolved: bool,
        reason: &str,
    ) -> Notification {
        let mut alerts: Vec<(&Alert, Fingerprint, bool)> = firing
            .iter()
            .map(|fp| (fp, true))
            .chain(
                resolved
                    .iter()
                    .filter(|_| send_resolved)
                    .map(|fp| (fp, false)),
            )
            .filter_map(|(fp, f)| self.alerts.get(fp).map(|s| (&s.alert, *fp, f)))
            .collect();
        alerts.sort_by(|a, b| alert_order(a.0, b.0));
        let common = |get: fn(&Alert) -> &LabelSet| -> LabelSet {
            let mut it = alerts.iter();
            let Some(first) = it.next() else {
                return LabelSet::new();
            };
            let mut c = get(first.0).clone();
            for a in it {
                c.retain(|k, v| get(a.0).get(k) == Some(v));
            }
            c
        };
        let route_labels = self
            .cfg
            .route
            .by_idx(g.route_idx)
            .map(|r| r.labels.clone())
            .unwrap_or_default();
        Notification {
            receiver: g.receiver.clone(),
            group_key: g.group_key.clone(),
            status: if firing.is_empty() {
                Status::Resolved
            } else {
                Status::Firing
            },
            group_labels: g.labels.clone(),
            common_labels: common(|a| &a.labels),
            common_annotations: common(|a| &a.annotations),
            route_labels,
            external_url: String::new(),
            alerts: alerts
                .iter()
                .map(|(a, fp, f)| NotifyAlert {
                    status: if *f { Status::Firing } else { Status::Resolved },
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    starts_at: a.starts_at,
                    ends_at: if *f { 0 } else { a.ends_at },
                    generator_url: a.generator_url.clone(),
                    fingerprint: fp.to_string(),
                })
                .collect(),
            truncated_alerts: 0,
            reason: reason.to_string(),
        }
    }

    /// When to call [`Dispatcher::flush_due`] next: a group timer, an
    /// alert's end, an ack's end or a silence's start or end.
    pub fn next_wakeup(&self, now: Millis) -> Option<Millis> {
        if !self.queued.is_empty() {
            return Some(now);
        }
        let groups = self.groups.values().map(|g| g.next_flush);
        let ends = self
            .alerts
            .values()
            .map(|s| s.alert.ends_at)
            .filter(|&t| t > now);
        let acks = self
            .acks
            .values()
            .filter_map(|a| a.until)
            .filter(|&t| t > now);
        groups
            .chain(ends)
            .chain(acks)
            .chain(self.silences.next_change(now))
            .min()
            .map(|t| t.max(now))
    }

    /// Every stored alert with its state, as `GET /api/v2/alerts` shows it.
    /// The fingerprint of every alert held.
    pub fn fingerprints(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.alerts.keys().copied()
    }

    pub fn alerts(&self, now: Millis) -> Vec<AlertView> {
        let in_groups: BTreeSet<Fingerprint> = self
            .groups
            .values()
            .flat_map(|g| g.alerts.iter().copied())
            .collect();
        self.alerts
            .iter()
            .map(|(fp, s)| {
                let (sil, inh) = self.mutes(&s.alert.labels, now);
                let resolved = s.alert.resolved_at(now);
                let state = if resolved && !in_groups.contains(fp) {
                    AlertState::Unprocessed
                } else if !sil.is_empty() || inh.is_some() {
                    AlertState::Suppressed
                } else {
                    AlertState::Active
                };
                let mut receivers: Vec<String> = self
                    .cfg
                    .route
                    .match_routes(&s.alert.labels)
                    .iter()
                    .map(|r| r.receiver.clone())
                    .collect();
                receivers.dedup();
                AlertView {
                    alert: s.alert.clone(),
                    fingerprint: *fp,
                    state,
                    resolved,
                    silenced_by: sil,
                    inhibited_by: inh.into_iter().collect(),
                    acked: self
                        .acks
                        .get(fp)
                        .filter(|_| self.ack_valid(*fp, now))
                        .cloned(),
                    manual_resolve: s.manual_resolve.clone(),
                    receivers,
                }
            })
            .collect()
    }

    pub fn groups(&self, _now: Millis) -> Vec<GroupView> {
        self.groups
            .values()
            .map(|g| GroupView {
                receiver: g.receiver.clone(),
                route_id: g.route_id.clone(),
                group_key: g.group_key.clone(),
                labels: g.labels.clone(),
                alerts: g.alerts.iter().copied().collect(),
                first_seen: g.first_seen,
                next_flush: g.next_flush,
            })
            .collect()
    }

    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn state(&self) -> State {
        State {
            saved_at: 0,
            alerts: self.alerts.values().cloned().collect(),
            silences: self.silences.clone(),
            acks: self.acks.values().cloned().collect(),
            nflog: self.nflog.values().cloned().collect(),
            groups: self
                .groups
                .values()
                .map(|g| GroupState {
                    route_id: g.route_id.clone(),
                    receiver: g.receiver.clone(),
                    group_key: g.group_key.clone(),
                    first_seen: g.first_seen,
                    next_flush: g.next_flush,
                    alerts: g.alerts.iter().copied().collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds a dispatcher from a [`State`]: the notification log keeps
    /// what was sent from being sent again; resolved alerts still in a
    /// group are notified.
    pub fn restore(cfg: Compiled, state: State, now: Millis) -> Dispatcher {
        let mut d = Dispatcher::new(cfg);
        d.silences = state.silences;
        d.acks = state.acks.into_iter().map(|a| (a.fingerprint, a)).collect();
        d.nflog = state
            .nflog
            .into_iter()
            .map(|e| {
                (
                    (
                        e.receiver.clone(),
                        e.integration.clone(),
                        e.group_key.clone(),
                    ),
                    e,
                )
            })
            .collect();
        // Alerts still active when the state was last saved do not end
        // because time passed while nobody could re-send them (Ferry's own
        // rules run in this process): the downtime does not count, so a
        // source has as long to re-send or resolve each as it had.
        let saved_at = if state.saved_at > 0 {
            state.saved_at
        } else {
            state
                .alerts
                .iter()
                .map(|s| s.alert.updated_at)
                .max()
                .unwrap_or(now)
        };
        d.alerts = state
            .alerts
            .into_iter()
            .map(|mut s| {
                let a = &mut s.alert;
                if a.ends_at > saved_at && s.manual_resolve.is_none() {
                    a.ends_at += (now - saved_at).max(0);
                }
                (s.alert.fingerprint(), s)
            })
            .collect();
        d.rebuild_groups(state.groups, now);
        d
    }

    /// A new configuration; alerts, silences, acks and the notification
    /// log are kept, groups rebuilt (keeping the timers of those whose
    /// route ID and group key are unchanged).
    pub fn reload(&mut self, cfg: Compiled, now: Millis) {
        let saved = self.state().groups;
        self.inhibitor = Inhibitor::new(cfg.inhibit_rules.clone());
        self.cfg = cfg;
        self.rebuild_groups(saved, now);
        self.refresh(now);
    }

    fn rebuild_groups(&mut self, saved: Vec<GroupState>, now: Millis) {
        self.groups.clear();
        let members: BTreeSet<Fingerprint> = saved
            .iter()
            .flat_map(|g| g.alerts.iter().copied())
            .collect();
        let saved: BTreeMap<(String, String), GroupState> = saved
            .into_iter()
            .map(|g| ((g.route_id.clone(), g.group_key.clone()), g))
            .collect();
        let todo: Vec<(Fingerprint, LabelSet, Millis, bool)> = self
            .alerts
            .iter()
            .map(|(fp, s)| {
                (
                    *fp,
                    s.alert.labels.clone(),
                    s.alert.starts_at,
                    s.alert.resolved_at(now),
                )
            })
            .collect();
        for (fp, labels, starts_at, resolved) in todo {
            if resolved && !members.contains(&fp) {
                continue;
            }
            self.route_into_groups(fp, &labels, starts_at, now, Some(&saved));
        }
        // A resolved alert joins only the groups it was in.
        for g in self.groups.values_mut() {
            let keep = saved.get(&(g.route_id.clone(), g.group_key.clone()));
            g.alerts.retain(|fp| {
                self.alerts
                    .get(fp)
                    .is_some_and(|s| !s.alert.resolved_at(now))
                    || keep.is_some_and(|k| k.alerts.contains(fp))
            });
        }
        self.groups.retain(|_, g| !g.alerts.is_empty());
    }
}

fn merge(old: &StoredAlert, new: Alert, new_timeout: bool, now: Millis) -> StoredAlert {
    let mut res = new;
    let mut timeout = new_timeout;
    if old.alert.starts_at < res.starts_at {
        res.starts_at = old.alert.starts_at;
    }
    if res.ends_at <= now {
        if old.alert.resolved_at(now) && old.alert.ends_at > res.ends_at {
            res.ends_at = old.alert.ends_at;
        }
    } else if old.alert.ends_at > res.ends_at && !old.timeout {
        res.ends_at = old.alert.ends_at;
        timeout = false;
    }
    StoredAlert {
        alert: res,
        timeout,
        manual_resolve: None,
        last: old.last,
    }
}

/// Alertmanager's `AlertSlice` order: `job`, then `instance`, then labels.
fn alert_order(a: &Alert, b: &Alert) -> std::cmp::Ordering {
    for k in ["job", "instance"] {
        match (a.labels.get(k), b.labels.get(k)) {
            (None, None) => continue,
            (None, Some(_)) => return std::cmp::Ordering::Greater,
            (Some(_), None) => return std::cmp::Ordering::Less,
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
    }
    a.labels.cmp(&b.labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertmanagerConfig;

    const S: Millis = 1000;
    const M: Millis = 60 * S;
    const H: Millis = 60 * M;
    const T0: Millis = 1_800_000_000_000;

    const YAML: &str = r#"
route:
  receiver: ops
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 1h
  routes:
    - matchers: ['team="db"']
      receiver: db
      continue: true
    - matchers: ['team=~"db|web"']
      receiver: quiet
      group_by: [team]
    - matchers: ['team="night"']
      receiver: ops
      mute_time_intervals: [always]
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [alertname]
receivers:
  - name: ops
    webhook_configs: [{url: "http://x/ops"}]
  - name: db
    pagerduty_configs: [{routing_key: k}]
    webhook_configs: [{url: "http://x/db", send_resolved: false}]
  - name: quiet
time_intervals:
  - name: always
    time_intervals: [{}]
"#;

    fn cfg() -> Compiled {
        AlertmanagerConfig::load_yaml("t.yml", YAML).unwrap()
    }

    fn alert(pairs: &[(&str, &str)], starts_at: Millis, ends_at: Millis) -> Alert {
        Alert {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: [("summary".to_string(), "s".to_string())].into(),
            starts_at,
            ends_at,
            generator_url: String::new(),
            updated_at: 0,
        }
    }

    /// Flushes and records every due as sent.
    fn tick(d: &mut Dispatcher, now: Millis) -> Vec<Due> {
        let dues = d.flush_due(now);
        for due in &dues {
            d.record_due(due, now);
        }
        dues
    }

    fn summary(dues: &[Due]) -> Vec<String> {
        dues.iter()
            .map(|d| {
                format!(
                    "{}/{} {} {}f{}r {}",
                    d.receiver,
                    d.integration,
                    d.group_key,
                    d.firing.len(),
                    d.resolved.len(),
                    d.notification.reason
                )
            })
            .collect()
    }

    #[test]
    fn group_wait_interval_and_repeat() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A")], T0, 0);
        d.put(a.clone(), T0);
        assert_eq!(d.next_wakeup(T0), Some(T0 + 30 * S));
        assert!(tick(&mut d, T0 + 29 * S).is_empty(), "group_wait");
        let dues = tick(&mut d, T0 + 30 * S);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 1f0r first notification"#]
        );
        let n = &dues[0].notification;
        assert_eq!(n.status, Status::Firing);
        assert_eq!(n.group_labels["alertname"], "A");
        assert_eq!(n.common_annotations["summary"], "s");
        assert_eq!(n.alerts[0].ends_at, 0);
        assert_eq!(n.alerts[0].fingerprint, a.fingerprint().to_string());
        // Re-sent (timeout endsAt extended): nothing new at the next interval.
        let mut t = T0 + 30 * S;
        for _ in 0..12 {
            t += 5 * M;
            d.put(a.clone(), t - M);
            assert!(tick(&mut d, t).is_empty(), "unchanged at {}", (t - T0) / M);
        }
        // The repeat interval (1h) has passed (strictly) at the 13th.
        t += 5 * M;
        d.put(a.clone(), t - M);
        assert_eq!(
            summary(&tick(&mut d, t))[0],
            r#"ops/webhook[0] {}:{alertname="A"} 1f0r repeat interval elapsed"#
        );
        // A new alert in the group: at the next group_interval, not before.
        let b = alert(&[("alertname", "A"), ("instance", "2")], t + M, 0);
        d.put(b.clone(), t + M);
        assert!(tick(&mut d, t + 2 * M).is_empty());
        t += 5 * M;
        d.put(a.clone(), t - M);
        let dues = tick(&mut d, t);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 2f0r new alerts added"#]
        );
        // Both stop being re-sent: resolved after resolve_timeout (5m).
        let resolved_at = t - M + 5 * M;
        assert!(d.next_wakeup(t).unwrap() <= t + 5 * M);
        let dues = tick(&mut d, t + 5 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 0f2r all alerts resolved"#]
        );
        assert_eq!(dues[0].notification.status, Status::Resolved);
        assert!(
            dues[0]
                .notification
                .alerts
                .iter()
                .all(|x| x.ends_at > 0 && x.ends_at <= resolved_at + M)
        );
        // Notified resolved alerts leave the group; the group goes away.
        assert!(d.groups(t + 5 * M).is_empty());
        assert!(tick(&mut d, t + 10 * M).is_empty());
        let views = d.alerts(t + 10 * M);
        assert!(
            views
                .iter()
                .all(|v| v.state == AlertState::Unprocessed && v.resolved)
        );
        // And they are dropped from the store after the retention.
        tick(&mut d, t + 10 * M + RESOLVED_RETENTION + M);
        assert!(d.alerts(t + 30 * M).is_empty());
    }

    #[test]
    fn an_old_alert_skips_group_wait_and_failed_sends_are_retried() {
        let mut d = Dispatcher::new(cfg());
        d.put(alert(&[("alertname", "Old")], T0 - H, T0 + H), T0);
        let dues = d.flush_due(T0);
        assert_eq!(dues.len(), 1, "startsAt + group_wait is past: flush now");
        // Not recorded (the send failed): due again at the next interval.
        assert!(d.flush_due(T0 + M).is_empty());
        let dues = tick(&mut d, T0 + 5 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="Old"} 1f0r first notification"#]
        );
        assert!(tick(&mut d, T0 + 10 * M).is_empty());
    }

    #[test]
    fn continue_routes_and_send_resolved_false() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "Disk"), ("team", "db")], T0, T0 + 20 * M);
        d.put(a.clone(), T0);
        let dues = tick(&mut d, T0 + 30 * S);
        assert_eq!(
            summary(&dues),
            [
                r#"db/pagerduty[0] {}/{team="db"}:{alertname="Disk"} 1f0r first notification"#,
                r#"db/webhook[0] {}/{team="db"}:{alertname="Disk"} 1f0r first notification"#,
            ],
            "the quiet receiver has no integrations"
        );
        let views = d.alerts(T0 + M);
        assert_eq!(views[0].receivers, ["db", "quiet"]);
        assert_eq!(d.groups(T0 + M).len(), 2);
        assert_eq!(
            d.groups(T0 + M)[1].group_key,
            r#"{}/{team=~"db|web"}:{team="db"}"#
        );
        // A second alert firing, the first resolved: pagerduty (send_resolved
        // true) hears of both; the webhook with send_resolved false only of
        // the new firing one.
        let b = alert(
            &[("alertname", "Disk"), ("team", "db"), ("i", "2")],
            T0 + 21 * M,
            0,
        );
        d.put(b.clone(), T0 + 21 * M);
        let dues = tick(&mut d, T0 + 30 * S + 25 * M);
        assert_eq!(dues.len(), 2);
        assert_eq!(dues[0].notification.alerts.len(), 2);
        assert_eq!(dues[1].notification.alerts.len(), 1);
        assert_eq!(dues[1].notification.alerts[0].status, Status::Firing);
        assert_eq!(
            dues[1].resolved.len(),
            1,
            "the log still records the resolved one"
        );
        // All resolved: the send_resolved=false webhook sends nothing but
        // the log learns it.
        let t = T0 + 30 * S + 40 * M;
        d.resolve(b.fingerprint(), "ann", t - M);
        let dues = tick(&mut d, t);
        assert_eq!(
            summary(&dues),
            [r#"db/pagerduty[0] {}/{team="db"}:{alertname="Disk"} 0f1r all alerts resolved"#],
            "the first one left the group once notified as resolved"
        );
        assert!(
            d.state()
                .nflog
                .iter()
                .any(|e| e.integration.name == "webhook" && e.firing.is_empty())
        );
    }

    #[test]
    fn inhibited_silenced_and_muted_alerts_are_not_notified() {
        let mut d = Dispatcher::new(cfg());
        let crit = alert(&[("alertname", "X"), ("severity", "critical")], T0, T0 + H);
        let warn = alert(&[("alertname", "X"), ("severity", "warning")], T0, T0 + H);
        d.put(crit.clone(), T0);
        d.put(warn.clone(), T0);
        let dues = tick(&mut d, T0 + 30 * S);
        assert_eq!(dues[0].firing, vec![crit.fingerprint()]);
        let v = d.alerts(T0 + M);
        let w = v
            .iter()
            .find(|v| v.fingerprint == warn.fingerprint())
            .unwrap();
        assert_eq!(w.state, AlertState::Suppressed);
        assert_eq!(w.inhibited_by, vec![crit.fingerprint()]);
        // Silence the critical one: the warning is still inhibited (the
        // source counts while silenced), nothing is sent.
        let sil = crate::silence::Silence {
            id: String::new(),
            matchers: crate::matcher::parse_matchers(r#"severity="critical""#).unwrap(),
            starts_at: T0 + M,
            ends_at: T0 + 3 * H,
            created_by: "me".into(),
            comment: "".into(),
            updated_at: 0,
        };
        d.silences_mut().set(sil, "s1", T0 + M).unwrap();
        // Nothing unmuted fires any more: Alertmanager's needsUpdate calls
        // that "all alerts resolved" and sends it (empty), clearing the log.
        let dues = tick(&mut d, T0 + 30 * S + 5 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="X"} 0f0r all alerts resolved"#]
        );
        assert!(tick(&mut d, T0 + 30 * S + 10 * M).is_empty());
        let ev = d.drain_events();
        assert!(ev.iter().any(|e| e.fingerprint == crit.fingerprint()
            && matches!(&e.kind, EventKind::Suppressed { silenced_by, .. } if silenced_by == &["s1".to_string()])));
        // A route muted by a time interval sends nothing.
        let n = alert(&[("alertname", "N"), ("team", "night")], T0, T0 + H);
        d.put(n, T0 + 11 * M);
        assert!(tick(&mut d, T0 + 12 * M).is_empty());
        assert!(tick(&mut d, T0 + 20 * M).is_empty());
    }

    #[test]
    fn restore_after_snapshot_sends_no_duplicate_and_loses_no_resolve() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A")], T0, T0 + H);
        d.put(a.clone(), T0);
        assert_eq!(tick(&mut d, T0 + 30 * S).len(), 1);
        // kill -9 after the send was recorded: no second page.
        let snap = serde_json::to_string(&d.state()).unwrap();
        let state: State = serde_json::from_str(&snap).unwrap();
        let mut r = Dispatcher::restore(cfg(), state, T0 + M);
        d.put(a.clone(), T0 + 2 * M);
        r.put(a.clone(), T0 + 2 * M);
        for t in [T0 + 2 * M, T0 + 6 * M, T0 + 11 * M, T0 + 30 * M] {
            assert!(
                tick(&mut r, t).is_empty(),
                "no duplicate at {}",
                (t - T0) / M
            );
        }
        // It resolves; we crash before notifying. The restored one notifies.
        let mut a2 = a.clone();
        a2.ends_at = T0 + 31 * M;
        r.put(a2, T0 + 31 * M);
        let state = r.state();
        let mut r2 = Dispatcher::restore(cfg(), state, T0 + 32 * M);
        let dues = tick(&mut r2, T0 + 36 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 0f1r all alerts resolved"#]
        );
        // Once notified and restored again: nothing more.
        let mut r3 = Dispatcher::restore(cfg(), r2.state(), T0 + 37 * M);
        assert!(tick(&mut r3, T0 + 50 * M).is_empty());
    }

    #[test]
    fn downtime_does_not_end_alerts_or_their_acks() {
        let mut d = Dispatcher::new(cfg());
        // Valid for 4 s after each re-send, as Ferry's rules send with a
        // 1 s interval.
        let a = alert(&[("alertname", "A")], T0, T0 + 4 * S);
        d.put(a.clone(), T0);
        d.ack(a.fingerprint(), "ann", "on it", None, T0 + S)
            .unwrap();
        // Down from T0 + 2 s to T0 + 10 s: past its endsAt, nobody could
        // re-send it.
        let mut st = d.state();
        st.saved_at = T0 + 2 * S;
        let mut r = Dispatcher::restore(cfg(), st, T0 + 10 * S);
        let v = r.alerts(T0 + 10 * S);
        assert!(!v[0].resolved, "still active after the restart");
        assert!(v[0].acked.is_some(), "still acknowledged");
        // Its source re-sends the same occurrence: still acknowledged.
        let mut again = a.clone();
        again.ends_at = T0 + 14 * S;
        r.put(again, T0 + 11 * S);
        assert!(r.alerts(T0 + 11 * S)[0].acked.is_some());
        // Not re-sent: it ends once its validity has passed, the downtime
        // not counted.
        assert!(r.alerts(T0 + 20 * S)[0].resolved);
        // An alert that had ended before the save stays ended.
        let mut e = Dispatcher::new(cfg());
        e.put(alert(&[("alertname", "B")], T0, T0 + S), T0);
        let mut st = e.state();
        st.saved_at = T0 + 5 * S;
        let r = Dispatcher::restore(cfg(), st, T0 + 10 * S);
        assert!(r.alerts(T0 + 10 * S)[0].resolved);
    }

    #[test]
    fn ack_suppresses_repeat_but_a_new_alert_still_notifies() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A"), ("team", "db")], T0, T0 + 10 * H);
        d.put(a.clone(), T0);
        assert_eq!(tick(&mut d, T0 + 30 * S).len(), 2);
        let became = d
            .ack(a.fingerprint(), "ann", "on it", None, T0 + M)
            .unwrap();
        assert_eq!(became.len(), 2, "db and quiet groups");
        assert_eq!(d.next_wakeup(T0 + M), Some(T0 + M));
        let dues = d.flush_due(T0 + M);
        assert_eq!(
            dues.len(),
            2,
            "pagerduty and webhook of db (quiet has none)"
        );
        assert!(
            dues.iter()
                .all(|x| x.kind == DueKind::Acknowledge && x.notification.reason == "acknowledged")
        );
        for x in &dues {
            d.record_due(x, T0 + M);
        }
        // No repeat after the repeat interval while acked.
        let mut t = T0 + 30 * S;
        while t < T0 + 3 * H {
            t += 5 * M;
            assert!(tick(&mut d, t).is_empty(), "at {}", (t - T0) / M);
        }
        let v = d.alerts(t);
        assert_eq!(v[0].acked.as_ref().unwrap().by, "ann");
        // A new firing alert in the group notifies.
        let b = alert(
            &[("alertname", "A"), ("team", "db"), ("i", "2")],
            t,
            T0 + 10 * H,
        );
        d.put(b, t);
        let dues = tick(&mut d, t + 5 * M);
        assert_eq!(dues.len(), 2);
        assert!(
            dues.iter()
                .all(|x| x.notification.reason == "new alerts added")
        );
        assert!(d.ack(Fingerprint(1), "x", "", None, t).is_err());
        let ev = d.drain_events();
        assert!(
            ev.iter()
                .any(|e| matches!(&e.kind, EventKind::Acked { by, .. } if by == "ann"))
        );
        assert!(
            ev.iter()
                .any(|e| matches!(&e.kind, EventKind::Notified { .. }))
        );
    }

    #[test]
    fn ack_until_expires() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A")], T0, T0 + 10 * H);
        d.put(a.clone(), T0);
        tick(&mut d, T0 + 30 * S);
        d.ack(a.fingerprint(), "ann", "", Some(T0 + 2 * H), T0 + M)
            .unwrap();
        let mut t = T0 + 30 * S;
        let mut sent = Vec::new();
        while t < T0 + 3 * H {
            t += 5 * M;
            if tick(&mut d, t).iter().any(|x| x.kind == DueKind::Notify) {
                sent.push(t);
            }
        }
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0] >= T0 + 2 * H && sent[0] < T0 + 2 * H + 5 * M);
        assert!(
            d.drain_events()
                .iter()
                .any(|e| e.kind == EventKind::AckEnded)
        );
    }

    #[test]
    fn manual_resolve_holds_for_the_occurrence() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A")], T0, 0);
        d.put(a.clone(), T0);
        tick(&mut d, T0 + 30 * S);
        assert!(d.resolve(a.fingerprint(), "ann", T0 + M));
        assert!(
            !d.resolve(a.fingerprint(), "ann", T0 + M),
            "already resolved"
        );
        // The source keeps re-sending the same occurrence: stays resolved.
        for i in 2..6 {
            d.put(a.clone(), T0 + i * M);
        }
        let dues = tick(&mut d, T0 + 30 * S + 5 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 0f1r all alerts resolved"#]
        );
        d.put(a.clone(), T0 + 6 * M);
        assert!(tick(&mut d, T0 + 30 * S + 10 * M).is_empty());
        assert!(d.alerts(T0 + 11 * M)[0].resolved);
        let ev = d.drain_events();
        assert!(ev.iter().any(|e| e.kind
            == EventKind::Resolved {
                by: Some("ann".into())
            }));
        // A new occurrence fires again.
        let again = alert(&[("alertname", "A")], T0 + 20 * M, 0);
        d.put(again, T0 + 20 * M);
        assert!(!d.alerts(T0 + 20 * M)[0].resolved);
        let dues = tick(&mut d, T0 + 21 * M);
        assert_eq!(
            summary(&dues),
            [r#"ops/webhook[0] {}:{alertname="A"} 1f0r first notification"#]
        );
        assert!(d.drain_events().iter().any(|e| e.kind == EventKind::Firing));
    }

    #[test]
    fn merge_as_alertmanager_provider() {
        let mut d = Dispatcher::new(cfg());
        // Re-sent with a later end: extended; the earliest start is kept.
        d.put(alert(&[("alertname", "A")], T0, T0 + 10 * M), T0);
        d.put(
            alert(&[("alertname", "A")], T0 + M, T0 + 20 * M),
            T0 + 2 * M,
        );
        let v = &d.alerts(T0 + 3 * M)[0];
        assert_eq!((v.alert.starts_at, v.alert.ends_at), (T0, T0 + 20 * M));
        // Missing endsAt: now + resolve_timeout, but an explicit later end wins.
        d.put(alert(&[("alertname", "A")], T0 + M, 0), T0 + 4 * M);
        assert_eq!(d.alerts(T0 + 4 * M)[0].alert.ends_at, T0 + 20 * M);
        // Resolved at the source: resolved.
        d.put(alert(&[("alertname", "A")], T0, T0 + 5 * M), T0 + 5 * M);
        assert!(d.alerts(T0 + 5 * M)[0].resolved);
        // A new occurrence after it ended replaces it.
        d.put(alert(&[("alertname", "A")], T0 + 30 * M, 0), T0 + 30 * M);
        let v = &d.alerts(T0 + 30 * M)[0];
        assert_eq!(
            (v.alert.starts_at, v.alert.ends_at),
            (T0 + 30 * M, T0 + 35 * M)
        );
    }

    #[test]
    fn reload_keeps_log_and_timers() {
        let mut d = Dispatcher::new(cfg());
        let a = alert(&[("alertname", "A")], T0, T0 + 10 * H);
        d.put(a.clone(), T0);
        tick(&mut d, T0 + 30 * S);
        d.reload(cfg(), T0 + M);
        assert!(tick(&mut d, T0 + 6 * M).is_empty());
        assert_eq!(d.groups(T0 + 6 * M).len(), 1);
        // A config where the alert goes elsewhere: a first notification there.
        let other = AlertmanagerConfig::load_yaml(
            "t.yml",
            "route: {receiver: r2, group_by: [alertname]}\nreceivers: [{name: r2, webhook_configs: [{url: 'http://y'}]}]",
        )
        .unwrap();
        d.reload(other, T0 + 7 * M);
        let dues = tick(&mut d, T0 + 7 * M);
        assert_eq!(
            summary(&dues),
            [r#"r2/webhook[0] {}:{alertname="A"} 1f0r first notification"#]
        );
    }

    #[test]
    fn needs_update_table() {
        let s = |v: &[u64]| v.iter().map(|x| Fingerprint(*x)).collect::<BTreeSet<_>>();
        let e = |f: &[u64], r: &[u64], ts: Millis| NflogEntry {
            receiver: "r".into(),
            integration: Integration {
                name: "webhook".into(),
                index: 0,
            },
            group_key: "g".into(),
            firing: s(f),
            resolved: s(r),
            timestamp: ts,
            expires_at: ts + 2 * H,
        };
        assert_eq!(
            needs_update(None, &s(&[1]), &s(&[]), true, H, 0),
            Reason::FirstNotification
        );
        assert_eq!(
            needs_update(None, &s(&[]), &s(&[1]), true, H, 0),
            Reason::None
        );
        assert_eq!(
            needs_update(Some(&e(&[1], &[], 0)), &s(&[1, 2]), &s(&[]), true, H, 0),
            Reason::NewAlertsInGroup
        );
        assert_eq!(
            needs_update(Some(&e(&[], &[1], 0)), &s(&[2]), &s(&[]), true, H, 0),
            Reason::FirstNotification
        );
        assert_eq!(
            needs_update(Some(&e(&[1], &[], 0)), &s(&[]), &s(&[1]), false, H, 0),
            Reason::AllAlertsResolved
        );
        assert_eq!(
            needs_update(Some(&e(&[], &[1], 0)), &s(&[]), &s(&[1]), true, H, 0),
            Reason::None
        );
        assert_eq!(
            needs_update(Some(&e(&[1, 2], &[], 0)), &s(&[1]), &s(&[2]), true, H, 0),
            Reason::NewResolvedAlerts
        );
        assert_eq!(
            needs_update(Some(&e(&[1, 2], &[], 0)), &s(&[1]), &s(&[2]), false, H, 0),
            Reason::None
        );
        assert_eq!(
            needs_update(Some(&e(&[1], &[], 0)), &s(&[1]), &s(&[]), true, H, H),
            Reason::None
        );
        assert_eq!(
            needs_update(Some(&e(&[1], &[], 0)), &s(&[1]), &s(&[]), true, H, H + 1),
            Reason::RepeatIntervalElapsed
        );
    }
}
