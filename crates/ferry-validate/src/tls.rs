//! `tls`: a certificate chain valid for the name, not expiring soon.
use crate::{Context, Finding};
use ferry_core::validation::CheckSpec;

pub(crate) async fn run(_check: &CheckSpec, _ctx: &Context) -> Finding {
    Finding::fail(None, "not implemented yet")
}
