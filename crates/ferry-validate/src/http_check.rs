//! `http`, `security_headers` and `auth`.
use crate::{Context, Finding};
use ferry_core::validation::{CheckSpec, SuiteSpec};

pub(crate) async fn http(_check: &CheckSpec, _suite: &SuiteSpec, _ctx: &Context) -> Finding {
    Finding::fail(None, "not implemented yet")
}
pub(crate) async fn security_headers(_check: &CheckSpec, _suite: &SuiteSpec, _ctx: &Context) -> Finding {
    Finding::fail(None, "not implemented yet")
}
pub(crate) async fn auth(_check: &CheckSpec, _suite: &SuiteSpec, _ctx: &Context) -> Finding {
    Finding::fail(None, "not implemented yet")
}
