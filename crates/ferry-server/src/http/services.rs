//! `/v1/services/...`: list, one service, its history and revisions, and
//! the mutations (deploy, rollback, approve, abort, promote, pause, resume).

use super::error::ApiResult;
use super::openapi::{BodyErrors, TokenErrors};
use super::{accepted, actor, body, optional_body};
use crate::daemon::Daemon;
use crate::ops;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_api::{
    DeployRequest, ErrorBody, HistoryEntry, PromoteRequest, RollbackRequest, RolloutAccepted,
    ServiceStatus,
};
use ferry_core::rollout::Gate;
use std::sync::Arc;

type Mutation = ApiResult<(StatusCode, Json<RolloutAccepted>)>;

#[utoipa::path(
    get,
    operation_id = "list_services",
    path = "/v1/services",
    tag = "ferry",
    summary = "Every deployed service",
    security(("token" = [])),
    responses(
        (status = 200, description = "Services", body = [ServiceStatus]),
        TokenErrors,
    )
)]
pub async fn list(State(d): State<Arc<Daemon>>) -> Response {
    json(ops::read::services_json(&d))
}

#[utoipa::path(
    get,
    operation_id = "get_service",
    path = "/v1/services/{name}",
    tag = "ferry",
    summary = "One service",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The service", body = ServiceStatus),
        (status = 404, description = "No such service", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn get(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(ops::read::service_json(&d, &name)?))
}

/// JSON already serialized.
fn json(body: bytes::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/history",
    tag = "ferry",
    summary = "A service's rollouts, oldest first",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Rollouts", body = [HistoryEntry]),
        (status = 404, description = "No such service", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn history(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<HistoryEntry>>> {
    Ok(Json(ops::read::history(&d, &name)?))
}

#[utoipa::path(
    get,
    operation_id = "get_revision",
    path = "/v1/services/{name}/revisions/{number}",
    tag = "ferry",
    summary = "One revision, secrets redacted",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$"), ("number" = u64, Path, description = "The revision number")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The revision", body = ferry_core::revision::Revision),
        (status = 404, description = "No such revision", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn revision(
    State(d): State<Arc<Daemon>>,
    Path((name, number)): Path<(String, u64)>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(ops::read::revision(&d, &name, number)?))
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/deploys",
    tag = "ferry",
    summary = "Release a new revision",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    request_body = DeployRequest,
    security(("token" = [])),
    responses(
        (status = 201, description = "The rollout started", body = RolloutAccepted),
        (status = 200, description = "Dry run: the plan; nothing changed", body = RolloutAccepted),
        (status = 409, description = "A rollout is in progress", body = ErrorBody),
        (status = 422, description = "The spec, version, overrides or listen address are not acceptable", body = ErrorBody),
        BodyErrors,
        TokenErrors,
    )
)]
pub async fn deploy(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Mutation {
    let actor = actor(&headers);
    let req: DeployRequest = body(&d, &actor, "deploy", &name, &bytes)?;
    accepted(ops::deploy::deploy(&d, &name, req, &actor).await)
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/rollback",
    tag = "ferry",
    summary = "Roll back to the previous (or a given) revision",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    request_body (content = Option<RollbackRequest>, description = "Optional; an empty body rolls back to the previous revision"),
    security(("token" = [])),
    responses(
        (status = 201, description = "The rollback started", body = RolloutAccepted),
        (status = 202, description = "The rollout in progress is being rolled back", body = RolloutAccepted),
        (status = 404, description = "No such service or revision", body = ErrorBody),
        (status = 409, description = "Nothing to roll back to, or the target serves already", body = ErrorBody),
        BodyErrors,
        TokenErrors,
    )
)]
pub async fn rollback(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Mutation {
    let actor = actor(&headers);
    let req: RollbackRequest = optional_body(&d, &actor, "rollback", &name, &bytes)?;
    accepted(ops::rollback::rollback(&d, &name, req, &actor).await)
}

/// A gate request on the rollout in progress.
async fn gate(d: Arc<Daemon>, name: String, headers: HeaderMap, gate: Gate) -> Mutation {
    let actor = actor(&headers);
    accepted(ops::gates::request(&d, &name, gate, &actor, serde_json::Value::Null).await)
}

/// The endpoints that only queue a gate request on the rollout in progress:
/// the same parameters and answers, one line each below.
macro_rules! gate_endpoint {
    ($name:ident, $path:tt, $summary:tt, $gate:expr) => {
        #[utoipa::path(
            post,
            path = $path,
            tag = "ferry",
            summary = $summary,
            params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
            security(("token" = [])),
            responses(
                (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
                (status = 409, description = "No rollout in progress, or the request does not apply to it now", body = ErrorBody),
                (status = 400, description = "The name is invalid", body = ErrorBody),
                TokenErrors,
            )
        )]
        pub async fn $name(
            State(d): State<Arc<Daemon>>,
            Path(name): Path<String>,
            headers: HeaderMap,
        ) -> Mutation {
            gate(d, name, headers, $gate).await
        }
    };
}

gate_endpoint!(
    approve,
    "/v1/services/{name}/approve",
    "Let a blue-green rollout switch traffic",
    Gate::Approve
);
gate_endpoint!(
    abort,
    "/v1/services/{name}/abort",
    "Stop the rollout in progress",
    Gate::Abort
);
gate_endpoint!(
    pause,
    "/v1/services/{name}/pause",
    "Hold the rollout in progress",
    Gate::Pause
);
gate_endpoint!(
    resume,
    "/v1/services/{name}/resume",
    "Continue a paused rollout",
    Gate::Resume
);

#[utoipa::path(
    post,
    path = "/v1/services/{name}/promote",
    tag = "ferry",
    summary = "Move a canary past its step (or all steps)",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    request_body (content = Option<PromoteRequest>, description = "Optional"),
    security(("token" = [])),
    responses(
        (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
        (status = 409, description = "No rollout in progress, or nothing to promote", body = ErrorBody),
        BodyErrors,
        TokenErrors,
    )
)]
pub async fn promote(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Mutation {
    let actor = actor(&headers);
    let req: PromoteRequest = optional_body(&d, &actor, "promote", &name, &bytes)?;
    gate(d, name, headers, Gate::Promote { full: req.full }).await
}

/// `GET /v1/slo?service=NAME`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SloQuery {
    /// Only this service's SLOs.
    pub service: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/slo",
    tag = "ferry",
    summary = "Every SLO: the SLI now and over its window, the error budget left, burn rates",
    params(SloQuery),
    security(("token" = [])),
    responses(
        (status = 200, description = "One status per SLO of the serving revisions", body = [ferry_core::slo::SloStatus]),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 400, description = "A query parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn slo(
    State(d): State<Arc<Daemon>>,
    axum::extract::Query(q): axum::extract::Query<SloQuery>,
) -> ApiResult<Json<Vec<ferry_core::slo::SloStatus>>> {
    if let Some(name) = &q.service {
        known_service(&d, name)?;
    }
    Ok(Json(crate::slo::statuses(&d, q.service.as_deref()).await))
}

/// `GET /v1/delivery?service=NAME&since=30d`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only this service.
    pub service: Option<String>,
    /// How far back, a duration (default 30d, at most 3650d).
    pub since: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/delivery",
    tag = "ferry",
    summary = "Delivery metrics from the rollout history: DORA's four keys with their bands, and the guide's deployment metrics",
    params(DeliveryQuery),
    security(("token" = [])),
    responses(
        (status = 200, description = "Per service and in all", body = ferry_core::delivery::DeliveryReport),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 400, description = "A query parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn delivery(
    State(d): State<Arc<Daemon>>,
    axum::extract::Query(q): axum::extract::Query<DeliveryQuery>,
) -> ApiResult<Json<ferry_core::delivery::DeliveryReport>> {
    if let Some(name) = &q.service {
        known_service(&d, name)?;
    }
    let since = match q.since.as_deref() {
        None => 30 * 86_400_000,
        Some(text) => match ferry_core::duration::parse(text) {
            Ok(d) if !d.is_zero() && d.as_millis() <= 3650 * 86_400_000 => d.as_millis(),
            Ok(_) => {
                return Err(ops::OpError::BadRequest(format!(
                    "since={text}: give a duration above 0 and at most 3650d"
                ))
                .into());
            }
            Err(e) => return Err(ops::OpError::BadRequest(format!("since: {e}")).into()),
        },
    };
    let now = d.clock.now();
    let report = crate::delivery::report(&d, q.service.as_deref(), now.saturating_sub(since), now)
        .await
        .map_err(ops::OpError::from)?;
    Ok(Json(report))
}

/// A service the daemon knows (a valid name, deployed at least once).
fn known_service(d: &Daemon, name: &str) -> ApiResult<()> {
    ops::deploy::check_name(name)?;
    if !d.snapshot().services.contains_key(name) {
        return Err(ops::OpError::NotFound(format!(
            "no service `{name}`; `ferry status` lists them"
        ))
        .into());
    }
    Ok(())
}
