//! Alerting over HTTP, three ways:
//!
//! - Prometheus's `/api/v1/rules` and `/api/v1/alerts` (Grafana reads
//!   them);
//! - Alertmanager's API v2 (`/api/v2/alerts`, `/api/v2/alerts/groups`,
//!   `/api/v2/silences`, `/api/v2/silence/{id}`, `/api/v2/receivers`,
//!   `/api/v2/status`), so a Prometheus can use Ferry as its Alertmanager
//!   and amtool-style clients work; errors are plain strings, as there;
//! - Ferry's own `/v1/alerts…` (what `ferry alerts` shows, history,
//!   acknowledgements, manual resolve, reload), in Ferry's error shape.
//!
//! Changes (pushed alerts aside, which a Prometheus sends every minute)
//! are written to the audit log.

use super::{ApiError, ApiResult, actor};
use crate::alerting::{Alerting, lock};
use crate::daemon::Daemon;
use crate::ops::Audit;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_alert::alert::{Alert, Fingerprint, LabelSet, Millis};
use ferry_alert::dispatch::{AlertState, AlertView};
use ferry_alert::silence::{Silence, SilenceFilter};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

fn alerting(d: &Daemon) -> ApiResult<&Arc<Alerting>> {
    d.alerting.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "alerting is not running yet",
        )
    })
}

fn now(d: &Daemon) -> Millis {
    d.clock.now() as Millis
}

fn time(ms: Millis) -> String {
    ferry_core::time::rfc3339(ms.max(0) as u64)
}

/// Alertmanager's errors: a status and a plain string.
fn am_error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut resp = (status, message.into()).into_response();
    resp.extensions_mut().insert(super::PlainError);
    resp
}

// ---- Prometheus: /api/v1/rules, /api/v1/alerts ----

fn prom_success(data: Value) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

/// A copy of every rule group (each locked in turn, briefly: an
/// evaluation holds its group's lock).
fn rule_groups(d: &Daemon) -> Vec<ferry_alert::rules::Group> {
    let Some(a) = d.alerting.get() else {
        return Vec::new();
    };
    let groups: Vec<_> = lock(&a.groups).iter().map(|g| g.group.clone()).collect();
    groups.iter().map(|g| lock(g).clone()).collect()
}

pub async fn prom_rules(State(d): State<Arc<Daemon>>) -> Response {
    let view = ferry_alert::rules::rules_view(rule_groups(&d).iter());
    prom_success(serde_json::to_value(view).unwrap_or_default())
}

pub async fn prom_alerts(State(d): State<Arc<Daemon>>) -> Response {
    let view = ferry_alert::rules::alerts_view(rule_groups(&d).iter());
    prom_success(serde_json::to_value(view).unwrap_or_default())
}

// ---- Alertmanager API v2 ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PostableAlert {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{field} {text:?} is not an RFC 3339 time: {e}"))
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| !c.is_control())
}

/// Check one pushed alert as Alertmanager does.
fn to_alert(p: PostableAlert, i: usize) -> Result<Alert, String> {
    if p.labels.is_empty() {
        return Err(format!("alert {i}: at least one label pair required"));
    }
    for (k, v) in &p.labels {
        if !valid_label_name(k) {
            return Err(format!("alert {i}: invalid label name {k:?}"));
        }
        if v.is_empty() {
            return Err(format!("alert {i}: empty value of label {k:?}"));
        }
    }
    let starts_at = match &p.starts_at {
        Some(t) if !t.is_empty() => {
            parse_time("startsAt", t).map_err(|e| format!("alert {i}: {e}"))?
        }
        _ => 0,
    };
    let ends_at = match &p.ends_at {
        Some(t) if !t.is_empty() => {
            parse_time("endsAt", t).map_err(|e| format!("alert {i}: {e}"))?
        }
        _ => 0,
    };
    // Go's zero time (0001-01-01) means "not given".
    let starts_at = if starts_at < 0 { 0 } else { starts_at };
    let ends_at = if ends_at < 0 { 0 } else { ends_at };
    if starts_at != 0 && ends_at != 0 && ends_at < starts_at {
        return Err(format!("alert {i}: start time must be before end time"));
    }
    Ok(Alert {
        labels: p.labels,
        annotations: p.annotations,
        starts_at,
        ends_at,
        generator_url: p.generator_url.unwrap_or_default(),
        updated_at: 0,
    })
}

/// `POST /api/v2/alerts`: a Prometheus (or anything) pushes alerts.
pub async fn post_alerts(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let Some(a) = d.alerting.get() else {
        return am_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "alerting is not running yet",
        );
    };
    let list: Vec<PostableAlert> = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return am_error(StatusCode::BAD_REQUEST, format!("invalid alerts: {e}")),
    };
    let mut alerts = Vec::with_capacity(list.len());
    for (i, p) in list.into_iter().enumerate() {
        match to_alert(p, i) {
            Ok(al) => alerts.push(al),
            Err(e) => return am_error(StatusCode::BAD_REQUEST, e),
        }
    }
    a.counters
        .received
        .fetch_add(alerts.len() as u64, std::sync::atomic::Ordering::Relaxed);
    a.receive(alerts, now(&d));
    StatusCode::OK.into_response()
}

#[derive(Debug, Default)]
pub struct AlertsQuery {
    active: Option<bool>,
    silenced: Option<bool>,
    inhibited: Option<bool>,
    unprocessed: Option<bool>,
    /// `receiver=REGEX`, anchored, compiled once per request (`None`
    /// inside: it does not compile, and matches nothing).
    receiver: Option<Option<regex::Regex>>,
    filter: Vec<String>,
}

/// Alertmanager's `filter` parameters may repeat (`filter=a&filter=b`).
fn alerts_query(raw: Option<&str>) -> Result<AlertsQuery, String> {
    let mut q = AlertsQuery::default();
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
        .map_err(|e| e.to_string())?
    {
        let flag = || match v.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{k}={v:?}: true or false")),
        };
        match k.as_str() {
            "active" => q.active = Some(flag()?),
            "silenced" => q.silenced = Some(flag()?),
            "inhibited" => q.inhibited = Some(flag()?),
            "unprocessed" => q.unprocessed = Some(flag()?),
            "receiver" => q.receiver = Some(regex::Regex::new(&format!("^(?:{v})$")).ok()),
            "filter" | "filter[]" => q.filter.push(v),
            _ => {}
        }
    }
    Ok(q)
}

fn gettable(v: &AlertView) -> Value {
    let state = match v.state {
        AlertState::Active => "active",
        AlertState::Suppressed => "suppressed",
        AlertState::Unprocessed => "unprocessed",
    };
    json!({
        "labels": v.alert.labels,
        "annotations": v.alert.annotations,
        "startsAt": time(v.alert.starts_at),
        "endsAt": time(v.alert.ends_at),
        "updatedAt": time(v.alert.updated_at),
        "generatorURL": v.alert.generator_url,
        "fingerprint": v.fingerprint.to_string(),
        "receivers": v.receivers.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
        "status": {
            "state": state,
            "silencedBy": v.silenced_by,
            "inhibitedBy": v.inhibited_by.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "mutedBy": [],
        },
        "acknowledged": v.acked.as_ref().map(|a| json!({
            "by": a.by, "comment": a.comment, "at": time(a.at), "until": a.until.map(time),
        })),
    })
}

fn selected(v: &AlertView, q: &AlertsQuery, filters: &[ferry_alert::matcher::Matcher]) -> bool {
    let silenced = !v.silenced_by.is_empty();
    let inhibited = !v.inhibited_by.is_empty();
    let ok = match v.state {
        AlertState::Active => q.active.unwrap_or(true),
        AlertState::Unprocessed => q.unprocessed.unwrap_or(true),
        AlertState::Suppressed => {
            (!silenced || q.silenced.unwrap_or(true)) && (!inhibited || q.inhibited.unwrap_or(true))
        }
    };
    ok && !v.resolved
        && q.receiver.as_ref().is_none_or(|re| {
            re.as_ref()
                .is_some_and(|re| v.receivers.iter().any(|x| re.is_match(x)))
        })
        && filters.iter().all(|m| m.matches(&v.alert.labels))
}

fn filters(q: &AlertsQuery) -> Result<Vec<ferry_alert::matcher::Matcher>, String> {
    let mut out = Vec::new();
    for f in &q.filter {
        out.extend(
            ferry_alert::matcher::parse_matchers(f)
                .map_err(|e| format!("bad filter {f:?}: {e}"))?,
        );
    }
    Ok(out)
}

/// The query string of a list request and its `filter` matchers, or the
/// 400 answer.
fn parsed_query(
    raw: Option<&str>,
) -> Result<(AlertsQuery, Vec<ferry_alert::matcher::Matcher>), Box<Response>> {
    let bad = |e: String| Box::new(am_error(StatusCode::BAD_REQUEST, e));
    let q = alerts_query(raw).map_err(bad)?;
    let f = filters(&q).map_err(bad)?;
    Ok((q, f))
}

/// The alerting of a list request and its query, or the answer: an
/// empty list before alerting runs, 400 for a bad query.
type ListRequest<'a> = (
    &'a Arc<Alerting>,
    AlertsQuery,
    Vec<ferry_alert::matcher::Matcher>,
);

fn list_request<'a>(d: &'a Daemon, raw: Option<&str>) -> Result<ListRequest<'a>, Box<Response>> {
    let a = d
        .alerting
        .get()
        .ok_or_else(|| Box::new(Json(json!([])).into_response()))?;
    let (q, f) = parsed_query(raw)?;
    Ok((a, q, f))
}

/// `GET /api/v2/alerts`.
pub async fn get_alerts(
    State(d): State<Arc<Daemon>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let (a, q, f) = match list_request(&d, raw.as_deref()) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let views = lock(&a.dispatcher).alerts(now(&d));
    let out: Vec<Value> = views
        .iter()
        .filter(|v| selected(v, &q, &f))
        .map(gettable)
        .collect();
    Json(out).into_response()
}

/// `GET /api/v2/alerts/groups`.
pub async fn get_groups(
    State(d): State<Arc<Daemon>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let (a, q, f) = match list_request(&d, raw.as_deref()) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let t = now(&d);
    let disp = lock(&a.dispatcher);
    let views: BTreeMap<_, _> = disp
        .alerts(t)
        .into_iter()
        .map(|v| (v.fingerprint, v))
        .collect();
    let out: Vec<Value> = disp
        .groups(t)
        .iter()
        .filter_map(|g| {
            let alerts: Vec<Value> = g
                .alerts
                .iter()
                .filter_map(|fp| views.get(fp))
                .filter(|v| selected(v, &q, &f))
                .map(gettable)
                .collect();
            (!alerts.is_empty()).then(
                || json!({"labels": g.labels, "receiver": {"name": g.receiver}, "alerts": alerts}),
            )
        })
        .collect();
    Json(out).into_response()
}

fn silence_json(s: &Silence, t: Millis) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("startsAt".into(), json!(time(s.starts_at)));
        o.insert("endsAt".into(), json!(time(s.ends_at)));
        o.insert("updatedAt".into(), json!(time(s.updated_at)));
        o.insert("status".into(), json!({"state": s.state(t)}));
    }
    v
}

/// `GET /api/v2/silences`.
pub async fn get_silences(
    State(d): State<Arc<Daemon>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let (a, _, f) = match list_request(&d, raw.as_deref()) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let t = now(&d);
    let disp = lock(&a.dispatcher);
    let out: Vec<Value> = disp
        .silences()
        .list(&SilenceFilter::default(), t)
        .into_iter()
        .filter(|s| {
            f.iter().all(|m| {
                s.matchers
                    .iter()
                    .any(|sm| sm.name == m.name && m.matches_value(&sm.value))
            })
        })
        .map(|s| silence_json(s, t))
        .collect();
    Json(out).into_response()
}

/// `GET /api/v2/silence/{id}`.
pub async fn get_silence(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let Some(a) = d.alerting.get() else {
        return am_error(StatusCode::NOT_FOUND, "silence not found");
    };
    let t = now(&d);
    let disp = lock(&a.dispatcher);
    match disp.silences().get(&id) {
        Some(s) => Json(silence_json(s, t)).into_response(),
        None => am_error(StatusCode::NOT_FOUND, format!("silence {id} not found")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PostableSilence {
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<ferry_alert::matcher::Matcher>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    comment: String,
}

/// `POST /api/v2/silences`: create, or update with `id`.
pub async fn post_silence(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(a) = d.alerting.get() else {
        return am_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "alerting is not running yet",
        );
    };
    let who = actor(&headers);
    let p: PostableSilence = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return am_error(StatusCode::BAD_REQUEST, format!("invalid silence: {e}")),
    };
    let (starts_at, ends_at) = match (
        parse_time("startsAt", &p.starts_at),
        parse_time("endsAt", &p.ends_at),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return am_error(StatusCode::BAD_REQUEST, e),
    };
    let t = now(&d);
    let silence = Silence {
        id: p.id.clone().unwrap_or_default(),
        matchers: p.matchers,
        starts_at,
        ends_at,
        created_by: p.created_by,
        comment: p.comment,
        updated_at: t,
    };
    let audit = Audit::new(
        &d,
        &who,
        "silence",
        &silence
            .matchers
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(","),
        json!({"ends_at": time(ends_at), "created_by": silence.created_by, "comment": silence.comment}),
    );
    let fresh = match crate::new_id() {
        Ok(id) => id,
        Err(e) => return am_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let result = {
        let mut disp = lock(&a.dispatcher);
        let r = disp.silences_mut().set(silence, &fresh, t);
        if r.is_ok()
            && let Err(e) = a.save_dispatcher(&mut disp, t)
        {
            return am_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        r
    };
    match result {
        Ok(id) => {
            audit.record(&format!("silence {id} set"));
            a.wake.notify_one();
            Json(json!({"silenceID": id})).into_response()
        }
        Err(e) => {
            audit.record(&format!("rejected: {e}"));
            let status = match e {
                ferry_alert::silence::SilenceError::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            am_error(status, e.to_string())
        }
    }
}

/// `DELETE /api/v2/silence/{id}`: expire it.
pub async fn delete_silence(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(a) = d.alerting.get() else {
        return am_error(StatusCode::NOT_FOUND, "silence not found");
    };
    let who = actor(&headers);
    let audit = Audit::new(&d, &who, "expire-silence", &id, json!({}));
    let t = now(&d);
    let result = {
        let mut disp = lock(&a.dispatcher);
        let r = disp.silences_mut().expire(&id, t);
        if r.is_ok() {
            let _ = a.save_dispatcher(&mut disp, t);
        }
        r
    };
    match result {
        Ok(()) => {
            audit.record("expired");
            a.wake.notify_one();
            StatusCode::OK.into_response()
        }
        Err(e) => {
            audit.record(&format!("rejected: {e}"));
            match e {
                // Name the ID: "silence not found" alone does not say which.
                ferry_alert::silence::SilenceError::NotFound => {
                    am_error(StatusCode::NOT_FOUND, format!("silence {id} not found"))
                }
                e => am_error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    }
}

/// `GET /api/v2/receivers`.
pub async fn get_receivers(State(d): State<Arc<Daemon>>) -> Response {
    let Some(a) = d.alerting.get() else {
        return Json(json!([])).into_response();
    };
    let names: Vec<Value> = a
        .receivers
        .load()
        .keys()
        .map(|n| json!({"name": n}))
        .collect();
    Json(names).into_response()
}

/// `GET /api/v2/status`.
pub async fn get_status(State(d): State<Arc<Daemon>>) -> Response {
    let source = d
        .alerting
        .get()
        .map(|a| a.loaded().am_source.clone())
        .unwrap_or_default();
    Json(json!({
        "cluster": {"status": "disabled", "peers": []},
        "config": {"original": format!("# routing from {source}; secrets are not shown\n")},
        "uptime": time(d.started_at as Millis),
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "branch": "", "buildDate": "", "buildUser": "", "goVersion": "", "revision": "",
        },
    }))
    .into_response()
}

// ---- Ferry's own: /v1/alerts… ----

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    resolved: bool,
}

/// `GET /v1/alerts`: pending alerts of the rules and every alert of the
/// notifier, with what `ferry alerts` shows.
pub async fn list(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let a = alerting(&d)?;
    let t = now(&d);
    let loaded = a.loaded();
    let (views, groups) = {
        let disp = lock(&a.dispatcher);
        (disp.alerts(t), disp.groups(t))
    };
    // Each alert's group key (the first group holding it).
    let mut group_of: BTreeMap<Fingerprint, &str> = BTreeMap::new();
    for g in &groups {
        for fp in &g.alerts {
            group_of.entry(*fp).or_insert(&g.group_key);
        }
    }
    let values = lock(&a.values);
    let mut out: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for v in &views {
        if v.resolved && !q.resolved {
            continue;
        }
        seen.insert(v.fingerprint);
        let group = group_of.get(&v.fingerprint);
        out.push(json!({
            "id": v.fingerprint.to_string(),
            "name": v.alert.name(),
            "state": if v.resolved { "resolved" } else { "firing" },
            "labels": v.alert.labels,
            "annotations": v.alert.annotations,
            "since": v.alert.starts_at,
            "ends_at": if v.resolved { Some(v.alert.ends_at) } else { None },
            "value": values.get(&v.fingerprint).filter(|x| x.is_finite()),
            "suppressed": v.state == AlertState::Suppressed,
            "silenced_by": v.silenced_by,
            "inhibited_by": v.inhibited_by.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "ack": v.acked.as_ref().map(|k| json!({"by": k.by, "comment": k.comment, "at": k.at, "until": k.until})),
            "resolved_by": v.manual_resolve.as_ref().map(|m| m.by.clone()),
            "receivers": v.receivers,
            "group": group,
            "generator_url": v.alert.generator_url,
        }));
    }
    // Not held while rule groups are locked: an evaluation takes its
    // group, then the values.
    drop(values);
    // Pending alerts are the rules' own until they fire.
    let rule_groups: Vec<_> = lock(&a.groups).iter().map(|g| g.group.clone()).collect();
    for g in rule_groups {
        let g = lock(&g);
        for rule in &g.rules {
            for alert in rule.active_alerts() {
                if alert.state != ferry_alert::rules::State::Pending {
                    continue;
                }
                let labels: LabelSet =
                    crate::alerting::with_external(alert.labels.clone(), &loaded.external_labels);
                let fp = ferry_alert::alert::fingerprint(&labels);
                if seen.contains(&fp) {
                    continue;
                }
                out.push(json!({
                    "id": fp.to_string(),
                    "name": rule.name(),
                    "state": "pending",
                    "labels": labels,
                    "annotations": alert.annotations,
                    "since": alert.active_at,
                    "value": Some(alert.value).filter(|x| x.is_finite()),
                    "suppressed": false,
                    "silenced_by": [],
                    "inhibited_by": [],
                    "ack": null,
                    "receivers": [],
                    "group": null,
                    "for": rule.spec.for_.to_string(),
                }));
            }
        }
    }
    Ok(Json(json!({ "alerts": out })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    for_seconds: Option<u64>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// What an action on one alert decided: the answer, or a refusal.
type Acted = Result<Value, ApiError>;

/// Act on alert `id` (an ID or a unique prefix) under the dispatcher's
/// lock: audited either way; the state saved and the notifier woken when
/// `act` succeeds.
fn on_alert(
    d: &Daemon,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    detail: Value,
    act: impl FnOnce(&mut ferry_alert::dispatch::Dispatcher, Fingerprint, Millis, &str) -> Acted,
) -> ApiResult<Json<Value>> {
    let a = alerting(d)?;
    let who = actor(headers);
    let audit = Audit::new(d, &who, action, id, detail);
    let t = now(d);
    let answer = a.find(id).map_err(ApiError::not_found).and_then(|fp| {
        let mut disp = lock(&a.dispatcher);
        let answer = act(&mut disp, fp, t, &who.audit)?;
        a.save_dispatcher(&mut disp, t).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(answer)
    });
    match answer {
        Ok(v) => {
            audit.record(v["message"].as_str().unwrap_or("done"));
            a.wake.notify_one();
            Ok(Json(v))
        }
        Err(e) => {
            audit.record(&format!("rejected: {}", e.message));
            Err(e)
        }
    }
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", message)
}

/// `POST /v1/alerts/{id}/ack`.
pub async fn ack(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: AckRequest = if body.is_empty() {
        AckRequest {
            comment: None,
            for_seconds: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid body: {e}")))?
    };
    if req.for_seconds == Some(0) || req.for_seconds.is_some_and(|s| s > 365 * 86_400) {
        return Err(bad_request("for_seconds must be between 1 and 31536000"));
    }
    let detail = json!({"comment": req.comment, "for_seconds": req.for_seconds});
    on_alert(&d, &headers, &id, "ack-alert", detail, |disp, fp, t, by| {
        let until = req.for_seconds.map(|s| t + s as i64 * 1000);
        let comment = req.comment.clone().unwrap_or_default();
        let groups = disp.ack(fp, by, &comment, until, t).map_err(conflict)?;
        let message = format!(
            "alert {fp} acknowledged{}: no repeat notifications until it resolves{}",
            if groups.is_empty() {
                ""
            } else {
                " (receivers that know acknowledgements are told)"
            },
            until
                .map(|u| format!(" or {}", time(u)))
                .unwrap_or_default()
        );
        Ok(json!({"id": fp.to_string(), "message": message, "until": until}))
    })
}

/// `DELETE /v1/alerts/{id}/ack`.
pub async fn unack(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    on_alert(
        &d,
        &headers,
        &id,
        "unack-alert",
        json!({}),
        |disp, fp, t, _| {
            if !disp.unack(fp, t) {
                return Err(conflict(format!("alert {fp} is not acknowledged")));
            }
            Ok(
                json!({"id": fp.to_string(), "message": format!("alert {fp}: acknowledgement withdrawn")}),
            )
        },
    )
}

/// `POST /v1/alerts/{id}/resolve`.
pub async fn resolve(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    on_alert(
        &d,
        &headers,
        &id,
        "resolve-alert",
        json!({}),
        |disp, fp, t, by| {
            if !disp.resolve(fp, by, t) {
                return Err(conflict(format!("alert {fp} is already resolved")));
            }
            Ok(json!({
                "id": fp.to_string(),
                "message": format!("alert {fp} resolved; receivers are told, and it fires again only if its source fires it anew"),
            }))
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/alerts/history`.
pub async fn history(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    let a = alerting(&d)?;
    let since = q.since.unwrap_or(now(&d) - 86_400_000);
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 100_000 {
        return Err(bad_request("limit must be between 1 and 100000"));
    }
    let entries = a
        .store
        .history(since, q.alert.as_deref(), limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(json!({"entries": entries})))
}

/// `POST /v1/alerts/reload`.
pub async fn reload(State(d): State<Arc<Daemon>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let a = alerting(&d)?.clone();
    let who = actor(&headers);
    let audit = Audit::new(&d, &who, "reload-alerting", "alerting", json!({}));
    match a.reload(&d) {
        Ok(message) => {
            audit.record(&message);
            Ok(Json(json!({"message": message})))
        }
        Err(errors) => {
            audit.record(&format!("rejected: {} errors", errors.len()));
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!(
                    "the alerting config has {} error{}; the running config stays:\n{}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" },
                    errors.join("\n")
                ),
            ))
        }
    }
}
