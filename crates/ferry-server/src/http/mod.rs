//! The HTTP API (documented in `docs/api.md`, described in
//! `docs/openapi.json`): the router, the bearer-token check, the request
//! limits and the one error shape. Handlers are thin: they parse, call the
//! operations layer (`crate::ops`) and map the result to a status; one
//! module per resource (`services`, `rollouts`, `system`). Every route but
//! `/livez` and `/readyz` needs `Authorization: Bearer <token>`.
//!
//! Modules: `error` ← `services`, `rollouts`, `system` ← `openapi`; `server`
//! (the accept loop and its limits) stands alone. Requests without a token
//! are throttled by `crate::denials`.

mod alerts;
mod error;
#[cfg(test)]
mod fuzz;
mod openapi;
mod promql;
mod rollouts;
pub mod server;
mod services;
pub mod system;

pub use error::{ApiError, ApiResult};
pub use openapi::ApiDoc;

use crate::daemon::Daemon;
use crate::ops::{self, Actor, Audit, OpError};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_api::{ACTOR_HEADER, AuditEntry};
use std::sync::Arc;

pub fn router(daemon: Arc<Daemon>, limits: server::ApiLimits) -> Router {
    let authed = Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route(
            "/api/v1/query",
            get(promql::query_get).post(promql::query_post),
        )
        .route(
            "/api/v1/query_range",
            get(promql::range_get).post(promql::range_post),
        )
        .route("/api/v1/series", get(promql::series).post(promql::series))
        .route("/api/v1/labels", get(promql::labels).post(promql::labels))
        .route("/api/v1/label/{name}/values", get(promql::label_values))
        .route("/api/v1/metadata", get(promql::metadata))
        .route("/api/v1/status/buildinfo", get(promql::buildinfo))
        .route("/api/v1/rules", get(alerts::prom_rules))
        .route("/api/v1/alerts", get(alerts::prom_alerts))
        .route(
            "/api/v2/alerts",
            get(alerts::get_alerts).post(alerts::post_alerts),
        )
        .route("/api/v2/alerts/groups", get(alerts::get_groups))
        .route(
            "/api/v2/silences",
            get(alerts::get_silences).post(alerts::post_silence),
        )
        .route(
            "/api/v2/silence/{id}",
            get(alerts::get_silence).delete(alerts::delete_silence),
        )
        .route("/api/v2/receivers", get(alerts::get_receivers))
        .route("/api/v2/status", get(alerts::get_status))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/alerts/history", get(alerts::history))
        .route("/v1/alerts/reload", post(alerts::reload))
        .route(
            "/v1/alerts/{id}/ack",
            post(alerts::ack).delete(alerts::unack),
        )
        .route("/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route(
            "/api/v1/query_exemplars",
            get(promql::exemplars).post(promql::exemplars),
        )
        .route("/v1/services", get(services::list))
        .route("/v1/slo", get(services::slo))
        .route("/v1/delivery", get(services::delivery))
        .route("/v1/services/{name}", get(services::get))
        .route("/v1/services/{name}/history", get(services::history))
        .route(
            "/v1/services/{name}/revisions/{number}",
            get(services::revision),
        )
        .route("/v1/services/{name}/deploys", post(services::deploy))
        .route("/v1/services/{name}/rollback", post(services::rollback))
        .route("/v1/services/{name}/approve", post(services::approve))
        .route("/v1/services/{name}/abort", post(services::abort))
        .route("/v1/services/{name}/promote", post(services::promote))
        .route("/v1/services/{name}/pause", post(services::pause))
        .route("/v1/services/{name}/resume", post(services::resume))
        .route(
            "/v1/rollouts/{id}/measurements",
            get(rollouts::measurements),
        )
        .route("/v1/rollouts/{id}", get(rollouts::get))
        .route("/v1/rollouts/{id}/events", get(rollouts::events))
        .route("/v1/audit", get(system::audit))
        .route("/v1/system/upgrade", post(system::upgrade))
        .route("/v1/system/shutdown", post(system::shutdown))
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            require_token,
        ));
    Router::new()
        .route("/livez", get(system::livez))
        .route("/readyz", get(system::readyz))
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

/// Marks an error response whose plain-text body is meant (Alertmanager's
/// API v2), so that [`json_errors`] does not rewrite it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlainError;

/// Errors raised by the HTTP framework before a handler runs (a body over
/// the size limit, a path parameter or query that does not parse) come as
/// plain text; give them the API's one error shape.
async fn json_errors(resp: Response) -> Response {
    // Alertmanager's API answers errors with a plain string, and its
    // clients (Prometheus, amtool) expect that: leave those alone.
    if resp.extensions().get::<PlainError>().is_some() {
        return resp;
    }
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

/// What the read-only token may do: every GET, and the POSTs of
/// Prometheus's query API, which only read (Grafana sends queries as POST).
fn reads_only(method: &http::Method, path: &str) -> bool {
    method == http::Method::GET
        || method == http::Method::HEAD
        || (method == http::Method::POST
            && matches!(
                path,
                "/api/v1/query"
                    | "/api/v1/query_range"
                    | "/api/v1/series"
                    | "/api/v1/labels"
                    | "/api/v1/query_exemplars"
            ))
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
    if given.is_some_and(|t| same(t.as_bytes(), d.read_token.as_bytes())) {
        if reads_only(req.method(), req.uri().path()) {
            return next.run(req).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this is the read-only token ({}): it can query metrics and read state, not change anything; use the admin token ({}) for this",
                crate::READ_TOKEN_FILE,
                crate::TOKEN_FILE
            ),
        )
        .into_response();
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
                action: ops::bounded(&format!("{} {path}", req.method()), ops::AUDIT_FIELD_MAX),
                target: ops::bounded(path, ops::AUDIT_FIELD_MAX),
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

/// The caller, from the actor header the CLI sends.
fn actor(h: &HeaderMap) -> Actor {
    Actor::admin(&actor_hint(h))
}

/// A required JSON body, or the refusal, audited.
fn body<T: serde::de::DeserializeOwned>(
    d: &Daemon,
    actor: &Actor,
    action: &str,
    target: &str,
    bytes: &[u8],
) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| OpError::BadRequest(format!("request body: {e}")))
        .or_else(|e| Audit::new(d, actor, action, target, serde_json::Value::Null).reject(e))
        .map_err(ApiError::from)
}

/// A JSON body that may be left out (or `null`): then every field takes
/// its default.
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    d: &Daemon,
    actor: &Actor,
    action: &str,
    target: &str,
    bytes: &[u8],
) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    body::<Option<T>>(d, actor, action, target, bytes).map(Option::unwrap_or_default)
}

/// The status an accepted mutation answers with.
fn accepted(
    r: ops::OpResult<ops::Accepted>,
) -> ApiResult<(StatusCode, axum::Json<ferry_api::RolloutAccepted>)> {
    Ok(match r? {
        ops::Accepted::Started(a) => (StatusCode::CREATED, axum::Json(a)),
        ops::Accepted::Planned(a) | ops::Accepted::Queued(a) => (StatusCode::OK, axum::Json(a)),
        ops::Accepted::Stopping(a) => (StatusCode::ACCEPTED, axum::Json(a)),
    })
}
