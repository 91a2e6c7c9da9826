//! Release analysis: the checks a spec declares, and the pure judgement of
//! one measurement (pass, fail or inconclusive) from windowed observations.
//!
//! The shell gathers the numbers (the proxy's per-revision counters over a
//! sliding window, Prometheus query results); everything here is arithmetic.
//!
//! One concept per file:
//!
//! - `check`: the validated `Check` and the metrics it names (`Builtin`,
//!   `JudgeMetric`), with their labels.
//! - `spec`: `[services.NAME.analysis]` as written (`AnalysisSpec`,
//!   `CheckSpec`, `Threshold`), its defaults, and its validation into `Check`s.
//! - `window`: `WindowStats`, what a revision served over the window, and its
//!   rates and histogram quantiles.
//! - `stats`: the Mann-Whitney U test, the normal CDF, weighted samples.
//! - `judge`: one `Check` plus the numbers in, one `Measurement` (`Verdict`
//!   and detail) out.
//!
//! The files use one another only along these arrows (`a ← b`: `b` uses `a`),
//! which form a DAG; keep it one:
//!
//! ```text
//! check ← spec
//! check ← window
//! check, window, stats ← judge
//! ```
//!
//! `stats` and `check` use no sibling. The judge's unit tests also build
//! their checks through `spec`; `spec` never uses `judge`, so that adds no
//! cycle. The submodules are private and everything public is re-exported
//! here, so every item keeps its path `ferry_core::analysis::X`.

mod check;
mod judge;
mod spec;
mod stats;
mod window;

pub use check::{Builtin, Check, JudgeMetric};
pub use judge::{Inputs, Measurement, Verdict, judge};
pub use spec::{AnalysisSpec, CheckSpec, Threshold};
pub use stats::{UTest, mann_whitney};
pub use window::WindowStats;
