//! `resources`: free disk, memory and CPU headroom on this host.
//!
//! Percent used, each rounded to a whole percent before it is compared
//! (so the figure shown and the verdict agree): CPU over ~200 ms of
//! /proc/stat, memory from /proc/meminfo's MemAvailable, disk as `df`'s
//! Use% of the filesystem holding `path`.
use crate::Finding;
use crate::tcp::os_error;
use ferry_core::validation::CheckSpec;
use ferry_core::validation::spec::defaults;
use std::time::Duration;

/// How far apart the two /proc/stat samples are.
const CPU_SAMPLE: Duration = Duration::from_millis(200);

pub(crate) async fn run(check: &CheckSpec, ctx: &crate::Context) -> Finding {
    // A relative path is the config file's directory's, as elsewhere.
    let path = match check.path.as_deref() {
        None => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => ctx.base_dir.join(p).display().to_string(),
    };
    // statvfs can block on a dead network mount: off the runtime's
    // threads, so the check's timeout still cuts it.
    let disk = tokio::task::spawn_blocking({
        let path = path.clone();
        move || disk_used(&path)
    });
    let (cpu, memory) = tokio::join!(cpu_used(), memory_used());
    let disk = disk
        .await
        .unwrap_or_else(|e| Err(format!("measuring the disk of {path} failed: {e}")));
    match (cpu, memory, disk) {
        (Ok(cpu), Ok(memory), Ok(disk)) => {
            judge(Usage { cpu, memory, disk }, &Limits::of(check), &path)
        }
        (cpu, memory, disk) => {
            let errors: Vec<String> = [cpu.err(), memory.err(), disk.err()]
                .into_iter()
                .flatten()
                .collect();
            Finding::fail(None, errors.join("; "))
        }
    }
}

/// Percent used of each resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
}

/// `(warning, critical)` percent used of each resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub cpu: (f64, f64),
    pub memory: (f64, f64),
    pub disk: (f64, f64),
}

impl Limits {
    /// The check's thresholds, with seed 001's defaults.
    pub(crate) fn of(check: &CheckSpec) -> Limits {
        let pair =
            |w: Option<f64>, c: Option<f64>, d: (f64, f64)| (w.unwrap_or(d.0), c.unwrap_or(d.1));
        Limits {
            cpu: pair(check.cpu_warning, check.cpu_critical, defaults::CPU),
            memory: pair(
                check.memory_warning,
                check.memory_critical,
                defaults::MEMORY,
            ),
            disk: pair(check.disk_warning, check.disk_critical, defaults::DISK),
        }
    }
}

/// The verdict on measured usage: FAILED if any resource is at or above
/// its critical threshold, else WARNING if any is at or above its warning
/// threshold, else PASSED. `path` names the disk in the reason.
pub(crate) fn judge(usage: Usage, limits: &Limits, path: &str) -> Finding {
    let value = Some(format!(
        "cpu {:.0} %, memory {:.0} %, disk {:.0} % used",
        usage.cpu, usage.memory, usage.disk
    ));
    let disk = format!("disk of {path}");
    let rows = [
        ("cpu", "cpu", usage.cpu, limits.cpu),
        ("memory", "memory", usage.memory, limits.memory),
        ("disk", disk.as_str(), usage.disk, limits.disk),
    ];
    // A resource over its critical threshold is not listed again as a warning.
    let (mut critical, mut warning) = (Vec::new(), Vec::new());
    for (key, label, used, (warn, crit)) in rows {
        if used >= crit {
            critical.push(format!(
                "{label} {used:.0} % used, at or above {key}_critical = {crit}"
            ));
        } else if used >= warn {
            warning.push(format!(
                "{label} {used:.0} % used, at or above {key}_warning = {warn}"
            ));
        }
    }
    if !critical.is_empty() {
        Finding::fail(value, [critical, warning].concat().join("; "))
    } else if !warning.is_empty() {
        Finding::warn(value, warning.join("; "))
    } else {
        Finding::pass(
            value,
            format!(
                "below every warning threshold (cpu {} %, memory {} %, {disk} {} %)",
                limits.cpu.0, limits.memory.0, limits.disk.0
            ),
        )
    }
}

/// Busy CPU time over [`CPU_SAMPLE`], in percent of all CPUs.
async fn cpu_used() -> Result<f64, String> {
    let sample = || async {
        let text = tokio::fs::read_to_string("/proc/stat")
            .await
            .map_err(|e| format!("cannot read /proc/stat: {}", os_error(&e)))?;
        cpu_times(&text).ok_or_else(|| "cannot read /proc/stat: no `cpu` line".to_string())
    };
    let first = sample().await?;
    tokio::time::sleep(CPU_SAMPLE).await;
    let second = sample().await?;
    Ok(cpu_percent(first, second).round())
}

/// `(idle, total)` jiffies of all CPUs from /proc/stat; idle counts
/// iowait. guest and guest_nice are left out: user and nice include them.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().take(8).sum()))
}

/// Percent busy between two `(idle, total)` samples.
fn cpu_percent((idle0, total0): (u64, u64), (idle1, total1): (u64, u64)) -> f64 {
    let total = total1.saturating_sub(total0);
    if total == 0 {
        return 0.0;
    }
    let idle = idle1.saturating_sub(idle0).min(total);
    100.0 * (1.0 - idle as f64 / total as f64)
}

async fn memory_used() -> Result<f64, String> {
    let text = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .map_err(|e| format!("cannot read /proc/meminfo: {}", os_error(&e)))?;
    memory_percent(&text)
        .map(f64::round)
        .ok_or_else(|| "cannot read /proc/meminfo: no MemTotal".to_string())
}

/// `1 - MemAvailable / MemTotal` in percent (before Linux 3.14, which
/// added MemAvailable: free, buffers and page cache count as available).
fn memory_percent(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = field("MemTotal").filter(|t| *t > 0)?;
    let available = field("MemAvailable")
        .unwrap_or_else(|| {
            ["MemFree", "Buffers", "Cached"]
                .iter()
                .filter_map(|f| field(f))
                .sum()
        })
        .min(total);
    Some(100.0 * (1.0 - available as f64 / total as f64))
}

fn disk_used(path: &str) -> Result<f64, String> {
    let s = rustix::fs::statvfs(path)
        .map_err(|e| format!("cannot measure the disk of {path}: {}", os_error(&e.into())))?;
    Ok(df_percent(s.f_blocks, s.f_bfree, s.f_bavail))
}

/// `df`'s Use%: used / (used + available to unprivileged users), rounded
/// up; blocks reserved for root count as neither.
fn df_percent(blocks: u64, free: u64, available: u64) -> f64 {
    let used = blocks.saturating_sub(free);
    let base = used + available;
    if base == 0 {
        return 0.0;
    }
    (100.0 * used as f64 / base as f64).ceil()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::validation::{CheckKind, Status};

    const LIMITS: Limits = Limits {
        cpu: (70.0, 90.0),
        memory: (80.0, 95.0),
        disk: (85.0, 95.0),
    };

    fn usage(cpu: f64, memory: f64, disk: f64) -> Usage {
        Usage { cpu, memory, disk }
    }

    #[test]
    fn below_every_warning_passes() {
        let f = judge(usage(12.0, 41.0, 63.0), &LIMITS, "/");
        assert_eq!(f.status, Status::Passed);
        assert_eq!(
            f.value.as_deref(),
            Some("cpu 12 %, memory 41 %, disk 63 % used")
        );
        assert_eq!(
            f.reason,
            "below every warning threshold (cpu 70 %, memory 80 %, disk of / 85 %)"
        );
    }

    #[test]
    fn a_warning_threshold_reached_warns() {
        let f = judge(usage(70.0, 41.0, 63.0), &LIMITS, "/");
        assert_eq!(f.status, Status::Warning);
        assert_eq!(f.reason, "cpu 70 % used, at or above cpu_warning = 70");
        let f = judge(usage(10.0, 85.0, 90.0), &LIMITS, "/var");
        assert_eq!(f.status, Status::Warning);
        assert_eq!(
            f.reason,
            "memory 85 % used, at or above memory_warning = 80; disk of /var 90 % used, at or above disk_warning = 85"
        );
    }

    #[test]
    fn a_critical_threshold_reached_fails_and_names_the_warnings_too() {
        let f = judge(usage(75.0, 41.0, 96.0), &LIMITS, "/data");
        assert_eq!(f.status, Status::Failed);
        assert_eq!(
            f.value.as_deref(),
            Some("cpu 75 %, memory 41 %, disk 96 % used")
        );
        assert_eq!(
            f.reason,
            "disk of /data 96 % used, at or above disk_critical = 95; cpu 75 % used, at or above cpu_warning = 70"
        );
        let f = judge(usage(100.0, 95.0, 0.0), &LIMITS, "/");
        assert_eq!(f.status, Status::Failed);
        assert_eq!(
            f.reason,
            "cpu 100 % used, at or above cpu_critical = 90; memory 95 % used, at or above memory_critical = 95"
        );
    }

    #[test]
    fn thresholds_come_from_the_check() {
        let mut c = CheckSpec::new("host", CheckKind::Resources);
        assert_eq!(Limits::of(&c), LIMITS);
        c.disk_warning = Some(50.0);
        c.cpu_critical = Some(99.5);
        let l = Limits::of(&c);
        assert_eq!((l.disk, l.cpu), ((50.0, 95.0), (70.0, 99.5)));
        let f = judge(usage(99.0, 0.0, 0.0), &l, "/");
        assert_eq!(f.status, Status::Warning);
        let f = judge(usage(100.0, 0.0, 0.0), &l, "/");
        assert_eq!(f.reason, "cpu 100 % used, at or above cpu_critical = 99.5");
    }

    #[test]
    fn cpu_from_proc_stat() {
        let a = cpu_times("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(a, (800, 1000));
        let b = cpu_times("cpu  400 0 200 800 200 0 0 0 90 0\n").unwrap();
        // 400 busy of 600.
        assert!((cpu_percent(a, b) - 66.666).abs() < 0.01);
        assert_eq!(cpu_percent(a, a), 0.0);
        assert_eq!(cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(cpu_times("cpu  1 2\n"), None);
    }

    #[test]
    fn memory_from_proc_meminfo() {
        let text = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(memory_percent(text), Some(75.0));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 100 kB\nCached: 300 kB\n";
        assert_eq!(memory_percent(old), Some(50.0));
        assert_eq!(memory_percent("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn disk_as_df_shows_it() {
        // 500 used, 450 available, 50 reserved: 500 / 950 = 52.6, up to 53.
        assert_eq!(df_percent(1000, 500, 450), 53.0);
        assert_eq!(df_percent(1000, 1000, 950), 0.0);
        assert_eq!(df_percent(1000, 50, 0), 100.0);
        assert_eq!(df_percent(0, 0, 0), 0.0);
    }

    fn ctx() -> crate::Context {
        crate::Context::for_tests(std::path::Path::new("/no/such"))
    }

    #[tokio::test]
    async fn this_host_is_measured() {
        let f = run(&CheckSpec::new("host", CheckKind::Resources), &ctx()).await;
        let value = f.value.expect("a value");
        assert!(
            value.starts_with("cpu ") && value.ends_with(" % used"),
            "{value}"
        );
        let mut c = CheckSpec::new("host", CheckKind::Resources);
        // Relative to the config file's directory.
        c.path = Some("dir".into());
        let f = run(&c, &ctx()).await;
        assert_eq!(f.status, Status::Failed);
        assert_eq!(
            f.reason,
            "cannot measure the disk of /no/such/dir: no such file or directory"
        );
    }
}
