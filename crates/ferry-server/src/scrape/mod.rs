//! Metrics collection: every target scraped into the daemon's time-series
//! store (`Daemon::tsdb`) on a task of its own, at its own interval, so a
//! slow or failing target never holds up another.
//!
//! Targets: the daemon itself (its `/metrics` rendered in-process), each
//! instance (its spec's `metrics` path, or an `up` from its readiness), the
//! `[metrics] scrape` list of `ferry serve --config`, the host
//! (node_exporter's names) and the instances' CPU and memory (cAdvisor's).
//!
//! Files: `targets.rs` (pure: labels, synthetic series, limits),
//! `host.rs` and `cadvisor.rs` (pure `/proc` parsers plus their reads);
//! this file is the shell (tasks, HTTP, the daemon's state) and uses all
//! three, which use nothing here but [`labels_of`].

pub mod cadvisor;
pub mod host;
pub mod targets;

use crate::daemon::Daemon;
use ferry_core::metrics_config::ScrapeTargetSpec;
use ferry_metrics::exposition::{Format, Metadata, Scraped, SeriesCache};
use ferry_metrics::storage::Labels;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use targets::Fetched;
use targets::{ScrapeError, Synthetic};

/// What the scrape manager needs from `ferry serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--scrape-interval`: the daemon, instances, host, and extra targets
    /// without their own `interval`.
    pub interval: Duration,
    /// The API address: the daemon's own `instance` label.
    pub api_addr: SocketAddr,
    /// `[metrics] scrape`.
    pub extra: Vec<ScrapeTargetSpec>,
}

/// How long the in-process targets (the daemon, host, cAdvisor) may take,
/// whatever the interval: their only waits are the data plane's report (at
/// most 1 s) and a hung filesystem's `statvfs` (skipped by the next scrape),
/// and a short `--scrape-interval` must not make them flap.
const IN_PROCESS_TIMEOUT: Duration = targets::MAX_DEFAULT_TIMEOUT;

/// A sample's labels: `__name__` plus `pairs`.
pub(crate) fn labels_of(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("__name__".into(), name.into());
    l
}

/// Where a target's samples come from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// The daemon's own `/metrics`, rendered without HTTP.
    Daemon,
    Http {
        url: String,
    },
    /// `/proc` and `statvfs`, as node_exporter reads them.
    Node,
    /// Every instance's process group, as cAdvisor reports containers.
    Cadvisor,
    /// No metrics of its own: up while the instance is ready.
    Readiness {
        service: String,
        instance: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Target {
    /// The key its series are stored under (`MetricsDb::ingest_target`).
    key: String,
    labels: Labels,
    honor_labels: bool,
    synthetic: Synthetic,
    interval: Duration,
    timeout: Duration,
    source: Source,
    /// What logs call it: never a password or query string.
    name: String,
    /// Instances are down while they start: say so only once one has been
    /// up.
    quiet_until_up: bool,
}

/// A spawned task, aborted when dropped (and with it the manager's).
struct Owned(tokio::task::JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Owned {
    /// Stop the task and wait until it can no longer store anything.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

/// Scrape every target until aborted: the fixed ones from the start,
/// instances as they come and go (checked every `config.interval`). An
/// instance that is gone has its series ended once.
pub async fn run(d: Arc<Daemon>, config: Config) {
    // The CLI refuses less than 100ms; a zero from a library caller would
    // make tokio panic.
    let interval = config.interval.max(Duration::from_millis(100));
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("metrics collection cannot start an HTTP client: {e}");
            reqwest::Client::new()
        }
    };
    let host = hostname();
    let mut fixed = vec![
        self_target(&config, interval),
        node_target(&host, interval),
        cadvisor_target(&host, interval),
    ];
    fixed.extend(config.extra.iter().map(|s| extra_target(s, interval)));
    let _fixed: Vec<Owned> = fixed
        .into_iter()
        .map(|t| spawn(d.clone(), client.clone(), t))
        .collect();

    let mut running: BTreeMap<String, (Target, Owned)> = BTreeMap::new();
    let mut revisions = RevisionInfo::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = instance_targets(&d, &mut revisions, interval).await;
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((_, task)) = running.remove(&key) {
                task.stop().await;
                d.tsdb
                    .ingest_target(&key, Vec::new(), BTreeMap::new(), d.clock.now() as i64);
            }
        }
        for (key, target) in wanted {
            if running.get(&key).is_some_and(|(t, _)| *t == target) {
                continue;
            }
            // New, or changed (a restart on another port): the same key,
            // so its series go on.
            if let Some((_, old)) = running.remove(&key) {
                old.stop().await;
            }
            let task = spawn(d.clone(), client.clone(), target.clone());
            running.insert(key, (target, task));
        }
    }
}

fn spawn(d: Arc<Daemon>, client: reqwest::Client, target: Target) -> Owned {
    Owned(tokio::spawn(scrape_loop(d, client, target)))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn self_target(config: &Config, interval: Duration) -> Target {
    Target {
        key: "ferry".into(),
        labels: labels_pairs(&[("job", "ferry"), ("instance", &config.api_addr.to_string())]),
        // Its proxy series carry their own `instance` (the Ferry instance).
        honor_labels: true,
        synthetic: Synthetic::Full,
        interval,
        timeout: IN_PROCESS_TIMEOUT,
        source: Source::Daemon,
        name: "ferry (the daemon itself)".into(),
        quiet_until_up: false,
    }
}

fn node_target(host: &str, interval: Duration) -> Target {
    Target {
        key: "node".into(),
        labels: labels_pairs(&[("job", "node"), ("instance", host)]),
        honor_labels: false,
        synthetic: Synthetic::Full,
        interval,
        timeout: IN_PROCESS_TIMEOUT,
        source: Source::Node,
        name: "node (host metrics)".into(),
        quiet_until_up: false,
    }
}

fn cadvisor_target(host: &str, interval: Duration) -> Target {
    Target {
        key: "cadvisor".into(),
        labels: labels_pairs(&[("job", "cadvisor"), ("instance", host)]),
        // Each sample's `instance` is the Ferry instance it measures.
        honor_labels: true,
        synthetic: Synthetic::Full,
        interval,
        timeout: IN_PROCESS_TIMEOUT,
        source: Source::Cadvisor,
        name: "cadvisor (instance CPU and memory)".into(),
        quiet_until_up: false,
    }
}

fn extra_target(spec: &ScrapeTargetSpec, default_interval: Duration) -> Target {
    let interval = spec
        .interval
        .map_or(default_interval, |d| Duration::from_millis(d.as_millis()))
        .max(Duration::from_millis(100));
    let timeout = spec.timeout.map(|d| Duration::from_millis(d.as_millis()));
    let mut labels = labels_pairs(&[
        ("job", &spec.job),
        ("instance", &targets::instance_of(&spec.url)),
    ]);
    labels.extend(spec.labels.clone());
    Target {
        // Keys may be kept on disk: no password or query string in them.
        key: format!("scrape/{}/{}", spec.job, targets::loggable_url(&spec.url)),
        labels,
        honor_labels: false,
        synthetic: Synthetic::Full,
        interval,
        timeout: targets::timeout_for(interval, timeout),
        source: Source::Http {
            url: spec.url.clone(),
        },
        name: format!("{} (job {:?})", targets::loggable_url(&spec.url), spec.job),
        quiet_until_up: false,
    }
}

fn labels_pairs(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Per revision, its `metrics` path and version (revisions are immutable).
#[derive(Default)]
struct RevisionInfo(HashMap<(String, u64), (Option<String>, String)>);

impl RevisionInfo {
    async fn get(
        &mut self,
        d: &Daemon,
        service: &str,
        rev: u64,
    ) -> Option<(Option<String>, String)> {
        let key = (service.to_string(), rev);
        if let Some(info) = self.0.get(&key) {
            return Some(info.clone());
        }
        let r = d.core.lock().await.revisions.get(service, rev)?;
        let info = (r.spec.metrics.clone(), r.version.clone());
        self.0.insert(key, info.clone());
        Some(info)
    }
}

/// A target per current instance, by key.
async fn instance_targets(
    d: &Daemon,
    revisions: &mut RevisionInfo,
    interval: Duration,
) -> BTreeMap<String, Target> {
    let snapshot = d.snapshot();
    let mut out = BTreeMap::new();
    for (service, status) in &snapshot.services {
        for i in &status.instances {
            let Some((path, version)) = revisions.get(d, service, i.revision).await else {
                continue;
            };
            let key = format!("instance/{}", i.id);
            let revision = i.revision.to_string();
            let mut labels = labels_pairs(&[
                ("job", service),
                ("instance", &i.id),
                ("service", service),
                ("revision", &revision),
            ]);
            let target = match path {
                Some(path) => {
                    labels.insert("version".into(), version);
                    let url = format!("http://127.0.0.1:{}{path}", i.port);
                    Target {
                        key: key.clone(),
                        labels,
                        honor_labels: false,
                        synthetic: Synthetic::Full,
                        interval,
                        timeout: targets::timeout_for(interval, None),
                        name: format!("instance {} ({})", i.id, targets::loggable_url(&url)),
                        source: Source::Http { url },
                        quiet_until_up: true,
                    }
                }
                None => Target {
                    key: key.clone(),
                    labels,
                    honor_labels: false,
                    synthetic: Synthetic::UpOnly,
                    interval,
                    timeout: targets::timeout_for(interval, None),
                    name: format!("instance {}", i.id),
                    source: Source::Readiness {
                        service: service.clone(),
                        instance: i.id.clone(),
                    },
                    quiet_until_up: true,
                },
            };
            out.insert(key, target);
        }
    }
    out
}

/// Scrape `t` every interval until aborted, starting at an offset within
/// the interval taken from its key, so targets spread over it.
async fn scrape_loop(d: Arc<Daemon>, client: reqwest::Client, t: Target) {
    tokio::time::sleep(offset(&t.key, t.interval)).await;
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up: Option<bool> = None;
    let mut ever_up = false;
    let mut cache = targets::series_cache(&t.labels, t.honor_labels);
    loop {
        tick.tick().await;
        let now = d.clock.now() as i64;
        let started = Instant::now();
        let result = match tokio::time::timeout(
            t.timeout,
            fetch(&d, &client, &t.source, &mut cache),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ScrapeError::Timeout(t.timeout)),
        };
        let took = started.elapsed();
        let up = result.is_ok();
        ever_up |= up;
        if was_up != Some(up) {
            match &result {
                Ok(_) if was_up.is_some() => tracing::info!("scrape target {} is up again", t.name),
                Ok(_) => tracing::debug!("scrape target {} is up", t.name),
                Err(e) if t.quiet_until_up && !ever_up => {
                    tracing::debug!("scrape target {} is not up yet: {e}", t.name)
                }
                Err(e) => tracing::warn!("scrape target {} is down: {e}", t.name),
            }
            was_up = Some(up);
        }
        let (samples, metadata) = match result {
            Ok((samples, metadata)) => (Ok(samples), metadata),
            Err(e) => (Err(e), BTreeMap::new()),
        };
        let batch = targets::scrape_batch(&t.labels, t.synthetic, &samples, now, took);
        d.tsdb.ingest_target(&t.key, batch, metadata, now);
    }
}

fn offset(key: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

/// Samples built without text (host, cAdvisor), their labels made final.
fn finished(
    (samples, metadata): (Vec<Scraped>, BTreeMap<String, Metadata>),
    cache: &SeriesCache,
) -> Fetched {
    let samples = samples
        .into_iter()
        .map(|s| (Arc::new(cache.finish(s.labels)), s.value, s.timestamp_ms))
        .collect();
    (samples, metadata)
}

async fn fetch(
    d: &Arc<Daemon>,
    client: &reqwest::Client,
    source: &Source,
    cache: &mut SeriesCache,
) -> Result<Fetched, ScrapeError> {
    match source {
        Source::Daemon => {
            let text = crate::http::system::render_metrics(d).await;
            targets::parse_limited(&text, Format::Prometheus, usize::MAX, cache)
        }
        Source::Http { url } => fetch_http(client, url, cache).await,
        Source::Node => {
            let inputs = tokio::task::spawn_blocking(host::read)
                .await
                .map_err(|e| read_error("/proc", e.to_string()))?
                .map_err(|e| read_error("/proc", e.to_string()))?;
            Ok(finished(host::node_samples(&inputs), cache))
        }
        Source::Cadvisor => {
            let snapshot = d.snapshot();
            let containers: Vec<cadvisor::Container> = snapshot
                .services
                .iter()
                .flat_map(|(service, s)| {
                    s.instances.iter().filter_map(move |i| {
                        Some(cadvisor::Container {
                            instance: i.id.clone(),
                            service: service.clone(),
                            revision: i.revision.to_string(),
                            pgid: i.pid.filter(|p| *p > 1)?,
                        })
                    })
                })
                .collect();
            drop(snapshot);
            let pgids: BTreeSet<i32> = containers.iter().map(|c| c.pgid).collect();
            let usage = tokio::task::spawn_blocking(move || {
                cadvisor::read().map(|procs| cadvisor::per_group(procs, &pgids))
            })
            .await
            .map_err(|e| read_error("/proc/<pid>/stat", e.to_string()))?
            .map_err(|e| read_error("/proc/<pid>/stat", e.to_string()))?;
            Ok(finished(
                cadvisor::instance_samples(
                    &containers,
                    &usage,
                    rustix::param::clock_ticks_per_second(),
                    rustix::param::page_size() as u64,
                ),
                cache,
            ))
        }
        Source::Readiness { service, instance } => {
            let ready = d
                .snapshot()
                .services
                .get(service)
                .is_some_and(|s| s.instances.iter().any(|i| i.id == *instance && i.ready));
            if ready {
                Ok((Vec::new(), BTreeMap::new()))
            } else {
                Err(ScrapeError::NotReady)
            }
        }
    }
}

fn read_error(what: &'static str, error: String) -> ScrapeError {
    ScrapeError::Read { what, error }
}

/// GET `url`, reading at most [`targets::MAX_BODY_BYTES`] of its body,
/// parsed by its `Content-Type`.
async fn fetch_http(
    client: &reqwest::Client,
    url: &str,
    cache: &mut SeriesCache,
) -> Result<Fetched, ScrapeError> {
    // reqwest's messages name the URL, which may hold a password.
    let request_error = |e: reqwest::Error| ScrapeError::Request(e.without_url().to_string());
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, targets::ACCEPT)
        .send()
        .await
        .map_err(request_error)?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status(resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > targets::MAX_BODY_BYTES as u64)
    {
        return Err(ScrapeError::BodyTooLarge {
            limit: targets::MAX_BODY_BYTES,
        });
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = targets::BodyBuf::new(targets::MAX_BODY_BYTES);
    while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
        body.push(&chunk)?;
    }
    body.parse(&content_type, targets::MAX_SAMPLES, cache)
}
