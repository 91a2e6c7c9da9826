//! Alerting in the daemon: the imperative shell around `ferry-alert`.
//!
//! - Rule groups ([`rules`]) run on tasks of their own, each every
//!   `interval`, evaluating against the metrics store on a blocking thread
//!   and writing their output (recording rules, `ALERTS`,
//!   `ALERTS_FOR_STATE`) back into it.
//! - Alerts they send, and alerts a Prometheus pushes to
//!   `POST /api/v2/alerts`, go to the notifier ([`notifier`]): a
//!   `ferry_alert::dispatch::Dispatcher` (routing, grouping, inhibition,
//!   silences, acknowledgements) whose due notifications are delivered by
//!   one task per group × integration ([`receivers`]), so a slow or dead
//!   receiver delays nothing else; and to real Alertmanagers ([`push`]).
//! - Everything that must survive a `kill -9` (rule alert states, the
//!   dispatcher's alerts, silences, acks and notification log) and the
//!   history of changes and attempts is saved in `alerts.db` ([`store`])
//!   before it is acted on.
//! - Firing alerts are published on the daemon's [`board::Board`], which
//!   the reconcile loop reads to roll a release back.

pub mod board;
pub mod load;
pub mod notifier;
pub mod push;
pub mod receivers;
pub mod rules;
pub mod store;

use crate::daemon::Daemon;
use ferry_alert::alert::{Alert, Fingerprint, LabelSet, Millis};
use ferry_alert::dispatch::Dispatcher;
use load::Loaded;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use store::{AlertStore, NewEntry};

/// Where `[alerting]` comes from: the config file given to `ferry serve
/// --config` (re-read by `ferry alerts reload`), or the defaults.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub config_file: Option<PathBuf>,
    pub config: ferry_core::alerting_config::AlertingConfig,
}

impl Source {
    fn base(&self) -> PathBuf {
        self.config_file
            .as_ref()
            .and_then(|f| f.parent().map(|p| p.to_path_buf()))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Read everything `[alerting]` names, checked.
    pub fn load(&self) -> Result<Loaded, Vec<String>> {
        load::load(&self.config, &self.base(), self.config_file.as_deref())
    }

    /// Re-read the config file (for a reload).
    fn reread(&self) -> Result<Source, Vec<String>> {
        let Some(file) = &self.config_file else {
            return Ok(self.clone());
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| vec![format!("cannot read {}: {e}", file.display())])?;
        let config = ferry_core::config::parse(file, &text)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        Ok(Source {
            config_file: Some(file.clone()),
            config: config.alerting,
        })
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub evaluations: std::sync::atomic::AtomicU64,
    pub evaluation_failures: std::sync::atomic::AtomicU64,
    pub received: std::sync::atomic::AtomicU64,
    /// (receiver, integration, outcome) → count.
    pub notifications: Mutex<BTreeMap<(String, String, String), u64>>,
}

/// The daemon's alerting.
pub struct Alerting {
    pub store: AlertStore,
    source: Mutex<Source>,
    loaded: Mutex<Arc<Loaded>>,
    /// The API's URL: the default external URL.
    api_url: String,
    pub(crate) groups: Mutex<Vec<rules::Running>>,
    /// The rule groups generated from services' SLOs (`crate::slo`),
    /// evaluated with the loaded ones.
    pub(crate) slo_groups: Mutex<Vec<load::GroupDef>>,
    pub(crate) dispatcher: Mutex<Dispatcher>,
    pub(crate) receivers: arc_swap::ArcSwap<BTreeMap<String, Vec<receivers::Integration>>>,
    pusher: Mutex<Arc<push::Pusher>>,
    /// Wakes the notifier: new alerts, a new silence, an ack.
    pub(crate) wake: tokio::sync::Notify,
    /// (receiver, integration, group key) being delivered now.
    pub(crate) inflight: Mutex<HashSet<(String, String, String)>>,
    /// The value of each firing rule alert when last evaluated.
    pub(crate) values: Mutex<HashMap<Fingerprint, f64>>,
    /// The dispatcher changed since the notifier last saved it.
    pub(crate) dirty: std::sync::atomic::AtomicBool,
    /// History lines (delivery attempts) written with the next save.
    history: Mutex<Vec<NewEntry>>,
    /// Copies of the dispatcher's state are numbered under its lock; the
    /// store keeps the newest written (a copy made before an ack must not
    /// overwrite the ack when its write comes second).
    state_seq: std::sync::atomic::AtomicU64,
    saved_seq: Mutex<u64>,
    /// Deliveries in flight per receiver integration.
    limits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub counters: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error(transparent)]
    Store(#[from] store::AlertStoreError),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store key of the dispatcher's state.
const NOTIFIER_KEY: &str = "notifier";
/// History is kept this long.
const HISTORY_DAYS: i64 = 90;

impl Alerting {
    /// Load `[alerting]` and the saved state; nothing runs yet
    /// ([`Alerting::start`]).
    pub fn open(
        data_dir: &std::path::Path,
        source: Source,
        api_url: &str,
        now: Millis,
    ) -> Result<Alerting, AlertingError> {
        let loaded = source.load().map_err(AlertingError::Config)?;
        for w in &loaded.warnings {
            tracing::warn!("alerting: {w}");
        }
        let store = AlertStore::open(&data_dir.join(store::FILE))?;
        let compiled = loaded.compiled.clone();
        let dispatcher = match store.load::<ferry_alert::dispatch::State>(NOTIFIER_KEY)? {
            Some(state) => {
                tracing::info!(
                    "alerting: {} alerts, {} silences and {} acknowledgements restored (saved {} ms before this start)",
                    state.alerts.len(),
                    state.silences.by_id.len(),
                    state.acks.len(),
                    now - state.saved_at
                );
                for s in &state.alerts {
                    tracing::debug!(
                        "restored {} ends {} updated {}",
                        s.alert.name(),
                        s.alert.ends_at - now,
                        s.alert.updated_at - now
                    );
                }
                Dispatcher::restore(compiled, state, now)
            }
            None => Dispatcher::new(compiled),
        };
        let integrations = loaded.integrations.clone();
        Ok(Alerting {
            store,
            source: Mutex::new(source),
            loaded: Mutex::new(Arc::new(loaded)),
            api_url: api_url.to_string(),
            groups: Mutex::new(Vec::new()),
            slo_groups: Mutex::new(Vec::new()),
            dispatcher: Mutex::new(dispatcher),
            receivers: arc_swap::ArcSwap::new(integrations),
            pusher: Mutex::new(Arc::new(push::Pusher::default())),
            wake: tokio::sync::Notify::new(),
            inflight: Mutex::new(HashSet::new()),
            values: Mutex::new(HashMap::new()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            history: Mutex::new(Vec::new()),
            state_seq: std::sync::atomic::AtomicU64::new(1),
            saved_seq: Mutex::new(0),
            limits: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        lock(&self.loaded).clone()
    }

    pub(crate) fn pusher(&self) -> Arc<push::Pusher> {
        lock(&self.pusher).clone()
    }

    /// The URL alerts link back to.
    pub fn external_url(&self) -> String {
        self.loaded()
            .external_url
            .clone()
            .unwrap_or_else(|| self.api_url.clone())
    }

    /// Start the rule groups, the notifier and the pushers.
    pub fn start(self: &Arc<Self>, d: &Arc<Daemon>) -> Vec<tokio::task::JoinHandle<()>> {
        let loaded = self.loaded();
        *lock(&self.pusher) = Arc::new(push::Pusher::start(&loaded.alertmanagers, http_client()));
        rules::start(self, d, &loaded, Vec::new());
        vec![tokio::spawn(notifier::run(self.clone(), d.clone()))]
    }

    /// Stop the rule groups (the notifier task is aborted by its owner).
    pub fn stop(&self) {
        for g in lock(&self.groups).drain(..) {
            g.task.abort();
        }
        *lock(&self.pusher) = Arc::new(push::Pusher::default());
    }

    /// Re-read `[alerting]` and apply all of it, or nothing: rule groups
    /// keep the state of their alerts (same file, group and rule), the
    /// notifier keeps its alerts, silences, acks and notification log.
    pub fn reload(self: &Arc<Self>, d: &Arc<Daemon>) -> Result<String, Vec<String>> {
        let source = lock(&self.source).reread()?;
        let loaded = source.load()?;
        let (compiled, integrations) = (loaded.compiled.clone(), loaded.integrations.clone());
        // Checked: from here on nothing can fail.
        for w in &loaded.warnings {
            tracing::warn!("alerting: {w}");
        }
        let now = d.clock.now() as Millis;
        let states = self.stop_groups();
        lock(&self.dispatcher).reload(compiled, now);
        self.receivers.store(integrations);
        let loaded = Arc::new(loaded);
        if loaded.alertmanagers != self.loaded().alertmanagers {
            *lock(&self.pusher) =
                Arc::new(push::Pusher::start(&loaded.alertmanagers, http_client()));
        }
        *lock(&self.loaded) = loaded.clone();
        *lock(&self.source) = source;
        rules::start(self, d, &loaded, states);
        self.wake.notify_one();
        let n: usize = loaded.groups.iter().map(|g| g.spec.rules.len()).sum();
        Ok(format!(
            "alerting reloaded: {n} rules in {} groups; routing from {}",
            loaded.groups.len(),
            loaded.am_source
        ))
    }

    /// Stop every rule group, keeping the state of its alerts for the
    /// groups that replace it.
    fn stop_groups(&self) -> Vec<(String, String, Vec<ferry_alert::rules::AlertState>)> {
        let kept: Vec<rules::Running> = lock(&self.groups).drain(..).collect();
        let mut states = Vec::new();
        for g in kept {
            g.task.abort();
            let group = lock(&g.group);
            states.push((group.file.clone(), group.name.clone(), group.snapshot()));
        }
        states
    }

    /// Replace the SLO rule groups (the services' SLOs changed) and
    /// restart the groups; alerts keep their state.
    pub fn set_slo_groups(self: &Arc<Self>, d: &Arc<Daemon>, groups: Vec<load::GroupDef>) {
        *lock(&self.slo_groups) = groups;
        let states = self.stop_groups();
        let loaded = self.loaded();
        rules::start(self, d, &loaded, states);
    }

    /// Would a reload succeed? (Read and check the config file again,
    /// applying nothing.)
    pub fn check_reload(&self) -> Result<(), Vec<String>> {
        let source = lock(&self.source).reread()?;
        source.load().map(|_| ())
    }

    /// Take alerts in (from rules, or pushed) and wake the notifier,
    /// which saves them before it sends anything about them.
    pub fn receive(&self, alerts: Vec<Alert>, now: Millis) {
        if alerts.is_empty() {
            return;
        }
        lock(&self.dispatcher).put_all(alerts, now);
        self.mark_dirty();
    }

    /// Something changed: the notifier saves and looks again.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Queue history lines for the next save.
    pub(crate) fn queue_history(&self, entries: Vec<NewEntry>) {
        lock(&self.history).extend(entries);
        self.mark_dirty();
    }

    /// The semaphore bounding deliveries to one receiver integration.
    pub(crate) fn limit(&self, key: &str, permits: usize) -> Arc<tokio::sync::Semaphore> {
        lock(&self.limits)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(permits)))
            .clone()
    }

    /// Save the dispatcher's state with the history of what changed in it
    /// (now, under the caller's lock: for changes a person makes, which
    /// are answered only once saved).
    pub(crate) fn save_dispatcher(
        &self,
        disp: &mut Dispatcher,
        now: Millis,
    ) -> Result<(), store::AlertStoreError> {
        let (state, seq) = self.copy_state(disp, now);
        self.save_state(&state, seq, disp.drain_events())
    }

    /// A numbered copy of the dispatcher's state at `now` (call under its
    /// lock).
    pub(crate) fn copy_state(
        &self,
        disp: &Dispatcher,
        now: Millis,
    ) -> (ferry_alert::dispatch::State, u64) {
        let seq = self
            .state_seq
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let mut state = disp.state();
        state.saved_at = now;
        (state, seq)
    }

    /// Write copy `seq` of the dispatcher's state (unless a newer copy is
    /// already written), the history of its events and the queued history
    /// lines, in one transaction.
    pub(crate) fn save_state(
        &self,
        state: &ferry_alert::dispatch::State,
        seq: u64,
        events: Vec<ferry_alert::dispatch::Event>,
    ) -> Result<(), store::AlertStoreError> {
        let mut history: Vec<NewEntry> = events.iter().filter_map(history_of).collect();
        history.append(&mut lock(&self.history));
        let mut saved = lock(&self.saved_seq);
        if seq < *saved {
            return self.store.append(&history);
        }
        self.store.save(NOTIFIER_KEY, state, &history)?;
        *saved = seq;
        Ok(())
    }

    /// Find one alert by its ID or a unique prefix of it.
    pub fn find(&self, id: &str) -> Result<Fingerprint, String> {
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{id:?} is not an alert ID (16 hex digits, or a unique prefix; `ferry alerts` lists them)"
            ));
        }
        let disp = lock(&self.dispatcher);
        let found: Vec<Fingerprint> = disp
            .fingerprints()
            .filter(|fp| fp.to_string().starts_with(&id))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no alert {id}; `ferry alerts --all` lists them")),
            _ => Err(format!(
                "{id} matches {} alerts; give more of the ID",
                found.len()
            )),
        }
    }

    /// Publish the firing alerts for the reconcile loop; wake it when the
    /// set changed.
    pub(crate) fn publish(&self, d: &Daemon, now: Millis) {
        let views = lock(&self.dispatcher).alerts(now);
        let values = lock(&self.values);
        let firing: Vec<board::Firing> = views
            .into_iter()
            .filter(|v| !v.resolved)
            .map(|v| board::Firing {
                value: values.get(&v.fingerprint).copied(),
                since: v.alert.starts_at,
                silenced: !v.silenced_by.is_empty(),
                labels: v.alert.labels,
            })
            .collect();
        drop(values);
        if *d.alerts.firing() != firing {
            d.alerts.set(firing);
            d.notify.notify_one();
        }
    }

    /// Forget old history (called now and then).
    pub fn prune(&self, now: Millis) {
        if let Err(e) = self.store.prune(now - HISTORY_DAYS * 86_400_000) {
            tracing::warn!("{e}");
        }
    }
}

/// A history line for a dispatcher event.
fn history_of(e: &ferry_alert::dispatch::Event) -> Option<NewEntry> {
    use ferry_alert::dispatch::EventKind as K;
    let name = e.labels.get("alertname").cloned().unwrap_or_default();
    let labels = ferry_metrics::storage::format_labels(&e.labels);
    let (kind, message, receiver) = match &e.kind {
        K::Firing => (
            "firing",
            format!("{name} is firing: {labels}"),
            String::new(),
        ),
        K::Suppressed {
            silenced_by,
            inhibited_by,
        } => {
            let mut why = Vec::new();
            if !silenced_by.is_empty() {
                why.push(format!("silenced by {}", silenced_by.join(", ")));
            }
            if !inhibited_by.is_empty() {
                let by: Vec<String> = inhibited_by.iter().map(|f| f.to_string()).collect();
                why.push(format!("inhibited by {}", by.join(", ")));
            }
            if why.is_empty() {
                why.push("muted".into());
            }
            (
                "suppressed",
                format!("{name} is {}", why.join("; ")),
                String::new(),
            )
        }
        K::Resolved { by } => (
            "resolved",
            match by {
                Some(who) => format!("{name} was resolved by {who}"),
                None => format!("{name} resolved"),
            },
            String::new(),
        ),
        K::Acked { by, comment, until } => (
            "acknowledged",
            format!(
                "{name} acknowledged by {by}{}{}",
                until
                    .map(|u| format!(" until {}", ferry_core::time::rfc3339(u.max(0) as u64)))
                    .unwrap_or_default(),
                if comment.is_empty() {
                    String::new()
                } else {
                    format!(": {comment}")
                }
            ),
            String::new(),
        ),
        K::AckEnded => (
            "unacknowledged",
            format!("{name}: acknowledgement ended"),
            String::new(),
        ),
        // Delivery attempts are recorded by the notifier, with their
        // outcome and error.
        K::Notified { .. } => return None,
    };
    Some(NewEntry {
        at: e.at,
        kind: kind.to_string(),
        alertname: name,
        fingerprint: e.fingerprint.to_string(),
        receiver,
        message,
        detail: serde_json::json!({ "labels": e.labels }),
    })
}

/// External labels added to an alert where it lacks them.
pub(crate) fn with_external(mut labels: LabelSet, external: &LabelSet) -> LabelSet {
    for (k, v) in external {
        if labels.get(k).is_none_or(String::is_empty) {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

impl Alerting {
    /// Alert state on `/metrics`: alerts by name, state and severity; rule
    /// evaluations; notifications by receiver, integration and outcome;
    /// alerts pushed to Alertmanagers.
    pub fn render_metrics(&self, now: Millis) -> String {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        // Rule alerts by state (pending ones exist only there).
        let mut by_state: BTreeMap<(String, &'static str, String), u64> = BTreeMap::new();
        for g in lock(&self.groups).iter() {
            let g = lock(&g.group);
            for rule in &g.rules {
                for a in rule.active_alerts() {
                    let sev = a.labels.get("severity").cloned().unwrap_or_default();
                    *by_state
                        .entry((rule.name().to_string(), a.state.as_str(), sev))
                        .or_default() += 1;
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_rule_alerts Alerts of Ferry's rules by name, state (pending, firing) and severity.\n# TYPE ferry_rule_alerts gauge"
        );
        for ((name, state, sev), n) in &by_state {
            let _ = writeln!(
                out,
                "ferry_rule_alerts{{alertname=\"{}\",state=\"{state}\",severity=\"{}\"}} {n}",
                ferry_proxy::escape_label_value(name),
                ferry_proxy::escape_label_value(sev)
            );
        }
        // Every alert the notifier holds (rules' and pushed ones).
        let mut notifier: BTreeMap<(String, &'static str, String), u64> = BTreeMap::new();
        for v in lock(&self.dispatcher).alerts(now) {
            if v.resolved {
                continue;
            }
            let state = if v.acked.is_some() {
                "acknowledged"
            } else if !v.silenced_by.is_empty() {
                "silenced"
            } else if !v.inhibited_by.is_empty() {
                "inhibited"
            } else if v.state == ferry_alert::dispatch::AlertState::Suppressed {
                "muted"
            } else {
                "active"
            };
            let sev = v.alert.labels.get("severity").cloned().unwrap_or_default();
            *notifier
                .entry((v.alert.name().to_string(), state, sev))
                .or_default() += 1;
        }
        let _ = writeln!(
            out,
            "# HELP ferry_alerts Firing alerts held by the notifier by name, state (active, silenced, inhibited, muted, acknowledged) and severity.\n# TYPE ferry_alerts gauge"
        );
        for ((name, state, sev), n) in &notifier {
            let _ = writeln!(
                out,
                "ferry_alerts{{alertname=\"{}\",state=\"{state}\",severity=\"{}\"}} {n}",
                ferry_proxy::escape_label_value(name),
                ferry_proxy::escape_label_value(sev)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_rule_evaluations_total Rule evaluations.\n# TYPE ferry_rule_evaluations_total counter\nferry_rule_evaluations_total {}",
            self.counters.evaluations.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_rule_evaluation_failures_total Rule evaluations that failed (health err).\n# TYPE ferry_rule_evaluation_failures_total counter\nferry_rule_evaluation_failures_total {}",
            self.counters.evaluation_failures.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_alerts_received_total Alerts pushed to POST /api/v2/alerts.\n# TYPE ferry_alerts_received_total counter\nferry_alerts_received_total {}",
            self.counters.received.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_notifications_total Notification attempts by receiver, integration and outcome (delivered, retrying, gave up, skipped).\n# TYPE ferry_notifications_total counter"
        );
        for ((receiver, integration, outcome), n) in lock(&self.counters.notifications).iter() {
            let _ = writeln!(
                out,
                "ferry_notifications_total{{receiver=\"{}\",integration=\"{}\",outcome=\"{outcome}\"}} {n}",
                ferry_proxy::escape_label_value(receiver),
                ferry_proxy::escape_label_value(integration)
            );
        }
        let pushed = self.pusher().counters();
        for (family, help, pick) in [
            (
                "ferry_alertmanager_alerts_sent_total",
                "Alerts pushed to an Alertmanager.",
                0usize,
            ),
            (
                "ferry_alertmanager_errors_total",
                "Failed pushes to an Alertmanager.",
                1,
            ),
            (
                "ferry_alertmanager_alerts_dropped_total",
                "Alerts not pushed to an Alertmanager (queue full or push failed).",
                2,
            ),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for (url, sent, errors, dropped) in &pushed {
                let v = [sent, errors, dropped][pick];
                let _ = writeln!(
                    out,
                    "{family}{{alertmanager=\"{}\"}} {v}",
                    ferry_proxy::escape_label_value(url)
                );
            }
        }
        out
    }
}
