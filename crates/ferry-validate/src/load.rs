//! `load`: Ferry's load generator against a service's own proxy.
use crate::{Context, Finding};
use ferry_core::validation::{CheckSpec, SuiteSpec};

pub(crate) async fn run(_check: &CheckSpec, _suite: &SuiteSpec, _ctx: &Context) -> Finding {
    Finding::fail(None, "not implemented yet")
}
