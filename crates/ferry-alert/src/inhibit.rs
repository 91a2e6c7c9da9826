//! Inhibition as Alertmanager's `inhibit/inhibit.go` does it: an alert
//! matching a rule's target side is muted while a firing alert matches its
//! source side with the same values of the `equal` labels (a missing label
//! equals the empty one). An alert matching both sides is not inhibited by
//! source alerts that also match both sides.

use crate::alert::{Alert, Fingerprint, LabelSet, Millis};
use crate::config::InhibitRuleConfig;
use crate::matcher::{MatchOp, Matcher, all_match, parse_matchers};

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub name: Option<String>,
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

impl InhibitRule {
    pub fn compile(c: &InhibitRuleConfig) -> Result<InhibitRule, String> {
        let side = |m: &std::collections::BTreeMap<String, String>,
                    re: &std::collections::BTreeMap<String, String>,
                    list: &[String],
                    what: &str|
         -> Result<Vec<Matcher>, String> {
            let mut out = Vec::new();
            for (k, v) in m {
                out.push(Matcher::new(k, MatchOp::Equal, v).map_err(|e| e.0)?);
            }
            for (k, v) in re {
                out.push(
                    Matcher::new(k, MatchOp::Regex, v)
                        .map_err(|e| format!("{what}_match_re {k}: {}", e.0))?,
                );
            }
            for s in list {
                out.extend(
                    parse_matchers(s).map_err(|e| format!("{what}_matchers {s:?}: {}", e.0))?,
                );
            }
            Ok(out)
        };
        Ok(InhibitRule {
            name: c.name.clone(),
            source: side(
                &c.source_match,
                &c.source_match_re,
                &c.source_matchers,
                "source",
            )?,
            target: side(
                &c.target_match,
                &c.target_match_re,
                &c.target_matchers,
                "target",
            )?,
            equal: c.equal.clone(),
        })
    }

    fn equal_values<'a>(&self, l: &'a LabelSet) -> Vec<&'a str> {
        self.equal
            .iter()
            .map(|n| l.get(n).map(String::as_str).unwrap_or(""))
            .collect()
    }
}

/// The rules; the alerts are passed in at each check.
#[derive(Debug, Clone, Default)]
pub struct Inhibitor {
    pub rules: Vec<InhibitRule>,
}

impl Inhibitor {
    pub fn new(rules: Vec<InhibitRule>) -> Inhibitor {
        Inhibitor { rules }
    }

    /// The alert that inhibits `target` at `now`, if any, among `alerts`
    /// (every alert known, muted or not: only firing ones count as
    /// sources). The first rule that inhibits wins; within it, the source
    /// with the lowest fingerprint.
    pub fn inhibited_by<'a, I>(
        &self,
        target: &LabelSet,
        alerts: I,
        now: Millis,
    ) -> Option<Fingerprint>
    where
        I: IntoIterator<Item = (Fingerprint, &'a Alert)> + Clone,
    {
        let mut own = None;
        for r in &self.rules {
            if !all_match(&r.target, target) {
                continue;
            }
            let own = *own.get_or_insert_with(|| crate::alert::fingerprint(target));
            let two_sided = all_match(&r.source, target);
            let want = r.equal_values(target);
            let mut best: Option<Fingerprint> = None;
            for (fp, a) in alerts.clone() {
                if fp == own || a.resolved_at(now) || !all_match(&r.source, &a.labels) {
                    continue;
                }
                if r.equal_values(&a.labels) != want {
                    continue;
                }
                if two_sided && all_match(&r.target, &a.labels) {
                    continue;
                }
                if best.is_none_or(|b| fp < b) {
                    best = Some(fp);
                }
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(pairs: &[(&str, &str)], ends_at: Millis) -> Alert {
        Alert {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: LabelSet::new(),
            starts_at: 0,
            ends_at,
            generator_url: String::new(),
            updated_at: 0,
        }
    }

    fn rule(src: &str, tgt: &str, equal: &[&str]) -> InhibitRule {
        InhibitRule::compile(&InhibitRuleConfig {
            source_matchers: vec![src.into()],
            target_matchers: vec![tgt.into()],
            equal: equal.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn check(ih: &Inhibitor, t: &Alert, all: &[Alert], now: Millis) -> Option<Fingerprint> {
        ih.inhibited_by(&t.labels, all.iter().map(|a| (a.fingerprint(), a)), now)
    }

    #[test]
    fn source_must_fire_and_equal_labels_match() {
        let ih = Inhibitor::new(vec![rule(
            r#"severity="critical""#,
            r#"severity="warning""#,
            &["cluster"],
        )]);
        let crit = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("cluster", "a"),
            ],
            100,
        );
        let warn_a = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("cluster", "a"),
            ],
            100,
        );
        let warn_b = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("cluster", "b"),
            ],
            100,
        );
        let all = [crit.clone(), warn_a.clone(), warn_b.clone()];
        assert_eq!(check(&ih, &warn_a, &all, 50), Some(crit.fingerprint()));
        assert_eq!(check(&ih, &warn_b, &all, 50), None, "cluster differs");
        assert_eq!(check(&ih, &crit, &all, 50), None, "not a target");
        assert_eq!(check(&ih, &warn_a, &all, 100), None, "source resolved");
    }

    #[test]
    fn missing_label_equals_empty() {
        let ih = Inhibitor::new(vec![rule(
            r#"severity="critical""#,
            r#"severity="warning""#,
            &["cluster"],
        )]);
        let crit = alert(&[("severity", "critical")], 100);
        let warn = alert(&[("severity", "warning"), ("cluster", "")], 100);
        let warn2 = alert(&[("severity", "warning"), ("cluster", "x")], 100);
        let all = [crit.clone(), warn.clone(), warn2.clone()];
        assert_eq!(check(&ih, &warn, &all, 0), Some(crit.fingerprint()));
        assert_eq!(check(&ih, &warn2, &all, 0), None);
    }

    #[test]
    fn both_sides() {
        // Every alert of a service matches both sides: none inhibits the
        // others...
        let ih = Inhibitor::new(vec![rule(
            r#"service="api""#,
            r#"service="api""#,
            &["service"],
        )]);
        let a = alert(&[("alertname", "A"), ("service", "api")], 100);
        let b = alert(&[("alertname", "B"), ("service", "api")], 100);
        let all = [a.clone(), b.clone()];
        assert_eq!(check(&ih, &a, &all, 0), None);
        assert_eq!(check(&ih, &b, &all, 0), None);
        // ...but a source that matches the source side only still does.
        let ih = Inhibitor::new(vec![rule(
            r#"alertname=~"A|Outage""#,
            r#"service="api""#,
            &[],
        )]);
        let outage = alert(&[("alertname", "Outage")], 100);
        let all = [a.clone(), b.clone(), outage.clone()];
        assert_eq!(
            check(&ih, &a, &all, 0),
            Some(outage.fingerprint()),
            "a matches both sides"
        );
        // b matches the target only: inhibited by a (source only... a
        // matches both, but b is not two-sided) or by the outage.
        assert!(check(&ih, &b, &all, 0).is_some());
        let all = [a.clone(), b.clone()];
        assert_eq!(
            check(&ih, &a, &all, 0),
            None,
            "an alert never inhibits itself"
        );
        assert_eq!(check(&ih, &b, &all, 0), Some(a.fingerprint()));
    }
}
