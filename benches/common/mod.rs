//! What the process benchmarks (`metrics_store`, `alerting`, `validation`) share:
//! processes stopped on drop, free ports, CPU time from `/proc`, and
//! medians. Included with `mod common;`.

use std::net::TcpListener;
use std::process::{Child, Command};

/// A process stopped, with everything it started, when dropped.
pub struct Proc {
    pub child: Child,
    /// The signal that stops it and all it started (`kill` argument,
    /// e.g. `-INT`).
    pub stop: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.stop, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Clock ticks per second, for `/proc/PID/stat`.
pub fn clk_tck() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process used.
pub fn cpu_s(pid: u32, tck: f64) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (tick(11) + tick(12)) / tck
}

pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}
