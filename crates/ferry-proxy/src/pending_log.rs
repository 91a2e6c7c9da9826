//! An access-log entry travelling with its request until the response is
//! done, on either path; sent to the log writer (if the connection's config
//! has one) with the duration measured then.

use std::sync::Arc;
use std::time::Instant;

use crate::access_log::Entry;
use crate::config::Config;
use crate::upstream::Upstream;

/// An access-log entry waiting for its response to finish.
pub(crate) struct PendingLog {
    pub(crate) entry: Box<Entry>,
    pub(crate) start: Instant,
    pub(crate) config: Arc<Config>,
}

impl PendingLog {
    /// Record which instance (and revision) the request went to.
    pub(crate) fn served_by(&mut self, upstream: &Upstream) {
        self.entry.revision = Some(upstream.revision());
        self.entry.instance = Some(Arc::clone(upstream.instance()));
    }

    pub(crate) fn send(mut self) {
        self.entry.duration = self.start.elapsed();
        if let Some(log) = &self.config.log {
            log.log(self.entry);
        }
    }
}
