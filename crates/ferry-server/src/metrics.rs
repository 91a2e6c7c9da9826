//! `/metrics` in Prometheus text format: the proxy's per-revision counters
//! and histograms, plus instance and rollout gauges.

use crate::daemon::Core;
use ferry_core::Millis;
use std::fmt::Write;

pub fn render(core: &Core, now: Millis) -> String {
    let mut out = String::with_capacity(4096);
    let labelled: Vec<(String, &ferry_proxy::RevisionStats)> = core
        .supervisor
        .all_stats()
        .map(|((service, revision), stats)| {
            (
                format!("service=\"{service}\",revision=\"{revision}\""),
                &**stats,
            )
        })
        .collect();
    let refs: Vec<(&str, &ferry_proxy::RevisionStats)> =
        labelled.iter().map(|(l, s)| (l.as_str(), *s)).collect();
    ferry_proxy::render_prometheus_all(&refs, &mut out);
    out.push_str("# HELP ferry_instances Instances by service, revision and state.\n# TYPE ferry_instances gauge\n");
    let mut counts: std::collections::BTreeMap<(String, u64, String), u64> = Default::default();
    for s in core.states.keys() {
        for v in core.supervisor.views(s) {
            *counts.entry((s.clone(), v.revision, v.state)).or_default() += 1;
        }
    }
    for ((service, revision, state), n) in counts {
        let _ = writeln!(
            out,
            "ferry_instances{{service=\"{service}\",revision=\"{revision}\",state=\"{state}\"}} {n}"
        );
    }
    out.push_str("# HELP ferry_service_serving_instances Instances taking traffic now.\n# TYPE ferry_service_serving_instances gauge\n");
    out.push_str("# HELP ferry_service_stable_revision The revision serving when no rollout runs.\n# TYPE ferry_service_stable_revision gauge\n");
    out.push_str("# HELP ferry_rollout_active 1 while a rollout of the service is in progress.\n# TYPE ferry_rollout_active gauge\n");
    for (name, state) in &core.states {
        let serving = core.supervisor.routable(state, now).len();
        let _ = writeln!(
            out,
            "ferry_service_serving_instances{{service=\"{name}\"}} {serving}"
        );
        if let Some(stable) = state.stable {
            let _ = writeln!(
                out,
                "ferry_service_stable_revision{{service=\"{name}\"}} {stable}"
            );
        }
        let _ = writeln!(
            out,
            "ferry_rollout_active{{service=\"{name}\"}} {}",
            u8::from(state.active_rollout.is_some())
        );
    }
    out
}
