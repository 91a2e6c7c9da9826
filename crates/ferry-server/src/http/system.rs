//! The daemon's own routes: `/livez`, `/readyz`, `/health`, `/metrics`,
//! the audit log, upgrade and shutdown.

use super::error::ApiResult;
use super::openapi::{BodyErrors, TokenErrors};
use crate::daemon::Daemon;
use crate::ops;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::{AuditEntry, ErrorBody, Health, LifecycleAccepted, UpgradeRequest};
use serde::Deserialize;
use std::sync::Arc;

/// The API server runs.
#[utoipa::path(get, path = "/livez", tag = "ferry", summary = "The API server runs (no token)",
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
pub async fn livez() -> &'static str {
    "ok\n"
}

/// The API server answers (it checks nothing else).
#[utoipa::path(get, path = "/readyz", tag = "ferry", summary = "The API server answers (no token)",
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
pub async fn readyz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "ferry",
    summary = "The daemon's health",
    security(("token" = [])),
    responses(
        (status = 200, description = "Every check is healthy", body = Health),
        (status = 503, description = "Some check is unhealthy", body = Health),
        TokenErrors,
    )
)]
pub async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let body = ops::read::health(&d);
    // Degraded still serves; unhealthy does not.
    let status = if body.status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ferry",
    summary = "Prometheus metrics",
    security(("token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
        TokenErrors,
    )
)]
pub async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let text = render_metrics(&d).await;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// How many of the newest entries (1 to 10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "ferry",
    summary = "The audit log",
    params(Limit),
    security(("token" = [])),
    responses(
        (status = 200, description = "The newest entries, oldest first", body = [AuditEntry]),
        (status = 400, description = "The query does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn audit(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(ops::read::audit(&d, q.limit)?))
}

#[utoipa::path(
    post,
    path = "/v1/system/upgrade",
    tag = "ferry",
    summary = "Replace the data plane and the control plane with a new binary",
    request_body(content = Option<UpgradeRequest>, description = "Optional: the binary (default: the one the daemon started from, as it is on disk now)"),
    security(("token" = [])),
    responses(
        (status = 202, description = "The new data plane serves; the control plane re-executes", body = LifecycleAccepted),
        (status = 409, description = "The proxies run inline, or a pre_deploy hook is running", body = ErrorBody),
        (status = 500, description = "The binary does not run, or its data plane did not serve; the old processes still do", body = ErrorBody),
        BodyErrors,
        TokenErrors,
    )
)]
pub async fn upgrade(
    State(d): State<Arc<Daemon>>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<LifecycleAccepted>)> {
    let actor = super::actor(&headers);
    let req: UpgradeRequest = super::optional_body(&d, &actor, "upgrade", "daemon", &bytes)?;
    let accepted = ops::lifecycle::upgrade(&d, req, &actor).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(
    post,
    path = "/v1/system/shutdown",
    tag = "ferry",
    summary = "Stop the proxies, drain and stop every instance, exit",
    security(("token" = [])),
    responses(
        (status = 202, description = "Shutting down", body = LifecycleAccepted),
        TokenErrors,
    )
)]
pub async fn shutdown(
    State(d): State<Arc<Daemon>>,
    headers: axum::http::HeaderMap,
) -> ApiResult<(StatusCode, Json<LifecycleAccepted>)> {
    let actor = super::actor(&headers);
    let accepted = ops::lifecycle::shutdown(&d, &actor)?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The daemon's metrics in the text format. The proxies' counters are as
/// of now, not as of the last publish: a scrape right after a request
/// counts it.
pub async fn render_metrics(d: &Daemon) -> String {
    let dataplane = d.core.lock().await.dataplane.clone();
    let report = dataplane.fresh_report().await;
    let alerting = d
        .alerting
        .get()
        .map(|a| a.render_metrics(d.clock.now() as i64))
        .unwrap_or_default();
    d.snapshot().metrics.with_proxies(&report).render()
        + &crate::remote_write::render(&d.remote_write)
        + &alerting
        + &crate::slo::render(&d.slo_cache.load())
        + d.delivery_cache.load().as_str()
}
