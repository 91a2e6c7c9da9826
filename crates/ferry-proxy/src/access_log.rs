//! The access log: one JSON line per request, formatted and written by a
//! writer task. Requests hand their entry over a bounded channel and never
//! wait: when the channel is full the line is dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::sync::mpsc;

/// Where and how the access log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogOptions {
    /// File the JSON lines are appended to (created if missing).
    pub path: PathBuf,
    /// Lines that may wait for the writer; beyond it lines are dropped and
    /// counted in [`ProxyCounters::access_log_dropped`](crate::ProxyCounters).
    pub buffer: usize,
}

/// One finished request.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) client: IpAddr,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) status: StatusCode,
    pub(crate) revision: Option<u64>,
    pub(crate) instance: Option<Arc<str>>,
    pub(crate) duration: Duration,
    pub(crate) bytes: u64,
    pub(crate) request_id: HeaderValue,
    pub(crate) traceparent: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
}

/// The sending side, shared by all connections of a proxy.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: mpsc::Sender<Box<Entry>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Open the file and spawn the writer task on the current runtime.
    pub(crate) fn start(
        options: &AccessLogOptions,
        service: &str,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<AccessLog> {
        if let Some(dir) = options.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // Client addresses and request paths: readable by Ferry's user only.
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(&options.path)?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let service: Arc<str> = Arc::from(service);
        tokio::task::spawn_blocking(move || write_loop(rx, file, &service));
        Ok(AccessLog { tx, dropped })
    }

    /// Queue an entry; never waits.
    pub(crate) fn log(&self, entry: Box<Entry>) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn write_loop(mut rx: mpsc::Receiver<Box<Entry>>, file: std::fs::File, service: &str) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut line = String::with_capacity(512);
    while let Some(entry) = rx.blocking_recv() {
        format_entry(&entry, service, &mut line);
        let _ = out.write_all(line.as_bytes());
        // Write whatever else is already queued, then flush once.
        while let Ok(entry) = rx.try_recv() {
            format_entry(&entry, service, &mut line);
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

pub(crate) fn format_entry(e: &Entry, service: &str, line: &mut String) {
    line.clear();
    let since = e
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    line.push_str("{\"ts\":\"");
    rfc3339(since, line);
    line.push_str("\",\"service\":");
    json_str(service.as_bytes(), line);
    let _ = write!(line, ",\"client\":\"{}\"", e.client);
    line.push_str(",\"method\":");
    json_str(e.method.as_str().as_bytes(), line);
    line.push_str(",\"path\":");
    let path = e.uri.path_and_query().map_or("/", |p| p.as_str());
    json_str(path.as_bytes(), line);
    let _ = write!(line, ",\"status\":{}", e.status.as_u16());
    match e.revision {
        Some(rev) => {
            let _ = write!(line, ",\"revision\":{rev}");
        }
        None => line.push_str(",\"revision\":null"),
    }
    line.push_str(",\"instance\":");
    match &e.instance {
        Some(id) => json_str(id.as_bytes(), line),
        None => line.push_str("null"),
    }
    let _ = write!(
        line,
        ",\"duration_ms\":{:.3},\"bytes\":{}",
        e.duration.as_secs_f64() * 1000.0,
        e.bytes
    );
    line.push_str(",\"request_id\":");
    json_str(e.request_id.as_bytes(), line);
    line.push_str(",\"traceparent\":");
    match &e.traceparent {
        Some(t) => json_str(t.as_bytes(), line),
        None => line.push_str("null"),
    }
    line.push_str(",\"user_agent\":");
    match &e.user_agent {
        Some(t) => json_str(t.as_bytes(), line),
        None => line.push_str("null"),
    }
    line.push_str("}\n");
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_str(bytes: &[u8], out: &mut String) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2024-05-01T12:34:56.789Z` from a time since the epoch.
fn rfc3339(since: Duration, out: &mut String) {
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn formats_a_json_line() {
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
            client: "192.0.2.1".parse().unwrap(),
            method: Method::GET,
            uri: Uri::from_static("/a?b=%22c%22&d=\\"),
            status: StatusCode::OK,
            revision: Some(3),
            instance: Some(Arc::from("web-3-abc")),
            duration: Duration::from_micros(1500),
            bytes: 12,
            request_id: HeaderValue::from_static("rid"),
            traceparent: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
        };
        let mut line = String::new();
        format_entry(&entry, "web", &mut line);
        assert_eq!(
            line,
            "{\"ts\":\"2024-05-01T12:34:56.789Z\",\"service\":\"web\",\"client\":\"192.0.2.1\",\
             \"method\":\"GET\",\"path\":\"/a?b=%22c%22&d=\\\\\",\"status\":200,\"revision\":3,\
             \"instance\":\"web-3-abc\",\"duration_ms\":1.500,\"bytes\":12,\"request_id\":\"rid\",\
             \"traceparent\":null,\"user_agent\":\"curl/8\"}\n"
        );
    }
}
