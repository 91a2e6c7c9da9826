//! Ferry's daemon: the reconcile loop that drives rolling, blue-green and
//! canary rollouts, the instance driver and probes, analysis, the proxies
//! and the HTTP API, started by `ferry serve` (and by `ferry demo`).
#![forbid(unsafe_code)]

pub mod alerting;
pub mod analysis;
pub mod clock;
pub mod daemon;
pub mod dataplane;
pub mod delivery;
pub mod denials;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod proxy_config;
pub mod registry;
pub mod remote_write;
pub mod scrape;
pub mod slo;
pub mod snapshot;
#[cfg(test)]
mod store_faults;
pub mod tsdb;
pub mod webhooks;

use clock::{Clock, SystemClock};
use daemon::Daemon;
use ferry_store::{SecretKey, SqliteStore, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use ferry_api::{API_FILE, ApiInfo, TOKEN_FILE};

/// The key that seals secret values in the store, mode 0600, created on
/// first start unless [`KEY_ENV`] gives one.
pub const KEY_FILE: &str = "secret.key";
/// A key given in the environment instead of [`KEY_FILE`] (64 hex chars).
pub const KEY_ENV: &str = "FERRY_SECRET_KEY";
/// The next key during `ferry rotate-key`, until the store is sealed with it.
const NEXT_KEY_FILE: &str = "secret.key.next";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub api_limits: http::server::ApiLimits,
    pub data_plane: DataPlaneMode,
    /// How often the daemon scrapes its targets (itself, its instances,
    /// the host) into its time-series store (`/api/v1/query`).
    pub scrape_interval: std::time::Duration,
    /// `[metrics]` of the config given to `ferry serve --config`: extra
    /// scrape targets and remote-write destinations.
    pub metrics: ferry_core::metrics_config::MetricsConfig,
    /// Retention of the metrics store and limits of its queries.
    pub tsdb: tsdb::TsdbOptions,
    /// `[alerting]` of the config given to `ferry serve --config`, and
    /// that file (re-read by `ferry alerts reload`).
    pub alerting: alerting::Source,
}

/// Where the proxies run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlaneMode {
    /// In a process of their own, started from `binary` (`ferry
    /// dataplane`), which outlives control-plane restarts and upgrades.
    Process { binary: PathBuf },
    /// Inside the daemon: they stop while it does.
    Inline,
}

/// How [`serve`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The control plane stopped; the data plane and the instances keep
    /// serving for the next one (SIGTERM).
    Detached,
    /// Everything stopped (`ferry shutdown`, Ctrl-C).
    Shutdown,
    /// `ferry upgrade`: the data plane now runs `binary`; the caller
    /// re-executes the control plane from it.
    Upgrade(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Metrics(#[from] ferry_metrics::db::DbError),
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
    #[error("secret key: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error("API server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Alerting(#[from] alerting::AlertingError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// The read-only token's file in the data dir: it can query metrics
/// (`/api/v1/*`, Grafana) and read state, and change nothing.
pub const READ_TOKEN_FILE: &str = "token.read";

/// The API's bearer tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Can do everything.
    pub admin: String,
    /// Can query and read, not change anything.
    pub read: String,
}

/// Every 5 s, on a blocking thread: the metrics store cuts finished
/// periods into blocks, applies its retention and merges blocks.
async fn maintain_metrics(d: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = d.clone();
        let now = d.clock.now() as i64;
        let _ = tokio::task::spawn_blocking(move || d.tsdb.maintain(now)).await;
    }
}

/// Read the admin token, creating it (0600) on first start.
pub fn ensure_token(data_dir: &Path) -> Result<String, ServeError> {
    ensure_token_file(data_dir, TOKEN_FILE)
}

/// Read the token in `file`, creating it (0600) on first start.
pub fn ensure_token_file(data_dir: &Path, file: &str) -> Result<String, ServeError> {
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        _ => {}
    }
    let token = new_token().map_err(io_err(Path::new("/dev/urandom")))?;
    write_private(&path, &token)?;
    Ok(token)
}

/// Make the data dir private before anything is written to it: it holds
/// the token, the state store (secrets, encrypted, and their key) and
/// instance logs. Directories are 0700 and files 0600, whatever the umask;
/// a data dir (or anything in it) that is open to other users is made
/// private, and each change is returned as a note for the log. A data dir
/// that cannot be made private is refused.
pub fn secure_data_dir(data_dir: &Path) -> Result<Vec<String>, ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut notes = Vec::new();
    for dir in [data_dir.to_path_buf(), data_dir.join("logs")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
    }
    let mut fix = |path: &Path, private: u32| -> Result<(), ServeError> {
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).map_err(|e| {
            ServeError::DataDir {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    e.kind(),
                    format!(
                        "it is open to other users (mode {mode:04o}) and cannot be made private ({e}); run `chmod -R go-rwx {}` or use another --data-dir",
                        data_dir.display()
                    ),
                ),
            }
        })?;
        notes.push(format!(
            "{} was mode {mode:04o}, open to other users; made it {private:04o}",
            path.display()
        ));
        Ok(())
    };
    fix(data_dir, 0o700)?;
    let store = data_dir.join("metrics");
    let dirs = [
        data_dir.to_path_buf(),
        data_dir.join("logs"),
        store.join("wal"),
        store.join("blocks"),
    ];
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            fix(&path, if is_dir { 0o700 } else { 0o600 })?;
        }
    }
    Ok(notes)
}

/// Create `path` empty with mode 0600 if it does not exist (SQLite gives
/// its `-wal` and `-shm` files the mode of the database file).
fn create_private(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(io_err(path))
}

/// Write `text` to `path` atomically (a 0600 temp file renamed over it).
fn write_private(path: &Path, text: &str) -> Result<(), ServeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Where the store's key comes from.
enum KeySource {
    Env,
    File,
}

/// The key from [`KEY_ENV`], else from [`KEY_FILE`], created on first
/// start: only while the store has never had a key (new, or written by a
/// Ferry from before secrets were sealed), so a lost key file is reported
/// as lost instead of replaced by a key that opens nothing.
fn load_key(data_dir: &Path) -> Result<(SecretKey, KeySource), ServeError> {
    if let Ok(hex) = std::env::var(KEY_ENV) {
        let key = SecretKey::from_hex(&hex)
            .map_err(|e| ServeError::Key(format!("{KEY_ENV} is not a key: {e}")))?;
        return Ok((key, KeySource::Env));
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretKey::from_hex(&text)
            .map(|k| (k, KeySource::File))
            .map_err(|e| ServeError::Key(format!("{} is not a key: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if SqliteStore::has_key(&data_dir.join("ferry.db"))? {
                return Err(ServeError::Key(format!(
                    "{} is missing, and the store's secrets were sealed with it; restore it from your backup (or start with {KEY_ENV} set to the key)",
                    path.display()
                )));
            }
            let key = SecretKey::generate().map_err(|e| ServeError::Key(e.to_string()))?;
            write_private(&path, &key.to_hex())?;
            Ok((key, KeySource::File))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Open the store with its key. A `ferry rotate-key` that was interrupted
/// left the next key beside the current one: whichever opens the store is
/// the key, and the rotation is finished or undone accordingly.
fn open_store(data_dir: &Path) -> Result<SqliteStore, ServeError> {
    let db = data_dir.join("ferry.db");
    let (key, source) = load_key(data_dir)?;
    create_private(&db)?;
    let next = data_dir.join(NEXT_KEY_FILE);
    let next_key = match source {
        KeySource::File => std::fs::read_to_string(&next)
            .ok()
            .and_then(|t| SecretKey::from_hex(&t).ok()),
        KeySource::Env => None,
    };
    match SqliteStore::open(&db, key) {
        Ok(store) => {
            if next_key.is_some() {
                tracing::warn!(
                    "an interrupted key rotation had not sealed the store yet; the current key stays"
                );
                let _ = std::fs::remove_file(&next);
            }
            Ok(store)
        }
        Err(ferry_store::StoreError::WrongKey) if next_key.is_some() => {
            let store = SqliteStore::open(&db, next_key.expect("checked"))?;
            std::fs::rename(&next, data_dir.join(KEY_FILE)).map_err(io_err(&next))?;
            tracing::warn!("finished an interrupted key rotation: {KEY_FILE} is the new key");
            Ok(store)
        }
        Err(ferry_store::StoreError::WrongKey) => Err(ServeError::Key(format!(
            "the store's secrets were sealed with another key than {}; restore the key they were sealed with",
            match source {
                KeySource::Env => format!("the one in {KEY_ENV}"),
                KeySource::File => data_dir.join(KEY_FILE).display().to_string(),
            }
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `ferry rotate-key`: seal every secret in the store under a new key
/// (from `FERRY_NEW_SECRET_KEY`, or generated), with the daemon stopped.
/// With a key file, the new key replaces it; with [`KEY_ENV`], the new key
/// must be given and the caller sets it there before the next start. Returns
/// a message for the user; it never shows a key.
pub fn rotate_key(data_dir: &Path) -> Result<String, ServeError> {
    if !data_dir.join("ferry.db").exists() {
        return Err(ServeError::Key(format!(
            "{} holds no state store; nothing to rotate",
            data_dir.display()
        )));
    }
    let _lock = lock_data_dir(data_dir)?;
    let (_, source) = load_key(data_dir)?;
    let mut store = open_store(data_dir)?;
    let new = match std::env::var("FERRY_NEW_SECRET_KEY") {
        Ok(hex) => SecretKey::from_hex(&hex)
            .map_err(|e| ServeError::Key(format!("FERRY_NEW_SECRET_KEY is not a key: {e}")))?,
        Err(_) if matches!(source, KeySource::Env) => {
            return Err(ServeError::Key(format!(
                "the key comes from {KEY_ENV}; give the new one in FERRY_NEW_SECRET_KEY (e.g. `openssl rand -hex 32`), then start `ferry serve` with {KEY_ENV} set to it"
            )));
        }
        Err(_) => SecretKey::generate().map_err(|e| ServeError::Key(e.to_string()))?,
    };
    match source {
        KeySource::File => {
            // The next key is durable before any secret is sealed with it.
            write_private(&data_dir.join(NEXT_KEY_FILE), &new.to_hex())?;
            let n = store.rekey(new)?;
            let next = data_dir.join(NEXT_KEY_FILE);
            std::fs::rename(&next, data_dir.join(KEY_FILE)).map_err(io_err(&next))?;
            Ok(format!(
                "sealed the secrets of {n} revisions with a new key, now in {}",
                data_dir.join(KEY_FILE).display()
            ))
        }
        KeySource::Env => {
            let n = store.rekey(new)?;
            Ok(format!(
                "sealed the secrets of {n} revisions with FERRY_NEW_SECRET_KEY; start the next `ferry serve` with {KEY_ENV} set to it (the old key no longer opens them)"
            ))
        }
    }
}

/// Hex of `bytes` random bytes from the kernel. An unreadable
/// `/dev/urandom` is an error, never a predictable value.
pub(crate) fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new admin token: 192 random bits.
pub fn new_token() -> std::io::Result<String> {
    random_hex(24)
}

/// A new daemon id, the prefix of its processes' markers.
pub fn new_id() -> std::io::Result<String> {
    random_hex(8)
}

/// Take an exclusive lock on the data dir: one daemon per data dir.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServeError> {
    let path = data_dir.join("daemon.lock");
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true),
        0o600,
    )
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

/// Run the daemon until `shutdown` resolves (with how to end: `Detached`
/// or `Shutdown`) or an API request ends it (`ferry shutdown`, `ferry
/// upgrade`). `ready` receives the API address once it is listening.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = Exit> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<Exit, ServeError> {
    if let Some(n) = http::server::raise_fd_limit() {
        tracing::debug!("open file limit: {n}");
    }
    let data_dir = &config.data_dir;
    for note in secure_data_dir(data_dir)? {
        tracing::warn!("{note}");
    }
    let data_dir = data_dir.canonicalize().map_err(io_err(data_dir))?;
    let _lock = lock_data_dir(&data_dir)?;
    let token = ensure_token(&data_dir)?;
    let read_token = ensure_token_file(&data_dir, READ_TOKEN_FILE)?;
    let store: Arc<dyn Store> = Arc::new(open_store(&data_dir)?);
    let fresh_id = new_id().map_err(io_err(Path::new("/dev/urandom")))?;
    let daemon_id = store.meta_or_init("daemon_id", &mut || fresh_id.clone())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.api_addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let (dataplane, binary): (Arc<dyn dataplane::DataPlane>, Option<PathBuf>) =
        match &config.data_plane {
            DataPlaneMode::Process { binary } => (
                Arc::new(
                    dataplane::remote::Remote::start(
                        data_dir.clone(),
                        daemon_id.clone(),
                        binary.clone(),
                    )
                    .await,
                ),
                Some(binary.clone()),
            ),
            DataPlaneMode::Inline => (
                Arc::new(dataplane::inline::Inline::new(
                    data_dir.clone(),
                    clock.now(),
                )),
                None,
            ),
        };
    let tsdb = tsdb::MetricsDb::open(&data_dir.join("metrics"), &config.tsdb)?;
    let d = Daemon::open(
        store,
        clock,
        Tokens {
            admin: token,
            read: read_token,
        },
        daemon_id,
        data_dir.clone(),
        dataplane,
        tsdb,
    )
    .await?;
    let reloadable = binary.is_some();
    d.set_binary(binary);
    {
        // SIGHUP upgrades in place, as `ferry upgrade` does (the new
        // control plane reads the config again); with the proxies inside
        // the daemon, which cannot be upgraded in place, it reloads
        // `[alerting]`, as `ferry alerts reload` does.
        let d = d.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                if !reloadable {
                    match d.alerting.get().map(|a| a.reload(&d)) {
                        Some(Ok(message)) => tracing::info!("SIGHUP: {message}"),
                        Some(Err(errors)) => tracing::error!(
                            "SIGHUP: the alerting config has errors; the running one stays:\n{}",
                            errors.join("\n")
                        ),
                        None => {}
                    }
                    continue;
                }
                let actor = ops::Actor::admin("SIGHUP");
                match ops::lifecycle::upgrade(&d, Default::default(), &actor).await {
                    Ok(a) => tracing::info!("SIGHUP: {}", a.message),
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                }
            }
        });
    }
    let _ = d
        .api_url
        .set(format!("http://{}", ferry_validate::connectable(addr)));
    let info = ApiInfo {
        url: format!("http://{addr}"),
        pid: std::process::id(),
    };
    write_private(
        &data_dir.join(API_FILE),
        &serde_json::to_string_pretty(&info).unwrap_or_default(),
    )?;
    tracing::info!(
        "ferry daemon {} listening on http://{addr} (data dir {})",
        env!("CARGO_PKG_VERSION"),
        data_dir.display()
    );
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(d.clone(), config.api_limits);
    let api = tokio::spawn(http::server::run(
        listener,
        app,
        config.api_limits,
        stop_rx.clone(),
    ));
    // Subscribed before the first scrape, so that every stored sample goes.
    let senders = remote_write::spawn(&d.tsdb, &config.metrics.remote_write, &d.remote_write);
    let collector = tokio::spawn(scrape::run(
        d.clone(),
        scrape::Config {
            interval: config.scrape_interval,
            api_addr: addr,
            extra: config.metrics.scrape.clone(),
        },
    ));
    let maintenance = tokio::spawn(maintain_metrics(d.clone()));
    // The SLOs' statuses for `/metrics`, every 10 s; the delivery metrics
    // when a rollout started or ended (they read the whole history from
    // the store), and every 10 minutes as their 30-day window slides.
    let slo_cache = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut history_seen = None;
            loop {
                let statuses = slo::statuses(&d, None).await;
                d.slo_cache.store(Arc::new(statuses));
                let now = d.clock.now();
                let history = (delivery::history_key(&d).await, now / 600_000);
                if history_seen.as_ref() != Some(&history) {
                    let since = now.saturating_sub(30 * 86_400_000);
                    match delivery::report(&d, None, since, now).await {
                        Ok(r) => {
                            d.delivery_cache
                                .store(Arc::new(ferry_core::delivery::render_prometheus(&r)));
                            history_seen = Some(history);
                        }
                        Err(e) => tracing::warn!("delivery metrics: {e}"),
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        })
    };
    let alerting = Arc::new(alerting::Alerting::open(
        &data_dir,
        config.alerting.clone(),
        &format!("http://{addr}"),
        d.clock.now() as i64,
    )?);
    let _ = d.alerting.set(alerting.clone());
    let alert_tasks = alerting.start(&d);
    let (how_tx, how_rx) = tokio::sync::oneshot::channel();
    let reconcile = tokio::spawn(
        d.clone()
            .run(async move { how_rx.await.unwrap_or(dataplane::Stop::Detach) }),
    );
    let exit = tokio::select! {
        exit = shutdown => exit,
        exit = d.exit_requested() => exit,
    };
    let how = match exit {
        Exit::Shutdown => dataplane::Stop::Shutdown,
        Exit::Detached | Exit::Upgrade(_) => dataplane::Stop::Detach,
    };
    let _ = stop_tx.send(true);
    let _ = how_tx.send(how);
    let _ = reconcile.await;
    collector.abort();
    maintenance.abort();
    slo_cache.abort();
    for t in alert_tasks {
        t.abort();
    }
    alerting.stop();
    for sender in senders {
        sender.abort();
    }
    d.tsdb.sync();
    let _ = api.await;
    let _ = std::fs::remove_file(data_dir.join(API_FILE));
    match &exit {
        Exit::Shutdown => tracing::info!("ferry daemon stopped, with its data plane and instances"),
        Exit::Detached => tracing::info!("ferry control plane stopped"),
        Exit::Upgrade(binary) => {
            tracing::info!("ferry control plane re-executing {}", binary.display())
        }
    }
    Ok(exit)
}
