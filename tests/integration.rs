//! One integration-test binary: real daemons, real processes, real sockets.

mod it {
    pub mod harness;

    mod alert_rollback;
    mod alerting;
    pub mod alertmanager;
    mod api;
    mod canary;
    mod cli;
    mod crash;
    mod dataplane;
    mod delivery;
    mod deploys;
    mod example;
    mod failures;
    mod hardening;
    mod http_metrics;
    mod input;
    mod instances;
    mod metrics;
    mod metrics_collect;
    pub mod prometheus;
    mod promql_diff;
    mod proxy;
    mod release_ux;
    mod remote_write;
    mod slo;
    mod systemd;
    mod validation;
}
