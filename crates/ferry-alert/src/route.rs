//! The routing tree, compiled: each node with its inherited options, its
//! sorted matchers and Alertmanager's route key and ID; matching walks it
//! depth-first with `continue` semantics, as `dispatch/route.go` does.

use crate::alert::{LabelSet, Millis};
use crate::config::RouteConfig;
use crate::matcher::{MatchOp, Matcher, all_match, matchers_string, parse_matchers, sort_matchers};
use crate::timeinterval::{TimeIntervals, is_active};
use std::collections::BTreeSet;

pub const DEFAULT_GROUP_WAIT: Millis = 30_000;
pub const DEFAULT_GROUP_INTERVAL: Millis = 5 * 60_000;
pub const DEFAULT_REPEAT_INTERVAL: Millis = 4 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// These label names (empty: one group for the route).
    Labels(BTreeSet<String>),
    /// `['...']`: every label.
    All,
}

/// One node, with every option resolved (inherited or default).
#[derive(Debug, Clone)]
pub struct Route {
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: Millis,
    pub group_interval: Millis,
    pub repeat_interval: Millis,
    /// Not inherited, as in Alertmanager.
    pub mute_time_intervals: Vec<String>,
    /// Not inherited, as in Alertmanager.
    pub active_time_intervals: Vec<String>,
    /// Route labels (`labels:`), inherited and merged.
    pub labels: LabelSet,
    /// `match`, `match_re` and `matchers` together, sorted.
    pub matchers: Vec<Matcher>,
    pub continue_: bool,
    pub routes: Vec<Route>,
    /// Post-order index, as Alertmanager numbers routes.
    pub idx: usize,
    /// Parent key + `/` + matchers, the root `{}`.
    pub key: String,
    /// The key with each child's position: `{}/{team="db"}/0`.
    pub id: String,
}

impl Route {
    /// Builds the tree from a (validated) config. Errors name the bad
    /// matcher.
    pub fn build(cfg: &RouteConfig) -> Result<Route, String> {
        let mut counter = 0;
        build(cfg, None, &mut counter, "", "")
    }

    /// The routes an alert goes to: depth-first, the deepest matching
    /// nodes; siblings after a match only when it has `continue: true`; the
    /// node itself when no child matches. Empty when this node does not
    /// match.
    pub fn match_routes(&self, labels: &LabelSet) -> Vec<&Route> {
        if !all_match(&self.matchers, labels) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for child in &self.routes {
            let m = child.match_routes(labels);
            let matched = !m.is_empty();
            all.extend(m);
            if matched && !child.continue_ {
                break;
            }
        }
        if all.is_empty() {
            all.push(self);
        }
        all
    }

    /// The alert's labels that this route groups by.
    pub fn group_labels(&self, labels: &LabelSet) -> LabelSet {
        match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => labels
                .iter()
                .filter(|(k, _)| names.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// `<route key>:<group labels>`, e.g. `{}/{team="db"}:{alertname="X"}`.
    pub fn group_key(&self, group_labels: &LabelSet) -> String {
        format!("{}:{}", self.key, labelset_string(group_labels))
    }

    /// Every node, pre-order.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Route>) {
        out.push(self);
        for r in &self.routes {
            r.walk(out);
        }
    }

    pub fn by_idx(&self, idx: usize) -> Option<&Route> {
        if self.idx == idx {
            return Some(self);
        }
        self.routes.iter().find_map(|r| r.by_idx(idx))
    }

    /// Whether notifications from this route are held back at `now`: a
    /// mute interval is active, or active intervals are set and none is.
    pub fn is_muted(&self, intervals: &TimeIntervals, now: Millis) -> bool {
        if self
            .mute_time_intervals
            .iter()
            .any(|n| is_active(intervals, n, now))
        {
            return true;
        }
        !self.active_time_intervals.is_empty()
            && !self
                .active_time_intervals
                .iter()
                .any(|n| is_active(intervals, n, now))
    }
}

fn build(
    cfg: &RouteConfig,
    parent: Option<&Route>,
    counter: &mut usize,
    pkey: &str,
    pid: &str,
) -> Result<Route, String> {
    let mut r = match parent {
        Some(p) => Route {
            routes: Vec::new(),
            matchers: Vec::new(),
            mute_time_intervals: Vec::new(),
            active_time_intervals: Vec::new(),
            continue_: false,
            ..p.clone_opts()
        },
        None => Route {
            receiver: String::new(),
            group_by: GroupBy::Labels(BTreeSet::new()),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            mute_time_intervals: Vec::new(),
            active_time_intervals: Vec::new(),
            labels: LabelSet::new(),
            matchers: Vec::new(),
            continue_: false,
            routes: Vec::new(),
            idx: 0,
            key: String::new(),
            id: String::new(),
        },
    };
    for (k, v) in &cfg.labels {
        r.labels.insert(k.clone(), v.clone());
    }
    if let Some(recv) = &cfg.receiver
        && !recv.is_empty()
    {
        r.receiver = recv.clone();
    }
    if let Some(gb) = &cfg.group_by {
        r.group_by = if gb.iter().any(|g| g == "...") {
            GroupBy::All
        } else {
            GroupBy::Labels(gb.iter().cloned().collect())
        };
    }
    if let Some(d) = cfg.group_wait {
        r.group_wait = d.millis();
    }
    if let Some(d) = cfg.group_interval {
        r.group_interval = d.millis();
    }
    if let Some(d) = cfg.repeat_interval {
        r.repeat_interval = d.millis();
    }
    let mut ms = Vec::new();
    for (k, v) in &cfg.match_ {
        ms.push(Matcher::new(k, MatchOp::Equal, v).map_err(|e| e.0)?);
    }
    for (k, v) in &cfg.match_re {
        ms.push(Matcher::new(k, MatchOp::Regex, v).map_err(|e| format!("match_re {k}: {}", e.0))?);
    }
    for s in &cfg.matchers {
        ms.extend(parse_matchers(s).map_err(|e| format!("matcher {s:?}: {}", e.0))?);
    }
    sort_matchers(&mut ms);
    r.matchers = ms;
    r.mute_time_intervals = cfg.mute_time_intervals.clone();
    r.active_time_intervals = cfg.active_time_intervals.clone();
    r.continue_ = cfg.continue_;
    let ms = matchers_string(&r.matchers);
    r.key = if parent.is_some() {
        format!("{pkey}/{ms}")
    } else {
        ms.clone()
    };
    r.id = if parent.is_some() {
        format!("{pid}/{ms}")
    } else {
        ms
    };
    let mut children = Vec::new();
    for (i, c) in cfg.routes.iter().enumerate() {
        let mut child = build(c, Some(&r), counter, &r.key, &r.id)?;
        // Alertmanager's ID adds the child's position after its matchers.
        fix_id(&mut child, &r.id, i);
        children.push(child);
    }
    r.routes = children;
    r.idx = *counter;
    *counter += 1;
    Ok(r)
}

/// Rewrites a subtree's IDs once the child's position is known.
fn fix_id(r: &mut Route, parent_id: &str, pos: usize) {
    let old = r.id.clone();
    let new = format!("{parent_id}/{}/{pos}", matchers_string(&r.matchers));
    fn rewrite(r: &mut Route, old: &str, new: &str) {
        if let Some(rest) = r.id.strip_prefix(old) {
            r.id = format!("{new}{rest}");
        }
        for c in &mut r.routes {
            rewrite(c, old, new);
        }
    }
    rewrite(r, &old, &new);
}

impl Route {
    fn clone_opts(&self) -> Route {
        Route {
            receiver: self.receiver.clone(),
            group_by: self.group_by.clone(),
            group_wait: self.group_wait,
            group_interval: self.group_interval,
            repeat_interval: self.repeat_interval,
            mute_time_intervals: Vec::new(),
            active_time_intervals: Vec::new(),
            labels: self.labels.clone(),
            matchers: Vec::new(),
            continue_: false,
            routes: Vec::new(),
            idx: 0,
            key: String::new(),
            id: String::new(),
        }
    }
}

/// Prometheus's `LabelSet.String()`: `{a="1", b="2"}`, names bare unless
/// not legacy-valid, values Go-quoted.
pub fn labelset_string(l: &LabelSet) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        if is_legacy_name(k) {
            s.push_str(k);
        } else {
            s.push_str(&quote(k));
        }
        s.push('=');
        s.push_str(&quote(v));
    }
    s.push('}');
    s
}

fn is_legacy_name(k: &str) -> bool {
    let mut cs = k.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn quote(s: &str) -> String {
    // Go's strconv.Quote, for label values.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::PromDuration;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tree() -> Route {
        let cfg = RouteConfig {
            receiver: Some("default".into()),
            group_by: Some(vec!["alertname".into()]),
            routes: vec![
                RouteConfig {
                    matchers: vec![r#"team="db""#.into()],
                    receiver: Some("db".into()),
                    group_wait: Some(PromDuration(10_000)),
                    continue_: true,
                    routes: vec![RouteConfig {
                        matchers: vec![r#"severity="page""#.into()],
                        receiver: Some("db-pager".into()),
                        group_by: Some(vec!["...".into()]),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                RouteConfig {
                    match_re: [("service".to_string(), "mysql|cassandra".to_string())].into(),
                    receiver: Some("storage".into()),
                    repeat_interval: Some(PromDuration(3_600_000)),
                    ..Default::default()
                },
                RouteConfig {
                    matchers: vec!["team=frontend".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        Route::build(&cfg).unwrap()
    }

    #[test]
    fn keys_and_ids_as_alertmanager() {
        let t = tree();
        assert_eq!(t.key, "{}");
        assert_eq!(t.routes[0].key, r#"{}/{team="db"}"#);
        assert_eq!(
            t.routes[0].routes[0].key,
            r#"{}/{team="db"}/{severity="page"}"#
        );
        assert_eq!(t.routes[1].key, r#"{}/{service=~"mysql|cassandra"}"#);
        assert_eq!(t.routes[0].id, r#"{}/{team="db"}/0"#);
        assert_eq!(
            t.routes[0].routes[0].id,
            r#"{}/{team="db"}/0/{severity="page"}/0"#
        );
        assert_eq!(t.routes[2].id, r#"{}/{team="frontend"}/2"#);
        // Post-order indexes.
        assert_eq!(t.routes[0].routes[0].idx, 0);
        assert_eq!(t.routes[0].idx, 1);
        assert_eq!(t.idx, 4);
        let r = &t.routes[0];
        let gl = r.group_labels(&labels(&[("alertname", "X"), ("team", "db")]));
        assert_eq!(r.group_key(&gl), r#"{}/{team="db"}:{alertname="X"}"#);
        let gl = labels(&[("a", "1"), ("b", "q\"")]);
        assert_eq!(t.group_key(&gl), r#"{}:{a="1", b="q\""}"#);
    }

    #[test]
    fn matching_with_continue_and_inheritance() {
        let t = tree();
        let names = |l: &LabelSet| {
            t.match_routes(l)
                .iter()
                .map(|r| r.receiver.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&labels(&[("team", "db")])), vec!["db"]);
        // continue on the db route: the storage route is tried too.
        assert_eq!(
            names(&labels(&[("team", "db"), ("service", "mysql")])),
            vec!["db", "storage"]
        );
        assert_eq!(
            names(&labels(&[
                ("team", "db"),
                ("severity", "page"),
                ("service", "cassandra")
            ])),
            vec!["db-pager", "storage"]
        );
        assert_eq!(names(&labels(&[("service", "mysqlx")])), vec!["default"]);
        // The frontend route has no receiver: inherits the root's.
        assert_eq!(names(&labels(&[("team", "frontend")])), vec!["default"]);
        let pager = &t.routes[0].routes[0];
        assert_eq!(pager.group_wait, 10_000, "inherited from the db route");
        assert_eq!(pager.group_interval, DEFAULT_GROUP_INTERVAL);
        assert_eq!(pager.group_by, GroupBy::All);
        assert_eq!(
            t.routes[0].group_by,
            GroupBy::Labels(["alertname".to_string()].into())
        );
        assert_eq!(t.routes[1].repeat_interval, 3_600_000);
        assert_eq!(t.routes[1].group_wait, DEFAULT_GROUP_WAIT);
        let all = pager.group_labels(&labels(&[("team", "db"), ("severity", "page")]));
        assert_eq!(all.len(), 2);
    }
}
