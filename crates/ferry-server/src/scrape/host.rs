//! Host metrics under node_exporter's names and units, read from `/proc`
//! and `statvfs`: CPU, memory, filesystems, network, load and disks.
//! The parsers and [`node_samples`] are pure; [`read`] does the I/O.

use super::labels_of;
use ferry_metrics::exposition::{Metadata, Scraped};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Modes of a `/proc/stat` `cpuN` line, in their column order (guest time
/// is already inside `user` and `nice`; node_exporter reports it apart).
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// `/proc/diskstats` counts sectors of 512 bytes, whatever the device's.
const SECTOR_BYTES: f64 = 512.0;

/// One `cpuN` line of `/proc/stat`: its number and ticks per mode.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTicks {
    pub cpu: String,
    pub ticks: [u64; 8],
}

/// The per-CPU lines of `/proc/stat` (not the `cpu` total).
pub fn parse_stat(text: &str) -> Vec<CpuTicks> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let cpu = f.next()?.strip_prefix("cpu")?;
            if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut ticks = [0u64; 8];
            for t in &mut ticks {
                // Old kernels have fewer columns; missing ones are 0.
                *t = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            Some(CpuTicks {
                cpu: cpu.to_string(),
                ticks,
            })
        })
        .collect()
}

/// `/proc/meminfo` as node_exporter names it: `Active(anon)` becomes
/// `Active_anon`, and values in kB become bytes (with `_bytes` added to
/// the name); others (page counts) stay as they are.
pub fn parse_meminfo(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut f = rest.split_whitespace();
            let value: f64 = f.next()?.parse().ok()?;
            let key = key.trim().replace('(', "_").replace(')', "");
            Some(match f.next() {
                Some("kB") => (format!("node_memory_{key}_bytes"), value * 1024.0),
                _ => (format!("node_memory_{key}"), value),
            })
        })
        .collect()
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// Received and transmitted bytes per interface, from `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            (f.len() >= 9).then(|| (name.trim().to_string(), f[0], f[8]))
        })
        .collect()
}

/// One device of `/proc/diskstats`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub device: String,
    pub sectors_read: u64,
    pub sectors_written: u64,
    /// Time spent doing I/O, in ms.
    pub io_ms: u64,
}

/// The devices of `/proc/diskstats`, those node_exporter ignores by
/// default left out ([`disk_ignored`]).
pub fn parse_diskstats(text: &str) -> Vec<Disk> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 14 || disk_ignored(f[2]) {
                return None;
            }
            let n = |i: usize| f[i].parse::<u64>().ok();
            Some(Disk {
                device: f[2].to_string(),
                sectors_read: n(5)?,
                sectors_written: n(9)?,
                io_ms: n(12)?,
            })
        })
        .collect()
}

/// node_exporter's default device exclusion,
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`: RAM disks, loop
/// and floppy devices, and partitions (their disk counts them already).
pub fn disk_ignored(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(|c: char| c.is_ascii_digit()) else {
        return false;
    };
    let stem = stem.trim_end_matches(|c: char| c.is_ascii_digit());
    if matches!(stem, "ram" | "zram" | "loop" | "fd") {
        return true;
    }
    for prefix in ["hd", "sd", "vd", "xvd"] {
        if let Some(letter) = stem.strip_prefix(prefix)
            && letter.len() == 1
            && letter.bytes().all(|b| b.is_ascii_lowercase())
        {
            return true;
        }
    }
    // nvme<digits>n<digits>p
    if let Some(rest) = stem.strip_prefix("nvme")
        && let Some(rest) = rest.strip_suffix('p')
        && let Some((ctrl, ns)) = rest.split_once('n')
    {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        return digits(ctrl) && digits(ns);
    }
    false
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
}

/// The mounts of `/proc/self/mountinfo` that node_exporter reports by
/// default ([`fs_excluded`]), each label set once.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut seen = BTreeSet::new();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let sep = f.iter().position(|w| *w == "-")?;
            if sep < 6 || f.len() < sep + 3 {
                return None;
            }
            Some(Mount {
                mountpoint: unescape_octal(f[4]),
                fstype: f[sep + 1].to_string(),
                device: unescape_octal(f[sep + 2]),
            })
        })
        .filter(|m| !fs_excluded(m) && seen.insert(m.clone()))
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount fields as
/// `\040`-style octal escapes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pseudo filesystems node_exporter leaves out by default
/// (`--collector.filesystem.fs-types-exclude`).
const EXCLUDED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "erofs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// node_exporter's default exclusions: the pseudo filesystem types above,
/// and mount points `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|
/// var/lib/containers/storage/.+)($|/)`. (It keeps `tmpfs`, e.g. `/run`.)
pub fn fs_excluded(m: &Mount) -> bool {
    if EXCLUDED_FS_TYPES.contains(&m.fstype.as_str()) {
        return true;
    }
    let under = |dir: &str| {
        m.mountpoint == dir
            || m.mountpoint
                .strip_prefix(dir)
                .is_some_and(|r| r.starts_with('/'))
    };
    // `.+` after these: the directory itself is kept, what is below it not.
    let below = |dir: &str| {
        m.mountpoint
            .strip_prefix(dir)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| !r.is_empty())
    };
    under("/dev")
        || under("/proc")
        || under("/sys")
        || below("/run/credentials")
        || below("/var/lib/docker")
        || below("/var/lib/containers/storage")
}

/// Size and free space of one filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsSpace {
    pub size: f64,
    pub avail: f64,
}

/// What the host collector read, as text (or numbers for filesystems).
#[derive(Debug, Default)]
pub struct HostInputs {
    pub stat: String,
    pub meminfo: String,
    pub loadavg: String,
    pub net_dev: String,
    pub diskstats: String,
    pub filesystems: Vec<(Mount, FsSpace)>,
    /// `USER_HZ`, the unit of `/proc/stat`.
    pub ticks_per_second: u64,
}

/// The samples node_exporter would report for `inputs`, with their
/// families' type and help. Labels are the sample's own only (no job or
/// instance).
pub fn node_samples(inputs: &HostInputs) -> (Vec<Scraped>, BTreeMap<String, Metadata>) {
    let mut out = Out::default();
    let hz = inputs.ticks_per_second.max(1) as f64;
    out.family(
        "node_cpu_seconds_total",
        "counter",
        "Seconds the CPUs spent in each mode.",
    );
    for cpu in parse_stat(&inputs.stat) {
        for (mode, ticks) in CPU_MODES.iter().zip(cpu.ticks) {
            out.push(
                "node_cpu_seconds_total",
                &[("cpu", &cpu.cpu), ("mode", mode)],
                ticks as f64 / hz,
            );
        }
    }
    for (name, value) in parse_meminfo(&inputs.meminfo) {
        out.family(
            &name,
            "gauge",
            "Memory information field from /proc/meminfo.",
        );
        out.push(&name, &[], value);
    }
    if let Some(load) = parse_loadavg(&inputs.loadavg) {
        for (name, v) in ["node_load1", "node_load5", "node_load15"].iter().zip(load) {
            out.family(name, "gauge", "Load average.");
            out.push(name, &[], v);
        }
    }
    let fs = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            true,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            false,
        ),
    ];
    for (name, help, size) in fs {
        out.family(name, "gauge", help);
        for (m, space) in &inputs.filesystems {
            let labels = [
                ("device", m.device.as_str()),
                ("fstype", &m.fstype),
                ("mountpoint", &m.mountpoint),
            ];
            out.push(name, &labels, if size { space.size } else { space.avail });
        }
    }
    let net = parse_net_dev(&inputs.net_dev);
    out.family(
        "node_network_receive_bytes_total",
        "counter",
        "Bytes received by each network device.",
    );
    out.family(
        "node_network_transmit_bytes_total",
        "counter",
        "Bytes sent by each network device.",
    );
    for (dev, rx, tx) in &net {
        out.push(
            "node_network_receive_bytes_total",
            &[("device", dev)],
            *rx as f64,
        );
        out.push(
            "node_network_transmit_bytes_total",
            &[("device", dev)],
            *tx as f64,
        );
    }
    let disks = parse_diskstats(&inputs.diskstats);
    let disk_families = [
        (
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
        ),
        (
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
        ),
        (
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
        ),
    ];
    for (name, help) in disk_families {
        out.family(name, "counter", help);
        for d in &disks {
            let v = match name {
                "node_disk_read_bytes_total" => d.sectors_read as f64 * SECTOR_BYTES,
                "node_disk_written_bytes_total" => d.sectors_written as f64 * SECTOR_BYTES,
                _ => d.io_ms as f64 / 1000.0,
            };
            out.push(name, &[("device", &d.device)], v);
        }
    }
    (out.samples, out.metadata)
}

#[derive(Default)]
struct Out {
    samples: Vec<Scraped>,
    metadata: BTreeMap<String, Metadata>,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.metadata.insert(
            name.to_string(),
            Metadata {
                kind: kind.into(),
                help: help.into(),
            },
        );
    }
    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.samples.push(Scraped {
            labels: labels_of(name, labels),
            value,
            timestamp_ms: None,
        });
    }
}

/// Mount points whose `statvfs` has not returned (a hung network
/// filesystem): skipped until it does, so each hangs one thread at most.
static STUCK: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn stuck() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    STUCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read the host's files (blocking). A file that cannot be read is an
/// error: the node target is then down for this scrape.
pub fn read() -> std::io::Result<HostInputs> {
    let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/{name}"));
    let mountinfo = proc_file("self/mountinfo")?;
    let mut filesystems = Vec::new();
    for m in parse_mountinfo(&mountinfo) {
        if !stuck().insert(m.mountpoint.clone()) {
            continue;
        }
        let st = rustix::fs::statvfs(m.mountpoint.as_str());
        stuck().remove(&m.mountpoint);
        // A mount we may not look into (permissions) is left out, as
        // node_exporter does.
        if let Ok(st) = st {
            let unit = st.f_frsize as f64;
            let space = FsSpace {
                size: st.f_blocks as f64 * unit,
                avail: st.f_bavail as f64 * unit,
            };
            filesystems.push((m, space));
        }
    }
    Ok(HostInputs {
        stat: proc_file("stat")?,
        meminfo: proc_file("meminfo")?,
        loadavg: proc_file("loadavg")?,
        net_dev: proc_file("net/dev")?,
        // Absent in some containers; no disks then.
        diskstats: proc_file("diskstats").unwrap_or_default(),
        filesystems,
        ticks_per_second: rustix::param::clock_ticks_per_second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
cpu1 1335 2 300 4000 10 1 2 3 0 0
intr 1462898 0 0
ctxt 2339227
btime 1427345280
";

    #[test]
    fn cpu_seconds_per_cpu_and_mode_from_user_hz_ticks() {
        let cpus = parse_stat(STAT);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[1].cpu, "1");
        assert_eq!(cpus[1].ticks, [1335, 2, 300, 4000, 10, 1, 2, 3]);
        let inputs = HostInputs {
            stat: STAT.into(),
            ticks_per_second: 100,
            ..Default::default()
        };
        let (samples, meta) = node_samples(&inputs);
        let get = |cpu: &str, mode: &str| {
            samples
                .iter()
                .find(|s| {
                    s.labels["__name__"] == "node_cpu_seconds_total"
                        && s.labels["cpu"] == cpu
                        && s.labels["mode"] == mode
                })
                .map(|s| s.value)
        };
        assert_eq!(get("0", "user"), Some(13932.80));
        assert_eq!(get("1", "steal"), Some(0.03));
        assert_eq!(get("1", "idle"), Some(40.0));
        assert_eq!(meta["node_cpu_seconds_total"].kind, "counter");
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.labels["__name__"] == "node_cpu_seconds_total")
                .count(),
            16
        );
    }

    #[test]
    fn meminfo_in_bytes_with_node_exporter_names() {
        let m = parse_meminfo(
            "MemTotal:       16318476 kB\nMemAvailable:    8000000 kB\nActive(anon):     123 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(
            m,
            vec![
                ("node_memory_MemTotal_bytes".into(), 16318476.0 * 1024.0),
                ("node_memory_MemAvailable_bytes".into(), 8000000.0 * 1024.0),
                ("node_memory_Active_anon_bytes".into(), 123.0 * 1024.0),
                ("node_memory_HugePages_Total".into(), 0.0),
            ]
        );
    }

    #[test]
    fn loadavg_and_net_dev() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/1109 123456\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 8520370   81460    0    0    0     0          0         0  8520370   81460    0    0    0     0       0          0
  eth0: 1093617 6392 0 0 0 0 0 0 450118 3881 0 0 0 0 0 0
";
        assert_eq!(
            parse_net_dev(dev),
            vec![
                ("lo".into(), 8520370, 8520370),
                ("eth0".into(), 1093617, 450118)
            ]
        );
    }

    #[test]
    fn diskstats_in_bytes_and_seconds_without_partitions() {
        let text = "   8       0 sda 1000 20 4096 300 500 10 2048 200 0 1500 700 0 0 0 0
   8       1 sda1 900 20 4000 300 500 10 2000 200 0 1400 700 0 0 0 0
   7       0 loop0 5 0 10 0 0 0 0 0 0 4 0
 259       0 nvme0n1 1 0 8 0 2 0 16 0 0 30 0
 259       1 nvme0n1p1 1 0 8 0 2 0 16 0 0 30 0
 253       0 dm-0 1 0 8 0 2 0 16 0 0 30 0
";
        let disks = parse_diskstats(text);
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["sda", "nvme0n1", "dm-0"]);
        let inputs = HostInputs {
            diskstats: text.into(),
            ..Default::default()
        };
        let (samples, _) = node_samples(&inputs);
        let get = |name: &str| {
            samples
                .iter()
                .find(|s| s.labels["__name__"] == name && s.labels["device"] == "sda")
                .map(|s| s.value)
        };
        assert_eq!(get("node_disk_read_bytes_total"), Some(4096.0 * 512.0));
        assert_eq!(get("node_disk_written_bytes_total"), Some(2048.0 * 512.0));
        assert_eq!(get("node_disk_io_time_seconds_total"), Some(1.5));
    }

    #[test]
    fn ignored_disks_follow_node_exporters_default() {
        for name in [
            "ram0",
            "zram1",
            "loop12",
            "fd0",
            "sda1",
            "hdb2",
            "vda15",
            "xvda1",
            "nvme0n1p1",
            "nvme10n2p3",
        ] {
            assert!(disk_ignored(name), "{name}");
        }
        for name in [
            "sda", "vdb", "nvme0n1", "dm-0", "md0", "sr0", "mmcblk0", "sdaa1", "loop",
        ] {
            assert!(!disk_ignored(name), "{name}");
        }
    }

    #[test]
    fn real_filesystems_only_from_mountinfo() {
        let text = r"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:22 / /sys rw - sysfs sysfs rw
25 22 0:5 / /dev rw - devtmpfs udev rw
26 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,size=1635000k
27 24 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
28 22 8:2 / /mnt/my\040disk rw - xfs /dev/sdb1 rw
29 22 0:50 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw
30 22 0:51 / /var/lib/docker/volumes rw - ext4 /dev/sdc rw
31 22 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
32 22 0:60 / /snap/core/1 ro - squashfs /dev/loop0 ro
";
        let mounts = parse_mountinfo(text);
        let points: Vec<&str> = mounts.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(points, ["/", "/run", "/mnt/my disk"]);
        assert_eq!(
            mounts[0],
            Mount {
                device: "/dev/sda1".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into()
            }
        );
        let below = |p: &str| Mount {
            device: "x".into(),
            mountpoint: p.into(),
            fstype: "ext4".into(),
        };
        assert!(!fs_excluded(&below("/run/credentials")));
        assert!(!fs_excluded(&below("/var/lib/docker")));
        assert!(!fs_excluded(&below("/var/lib/docker")));
        assert!(fs_excluded(&below("/run/credentials/x.service")));
        assert!(!fs_excluded(&below("/device")));
        assert!(fs_excluded(&below("/dev/shm")));
    }

    #[test]
    fn filesystem_sizes_with_their_labels() {
        let inputs = HostInputs {
            filesystems: vec![(
                Mount {
                    device: "/dev/sda1".into(),
                    mountpoint: "/".into(),
                    fstype: "ext4".into(),
                },
                FsSpace {
                    size: 1000.0,
                    avail: 250.0,
                },
            )],
            ..Default::default()
        };
        let (samples, meta) = node_samples(&inputs);
        let avail = samples
            .iter()
            .find(|s| s.labels["__name__"] == "node_filesystem_avail_bytes")
            .unwrap();
        assert_eq!(avail.value, 250.0);
        assert_eq!(avail.labels["mountpoint"], "/");
        assert_eq!(avail.labels["fstype"], "ext4");
        assert_eq!(avail.labels["device"], "/dev/sda1");
        assert_eq!(meta["node_filesystem_size_bytes"].kind, "gauge");
    }

    #[test]
    fn octal_escapes_in_mount_fields() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }
}
