//! `ferry dataplane`: the data-plane process. It serves the proxies of the
//! last plan it was given, on listening sockets the control plane passed
//! it, and keeps doing so while no control plane is attached. One control
//! plane talks to it at a time over a Unix socket in the data dir; a new
//! connection (a restarted control plane) replaces the old one.
//!
//! It ends when told: `Retire` (an upgrade: stop accepting, let open
//! connections finish, exit once none is left or the grace has passed) or
//! `Shutdown` (`ferry shutdown`). SIGTERM retires it with a 30 s grace.

use super::engine::{Engine, Sockets};
use super::wire::{self, ListenerSet, Msg, Reader};
use super::{Plan, Report};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// How long in-flight requests may take after `Shutdown`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Listening sockets received from the control plane, by service.
#[derive(Default)]
struct Held {
    sets: BTreeMap<String, (SocketAddr, Vec<std::net::TcpListener>)>,
}

impl Sockets for &Mutex<Held> {
    fn take(&mut self, service: &str, addr: SocketAddr) -> io::Result<Vec<std::net::TcpListener>> {
        let held = self.lock().unwrap_or_else(|p| p.into_inner());
        match held.sets.get(service) {
            Some((a, socks)) if *a == addr && !socks.is_empty() => {
                socks.iter().map(|s| s.try_clone()).collect()
            }
            _ => Err(io::Error::other(format!(
                "the control plane has sent no listening socket for {addr}"
            ))),
        }
    }
}

/// When and why the process ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Serving,
    /// Exit when no client connection is left, or at the deadline.
    Draining(Instant),
}

struct Dp {
    engine: Engine,
    held: Mutex<Held>,
    /// The last plan applied, and its generation.
    plan: Mutex<(u64, Plan)>,
    started_at: u64,
    ending: watch::Sender<Ending>,
}

impl Dp {
    fn plan(&self) -> MutexGuard<'_, (u64, Plan)> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn apply(&self, generation: u64, plan: Plan) {
        {
            // Sockets of services the plan no longer has are let go.
            let mut held = self.held();
            held.sets.retain(|service, (addr, _)| {
                plan.proxies
                    .iter()
                    .any(|p| &p.service == service && &p.listen == addr)
            });
        }
        let mut sockets = &self.held;
        self.engine.apply(generation, &plan, &mut sockets).await;
        *self.plan() = (generation, plan);
    }

    /// Try again what failed (a socket that came after its plan).
    async fn retry(&self) {
        let failed = self
            .engine
            .report()
            .proxies
            .values()
            .any(|p| p.error.is_some());
        if failed {
            let (generation, plan) = self.plan().clone();
            self.apply(generation, plan).await;
        }
    }

    fn report(&self) -> Report {
        self.engine.report()
    }

    fn end(&self, ending: Ending) {
        self.ending.send_if_modified(|e| {
            let earlier = match (*e, ending) {
                (Ending::Serving, _) => true,
                (Ending::Draining(a), Ending::Draining(b)) => b < a,
                (Ending::Draining(_), Ending::Serving) => false,
            };
            if earlier {
                *e = ending;
            }
            earlier
        });
    }
}

/// Run the data plane until it is retired or shut down.
pub async fn run(data_dir: PathBuf, socket: PathBuf) -> io::Result<()> {
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", socket.display()),
        )
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    }
    let (ending, mut ending_rx) = watch::channel(Ending::Serving);
    let dp = Arc::new(Dp {
        engine: Engine::new(data_dir),
        held: Mutex::default(),
        plan: Mutex::default(),
        started_at: crate::clock::Clock::now(&crate::clock::SystemClock),
        ending,
    });
    tracing::info!(
        "ferry data plane {} (pid {}) listening for the control plane on {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        socket.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut session: Option<tokio::task::JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if let Some(old) = session.take() {
                    old.abort();
                }
                let dp = dp.clone();
                session = Some(tokio::spawn(async move {
                    if let Err(e) = serve_control_plane(&dp, stream).await {
                        tracing::warn!("control plane connection: {e}");
                    }
                }));
            }
            _ = term.recv() => {
                let grace = dp.plan().1.retire_grace();
                tracing::info!("SIGTERM: retiring (connections finish within {grace:?})");
                dp.engine.retire(grace);
                dp.held().sets.clear();
                dp.end(Ending::Draining(Instant::now() + grace));
            }
            _ = ending_rx.changed() => {}
            _ = tick.tick() => {}
        }
        if let Ending::Draining(deadline) = *ending_rx.borrow() {
            let open = dp.engine.open_connections();
            if open == 0 || Instant::now() >= deadline {
                tracing::info!("data plane exiting ({open} client connections left)");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn serve_control_plane(dp: &Dp, stream: UnixStream) -> io::Result<()> {
    let mut reader = Reader::default();
    let Some((hello, _)) = reader.recv(&stream).await? else {
        return Ok(());
    };
    let Msg::Hello { protocol, .. } = hello else {
        return Err(io::Error::other(
            "the control plane did not say hello first",
        ));
    };
    if protocol != wire::PROTOCOL {
        let message = format!(
            "this data plane speaks protocol {}, the control plane {protocol}",
            wire::PROTOCOL
        );
        wire::send(
            &stream,
            &Msg::Error {
                message: message.clone(),
            },
            &[],
        )
        .await?;
        return Err(io::Error::other(message));
    }
    let listeners = held_sets(&dp.held());
    let serving = dp
        .plan()
        .1
        .proxies
        .iter()
        .flat_map(|p| p.routes.upstreams.iter().map(|u| u.instance.clone()))
        .collect();
    let generation = dp.plan().0;
    let hello = Msg::Hello {
        protocol: wire::PROTOCOL,
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        started_at: dp.started_at,
        generation,
        listeners,
        serving,
    };
    wire::send(&stream, &hello, &[]).await?;
    tracing::info!("a control plane attached");
    while let Some((msg, fds)) = reader.recv(&stream).await? {
        match msg {
            Msg::Listeners { set } => {
                if fds.len() != set.count || fds.is_empty() {
                    let message = format!(
                        "{} listening sockets announced for {}, {} received",
                        set.count,
                        set.service,
                        fds.len()
                    );
                    wire::send(&stream, &Msg::Error { message }, &[]).await?;
                    continue;
                }
                let socks = fds.into_iter().map(std::net::TcpListener::from).collect();
                dp.held().sets.insert(set.service, (set.addr, socks));
            }
            Msg::Apply { generation, plan } => {
                dp.apply(generation, plan).await;
                let report = dp.report();
                wire::send(&stream, &Msg::Report { report }, &[]).await?;
            }
            Msg::Poll => {
                dp.retry().await;
                let report = dp.report();
                wire::send(&stream, &Msg::Report { report }, &[]).await?;
            }
            Msg::Close { instance } => dp.engine.close(&instance),
            Msg::TakeListeners => {
                let copies: Vec<(ListenerSet, Vec<std::net::TcpListener>)> = {
                    let held = dp.held();
                    held.sets
                        .iter()
                        .filter_map(|(service, (addr, socks))| {
                            let copies: io::Result<Vec<_>> =
                                socks.iter().map(|s| s.try_clone()).collect();
                            Some((
                                ListenerSet {
                                    service: service.clone(),
                                    addr: *addr,
                                    count: socks.len(),
                                },
                                copies.ok()?,
                            ))
                        })
                        .collect()
                };
                for (set, socks) in &copies {
                    wire::send(
                        &stream,
                        &Msg::Listeners { set: set.clone() },
                        &wire::borrowed(socks),
                    )
                    .await?;
                }
                wire::send(&stream, &Msg::ListenersDone, &[]).await?;
            }
            Msg::Retire { grace_ms } => {
                let grace = Duration::from_millis(grace_ms);
                tracing::info!("retired by the control plane: connections finish within {grace:?}");
                dp.engine.retire(grace);
                dp.held().sets.clear();
                dp.end(Ending::Draining(Instant::now() + grace));
            }
            Msg::Shutdown => {
                tracing::info!("shutting down: in-flight requests finish");
                dp.engine.shutdown();
                dp.held().sets.clear();
                dp.end(Ending::Draining(Instant::now() + SHUTDOWN_GRACE));
            }
            Msg::Hello { .. } | Msg::Report { .. } | Msg::ListenersDone | Msg::Error { .. } => {}
        }
    }
    tracing::warn!("the control plane went away; serving with the last plan until it is back");
    Ok(())
}

fn held_sets(held: &Held) -> Vec<ListenerSet> {
    held.sets
        .iter()
        .map(|(service, (addr, socks))| ListenerSet {
            service: service.clone(),
            addr: *addr,
            count: socks.len(),
        })
        .collect()
}

/// The socket path of a data plane started now, in the data dir.
pub fn socket_path(data_dir: &Path, tag: &str) -> PathBuf {
    data_dir.join(format!("dataplane-{tag}.sock"))
}
