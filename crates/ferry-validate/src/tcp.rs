//! `tcp`: a dependency accepts connections.
use crate::Finding;
use ferry_core::validation::CheckSpec;

pub(crate) async fn run(_check: &CheckSpec) -> Finding {
    Finding::fail(None, "not implemented yet")
}
