//! Ferry's daemon: the reconcile loop, the supervisor and probes, the proxies
//! and the HTTP API, started by `ferry serve` (and by `ferry demo`).
#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
pub mod clock;
pub mod daemon;
pub mod metrics;
pub mod probe;
pub mod proxy_config;
pub mod supervisor;
pub mod webhooks;

use clock::{Clock, SystemClock};
use daemon::Daemon;
use ferry_store::Store;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `ferry serve` says how to reach it: `<data-dir>/api.json`.
pub const API_FILE: &str = "api.json";
/// The admin token, mode 0600: `<data-dir>/token`.
pub const TOKEN_FILE: &str = "token";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    pub url: String,
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "another ferry daemon (pid {pid}) is serving data dir {path}; stop it first or use another --data-dir"
    )]
    AlreadyRunning { pid: u32, path: String },
    #[error("cannot listen for the API on {addr}: {source}; choose another --api-addr")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error("API server: {0}")]
    Io(#[from] std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// Read the token, creating it (0600) on first start.
pub fn ensure_token(data_dir: &Path) -> Result<String, ServeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        _ => {}
    }
    let token = supervisor::new_token().map_err(io_err(Path::new("/dev/urandom")))?;
    let tmp = data_dir.join(".token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(token.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(token)
}

/// Take an exclusive lock on the data dir: one daemon per data dir.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServeError> {
    let path = data_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => {
            let pid = std::fs::read_to_string(data_dir.join(API_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<ApiInfo>(&t).ok())
                .map_or(0, |i| i.pid);
            Err(ServeError::AlreadyRunning {
                pid,
                path: data_dir.display().to_string(),
            })
        }
    }
}

/// Run the daemon until `shutdown` resolves. `ready` receives the API
/// address once it is listening.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let data_dir = &config.data_dir;
    let fresh = !data_dir.exists();
    std::fs::create_dir_all(data_dir.join("logs")).map_err(io_err(data_dir))?;
    if fresh {
        // The store holds revisions' environment, secrets included.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(data_dir))?;
    }
    let data_dir = data_dir.canonicalize().map_err(io_err(data_dir))?;
    let _lock = lock_data_dir(&data_dir)?;
    let token = ensure_token(&data_dir)?;
    let store = Arc::new(Store::open(&data_dir.join("ferry.db"))?);
    let fresh_id = supervisor::new_id().map_err(io_err(Path::new("/dev/urandom")))?;
    let daemon_id = store.meta_or_init("daemon_id", || fresh_id)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.api_addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let d = Daemon::open(store, clock, token, daemon_id, data_dir.clone()).await?;
    let info = ApiInfo {
        url: format!("http://{addr}"),
        pid: std::process::id(),
    };
    let tmp = data_dir.join(".api.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&info).unwrap_or_default(),
    )
    .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, data_dir.join(API_FILE)).map_err(io_err(&data_dir))?;
    tracing::info!(
        "ferry daemon {} listening on http://{addr} (data dir {})",
        env!("CARGO_PKG_VERSION"),
        data_dir.display()
    );
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let app = api::router(d.clone());
    let api = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|v| *v).await;
            })
            .await
    });
    let mut loop_stop = stop_rx;
    let reconcile = tokio::spawn(d.clone().run(async move {
        let _ = loop_stop.wait_for(|v| *v).await;
    }));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = reconcile.await;
    let _ = api.await;
    let _ = std::fs::remove_file(data_dir.join(API_FILE));
    tracing::info!("ferry daemon stopped");
    Ok(())
}
