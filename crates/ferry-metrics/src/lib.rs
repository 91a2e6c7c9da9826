//! Ferry's metrics: an in-memory time-series store ([`storage`]) and a
//! PromQL evaluator over it ([`eval`]), built on `promql-parser`'s AST and
//! checked against Prometheus's own test scripts ([`promqltest`]).
//!
//! This is the first step of the embedded metrics store: float samples,
//! Prometheus 3 semantics (left-open windows, 5 m lookback, stale
//! markers). Native histograms are not supported.
#![forbid(unsafe_code)]

pub mod block;
pub mod chunk;
mod codec;
pub mod db;
pub mod eval;
pub mod exposition;
pub mod parse_error;
pub mod promqltest;
pub mod storage;
pub mod value;
pub mod wal;

pub use eval::{Engine, EvalError};
pub use storage::{Labels, Storage};
pub use value::{Sample, Series, Value};
