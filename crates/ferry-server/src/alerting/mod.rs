//! Alerting in the daemon.

pub mod board;
pub mod push;
pub mod store;
