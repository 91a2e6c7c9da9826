//! The proxies inside the daemon (`ferry serve --data-plane inline`): no
//! second process, and no traffic while the daemon is down.

use super::engine::{BindHere, Engine};
use super::{DataPlane, DataPlaneInfo, Plan, Report, Stop};
use crate::driver::{BoxFuture, Traffic};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Inline {
    engine: Engine,
    /// Plans applied so far; a plan equal to the last one is applied again
    /// (a failed bind is retried) but keeps its generation.
    last: tokio::sync::Mutex<(u64, Option<Plan>)>,
    started_at: u64,
}

impl Inline {
    pub fn new(data_dir: PathBuf, started_at: u64) -> Inline {
        Inline {
            engine: Engine::new(data_dir),
            last: tokio::sync::Mutex::new((0, None)),
            started_at,
        }
    }
}

impl Traffic for Inline {
    fn in_flight(&self, instance: &str) -> usize {
        self.engine.in_flight(instance)
    }

    fn close(&self, instance: &str) {
        self.engine.close(instance);
    }
}

impl DataPlane for Inline {
    fn apply<'a>(&'a self, plan: Plan) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut last = self.last.lock().await;
            if last.1.as_ref() != Some(&plan) {
                last.0 += 1;
            }
            let generation = last.0;
            self.engine.apply(generation, &plan, &mut BindHere).await;
            last.1 = Some(plan);
        })
    }

    fn report(&self) -> Arc<Report> {
        Arc::new(self.engine.report())
    }

    fn info(&self) -> DataPlaneInfo {
        DataPlaneInfo {
            mode: "inline".into(),
            pid: Some(std::process::id()),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            started_at: Some(self.started_at),
            attached: true,
            restarts: 0,
            problem: None,
        }
    }

    fn serving(&self) -> std::collections::BTreeSet<String> {
        Default::default()
    }

    fn replace<'a>(&'a self, _binary: PathBuf) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async {
            Err("the proxies run inside the daemon (--data-plane inline), so they stop while it restarts; start `ferry serve` without --data-plane inline to upgrade without dropping requests".to_string())
        })
    }

    fn stop<'a>(&'a self, _how: Stop) -> BoxFuture<'a, ()> {
        // Inline proxies cannot outlive the daemon: stop them either way.
        Box::pin(async { self.engine.shutdown() })
    }
}
