//! Ferry's alerting, as pure logic: no sockets, no clocks, no files beyond
//! reading the ones it is given. The daemon (`ferry-server::alerting`)
//! drives it with the time, the metrics store and the receivers.
//!
//! - [`rulefmt`]: Prometheus rule files, loaded and checked as `promtool
//!   check rules` does, with `file:line` errors.
//! - [`template`]: Go `text/template` as Prometheus and Alertmanager use it.
//! - [`rules`]: rule groups evaluated: recording rules, and the alert state
//!   machine (pending → firing → resolved, `for`, `keep_firing_for`).
//! - [`alert`], [`matcher`], [`config`]: alerts, label matchers and
//!   Alertmanager's configuration (`route`, `receivers`, `inhibit_rules`,
//!   `time_intervals`), from its own YAML or from ferry.toml.
//! - [`route`], [`inhibit`], [`silence`], [`timeinterval`], [`dispatch`]:
//!   what Alertmanager does with an alert: route it, inhibit or silence it,
//!   group it and decide when each receiver is notified.
//! - [`notify`]: what a receiver is given (Alertmanager's template data).
#![forbid(unsafe_code)]

pub mod alert;
pub mod config;
pub mod dispatch;
pub mod duration;
pub mod inhibit;
pub mod matcher;
pub mod notify;
pub mod route;
pub mod rulefmt;
pub mod rules;
pub mod silence;
pub mod template;
pub mod timeinterval;
