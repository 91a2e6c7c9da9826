//! The JSON HTTP API (documented in `docs/api.md`). Every route but
//! `/livez` and `/readyz` needs `Authorization: Bearer <token>`; every
//! mutation, accepted or not, is written to the audit log.

use crate::clock::rfc3339;
use crate::daemon::Daemon;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::{
    ACTOR_HEADER, AUDIT_LIMIT_MAX, AuditEntry, DeployRequest, ErrorBody, ErrorDetail, Health,
    HistoryEntry, PromoteRequest, RollbackRequest, RolloutAccepted, RolloutView, ServiceStatus,
    StoredEvent,
};
use ferry_core::redact;
use ferry_core::revision::{Revision, check_version};
use ferry_core::rollout::{self, Gate, Params, Phase, Rollout, RolloutKind, ServiceState};
use ferry_core::spec::{Problem, Strategy, valid_env_name, valid_service_name};
use ferry_store::Change;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<Problem>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> ApiError {
        ApiError {
            problems,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                problems: self.problems,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(daemon: Arc<Daemon>, limits: crate::api_server::ApiLimits) -> Router {
    let authed = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{name}", get(get_service))
        .route("/v1/services/{name}/history", get(history))
        .route("/v1/services/{name}/revisions/{number}", get(get_revision))
        .route("/v1/services/{name}/deploys", post(deploy))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/approve", post(approve))
        .route("/v1/services/{name}/abort", post(abort))
        .route("/v1/services/{name}/promote", post(promote))
        .route("/v1/services/{name}/pause", post(pause))
        .route("/v1/services/{name}/resume", post(resume))
        .route("/v1/rollouts/{id}/measurements", get(rollout_measurements))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/events", get(rollout_events))
        .route("/v1/audit", get(audit))
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            require_token,
        ));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such route; see docs/api.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see docs/api.md",
            )
        })
        .with_state(daemon)
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
}

/// A request (its body read and its handling) that takes longer than the
/// limit gets 408: a client trickling a body holds nothing for long.
async fn request_timeout(
    State(limit): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request was not received and answered within {}s",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Errors raised by the HTTP framework before a handler runs (a body over
/// the size limit, a path parameter or query that does not parse) come as
/// plain text; give them the API's one error shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the API takes ({message}); a deploy request is a few KiB"
        ),
        _ if message.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => message,
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// `text`, cut to at most `max` bytes on a character boundary, marked with
/// `…` when cut: audit fields come from requests and must stay small.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Longest service name, path or action kept in an audit entry.
const AUDIT_FIELD_MAX: usize = 128;

/// The API server runs.
#[utoipa::path(get, path = "/livez", tag = "ferry", summary = "The API server runs (no token)",
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
async fn livez() -> &'static str {
    "ok\n"
}

/// The API server answers (it checks nothing else).
#[utoipa::path(get, path = "/readyz", tag = "ferry", summary = "The API server answers (no token)",
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
async fn readyz() -> &'static str {
    "ok\n"
}

/// What every route behind the token may answer besides its own answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description, never built
enum TokenErrors {
    /// Missing or wrong bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Too many requests without a valid token from this address
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// The request was not received and answered in time
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The state store failed
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// What every route that reads a JSON body may answer about it.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description, never built
enum BodyErrors {
    /// The body is not valid JSON for this request, or the name is invalid
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The body is larger than the API takes
    #[response(status = 413)]
    TooLarge(ErrorBody),
}

/// The OpenAPI description of this API (`docs/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ferry API",
        description = "Ferry's daemon API: deploy, roll back, gate and watch releases. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        livez, readyz, health, metrics, list_services, get_service, history, get_revision,
        deploy, rollback, approve, abort, promote, pause, resume, get_rollout, rollout_events,
        rollout_measurements, audit
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(d): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|t| same(t.as_bytes(), d.token.as_bytes())) {
        return next.run(req).await;
    }
    // Turned away before anything is parsed or stored; audited only within
    // the client's budget, and then as a bounded summary.
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let now = d.clock.now();
    match d.denials.deny(client, now) {
        crate::denials::Verdict::Throttle { retry_after_s } => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many requests without a valid token from this address; the rest are not recorded one by one",
            )
            .into_response();
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after_s),
            );
            return resp;
        }
        crate::denials::Verdict::Audit { unrecorded } if req.method() != http::Method::GET => {
            let path = req.uri().path();
            let mut outcome = "denied: missing or wrong token".to_string();
            if unrecorded > 0 {
                outcome.push_str(&format!(
                    " (and {unrecorded} earlier denied requests from {client}, answered 429 and not recorded one by one)"
                ));
            }
            let entry = AuditEntry {
                id: 0,
                at: now,
                actor: format!("unauthenticated ({client}, {})", actor_hint(req.headers())),
                action: bounded(&format!("{} {path}", req.method()), AUDIT_FIELD_MAX),
                target: bounded(path, AUDIT_FIELD_MAX),
                detail: serde_json::Value::Null,
                outcome,
            };
            if let Err(e) = d.store.append_audit(&entry) {
                tracing::error!("cannot write audit entry: {e}");
            }
        }
        crate::denials::Verdict::Audit { .. } => {}
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token: pass --token, set FERRY_TOKEN, or use --data-dir of the daemon",
    )
    .into_response();
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn actor_hint(h: &HeaderMap) -> String {
    h.get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(100).collect())
        .unwrap_or_else(|| "unknown".into())
}

fn actor(h: &HeaderMap) -> String {
    format!("admin-token ({})", actor_hint(h))
}

fn record_audit(
    d: &Daemon,
    h: &HeaderMap,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    outcome: &str,
) {
    let mut detail = detail;
    redact::redact_json(&mut detail);
    let entry = AuditEntry {
        id: 0,
        at: d.clock.now(),
        actor: actor(h),
        action: action.into(),
        target: bounded(target, AUDIT_FIELD_MAX),
        detail,
        outcome: bounded(outcome, 4 * AUDIT_FIELD_MAX),
    };
    if let Err(e) = d.store.append_audit(&entry) {
        tracing::error!("cannot write audit entry: {e}");
    }
}

/// Record a rejected mutation and pass the error on.
fn rejected<T>(
    d: &Daemon,
    h: &HeaderMap,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    e: ApiError,
) -> ApiResult<T> {
    record_audit(
        d,
        h,
        action,
        target,
        detail,
        &format!("rejected: {}", e.message),
    );
    Err(e)
}

/// A JSON body that may be left out (then every field takes its default).
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice::<Option<T>>(if body.is_empty() { b"null" } else { body })
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: {e}"),
            )
        })
}

fn check_name(name: &str) -> ApiResult<()> {
    if valid_service_name(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{name}` is not a valid service name"),
        ))
    }
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
async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let core = d.core.lock().await;
    let mut checks = BTreeMap::new();
    let store_ok = d.store.services().is_ok();
    checks.insert(
        "store".to_string(),
        if store_ok { "healthy" } else { "unhealthy" }.to_string(),
    );
    let now = d.clock.now();
    let mut problems = BTreeMap::new();
    for (name, state) in &core.states {
        if state.stable.is_none() {
            continue;
        }
        let serving = core.supervisor.routable(state, now).len();
        let check = format!("service:{name}");
        if let Some(why) = core.proxy_problem(name) {
            problems.insert(check.clone(), why);
        } else if serving == 0 {
            problems.insert(check.clone(), "no instance takes traffic".to_string());
        }
        let health = if problems.contains_key(&check) {
            "unhealthy"
        } else {
            "healthy"
        };
        checks.insert(check, health.to_string());
    }
    let healthy = checks.values().all(|v| v == "healthy");
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" }.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        timestamp: rfc3339(now),
        uptime_seconds: now.saturating_sub(d.started_at) / 1000,
        checks,
        problems,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
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
async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let core = d.core.lock().await;
    let text = crate::metrics::render(&core, d.clock.now());
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn version_of(core: &mut crate::daemon::Core, service: &str, rev: Option<u64>) -> Option<String> {
    rev.and_then(|n| core.supervisor.revision(service, n))
        .map(|r| r.version.clone())
}

fn status_of(core: &mut crate::daemon::Core, state: &ServiceState, now: u64) -> ServiceStatus {
    let rollout = state
        .active_rollout
        .and_then(|id| core.rollouts.get(&id).cloned())
        .map(|r| rollout_view(core, r, now));
    let listen = state
        .stable
        .or_else(|| state.scale.keys().next_back().copied())
        .and_then(|n| core.supervisor.revision(&state.name, n))
        .map(|r| r.spec.listen.clone());
    ServiceStatus {
        name: state.name.clone(),
        listen,
        stable: state.stable,
        version: version_of(core, &state.name, state.stable),
        traffic: state.traffic.clone(),
        scale: state.scale.clone(),
        instances: core.supervisor.views(&state.name, &state.traffic),
        rollout,
        proxy_error: core.proxy_problem(&state.name),
    }
}

fn rollout_view(core: &mut crate::daemon::Core, r: Rollout, now: u64) -> RolloutView {
    let available = core
        .supervisor
        .observe(&r.service)
        .iter()
        .filter(|i| {
            i.revision == r.to && rollout::is_available(i.ready_since, r.params.min_ready_ms, now)
        })
        .count() as u32;
    let active = core.rollouts.contains_key(&r.id);
    RolloutView {
        from_version: version_of(core, &r.service, r.from),
        to_version: version_of(core, &r.service, Some(r.to)).unwrap_or_default(),
        available,
        active,
        rollout: r,
    }
}

#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "ferry",
    summary = "Every deployed service",
    security(("token" = [])),
    responses(
        (status = 200, description = "Services", body = [ServiceStatus]),
        TokenErrors,
    )
)]
async fn list_services(State(d): State<Arc<Daemon>>) -> Json<Vec<ServiceStatus>> {
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let states: Vec<ServiceState> = core.states.values().cloned().collect();
    Json(
        states
            .iter()
            .map(|s| status_of(&mut core, s, now))
            .collect(),
    )
}

#[utoipa::path(
    get,
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
async fn get_service(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceStatus>> {
    let mut core = d.core.lock().await;
    let state = core
        .states
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no service `{name}` has been deployed")))?;
    Ok(Json(status_of(&mut core, &state, d.clock.now())))
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
async fn history(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<HistoryEntry>>> {
    let rollouts = d.store.rollouts(&name).map_err(ApiError::internal)?;
    if rollouts.is_empty()
        && d.store
            .service(&name)
            .map_err(ApiError::internal)?
            .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no service `{name}` has been deployed"
        )));
    }
    let revisions: BTreeMap<u64, Revision> = d
        .store
        .revisions(&name)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|r| (r.number, r))
        .collect();
    let entries = rollouts
        .into_iter()
        .map(|r| {
            let rev = revisions.get(&r.to);
            HistoryEntry {
                rollout: r.id,
                kind: r.kind,
                revision: r.to,
                version: rev.map(|v| v.version.clone()).unwrap_or_default(),
                from: r.from,
                strategy: r.strategy,
                phase: r.phase,
                outcome: r.outcome.map(|o| o.as_str().to_string()),
                reason: r.reason.clone(),
                message: if r.kind == RolloutKind::Rollback {
                    Some(format!("rollback to revision {}", r.to))
                } else {
                    rev.and_then(|v| v.message.clone())
                },
                author: r
                    .started_by
                    .clone()
                    .or_else(|| rev.map(|v| v.author.clone()))
                    .unwrap_or_default(),
                started_at: rfc3339(r.started_at),
                finished_at: r.finished_at.map(rfc3339),
                hook_output: r
                    .hook
                    .as_ref()
                    .map(|h| h.output.clone())
                    .filter(|o| !o.is_empty()),
            }
        })
        .collect();
    Ok(Json(entries))
}

#[utoipa::path(
    get,
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
async fn get_revision(
    State(d): State<Arc<Daemon>>,
    Path((name, number)): Path<(String, u64)>,
) -> ApiResult<Json<serde_json::Value>> {
    let rev = d
        .store
        .revision(&name, number)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("service `{name}` has no revision {number}")))?;
    let mut v = serde_json::to_value(&rev).map_err(ApiError::internal)?;
    redact::redact_json(&mut v);
    Ok(Json(v))
}

#[utoipa::path(
    get,
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
async fn get_rollout(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<RolloutView>> {
    let mut core = d.core.lock().await;
    let r = match core.rollouts.get(&id).cloned() {
        Some(r) => r,
        None => d
            .store
            .rollout(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))?,
    };
    Ok(Json(rollout_view(&mut core, r, d.clock.now())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct After {
    /// Only events with a sequence number above this one.
    #[serde(default)]
    after: u64,
}

#[utoipa::path(
    get,
    path = "/v1/rollouts/{id}/events",
    tag = "ferry",
    summary = "A rollout's events",
    params(("id" = u64, Path, description = "The rollout"), After),
    security(("token" = [])),
    responses(
        (status = 200, description = "Events, oldest first", body = [ferry_store::StoredEvent]),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
async fn rollout_events(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
    Query(q): Query<After>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    if d.store.rollout(id).map_err(ApiError::internal)?.is_none() {
        return Err(ApiError::not_found(format!("no rollout {id}")));
    }
    // Sequence numbers are SQLite integers.
    if q.after > i64::MAX as u64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("after must be at most {}", i64::MAX),
        ));
    }
    Ok(Json(
        d.store
            .rollout_events(id, q.after)
            .map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
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
        (status = 200, description = "The newest entries, oldest first", body = [ferry_store::AuditEntry]),
        (status = 400, description = "The query does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
async fn audit(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    if !(1..=AUDIT_LIMIT_MAX).contains(&q.limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit must be 1 to {AUDIT_LIMIT_MAX}, not {}", q.limit),
        ));
    }
    Ok(Json(d.store.audit(q.limit).map_err(ApiError::internal)?))
}

fn deploy_detail(req: &DeployRequest) -> serde_json::Value {
    serde_json::json!({
        "version": req.version,
        "overrides": req.overrides,
        "message": req.message,
        "strategy": req.strategy,
        "auto_approve": req.auto_approve,
                "dry_run": req.dry_run,
        "monitor": req.monitor.map(|m| m.to_string()),
        "config_file": req.config_file,
    })
}

/// Validate a deploy request fully before anything is stored.
fn validate_deploy(name: &str, req: &DeployRequest) -> ApiResult<()> {
    let mut problems = req.spec.validate(name);
    if let Err(e) = check_version(&req.version) {
        problems.push(Problem {
            path: vec!["version".into()],
            message: e,
        });
    }
    for (k, v) in &req.overrides {
        if !valid_env_name(k) {
            problems.push(Problem {
                path: vec!["overrides".into(), k.clone()],
                message: format!(
                    "--set {k}=…: `{k}` is not a valid variable name; use ASCII letters, digits and `_`, not starting with a digit"
                ),
            });
        }
        if let Some(why) = ferry_core::spec::unpassable(v) {
            problems.push(Problem {
                path: vec!["overrides".into(), k.clone()],
                message: format!("--set {k}=…: the value {why}"),
            });
        }
    }
    if !std::path::Path::new(&req.base_dir).is_absolute() {
        problems.push(Problem {
            path: vec!["base_dir".into()],
            message: "base_dir must be an absolute path".into(),
        });
    }
    if let Some(m) = &req.message
        && m.len() > 4096
    {
        problems.push(Problem {
            path: vec!["message".into()],
            message: "--message is longer than 4096 bytes".into(),
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let summary = problems
            .iter()
            .map(|p| format!("{}: {}", p.key(), p.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(ApiError::invalid(
            format!("the deploy request is invalid: {summary}"),
            problems,
        ))
    }
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
async fn deploy(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RolloutAccepted>)> {
    let action = "deploy";
    let req: DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let err = ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: {e}"),
            );
            return rejected(&d, &headers, action, &name, serde_json::Value::Null, err);
        }
    };
    let detail = deploy_detail(&req);
    if let Err(e) = check_name(&name).and_then(|_| validate_deploy(&name, &req)) {
        return rejected(&d, &headers, action, &name, detail, e);
    }
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let mut state = core
        .states
        .get(&name)
        .cloned()
        .unwrap_or_else(|| ServiceState {
            name: name.clone(),
            ..Default::default()
        });
    // A release still in its monitoring window stands; the new deploy
    // supersedes the watching.
    let mut concluded = None;
    if let Some(id) = state.active_rollout
        && let Some(r) = core.rollouts.get(&id)
        && r.phase == Phase::Monitoring
        && !req.dry_run
    {
        let step = rollout::conclude_monitoring(&state, r, "a new deploy started", now);
        state = step.state.clone();
        concluded = Some(step);
    }
    if let Some(id) = state.active_rollout {
        let e = ApiError::conflict(format!(
            "rollout {id} of `{name}` is in progress; wait for it, or stop it with `ferry abort {name}`"
        ));
        return rejected(&d, &headers, action, &name, detail, e);
    }
    let listen = req.spec.listen_addr().expect("validated");
    // The listen address: a running service keeps its own; a new one must be free.
    let current_listen = state
        .stable
        .and_then(|n| core.supervisor.revision(&name, n))
        .map(|r| r.spec.listen.clone());
    if let Some(cur) = &current_listen
        && cur.parse::<std::net::SocketAddr>().ok() != Some(listen)
    {
        let e = ApiError::invalid(
            format!(
                "services.{name}.listen: `{name}` serves on {cur}; changing listen of a deployed service is not supported yet. Keep listen = \"{cur}\""
            ),
            vec![Problem {
                path: vec!["services".into(), name.clone(), "listen".into()],
                message: format!("changed from {cur}"),
            }],
        );
        return rejected(&d, &headers, action, &name, detail, e);
    }
    let others: Vec<String> = core
        .states
        .iter()
        .filter(|(other, s)| **other != name && s.has_work())
        .map(|(other, _)| other.clone())
        .collect();
    for other in others {
        let Some(theirs) = core.service_listen(&other) else {
            continue;
        };
        if ferry_core::spec::listens_overlap(listen, theirs) {
            let e = ApiError::invalid(
                format!(
                    "services.{name}.listen: {listen} overlaps {theirs}, used by service `{other}`; give each service its own port"
                ),
                vec![],
            );
            return rejected(&d, &headers, action, &name, detail, e);
        }
    }
    let ours = core.proxies.get(&name).map(|p| p.local_addr());
    if ours != Some(listen)
        && let Err(err) = std::net::TcpListener::bind(listen)
    {
        let e = ApiError::invalid(
            format!(
                "services.{name}.listen: {listen} is already in use ({err}); stop what listens there or choose another address"
            ),
            vec![],
        );
        return rejected(&d, &headers, action, &name, detail, e);
    }
    let number = d
        .store
        .next_revision_number(&name)
        .map_err(ApiError::internal)?;
    let id = d.store.next_rollout_id().map_err(ApiError::internal)?;
    let revision = Revision {
        service: name.clone(),
        number,
        version: req.version.clone(),
        spec: req.spec.clone(),
        overrides: req.overrides.clone(),
        base_dir: req.base_dir.clone(),
        config_file: req.config_file.clone(),
        message: req.message.clone(),
        author: actor_hint(&headers),
        created_at: now,
    };
    let strategy = req.strategy.unwrap_or(req.spec.deploy.strategy);
    let from_instances = state
        .stable
        .and_then(|n| state.scale.get(&n).copied())
        .unwrap_or(0);
    let r = Rollout::begin(
        id,
        &name,
        RolloutKind::Deploy,
        state.stable,
        from_instances,
        number,
        strategy,
        Params::from_spec(&req.spec),
        req.auto_approve,
        now,
    );
    let mut r = r;
    r.started_by = Some(actor_hint(&headers));
    if let Some(m) = req.monitor {
        r.params.monitor_ms = m.as_millis();
    }
    if req.dry_run {
        let mut plan = rollout::plan(&state, &r);
        if let Some(a) = req.spec.analysis.as_ref().filter(|a| !a.checks.is_empty()) {
            if strategy == Strategy::Canary {
                plan.push(format!(
                    "analysis every {} over a {} window (fewer than {} requests = inconclusive):",
                    a.interval, a.window, a.min_requests
                ));
                for (label, _) in a.checks() {
                    plan.push(format!("  check: {label}"));
                }
            } else {
                plan.push(format!(
                    "analysis checks are declared but judge canary rollouts only; this {} rollout is not judged by them",
                    strategy.as_str()
                ));
            }
        }
        record_audit(
            &d,
            &headers,
            "deploy (dry run)",
            &name,
            detail,
            "ok: nothing changed",
        );
        return Ok((
            StatusCode::OK,
            Json(RolloutAccepted {
                rollout: None,
                revision: number,
                message: format!(
                    "dry run: would create revision {number} of `{name}` ({}) and roll it out {}",
                    req.version,
                    strategy.as_str()
                ),
                plan,
            }),
        ));
    }
    let mut next = state.clone();
    next.active_rollout = Some(id);
    next.retiring.remove(&number);
    let started = ferry_core::rollout::Event {
        kind: ferry_core::event::EventKind::Started,
        message: format!(
            "rollout {id}: {} revision {number} ({}) of `{name}`{}",
            strategy.as_str(),
            req.version,
            state
                .stable
                .map(|s| format!(", replacing revision {s}"))
                .unwrap_or_default()
        ),
    };
    let mut audit_detail = detail.clone();
    redact::redact_json(&mut audit_detail);
    let entry = AuditEntry {
        id: 0,
        at: now,
        actor: actor(&headers),
        action: action.into(),
        target: name.clone(),
        detail: serde_json::json!({"request": audit_detail, "revision": number, "rollout": id}),
        outcome: "accepted".into(),
    };
    if let Some(done) = &concluded {
        // The watched release stands; recorded before the new rollout.
        d.store
            .commit(&Change {
                rollout: Some(&done.rollout),
                events: done
                    .events
                    .iter()
                    .map(|e| (Some(done.rollout.id), e))
                    .collect(),
                service: Some(&name),
                now,
                ..Default::default()
            })
            .map_err(ApiError::internal)?;
        core.rollouts.remove(&done.rollout.id);
    }
    let started = NewRollout {
        revision: Some(&revision),
        rollout: r,
        state: next,
        started,
        audit: entry,
    };
    let accepted = started.commit(&d, &mut core, &req.spec.webhooks, &req.version, now)?;
    drop(core);
    d.notify.notify_one();
    Ok((StatusCode::CREATED, Json(accepted)))
}

/// A rollout about to start, with everything its first commit writes.
struct NewRollout<'a> {
    /// The new revision, for a deploy (a rollback reuses a stored one).
    revision: Option<&'a Revision>,
    rollout: Rollout,
    state: ServiceState,
    started: ferry_core::rollout::Event,
    audit: AuditEntry,
}

impl NewRollout<'_> {
    /// Commit it in one transaction, then announce it and take it into
    /// memory.
    fn commit(
        self,
        d: &Daemon,
        core: &mut crate::daemon::Core,
        webhooks: &[ferry_core::webhook::WebhookSpec],
        version: &str,
        now: u64,
    ) -> ApiResult<RolloutAccepted> {
        let id = self.rollout.id;
        d.store
            .commit(&Change {
                revision: self.revision,
                rollout: Some(&self.rollout),
                state: Some(&self.state),
                events: vec![(Some(id), &self.started)],
                audit: Some(&self.audit),
                now,
                ..Default::default()
            })
            .map_err(ApiError::internal)?;
        d.webhooks.announce(
            webhooks,
            &self.rollout,
            version,
            std::slice::from_ref(&self.started),
            now,
        );
        let accepted = RolloutAccepted {
            rollout: Some(id),
            revision: self.rollout.to,
            message: self.started.message,
            plan: vec![],
        };
        core.states.insert(self.state.name.clone(), self.state);
        core.rollouts.insert(id, self.rollout);
        Ok(accepted)
    }
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
async fn rollback(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RolloutAccepted>)> {
    let action = "rollback";
    let req: RollbackRequest = match optional_body(&body) {
        Ok(r) => r,
        Err(e) => return rejected(&d, &headers, action, &name, serde_json::Value::Null, e),
    };
    let detail = serde_json::json!({ "to_revision": req.to_revision });
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let Some(state) = core.states.get(&name).cloned() else {
        return rejected(
            &d,
            &headers,
            action,
            &name,
            detail,
            ApiError::not_found(format!("no service `{name}` has been deployed")),
        );
    };
    // During a rollout, rolling back means returning to where it started.
    if let Some(id) = state.active_rollout
        && let Some(mut r) = core.rollouts.get(&id).cloned()
    {
        if req.to_revision.is_some() && req.to_revision != r.from {
            let e = ApiError::conflict(format!(
                "rollout {id} is in progress; `ferry rollback {name}` now returns to revision {}; to go elsewhere, wait for it to end first",
                r.from.map_or("(none)".to_string(), |f| f.to_string())
            ));
            return rejected(&d, &headers, action, &name, detail, e);
        }
        let message = match r.request(Gate::Rollback, &actor_hint(&headers)) {
            Ok(m) => m,
            Err(why) => {
                return rejected(&d, &headers, action, &name, detail, ApiError::conflict(why));
            }
        };
        let mut audit_detail = detail.clone();
        redact::redact_json(&mut audit_detail);
        let entry = AuditEntry {
            id: 0,
            at: now,
            actor: actor(&headers),
            action: action.into(),
            target: name.clone(),
            detail: audit_detail,
            outcome: format!("accepted: rollout {id} is being rolled back"),
        };
        d.store
            .commit(&Change {
                rollout: Some(&r),
                audit: Some(&entry),
                now,
                ..Default::default()
            })
            .map_err(ApiError::internal)?;
        let to = r.from.unwrap_or(r.to);
        core.rollouts.insert(id, r);
        drop(core);
        d.notify.notify_one();
        return Ok((
            StatusCode::ACCEPTED,
            Json(RolloutAccepted {
                rollout: Some(id),
                revision: to,
                message,
                plan: vec![],
            }),
        ));
    }
    let Some(current) = state.stable else {
        return rejected(
            &d,
            &headers,
            action,
            &name,
            detail,
            ApiError::conflict(format!(
                "`{name}` has no serving revision to roll back from"
            )),
        );
    };
    let target = match req.to_revision {
        Some(n) => n,
        None => {
            let rollouts = d.store.rollouts(&name).map_err(ApiError::internal)?;
            let previous = rollouts
                .iter()
                .rev()
                .find(|r| {
                    r.to == current && r.outcome == Some(ferry_core::rollout::Outcome::Succeeded)
                })
                .and_then(|r| r.from);
            match previous {
                Some(p) => p,
                None => {
                    let e = ApiError::conflict(format!(
                        "`{name}` has no earlier revision to roll back to; see `ferry history {name}`"
                    ));
                    return rejected(&d, &headers, action, &name, detail, e);
                }
            }
        }
    };
    if target == current {
        let e = ApiError::conflict(format!("revision {target} of `{name}` is already serving"));
        return rejected(&d, &headers, action, &name, detail, e);
    }
    let Some(rev) = core.supervisor.revision(&name, target) else {
        let e = ApiError::not_found(format!(
            "service `{name}` has no revision {target}; see `ferry history {name}`"
        ));
        return rejected(&d, &headers, action, &name, detail, e);
    };
    let id = d.store.next_rollout_id().map_err(ApiError::internal)?;
    let from_instances = state.scale.get(&current).copied().unwrap_or(0);
    let r = Rollout::begin(
        id,
        &name,
        RolloutKind::Rollback,
        Some(current),
        from_instances,
        target,
        rev.spec.deploy.strategy,
        Params::from_spec(&rev.spec),
        true,
        now,
    );
    let mut r = r;
    r.started_by = Some(actor_hint(&headers));
    let mut next = state.clone();
    next.active_rollout = Some(id);
    next.retiring.remove(&target);
    let started = ferry_core::rollout::Event {
        kind: ferry_core::event::EventKind::Started,
        message: format!(
            "rollout {id}: rolling `{name}` back from revision {current} to revision {target} ({})",
            rev.version
        ),
    };
    let entry = AuditEntry {
        id: 0,
        at: now,
        actor: actor(&headers),
        action: action.into(),
        target: name.clone(),
        detail: serde_json::json!({"to_revision": target, "from_revision": current, "rollout": id}),
        outcome: "accepted".into(),
    };
    let started = NewRollout {
        revision: None,
        rollout: r,
        state: next,
        started,
        audit: entry,
    };
    let accepted = started.commit(&d, &mut core, &rev.spec.webhooks, &rev.version, now)?;
    drop(core);
    d.notify.notify_one();
    Ok((StatusCode::CREATED, Json(accepted)))
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/approve",
    tag = "ferry",
    summary = "Let a blue-green rollout switch traffic",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
        (status = 409, description = "No rollout in progress, or the request does not apply to it now", body = ErrorBody),
        (status = 400, description = "The name is invalid", body = ErrorBody),
        TokenErrors,
    )
)]
async fn approve(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<RolloutAccepted>> {
    gate(d, name, headers, Gate::Approve).await
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/abort",
    tag = "ferry",
    summary = "Stop the rollout in progress",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
        (status = 409, description = "No rollout in progress, or the request does not apply to it now", body = ErrorBody),
        (status = 400, description = "The name is invalid", body = ErrorBody),
        TokenErrors,
    )
)]
async fn abort(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<RolloutAccepted>> {
    gate(d, name, headers, Gate::Abort).await
}

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
async fn promote(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<RolloutAccepted>> {
    let req: PromoteRequest = match optional_body(&body) {
        Ok(r) => r,
        Err(e) => return rejected(&d, &headers, "promote", &name, serde_json::Value::Null, e),
    };
    gate(d, name, headers, Gate::Promote { full: req.full }).await
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/pause",
    tag = "ferry",
    summary = "Hold the rollout in progress",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
        (status = 409, description = "No rollout in progress, or the request does not apply to it now", body = ErrorBody),
        (status = 400, description = "The name is invalid", body = ErrorBody),
        TokenErrors,
    )
)]
async fn pause(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<RolloutAccepted>> {
    gate(d, name, headers, Gate::Pause).await
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/resume",
    tag = "ferry",
    summary = "Continue a paused rollout",
    params(("name" = String, Path, description = "The service", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "The request is stored on the rollout", body = RolloutAccepted),
        (status = 409, description = "No rollout in progress, or the request does not apply to it now", body = ErrorBody),
        (status = 400, description = "The name is invalid", body = ErrorBody),
        TokenErrors,
    )
)]
async fn resume(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<RolloutAccepted>> {
    gate(d, name, headers, Gate::Resume).await
}

#[utoipa::path(
    get,
    path = "/v1/rollouts/{id}/measurements",
    tag = "ferry",
    summary = "A rollout's analysis measurements",
    params(("id" = u64, Path, description = "The rollout")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Measurements, oldest first", body = [ferry_store::StoredMeasurement]),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 400, description = "A path parameter does not parse", body = ErrorBody),
        TokenErrors,
    )
)]
async fn rollout_measurements(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Vec<ferry_store::StoredMeasurement>>> {
    if d.store.rollout(id).map_err(ApiError::internal)?.is_none() {
        return Err(ApiError::not_found(format!("no rollout {id}")));
    }
    Ok(Json(d.store.measurements(id).map_err(ApiError::internal)?))
}

/// Approve, abort, promote, pause, resume: a request stored on the active
/// rollout, acted on by the reconcile loop.
async fn gate(
    d: Arc<Daemon>,
    name: String,
    headers: HeaderMap,
    gate: Gate,
) -> ApiResult<Json<RolloutAccepted>> {
    let action = gate.action();
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let active = core
        .states
        .get(&name)
        .and_then(|s| s.active_rollout)
        .and_then(|id| core.rollouts.get(&id).cloned());
    let Some(mut r) = active else {
        let e = ApiError::conflict(format!(
            "`{name}` has no rollout in progress; see `ferry status {name}`"
        ));
        return rejected(&d, &headers, action, &name, serde_json::Value::Null, e);
    };
    let message = match r.request(gate, &actor_hint(&headers)) {
        Ok(m) => m,
        Err(why) => {
            return rejected(
                &d,
                &headers,
                action,
                &name,
                serde_json::Value::Null,
                ApiError::conflict(why),
            );
        }
    };
    let entry = AuditEntry {
        id: 0,
        at: now,
        actor: actor(&headers),
        action: action.into(),
        target: name.clone(),
        detail: serde_json::json!({"rollout": r.id}),
        outcome: "accepted".into(),
    };
    d.store
        .commit(&Change {
            rollout: Some(&r),
            audit: Some(&entry),
            now,
            ..Default::default()
        })
        .map_err(ApiError::internal)?;
    let (id, to) = (r.id, r.to);
    core.rollouts.insert(id, r);
    drop(core);
    d.notify.notify_one();
    Ok(Json(RolloutAccepted {
        rollout: Some(id),
        revision: to,
        message,
        plan: vec![],
    }))
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    /// `docs/openapi.json` is generated from the code; this keeps it so.
    /// Regenerate with `UPDATE_OPENAPI=1 cargo test -p ferry-server openapi`.
    #[test]
    fn docs_openapi_json_matches_the_code() {
        let text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the description serializes")
            + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &text).unwrap();
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/openapi.json is not what the code describes; regenerate it with `UPDATE_OPENAPI=1 cargo test -p ferry-server openapi`"
        );
    }
}
