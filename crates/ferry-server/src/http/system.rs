//! The daemon's own routes: `/livez`, `/readyz`, `/health`, `/metrics` and
//! the audit log.

use super::error::ApiResult;
use super::openapi::TokenErrors;
use crate::daemon::Daemon;
use crate::ops;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::{AuditEntry, ErrorBody, Health};
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
    let text = d.snapshot().metrics.render();
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
