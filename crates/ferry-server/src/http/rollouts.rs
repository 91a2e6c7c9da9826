//! `/v1/rollouts/...`: one rollout, its events and its measurements.

use super::error::ApiResult;
use super::openapi::TokenErrors;
use crate::daemon::Daemon;
use crate::ops;
use axum::Json;
use axum::extract::{Path, Query, State};
use ferry_api::{ErrorBody, RolloutView, StoredEvent, StoredMeasurement};
use serde::Deserialize;
use std::sync::Arc;

#[utoipa::path(
    get,
    operation_id = "get_rollout",
    path = "/v1/rollouts/{id}",
    tag = "ferry",
    summary = "One rollout",
    params(("id" = u64, Path, description = "The rollout")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The rollout", body = RolloutView),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn get(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<RolloutView>> {
    Ok(Json(ops::read::rollout(&d, id)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct After {
    /// Only events with a sequence number above this one.
    #[serde(default)]
    after: u64,
}

#[utoipa::path(
    get,
    operation_id = "rollout_events",
    path = "/v1/rollouts/{id}/events",
    tag = "ferry",
    summary = "A rollout's events",
    params(("id" = u64, Path, description = "The rollout"), After),
    security(("token" = [])),
    responses(
        (status = 200, description = "Events, oldest first", body = [StoredEvent]),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn events(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
    Query(q): Query<After>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    Ok(Json(ops::read::events(&d, id, q.after)?))
}

#[utoipa::path(
    get,
    operation_id = "rollout_measurements",
    path = "/v1/rollouts/{id}/measurements",
    tag = "ferry",
    summary = "A rollout's analysis measurements",
    params(("id" = u64, Path, description = "The rollout")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Measurements, oldest first", body = [StoredMeasurement]),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
pub async fn measurements(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Vec<StoredMeasurement>>> {
    Ok(Json(ops::read::measurements(&d, id)?))
}
