//! The alerts firing now, as the reconcile loop reads them to roll a
//! release back: published by the notifier after every change, read
//! without a lock.

use ferry_alert::alert::{LabelSet, Millis};
use ferry_alert::matcher::Matcher;
use ferry_core::rollout::AlertObs;
use std::sync::Arc;

/// One firing alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub labels: LabelSet,
    /// The rule's value when it fired (unknown for pushed alerts).
    pub value: Option<f64>,
    /// When it started firing.
    pub since: Millis,
    /// Silenced alerts do not roll releases back: a silence says "we
    /// know".
    pub silenced: bool,
}

#[derive(Default)]
pub struct Board {
    firing: arc_swap::ArcSwap<Vec<Firing>>,
}

impl Board {
    pub fn set(&self, firing: Vec<Firing>) {
        self.firing.store(Arc::new(firing));
    }

    pub fn firing(&self) -> Arc<Vec<Firing>> {
        self.firing.load_full()
    }

    /// The alerts that fail a rollout of `service` begun at `began`: about
    /// the service (its `service` or `job` label), matching every one of
    /// `matchers`, not silenced, and firing since after the rollout began
    /// (an alert that was already firing is what the release may fix).
    /// An empty `matchers` means none.
    pub fn against(&self, service: &str, matchers: &[Matcher], began: Millis) -> Vec<AlertObs> {
        if matchers.is_empty() {
            return Vec::new();
        }
        let firing = self.firing.load();
        firing
            .iter()
            .filter(|a| !a.silenced && a.since >= began)
            .filter(|a| {
                a.labels.get("service").map(String::as_str) == Some(service)
                    || a.labels.get("job").map(String::as_str) == Some(service)
            })
            .filter(|a| matchers.iter().all(|m| m.matches(&a.labels)))
            .map(|a| AlertObs {
                name: a.labels.get("alertname").cloned().unwrap_or_default(),
                value: a.value,
                labels: ferry_metrics::storage::format_labels(&a.labels),
                since: a.since.max(0) as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_new_unsilenced_alerts_about_the_service_that_match() {
        let b = Board::default();
        let m = vec![Matcher::parse(r#"severity=~"critical|emergency""#).unwrap()];
        let fire = |l: &[(&str, &str)], since, silenced| Firing {
            labels: labels(l),
            value: Some(1.0),
            since,
            silenced,
        };
        b.set(vec![
            fire(
                &[
                    ("alertname", "A"),
                    ("service", "web"),
                    ("severity", "critical"),
                ],
                2_000,
                false,
            ),
            fire(
                &[
                    ("alertname", "B"),
                    ("job", "web"),
                    ("severity", "emergency"),
                ],
                2_000,
                false,
            ),
            fire(
                &[
                    ("alertname", "C"),
                    ("service", "web"),
                    ("severity", "warning"),
                ],
                2_000,
                false,
            ),
            fire(
                &[
                    ("alertname", "D"),
                    ("service", "api"),
                    ("severity", "critical"),
                ],
                2_000,
                false,
            ),
            fire(
                &[
                    ("alertname", "E"),
                    ("service", "web"),
                    ("severity", "critical"),
                ],
                500,
                false,
            ),
            fire(
                &[
                    ("alertname", "F"),
                    ("service", "web"),
                    ("severity", "critical"),
                ],
                2_000,
                true,
            ),
        ]);
        let names: Vec<String> = b
            .against("web", &m, 1_000)
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["A", "B"]);
        assert!(b.against("web", &[], 1_000).is_empty());
        let a = &b.against("web", &m, 1_000)[0];
        assert_eq!(
            a.labels,
            r#"{alertname="A", service="web", severity="critical"}"#
        );
    }
}
