//! One integration-test binary: real daemons, real processes, real sockets.

mod it {
    pub mod harness;

    mod api;
    mod crash;
    mod deploys;
    mod failures;
    mod input;
}
