//! Ferry's binary crate as a library: the CLI lives in `main.rs`; the pieces
//! below are shared by the CLI, `ferry demo` and the integration tests.
#![forbid(unsafe_code)]

pub mod demo_app;
pub mod loadgen;
pub mod systemd;
