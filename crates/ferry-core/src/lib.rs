//! Ferry's pure domain: service specs and their validation, revisions, the
//! rollout state machine (rolling, blue-green and canary), analysis
//! judgement and events. Nothing here does I/O, reads a clock or spawns a
//! task: every decision is a function of stored state, observations and a
//! timestamp passed in, so it can be tested exhaustively without processes.
#![forbid(unsafe_code)]

pub mod alerting_config;
pub mod analysis;
pub mod canary;
pub mod config;
#[cfg(test)]
mod config_fuzz;
pub mod delivery;
pub mod duration;
pub mod event;
pub mod metrics_config;
pub mod problem;
pub mod proxy_spec;
pub mod records;
pub mod redact;
pub mod revision;
pub mod rollout;
pub mod slo;
pub mod spec;
pub mod time;
pub mod validation;
pub mod webhook;

/// Milliseconds since the Unix epoch. The shell reads the clock; the core only
/// compares these.
pub type Millis = u64;
