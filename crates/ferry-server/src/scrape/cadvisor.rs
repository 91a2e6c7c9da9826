//! Per-instance CPU and memory under cAdvisor's names, from `/proc`: an
//! instance is its process group (pgid = the pid Ferry started), so its
//! usage is the sum over the processes of that group. The parsers and
//! [`instance_samples`] are pure; [`read`] does the I/O.

use super::labels_of;
use ferry_metrics::exposition::{Metadata, Scraped};
use std::collections::{BTreeMap, BTreeSet};

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pgrp: i32,
    /// utime + stime, plus cutime + cstime (children it has waited for),
    /// in clock ticks: a child's CPU time stays counted after it exits.
    pub cpu_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (in parentheses) may hold
/// spaces and parentheses itself, so fields are counted after the last `)`.
pub fn parse_pid_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is the state (field 3 of proc(5)); field n is f[n - 3].
    let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        pgrp: f.get(5 - 3)?.parse().ok()?,
        cpu_ticks: n(14)? + n(15)? + n(16)? + n(17)?,
        rss_pages: n(24)?,
    })
}

/// Usage of one process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Sum `procs` per process group, for the groups in `pgids` only.
pub fn per_group(
    procs: impl IntoIterator<Item = ProcStat>,
    pgids: &BTreeSet<i32>,
) -> BTreeMap<i32, Usage> {
    let mut out: BTreeMap<i32, Usage> = BTreeMap::new();
    for p in procs {
        if pgids.contains(&p.pgrp) {
            let u = out.entry(p.pgrp).or_default();
            u.cpu_ticks += p.cpu_ticks;
            u.rss_pages += p.rss_pages;
        }
    }
    out
}

/// One instance to report: its labels and process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub instance: String,
    pub service: String,
    pub revision: String,
    pub pgid: i32,
}

/// The samples cAdvisor would report for `containers`, given each group's
/// usage; a container whose group has no process is left out.
pub fn instance_samples(
    containers: &[Container],
    usage: &BTreeMap<i32, Usage>,
    ticks_per_second: u64,
    page_size: u64,
) -> (Vec<Scraped>, BTreeMap<String, Metadata>) {
    let mut samples = Vec::new();
    for c in containers {
        let Some(u) = usage.get(&c.pgid) else {
            continue;
        };
        let labels = [
            ("instance", c.instance.as_str()),
            ("service", &c.service),
            ("revision", &c.revision),
        ];
        samples.push(Scraped {
            labels: labels_of("container_cpu_usage_seconds_total", &labels),
            value: u.cpu_ticks as f64 / ticks_per_second.max(1) as f64,
            timestamp_ms: None,
        });
        samples.push(Scraped {
            labels: labels_of("container_memory_working_set_bytes", &labels),
            value: (u.rss_pages * page_size) as f64,
            timestamp_ms: None,
        });
    }
    let meta = |kind: &str, help: &str| Metadata {
        kind: kind.into(),
        help: help.into(),
    };
    let metadata = BTreeMap::from([
        (
            "container_cpu_usage_seconds_total".to_string(),
            meta(
                "counter",
                "Cumulative cpu time consumed by the instance's processes in seconds.",
            ),
        ),
        (
            "container_memory_working_set_bytes".to_string(),
            meta(
                "gauge",
                "Resident memory of the instance's processes in bytes.",
            ),
        ),
    ]);
    (samples, metadata)
}

/// Every process's stat that can be read now (blocking). Processes come
/// and go while `/proc` is listed; one that is gone is skipped.
pub fn read() -> std::io::Result<Vec<ProcStat>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{name}/stat"))
            && let Some(stat) = parse_pid_stat(&text)
        {
            out.push(stat);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_command_name() {
        let text = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 7 3 20 0 4 0 100 1000000 2500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_pid_stat(text),
            Some(ProcStat {
                pgrp: 4242,
                cpu_ticks: 150 + 50 + 7 + 3,
                rss_pages: 2500
            })
        );
        assert_eq!(parse_pid_stat("12 (x) S 1"), None);
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn sums_each_group_and_reports_seconds_and_bytes() {
        let procs = [
            ProcStat {
                pgrp: 10,
                cpu_ticks: 100,
                rss_pages: 10,
            },
            ProcStat {
                pgrp: 10,
                cpu_ticks: 50,
                rss_pages: 5,
            },
            ProcStat {
                pgrp: 99,
                cpu_ticks: 1000,
                rss_pages: 1000,
            },
        ];
        let pgids = BTreeSet::from([10, 20]);
        let usage = per_group(procs, &pgids);
        assert_eq!(
            usage,
            BTreeMap::from([(
                10,
                Usage {
                    cpu_ticks: 150,
                    rss_pages: 15
                }
            )])
        );
        let containers = [
            Container {
                instance: "web-1-a".into(),
                service: "web".into(),
                revision: "1".into(),
                pgid: 10,
            },
            Container {
                instance: "web-1-b".into(),
                service: "web".into(),
                revision: "1".into(),
                pgid: 20,
            },
        ];
        let (samples, meta) = instance_samples(&containers, &usage, 100, 4096);
        assert_eq!(samples.len(), 2, "the group without processes is left out");
        assert_eq!(
            samples[0].labels["__name__"],
            "container_cpu_usage_seconds_total"
        );
        assert_eq!(samples[0].labels["instance"], "web-1-a");
        assert_eq!(samples[0].value, 1.5);
        assert_eq!(samples[1].labels["service"], "web");
        assert_eq!(samples[1].value, 15.0 * 4096.0);
        assert_eq!(meta["container_cpu_usage_seconds_total"].kind, "counter");
    }
}
