//! Validation suites: what `[validation]` declares (`spec`), what running
//! a check found (`result`), and the reports made of the findings
//! (`report`). Pure: the checks themselves run in `ferry-validate`.
//! `spec` ← `result` ← `report`.

pub mod report;
pub mod result;
pub mod spec;

pub use result::{CheckResult, GateRun, Status, Summary};
pub use spec::{
    CheckKind, CheckSpec, GatesSpec, Severity, SkipIf, Stage, StatusExpect, SuiteSpec,
    ValidationConfig, validate_gates,
};
