//! The load generator lives in `ferry-validate` (the `load` check and the
//! daemon's gates use it too); the demo, tests and benches reach it here.
pub use ferry_validate::loadgen::*;
