//! The control plane's side of a data-plane process.
//!
//! The control plane binds every listening socket itself and keeps a copy
//! while the data plane serves on another: when the data plane dies,
//! connections queue on the copies until a new one (started at once) takes
//! them. A link task owns the connection: it sends sockets and plans,
//! polls for reports every 100 ms, starts a new data plane when the old
//! one exits or stops answering, and replaces it on upgrade (the new one
//! serves before the old one is retired). The tick never waits on it.
//!
//! At start-up the control plane looks for the data plane a previous one
//! left ([`STATE_FILE`]), attaches to it and takes copies of its sockets,
//! so a restart of the control plane changes nothing for traffic. No plan
//! is sent until the first tick made one.

use super::wire::{self, ListenerSet, Msg, Reader};
use super::{Carry, DataPlane, DataPlaneInfo, MARKER_ENV, Plan, Report, STATE_FILE, Stop};
use crate::driver::{BoxFuture, Traffic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the data plane is asked for a report.
const POLL: Duration = Duration::from_millis(100);
/// How long the tick waits for the data plane to serve a new plan.
const APPLY_WAIT: Duration = Duration::from_secs(2);
/// A data plane that has not answered for this long is replaced.
const HANG: Duration = Duration::from_secs(5);
/// How long a new data plane may take to start and serve the plan.
const READY: Duration = Duration::from_secs(10);

/// What [`STATE_FILE`] holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataPlaneRecord {
    pub pid: u32,
    pub socket: PathBuf,
    pub version: String,
    pub started_at: u64,
}

/// The data plane's record in `data_dir`, if one is there.
pub fn read_record(data_dir: &Path) -> Option<DataPlaneRecord> {
    let text = std::fs::read_to_string(data_dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

enum Cmd {
    Close(String),
    /// Poll now; answer once the report has come.
    Poll(oneshot::Sender<()>),
    Replace(PathBuf, oneshot::Sender<Result<String, String>>),
    Stop(Stop, oneshot::Sender<()>),
}

/// Sockets the control plane holds for one service.
struct Held {
    addr: SocketAddr,
    socks: Arc<Vec<std::net::TcpListener>>,
}

#[derive(Default)]
struct Shared {
    held: BTreeMap<String, Held>,
    bind_errors: BTreeMap<String, String>,
    /// The plan as last given by the tick, and its generation.
    plan: Arc<Plan>,
    generation: u64,
    /// The current data plane's last report, as it sent it.
    raw: Report,
    carry: Carry,
    report: Arc<Report>,
    info: DataPlaneInfo,
    /// What the data plane found at start-up routed to.
    serving: std::collections::BTreeSet<String>,
    /// `ferry shutdown` stopped the data plane: nothing is in flight any
    /// more, so draining instances need not wait.
    shut_down: bool,
}

impl Shared {
    fn refresh(&mut self) {
        let mut report = self.carry.apply(self.raw.clone());
        for (service, e) in &self.bind_errors {
            let p = report.proxies.entry(service.clone()).or_default();
            p.addr = None;
            p.error = Some(e.clone());
        }
        self.report = Arc::new(report);
    }
}

struct Inner {
    data_dir: PathBuf,
    daemon_id: String,
    binary: PathBuf,
    workers: usize,
    shared: Mutex<Shared>,
    plan_tx: watch::Sender<u64>,
    /// The plan generation the data plane last reported serving.
    applied: watch::Sender<u64>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
}

/// A connection to one data-plane process.
struct Conn {
    stream: Arc<UnixStream>,
    rx: mpsc::Receiver<io::Result<(Msg, Vec<OwnedFd>)>>,
    reader: tokio::task::JoinHandle<()>,
    pid: u32,
    version: String,
    started_at: u64,
    socket: PathBuf,
    /// Sockets it holds, by service.
    has: BTreeMap<String, SocketAddr>,
    sent: u64,
    last_heard: Instant,
    /// Started by this control plane (else found at start-up).
    since: Instant,
    /// The instances it routed to when the connection opened.
    serving: Vec<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub struct Remote {
    inner: Arc<Inner>,
}

impl Remote {
    /// Attach to the data plane a previous control plane left, or start
    /// one from `binary`; then keep it running.
    pub async fn start(data_dir: PathBuf, daemon_id: String, binary: PathBuf) -> Remote {
        let (plan_tx, plan_rx) = watch::channel(0);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            data_dir,
            daemon_id,
            binary,
            workers: ferry_proxy::default_workers(),
            shared: Mutex::new(Shared {
                info: DataPlaneInfo {
                    mode: "process".into(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            plan_tx,
            applied: watch::channel(0).0,
            cmd_tx,
        });
        let mut conn = inner.attach().await;
        if conn.is_none() {
            match inner.start_process(&inner.binary).await {
                Ok(c) => conn = Some(c),
                Err(e) => inner.problem(format!("the data plane did not start: {e}")),
            }
        }
        if let Some(c) = &conn {
            inner.record(c);
            inner.attached(c);
        }
        remove_dead_sockets(&inner.data_dir);
        // A data plane of another version is replaced by this binary's.
        let stale = conn
            .as_ref()
            .is_some_and(|c| c.version != env!("CARGO_PKG_VERSION"));
        tokio::spawn(inner.clone().run(conn, plan_rx, cmd_rx, stale));
        Remote { inner }
    }
}

impl Inner {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn problem(&self, text: String) {
        tracing::error!("{text}");
        let mut sh = self.shared();
        sh.info.problem = Some(text);
    }

    fn attached(&self, c: &Conn) {
        let mut sh = self.shared();
        sh.info.attached = true;
        sh.info.pid = Some(c.pid);
        sh.info.version = Some(c.version.clone());
        sh.info.started_at = Some(c.started_at);
        sh.info.problem = None;
    }

    /// Write [`STATE_FILE`] for `c`.
    fn record(&self, c: &Conn) {
        let record = DataPlaneRecord {
            pid: c.pid,
            socket: c.socket.clone(),
            version: c.version.clone(),
            started_at: c.started_at,
        };
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        if let Err(e) = crate::write_private(&self.data_dir.join(STATE_FILE), &text) {
            tracing::error!("cannot record the data plane in {STATE_FILE}: {e}");
        }
    }

    /// The data plane a previous control plane left, with copies of its
    /// sockets taken.
    async fn attach(&self) -> Option<Conn> {
        let record = read_record(&self.data_dir)?;
        let mut c = match connect(&record.socket, false).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(
                    "the data plane recorded in {STATE_FILE} (pid {}) does not answer ({e}); starting a new one",
                    record.pid
                );
                if is_ours(record.pid, &self.daemon_id) {
                    kill(record.pid);
                }
                return None;
            }
        };
        c.socket = record.socket;
        if let Err(e) = self.take_listeners(&mut c).await {
            tracing::warn!("could not take the data plane's listening sockets: {e}");
        }
        // Plans of this control plane come after the data plane's last.
        {
            let mut sh = self.shared();
            sh.generation = c.sent;
            sh.serving = c.serving.iter().cloned().collect();
        }
        tracing::info!(
            "attached to the running data plane (pid {}, version {}); traffic was served meanwhile",
            c.pid,
            c.version
        );
        Some(c)
    }

    async fn take_listeners(&self, c: &mut Conn) -> io::Result<()> {
        wire::send(&c.stream, &Msg::TakeListeners, &[]).await?;
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let next = tokio::time::timeout_at(deadline, c.rx.recv())
                .await
                .map_err(|_| io::Error::other("no answer"))?;
            match next {
                Some(Ok((Msg::Listeners { set }, fds))) => {
                    let socks: Vec<std::net::TcpListener> =
                        fds.into_iter().map(std::net::TcpListener::from).collect();
                    c.has.insert(set.service.clone(), set.addr);
                    let mut sh = self.shared();
                    sh.held.entry(set.service).or_insert(Held {
                        addr: set.addr,
                        socks: Arc::new(socks),
                    });
                }
                Some(Ok((Msg::ListenersDone, _))) => return Ok(()),
                Some(Ok((Msg::Report { report }, _))) => self.take_report(c, report),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(io::Error::other("the data plane closed the connection")),
            }
        }
    }

    /// Start a data-plane process from `binary` and connect to it.
    async fn start_process(&self, binary: &Path) -> Result<Conn, String> {
        let tag = crate::random_hex(4).map_err(|e| e.to_string())?;
        let socket = super::process::socket_path(&self.data_dir, &tag);
        let mut child = ferry_runtime::spawn_detached(
            binary,
            &[
                "dataplane".as_ref(),
                "--data-dir".as_ref(),
                self.data_dir.as_os_str(),
                "--socket".as_ref(),
                socket.as_os_str(),
            ],
            &[(MARKER_ENV, &self.daemon_id)],
        )
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id().unwrap_or(0);
        let deadline = Instant::now() + READY;
        let conn = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} dataplane exited at once ({}); see the daemon's log",
                    binary.display(),
                    ferry_runtime::describe_exit(status)
                ));
            }
            if socket.exists() {
                match connect(&socket, true).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() >= deadline => {
                        kill(pid);
                        return Err(format!("it did not answer within {READY:?}: {e}"));
                    }
                    Err(_) => {}
                }
            } else if Instant::now() >= deadline {
                kill(pid);
                return Err(format!("it did not open its socket within {READY:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Collect its exit status whenever it ends.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        tracing::info!(
            "started the data plane (pid {}, version {})",
            conn.pid,
            conn.version
        );
        let mut conn = conn;
        conn.socket = socket;
        Ok(conn)
    }

    /// Send `c` the sockets it lacks, then the plan if it has not seen it.
    async fn sync(&self, c: &mut Conn) -> io::Result<()> {
        let (sets, generation, plan) = {
            let sh = self.shared();
            let sets: Vec<(ListenerSet, Arc<Vec<std::net::TcpListener>>)> = sh
                .held
                .iter()
                .filter(|(service, h)| c.has.get(*service) != Some(&h.addr))
                .map(|(service, h)| {
                    (
                        ListenerSet {
                            service: service.clone(),
                            addr: h.addr,
                            count: h.socks.len(),
                        },
                        h.socks.clone(),
                    )
                })
                .collect();
            (sets, sh.generation, sh.plan.clone())
        };
        for (set, socks) in sets {
            let addr = set.addr;
            let service = set.service.clone();
            wire::send(&c.stream, &Msg::Listeners { set }, &wire::borrowed(&socks)).await?;
            c.has.insert(service, addr);
        }
        if generation > 0 && c.sent != generation {
            let msg = Msg::Apply {
                generation,
                plan: (*plan).clone(),
            };
            wire::send(&c.stream, &msg, &[]).await?;
            c.sent = generation;
        }
        Ok(())
    }

    fn take_report(&self, c: &mut Conn, report: Report) {
        c.last_heard = Instant::now();
        self.applied.send_replace(report.generation);
        let mut sh = self.shared();
        sh.raw = report;
        sh.refresh();
    }

    /// The current data plane is gone: keep its counts, forget it.
    fn lost(&self, c: Conn, why: &str) {
        tracing::error!(
            "the data plane (pid {}) {why}; starting a new one (the listening sockets are held, so connections wait)",
            c.pid
        );
        ferry_runtime::reap(c.pid as i32);
        let mut sh = self.shared();
        let raw = std::mem::take(&mut sh.raw);
        sh.carry.retire(&raw);
        sh.info.attached = false;
        sh.info.pid = None;
        sh.info.problem = Some(format!("the data plane (pid {}) {why}", c.pid));
        sh.refresh();
    }

    async fn run(
        self: Arc<Self>,
        mut conn: Option<Conn>,
        mut plan_rx: watch::Receiver<u64>,
        mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        stale: bool,
    ) {
        if stale {
            let binary = self.binary.clone();
            match self.replace(&mut conn, &binary).await {
                Ok(text) => tracing::info!("{text}"),
                Err(e) => {
                    tracing::error!("could not replace the data plane of another version: {e}")
                }
            }
        }
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delay = Duration::ZERO;
        // Callers of `fresh_report`, answered by the next report.
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let Some(c) = conn.as_mut() else {
                // No data plane: start one, sooner the first time.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    cmd = cmd_rx.recv() => match cmd {
                        None => return,
                        Some(Cmd::Stop(how, reply)) => {
                            if how == Stop::Shutdown {
                                self.shared().shut_down = true;
                            }
                            let _ = reply.send(());
                            return;
                        }
                        Some(Cmd::Replace(binary, reply)) => {
                            let r = self.replace(&mut conn, &binary).await;
                            let _ = reply.send(r);
                            continue;
                        }
                        Some(Cmd::Close(_) | Cmd::Poll(_)) => continue,
                    },
                }
                let binary = self.binary.clone();
                match self.start_process(&binary).await {
                    Ok(mut c) => {
                        self.shared().info.restarts += 1;
                        if let Err(e) = self.sync(&mut c).await {
                            tracing::warn!("the new data plane: {e}");
                        }
                        self.record(&c);
                        self.attached(&c);
                        remove_dead_sockets(&self.data_dir);
                        conn = Some(c);
                    }
                    Err(e) => {
                        self.problem(format!("the data plane did not start: {e}"));
                        delay =
                            (delay * 2).clamp(Duration::from_millis(250), Duration::from_secs(10));
                    }
                }
                continue;
            };
            enum Event {
                Message(Option<io::Result<(Msg, Vec<OwnedFd>)>>),
                Plan,
                Tick,
                Cmd(Option<Cmd>),
            }
            let event = tokio::select! {
                m = c.rx.recv() => Event::Message(m),
                _ = plan_rx.changed() => Event::Plan,
                _ = poll.tick() => Event::Tick,
                cmd = cmd_rx.recv() => Event::Cmd(cmd),
            };
            let mut failed: Option<String> = None;
            match event {
                Event::Message(Some(Ok((Msg::Report { report }, _)))) => {
                    self.take_report(c, report);
                    for waiter in waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                Event::Message(Some(Ok((Msg::Error { message }, _)))) => {
                    tracing::warn!("the data plane: {message}");
                }
                Event::Message(Some(Ok(_))) => {}
                Event::Message(Some(Err(e))) => {
                    failed = Some(format!("broke the connection ({e})"))
                }
                Event::Message(None) => failed = Some("exited".to_string()),
                Event::Plan => {
                    // A report right away tells `apply` the plan serves.
                    let sent = async {
                        self.sync(c).await?;
                        wire::send(&c.stream, &Msg::Poll, &[]).await
                    };
                    if let Err(e) = sent.await {
                        failed = Some(format!("could not be sent the plan ({e})"));
                    }
                }
                Event::Tick => {
                    if c.last_heard.elapsed() > HANG {
                        tracing::error!(
                            "the data plane (pid {}) has not answered for {HANG:?}; replacing it",
                            c.pid
                        );
                        let old = c.pid;
                        let binary = self.binary.clone();
                        match self.replace(&mut conn, &binary).await {
                            Ok(text) => tracing::info!("{text}"),
                            Err(e) => tracing::error!("{e}"),
                        }
                        if conn.as_ref().is_some_and(|c| c.pid != old) {
                            kill(old);
                        }
                        continue;
                    }
                    let sent = async {
                        self.sync(c).await?;
                        wire::send(&c.stream, &Msg::Poll, &[]).await
                    };
                    if let Err(e) = sent.await {
                        failed = Some(format!("could not be reached ({e})"));
                    }
                }
                Event::Cmd(None) => return,
                Event::Cmd(Some(Cmd::Poll(reply))) => {
                    waiters.push(reply);
                    if let Err(e) = wire::send(&c.stream, &Msg::Poll, &[]).await {
                        failed = Some(format!("could not be reached ({e})"));
                    }
                }
                Event::Cmd(Some(Cmd::Close(instance))) => {
                    let _ = wire::send(&c.stream, &Msg::Close { instance }, &[]).await;
                }
                Event::Cmd(Some(Cmd::Replace(binary, reply))) => {
                    let r = self.replace(&mut conn, &binary).await;
                    let _ = reply.send(r);
                    continue;
                }
                Event::Cmd(Some(Cmd::Stop(how, reply))) => {
                    if how == Stop::Shutdown {
                        self.shutdown(c).await;
                    }
                    let _ = reply.send(());
                    return;
                }
            }
            if let Some(why) = failed
                && let Some(c) = conn.take()
            {
                let lived = c.since.elapsed();
                self.lost(c, &why);
                waiters.clear();
                // A data plane that keeps dying is started less often.
                delay = if lived > Duration::from_secs(10) {
                    Duration::ZERO
                } else {
                    (delay * 2).clamp(Duration::from_millis(250), Duration::from_secs(10))
                };
            }
        }
    }

    /// `ferry shutdown`: the data plane stops proxying and exits.
    async fn shutdown(&self, c: &mut Conn) {
        if wire::send(&c.stream, &Msg::Shutdown, &[]).await.is_ok() {
            let wait = async { while let Some(Ok(_)) = c.rx.recv().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(35), wait).await;
        }
        ferry_runtime::reap(c.pid as i32);
        let _ = std::fs::remove_file(self.data_dir.join(STATE_FILE));
        let mut sh = self.shared();
        sh.info.attached = false;
        sh.shut_down = true;
    }

    /// Start a data plane from `binary`, give it the sockets and the plan,
    /// wait until it serves, then retire the current one.
    async fn replace(&self, conn: &mut Option<Conn>, binary: &Path) -> Result<String, String> {
        let mut new = self.start_process(binary).await.map_err(|e| {
            format!("the new data plane did not start: {e}; the running one keeps serving")
        })?;
        let ready = async {
            self.sync(&mut new).await.map_err(|e| e.to_string())?;
            let (generation, services) = {
                let sh = self.shared();
                let services: Vec<String> =
                    sh.plan.proxies.iter().map(|p| p.service.clone()).collect();
                (sh.generation, services)
            };
            wire::send(&new.stream, &Msg::Poll, &[])
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match new.rx.recv().await {
                    Some(Ok((Msg::Report { report }, _))) => {
                        let serving = services
                            .iter()
                            .all(|s| report.proxies.get(s).is_some_and(|p| p.addr.is_some()));
                        if report.generation >= generation && serving {
                            return Ok(report);
                        }
                        if let Some((s, e)) = report
                            .proxies
                            .iter()
                            .find_map(|(s, p)| Some((s, p.error.clone()?)))
                        {
                            tracing::debug!("the new data plane: {s}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        wire::send(&new.stream, &Msg::Poll, &[])
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("it exited".to_string()),
                }
            }
        };
        let report = match tokio::time::timeout(READY, ready).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                kill(new.pid);
                return Err(format!(
                    "the new data plane (pid {}) failed: {e}; the running one keeps serving",
                    new.pid
                ));
            }
            Err(_) => {
                kill(new.pid);
                return Err(format!(
                    "the new data plane (pid {}) did not serve within {READY:?}; the running one keeps serving",
                    new.pid
                ));
            }
        };
        let old = conn.take();
        let text = match &old {
            Some(o) => format!(
                "the data plane (pid {}, {}) handed over to pid {} ({}); it finishes its connections and exits",
                o.pid, o.version, new.pid, new.version
            ),
            None => format!("started the data plane (pid {}, {})", new.pid, new.version),
        };
        if let Some(o) = old {
            let grace = self.shared().plan.retire_grace().as_millis() as u64;
            let _ = wire::send(&o.stream, &Msg::Retire { grace_ms: grace }, &[]).await;
            let pid = o.pid;
            // Its exit status, when it is this process's child from before
            // a re-exec.
            tokio::spawn(async move {
                for _ in 0..(grace / 1000 + 10) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ferry_runtime::reap(pid as i32);
                }
            });
        }
        {
            let mut sh = self.shared();
            let raw = std::mem::take(&mut sh.raw);
            sh.carry.retire(&raw);
            sh.raw = report;
            sh.info.restarts += 1;
            sh.refresh();
        }
        new.last_heard = Instant::now();
        self.record(&new);
        self.attached(&new);
        *conn = Some(new);
        Ok(text)
    }
}

/// Connect to a data plane's socket and say hello.
async fn connect(socket: &Path, fresh: bool) -> io::Result<Conn> {
    let stream = Arc::new(UnixStream::connect(socket).await?);
    let (tx, rx) = mpsc::channel(64);
    let reading = stream.clone();
    let reader = tokio::spawn(async move {
        let mut reader = Reader::default();
        loop {
            match reader.recv(&reading).await {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let mut c = Conn {
        stream,
        rx,
        reader,
        pid: 0,
        version: String::new(),
        started_at: 0,
        socket: socket.to_path_buf(),
        has: BTreeMap::new(),
        sent: 0,
        last_heard: Instant::now(),
        since: Instant::now(),
        serving: Vec::new(),
    };
    wire::send(
        &c.stream,
        &Msg::Hello {
            protocol: wire::PROTOCOL,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: 0,
            generation: 0,
            listeners: vec![],
            serving: vec![],
        },
        &[],
    )
    .await?;
    let hello = tokio::time::timeout(Duration::from_secs(5), c.rx.recv())
        .await
        .map_err(|_| io::Error::other("no hello within 5s"))?;
    match hello {
        Some(Ok((
            Msg::Hello {
                protocol,
                version,
                pid,
                started_at,
                generation,
                listeners,
                serving,
            },
            _,
        ))) => {
            if protocol != wire::PROTOCOL {
                return Err(io::Error::other(format!(
                    "it speaks protocol {protocol}, this control plane {}",
                    wire::PROTOCOL
                )));
            }
            c.pid = pid;
            c.version = version;
            c.started_at = started_at;
            c.sent = generation;
            c.serving = serving;
            if !fresh {
                c.since = Instant::now() - Duration::from_secs(3600);
            }
            let _ = listeners;
            Ok(c)
        }
        Some(Ok((Msg::Error { message }, _))) => Err(io::Error::other(message)),
        Some(Ok(_)) => Err(io::Error::other("it did not say hello")),
        Some(Err(e)) => Err(e),
        None => Err(io::Error::other("it closed the connection")),
    }
}

/// Remove the control sockets of data planes that died without cleaning
/// up (killed). A socket some process still has bound (the current data
/// plane, or one still retiring) is listed in `/proc/net/unix` and left
/// alone; connecting to find out would take over a live data plane's
/// control connection.
fn remove_dead_sockets(data_dir: &Path) {
    let Ok(bound) = std::fs::read_to_string("/proc/net/unix") else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("dataplane-") && name.ends_with(".sock")) {
            continue;
        }
        let path = entry.path();
        // By name (random per data plane): the path was bound as the data
        // dir was spelled then, perhaps relative.
        let live = bound.lines().any(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|bound| bound == name || bound.ends_with(&format!("/{name}")))
        });
        if !live {
            tracing::debug!("removing {}: no data plane has it bound", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Does `pid` carry this daemon's data-plane marker?
fn is_ours(pid: u32, daemon_id: &str) -> bool {
    ferry_runtime::env_of(pid as i32, MARKER_ENV).is_some_and(|m| m == daemon_id)
}

/// SIGKILL a data plane. Only a live process that carries the data-plane
/// marker is signalled: a recorded pid may since have been reused.
fn kill(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw > 1 && ferry_runtime::env_of(raw, MARKER_ENV).is_some() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
        ferry_runtime::reap(raw);
    }
}

impl Traffic for Remote {
    /// Unknown counts as busy: an instance still in the plan, or whose
    /// removal the data plane has not reported yet, has requests in flight
    /// as far as a drain is concerned.
    fn in_flight(&self, instance: &str) -> usize {
        let sh = self.inner.shared();
        if sh.shut_down {
            return 0;
        }
        let planned = sh
            .plan
            .proxies
            .iter()
            .any(|p| p.routes.upstreams.iter().any(|u| u.instance == instance));
        if planned || !sh.info.attached || sh.raw.generation < sh.generation {
            return 1;
        }
        sh.raw.in_flight.get(instance).copied().unwrap_or(0) as usize
    }

    fn close(&self, instance: &str) {
        let _ = self.inner.cmd_tx.send(Cmd::Close(instance.to_string()));
    }
}

impl DataPlane for Remote {
    fn apply<'a>(&'a self, plan: Plan) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let changed = {
                let mut sh = inner.shared();
                // The sockets: bound here once per address, kept while planned.
                for p in &plan.proxies {
                    let have = sh.held.get(&p.service).map(|h| h.addr);
                    if have == Some(p.listen) {
                        continue;
                    }
                    sh.held.remove(&p.service);
                    match ferry_proxy::bind_listeners(p.listen, inner.workers) {
                        Ok(socks) => {
                            sh.bind_errors.remove(&p.service);
                            sh.held.insert(
                                p.service.clone(),
                                Held {
                                    addr: p.listen,
                                    socks: Arc::new(socks),
                                },
                            );
                        }
                        Err(e) => {
                            let text = format!("cannot listen on {}: {e}", p.listen);
                            if sh.bind_errors.get(&p.service) != Some(&text) {
                                tracing::error!(service = %p.service, "{text}; retrying every tick");
                            }
                            sh.bind_errors.insert(p.service.clone(), text);
                        }
                    }
                }
                let planned: std::collections::BTreeSet<&str> =
                    plan.proxies.iter().map(|p| p.service.as_str()).collect();
                sh.held
                    .retain(|service, _| planned.contains(service.as_str()));
                sh.bind_errors
                    .retain(|service, _| planned.contains(service.as_str()));
                let mut plan = plan;
                let held = &sh.held;
                plan.proxies.retain(|p| held.contains_key(&p.service));
                if *sh.plan != plan || sh.generation == 0 {
                    sh.generation += 1;
                    sh.plan = Arc::new(plan);
                    Some((sh.generation, sh.info.attached))
                } else {
                    sh.refresh();
                    None
                }
            };
            if let Some((generation, attached)) = changed {
                inner.plan_tx.send_replace(generation);
                // What the tick publishes next (a switch, a canary weight)
                // is what the data plane serves: wait for it to say so, a
                // short while, unless it is away.
                if attached {
                    let mut applied = inner.applied.subscribe();
                    let _ =
                        tokio::time::timeout(APPLY_WAIT, applied.wait_for(|g| *g >= generation))
                            .await;
                }
            }
        })
    }

    fn report(&self) -> Arc<Report> {
        self.inner.shared().report.clone()
    }

    fn fresh_report<'a>(&'a self) -> BoxFuture<'a, Arc<Report>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.inner.cmd_tx.send(Cmd::Poll(tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
            }
            self.report()
        })
    }

    fn info(&self) -> DataPlaneInfo {
        self.inner.shared().info.clone()
    }

    fn serving(&self) -> std::collections::BTreeSet<String> {
        self.inner.shared().serving.clone()
    }

    fn replace<'a>(&'a self, binary: PathBuf) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.inner
                .cmd_tx
                .send(Cmd::Replace(binary, tx))
                .map_err(|_| "the data-plane link has stopped".to_string())?;
            rx.await
                .map_err(|_| "the data-plane link has stopped".to_string())?
        })
    }

    fn stop<'a>(&'a self, how: Stop) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.inner.cmd_tx.send(Cmd::Stop(how, tx)).is_ok() {
                let _ = rx.await;
            }
        })
    }
}
