//! Silences as Alertmanager keeps them (`silence/silence.go`): matchers
//! and a time range; pending before `startsAt`, active until `endsAt`,
//! then expired. Updating an active silence's matchers or start expires
//! it and creates a new one, keeping the history. Ids come from the caller.

use crate::alert::{LabelSet, Millis};
use crate::matcher::{Matcher, all_match};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    Active,
    Pending,
    Expired,
}

/// One silence, in the API's field names (`startsAt`, `createdBy`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Silence {
    #[serde(default)]
    pub id: String,
    pub matchers: Vec<Matcher>,
    /// 0: now.
    #[serde(default)]
    pub starts_at: Millis,
    pub ends_at: Millis,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub updated_at: Millis,
}

impl Silence {
    pub fn state(&self, now: Millis) -> SilenceState {
        if now < self.starts_at {
            SilenceState::Pending
        } else if now > self.ends_at {
            SilenceState::Expired
        } else {
            SilenceState::Active
        }
    }

    /// Whether it silences `labels` at `now` (active and every matcher
    /// matches).
    pub fn silences(&self, labels: &LabelSet, now: Millis) -> bool {
        self.state(now) == SilenceState::Active && all_match(&self.matchers, labels)
    }

    /// Alertmanager's checks: at least one matcher, not all matching the
    /// empty string, non-empty names, a start, an end not before it.
    pub fn validate(&self) -> Result<(), SilenceError> {
        if self.matchers.is_empty() {
            return Err(SilenceError::Invalid(
                "at least one matcher required".into(),
            ));
        }
        for (i, m) in self.matchers.iter().enumerate() {
            if m.name.is_empty() {
                return Err(SilenceError::Invalid(format!(
                    "invalid label matcher {i}: empty label name"
                )));
            }
        }
        if self.matchers.iter().all(Matcher::matches_empty) {
            return Err(SilenceError::Invalid(
                "at least one matcher must not match the empty string".into(),
            ));
        }
        if self.starts_at == 0 {
            return Err(SilenceError::Invalid("invalid zero start timestamp".into()));
        }
        if self.ends_at == 0 {
            return Err(SilenceError::Invalid("invalid zero end timestamp".into()));
        }
        if self.ends_at < self.starts_at {
            return Err(SilenceError::Invalid(
                "end time must not be before start time".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SilenceError {
    #[error("invalid silence: {0}")]
    Invalid(String),
    #[error("silence not found")]
    NotFound,
}

/// Which silences [`Silences::list`] returns (every set field must match).
#[derive(Debug, Clone, Default)]
pub struct SilenceFilter {
    /// Any of these states (empty: any).
    pub states: Vec<SilenceState>,
    /// Silences whose matchers all match these labels.
    pub labels: Option<LabelSet>,
    /// Silences with a matcher for each of these (`name="value"` style
    /// filter of the API: every filter matcher must equal one of the
    /// silence's matchers).
    pub matchers: Vec<Matcher>,
}

/// Every silence by id, expired ones too until [`Silences::gc`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Silences {
    pub by_id: BTreeMap<String, Silence>,
}

impl Silences {
    pub fn get(&self, id: &str) -> Option<&Silence> {
        self.by_id.get(id)
    }

    /// Creates a silence, or updates the one named by `sil.id`. An update
    /// that Alertmanager cannot do in place (other matchers, a changed
    /// start of an active silence, an expired silence, an end in the past)
    /// expires the old one and creates a new one with `fresh_id`. Returns
    /// the id in effect.
    pub fn set(
        &mut self,
        mut sil: Silence,
        fresh_id: &str,
        now: Millis,
    ) -> Result<String, SilenceError> {
        if sil.starts_at == 0 {
            sil.starts_at = now;
        }
        sil.validate()?;
        let prev = if sil.id.is_empty() {
            None
        } else {
            Some(
                self.by_id
                    .get(&sil.id)
                    .cloned()
                    .ok_or(SilenceError::NotFound)?,
            )
        };
        if let Some(prev) = &prev
            && can_update(prev, &sil, now)
        {
            sil.updated_at = now;
            let id = sil.id.clone();
            self.by_id.insert(id.clone(), sil);
            return Ok(id);
        }
        if let Some(prev) = &prev
            && prev.state(now) != SilenceState::Expired
        {
            self.expire(&prev.id, now)?;
        }
        sil.id = fresh_id.to_string();
        if sil.starts_at < now {
            sil.starts_at = now;
        }
        if sil.ends_at < sil.starts_at {
            return Err(SilenceError::Invalid(
                "end time must not be before start time".into(),
            ));
        }
        sil.updated_at = now;
        self.by_id.insert(sil.id.clone(), sil);
        Ok(fresh_id.to_string())
    }

    /// Expires a silence now (a pending one starts and ends now).
    pub fn expire(&mut self, id: &str, now: Millis) -> Result<(), SilenceError> {
        let s = self.by_id.get_mut(id).ok_or(SilenceError::NotFound)?;
        match s.state(now) {
            SilenceState::Expired => return Ok(()),
            SilenceState::Active => s.ends_at = now,
            SilenceState::Pending => {
                s.starts_at = now;
                s.ends_at = now;
            }
        }
        // Expired means strictly after ends_at; make it so at `now`.
        s.ends_at -= 1;
        s.starts_at = s.starts_at.min(s.ends_at);
        s.updated_at = now;
        Ok(())
    }

    pub fn list(&self, f: &SilenceFilter, now: Millis) -> Vec<&Silence> {
        self.by_id
            .values()
            .filter(|s| f.states.is_empty() || f.states.contains(&s.state(now)))
            .filter(|s| f.labels.as_ref().is_none_or(|l| all_match(&s.matchers, l)))
            .filter(|s| f.matchers.iter().all(|fm| s.matchers.contains(fm)))
            .collect()
    }

    /// The ids of the active silences that silence `labels`.
    pub fn silenced_by(&self, labels: &LabelSet, now: Millis) -> Vec<String> {
        self.by_id
            .values()
            .filter(|s| s.silences(labels, now))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Drops silences expired for longer than `retention`.
    pub fn gc(&mut self, now: Millis, retention: Millis) {
        self.by_id.retain(|_, s| s.ends_at + retention >= now);
    }

    /// The next instant after `now` at which some silence changes state.
    pub fn next_change(&self, now: Millis) -> Option<Millis> {
        self.by_id
            .values()
            .flat_map(|s| [s.starts_at, s.ends_at + 1])
            .filter(|&t| t > now)
            .min()
    }
}

fn can_update(a: &Silence, b: &Silence, now: Millis) -> bool {
    if a.matchers != b.matchers {
        return false;
    }
    match a.state(now) {
        SilenceState::Active => a.starts_at / 1000 == b.starts_at / 1000 && b.ends_at >= now,
        SilenceState::Pending => b.starts_at >= now,
        SilenceState::Expired => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::parse_matchers;

    fn sil(m: &str, start: Millis, end: Millis) -> Silence {
        Silence {
            id: String::new(),
            matchers: parse_matchers(m).unwrap(),
            starts_at: start,
            ends_at: end,
            created_by: "bob".into(),
            comment: "maintenance".into(),
            updated_at: 0,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn states_and_matching() {
        let mut s = Silences::default();
        let id = s
            .set(sil(r#"{alertname="X"}"#, 2000, 5000), "s1", 1000)
            .unwrap();
        assert_eq!(id, "s1");
        let x = labels(&[("alertname", "X"), ("a", "b")]);
        assert_eq!(s.get("s1").unwrap().state(1000), SilenceState::Pending);
        assert!(s.silenced_by(&x, 1000).is_empty());
        assert_eq!(s.silenced_by(&x, 2000), vec!["s1"]);
        assert_eq!(s.silenced_by(&x, 5000), vec!["s1"]);
        assert!(
            s.silenced_by(&labels(&[("alertname", "Y")]), 3000)
                .is_empty()
        );
        assert_eq!(s.get("s1").unwrap().state(5001), SilenceState::Expired);
        assert_eq!(s.next_change(1000), Some(2000));
        assert_eq!(s.next_change(2000), Some(5001));
        let f = SilenceFilter {
            states: vec![SilenceState::Active],
            ..Default::default()
        };
        assert_eq!(s.list(&f, 3000).len(), 1);
        assert_eq!(s.list(&f, 6000).len(), 0);
        let f = SilenceFilter {
            labels: Some(x.clone()),
            ..Default::default()
        };
        assert_eq!(s.list(&f, 0).len(), 1);
        let f = SilenceFilter {
            matchers: parse_matchers(r#"alertname="X""#).unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(&f, 0).len(), 1);
        s.expire("s1", 3000).unwrap();
        assert_eq!(s.get("s1").unwrap().state(3000), SilenceState::Expired);
        assert!(s.silenced_by(&x, 3000).is_empty());
        assert_eq!(s.expire("nope", 0), Err(SilenceError::NotFound));
        s.gc(3000 + 10, 5);
        assert!(s.get("s1").is_none());
    }

    #[test]
    fn validation() {
        let mut s = Silences::default();
        let bad = [
            sil("{}", 1, 2),
            sil(r#"a=~".*""#, 1, 2),
            sil(r#"a="", b!="x""#, 1, 2),
            sil(r#"a="x""#, 5, 2),
            sil(r#"a="x""#, 1, 0),
        ];
        for b in bad {
            assert!(
                matches!(s.set(b.clone(), "x", 1), Err(SilenceError::Invalid(_))),
                "{b:?}"
            );
        }
        // Start defaults to now; a start in the past moves to now.
        let id = s.set(sil(r#"a="x""#, 0, 100), "a", 10).unwrap();
        assert_eq!(s.get(&id).unwrap().starts_at, 10);
        let id = s.set(sil(r#"a="x""#, 5, 100), "b", 10).unwrap();
        assert_eq!(s.get(&id).unwrap().starts_at, 10);
        let mut unknown = sil(r#"a="x""#, 5, 100);
        unknown.id = "zzz".into();
        assert_eq!(s.set(unknown, "c", 10), Err(SilenceError::NotFound));
    }

    #[test]
    fn updates_as_alertmanager() {
        let mut s = Silences::default();
        s.set(sil(r#"a="x""#, 1000, 9000), "s1", 1000).unwrap();
        // Active, same matchers, new end: in place.
        let mut u = s.get("s1").unwrap().clone();
        u.ends_at = 20_000;
        u.comment = "longer".into();
        assert_eq!(s.set(u, "s2", 2000).unwrap(), "s1");
        assert_eq!(s.get("s1").unwrap().ends_at, 20_000);
        assert_eq!(s.get("s1").unwrap().updated_at, 2000);
        assert_eq!(s.by_id.len(), 1);
        // Active, other matchers: the old one expires, a new one is made.
        let mut u = s.get("s1").unwrap().clone();
        u.matchers = parse_matchers(r#"a="y""#).unwrap();
        assert_eq!(s.set(u, "s2", 3000).unwrap(), "s2");
        assert_eq!(s.get("s1").unwrap().state(3000), SilenceState::Expired);
        assert_eq!(s.get("s2").unwrap().state(3000), SilenceState::Active);
        assert_eq!(s.get("s2").unwrap().starts_at, 3000);
        // Expired: never updated in place.
        let mut u = s.get("s1").unwrap().clone();
        u.ends_at = 50_000;
        assert_eq!(s.set(u, "s3", 4000).unwrap(), "s3");
        // Pending: updated in place while its start stays in the future.
        s.set(sil(r#"b="1""#, 10_000, 12_000), "p", 4000).unwrap();
        let mut u = s.get("p").unwrap().clone();
        u.starts_at = 11_000;
        assert_eq!(s.set(u, "p2", 5000).unwrap(), "p");
        assert_eq!(s.get("p").unwrap().starts_at, 11_000);
        // Expiring a pending silence.
        s.expire("p", 6000).unwrap();
        assert_eq!(s.get("p").unwrap().state(6000), SilenceState::Expired);
    }

    #[test]
    fn serde_api_shape() {
        let mut s = sil(r#"alertname="X""#, 1, 2);
        s.id = "abc".into();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["matchers"][0]["isEqual"], true);
        assert_eq!(j["createdBy"], "bob");
        assert_eq!(j["startsAt"], 1);
        let back: Silence = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }
}
